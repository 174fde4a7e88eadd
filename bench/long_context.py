"""Decode and prefill as the context grows: seekmoe against llama.cpp on the same random weights (issue 26's goals).

bench/llama_cpp.py's `small` config (DeepSeek-V2-Lite at a quarter width, vocabulary 8192; --config) with room for
the longest context, saved as float32 and exported to a GGUF f32 file. Each engine runs in its own subprocess (torch
and llama.cpp bring different OpenMP runtimes) with --threads threads, and reads the same prompt token ids. For each
context length C and each repeat, a fresh prompt of C random ids:

- prefill: C / the seconds until the first token (seekmoe: `LLM.submit`, its engine on a background thread, chunks
  of 256 tokens; llama.cpp: `Llama.eval`, n_batch 256);
- decode: the --decode tokens after the first, timed from the first to the last (seekmoe streams the same prompt
  again, which its prefix cache holds, so only the decode is timed; llama.cpp evaluates one token at a time after
  the prefill, greedy argmax each).

Medians of --repeats, run in rounds (every context once a round). Prints a markdown table for each of seekmoe's
--kv-cache-dtype (its float32 cache, then its int8 one; llama.cpp's beside both) with the goals: decode at 4k and
more tokens >= 0.9x seekmoe's own decode at the shortest context (with the same cache), and ahead of llama.cpp at
the same context; prefill >= 1.0x llama.cpp. Beside them, the KV cache's bytes at each context (seekmoe: its rows;
llama.cpp: its state after the prompt, which is its cache's cells and a row of logits) and each worker's peak memory.

    .venv/bin/python bench/long_context.py [--contexts 64,1024,4096,16384] [--threads 2] [--decode 64]
                                           [--repeats 3] [--kv-cache-dtype auto,int8] [--dir DIR] [--out FILE.md]
                                           [--quick]

--dir keeps the checkpoint and the GGUF file (~4.5 GB) and reuses them while the config is unchanged. Needs
llama-cpp-python for the peer columns; without it, measures seekmoe alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from seekmoe.model.config import KV_CACHE_DTYPES  # torch-free

# this folder holds bench/llama_cpp.py, named like the package it measures: off the path, or `import llama_cpp`
# finds it; its configs are loaded from the file instead
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("bench_llama_cpp", _HERE / "llama_cpp.py")
peers = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # registered first: it has dataclasses
_spec.loader.exec_module(peers)

PREFILL_CHUNK = 256  # tokens a prefill step takes, in both engines
GOAL_DECODE_KEEP = 0.9  # decode at >= LONG tokens against our own decode at the shortest context
GOAL_PREFILL = 1.0  # prefill against llama.cpp at the same length
LONG = 4096


def config(name: str, longest: int, decode: int) -> dict:
    """bench/llama_cpp.py's config with positions for the longest prompt and its decode (a power of two)."""
    positions = 1 << (longest + decode + 8 - 1).bit_length()
    return dict(peers.CONFIGS[name], max_position_embeddings=max(positions, 4096))


# ---- workers: each runs in its own process and prints one JSON line --------------------------------------------

def work_build(cfg: dict, folder: Path) -> dict:
    import torch

    import seekmoe
    from seekmoe import CausalLM, ModelConfig, save_model
    from seekmoe.export import export_gguf

    tokenizer = Path(seekmoe.__file__).parent / "models" / "seekmoe-tiny"
    with torch.device("meta"):
        model = CausalLM(ModelConfig.from_dict(cfg))
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    save_model(model, folder / "fp32")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / f, folder / "fp32" / f)
    del model
    export_gguf(folder / "fp32", folder / "f32.gguf", "f32", progress=False)
    added = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    return dict(config=cfg, first_plain_id=max(t["id"] for t in added) + 1)


def peak_memory() -> int:
    """This process's peak resident memory, bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def in_rounds(prompts: dict[str, list[list[int]]]) -> Iterator[tuple[str, list[int]]]:
    """(context, prompt) one of each context a round, shortest first: the machines are shared, and a slower or faster
    spell then falls on every context alike instead of on one context's runs (and the ratios to the shortest)."""
    for i in range(max(len(runs) for runs in prompts.values())):
        for c, runs in prompts.items():
            if i < len(runs):
                yield c, runs[i]


def medians(out: dict, prefill: dict[str, list[float]], decode: dict[str, list[float]]) -> dict:
    """out with each context's median prefill and decode speed, and this process's peak memory."""
    for c in prefill:
        out["prefill"][c], out["decode"][c] = statistics.median(prefill[c]), statistics.median(decode[c])
    out["peak_memory"] = peak_memory()
    return out


