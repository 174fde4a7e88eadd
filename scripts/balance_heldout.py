"""Expert utilisation of a checkpoint on training windows its run never read, and how precisely a sample of a
given size measures it.

    .venv/bin/python scripts/balance_heldout.py CHECKPOINT [--data runs/shards] [--after-step 2000] [--batches 400]
    .venv/bin/python scripts/balance_heldout.py CHECKPOINT --split val     # the whole validation split instead

Windows come from steps after --after-step of the run's own data order (TokenShards.batch, batch 16 x 256), so a
run of at most that many steps never saw them. Prints the utilisation (mean load / max load) per MoE layer over
all of them, then over disjoint groups the size of our validation samples: the spread between groups is the
measurement's own noise, large because each 256-token window is one document's text and experts specialise.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from seekmoe.model.checkpoint import load_model
from seekmoe.train.balance import expert_counts
from seekmoe.train.data import TokenShards


def utilisation(counts: np.ndarray) -> np.ndarray:
    return counts.astype(np.float64).mean(-1) / counts.max(-1)


def rounded(a: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in a]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="runs/shards")
    ap.add_argument("--after-step", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--split", choices=("train", "val"), default="train",
                    help="val: every 16 x 256 batch of the validation split, from its start")
    args = ap.parse_args()
    model = load_model(args.checkpoint).eval()
    data = TokenShards(args.data, args.split)
    if args.split == "val":
        args.after_step, args.batches = 0, data.windows(256) // 16
    n_experts = model.config.n_routed_experts
    per_batch = []
    with torch.no_grad():
        for s in range(args.batches):
            x, _ = data.batch(args.after_step + s, 16, 256)
            routing = model(x, return_routing=True).routing
            per_batch.append(torch.stack([expert_counts(r, n_experts) for r in routing]).numpy())
    counts = np.array(per_batch)  # (batches, layers, experts)
    print(f"{args.batches * 4096:,} held-out tokens ({args.split}), utilisation per MoE layer: "
          f"{rounded(utilisation(counts.sum(0)))}")
    for size in (16, 46, 100):
        groups = np.array([utilisation(counts[i:i + size].sum(0)) for i in range(0, len(counts) - size + 1, size)])
        if len(groups) > 1:
            print(f"  {len(groups)} samples of {size * 4096:,} tokens: mean {rounded(groups.mean(0))}, "
                  f"min {rounded(groups.min(0))}, max {rounded(groups.max(0))}")
    relative = counts / counts.mean(-1, keepdims=True)
    print(f"  per-batch (4,096 tokens) std of an expert's relative load, per layer: "
          f"{rounded(relative.std(0).mean(-1))}")


if __name__ == "__main__":
    main()
