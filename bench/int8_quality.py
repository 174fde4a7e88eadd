"""What int8 and int4 weights cost in quality and buy in speed: the bundled model in float32, int8 and int4, side by
side.

Perplexity on the validation split of the token shards (`seekmoe data prepare` output; the default corpus's), or on
a held-out text (--text: JSON lines with a "text" field, e.g. runs/sft-mix4/text.val.jsonl), or, with neither, on
the corpus sample committed under tests/data; then weight bytes and batch-1 decode tok/s through the engine, all
models in the same run. Rows: float32; int8 converted in memory (`quantize_int8`); int8 and int4 (groups of 32 and
64) written by `seekmoe quantize` and loaded memory-mapped; and int4 rounded with the least-squared-error search
(`int4.MSE_SEARCH`), which was tried against Q4_0's plain rounding and not kept.

    .venv/bin/python bench/int8_quality.py [--data runs/shards | --text FILE.jsonl] [--windows 64] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from seekmoe.engine.engine import Engine
from seekmoe.engine.sampling import SamplingParams
from seekmoe.llm import DEFAULT_MODEL
from seekmoe.model import int4
from seekmoe.model.checkpoint import load_model
from seekmoe.model.quant import quantize_int8
from seekmoe.model.quantize import quantize_checkpoint
from seekmoe.text.tokenizer import Tokenizer, corpus_files, read_corpus
from seekmoe.train.loop import perplexity

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus_sample"


def windows(args) -> tuple[torch.Tensor, str]:
    """(W, T + 1) token windows to score, and where they came from."""
    n, t = args.windows, args.seq_len
    if args.text:
        tok = Tokenizer.from_pretrained(args.model)
        lines = Path(args.text).read_text(encoding="utf-8").splitlines()
        ids = [i for line in lines if line.strip() for i in tok.encode(json.loads(line)["text"])]
        n = min(n, (len(ids) - 1) // t)
        return torch.tensor(ids[:n * t + 1]).unfold(0, t + 1, t)[:n], f"{args.text}, {n} windows of {t}"
    if args.data and Path(args.data).is_dir():
        from seekmoe.train.data import TokenShards

        val = TokenShards(args.data, "val", shuffle=False)
        x, y = val.batch(0, n, t)
        return torch.cat([x, y[:, -1:]], dim=1), f"{args.data} (val split), {n} windows of {t}"
    tok = Tokenizer.from_pretrained(args.model)
    ids = [i for text in read_corpus(corpus_files([SAMPLE])) for i in tok.encode(text)]
    n = min(n, (len(ids) - 1) // t)
    return torch.tensor(ids[:n * t + 1]).unfold(0, t + 1, t)[:n], f"tests/data/corpus_sample, {n} windows of {t}"


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def decode_speed(model, steps: int) -> float:
    eng = Engine(model, cache_tokens=4096)
    eng.add_request(list(range(3, 35)), SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True))
    for _ in range(4):
        eng.step()
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps // 3):
            eng.step()
        best = max(best, (steps // 3) / (time.perf_counter() - t))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--data", default="runs/shards", help="token shards folder; the corpus sample if missing")
    parser.add_argument("--text", help="score this held-out text instead: JSON lines with a 'text' field")
    parser.add_argument("--windows", type=int, default=64, help="validation windows to score")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--steps", type=int, default=96, help="decode steps timed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, source = windows(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, bits, group, search in (("float32", None, None, None), ("int8", None, None, None),
                                          ("int8 mapped", 8, None, None), ("int4 g32", 4, 32, int4.SEARCH),
                                          ("int4 g64", 4, 64, int4.SEARCH),
                                          ("int4 g32, MSE search", 4, 32, int4.MSE_SEARCH)):
            if bits is None:
                model = load_model(args.model, dtype="float32")
                if name == "int8":
                    quantize_int8(model)
            else:
                old, int4.SEARCH = int4.SEARCH, search
                try:
                    out = quantize_checkpoint(args.model, Path(tmp) / name.replace(" ", "-"), bits,
                                              group_size=group or 32, progress=False)
                finally:
                    int4.SEARCH = old
                model = load_model(out)
            rows.append((name, perplexity(model, data), weight_bytes(model), decode_speed(model, args.steps)))
    base = rows[0]
    print(f"model: {args.model}\nscored: {source}\n")
    print("| weights | perplexity | change | weight MiB | decode tok/s (batch 1) | speed vs float32 |")
    print("|---|---|---|---|---|---|")
    for name, ppl, nbytes, tps in rows:
        print(f"| {name} | {ppl:.3f} | {100 * (ppl / base[1] - 1):+.2f}% | {nbytes / 2**20:.1f} | {tps:.1f} | "
              f"{tps / base[3]:.2f}x |")


if __name__ == "__main__":
    main()
