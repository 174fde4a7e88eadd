"""Prefill and decode throughput of seekmoe's engine against transformers' DeepseekV2ForCausalLM, same weights.

Builds one random-weight checkpoint per config, then measures each engine in a fresh subprocess of this script
(its own peak RSS, its own OpenMP runtime): prefill of a 256-token prompt; decode at batch 1 and the aggregate rate
of B concurrent sequences; KV-cache bytes per token; peak RSS. The memory-bandwidth floor is the weight bytes one
decode token reads (attention, dense MLP, shared experts, the top-k routed experts, routers, norms, lm_head) divided
by the bandwidth memory gives to all cores, measured in the same run (every thread of seekmoe's kernel pool
reading a 256 MB buffer). Agreement: logits of one prompt against transformers (max abs) and greedy tokens through
the engine against transformers' greedy decode.

    .venv/bin/python bench/decode.py [--configs tiny,small] [--int8] [--quick] [--out FILE.md]

Prints one markdown table (median of the repeats) and whether each goal of issue 4 is met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = dict(model_type="deepseek_v2", topk_method="greedy", scoring_func="softmax", q_lora_rank=None,
              first_k_dense_replace=1, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1)
CONFIGS = {
    # ~7M parameters: per-token overhead dominates
    "tiny": dict(COMMON, vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                 moe_intermediate_size=96, n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4),
    # DeepSeek-V2-Lite at a quarter width: ~589M parameters, ~117M active
    "small": dict(COMMON, vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=8, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                  moe_intermediate_size=352, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6),
}
PREFILL = 256  # prompt tokens of the prefill measurement
PROMPT = 32  # prompt tokens before decoding
GREEDY = 16  # greedy tokens compared with transformers
ENGINES = ("transformers", "seekmoe", "seekmoe-int8")
MiB = 2**20


def prompt(vocab: int, n: int, seed: int, batch: int = 1):
    import torch

    return torch.randint(2, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))  # (B, n)


def timed_rate(step, steps: int, repeats: int) -> float:
    """Median over repeats of tokens / second, `step()` returning the tokens it produced."""
    rates = []
    for _ in range(repeats):
        start, tokens = time.perf_counter(), 0
        for _ in range(steps):
            tokens += step()
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- workers: each runs in its own process and prints one JSON line --------------------------------------------

def work_build(name: str, folder: Path, int8: bool) -> dict:
    """Random weights, saved as float32 (and int8); sizes and the active bytes of one decode token."""
    import torch

    from seekmoe import CausalLM, ModelConfig, save_model
    from seekmoe.engine.cache import bytes_per_token, mha_bytes_per_token
    from seekmoe.model.inspect import decode_reads
    from seekmoe.model.quant import quantize_int8, save_quantized

    cfg = ModelConfig.from_dict(CONFIGS[name])
    with torch.device("meta"):
        model = CausalLM(cfg)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    save_model(model, folder / "fp32")

    out = dict(params=model.num_parameters(), kv_bytes=bytes_per_token(cfg), mha_bytes=mha_bytes_per_token(cfg))
    out["active_params"], out["active_bytes"] = decode_reads(model)
    if int8:
        save_quantized(quantize_int8(model), folder / "int8")
        out["active_bytes_int8"] = decode_reads(model)[1]
    return out


def work_bandwidth() -> dict:
    """How fast memory streams with every core: a 256 MB float32 buffer (far bigger than any cache) read by all
    threads of seekmoe's kernel pool, median of ten reads. Without the kernels, torch's matrix-vector product over
    a matrix of that size (slower than what the cores give: a lower floor)."""
    import torch

    from seekmoe.model import kernels

    buf = torch.randn(64 * 2**20)
    read = kernels.stream_sum()
    how = f"all {kernels.threads()} threads of seekmoe's kernel pool summing a 256 MB buffer"
    if read is None:
        a, x = buf.view(8192, 8192), torch.randn(8192)
        read = lambda _: torch.mv(a, x)  # noqa: E731
        how = f"torch's mat-vec over a 256 MB matrix, {torch.get_num_threads()} threads"
    for _ in range(3):
        read(buf)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        read(buf)
        times.append(time.perf_counter() - start)
    return dict(gbps=buf.numel() * buf.element_size() / statistics.median(times) / 1e9, how=how)


def work_transformers(folder: Path, ref: Path, a: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder / "fp32", dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    out = dict(impl=f"attn {model.config._attn_implementation}, experts "
                    f"{getattr(model.config, '_experts_implementation', None)}")
    with torch.inference_mode():
        # reference for the agreement check: full logits of one prompt, greedy tokens with the cache
        ids = prompt(vocab, PROMPT, seed=1)
        res = model(ids, use_cache=True)  # transformers 5 caches MLA's latent, expands it every step
        cache, tokens = res.past_key_values, [res.logits[:, -1].argmax(-1, keepdim=True)]
        out["kv_bytes"] = sum(x.nbytes for layer in cache.layers for x in (layer.keys, layer.values)) / PROMPT
        for _ in range(GREEDY - 1):
            tokens.append(model(tokens[-1], cache=cache, use_cache=True).logits[:, -1].argmax(-1, True))
        torch.save(dict(logits=res.logits[0], tokens=torch.cat(tokens, 1)[0].tolist()), ref)

        ids = prompt(vocab, PREFILL, seed=2)
        for key, keep in (("prefill", 0), ("prefill_last", 1)):  # 0: logits at every position

            def prefill_step(keep=keep) -> int:
                model(ids, logits_to_keep=keep)
                return PREFILL

            prefill_step()  # warm-up
            out[key] = timed_rate(prefill_step, 1, a.repeats)

        out["decode"] = {}
        for b in a.batches:
            res = model(prompt(vocab, PROMPT, seed=10 + b, batch=b), use_cache=True, logits_to_keep=1)
            state = dict(cache=res.past_key_values, tok=res.logits[:, -1].argmax(-1, keepdim=True))

            def step(state=state, b=b) -> int:
                logits = model(state["tok"], cache=state["cache"], use_cache=True).logits
                state["tok"] = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                return b

            step(), step()  # warm-up
            out["decode"][b] = timed_rate(step, a.decode_steps, a.repeats)
    out["peak_rss"] = peak_rss()
    return out


def work_seekmoe(folder: Path, ref: Path, a: argparse.Namespace, int8: bool) -> dict:
    import torch

    from seekmoe import load_model
    from seekmoe.engine.cache import bytes_per_token
    from seekmoe.engine.engine import Engine
    from seekmoe.engine.sampling import SamplingParams

    model = load_model(folder / ("int8" if int8 else "fp32"), dtype="float32")
    cfg = model.config
    vocab, max_b = cfg.vocab_size, max(a.batches)
    per_seq = PROMPT + (a.repeats + 1) * a.decode_steps + 8  # prompt, warm-up and timed steps, slack
    engine = Engine(model, cache_tokens=max_b * (per_seq + 16) + PREFILL + GREEDY + 64, max_num_seqs=max_b,
                    max_step_tokens=PREFILL)
    greedy = SamplingParams(max_tokens=GREEDY, temperature=0, ignore_eos=True)
    out = dict(kv_bytes=bytes_per_token(cfg, torch.float32))

    reference = torch.load(ref)
    ids = prompt(vocab, PROMPT, seed=1)
    with torch.inference_mode():
        out["max_abs"] = (model(ids)[0] - reference["logits"]).abs().max().item()
    tokens = engine.generate([ids[0].tolist()], greedy)[0][0]
    out["greedy"] = sum(x == y for x, y in zip(tokens, reference["tokens"], strict=True))

    def prefill_step(seed: int) -> int:
        engine.add_request(prompt(vocab, PREFILL, seed)[0].tolist(), SamplingParams(max_tokens=1, temperature=0))
        engine.step()
        assert not engine.has_work, "the prefill should take one step"
        return PREFILL

    seeds = iter(range(1000, 2000))  # a fresh prompt each time: the prefix cache must not help
    prefill_step(next(seeds))  # warm-up
    out["prefill"] = timed_rate(lambda: prefill_step(next(seeds)), 1, a.repeats)

    out["decode"] = {}
    params = SamplingParams(max_tokens=per_seq - PROMPT, temperature=0, ignore_eos=True)
    for b in a.batches:
        reqs = [engine.add_request(p.tolist(), params) for p in prompt(vocab, PROMPT, seed=10 + b, batch=b)]
        while any(s.num_output == 0 for r in reqs for s in r.seqs):  # until every prompt is read
            engine.step()
        engine.step()  # warm-up: every sequence decodes
        out["decode"][b] = timed_rate(lambda: sum(e.token_id is not None for _, e in engine.step()),
                                      a.decode_steps, a.repeats)
        for r in reqs:
            engine.cancel(r.id)
    out["peak_rss"] = peak_rss()
    return out


def run_worker(kind: str, a: argparse.Namespace, *extra: str) -> dict:
    argv = [sys.executable, __file__, "--worker", kind, *extra, "--threads", str(a.threads), "--repeats",
            str(a.repeats), "--decode-steps", str(a.decode_steps), "--batches", ",".join(map(str, a.batches))]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    start = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise SystemExit(f"worker {kind} {' '.join(extra)} failed:\n{res.stderr[-4000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{kind} {' '.join(extra)}: {time.perf_counter() - start:.0f} s {out}", file=sys.stderr)
    return out


# ---- the table ---------------------------------------------------------------------------------------------

def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def report(results: dict, info: dict, bandwidth: dict, a: argparse.Namespace) -> list[str]:
    gbps = bandwidth["gbps"]
    aggs = [b for b in a.batches if b > 1]
    lines = ["| config | engine | prefill tok/s | decode b=1 tok/s | % of floor | "
             + " | ".join(f"agg b={b} tok/s" for b in aggs)
             + " | KV bytes/token | MHA bytes/token | peak RSS MiB | agreement |",
             "|---" * (9 + len(aggs)) + "|"]
    goals = []
    for name, rows in results.items():
        i = info[name]
        for engine, r in rows.items():
            floor = gbps * 1e9 / i["active_bytes_int8" if engine.endswith("int8") else "active_bytes"]
            d = {int(b): v for b, v in r["decode"].items()}
            r["floor"] = d.get(1, 0) / floor
            prefill = fmt(r["prefill"]) + (f" ({fmt(r['prefill_last'])} last only)" if "prefill_last" in r else "")
            agree = "reference" if engine == "transformers" else f"{r['max_abs']:.1e}, {r['greedy']}/{GREEDY}"
            lines.append(f"| {name} | {engine} | {prefill} | {fmt(d.get(1))} | {100 * r['floor']:.0f}% | "
                         + " | ".join(fmt(d.get(b)) for b in aggs)
                         + f" | {r['kv_bytes']:,.0f} | {i['mha_bytes']:,} | {r['peak_rss'] / MiB:,.0f} | {agree} |")
        ours, hf = rows["seekmoe"], rows["transformers"]
        d_ours = {int(b): v for b, v in ours["decode"].items()}
        d_hf = {int(b): v for b, v in hf["decode"].items()}
        goals.append((f"{name}: float32 logits within 1e-3 of transformers, greedy {GREEDY}/{GREEDY}",
                      f"{ours['max_abs']:.1e}, {ours['greedy']}/{GREEDY}",
                      ours["max_abs"] <= 1e-3 and ours["greedy"] == GREEDY))
        ratio = ours["prefill"] / hf["prefill_last"]
        goals.append((f"{name}: prefill >= 1.3x transformers (its last-only logits)", f"{ratio:.2f}x", ratio >= 1.3))
        if 1 in d_ours:
            ratio = d_ours[1] / d_hf[1]
            goals.append((f"{name}: decode b=1 vs transformers" + (" >= 4x" if name == "tiny" else " (no goal)"),
                          f"{ratio:.2f}x", ratio >= 4 if name == "tiny" else None))
        if name == "small":
            goals.append(("small: float32 decode b=1 >= 85% of the floor", f"{100 * ours['floor']:.0f}%",
                          ours["floor"] >= 0.85))
            if "seekmoe-int8" in rows:
                f8 = rows["seekmoe-int8"]["floor"]
                goals.append(("small: int8 decode b=1 >= 50% of the int8 floor", f"{100 * f8:.0f}%", f8 >= 0.5))
        if 16 in d_ours and 1 in d_ours:
            ratio = d_ours[16] / d_ours[1]
            goals.append((f"{name}: aggregate decode at 16 >= 6x batch 1", f"{ratio:.1f}x", ratio >= 6))
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {'-' if ok is None else 'yes' if ok else 'NO'} |" for g, m, ok in goals]
    lines.append("")
    lines.append(f"Bandwidth ({bandwidth['how']}): {gbps:.1f} GB/s; threads {a.threads}; decode after a "
                 f"{PROMPT}-token prompt, {a.decode_steps} steps x {a.repeats} repeats (median); prefill {PREFILL} "
                 f"tokens.")
    for name, i in info.items():
        mha = i["mha_bytes"]
        lines.append(f"{name}: {i['params'] / 1e6:.1f}M parameters, {i['active_params'] / 1e6:.1f}M active; "
                     f"{i['active_bytes'] / MiB:.0f} MiB read per decode token in float32"
                     + (f", {i['active_bytes_int8'] / MiB:.0f} MiB in int8" if "active_bytes_int8" in i else "")
                     + f"; floor {gbps * 1e9 / i['active_bytes']:.0f} tok/s; an MHA cache of the same shape is "
                     f"{mha / i['kv_bytes']:.1f}x the latent one; transformers: "
                     f"{results[name]['transformers']['impl']}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument("--int8", action="store_true", help="add seekmoe int8 rows")
    parser.add_argument("--quick", action="store_true", help="development run: 8 decode steps, 1 repeat, b=1,4")
    parser.add_argument("--decode-steps", type=int, default=None, help="timed decode steps per repeat (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 3)")
    parser.add_argument("--batches", default=None, help="concurrent sequences (default 1,4,16,64)")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoints (default: system tmp)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = parser.parse_args()
    a.decode_steps = a.decode_steps or (8 if a.quick else 32)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.batches = [int(b) for b in (a.batches or ("1,4" if a.quick else "1,4,16,64")).split(",")]
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        kind, *rest = a.worker
        if kind == "build":
            out = work_build(rest[0], Path(rest[1]), rest[2] == "1")
        elif kind == "bandwidth":
            out = work_bandwidth()
        elif kind == "transformers":
            out = work_transformers(Path(rest[0]), Path(rest[1]), a)
        else:
            out = work_seekmoe(Path(rest[0]), Path(rest[1]), a, kind == "seekmoe-int8")
        print(json.dumps(out))
        return

    names = a.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {unknown[0]!r}; expected one of {', '.join(CONFIGS)}")
    root = Path(tempfile.mkdtemp(prefix="seekmoe-decode-", dir=a.dir))
    try:
        start = time.perf_counter()
        bandwidth = run_worker("bandwidth", a)
        info, results = {}, {}
        for name in names:
            folder, ref = root / name, root / f"{name}-ref.pt"
            info[name] = run_worker("build", a, name, str(folder), "1" if a.int8 else "0")
            results[name] = {e: run_worker(e, a, str(folder), str(ref))
                             for e in ENGINES if a.int8 or not e.endswith("int8")}
            shutil.rmtree(folder, ignore_errors=True)
        import torch
        import transformers

        lines = [f"torch {torch.__version__}, transformers {transformers.__version__}, float32 unless int8", "",
                 *report(results, info, bandwidth, a)]
        print("\n".join(lines))
        if a.out:
            Path(a.out).write_text("\n".join(lines) + "\n")
        print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
