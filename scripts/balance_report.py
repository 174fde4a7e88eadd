"""Summarise the balancing experiment (recipes/balance/*.json): a markdown table and one figure.

    .venv/bin/python scripts/balance_report.py [--runs runs/balance] [--plot docs/balance.png]

For each run: tokens seen, final validation loss, and on validation the worst MoE layer's MaxVio and
utilisation (mean load / max load) plus their mean over layers; training tokens/s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seekmoe.train.plots import read_metrics

ORDER = ["none", "aux", "loss_free", "loss_free_cal", "loss_free_u0.01", "loss_free_prop", "loss_free_lr",
         "loss_free_prop_lr", "dense"]


def summarise(run: Path) -> dict | None:
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    if not val:
        return None  # still in its first evaluation interval
    last = val[-1]
    layers = last["layers"]
    return {
        "run": run.name, "steps": last["step"], "tokens": next(r["tokens"] for r in train if r["step"] == last["step"]),
        "val_loss": last["val_loss"],
        "max_vio": max((x["max_vio"] for x in layers), default=None),
        "mean_max_vio": sum(x["max_vio"] for x in layers) / len(layers) if layers else None,
        "utilisation": min((x["utilisation"] for x in layers), default=None),
        "mean_utilisation": sum(x["utilisation"] for x in layers) / len(layers) if layers else None,
        "tokens_per_s": sorted(r["tokens_per_s"] for r in train)[len(train) // 2],
        "train": train, "val": val,
    }


def fmt(x, spec: str) -> str:
    return "n/a (dense)" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/balance", help="folder holding one run folder per mode")
    parser.add_argument("--plot", default="docs/balance.png", help="where to write the figure")
    args = parser.parse_args()
    runs = [summarise(Path(args.runs) / m) for m in ORDER if (Path(args.runs) / m / "metrics.jsonl").exists()]
    runs = [s for s in runs if s is not None]
    print("| run | tokens | val loss | MaxVio (worst layer / mean) | utilisation (worst layer / mean) | tokens/s |")
    print("|---|---|---|---|---|---|")
    for s in runs:
        print(f"| {s['run']} | {s['tokens'] / 1e6:.2f}M | {s['val_loss']:.3f} | "
              f"{fmt(s['max_vio'], '.3f')} / {fmt(s['mean_max_vio'], '.3f')} | "
              f"{fmt(s['utilisation'], '.1%')} / {fmt(s['mean_utilisation'], '.1%')} | {s['tokens_per_s']:,.0f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for s in runs:
        ax1.plot([r["step"] for r in s["train"]], [r["loss"] for r in s["train"]], label=s["run"], alpha=0.8)
        if s["train"][0]["layers"]:
            util = [min(x["utilisation"] for x in r["layers"]) for r in s["train"]]
            ax2.plot([r["step"] for r in s["train"]], util, label=s["run"])
    ax1.set(xlabel="step", ylabel="train loss (nats/token)", title="loss")
    ax2.set(xlabel="step", ylabel="utilisation, worst MoE layer", title="expert utilisation (mean / max load)",
            ylim=(0, 1.02))
    ax2.axhline(0.96, color="grey", ls=":", lw=1)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=100)
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
