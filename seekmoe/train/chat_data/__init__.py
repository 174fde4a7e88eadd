"""The fine-tuning chat data we ship: real conversations where a licensed source is installed, generated where none is.

Every example is one JSON line, {"messages": [{"role": ..., "content": ...}, ...], "meta": {...}}; meta carries
what evaluation needs (the intent label, the fact a dialogue must recall, the arithmetic answer).
`build_all` writes OUT/{name}.train.jsonl and OUT/{name}.val.jsonl for every set, and SOURCES.json.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from seekmoe.errors import SeekmoeError

SETS = ("chatterbot", "python_faq", "arithmetic", "arithmetic_tools", "intents", "dialogues", "dialogues_zh",
        "support", "recall")
# generated sets: (train, val) examples; a dialogue is under 1,000 characters, so these keep the folder at a few MB
SIZES = {"arithmetic": (2000, 200), "arithmetic_tools": (2000, 200), "intents": (6000, 600), "dialogues": (5000, 300),
         "dialogues_zh": (5000, 300), "support": (6000, 300), "recall": (6000, 300)}
VAL_FRACTION = 0.05  # of the real sets, which are small: a 5 % val set still holds a few dozen examples
DESCRIPTION = ("Write the chat fine-tuning sets as JSONL (train and val for each) plus SOURCES.json: ChatterBot "
               "conversations and Python FAQ answers where those packages are installed, and generated arithmetic "
               "problems, support intents, answers to support messages, multi-turn support dialogues and chats that "
               "ask several facts back (English and Chinese).")


class ChatDataError(SeekmoeError, ValueError):
    """A source is missing or malformed, or a request cannot be met; the message says what to do."""


class MissingSourceError(ChatDataError):
    """A real source is not installed: the one kind --skip-missing may skip (a malformed source never is)."""


def example(turns: list[tuple[str, str]], meta: dict) -> dict:
    """One example from (role, content) pairs."""
    return {"messages": [{"role": role, "content": content} for role, content in turns], "meta": meta}


def check_example(ex: dict, where: str) -> None:
    """An optional system message, then user and assistant alternating, ending on the assistant; an assistant
    message that calls tools is followed by their results (role tool) and another assistant message. No empty
    text, except the content of a message that calls tools."""
    messages = ex.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatDataError(f"{where}: 'messages' must be a non-empty list, got {messages!r}")
    roles = [m.get("role") for m in messages]
    expected = "user"
    for i, m in enumerate(messages):
        role = m.get("role")
        if i == 0 and role == "system":
            continue
        ok = role == expected or (expected == "tool" and role == "assistant" and roles[i - 1] == "tool")
        if not ok:
            raise ChatDataError(f"{where}: roles must be [system,] user, assistant (tool calls: assistant, tool..., "
                                f"assistant) ... ending on assistant, got {roles}")
        calls = role == "assistant" and m.get("tool_calls")
        expected = "tool" if calls or role == "tool" else "assistant" if role == "user" else "user"
        if not isinstance(m.get("content"), str) or not (m["content"].strip() or calls):
            raise ChatDataError(f"{where}: every message needs non-empty text, got {m!r}")
    if roles[-1] != "assistant" or messages[-1].get("tool_calls"):
        raise ChatDataError(f"{where}: roles must end on an assistant answer, got {roles}")


def write_jsonl(path: Path, examples: list[dict]) -> None:
    """Check every example, then write atomically: a reader never sees half a file, a failed run keeps the old."""
    for i, ex in enumerate(examples):
        check_example(ex, f"{path.name} line {i + 1}")
    write_text(path, "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))


def write_text(path: Path, text: str) -> None:
    from seekmoe.files import atomic_write  # here: `seekmoe --help` imports this module, not torch

    atomic_write(path, text.encode("utf-8"))


def split_real(examples: list[dict], seed: int, name: str) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle, then VAL_FRACTION (at least one example) held out."""
    shuffled = list(examples)
    random.Random(f"{seed}/{name}").shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * VAL_FRACTION)) if len(shuffled) > 1 else 0
    return shuffled[n_val:], shuffled[:n_val]


