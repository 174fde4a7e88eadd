"""`seekmoe eval-multimodal MODEL`: accuracy on the held-out media, asked through the chat interface, and which
experts each modality's tokens use.

Every test record's question goes through LLM.chat as a user would send it (greedy, the answer scored by
mm_data.score); the table has one row per set and language. The routing of the same prompts, counted per MoE layer
and per kind of token (image rows, audio rows, text), is drawn as one heatmap per modality: do experts specialise?
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from seekmoe.cli.model_flags import load_llm
from seekmoe.multimodal.data import SETS, score

if TYPE_CHECKING:
    import numpy as np

MODALITIES = ("image", "audio", "text")


def evaluate(model_path: str | Path, data: str | Path, sets: tuple[str, ...] = SETS, limit: int | None = None,
             batch: int = 16, progress: bool = True) -> dict:
    """{"accuracy": {set/lang: (correct, total)}, "loads": {modality: (layers, experts) counts}}."""
    from tqdm import tqdm

    data = Path(data)
    correct: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    loads: dict[str, np.ndarray] = {}
    with load_llm(str(model_path)) as llm:
        if llm.encoders is None:
            raise ValueError(f"{model_path}: a text-only model (no multimodal section in config.json)")
        cfg = llm.encoders.config
        records = []
        for name in sets:
            with open(data / f"{name}.test.jsonl", encoding="utf-8") as f:
                lines = [json.loads(line) for line in f if line.strip()]
            records += [(name, r) for r in lines[:limit]]
        bar = tqdm(total=len(records), desc="asking", unit="q", disable=not progress)
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            prompts, reqs = [], []
            for _, r in chunk:  # every question of the chunk in the engine before any is awaited: one batch
                question = [_with_base(m, data) for m in r["messages"][:-1]]
                prompts.append(llm.chat_prompt(question))
                ids, _, embeds = prompts[-1]
                reqs.append(llm.submit(ids, llm.params(max_tokens=16, temperature=0), embeds=embeds))
            for (name, r), req, (ids, _, embeds) in zip(chunk, reqs, prompts, strict=True):
                key = f"{name}/{r['meta']['lang']}"
                correct[key][0] += score(req.result().text, r["meta"])
                correct[key][1] += 1
                _count_routing(llm.model, ids, embeds, cfg, loads)
            bar.update(len(chunk))
        bar.close()
    return {"accuracy": {k: tuple(v) for k, v in sorted(correct.items())}, "loads": loads}


def _with_base(message: dict, base: Path) -> dict:
    content = message["content"]
    if not isinstance(content, list):
        return message
    return {**message, "content": [{**p, "path": str(base / p["path"])} if "path" in p else p for p in content]}


def _count_routing(model, ids: list[int], embeds, cfg, loads: dict[str, np.ndarray]) -> None:
    import numpy as np
    import torch

    with torch.inference_mode():
        x = torch.tensor([ids])
        e = model.model.embed_tokens(x)
        if embeds is not None:
            e[0, embeds.positions] = embeds.rows.to(e.dtype)
        routing = model(x, return_routing=True, inputs_embeds=e).routing
        kind = np.array(["image" if t == cfg.image_token_id else "audio" if t == cfg.audio_token_id else "text"
                         for t in ids])
        n_experts = model.config.n_routed_experts
        for modality in MODALITIES:
            rows = torch.from_numpy(np.flatnonzero(kind == modality))
            if rows.numel() == 0:
                continue
            counts = np.stack([torch.bincount(r.topk_idx[rows].flatten(), minlength=n_experts).numpy()
                               for r in routing])  # (layers, experts)
            loads[modality] = loads.get(modality, 0) + counts


def table(result: dict) -> str:
    lines = ["| set | language | accuracy | correct / asked |", "|---|---|---:|---:|"]
    for key, (ok, n) in result["accuracy"].items():
        name, lang = key.split("/")
        lines.append(f"| {name} | {lang} | {100 * ok / max(n, 1):.1f}% | {ok} / {n} |")
    return "\n".join(lines)


def specialisation(loads: dict[str, np.ndarray]) -> str:
    """Per MoE layer, how far each modality's expert distribution is from the text tokens': total variation
    distance, 0 when they use the experts alike, 1 when they share none."""
    import numpy as np

    if "text" not in loads:
        return ""
    text = loads["text"] / loads["text"].sum(1, keepdims=True)
    others = [m for m in MODALITIES if m != "text" and m in loads]
    lines = ["| MoE layer | " + " | ".join(f"{m} vs text" for m in others) + " |",
             "|---:|" + "---:|" * len(others)]
    for layer in range(text.shape[0]):
        tv = [0.5 * np.abs(loads[m][layer] / loads[m][layer].sum() - text[layer]).sum() for m in others]
        lines.append(f"| {layer} | " + " | ".join(f"{v:.2f}" for v in tv) + " |")
    return "\n".join(lines)


def plot_loads(loads: dict[str, np.ndarray], path: Path) -> None:
    """One heatmap per modality: each MoE layer's share of that modality's tokens per expert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in MODALITIES if m in loads]
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
    top = max((loads[m] / loads[m].sum(1, keepdims=True)).max() for m in present)
    for ax, m in zip(axes[0], present, strict=True):
        share = loads[m] / loads[m].sum(1, keepdims=True)  # (layers, experts), rows sum to 1
        im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=top)
        ax.set_title(f"{m} tokens\n{int(loads[m].sum() // max(share.shape[0], 1)):,} expert choices a layer")
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer")
        ax.set_yticks(range(share.shape[0]))
    fig.colorbar(im, ax=axes[0].tolist(), label="share of the modality's expert choices")
    fig.suptitle("Expert load by modality, per layer (held-out questions)", y=1.08)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a multimodal model folder (the OUT/model of seekmoe train-multimodal)")
    p.add_argument("--data", default="data/mm", help="folder written by `seekmoe data multimodal` (default data/mm)")
    p.add_argument("--sets", default=",".join(SETS), help="comma list of the sets to ask")
    p.add_argument("--limit", type=int, metavar="N", help="ask at most N questions a set")
    p.add_argument("--plot", default="expert_load_by_modality.png", metavar="PNG",
                   help="where to draw the expert-load heatmaps (default expert_load_by_modality.png)")
    p.add_argument("--json", action="store_true", help="print the accuracy as JSON instead of a table")


def run_from_args(args: argparse.Namespace) -> int:
    sets = tuple(x.strip() for x in args.sets.split(",") if x.strip())
    unknown = sorted(set(sets) - set(SETS))
    if unknown or not sets or (args.limit is not None and args.limit < 1):
        print("seekmoe: error: " + (f"--sets: unknown set {unknown[0]}; known: {', '.join(SETS)}" if unknown else
                                    "--sets is empty" if not sets else "--limit must be >= 1"), file=sys.stderr)
        return 2
    try:
        result = evaluate(args.model, args.data, sets, args.limit)
    except (ValueError, OSError) as e:
        print(f"seekmoe: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: {"correct": ok, "asked": n} for k, (ok, n) in result["accuracy"].items()}, indent=2))
    else:
        print(table(result))
    if result["loads"]:
        if not args.json:
            print("\ntotal variation distance between the experts a modality's tokens choose and the text tokens' "
                  "(0: alike, 1: disjoint)\n" + specialisation(result["loads"]))
        plot_loads(result["loads"], Path(args.plot))
        print(f"seekmoe: expert load by modality drawn in {args.plot}", file=sys.stderr)
    return 0
