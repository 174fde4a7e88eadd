"""seekmoe against llama.cpp on the same weights: greedy agreement and decode speed.

Exports MODEL (default: the bundled model) with `seekmoe export gguf`, then runs each engine in its own
subprocess of this script (torch and llama.cpp bring different OpenMP runtimes): both start from the same prompt
token ids (our tokenizer's), decode greedily, and report their first 16 tokens and decode tokens/second (median
of the repeats). Prints one markdown table and how many of the first 16 greedy tokens agree.

    .venv/bin/python bench/llama_cpp.py [--model DIR] [--quant f32|f16|q8_0] [--decode 64] [--threads 2]

Needs llama-cpp-python (`pip install llama-cpp-python`, which compiles llama.cpp: ~25 minutes on 2 cores);
without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the package it measures: drop its folder from the path, or `import llama_cpp` finds it
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

PROMPT = "The river rose quickly after three days of heavy rain, and by Thursday morning"
GREEDY = 16  # tokens compared between the engines


def seekmoe_run(model: str, ids: list[int], decode: int, repeats: int) -> dict:
    from seekmoe.llm import LLM

    with LLM(model) as llm:
        greedy = llm.generate(prompt_token_ids=ids, max_tokens=GREEDY, temperature=0.0, ignore_eos=True).token_ids
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            llm.generate(prompt_token_ids=ids, max_tokens=1, temperature=0.0, ignore_eos=True)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            llm.generate(prompt_token_ids=ids, max_tokens=decode + 1, temperature=0.0, ignore_eos=True)
            rates.append(decode / max(time.perf_counter() - start - prefill, 1e-9))
    return {"greedy": greedy, "decode_tok_s": statistics.median(rates)}


def llama_cpp_run(gguf_path: str, ids: list[int], decode: int, repeats: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=gguf_path, n_ctx=len(ids) + decode + 8, n_threads=threads, logits_all=True,
                verbose=False)

    def run(n: int) -> tuple[list[int], float]:
        """n greedy tokens after the prompt, and the seconds the n - 1 single-token decode steps took."""
        llm.reset()
        llm.eval(ids)
        out = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
        start = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        return out, time.perf_counter() - start

    greedy, _ = run(GREEDY)
    rates = [decode / max(run(decode + 1)[1], 1e-9) for _ in range(repeats)]
    return {"greedy": greedy, "decode_tok_s": statistics.median(rates)}


def child(args: argparse.Namespace) -> None:
    ids = json.loads(args.ids)
    if args.engine == "seekmoe":
        result = seekmoe_run(args.model, ids, args.decode, args.repeats)
    else:
        result = llama_cpp_run(args.gguf, ids, args.decode, args.repeats, args.threads)
    print(json.dumps(result))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder to compare (default: the bundled model)")
    p.add_argument("--quant", choices=("f32", "f16", "q8_0"), default="f32", help="GGUF weight type (default f32)")
    p.add_argument("--decode", type=int, default=64, help="tokens decoded per timed run (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--engine", choices=("seekmoe", "llama.cpp"), help=argparse.SUPPRESS)  # child processes
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.engine:
        child(args)
        return 0
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama_cpp (llama-cpp-python) is not installed: nothing to compare against, skipping. "
              "Install it with `pip install llama-cpp-python` (compiles llama.cpp, ~25 minutes).")
        return 0

    from seekmoe.export import export_gguf
    from seekmoe.llm import DEFAULT_MODEL
    from seekmoe.text.tokenizer import Tokenizer

    model = Path(args.model) if args.model else DEFAULT_MODEL
    ids = Tokenizer.from_pretrained(model).encode(PROMPT, add_bos=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = export_gguf(model, Path(tmp) / f"model-{args.quant}.gguf", args.quant, progress=False)
        for engine in ("seekmoe", "llama.cpp"):
            cmd = [sys.executable, __file__, "--engine", engine, "--model", str(model), "--gguf", str(gguf_path),
                   "--ids", json.dumps(ids), "--decode", str(args.decode), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{engine} failed:\n{done.stderr}", file=sys.stderr)
                return 1
            results[engine] = json.loads(done.stdout.strip().splitlines()[-1])

    ours, theirs = results["seekmoe"]["greedy"], results["llama.cpp"]["greedy"]
    agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"{model.name}, GGUF {args.quant}, prompt {len(ids)} tokens, {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| engine | decode tok/s | greedy first 16 vs seekmoe |")
    print("|---|---|---|")
    print(f"| seekmoe float32 | {results['seekmoe']['decode_tok_s']:.1f} | reference |")
    print(f"| llama.cpp {args.quant} | {results['llama.cpp']['decode_tok_s']:.1f} | {agree}/{GREEDY} |")
    if agree < GREEDY:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        print(f"\nfirst difference at token {first}: seekmoe {ours[first:first + 4]}, "
              f"llama.cpp {theirs[first:first + 4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