def resolve_sizes(sizes: dict | None) -> dict[str, tuple[int, int]]:
    merged = dict(SIZES)
    for name, value in (sizes or {}).items():
        if name not in SIZES:
            raise ChatDataError(f"sizes: unknown generated set {name!r}; expected one of {', '.join(SIZES)}")
        if (not isinstance(value, tuple | list) or len(value) != 2
                or not all(isinstance(v, int) and v >= 0 for v in value)):
            raise ChatDataError(f"sizes[{name!r}] must be (train, val) counts >= 0, got {value!r}")
        merged[name] = (value[0], value[1])
    return merged


def _real_set(name: str, seed: int, chatterbot_dir, faq_dir) -> tuple[list[dict], list[dict], dict]:
    if name == "chatterbot":
        from seekmoe.train.chat_data import chatterbot

        examples, source = chatterbot.load(chatterbot_dir)
    else:
        from seekmoe.train.chat_data import python_faq

        examples, source = python_faq.load(faq_dir)
    train, val = split_real(examples, seed, name)
    return train, val, source


def _generated_set(name: str, seed: int, n_train: int, n_val: int) -> tuple[list[dict], list[dict], dict]:
    from seekmoe.train.chat_data import arithmetic, customer_service, customer_service_zh, recall, support_answers

    # each set and split has its own stream, so changing one size leaves the other files byte-identical
    def rng(split: str) -> random.Random:
        return random.Random(f"{seed}/{name}/{split}")

    if name == "arithmetic":
        train, val = arithmetic.generate(n_train, rng("train")), arithmetic.generate(n_val, rng("val"))
    elif name == "arithmetic_tools":
        # new problems to train on; the held-out ones are arithmetic's own, so with and without the tool are
        # measured on the same problems
        train = [arithmetic.with_tool(p) for p in arithmetic.generate(n_train, rng("train"))]
        arithmetic_val = random.Random(f"{seed}/arithmetic/val")
        val = [arithmetic.with_tool(p) for p in arithmetic.generate(n_val, arithmetic_val)]
    elif name == "intents":
        train = customer_service.intent_examples(n_train, rng("train"), held_out=False)
        val = customer_service.intent_examples(n_val, rng("val"), held_out=True)
    elif name == "dialogues":
        train = customer_service.dialogues(n_train, rng("train"), held_out=False)
        val = customer_service.dialogues(n_val, rng("val"), held_out=True)
    elif name == "dialogues_zh":
        book = customer_service_zh.CHINESE
        train = customer_service.dialogues(n_train, rng("train"), held_out=False, book=book)
        val = customer_service.dialogues(n_val, rng("val"), held_out=True, book=book)
    elif name == "recall":
        train = recall.recall_chats(n_train, rng("train"), held_out=False)
        val = recall.recall_chats(n_val, rng("val"), held_out=True)
    else:
        train = support_answers.support_answers(n_train, rng("train"), held_out=False)
        val = support_answers.support_answers(n_val, rng("val"), held_out=True)
    module = {"arithmetic": "arithmetic", "arithmetic_tools": "arithmetic", "dialogues_zh": "customer_service_zh",
              "support": "support_answers", "recall": "recall"}.get(name, "customer_service")
    source = {"origin": f"generated by seekmoe/train/chat_data/{module}.py, seed {seed}", "license": "Apache-2.0"}
    if name == "arithmetic_tools":
        source["note"] = "the arithmetic problems solved by calling the math plugin; val = arithmetic's val problems"
    elif name == "dialogues_zh":
        source["note"] = "the support dialogues in Chinese; val uses phrasing templates never seen in train"
    elif name == "recall":
        source["note"] = ("chats giving two to four facts and asking each back, English and Chinese; val uses "
                          "phrasing templates never seen in train")
    elif name == "support":
        source["note"] = ("answers to single support messages (the intent set's phrasings); val uses phrasing "
                          "templates never seen in train")
    elif name != "arithmetic":
        source["note"] = "val uses phrasing templates never seen in train"
    return train, val, source


