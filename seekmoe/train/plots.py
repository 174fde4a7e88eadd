"""Plots of a training run, drawn from its metrics.jsonl: loss curves and per-layer expert load over time."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np


def read_metrics(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_run(run: str | Path) -> list[Path]:
    """Write loss.png and, for MoE models, expert_load.png beside metrics.jsonl; returns the files written."""
    run = Path(run)
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"{run.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "loss.png", dpi=100)
    plt.close(fig)
    written.append(run / "loss.png")

    layers = train[-1]["layers"] if train else []
    if layers:
        n = len(layers)
        fig, axes = plt.subplots(n, 1, figsize=(8, 1.6 + 1.4 * n), squeeze=False, sharex=True)
        steps = [r["step"] for r in train]
        for i, ax in enumerate(axes[:, 0]):
            load = np.array([r["layers"][i]["load"] for r in train]).T  # (experts, logged steps)
            im = ax.imshow(load * load.shape[0], aspect="auto", cmap="viridis", vmin=0, vmax=2, origin="lower",
                           extent=(steps[0] - 0.5 * (len(steps) == 1), steps[-1] + 0.5 * (len(steps) == 1),
                                   -0.5, load.shape[0] - 0.5), interpolation="nearest")  # one column: half a step wide
            util = train[-1]["layers"][i]["utilisation"]
            ax.set_ylabel(f"MoE layer {i}\nexpert")
            ax.set_title(f"utilisation {util:.0%} at step {steps[-1]}", fontsize=9, loc="right")
        axes[-1, 0].set_xlabel("step")
        fig.colorbar(im, ax=axes[:, 0].tolist(), label="load / mean load")
        fig.suptitle(f"{run.name}: expert load over time (1.0 = even)")
        fig.savefig(run / "expert_load.png", dpi=100)
        plt.close(fig)
        written.append(run / "expert_load.png")
    return written
