"""One process against 2 ranks under torchrun (ddp, fsdp, expert parallel) on the same global batch: the losses
of each step side by side, the largest relative difference, and tokens/s (on one 2-core machine 2 ranks share
the cores, so the speed column shows the cost of the collectives, not a speed-up).

    .venv/bin/python bench/scale_out.py [--data runs/shards] [--model seekmoe-tiny] [--steps 20]

Needs token shards (`seekmoe data prepare`, or scripts/get_corpus.sh then the README's prepare command).
Each run writes its folder under a temporary directory; balancing is loss-free, so the bias moves by the global
counts in every layout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = ("ddp", "fsdp", "expert")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: dict, ranks: int, folder: Path) -> tuple[dict[int, float], float]:
    path = folder / "train.json"
    path.write_text(json.dumps(config))
    if ranks == 1:
        cmd = [sys.executable, "-m", "seekmoe", "train", str(path), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), "-m", "seekmoe", "train", str(path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // ranks))}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (Path(config["out"]) / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    return losses, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/shards")
    ap.add_argument("--model", default="seekmoe-tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (sequences); each of 2 ranks gets half")
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        sys.exit(f"{args.data}: no token shards (seekmoe data prepare); see the README")
    base = dict(model=args.model, data=args.data, steps=args.steps, seq_len=args.seq_len, warmup_steps=5,
                lr=3e-3, min_lr=3e-4, log_every=1, eval_every=10**6, save_every=10**6, seed=0,
                balance={"mode": "loss_free", "bias_update_rate": 0.001})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ranks, extra in [("1 process", 1, {}), *[(f"2 ranks, {p}", 2, {"parallel": p}) for p in LAYOUTS]]:
            folder = Path(tmp) / name.replace(" ", "_").replace(",", "")
            folder.mkdir()
            cfg = {**base, **extra, "out": str(folder / "run"), "batch_size": args.batch_size // ranks}
            results[name] = run(cfg, ranks, folder)
            print(f"{name}: {results[name][1]:.1f} s", file=sys.stderr)
    names = list(results)
    one = results[names[0]][0]
    print("| step | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for step in sorted(one):
        print(f"| {step} | " + " | ".join(f"{results[n][0][step]:.6f}" for n in names) + " |")
    tokens = args.steps * args.batch_size * args.seq_len
    print("| max relative difference vs 1 process | — | " + " | ".join(
        f"{max(abs(results[n][0][s] - one[s]) / abs(one[s]) for s in one):.1e}" for n in names[1:]) + " |")
    print("| tokens/s (whole run, start-up included) | " + " | ".join(
        f"{tokens / results[n][1]:,.0f}" for n in names) + " |")


if __name__ == "__main__":
    main()
