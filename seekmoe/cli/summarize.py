"""`seekmoe summarize FILE`: a summary of a UTF-8 text of any length (or of stdin), printed to stdout.

The summary is LLM.generate_summary's, as in the Python API and the server's /v2/summarize. Free of torch at import,
like cli/main.py: the model loads inside the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from seekmoe.cli import model_flags
from seekmoe.errors import CLIError
from seekmoe.text.summarize import METHODS, STYLES, SummaryError

if TYPE_CHECKING:
    from seekmoe.llm import LLM


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the UTF-8 text to summarize; - reads standard input")
    p.add_argument("--max-length", type=int, default=200, metavar="N",
                   help="most tokens in the summary, counted with the model's tokenizer (default 200)")
    p.add_argument("--style", choices=STYLES, default="bullets",
                   help="bullets: '- ' lines; paragraph: one paragraph; sections: the document's own headings "
                        "(Markdown #, underlined reST titles), each with a summary of its section "
                        "(default bullets)")
    p.add_argument("--method", choices=METHODS, default="hybrid",
                   help="hybrid: the sentences that state the document's conclusions, its opening and its most "
                        "central ones, shortened by the model only where every figure and most words survive; "
                        "abstractive: the model summarizes chunks, then their summaries (map-reduce); "
                        "extractive: the most central sentences (TextRank), no generation (default hybrid)")
    p.add_argument("--model", metavar="DIR",
                   help="a checkpoint folder (config.json, weights, tokenizer.json); default: the bundled "
                        "seekmoe-tiny-chat. Extractive summaries use only its tokenizer, to count")


def read_text(name: str) -> str:
    """The text of a file, or of stdin for "-", as UTF-8 (a byte-order mark is dropped)."""
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


def run_from_args(args: argparse.Namespace, open_llm: Callable[[str | None], LLM] = model_flags.open_llm) -> int:
    """open_llm(--model): the model; the terminal's own (cli/model_flags.py) unless a caller hands in another."""
    if args.max_length < 1:
        raise CLIError(f"--max-length must be >= 1, got {args.max_length}")
    text = read_text(args.file)
    llm = open_llm(args.model)
    try:
        summary = llm.generate_summary(text, max_length=args.max_length, style=args.style, method=args.method,
                                       progress=sys.stderr.isatty())
    except SummaryError as e:
        raise CLIError(str(e)) from None
    print(summary)
    return 0
