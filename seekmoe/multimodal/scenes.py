"""Grounding scenes: 112x112 pictures whose answers point at a region of them (seekmoe.multimodal.grounding).

- canvas (digit_canvas, fashion_canvas): 2 to 5 MNIST digits or Fashion-MNIST items, each scaled to 24..36 px,
  on a black canvas (bright strokes on black, as the sources are), never overlapping; the asked class appears
  exactly once. The answer's box is the item's ink box: the pixels of the scaled item at or above its ink
  threshold (INK, or half the item's brightest pixel if that is lower), grown by MARGIN px on each side and
  clipped to the square it was pasted in.
- schematic: a circuit drawn black on white: a rectangular loop of wires, a battery on its left side and 2 to 4
  parts (resistor zigzags, LEDs, capacitors) in five slots (top left, top right, right, bottom right, bottom
  left), each with its name (R1, LED1, C1: numbered per kind, clockwise from the battery) and a power rating
  (resistors and LEDs, distinct within a schematic) or a capacitance written beside it. A part's box holds its
  symbol and its two labels, grown by 1 px.

Unseen layouts: a canvas's layout is the set of cells of a 4x4 grid of 28 px cells that hold an item's centre; a
schematic's is which kind of part sits in which slot. `held_out(layout)`, a hash of the layout that no seed
changes, puts one layout in five in the test split; each split draws only its own, so no test layout occurs in
train (positions inside a cell, item sizes, loop corners and the pictures themselves vary within a layout).

Questions and answers are English or Chinese at random. Each example is (image, question, answer, meta) with
meta {"task": "ground", "lang", "label", "answer": the region's label, "box": [x1, y1, x2, y2] on the 0..999
grid, "layout"} and every item or part with its box ("objects" of a canvas, "parts" of a schematic, with "part"
and "question" besides); data.py adds "set" and writes the files.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from seekmoe.multimodal.grounding import format_region, iou, parse_regions, to_grid

SIDE = 112  # pixels of every scene, square
CELL = 28  # canvas layout grid: 4x4 cells
ITEMS = (2, 5)  # items on a canvas, both ends included
ITEM_SIZE = (24, 36)  # pixels of a scaled 28x28 item, both ends included
INK = 64  # a canvas item's pixel at or above this is ink
MARGIN = 2  # pixels an ink box grows on each side
HELD_OUT = 5  # one layout in HELD_OUT is a test layout

# schematics
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
FONT_SIZE = 10  # pixels: capitals 7 px tall, legible at 112 px
SLOTS = ("top_left", "top_right", "right", "bottom_right", "bottom_left")  # clockwise from the battery
KINDS = ("resistor", "led", "capacitor")
PREFIX = {"resistor": "R", "led": "LED", "capacitor": "C"}
KIND_NAMES = {"resistor": ("resistor", "电阻"), "led": ("LED", "LED"), "capacitor": ("capacitor", "电容")}
RATINGS = ("0.25W", "0.5W", "1W", "2W")  # distinct within a schematic, so "the most power" is one part
CAPACITANCES = ("1µF", "10µF", "47µF", "100µF")
VOLTAGES = ("3V", "5V", "9V", "12V")
PARTS = (2, 4)  # parts besides the battery, both ends included

CANVAS_TEMPLATES = {
    "digit": {"en": (("Where is the {x}?", "Circle the {x}.", "Find the digit {x} in the picture.",
                      "Point to the {x}.", "Mark the {x}."),
                     ("The {x} is here: {r}", "Here is the {x}: {r}", "Found it: {r}")),
              "zh": (("{x}在哪里？", "圈出{x}。", "在图中找到数字{x}。", "请标出{x}。", "指出{x}的位置。"),
                     ("{x}在这里：{r}", "这是{x}：{r}", "找到了：{r}"))},
    "fashion": {"en": (("Where is the {x}?", "Circle the {x}.", "Find the {x} in the picture.",
                        "Point to the {x}.", "Mark the {x}."),
                       ("The {x} is here: {r}", "Here is the {x}: {r}", "Found it: {r}")),
                "zh": (("{x}在哪里？", "圈出{x}。", "在图中找到{x}。", "请标出{x}。", "指出{x}的位置。"),
                       ("{x}在这里：{r}", "这是{x}：{r}", "找到了：{r}"))},
}
# schematic questions: (questions, answers) per kind and language; {p} part name, {k} kind, {w} rating, {r} region
SCHEMATIC_TEMPLATES = {
    "power": {"en": (("Which part wastes the most power?", "Which component uses the most power?",
                      "What draws the most power in this circuit?"),
                     ("{p} uses the most power ({w}): {r}.",)),
              "zh": (("哪个元件功耗最大？", "哪个元件最耗电？", "电路里哪个元件消耗的功率最大？"),
                     ("{p}功耗最大（{w}）：{r}。",))},
    "advice": {"en": (("How can I lower the power draw?", "How do I reduce this circuit's power consumption?",
                       "What should I change to save power?"),
                      ("{p} uses the most power ({w}): {r}. {a}",)),
               "zh": (("如何降低功耗？", "怎样减少这个电路的耗电？", "要省电应该改哪里？"),
                      ("{p}功耗最大（{w}）：{r}。{a}",))},
    "kind": {"en": (("Circle the {k}.", "Where is the {k}?", "Find the {k}."),
                    ("The {k} is {p}: {r}", "Here is the {k}, {p}: {r}")),
             "zh": (("圈出{k}。", "{k}在哪里？", "找到{k}。"),
                    ("{k}是{p}：{r}", "这个{k}是{p}：{r}"))},
    "name": {"en": (("Where is {p}?", "Circle {p}.", "Find {p} in the schematic."),
                    ("{p} is here: {r}", "Here is {p}: {r}")),
             "zh": (("{p}在哪里？", "圈出{p}。", "在图中找到{p}。"),
                    ("{p}在这里：{r}", "这是{p}：{r}"))},
}
QUESTION_WEIGHTS = {"power": 3, "advice": 2, "kind": 2, "name": 3}  # "kind" only when one part is of that kind
ADVICE = {"resistor": ("A larger resistance there lowers the current and the power draw.",
                       "增大它的阻值可以减小电流，从而降低功耗。"),
          "led": ("A larger series resistor dims it and lowers the power draw.",
                  "串联更大的电阻可以调暗它，从而降低功耗。")}


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (SIDE, SIDE) uint8 grayscale
    question: str
    answer: str
    meta: dict


def held_out(layout: str) -> bool:
    """Whether a layout belongs to the test split: one in HELD_OUT, by a hash that no seed changes."""
    digest = hashlib.sha256(layout.encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT == 0


def _grid_box(box: tuple[int, int, int, int]) -> list[int]:
    return list(to_grid(box, SIDE, SIDE))


# ---- canvases ---------------------------------------------------------------------------------------------------

def canvas_layout(cells: tuple[int, ...]) -> str:
    """A canvas's layout: which of the 16 cells (row * 4 + column) hold an item's centre."""
    return "canvas:" + ",".join(map(str, sorted(cells)))


def _draw_layout(split: str, rng: random.Random) -> tuple[int, ...]:
    """Occupied cells of a layout of this split."""
    while True:
        cells = tuple(sorted(rng.sample(range(16), rng.randint(*ITEMS))))
        if held_out(canvas_layout(cells)) == (split == "test"):
            return cells


def _place(cells: tuple[int, ...], rng: random.Random) -> list[tuple[int, int, int]]:
    """(x, y, size) of a square per cell, its centre inside the cell, inside the canvas, none overlapping; after
    ten failed tries every square is 28 px and centred in its cell, which never overlaps."""
    for _ in range(10):
        placed: list[tuple[int, int, int]] = []
        for cell in cells:
            row, col = divmod(cell, 4)
            for _ in range(20):
                size = rng.randint(*ITEM_SIZE)
                x = min(max(col * CELL + rng.randrange(CELL) - size // 2, 0), SIDE - size)
                y = min(max(row * CELL + rng.randrange(CELL) - size // 2, 0), SIDE - size)
                centre_in_cell = (x + size // 2) // CELL == col and (y + size // 2) // CELL == row
                if centre_in_cell and not any(x < px + ps and px < x + size and y < py + ps and py < y + size
                                              for px, py, ps in placed):
                    placed.append((x, y, size))
                    break
            else:
                break
        if len(placed) == len(cells):
            return placed
    return [((c % 4) * CELL, (c // 4) * CELL, CELL) for c in cells]


def ink_box(item: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2), x2 and y2 exclusive, of an item's ink inside its own square, grown by MARGIN and clipped to
    the square; None for an item with no visible ink."""
    top = int(item.max())
    if top < 16:
        return None
    ys, xs = np.nonzero(item >= min(INK, top // 2))
    h, w = item.shape
    return (max(int(xs.min()) - MARGIN, 0), max(int(ys.min()) - MARGIN, 0),
            min(int(xs.max()) + 1 + MARGIN, w), min(int(ys.max()) + 1 + MARGIN, h))


def by_class(labels: np.ndarray, pool) -> dict[int, list[int]]:
    """{class: the indices in pool of its items}, in pool's order."""
    out: dict[int, list[int]] = {}
    for i in pool:
        out.setdefault(int(labels[i]), []).append(int(i))
    return out


def canvas(kind: str, split: str, images: np.ndarray, items: dict[int, list[int]], names, lang: str,
           rng: random.Random) -> Scene:
    """One canvas scene. kind 'digit' or 'fashion'; items: the indices of `images` this split may use, per class
    (by_class); names: (English, Chinese) per class for fashion (digits are their numeral in both languages)."""
    cells = _draw_layout(split, rng)
    squares = _place(cells, rng)
    classes = sorted(items)
    if len(classes) < 2:
        raise ValueError(f"a {kind} canvas needs items of two classes at least; the pool has {classes}")
    asked = rng.choice(classes)
    others = [c for c in classes if c != asked]
    target = rng.randrange(len(cells))  # which square holds the asked item
    picture = np.zeros((SIDE, SIDE), np.uint8)
    objects = []
    for k, (x, y, size) in enumerate(squares):
        while True:  # an item with no visible ink is drawn again
            label = asked if k == target else rng.choice(others)
            src = rng.choice(items[label])
            item = np.asarray(Image.fromarray(images[src]).resize((size, size), Image.Resampling.BILINEAR))
            ink = ink_box(item)
            if ink is not None:
                break
        picture[y:y + size, x:x + size] = np.maximum(picture[y:y + size, x:x + size], item)
        objects.append({"label": label, "box": _grid_box((x + ink[0], y + ink[1], x + ink[2], y + ink[3])),
                        "source_index": src})
    zh = lang == "zh"
    name = str(asked) if kind == "digit" else names[asked][zh]
    questions, answers = CANVAS_TEMPLATES[kind][lang]
    grid = objects[target]["box"]
    region = format_region(name, tuple(grid))
    meta = {"task": "ground", "lang": lang, "label": asked, "answer": name, "box": grid,
            "layout": canvas_layout(cells), "source_index": objects[target]["source_index"], "objects": objects}
    return Scene(picture, rng.choice(questions).format(x=name), rng.choice(answers).format(x=name, r=region), meta)


# ---- schematics -------------------------------------------------------------------------------------------------

@cache
def _font(size: int = FONT_SIZE):
    return ImageFont.truetype(FONT, size) if Path(FONT).is_file() else ImageFont.load_default(size)


def schematic_layout(kinds: dict[str, str]) -> str:
    """A schematic's layout: which kind of part sits in which slot."""
    return "schematic:" + ",".join(f"{slot}={kinds[slot]}" for slot in SLOTS if slot in kinds)


def _draw_kinds(split: str, rng: random.Random) -> dict[str, str]:
    """{slot: kind} of a layout of this split, with one resistor or LED at least (so power has an answer)."""
    while True:
        slots = rng.sample(SLOTS, rng.randint(*PARTS))
        kinds = {slot: rng.choice(KINDS) for slot in SLOTS if slot in slots}
        if any(k != "capacitor" for k in kinds.values()) and held_out(schematic_layout(kinds)) == (split == "test"):
            return kinds


def _symbol(kind: str) -> tuple[list[list[tuple[float, float]]], list[list[tuple[float, float]]]]:
    """A part's lines and filled polygons in its own frame: u along the wire (-10..10), v across it (+v: toward the
    inside of the loop)."""
    if kind == "resistor":
        zig = [(-7.5 + 2.5 * (i + 0.5), -4.0 if i % 2 == 0 else 4.0) for i in range(6)]
        return [[(-10.0, 0.0), (-7.5, 0.0), *zig, (7.5, 0.0), (10.0, 0.0)]], []
    if kind == "capacitor":
        return [[(-10.0, 0.0), (-2.0, 0.0)], [(-2.0, -6.0), (-2.0, 6.0)], [(2.0, -6.0), (2.0, 6.0)],
                [(2.0, 0.0), (10.0, 0.0)]], []
    # LED: a triangle pointing along the current, a bar, two arrows of light toward the inside
    lines = [[(-10.0, 0.0), (-5.0, 0.0)], [(4.0, -5.0), (4.0, 5.0)], [(4.0, 0.0), (10.0, 0.0)],
             [(-2.0, 6.0), (1.0, 10.0)], [(2.0, 6.0), (5.0, 10.0)]]
    heads = [[(1.0, 10.0), (-1.0, 9.5), (0.5, 8.0)], [(5.0, 10.0), (3.0, 9.5), (4.5, 8.0)]]
    return lines, [[(-5.0, -5.0), (-5.0, 5.0), (4.0, 0.0)], *heads]


def schematic(split: str, lang: str, rng: random.Random) -> Scene:
    """One schematic scene (module docstring)."""
    kinds = _draw_kinds(split, rng)
    left, right = rng.randint(10, 14), rng.randint(98, 102)  # two 36 px labels side by side on the top and bottom
    # the loop's height keeps the right part's labels clear of the value labels inside the top and bottom sides
    top, bottom = rng.randint(16, 20), rng.randint(90, 94)
    image = Image.new("L", (SIDE, SIDE), 255)
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.rectangle((left, top, right, bottom), outline=0, width=1)  # the loop; parts cut their gaps below
    # battery on the left side: the long plate +, the short thick plate -
    by = rng.randint(top + 26, bottom - 26)
    draw.line((left, by - 3, left, by + 3), fill=255, width=3)
    draw.line((left - 7, by - 2, left + 7, by - 2), fill=0, width=1)
    draw.line((left - 4, by + 2, left + 4, by + 2), fill=0, width=3)
    draw.text((left + 9, by - 6), rng.choice(VOLTAGES), fill=0, font=font)

    counts = dict.fromkeys(KINDS, 0)
    ratings = iter(rng.sample(RATINGS, sum(k != "capacitor" for k in kinds.values())))
    parts = []
    for slot, kind in kinds.items():
        counts[kind] += 1
        name = f"{PREFIX[kind]}{counts[kind]}"
        value = next(ratings) if kind != "capacitor" else rng.choice(CAPACITANCES)
        width = right - left
        # current runs clockwise from the battery's + (its long plate, on top), so an LED points with it
        if slot == "right":  # vertical, u down, +v toward the inside (left)
            cx, cy = right, (top + bottom) // 2 + rng.randint(-2, 2)

            def at(u: float, v: float, cx=cx, cy=cy) -> tuple[float, float]:
                return cx - v, cy + u
        else:
            cx = left + (width * (1 if "left" in slot else 3)) // 4 + rng.randint(-1, 1)
            cy = top if slot.startswith("top") else bottom
            sign = 1 if slot.startswith("top") else -1

            def at(u: float, v: float, cx=cx, cy=cy, sign=sign) -> tuple[float, float]:
                return cx + sign * u, cy + sign * v  # u with the current: rightward on top, leftward below
        lines, polygons = _symbol(kind)
        draw.line([at(-9, 0), at(9, 0)], fill=255, width=3)  # the wire's gap
        for line in lines:
            draw.line([at(*p) for p in line], fill=0, width=1)
        for polygon in polygons:
            draw.polygon([at(*p) for p in polygon], fill=0)
        points = [at(*p) for shape in lines + polygons for p in shape]
        sx1, sy1 = min(p[0] for p in points), min(p[1] for p in points)
        sx2, sy2 = max(p[0] for p in points), max(p[1] for p in points)
        boxes = [(sx1, sy1, sx2 + 1, sy2 + 1)]
        name_w, value_w = (draw.textbbox((0, 0), t, font=font)[2] for t in (name, value))
        if slot == "right":  # both labels inside, right-aligned against the symbol
            x2 = sx1 - 2
            spots = [(x2 - name_w, cy - 11), (x2 - value_w, cy + 1)]
        elif slot.startswith("top"):  # the name above (outside), the value below (inside)
            spots = [(cx - name_w / 2, sy1 - 11), (cx - value_w / 2, sy2 + 1)]
        else:
            spots = [(cx - name_w / 2, sy2 + 1), (cx - value_w / 2, sy1 - 11)]
        for text, spot in zip((name, value), spots, strict=True):
            draw.text(spot, text, fill=0, font=font)
            boxes.append(draw.textbbox(spot, text, font=font))
        x1, y1 = min(b[0] for b in boxes) - 1, min(b[1] for b in boxes) - 1
        x2, y2 = max(b[2] for b in boxes) + 1, max(b[3] for b in boxes) + 1
        box = (max(round(x1), 0), max(round(y1), 0), min(round(x2), SIDE), min(round(y2), SIDE))
        parts.append({"name": name, "kind": kind, "value": value, "box": box})

    asked, question_kind = _question(parts, rng)
    zh = lang == "zh"
    grid = _grid_box(asked["box"])
    fill = {"p": asked["name"], "k": KIND_NAMES[asked["kind"]][zh], "w": asked["value"],
            "r": format_region(asked["name"], tuple(grid)), "a": ADVICE.get(asked["kind"], ("", ""))[zh]}
    questions, answers = SCHEMATIC_TEMPLATES[question_kind][lang]
    meta = {"task": "ground", "lang": lang, "label": asked["kind"], "answer": asked["name"], "box": grid,
            "layout": schematic_layout(kinds), "part": asked["name"], "question": question_kind,
            "parts": [{"name": p["name"], "kind": p["kind"], "value": p["value"], "box": _grid_box(p["box"])}
                      for p in parts]}
    return Scene(np.asarray(image), rng.choice(questions).format(**fill), rng.choice(answers).format(**fill), meta)


def _question(parts: list[dict], rng: random.Random) -> tuple[dict, str]:
    """The asked part and the kind of question."""
    single = [p for p in parts if sum(q["kind"] == p["kind"] for q in parts) == 1]
    choices = [k for k in QUESTION_WEIGHTS if k != "kind" or single]
    kind = rng.choices(choices, weights=[QUESTION_WEIGHTS[k] for k in choices])[0]
    if kind in ("power", "advice"):
        powered = [p for p in parts if p["kind"] != "capacitor"]
        return max(powered, key=lambda p: float(p["value"][:-1])), kind
    return rng.choice(single if kind == "kind" else parts), kind


# ---- scoring ----------------------------------------------------------------------------------------------------

def _same_name(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return "".join(unicodedata.normalize("NFKC", s).split()).casefold()

    return norm(a) == norm(b)


def region_iou(reply: str, meta: dict) -> float:
    """IoU of the reply's first region with meta['box'] (0.0 when there is none); for a schematic, the first region
    must be labelled with the asked part's name, or it scores 0.0. Only the first counts: a reply that boxes
    everything is not right by chance."""
    if not isinstance(reply, str):
        return 0.0
    regions = parse_regions(reply, limit=1)
    if not regions:
        return 0.0
    region = regions[0]
    if "part" in meta and not _same_name(region.label, meta["part"]):
        return 0.0
    return iou(region.box, tuple(meta["box"]))
