"""Grounding scenes: determinism, held-out layouts, boxes on the drawn items, one asked item, both languages,
short answers, and the region scoring."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest

from seekmoe.multimodal import scenes
from seekmoe.multimodal.grounding import GRID, format_region, iou, parse_regions, strip_regions, to_pixels

CLASSES = 10
NAMES = tuple((f"thing{c}", f"东西{c}") for c in range(CLASSES))


@pytest.fixture(scope="module")
def items() -> tuple[np.ndarray, dict[int, list[int]]]:
    """Synthetic 28x28 items: 4 a class, each a bright rectangle of its own size on black."""
    rng = np.random.default_rng(0)
    images, labels = np.zeros((4 * CLASSES, 28, 28), np.uint8), np.repeat(np.arange(CLASSES), 4)
    for i in range(len(images)):
        x1, y1 = rng.integers(2, 10, size=2)
        x2, y2 = rng.integers(16, 26, size=2)
        images[i, y1:y2, x1:x2] = rng.integers(120, 256)
    return images, scenes.by_class(labels, range(len(labels)))


def draw_canvas(items, split: str, seed: int, lang: str = "en") -> scenes.Scene:
    images, by_class = items
    return scenes.canvas("fashion", split, images, by_class, NAMES, lang, random.Random(seed))


def pixels(box) -> tuple[int, int, int, int]:
    return tuple(round(v) for v in to_pixels(tuple(box), scenes.SIDE, scenes.SIDE))


def test_same_seed_same_scene(items):
    for make in (lambda s: draw_canvas(items, "train", s), lambda s: scenes.schematic("train", "zh", random.Random(s))):
        a, b, c = make(1), make(1), make(2)
        assert a.image.tobytes() == b.image.tobytes() and (a.question, a.answer, a.meta) == (b.question, b.answer,
                                                                                            b.meta)
        assert a.image.tobytes() != c.image.tobytes()


def test_layouts_of_the_splits_are_disjoint(items):
    every = [scenes.canvas_layout(cells) for k in range(scenes.ITEMS[0], scenes.ITEMS[1] + 1)
             for cells in itertools.combinations(range(16), k)]
    held = sum(map(scenes.held_out, every)) / len(every)
    assert 0.17 < held < 0.23  # one in five
    for make in (lambda split, s: draw_canvas(items, split, s),
                 lambda split, s: scenes.schematic(split, "en", random.Random(s))):
        layouts = {split: {make(split, s).meta["layout"] for s in range(60)} for split in ("train", "test")}
        assert not layouts["train"] & layouts["test"]
        assert all(scenes.held_out(x) for x in layouts["test"]) and not any(map(scenes.held_out, layouts["train"]))
        assert len(layouts["test"]) > 20  # many layouts, not a handful repeated


def test_canvas_boxes_hold_the_items_and_the_asked_class_appears_once(items):
    for seed in range(80):
        scene = draw_canvas(items, "train" if seed % 2 else "test", seed)
        meta, picture = scene.meta, scene.image
        assert picture.shape == (112, 112) and picture.dtype == np.uint8
        objects = meta["objects"]
        assert scenes.ITEMS[0] <= len(objects) <= scenes.ITEMS[1]
        assert [o["label"] for o in objects].count(meta["label"]) == 1
        assert meta["box"] == next(o["box"] for o in objects if o["label"] == meta["label"])
        outside = np.ones_like(picture, bool)
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= GRID and 0 <= y1 < y2 <= GRID
            px1, py1, px2, py2 = pixels(o["box"])
            inside = picture[py1:py2, px1:px2]
            assert inside.max() >= scenes.INK  # the item's ink is in its box...
            # ...up to its margin: the ink's own bounding box is at most MARGIN (+1 for grid rounding) inside it
            ys, xs = np.nonzero(inside >= scenes.INK)
            assert min(xs.min(), ys.min()) <= scenes.MARGIN + 1
            assert min(inside.shape[1] - 1 - xs.max(), inside.shape[0] - 1 - ys.max()) <= scenes.MARGIN + 1
            outside[py1:py2, px1:px2] = False
        assert picture[outside].max(initial=0) < scenes.INK  # no ink lies outside every box
        for a, b in itertools.combinations(objects, 2):
            assert iou(a["box"], b["box"]) == 0  # never overlapping
        regions = parse_regions(scene.answer)
        assert len(regions) == 1 and regions[0].box == tuple(meta["box"]) and regions[0].label == meta["answer"]
        assert meta["answer"] in scene.question


def test_ink_box():
    item = np.zeros((28, 28), np.uint8)
    item[5:9, 10:20] = 200
    assert scenes.ink_box(item) == (10 - scenes.MARGIN, 5 - scenes.MARGIN, 20 + scenes.MARGIN, 9 + scenes.MARGIN)
    item[0, 27] = 255
    assert scenes.ink_box(item) == (8, 0, 28, 11)  # clipped to the square
    assert scenes.ink_box(np.full((28, 28), 10, np.uint8)) is None


def test_schematic_parts_boxes_and_answers():
    kinds, questions = set(), set()
    for seed in range(120):
        scene = scenes.schematic("train" if seed % 3 else "test", "en" if seed % 2 else "zh", random.Random(seed))
        meta, picture = scene.meta, scene.image
        assert picture.shape == (112, 112) and picture.dtype == np.uint8
        assert picture[0].min() == 255 and picture.min() == 0  # black on white, the border left white
        parts = meta["parts"]
        assert scenes.PARTS[0] <= len(parts) <= scenes.PARTS[1]
        names = [p["name"] for p in parts]
        assert len(set(names)) == len(names) and meta["part"] in names
        ratings = [p["value"] for p in parts if p["kind"] != "capacitor"]
        assert ratings and len(set(ratings)) == len(ratings) and set(ratings) <= set(scenes.RATINGS)
        for p in parts:
            x1, y1, x2, y2 = p["box"]
            assert 0 <= x1 < x2 <= GRID and 0 <= y1 < y2 <= GRID
            px1, py1, px2, py2 = pixels(p["box"])
            assert (picture[py1:py2, px1:px2] < 128).sum() > 40  # a symbol and two labels of ink
        for a, b in itertools.combinations(parts, 2):
            assert iou(a["box"], b["box"]) == 0, (seed, a, b)  # labels never collide with another part
        asked = next(p for p in parts if p["name"] == meta["part"])
        assert meta["box"] == asked["box"] and meta["label"] == asked["kind"]
        if meta["question"] in ("power", "advice"):
            assert asked["value"] == max(ratings, key=lambda w: float(w[:-1])) and asked["value"] in scene.answer
        if meta["question"] == "kind":
            assert sum(p["kind"] == asked["kind"] for p in parts) == 1
        if meta["question"] == "name":
            assert meta["part"] in scene.question
        regions = parse_regions(scene.answer)
        assert len(regions) == 1 and regions[0].label == meta["part"] and regions[0].box == tuple(meta["box"])
        kinds.add(asked["kind"])
        questions.add(meta["question"])
    assert kinds == set(scenes.KINDS) and questions == set(scenes.QUESTION_WEIGHTS)


def test_both_languages_and_short_answers(items):
    from seekmoe.text.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(Path(__file__).parents[1] / "seekmoe/models/seekmoe-tiny-chat")
    cjk = re.compile(r"[\u4e00-\u9fff]")
    drawn = [draw_canvas(items, "train", s, lang) for s in range(20) for lang in ("en", "zh")]
    drawn += [scenes.schematic("train", lang, random.Random(s)) for s in range(40) for lang in ("en", "zh")]
    for scene in drawn:
        zh = scene.meta["lang"] == "zh"
        assert bool(cjk.search(scene.question)) is zh and bool(cjk.search(strip_regions(scene.answer))) is zh
        assert len(tok.encode(strip_regions(scene.answer))) < 60


def test_region_iou():
    canvas = {"task": "ground", "box": [100, 100, 300, 300]}
    right = format_region("7", (110, 100, 300, 310))
    assert scenes.region_iou(f"Here: {right}", canvas) > 0.9
    assert scenes.region_iou(format_region("7", (300, 300, 500, 500)), canvas) == 0.0  # wrong box
    assert scenes.region_iou("<|ref|>7<|/ref|><|det|>[[100, 100, 300]]<|/det|>", canvas) == 0.0  # malformed
    assert scenes.region_iou("The 7 is at the top left.", canvas) == 0.0
    assert scenes.region_iou(None, canvas) == 0.0
    # only the first region counts: boxing everything is not right by chance
    assert scenes.region_iou(format_region("7", (600, 600, 900, 900)) + right, canvas) == 0.0
    part = {**canvas, "part": "R2"}
    assert scenes.region_iou(format_region("R2", (100, 100, 300, 300)), part) == 1.0
    assert scenes.region_iou(format_region("r 2", (100, 100, 300, 300)), part) == 1.0
    assert scenes.region_iou(format_region("R1", (100, 100, 300, 300)), part) == 0.0  # the wrong part named
    assert scenes.region_iou("<|det|>[[100, 100, 300, 300]]<|/det|>", part) == 0.0  # no part named
