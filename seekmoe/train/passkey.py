"""Long documents with one number hidden in them, asked for at the end: passkey retrieval (Mohtashami and Jaggi,
2023), the test of a stretched context and the fine-tuning data that teaches a model to use it.

A document is corpus prose of about N tokens (English paragraphs, or classical Chinese for zh) with a needle at a
chosen depth: a five-digit pass key, said twice. The user's message is the document and a question; the answer
says the key. The test (`split="test"`) uses the classic needle ("The pass key is 71432. Remember it. 71432 is
the pass key.") and questions that never occur in the training split, which has needles and questions of its own,
so a model that passes has learned to find a number, not a sentence.

`write` also writes ordinary long text ({"text"} records, contiguous passages of the corpus), learned whole: a
context stretched with YaRN wants the model to read long sequences of every kind, not only to find keys.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from seekmoe.errors import SeekmoeError
from seekmoe.train.chat_data import write_text
from seekmoe.train.copy_text import corpus_paragraphs

# (needles, questions, answers) per split and language; {k} is the key
TEMPLATES = {
    ("train", "en"): (["Keep this number in mind: the secret code is {k}. Again, the secret code is {k}.",
                       "Important: your access number is {k}. The access number is {k}.",
                       "The key you will need later is {k}. Write it down: {k}."],
                      ["What was the secret number in the text?", "Which number should I keep in mind?",
                       "Find the number hidden in the text above.", "What is the code?"],
                      ["The number is {k}.", "It is {k}.", "{k}"]),
    ("train", "zh"): (["请记住这个号码：密码是{k}。再说一遍，密码是{k}。", "重要：你的编号是{k}。编号是{k}。",
                       "以后要用的号码是{k}。记下来：{k}。"],
                      ["文中藏的号码是多少？", "我应该记住哪个号码？", "找出上文里的号码。"],
                      ["号码是{k}。", "是{k}。", "{k}"]),
    ("test", "en"): (["The pass key is {k}. Remember it. {k} is the pass key."],
                     ["What is the pass key?", "Tell me the pass key from the text above."],
                     ["The pass key is {k}."]),
    ("test", "zh"): (["通行密码是{k}。记住它。{k}就是通行密码。"],
                     ["通行密码是多少？", "上文中的通行密码是什么？"],
                     ["通行密码是{k}。"]),
}
LANGS = ("en", "zh")
MAX_TOKENS = 1 << 20


class PasskeyError(SeekmoeError, ValueError):
    """A request this generator cannot meet; the message says what to change."""


class Filler:
    """Corpus paragraphs of one language with their token counts, drawn in order from a seeded shuffle."""

    def __init__(self, paragraphs: list[str], tokenizer, seed: int):
        if not paragraphs:
            raise PasskeyError("no filler paragraphs: --filler takes a folder of .txt files (e.g. data/corpus)")
        self.paragraphs = list(paragraphs)
        random.Random(seed).shuffle(self.paragraphs)
        self.tokenizer, self.next, self.lengths = tokenizer, 0, {}

    def take(self, tokens: int, start: int | None = None) -> list[str]:
        """The next paragraphs (or those from `start` on), as many as fit in `tokens` tokens (at least one)."""
        if start is not None:
            self.next = start
        out, total = [], 0
        while True:
            p = self.paragraphs[self.next % len(self.paragraphs)]
            if p not in self.lengths:
                self.lengths[p] = len(self.tokenizer.encode(p))
            if out and total + self.lengths[p] > tokens:
                return out
            out.append(p)
            total += self.lengths[p]
            self.next += 1


def fillers(folder: Path, tokenizer, seed: int) -> dict[str, Filler]:
    """English filler from the corpus's ASCII paragraphs, Chinese from the rest (one line or a short poem each)."""
    return {"en": Filler(corpus_paragraphs(folder, 200, 1500, english=True), tokenizer, seed),
            "zh": Filler(corpus_paragraphs(folder, 20, 600, english=False), tokenizer, seed + 1)}


def document(rng: random.Random, filler: Filler, tokens: int, depth: float, lang: str, split: str) -> dict:
    """One chat example: up to `tokens` tokens of filler with the needle after the paragraph nearest `depth`
    (0: first, 1: last), then the question; the assistant's answer; meta for scoring."""
    needles, questions, answers = TEMPLATES[(split, lang)]
    key = str(rng.randint(10000, 99999))
    paragraphs = filler.take(tokens)
    at = round(depth * len(paragraphs))
    paragraphs.insert(at, rng.choice(needles).format(k=key))
    sep = "\n" if lang == "zh" else "\n\n"
    user = sep.join(paragraphs) + "\n\n" + rng.choice(questions)
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": rng.choice(answers).format(k=key)}],
            "meta": {"key": key, "tokens": tokens, "depth": depth, "lang": lang}}


