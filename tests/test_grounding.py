"""Regions in answers: the text format, the tolerant parser serving trusts, grid and pixel boxes, and the drawing."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from seekmoe.multimodal.grounding import (
    GRID,
    MAX_REGIONS,
    MIN_SIDE,
    Region,
    annotate,
    format_region,
    iou,
    parse_regions,
    png_bytes,
    strip_regions,
    to_grid,
    to_pixels,
)


def test_format_and_parse_round_trip():
    r2 = format_region("R2", (0, 0, 999, 999), (5, 6, 7, 8))
    text = f"The 7 is here: {format_region('7', (100, 120, 350, 400))}, and {r2}."
    assert "<|ref|>7<|/ref|><|det|>[[100, 120, 350, 400]]<|/det|>" in text
    assert parse_regions(text) == [Region("7", (100, 120, 350, 400)), Region("R2", (0, 0, 999, 999)),
                                   Region("R2", (5, 6, 7, 8))]
    assert strip_regions(text) == "The 7 is here: 7, and R2."
    assert parse_regions("<|det|>[[1,2,3,4]]<|/det|>") == [Region("", (1, 2, 3, 4))]  # a box without a label
    spaced = "<|ref|> 圈出  七 <|/ref|>\n<|det|>[ [1 , 2,3, 4] ]<|/det|>"
    assert parse_regions(spaced) == [Region("圈出 七", (1, 2, 3, 4))]
    for bad in [(0, 0, 0, 5), (5, 0, 4, 9), (0, 0, 1000, 5), (1, 2, 3)]:
        with pytest.raises(ValueError):
            format_region("x", bad)
    with pytest.raises(ValueError, match="cannot hold"):
        format_region("<|ref|>", (1, 2, 3, 4))


@pytest.mark.parametrize("text", [
    "<|ref|>x<|/ref|><|det|>[[1, 2, 3]]<|/det|>",  # three numbers
    "<|ref|>x<|/ref|><|det|>[[1, 2, 3, 4, 5]]<|/det|>",
    "<|ref|>x<|/ref|><|det|>[[5, 5, 1000, 9]]<|/det|>",  # off the grid
    "<|ref|>x<|/ref|><|det|>[[-1, 5, 10, 9]]<|/det|>",
    "<|ref|>x<|/ref|><|det|>[[9, 5, 4, 9]]<|/det|>",  # x2 < x1
    "<|ref|>x<|/ref|><|det|>[[1, 5, 4, 5]]<|/det|>",  # empty
    "<|ref|>x<|/ref|><|det|>[[1.5, 2, 3, 4]]<|/det|>",
    "<|ref|>x<|/ref|><|det|>[[1, 2, 3, 4], oops]<|/det|>",  # not only boxes
    "<|ref|>x<|/ref|><|det|>[1, 2, 3, 4]<|/det|>",  # one bracket: not a list of boxes
    "<|ref|>x<|/ref|><|det|>[[1, 2, 3, 4]]",  # unclosed
    "<|ref|>x<|/ref|> and no box",
    "<|det|><|det|>[[1, 2, 3, 4]<|/det|>",
    "[[1, 2, 3, 4]]",
    "",
])
def test_malformed_regions_are_ignored(text):
    assert parse_regions(text) == []
    assert parse_regions(text + " " + format_region("ok", (1, 2, 3, 4))) == [Region("ok", (1, 2, 3, 4))]


def test_parsing_is_bounded_and_linear_on_hostile_text():
    many = format_region("a", (1, 2, 3, 4)) * 1000
    assert len(parse_regions(many)) == MAX_REGIONS and len(parse_regions(many, limit=3)) == 3
    long_label = "<|ref|>" + "x" * 10_000 + "<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>"
    assert parse_regions(long_label) == [Region("", (1, 2, 3, 4))]  # the label is over 200 characters: not a label
    hostile = ("<|ref|>" + "<|det|>[[" * 20_000) + "1, 2, 3, 4" * 20_000
    start = time.process_time()
    assert parse_regions(hostile) == []
    assert time.process_time() - start < 10  # a regex with unbounded repeats would take minutes here
    with pytest.raises(TypeError):
        parse_regions(None)


@pytest.mark.parametrize("size", [(100, 100), (200, 50), (30, 300)])
def test_grid_and_pixel_boxes_invert_each_other_on_any_shape(size):
    w, h = size
    pixels = (0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h)
    back = to_pixels(to_grid(pixels, w, h), w, h)
    assert max(abs(a - b) for a, b in zip(back, pixels, strict=True)) <= max(w, h) / GRID
    assert to_grid((0, 0, w, h), w, h)[0::2] == ((0, GRID) if w >= h else to_grid((0, 0, w, h), w, h)[0::2])
    x1, y1, x2, y2 = to_pixels((0, 0, GRID, GRID), w, h)  # the whole square is clipped to the picture
    assert (x1, y1) == (0, 0) and (round(x2, 6), round(y2, 6)) == (w, h)


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_annotate_draws_boxes_and_labels_on_an_enlarged_copy():
    image = Image.new("RGB", (112, 112), (200, 200, 200))
    before = image.tobytes()
    regions = parse_regions(format_region("R2", (0, 0, 499, 499)) + format_region("圈出七", (600, 600, 999, 999)))
    out = annotate(image, regions)
    assert image.tobytes() == before and out.size == (448, 448) and out.mode == "RGB"  # 4x, the input untouched
    a = np.asarray(out).astype(int)
    assert (a[20:60, 300:400] == 90).all()  # outside every box: dimmed (200 blended 55% with black)
    assert (a[100:150, 100:150] == 200).all()  # inside: as it was
    assert (a[0:224, 0:2] == (230, 25, 75)).all()  # the first box's outline, two pixels wide
    assert len({tuple(p) for p in a[250:448, 250:448].reshape(-1, 3)}) > 3  # the second box's outline and its tab
    assert annotate(image, []).size == (448, 448)
    big = Image.new("L", (1000, 600))
    assert annotate(big, regions).size == (1000, 600)  # large enough already: not enlarged, made RGB
    png = png_bytes(out)
    assert Image.open(io.BytesIO(png)).format == "PNG" and MIN_SIDE == 448
