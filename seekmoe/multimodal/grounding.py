"""Answers that point at the picture: regions named in the text, and the input image annotated with them.

The model writes a region as DeepSeek-VL2 does, in plain text that streams like any other:

    <|ref|>R2<|/ref|><|det|>[[412, 80, 610, 233]]<|/det|>

a label, then one or more boxes [x1, y1, x2, y2] on a 0..999 grid over the square the image encoder saw: the
image with its longer side fitted and the shorter one padded equally on both sides (media.image_tensor), so on a
square image the grid is the image itself. `to_pixels` maps a box back onto the original image.

`parse_regions` is what serving trusts, and the text is the model's, so anything it cannot read as a region is
ignored, never an error: a box out of 0..999, with x2 <= x1 or y2 <= y1, with other than four integers, a label
without its box, an unclosed tag. `annotate` draws the regions on a copy of the image: a dimmed picture with each
box at full brightness, outlined, and its label on a tab.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GRID = 999
REF, REF_END, DET, DET_END = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"
MAX_REGIONS = 32  # per answer: more are ignored
MAX_LABEL = 64  # characters of a label drawn; a longer one is cut
MIN_SIDE = 448  # pixels: a smaller image is enlarged (nearest neighbour) before drawing, so labels stay legible

# bounded repeats: a hostile or runaway answer costs linear time
_REGION = re.compile(r"(?:<\|ref\|>(?P<label>[^<]{0,200})<\|/ref\|>\s*)?<\|det\|>(?P<boxes>[^<]{0,2000})<\|/det\|>")
_BOX = re.compile(r"\[\s*(\d{1,4})\s*,\s*(\d{1,4})\s*,\s*(\d{1,4})\s*,\s*(\d{1,4})\s*\]")
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60))
_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
          "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@dataclass(frozen=True)
class Region:
    label: str  # "" when the answer gave a box without a <|ref|>
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 on the 0..GRID grid; x1 < x2, y1 < y2


def format_region(label: str, *boxes: tuple[int, int, int, int]) -> str:
    """The text the model writes for a region with one or more boxes."""
    if not boxes or any(_valid(b) is None for b in boxes):
        raise ValueError(f"boxes must be [x1, y1, x2, y2] on 0..{GRID} with x1 < x2 and y1 < y2, got {boxes}")
    if any(c in label for c in "<>"):
        raise ValueError(f"a label cannot hold '<' or '>': {label!r}")
    return f"{REF}{label}{REF_END}{DET}[{', '.join('[' + ', '.join(map(str, b)) + ']' for b in boxes)}]{DET_END}"


def _valid(box) -> tuple[int, int, int, int] | None:
    if len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        return None
    x1, y1, x2, y2 = box
    return (x1, y1, x2, y2) if 0 <= x1 < x2 <= GRID and 0 <= y1 < y2 <= GRID else None


def parse_regions(text: str, limit: int = MAX_REGIONS) -> list[Region]:
    """The well-formed regions of an answer, in order, at most `limit`; the rest of the text is not looked at."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out = []
    for match in _REGION.finditer(text):
        label = " ".join((match["label"] or "").split())[:MAX_LABEL]
        det = match["boxes"].strip()
        if not (det.startswith("[") and det.endswith("]")):
            continue
        inner = det[1:-1].strip()
        # the whole list must be boxes and commas: "[[1, 2, 3, 4], oops]" is malformed, not one box
        if _BOX.sub("", inner).replace(",", "").strip():
            continue
        for numbers in _BOX.findall(inner):
            box = _valid(tuple(int(v) for v in numbers))
            if box is not None:
                out.append(Region(label, box))
            if len(out) == limit:
                return out
    return out


def strip_regions(text: str) -> str:
    """The answer as prose: each region replaced by its label (a box without one by nothing)."""
    return _REGION.sub(lambda m: m["label"] or "", text)


def _square(width: int, height: int) -> tuple[float, float, float]:
    """The square the encoder saw, in original pixels: its side and the original's offset inside it."""
    side = max(width, height)
    return side, (side - width) / 2, (side - height) / 2


def to_pixels(box: tuple[int, int, int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """A grid box in pixels of a width x height image, clipped to it."""
    side, dx, dy = _square(width, height)
    x1, y1, x2, y2 = (v / GRID * side for v in box)
    return (min(max(x1 - dx, 0), width), min(max(y1 - dy, 0), height),
            min(max(x2 - dx, 0), width), min(max(y2 - dy, 0), height))


def to_grid(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """A pixel box of a width x height image on the grid (the inverse of to_pixels, rounded)."""
    side, dx, dy = _square(width, height)
    x1, y1, x2, y2 = box
    return tuple(min(max(round(v / side * GRID), 0), GRID) for v in (x1 + dx, y1 + dy, x2 + dx, y2 + dy))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2) in the same units."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def annotate(image: Image.Image, regions: list[Region]) -> Image.Image:
    """A copy of the image (RGB, at least MIN_SIDE on its longer side) with the regions drawn: outside them dimmed,
    each outlined in its colour with its label on a tab above (below when there is no room)."""
    base = image.convert("RGB")
    scale = max(1, -(-MIN_SIDE // max(base.size)))
    if scale > 1:  # nearest neighbour: a 28-pixel digit stays crisp blocks, not a blur
        base = base.resize((base.width * scale, base.height * scale), Image.Resampling.NEAREST)
    if not regions:
        return base
    boxes = [tuple(round(v) for v in to_pixels(r.box, *base.size)) for r in regions]
    dimmed = Image.blend(base, Image.new("RGB", base.size), 0.55)
    for box in boxes:
        dimmed.paste(base.crop(box), box[:2])
    draw = ImageDraw.Draw(dimmed)
    line = max(2, max(base.size) // 160)
    font = _font(max(12, max(base.size) // 28))
    for i, (region, box) in enumerate(zip(regions, boxes, strict=True)):
        colour = _PALETTE[i % len(_PALETTE)]
        draw.rectangle(box, outline=colour, width=line)
        if not region.label:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), region.label, font=font)
        w, h = right - left + 2 * line, bottom - top + 2 * line
        y = box[1] - h if box[1] - h >= 0 else min(box[3], base.height - h)
        x = min(box[0], max(base.width - w, 0))
        draw.rectangle((x, y, x + w, y + h), fill=colour)
        draw.text((x + line - left, y + line - top), region.label, fill=(255, 255, 255), font=font)
    return dimmed


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def annotated_png(text: str, image: Image.Image | None) -> bytes | None:
    """The image with the answer's regions drawn on it, as PNG bytes; None when there is no image or no region."""
    if image is None:
        return None
    regions = parse_regions(text)
    return png_bytes(annotate(image, regions)) if regions else None
