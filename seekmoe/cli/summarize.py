"""`seekmoe summarize FILE`: a summary of a UTF-8 text of any length (or of stdin), printed to stdout.

Free of torch at import, like cli.py: the model comes from `open_llm`, a callable the caller hands in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from seekmoe.text.summarize import METHODS, STYLES, SummaryError, chat_generate, summarize

DEFAULT_CONTEXT = 1024  # when the model does not say its own


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the UTF-8 text to summarize; - reads standard input")
    p.add_argument("--max-length", type=int, default=200, metavar="N",
                   help="most tokens in the summary, counted with the model's tokenizer (default 200)")
    p.add_argument("--style", choices=STYLES, default="bullets",
                   help="bullets: '- ' lines; paragraph: one paragraph; sections: the document's own headings "
                        "(Markdown #, underlined reST titles), each with a summary of its section "
                        "(default bullets)")
    p.add_argument("--method", choices=METHODS, default="abstractive",
                   help="abstractive: the model summarizes chunks, then their summaries (map-reduce); "
                        "extractive: the document's most central sentences (TextRank), no generation "
                        "(default abstractive)")
    p.add_argument("--model", metavar="DIR",
                   help="a checkpoint folder (config.json, weights, tokenizer.json); default: the bundled "
                        "seekmoe-tiny-chat. Extractive summaries use only its tokenizer, to count")


def read_text(name: str) -> str:
    """The text of a file, or of stdin for "-", as UTF-8 (a byte-order mark is dropped)."""
    from seekmoe.errors import CLIError

    label = "standard input" if name == "-" else name
    try:
        if name == "-":
            stream = getattr(sys.stdin, "buffer", None)
            if stream is None:  # a text stream without bytes under it (tests, some embedders): already decoded
                return sys.stdin.read()
            data = stream.read()
        else:
            with open(name, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise CLIError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{label}: is a directory, expected a text file") from None
    except OSError as e:
        raise CLIError(f"{label}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CLIError(f"{label} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                       f"expected UTF-8 text") from None


def context_tokens(llm: Any) -> int:
    """The model's context length, or DEFAULT_CONTEXT when the object does not carry a config."""
    n = getattr(getattr(getattr(llm, "model", None), "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else DEFAULT_CONTEXT


def run_from_args(args: argparse.Namespace, open_llm: Callable[[str | None], Any]) -> int:
    from seekmoe.errors import CLIError

    if args.max_length < 1:
        raise CLIError(f"--max-length must be >= 1, got {args.max_length}")
    text = read_text(args.file)
    llm = open_llm(args.model)
    context = context_tokens(llm)

    def count_tokens(s: str) -> int:
        return len(llm.tokenizer.encode(s))

    generate = chat_generate(llm, context) if args.method == "abstractive" else None
    try:
        summary = summarize(text, max_length=args.max_length, style=args.style, method=args.method,
                            generate=generate, count_tokens=count_tokens, context_tokens=context,
                            progress=sys.stderr.isatty())
    except SummaryError as e:
        raise CLIError(str(e)) from None
    print(summary)
    return 0
