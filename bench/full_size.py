"""DeepSeek-V2-Lite's exact shape on one machine: quantize, load and serve it at int8 and int4, against llama.cpp.

Builds a random-weight bfloat16 checkpoint of the chosen config (`v2-lite`: the bundled
seekmoe/configs/deepseek-v2-lite.json, 15.7B parameters; `small`: bench/llama_cpp.py's quarter-width shape for
development) tensor by tensor, with the bundled tokenizer (prompts are random ids it knows). Then, one artifact at a
time, each in a fresh subprocess of this script that reports its own peak resident memory (VmHWM):

- `seekmoe quantize` to int8 and int4 (model/quantize.py, streamed): time, peak memory;
- seekmoe serving each (LLM, memory-mapped): load time and memory, prefill tok/s of a PREFILL-token prompt,
  batch-1 decode tok/s (N tokens after the first, as bench/llama_cpp.py measures it), aggregate decode tok/s of
  BATCH sequences, and the peak resident memory of the whole run;
- when llama-cpp-python is installed: GGUF Q8_0 and Q4_0 of the same bfloat16 weights (`seekmoe.export.export_gguf`
  over views of the mapped source: the model is never loaded whole), then llama.cpp (mmap, as it runs by default):
  load, prefill and batch-1 decode. Its Python binding runs one sequence, so it has no aggregate figure.

One markdown table at the end, with issue 25's goals: peak serving memory <= 20 GB (int8) and <= 11 GB (int4), and
batch-1 decode >= 1.0x llama.cpp's Q8_0 / Q4_0.

Disk: the bfloat16 source stays in --dir between runs (31.4 GB for v2-lite, rebuilt only if the config changes);
each artifact is built, measured and deleted before the next (--keep keeps them, when they fit), so the run needs
the source plus the largest artifact (~48 GB for v2-lite); the script prints what it needs and refuses to start
without it.

    .venv/bin/python bench/full_size.py [--config v2-lite|small|tiny] [--dir DIR] [--threads 2] [--decode 16]
                                        [--repeats 3] [--formats int8,int4,q8_0,q4_0] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# this folder holds llama_cpp.py: drop it from the path, or `import llama_cpp` finds that file
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

ROOT = _HERE.parent
COMMON = dict(model_type="deepseek_v2", topk_method="greedy", scoring_func="softmax", q_lora_rank=None,
              first_k_dense_replace=1, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1, vocab_size=8192)
CONFIGS = {
    "v2-lite": json.loads((ROOT / "seekmoe" / "configs" / "deepseek-v2-lite.json").read_text()),
    # bench/llama_cpp.py's `small`: V2-Lite at a quarter width, ~540M parameters
    "small": dict(COMMON, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                  kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, moe_intermediate_size=352,
                  n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6),
    "tiny": dict(COMMON, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=96,
                 n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4),
}
FORMATS = {"int8": ("seekmoe", 8), "int4": ("seekmoe", 4), "q8_0": ("llama.cpp", "q8_0"),
           "q4_0": ("llama.cpp", "q4_0")}
GOALS = {"int8": (20.0, "q8_0"), "int4": (11.0, "q4_0")}  # peak serving GB, the llama.cpp format to match
PROMPT, PREFILL, BATCH = 32, 128, 4
CACHE_TOKENS = 2048  # seekmoe's KV cache: the longest measurement needs PREFILL + 1, the batch 4 x (PROMPT + decode)
SEED = 0
GB = 1e9
TOKENIZER = ROOT / "seekmoe" / "models" / "seekmoe-tiny"


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (measured by the kernel, not estimated)."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) * 1024


# ---- workers: each runs in its own process and prints one JSON line --------------------------------------------

def work_source(folder: Path, config: dict) -> dict:
    """Random bfloat16 weights written tensor by tensor, a slice of rows at a time: N(0, 0.02), norms 1. Each
    tensor's values depend on its name only, so a rebuild gives the same weights. A layer's per-expert tensors
    are written one after another, so each projection's experts lie as one (E, F, D) stack (work_gguf views it)."""
    import torch

    from seekmoe.model import weights
    from seekmoe.model.config import ModelConfig
    from seekmoe.model.mapped import ShardWriter
    from seekmoe.model.model import CausalLM

    cfg = ModelConfig.from_dict({**config, "torch_dtype": "bfloat16"})
    with torch.device("meta"):
        model = CausalLM(cfg)
    specs = {name: ("BF16", tuple(t.shape)) for name, t in weights.hf_tensors(model)}
    shards, size = [[]], 0
    for name, (_, shape) in specs.items():  # 4 GB files, as Hugging Face shards them
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > 4 * 2**30:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    start = time.perf_counter()
    folder.mkdir(parents=True)
    index = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = ShardWriter(folder / file, {n: specs[n] for n in shard})
        for name in shard:
            index[name] = file
            shape = specs[name][1]
            g = torch.Generator().manual_seed(int(hashlib.sha256(f"{SEED}:{name}".encode()).hexdigest()[:15], 16))
            rows = max(1, 2**24 // max(1, math.prod(shape[1:])))
            for r in range(0, shape[0], rows):
                n = min(rows, shape[0] - r)
                chunk = (torch.ones(n, *shape[1:]) if name.endswith("norm.weight") else
                         0.02 * torch.randn(n, *shape[1:], generator=g))
                writer.write(name, chunk.bfloat16(), r)
        writer.close()
    (folder / weights.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": index}, indent=1))
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, folder / f)
    return dict(seconds=time.perf_counter() - start, params=sum(math.prod(s) for _, s in specs.values()),
                peak=peak_rss())


def work_quantize(source: Path, out: Path, bits: int) -> dict:
    from seekmoe.model.quantize import quantize_checkpoint

    start = time.perf_counter()
    quantize_checkpoint(source, out, bits, progress=False)
    return dict(seconds=time.perf_counter() - start, peak=peak_rss(), bytes=folder_bytes(out))


def mapped_float_model(source: Path):
    """The bfloat16 source as a CausalLM whose parameters are views of the mapped files (nothing read until used);
    each layer's routed experts a view of its per-expert tensors, which work_source wrote one after another (a copy
    where a shard boundary cuts the stack)."""
    import torch
    from torch import nn

    from seekmoe.model.config import ModelConfig
    from seekmoe.model.mapped import files_of, read_header
    from seekmoe.model.model import CausalLM

    cfg = ModelConfig.from_json(source / "config.json")
    with torch.device("meta"):
        model = CausalLM(cfg).bfloat16()
    where = {}
    for file in files_of(source):
        start, tensors = read_header(file)
        raw = torch.from_file(str(file), shared=False, size=file.stat().st_size, dtype=torch.uint8)
        where.update({n: (raw, start + b, start + e, shape) for n, (_, shape, b, e) in tensors.items()})
    for name, p in list(model.named_parameters()):
        if re.search(r"\.mlp\.experts\.(gate_proj|up_proj|down_proj)$", name):
            prefix, proj = name.rsplit(".", 1)
            parts = [where[f"{prefix}.{e}.{proj}.weight"] for e in range(p.shape[0])]
            if any(a[2] != b[1] or a[0] is not b[0] for a, b in itertools.pairwise(parts)):
                # a stack cut by a shard boundary: copied whole (one layer's projection, a few hundred MB)
                view = torch.stack([raw[b:e].view(torch.bfloat16).view(shape) for raw, b, e, shape in parts])
                model.get_submodule(name.rpartition(".")[0])._parameters[proj] = nn.Parameter(view, requires_grad=False)
                continue
            raw, begin, end = parts[0][0], parts[0][1], parts[-1][2]
        else:
            raw, begin, end, _ = where[name]
        module_name, _, attr = name.rpartition(".")
        view = raw[begin:end].view(torch.bfloat16).view(p.shape)
        model.get_submodule(module_name)._parameters[attr] = nn.Parameter(view, requires_grad=False)
    return model


def work_gguf(source: Path, out: Path, quant: str) -> dict:
    from seekmoe.export import export_gguf

    start = time.perf_counter()
    export_gguf(source, out, quant, progress=False, model=mapped_float_model(source))
    return dict(seconds=time.perf_counter() - start, peak=peak_rss(), bytes=out.stat().st_size)


def work_seekmoe(folder: Path, prompts: dict, a: argparse.Namespace) -> dict:
    from seekmoe.llm import LLM

    start = time.perf_counter()
    # a cache for what is measured: the default (4x max_position_embeddings tokens: 40 GB for V2-Lite's 163840) is
    # allocated and zeroed up front
    llm = LLM(folder, max_num_seqs=BATCH, max_step_tokens=PREFILL, cache_tokens=CACHE_TOKENS)
    out = dict(load=time.perf_counter() - start, load_peak=peak_rss())
    with llm:
        def seconds(ids, n: int) -> float:
            t = time.perf_counter()
            llm.generate(prompt_token_ids=ids, max_tokens=n, temperature=0.0, ignore_eos=True)
            return time.perf_counter() - t

        def decode_rate(ids, seqs: int) -> float:
            seconds(ids, 2)  # warm-up
            return statistics.median(seqs * a.decode / max(seconds(ids, a.decode + 1) - seconds(ids, 1), 1e-9)
                                     for _ in range(a.repeats))

        out["decode"] = decode_rate(prompts["decode"], 1)
        out["batch"] = decode_rate(prompts["batch"], BATCH)
        first, *timed = prompts["prefill"]  # each prompt once: no prefix-cache hit
        seconds(first, 1)
        out["prefill"] = statistics.median(PREFILL / seconds(ids, 1) for ids in timed)
    out["peak"] = peak_rss()
    return out


def work_llama_cpp(path: Path, prompts: dict, a: argparse.Namespace) -> dict:
    import llama_cpp
    import numpy as np

    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=PREFILL + PROMPT + a.decode + 8, n_batch=PREFILL,
                          n_ubatch=PREFILL, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    out = dict(load=time.perf_counter() - start, load_peak=peak_rss())
    vocab = llm.n_vocab()

    def argmax() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    def decode_seconds(ids: list[int], n: int) -> float:
        llm.reset()
        llm.eval(ids)
        token = argmax()
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = argmax()
        return time.perf_counter() - t

    def prefill_seconds(ids: list[int]) -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        argmax()
        return time.perf_counter() - t

    decode_seconds(prompts["decode"], 2)  # warm-up
    out["decode"] = statistics.median(a.decode / decode_seconds(prompts["decode"], a.decode) for _ in range(a.repeats))
    first, *timed = prompts["prefill"]
    prefill_seconds(first)
    out["prefill"] = statistics.median(PREFILL / prefill_seconds(ids) for ids in timed)
    out["peak"] = peak_rss()
    out["version"] = llama_cpp.__version__
    return out


def worker(a: argparse.Namespace) -> None:
    kind, *rest = a.worker
    if kind == "source":
        out = work_source(Path(rest[0]), json.loads(rest[1]))
    elif kind == "quantize":
        out = work_quantize(Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif kind == "gguf":
        out = work_gguf(Path(rest[0]), Path(rest[1]), rest[2])
    else:
        prompts = json.loads(Path(rest[1]).read_text())
        out = (work_seekmoe if kind == "seekmoe" else work_llama_cpp)(Path(rest[0]), prompts, a)
    print(json.dumps(out))


# ---- the driver --------------------------------------------------------------------------------------------------

def run_worker(a: argparse.Namespace, *argv: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", *argv, "--threads", str(a.threads), "--decode", str(a.decode),
           "--repeats", str(a.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), SEEKMOE_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads))
    if argv[0] == "seekmoe":  # as `seekmoe serve` runs (seekmoe/cli/main.py, quiet_openmp)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise SystemExit(f"worker {argv[0]} failed (exit status {res.returncode}):\n{res.stderr[-4000:]}")
    what = argv[2] if argv[0] in ("quantize", "gguf") else argv[1]
    print(f"{argv[0]} {Path(what).name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def estimate(config: dict) -> dict[str, float]:
    """Bytes on disk of the source and of each artifact, from the config (an upper bound: scales included)."""
    import torch

    from seekmoe.model import weights
    from seekmoe.model.config import ModelConfig
    from seekmoe.model.mapped import is_float_module
    from seekmoe.model.model import CausalLM

    cfg = ModelConfig.from_dict(config)
    with torch.device("meta"):
        model = CausalLM(cfg)
    quantized = floats = 0
    for name, t in weights.hf_tensors(model):
        if t.dim() == 2 and name.endswith(".weight") and not is_float_module(name[:-7], cfg.tie_word_embeddings):
            quantized += t.numel()
        else:
            floats += t.numel()
    return {"source": 2 * (quantized + floats), "int8": quantized * 1.01 + 2 * floats,
            "int4": quantized * (0.5 + 2 / 32) + 2 * floats, "q8_0": (quantized + floats) * 34 / 32,
            "q4_0": (quantized + floats) * 18 / 32}


def make_prompts(repeats: int) -> dict:
    vocab = json.loads((TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
    first = max(t["id"] for t in vocab["added_tokens"]) + 1
    rng = random.Random(0)

    def ids(n: int) -> list[int]:  # BOS, then ids of the tokenizer's that are no special token
        return [0] + [rng.randrange(first, 8192) for _ in range(n - 1)]

    return dict(decode=ids(PROMPT), batch=[ids(PROMPT) for _ in range(BATCH)],
                prefill=[ids(PREFILL) for _ in range(repeats + 1)])


def table(results: dict, a: argparse.Namespace, source: dict) -> list[str]:
    def gb(x: float | None) -> str:
        return "-" if x is None else f"{x / GB:.2f}"

    def rate(x: float | None) -> str:
        return "-" if x is None else f"{x:,.1f}"

    lines = ["| engine | format | on disk GB | build s | build peak GB | load s | load peak GB | prefill tok/s | "
             "decode b=1 tok/s | decode 4 seqs tok/s | serving peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, r in results.items():
        engine = FORMATS[fmt][0]
        lines.append(f"| {engine} | {fmt} | {gb(r['build']['bytes'])} | {r['build']['seconds']:.0f} | "
                     f"{gb(r['build']['peak'])} | {r['run']['load']:.1f} | {gb(r['run']['load_peak'])} | "
                     f"{rate(r['run']['prefill'])} | {rate(r['run']['decode'])} | {rate(r['run'].get('batch'))} | "
                     f"{gb(r['run']['peak'])} |")
    lines.append("")
    for fmt, (limit, peer) in GOALS.items():
        if fmt not in results:
            continue
        peak = results[fmt]["run"]["peak"] / GB
        lines.append(f"- {fmt}: serving peak {peak:.2f} GB, goal <= {limit:g} GB {'✅' if peak <= limit else '❌'}")
        if peer in results:
            ratio = results[fmt]["run"]["decode"] / results[peer]["run"]["decode"]
            lines.append(f"- {fmt}: decode b=1 / llama.cpp {peer} = {ratio:.2f}, goal >= 1.0 "
                         f"{'✅' if ratio >= 1 else '❌'}")
    lines += ["", f"Config {a.config}: {source['params'] / 1e9:.2f}B parameters, random bfloat16 weights (source "
                  f"{gb(source['bytes'])} GB); {a.threads} threads per engine; decode {a.decode} tokens after a "
                  f"{PROMPT}-token prompt, median of {a.repeats}; prefill {PREFILL} tokens; seekmoe's KV cache "
                  f"{CACHE_TOKENS} tokens; peak = VmHWM of the process (seekmoe's: load, prefill, decode and the "
                  "4-sequence batch together)."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(CONFIGS), default="v2-lite", help="the shape (default v2-lite)")
    p.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "seekmoe" / "full_size",
                   help="where the source (kept) and the artifacts go")
    p.add_argument("--formats", default="int8,int4,q8_0,q4_0",
                   help="comma-separated, of " + ", ".join(FORMATS) + "; empty: build the source only")
    p.add_argument("--threads", type=int, default=2, help="threads for each engine (default 2)")
    p.add_argument("--decode", type=int, default=16, help="tokens per decode measurement (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per rate, the median reported")
    p.add_argument("--keep", action="store_true", help="keep each artifact after measuring it (needs more disk)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    formats = [f for f in a.formats.split(",") if f]
    if unknown := [f for f in formats if f not in FORMATS]:
        p.error(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: measuring seekmoe only", file=sys.stderr)
        formats = [f for f in formats if FORMATS[f][0] == "seekmoe"]

    config = CONFIGS[a.config]
    folder = a.dir / a.config
    src = folder / "source"
    sizes = estimate(config)
    info_path = folder / "source.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    have_source = info is not None and info.get("config") == config and info.get("seed") == SEED
    artifacts = [sizes[f] for f in formats]  # none: build (or check) the source only
    need = (0 if have_source else sizes["source"]) + (sum(artifacts) if a.keep else max(artifacts, default=0)) + 1e9
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    print(f"{a.config}: source {sizes['source'] / GB:.1f} GB ({'cached' if have_source else 'to build'}), "
          + (", ".join(f"{f} ~{sizes[f] / GB:.1f} GB" for f in formats) or "no formats")
          + f"; needs {need / GB:.1f} GB free in {folder}, has {free / GB:.1f}", file=sys.stderr)
    if need > free:
        raise SystemExit(f"not enough disk in {folder}: needs {need / GB:.1f} GB, has {free / GB:.1f} GB "
                         "(--dir elsewhere, fewer --formats, or no --keep)")

    if not have_source:
        shutil.rmtree(src, ignore_errors=True)
        info_path.unlink(missing_ok=True)
        built = run_worker(a, "source", str(src), json.dumps(config))
        info = dict(config=config, seed=SEED, bytes=folder_bytes(src), **built)
        info_path.write_text(json.dumps(info))  # last: a build cut short is rebuilt
    else:
        print(f"source: reusing {src}", file=sys.stderr)

    prompts_path = folder / "prompts.json"
    prompts_path.write_text(json.dumps(make_prompts(a.repeats)))
    results = {}
    for fmt in formats:
        engine, kind = FORMATS[fmt]
        path = folder / (fmt if engine == "seekmoe" else f"{fmt}.gguf")
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        try:
            build = run_worker(a, "quantize", str(src), str(path), str(kind)) if engine == "seekmoe" else \
                run_worker(a, "gguf", str(src), str(path), kind)
            run = run_worker(a, engine, str(path), str(prompts_path))
        except SystemExit:
            if results:  # what was measured before the failure is not lost
                print("\n".join(["measured before the failure:", *table(results, a, info)]), file=sys.stderr)
            raise
        results[fmt] = dict(build=build, run=run)
        if not a.keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not results:
        return
    lines = table(results, a, info)
    print("\n".join(lines))
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