def long_text(rng: random.Random, filler: Filler, tokens: int) -> dict:
    """Contiguous paragraphs of about `tokens` tokens, learned whole."""
    return {"text": "\n\n".join(filler.take(tokens, start=rng.randrange(len(filler.paragraphs))))}


def write(out: str | Path, filler_folder: str | Path, tokenizer, n: int, texts: int, min_tokens: int,
          max_tokens: int, val: int = 50, seed: int = 0, zh_share: float = 0.3) -> list[Path]:
    """OUT/passkey.train.jsonl (n examples, lengths uniform in [min_tokens, max_tokens], depths uniform),
    OUT/passkey.val.jsonl (val examples of the test split's templates, for the validation loss),
    OUT/long_text.train.jsonl (texts passages of max_tokens), each written atomically."""
    for name, v, lo in (("examples", n, 1), ("long texts", texts, 0), ("validation examples", val, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 10_000_000:
            raise PasskeyError(f"the number of {name} must be between {lo} and 10,000,000, got {v!r}")
    if not 16 <= min_tokens <= max_tokens <= MAX_TOKENS:
        raise PasskeyError(f"lengths must satisfy 16 <= min ({min_tokens}) <= max ({max_tokens}) <= {MAX_TOKENS:,}")
    folder = Path(filler_folder)
    if not folder.is_dir():
        raise PasskeyError(f"{folder}: no such folder (--filler takes a folder of .txt files, e.g. data/corpus)")
    rng = random.Random(seed)
    pools = fillers(folder, tokenizer, seed)

    def lang() -> str:
        return "zh" if rng.random() < zh_share else "en"

    train = [document(rng, pools[la], rng.randint(min_tokens, max_tokens), rng.random(), la, "train")
             for la in (lang() for _ in range(n))]
    valid = [document(rng, pools[la], rng.randint(min_tokens, max_tokens), rng.random(), la, "test")
             for la in (lang() for _ in range(val))]
    text = [long_text(rng, pools["en"], max_tokens) for _ in range(texts)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("passkey.train", train), ("passkey.val", valid), ("long_text.train", text)):
        if rows:
            paths.append(out / f"{name}.jsonl")
            write_text(paths[-1], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return paths


DESCRIPTION = ("Write long-context fine-tuning data: corpus documents with a five-digit key hidden at a random "
               "depth and asked for at the end (English and Chinese; the test wording is kept out), and long "
               "passages of plain text, as JSONL for `seekmoe finetune`.")


def add_arguments(parser) -> None:
    """`seekmoe data passkey --out DIR --filler DIR [--examples N] [--texts N] [--min-tokens N] [--max-tokens N]`."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--filler", required=True, metavar="DIR",
                        help="folder of .txt files (e.g. data/corpus): the documents' prose")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer that measures lengths (default: the bundled "
                        "model's)")
    parser.add_argument("--examples", type=int, default=2000, metavar="N", help="passkey examples (default 2,000)")
    parser.add_argument("--texts", type=int, default=500, metavar="N", help="long plain-text passages (default 500)")
    parser.add_argument("--min-tokens", type=int, default=256, metavar="N", help="shortest document (default 256)")
    parser.add_argument("--max-tokens", type=int, default=3800, metavar="N",
                        help="longest document and the passages' length (default 3,800: fits --seq-len 4096)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="the same seed writes byte-identical files (default 0)")


def run_from_args(args) -> int:
    from seekmoe.errors import CLIError
    from seekmoe.model.checkpoint import DEFAULT_MODEL
    from seekmoe.text.tokenizer import Tokenizer, TokenizerError

    try:
        tok = Tokenizer.from_pretrained(args.tokenizer or DEFAULT_MODEL)
        paths = write(args.out, args.filler, tok, args.examples, args.texts, args.min_tokens, args.max_tokens,
                      seed=args.seed)
    except (PasskeyError, TokenizerError, OSError) as e:
        raise CLIError(str(e)) from None
    for p in paths:
        print(f"wrote {p}")
    return 0
