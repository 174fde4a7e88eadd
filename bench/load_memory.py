"""Peak memory of loading a ~1 GB checkpoint: seekmoe's load_model against transformers' from_pretrained.

Builds a random DeepSeek-V2-style MoE on the meta device (to_empty + init_weights: one copy in memory), saves it
once as a single file and once in shards, then loads each in a fresh subprocess per loader and dtype, and prints a
markdown table. "peak RSS" is getrusage's ru_maxrss: it counts the pages of a memory-mapped file while it is mapped,
which are the kernel's page cache, not a copy; "peak private" samples RssAnon, the memory that is the process's own.
Run: .venv/bin/python bench/load_memory.py   (about 2 minutes on 2 cores; the page cache is warm for every load)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1e9
# ~250M parameters: ~1.0 GB in float32, every tensor kind a DeepSeek-V2 checkpoint has
CONFIG = dict(
    model_type="deepseek_v2", vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
    num_attention_heads=8, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
    v_head_dim=64, moe_intermediate_size=512, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
    first_k_dense_replace=1, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1,
)
SHARD_BYTES = 256 * 2**20


def build_and_save(folder: Path) -> None:
    import torch

    from seekmoe import CausalLM, ModelConfig, save_model

    with torch.device("meta"):
        model = CausalLM(ModelConfig.from_dict(CONFIG))
    model.to_empty(device="cpu")
    model.tie_weights()
    model.init_weights(torch.Generator().manual_seed(0))
    save_model(model, folder / "single")
    save_model(model, folder / "sharded", max_shard_bytes=SHARD_BYTES)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(loader: str, folder: str, dtype: str) -> None:
    """Load once in this fresh process and print what it cost as JSON."""
    import torch

    if loader == "seekmoe":
        from seekmoe import load_model
        def load():
            return load_model(folder, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        def load():
            return AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))

    peak_private, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak_private[0] = max(peak_private[0], _status_kb("RssAnon"))
            done.wait(0.002)

    before = _status_kb("VmRSS")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    assert sum(p.numel() for p in model.parameters()) > 0
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "before": before * 1024, "peak_private": peak_private[0] * 1024, "seconds": seconds}))


def measure(loader: str, folder: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", loader, str(folder), dtype], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{loader} {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoints (default: system tmp)")
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    root = Path(tempfile.mkdtemp(prefix="seekmoe-bench-", dir=args.dir))
    try:
        start = time.perf_counter()
        build_and_save(root)
        print(f"built and saved in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows = []
        for layout in ("single", "sharded"):
            folder = root / layout
            file_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            n_files = len(list(folder.glob("*.safetensors")))
            for loader in ("seekmoe", "transformers"):
                for dtype in ("float32", "bfloat16"):
                    r = measure(loader, folder, dtype)
                    print(f"{loader} {layout} {dtype}: {r}", file=sys.stderr)
                    rows.append(f"| {loader} | {dtype} | {n_files} | {file_bytes / GB:.2f} | {r['before'] / GB:.2f} "
                                f"| {r['peak_rss'] / GB:.2f} | {r['peak_rss'] / file_bytes:.2f} "
                                f"| {r['peak_private'] / GB:.2f} | {r['seconds']:.1f} |")
        print("| loader | dtype | files | file GB | RSS before load GB | peak RSS GB | ratio RSS/file "
              "| peak private GB | load s |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
