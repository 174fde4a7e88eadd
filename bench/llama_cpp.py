"""seekmoe against llama.cpp on the same random weights: decode, prefill and batched decode, with issue 20's goals.

Builds a random-weight checkpoint per config (`tiny`, `small`: bench/decode.py's shapes with the bundled 8192-id
tokenizer) as float32 and int8 folders, exports it to GGUF f32 and q8_0 (`seekmoe.export.export_gguf`), then runs
each engine in its own subprocess of this script (torch and llama.cpp bring different OpenMP runtimes). Both get
the same prompt token ids and --threads threads.

- seekmoe runs through `seekmoe.llm.LLM` (its engine on a background thread, as the server runs it): a decode rate is
  the N tokens after the first / (time of a max_tokens=N+1 generate - time of a max_tokens=1 generate) after a
  32-token prompt; the 16-sequence rate is the same over 16 prompts sent as one batch (16 N tokens); prefill is
  256 / the time of a max_tokens=1 generate of a 256-token prompt of fresh random ids (no prefix-cache hit).
- llama.cpp runs through `llama_cpp.Llama` (n_batch 256): decode is N / the time of N single-token evals with a
  greedy argmax each; prefill is 256 / the time of one eval of a fresh 256-token prompt.
- The floor of a batch-1 decode is the weight bytes one token reads (attention, dense MLP, shared experts, the
  top-k routed experts, routers, norms, lm_head, one embedding row; for llama.cpp the GGUF's tensors) divided by the
  memory bandwidth: a 256 MB float32 buffer summed by every thread of seekmoe's kernel pool on all cores
  (`seekmoe.model.kernels.stream_sum`; torch's sum where the kernels are unavailable), median of 10 reads.

Rates are medians of --repeats. Prints one markdown table (seekmoe, peer, ratio, goal met), the greedy agreement
of the first 16 tokens against llama.cpp f32, the floors, the bandwidth and the versions.

    .venv/bin/python bench/llama_cpp.py [--configs tiny,small] [--threads 2] [--decode 64] [--repeats 3]
                                        [--dir DIR] [--out FILE.md] [--quick]

--dir keeps the checkpoints and GGUF files (~6 GB for small) there and reuses them while the config is unchanged;
without it they go to a temporary folder removed at the end. Needs llama-cpp-python (`pip install
llama-cpp-python`, which compiles llama.cpp: ~25 minutes on 2 cores); without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# this file is named like the package it measures: drop its folder from the path, or `import llama_cpp` finds it
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

# bench/decode.py's shapes, with the bundled tokenizer's 8192 ids (LLM needs a tokenizer)
COMMON = dict(model_type="deepseek_v2", topk_method="greedy", scoring_func="softmax", q_lora_rank=None,
              first_k_dense_replace=1, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1, vocab_size=8192)
CONFIGS = {
    # ~7M parameters: per-token overhead dominates
    "tiny": dict(COMMON, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=96,
                 n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4),
    # DeepSeek-V2-Lite at a quarter width, vocabulary 8192: ~540M parameters, ~93M active
    "small": dict(COMMON, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                  kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, moe_intermediate_size=352,
                  n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6),
}
PROMPT = 32  # prompt tokens before decoding
PREFILL = 256  # prompt tokens of the prefill measurement
GREEDY = 16  # greedy tokens compared between the engines
BATCH = 16  # concurrent sequences of the aggregate decode row
BANDWIDTH_BYTES = 256 * 10**6
MiB = 2**20

# engine name -> (runner, file or folder inside the config's folder)
ENGINES = {"seekmoe": ("seekmoe", "fp32"), "seekmoe int8": ("seekmoe", "int8"),
           "llama.cpp f32": ("llama.cpp", "f32.gguf"), "llama.cpp q8_0": ("llama.cpp", "q8_0.gguf")}


@dataclass(frozen=True)
class Row:
    """One line of the table: ours / peer >= goal. A measure is decode, prefill or batch (tokens/second)."""

    config: str
    what: str
    ours: tuple[str, str]  # (engine, measure)
    peer: tuple[str, str]
    goal: float


ROWS = (
    Row("small", "float32 decode b=1, vs llama.cpp f32", ("seekmoe", "decode"), ("llama.cpp f32", "decode"), 0.95),
    Row("small", "int8 decode b=1, vs llama.cpp q8_0", ("seekmoe int8", "decode"), ("llama.cpp q8_0", "decode"), 1.2),
    Row("small", f"float32 prefill {PREFILL} tokens, vs llama.cpp f32", ("seekmoe", "prefill"),
        ("llama.cpp f32", "prefill"), 1.0),
    Row("small", f"int8 prefill {PREFILL} tokens, vs seekmoe float32", ("seekmoe int8", "prefill"),
        ("seekmoe", "prefill"), 0.9),
    Row("small", f"float32 decode, {BATCH} sequences aggregate, vs llama.cpp f32 one stream", ("seekmoe", "batch"),
        ("llama.cpp f32", "decode"), 3.0),
    Row("tiny", "float32 decode b=1, vs llama.cpp f32", ("seekmoe", "decode"), ("llama.cpp f32", "decode"), 0.5),
)


# ---- workers: each runs in its own process and prints one JSON line --------------------------------------------

def work_build(name: str, folder: Path) -> dict:
    """Random weights saved as float32 and int8 (with the bundled tokenizer), the GGUF exports, and the bytes one
    decode token reads in each."""
    import torch

    import seekmoe
    from seekmoe import CausalLM, ModelConfig, save_model
    from seekmoe.export import export_gguf
    from seekmoe.model.inspect import decode_reads
    from seekmoe.model.quant import quantize_int8, save_quantized

    tokenizer = Path(seekmoe.__file__).parent / "models" / "seekmoe-tiny"
    cfg = ModelConfig.from_dict(CONFIGS[name])
    k_of_e = cfg.num_experts_per_tok / cfg.n_routed_experts

    def save(save_fn, model, path: Path) -> None:
        save_fn(model, path)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer / f, path / f)

    with torch.device("meta"):
        model = CausalLM(cfg)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    save(save_model, model, folder / "fp32")
    out = dict(config=CONFIGS[name], params=model.num_parameters(), active={})
    out["active_params"], out["active"]["seekmoe"] = decode_reads(model)
    save(save_quantized, quantize_int8(model), folder / "int8")
    out["active"]["seekmoe int8"] = decode_reads(model)[1]
    del model
    for engine, (_, file) in ENGINES.items():
        if file.endswith(".gguf"):
            path = export_gguf(folder / "fp32", folder / file, file.removesuffix(".gguf"), progress=False)
            out["active"][engine] = gguf_active_bytes(path, k_of_e, cfg.vocab_size)
    added = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    out["first_plain_id"] = max(t["id"] for t in added) + 1  # random prompts draw from the ids above the specials
    return out


def gguf_active_bytes(path: Path, k_of_e: float, vocab: int) -> float:
    """Bytes of a GGUF's tensors one decode token reads: the top-k share of the stacked experts, one embedding row."""
    from gguf import GGUFReader

    total = 0.0
    for t in GGUFReader(path).tensors:
        share = k_of_e if "_exps." in t.name else 1 / vocab if t.name == "token_embd.weight" else 1
        total += int(t.n_bytes) * share
    return total