def work_seekmoe(folder: Path, prompts: dict[str, list[list[int]]], a: argparse.Namespace, kv_dtype: str) -> dict:
    import torch

    from seekmoe.engine.cache import bytes_per_token
    from seekmoe.llm import LLM

    longest = max(len(p) for runs in prompts.values() for p in runs)
    out = dict(version=f"torch {torch.__version__}", prefill={}, decode={}, kv_bytes={})
    with LLM(folder, max_num_seqs=1, max_step_tokens=PREFILL_CHUNK, cache_tokens=2 * (longest + a.decode + 64),
             kv_cache_dtype=kv_dtype) as llm:
        per_token = bytes_per_token(llm.model.config, llm.engine.cache.dtype)
        def run(ids: list[int], n: int) -> tuple[float, float]:
            """(seconds to the first token, seconds from the first token to the n-th)."""
            params = llm.params(max_tokens=n, temperature=0.0, ignore_eos=True)
            start = time.perf_counter()
            first = last = None
            for delta in llm.submit(ids, params):
                if delta.token_ids:
                    last = time.perf_counter()
                    first = first or last
            return first - start, last - first

        run(prompts[next(iter(prompts))][0][:PREFILL_CHUNK], 4)  # warm-up: kernels compiled, pool started
        prefill, decode = defaultdict(list), defaultdict(list)
        for c, ids in in_rounds(prompts):
            prefill[c].append(len(ids) / run(ids, 1)[0])
            decode[c].append((a.decode - 1) / run(ids, a.decode)[1])  # the prompt is in the prefix cache now
            out["kv_bytes"][c] = per_token * int(c)
    return medians(out, prefill, decode)


def work_llama_cpp(gguf_path: Path, prompts: dict[str, list[list[int]]], a: argparse.Namespace) -> dict:
    import llama_cpp
    import numpy as np

    longest = max(len(p) for runs in prompts.values() for p in runs)
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=longest + a.decode + 8, n_batch=PREFILL_CHUNK,
                          n_ubatch=PREFILL_CHUNK, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    vocab = llm.n_vocab()

    def last_argmax() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    out = dict(version=f"llama_cpp {llama_cpp.__version__}", prefill={}, decode={}, kv_bytes={})
    llm.eval(prompts[next(iter(prompts))][0][:PREFILL_CHUNK])  # warm-up
    prefill, decode = defaultdict(list), defaultdict(list)
    for c, ids in in_rounds(prompts):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        token = last_argmax()
        prefill[c].append(len(ids) / (time.perf_counter() - start))
        out["kv_bytes"][c] = int(llama_cpp.llama_state_get_size(llm.ctx))
        start = time.perf_counter()
        for _ in range(a.decode - 1):
            llm.eval([token])
            token = last_argmax()
        decode[c].append((a.decode - 1) / (time.perf_counter() - start))
    return medians(out, prefill, decode)


def worker(a: argparse.Namespace) -> None:
    kind, *rest = a.worker
    if kind == "build":
        out = work_build(json.loads(rest[0]), Path(rest[1]))
    else:
        prompts = json.loads(Path(rest[1]).read_text())
        if kind == "seekmoe":
            out = work_seekmoe(Path(rest[0]), prompts, a, rest[2])
        else:
            out = work_llama_cpp(Path(rest[0]), prompts, a)
    print(json.dumps(out))


def run_worker(a: argparse.Namespace, *argv: str) -> dict:
    return peers.run_worker(a, a.threads, *argv, script=__file__)


# ---- the parent: build, measure, report ------------------------------------------------------------------------

