"""Summaries of long real documents: time, peak memory and length, per method and size, one table.

English is the committed corpus sample's novels and addresses, Chinese its classical poetry, repeated to the size
asked. Each row runs in a fresh process, so its peak memory (ru_maxrss) is its own.

    .venv/bin/python bench/summarize.py [--sizes 100000,1000000] [--methods extractive,abstractive] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus_sample"
SOURCES = {"en": ["austen.txt", "moby_dick.txt", "sotu.txt"], "zh": ["chinese_poetry.txt"]}


def document(lang: str, chars: int) -> str:
    text = "\n\n".join((SAMPLE / name).read_text(encoding="utf-8") for name in SOURCES[lang])
    return (text * (chars // len(text) + 1))[:chars]


def one(lang: str, chars: int, method: str, model: str | None, max_length: int) -> dict:
    """Run in this process: load the model, summarise, measure."""
    from seekmoe.llm import LLM

    text = document(lang, chars)
    with LLM(model) as llm:
        t0 = time.perf_counter()
        summary = llm.generate_summary(text, max_length=max_length, style="bullets", method=method)
        seconds = time.perf_counter() - t0
        tokens = len(llm.tokenizer.encode(summary))
    return {"lang": lang, "chars": chars, "method": method, "seconds": seconds, "summary_tokens": tokens,
            "max_length": max_length, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start": summary[:120]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="document sizes in characters, comma-separated")
    p.add_argument("--methods", default="extractive,abstractive", help="extractive, abstractive or both")
    p.add_argument("--langs", default="en,zh", help="en, zh or both")
    p.add_argument("--model", help="model folder (default: the bundled one)")
    p.add_argument("--max-length", type=int, default=200, help="summary budget in tokens (default 200)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # lang:chars:method, run inside a child process
    args = p.parse_args()
    if args.one:
        lang, chars, method = args.one.split(":")
        print(json.dumps(one(lang, int(chars), method, args.model, args.max_length), ensure_ascii=False))
        return
    rows = []
    for lang in args.langs.split(","):
        for chars in map(int, args.sizes.split(",")):
            for method in args.methods.split(","):
                cmd = [sys.executable, __file__, "--one", f"{lang}:{chars}:{method}",
                       "--max-length", str(args.max_length)] + (["--model", args.model] if args.model else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{lang} {chars:>9,} chars {method:<11} {r['seconds']:7.1f} s  "
                      f"peak {r['peak_rss_mib']:6.0f} MiB  "
                      f"{r['summary_tokens']:>3}/{r['max_length']} tokens  {r['start'][:60]!r}", file=sys.stderr)
    print("| language | characters | method | seconds | peak memory (MiB) | summary tokens / max |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lang']} | {r['chars']:,} | {r['method']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{r['summary_tokens']} / {r['max_length']} |")


if __name__ == "__main__":
    main()