def work_bandwidth() -> dict:
    """Read bandwidth of a 256 MB float32 buffer summed by every thread of the kernels' pool."""
    import torch

    from seekmoe.model import kernels

    buf = torch.ones(BANDWIDTH_BYTES // 4)
    read = kernels.stream_sum()
    if read is not None:
        how = f"seekmoe stream_sum, {kernels.pool_size()} threads"
    else:
        threads = len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        read = torch.sum
        how = f"torch.sum, {threads} threads: the seekmoe kernels are unavailable here"
    for _ in range(3):
        read(buf)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        read(buf)
        times.append(time.perf_counter() - start)
    return dict(gbps=BANDWIDTH_BYTES / statistics.median(times) / 1e9, how=how)


def work_seekmoe(folder: Path, measures: set[str], prompts: dict, a: argparse.Namespace) -> dict:
    import torch

    from seekmoe.llm import LLM

    out = dict(version=f"torch {torch.__version__}")
    with LLM(folder, max_num_seqs=BATCH, max_step_tokens=PREFILL) as llm:

        def generate(ids: list[int] | list[list[int]], n: int):
            return llm.generate(prompt_token_ids=ids, max_tokens=n, temperature=0.0, ignore_eos=True)

        def seconds(ids: list[int] | list[list[int]], n: int) -> float:
            start = time.perf_counter()
            generate(ids, n)
            return time.perf_counter() - start

        def decode_rate(ids: list[int] | list[list[int]], seqs: int) -> float:
            """Tokens after each sequence's first per second: the time of N + 1 tokens less that of the first."""
            seconds(ids, 2)  # warm-up
            return statistics.median(seqs * a.decode / max(seconds(ids, a.decode + 1) - seconds(ids, 1), 1e-9)
                                     for _ in range(a.repeats))

        out["greedy"] = generate(prompts["decode"], GREEDY).token_ids
        if "decode" in measures:
            out["decode"] = decode_rate(prompts["decode"], 1)
        if "batch" in measures:
            out["batch"] = decode_rate(prompts["batch"], BATCH)
        if "prefill" in measures:
            first, *timed = prompts["prefill"]  # each prompt once: the prefix cache must not help
            seconds(first, 1)  # warm-up
            out["prefill"] = statistics.median(PREFILL / seconds(ids, 1) for ids in timed)
    return out


def work_llama_cpp(gguf_path: Path, measures: set[str], prompts: dict, a: argparse.Namespace) -> dict:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=max(PREFILL, PROMPT + a.decode + 1) + 8, n_batch=PREFILL,
                          n_ubatch=PREFILL, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    vocab = llm.n_vocab()

    def last_argmax() -> int:  # the greedy token after the last eval; only its last position has logits
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    def run(ids: list[int], n: int) -> tuple[list[int], float]:
        """n greedy tokens after the prompt, and the seconds the n - 1 single-token decode steps took."""
        llm.reset()
        llm.eval(ids)
        tokens = [last_argmax()]
        start = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([tokens[-1]])
            tokens.append(last_argmax())
        return tokens, time.perf_counter() - start

    def prefill_seconds(ids: list[int]) -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        last_argmax()
        return time.perf_counter() - start

    out = dict(version=f"llama_cpp {llama_cpp.__version__}")
    out["greedy"] = run(prompts["decode"], GREEDY)[0]
    if "decode" in measures:
        out["decode"] = statistics.median(a.decode / max(run(prompts["decode"], a.decode + 1)[1], 1e-9)
                                          for _ in range(a.repeats))
    if "prefill" in measures:
        first, *timed = prompts["prefill"]
        prefill_seconds(first)  # warm-up
        out["prefill"] = statistics.median(PREFILL / prefill_seconds(ids) for ids in timed)
    return out


def worker(a: argparse.Namespace) -> None:
    kind, *rest = a.worker
    if kind == "build":
        out = work_build(rest[0], Path(rest[1]))
    elif kind == "bandwidth":
        out = work_bandwidth()
    else:
        path, measures = Path(rest[0]), set(rest[1].split(","))
        prompts = json.loads(Path(rest[2]).read_text())
        out = (work_seekmoe if kind == "seekmoe" else work_llama_cpp)(path, measures, prompts, a)
    print(json.dumps(out))


def run_worker(a: argparse.Namespace, threads: int, *argv: str, script: str = __file__) -> dict:
    """`script --worker ARGV...` (this file, or another bench built on it) in a child process: its JSON line."""
    cmd = [sys.executable, script, "--worker", *argv, "--threads", str(threads), "--decode", str(a.decode),
           "--repeats", str(a.repeats)]
    # the kernels' pool reads SEEKMOE_THREADS, torch OMP_NUM_THREADS
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), SEEKMOE_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if argv[0] == "seekmoe":  # as `seekmoe serve` runs (seekmoe/cli/main.py, quiet_openmp)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise SystemExit(f"worker {' '.join(argv)} failed (exit status {res.returncode}):\n{res.stderr[-4000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{' '.join(argv)}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