def build(a: argparse.Namespace, cfg: dict, folder: Path) -> dict:
    info_path = folder / "info.json"
    if info_path.is_file() and json.loads(info_path.read_text()).get("config") == cfg:
        print(f"build: reusing {folder}", file=sys.stderr)
        return json.loads(info_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    info = run_worker(a, "build", json.dumps(cfg), str(folder))
    info_path.write_text(json.dumps(info))  # last: a build cut short leaves no info.json
    return info


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(ours: dict, peer: dict | None, contexts: list[int], a: argparse.Namespace, kv_dtype: str) -> list[str]:
    fmt = peers.fmt
    base = ours["decode"][str(contexts[0])]
    lines = [f"| context | seekmoe decode | vs seekmoe at {contexts[0]} | llama.cpp decode | ratio | seekmoe prefill | "
             "llama.cpp prefill | ratio | seekmoe KV | llama.cpp KV |", "|---|---|---|---|---|---|---|---|---|---|"]
    met = total = 0
    for c in contexts:
        dec, pre = ours["decode"][str(c)], ours["prefill"][str(c)]
        keep = dec / base
        cells = [f"{c:,}", fmt(dec), f"{keep:.2f}"]
        if c >= LONG:
            ok = keep >= GOAL_DECODE_KEEP
            met, total = met + ok, total + 1
            cells[-1] += f" (≥ {GOAL_DECODE_KEEP:g} {'✅' if ok else '❌'})"
        if peer is None:
            cells += ["-", "-", fmt(pre), "-", "-", mib(ours["kv_bytes"][str(c)]), "-"]
        else:
            pdec, ppre = peer["decode"][str(c)], peer["prefill"][str(c)]
            ok_d, ok_p = dec / pdec > 1.0, pre / ppre >= GOAL_PREFILL
            if c >= LONG:
                met, total = met + ok_d + ok_p, total + 2
            mark = (lambda ok: f" {'✅' if ok else '❌'}") if c >= LONG else (lambda ok: "")
            cells += [fmt(pdec), f"{dec / pdec:.2f}{mark(ok_d)}", fmt(pre), fmt(ppre), f"{pre / ppre:.2f}{mark(ok_p)}",
                      mib(ours["kv_bytes"][str(c)]), mib(peer["kv_bytes"][str(c)])]
        lines.append("| " + " | ".join(cells) + " |")
    versions = ", ".join(r["version"] for r in (ours, peer) if r is not None)
    memory = f"peak memory: seekmoe {mib(ours['peak_memory'])}" + \
        (f", llama.cpp {mib(peer['peak_memory'])}" if peer is not None else "")
    lines += ["", f"Goals met at ≥ {LONG:,} tokens: {met}/{total} (decode ≥ {GOAL_DECODE_KEEP:g}× our own at "
                  f"{contexts[0]}, decode ahead of llama.cpp, prefill ≥ {GOAL_PREFILL:g}× llama.cpp).",
              f"{versions}; `{a.config}` float32 (llama.cpp: GGUF f32), seekmoe's KV cache {kv_dtype}, {a.threads} "
              f"threads each; decode {a.decode} tokens timed from the first to the last; prefill in chunks of "
              f"{PREFILL_CHUNK}; median of {a.repeats}; {memory} (each engine's whole run)."]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default=None, help="prompt lengths, comma-separated (default 64,1024,4096,16384; "
                                                    "64,1024 with --quick)")
    p.add_argument("--config", default=None, choices=sorted(peers.CONFIGS),
                   help="bench/llama_cpp.py's model shapes (default small; tiny with --quick)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--decode", type=int, default=None, help="tokens decoded per run (default 64; 8 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="fresh prompts per context, the median is reported "
                                                             "(default 3; 1 with --quick)")
    p.add_argument("--dir", default=None, help="keep the checkpoint and GGUF file here and reuse them in later runs "
                                               "(default: a temporary folder, removed at the end)")
    p.add_argument("--kv-cache-dtype", default="auto,int8",
                   help="seekmoe's KV cache dtypes, comma-separated, a table each (default auto,int8: the model's "
                        "float32, then int8)")
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    p.add_argument("--quick", action="store_true", help="development run: tiny, short contexts, 8 tokens, 1 repeat")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # child processes
    a = p.parse_args()
    a.decode = a.decode or (8 if a.quick else 64)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.config = a.config or ("tiny" if a.quick else "small")
    if a.worker:
        worker(a)
        return 0
    try:
        contexts = [int(c) for c in (a.contexts or ("64,1024" if a.quick else "64,1024,4096,16384")).split(",")]
    except ValueError:
        p.error(f"--contexts must be whole numbers separated by commas, got {a.contexts!r}")
    if any(c < 2 for c in contexts) or a.decode < 2 or a.repeats < 1:
        p.error("every context needs at least 2 tokens, --decode at least 2 and --repeats at least 1")
    kv_dtypes = a.kv_cache_dtype.split(",")
    if any(d not in KV_CACHE_DTYPES for d in kv_dtypes):
        p.error(f"--kv-cache-dtype must be {', '.join(KV_CACHE_DTYPES)}, comma-separated; got {a.kv_cache_dtype!r}")
    with_peer = importlib.util.find_spec("llama_cpp") is not None
    if not with_peer:
        print("llama_cpp (llama-cpp-python) is not installed: seekmoe alone.", file=sys.stderr)

    start = time.perf_counter()
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="seekmoe-long-context-"))
    try:
        cfg = config(a.config, max(contexts), a.decode)
        info = build(a, cfg, root)
        rng = random.Random(0)
        prompts = {str(c): [[0] + [rng.randrange(info["first_plain_id"], cfg["vocab_size"]) for _ in range(c - 1)]
                            for _ in range(a.repeats)] for c in contexts}
        (root / "prompts.json").write_text(json.dumps(prompts))
        ours = {d: run_worker(a, "seekmoe", str(root / "fp32"), str(root / "prompts.json"), d) for d in kv_dtypes}
        peer = run_worker(a, "llama.cpp", str(root / "f32.gguf"), str(root / "prompts.json")) if with_peer else None
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)
    lines = []
    for d in kv_dtypes:
        lines += [f"seekmoe's KV cache {d}:", "", *report(ours[d], peer, contexts, a, d), ""]
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