def build_all(out_dir, seed: int = 0, sizes: dict | None = None, progress: bool = True, *,
              skip_missing: bool = False, chatterbot_dir=None, faq_dir=None) -> dict:
    """Write every set into out_dir and return what SOURCES.json says (counts per split, skipped sources).

    A missing real source raises ChatDataError, or with skip_missing is reported on stderr and left out.
    chatterbot_dir and faq_dir override where the real sources are looked for.
    """
    from tqdm import tqdm

    sizes = resolve_sizes(sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"seed": seed, "format": "one JSON object a line: {messages: [{role, content}], meta}",
              "sets": [], "skipped": []}
    for name in tqdm(SETS, desc="chat data", unit="set", file=sys.stderr, disable=not progress):
        try:
            if name in sizes:
                train, val, source = _generated_set(name, seed, *sizes[name])
            else:
                train, val, source = _real_set(name, seed, chatterbot_dir, faq_dir)
        except MissingSourceError as e:
            if not skip_missing:
                raise
            print(f"skipping {name}: {e}", file=sys.stderr)
            report["skipped"].append({"name": name, "reason": str(e)})
            continue
        for split, examples in (("train", train), ("val", val)):
            write_jsonl(out / f"{name}.{split}.jsonl", examples)
        report["sets"].append({"name": name, **source, "files": [f"{name}.train.jsonl", f"{name}.val.jsonl"],
                               "counts": {"train": len(train), "val": len(val)}})
    write_text(out / "SOURCES.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return report


def add_arguments(parser) -> None:
    """`seekmoe data chat --out DIR [--seed N] [--skip-missing]`."""
    if parser.description is None:
        parser.description = DESCRIPTION
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for the {name}.train/val.jsonl files and SOURCES.json (created if missing)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the generators and of the real sets' train/val split; the same seed writes "
                             "byte-identical files (default 0)")
    parser.add_argument("--train-size", action="append", default=[], metavar="SET=N",
                        help="training examples of a generated set (repeatable; default "
                             + ", ".join(f"{name}={train}" for name, (train, _) in SIZES.items())
                             + "); its val set and every other file stay byte-identical")
    parser.add_argument("--skip-missing", action="store_true",
                        help="report a missing real source (chatterbot-corpus, python3.11-doc) on stderr and "
                             "leave its set out, instead of failing")


def train_sizes(given: list[str]) -> dict[str, tuple[int, int]]:
    """--train-size SET=N values as build_all's sizes: N training examples, the set's usual val count."""
    sizes = {}
    for item in given:
        name, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise ChatDataError(f"--train-size wants SET=N with N a whole number >= 0, got {item!r}")
        if name not in SIZES:
            raise ChatDataError(f"--train-size: unknown generated set {name!r}; expected one of {', '.join(SIZES)}")
        sizes[name] = (int(count), SIZES[name][1])
    return sizes


def run_from_args(args) -> int:
    """Build the sets from parsed arguments; bad input is a CLIError (one line, exit code 2)."""
    from seekmoe.errors import CLIError

    try:
        sizes = train_sizes(args.train_size)
        report = build_all(args.out, seed=args.seed, sizes=sizes, progress=sys.stderr.isatty(),
                           skip_missing=args.skip_missing)
    except (ChatDataError, OSError) as e:
        raise CLIError(str(e)) from None
    for s in report["sets"]:
        print(f"{s['name']:<11} train {s['counts']['train']:>6,}  val {s['counts']['val']:>5,}  ({s['origin']})")
    for s in report["skipped"]:
        print(f"{s['name']:<11} skipped: source missing")
    print(f"wrote {Path(args.out) / 'SOURCES.json'}")
    return 0