# ---- the parent: build, measure, report ------------------------------------------------------------------------

def build(a: argparse.Namespace, name: str, folder: Path) -> dict:
    """The config's checkpoints and GGUF files, reused when a previous run left them for the same config."""
    info_path = folder / "info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("config") == CONFIGS[name]:
            print(f"build {name}: reusing {folder}", file=sys.stderr)
            return info
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    info = run_worker(a, a.threads, "build", name, str(folder))
    info_path.write_text(json.dumps(info))  # last: a build cut short leaves no info.json
    return info


def make_prompts(vocab: int, first_id: int, repeats: int) -> dict:
    """Random prompt ids both engines read: BOS then ids above the special tokens."""
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [0] + [rng.randrange(first_id, vocab) for _ in range(n - 1)]

    return dict(decode=ids(PROMPT), batch=[ids(PROMPT) for _ in range(BATCH)],
                prefill=[ids(PREFILL) for _ in range(repeats + 1)])


def needed(name: str) -> dict[str, set[str]]:
    """engine -> the measures this config's rows need (greedy tokens always, for the agreement line)."""
    want = {"seekmoe": {"greedy"}, "llama.cpp f32": {"greedy"}}
    for row in ROWS:
        if row.config == name:
            for engine, measure in (row.ours, row.peer):
                want.setdefault(engine, {"greedy"}).add(measure)
    return want


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def report(results: dict, info: dict, bandwidth: dict, a: argparse.Namespace) -> list[str]:
    gbps = bandwidth["gbps"]

    def floor_share(name: str, engine: str, measure: str) -> str:  # batch-1 decode only: one token's bytes
        if measure != "decode":
            return "-"
        return f"{100 * results[name][engine][measure] * info[name]['active'][engine] / (gbps * 1e9):.0f}%"

    lines = ["| # | config | measure (tok/s) | seekmoe | peer | ratio | goal | seekmoe % of floor | peer % of floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    met = total = 0
    for i, row in enumerate(ROWS, 1):
        if row.config not in results:
            continue
        ours = results[row.config][row.ours[0]][row.ours[1]]
        peer = results[row.config][row.peer[0]][row.peer[1]]
        ratio = ours / peer
        ok = ratio >= row.goal
        met, total = met + ok, total + 1
        lines.append(f"| {i} | {row.config} | {row.what} | {fmt(ours)} | {fmt(peer)} | {ratio:.2f} | "
                     f"≥ {row.goal:g} {'✅' if ok else '❌'} | {floor_share(row.config, *row.ours)} | "
                     f"{floor_share(row.config, *row.peer)} |")
    lines += ["", f"Goals met: {met}/{total}.", ""]
    for name, rows in results.items():
        ours, theirs = rows["seekmoe"]["greedy"], rows["llama.cpp f32"]["greedy"]
        agree = sum(x == y for x, y in zip(ours, theirs, strict=True))
        line = f"{name}: greedy agreement, first {GREEDY} tokens, seekmoe float32 vs llama.cpp f32: {agree}/{GREEDY}"
        if agree < GREEDY:
            first = next(k for k, (x, y) in enumerate(zip(ours, theirs, strict=True)) if x != y)
            line += f" (first difference at token {first}: seekmoe {ours[first:first + 4]}, " \
                    f"llama.cpp {theirs[first:first + 4]})"
        lines.append(line + ".")
    for name, i in info.items():
        per_token = ", ".join(f"{engine} {b / MiB:.1f}" for engine, b in i["active"].items())
        lines.append(f"{name}: {i['params'] / 1e6:.1f}M parameters, {i['active_params'] / 1e6:.1f}M active; MiB one "
                     f"decode token reads: {per_token}; float32 floor {gbps * 1e9 / i['active']['seekmoe']:,.0f} "
                     "tok/s.")
    versions = sorted({r["version"] for rows in results.values() for r in rows.values()})
    lines += ["", f"Memory bandwidth: {gbps:.1f} GB/s ({bandwidth['how']}; a {BANDWIDTH_BYTES // 10**6} MB float32 "
                  "buffer, median of 10 reads).",
              f"{', '.join(versions)}; {a.threads} threads for each engine; decode {a.decode} tokens after a "
              f"{PROMPT}-token prompt, prefill {PREFILL} tokens, median of {a.repeats}; ratio = seekmoe / peer."]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=None, help=f"comma-separated, of {', '.join(CONFIGS)} (default: all; "
                                                   "tiny with --quick)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--decode", type=int, default=None, help="tokens decoded per timed run (default 64; 8 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measure, the median is reported "
                                                             "(default 3; 1 with --quick)")
    p.add_argument("--dir", default=None, help="keep the checkpoints and GGUF files here and reuse them in later "
                                               "runs (default: a temporary folder, removed at the end)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.add_argument("--quick", action="store_true", help="development run: tiny only, 8 tokens, 1 repeat")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # child processes
    a = p.parse_args()
    a.decode = a.decode or (8 if a.quick else 64)
    a.repeats = a.repeats or (1 if a.quick else 3)
    if a.worker:
        worker(a)
        return 0
    names = (a.configs or ("tiny" if a.quick else ",".join(CONFIGS))).split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown config {unknown[0]!r}; expected one of {', '.join(CONFIGS)}")
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama_cpp (llama-cpp-python) is not installed: nothing to compare against, skipping. "
              "Install it with `pip install llama-cpp-python` (compiles llama.cpp, ~25 minutes).")
        return 0

    start = time.perf_counter()
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="seekmoe-llama-cpp-"))
    try:
        bandwidth = run_worker(a, len(os.sched_getaffinity(0)), "bandwidth")  # all cores
        info, results = {}, {}
        for name in names:
            folder = root / name
            info[name] = build(a, name, folder)
            prompts = folder / "prompts.json"
            prompts.write_text(json.dumps(make_prompts(CONFIGS[name]["vocab_size"], info[name]["first_plain_id"],
                                                       a.repeats)))
            results[name] = {}
            for engine, measures in needed(name).items():
                runner, file = ENGINES[engine]
                results[name][engine] = run_worker(a, a.threads, runner, str(folder / file), ",".join(sorted(measures)),
                                                   str(prompts))
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)
    lines = report(results, info, bandwidth, a)
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
