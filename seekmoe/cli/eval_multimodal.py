"""`seekmoe eval-multimodal MODEL`: accuracy on the held-out media, asked through the chat interface, and which
experts each modality's tokens use.

Every test record's question goes through LLM.chat as a user would send it (greedy, the answer scored by
mm_data.score); the table has one row per set and language, with the mean IoU of the answers' boxes for the
grounding sets. The routing of the same prompts, counted per MoE layer and per kind of token (image rows, audio
rows, text), is drawn as one heatmap per modality: do experts specialise? --examples-plot draws held-out grounding
questions: the input with its true box, and the picture annotated with the model's answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from seekmoe.cli.model_flags import load_llm
from seekmoe.multimodal.data import GROUND_SETS, SETS, ground_iou, score

if TYPE_CHECKING:
    import numpy as np

MODALITIES = ("image", "audio", "text")
# tokens generated per answer: a word or two, or a sentence with a region (about 47 tokens) and some advice
MAX_TOKENS = {"image": 16, "speech": 16, "ground": 128}


def evaluate(model_path: str | Path, data: str | Path, sets: tuple[str, ...] = SETS, limit: int | None = None,
             batch: int = 16, progress: bool = True) -> dict:
    """{"accuracy": {set/lang: (correct, total)}, "iou": {set/lang: mean IoU} (grounding sets), "loads": {modality:
    (layers, experts) counts}, "grounded": [(set, record, reply, iou)] (grounding sets, in file order)}."""
    from tqdm import tqdm

    data = Path(data)
    correct: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    ious: dict[str, list[float]] = defaultdict(list)
    grounded = []
    loads: dict[str, np.ndarray] = {}
    with load_llm(str(model_path)) as llm:
        if llm.encoders is None:
            raise ValueError(f"{model_path}: a text-only model (no multimodal section in config.json)")
        cfg = llm.encoders.config
        records = []
        for name in sets:
            path = data / f"{name}.test.jsonl"
            if not path.is_file():
                later = " (a folder built before the grounding sets: rebuild it with `seekmoe data multimodal " \
                        "--overwrite`, or leave them out of --sets)" if name in GROUND_SETS else ""
                raise ValueError(f"{path} is missing{later}")
            with open(path, encoding="utf-8") as f:
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
                max_tokens = MAX_TOKENS.get(r["meta"].get("task"), 16)
                reqs.append(llm.submit(ids, llm.params(max_tokens=max_tokens, temperature=0), embeds=embeds))
            for (name, r), req, (ids, _, embeds) in zip(chunk, reqs, prompts, strict=True):
                key, reply = f"{name}/{r['meta']['lang']}", req.result().text
                correct[key][0] += score(reply, r["meta"])
                correct[key][1] += 1
                if name in GROUND_SETS:
                    ious[key].append(ground_iou(reply, r["meta"]))
                    grounded.append((name, r, reply, ious[key][-1]))
                _count_routing(llm.model, ids, embeds, cfg, loads)
            bar.update(len(chunk))
        bar.close()
    return {"accuracy": {k: tuple(v) for k, v in sorted(correct.items())},
            "iou": {k: sum(v) / len(v) for k, v in sorted(ious.items())}, "loads": loads, "grounded": grounded}


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
    iou = result.get("iou") or {}
    lines = ["| set | language | accuracy | correct / asked |" + (" mean IoU |" if iou else ""),
             "|---|---|---:|---:|" + ("---:|" if iou else "")]
    for key, (ok, n) in result["accuracy"].items():
        name, lang = key.split("/")
        cell = (f" {iou[key]:.2f} |" if key in iou else " |") if iou else ""
        lines.append(f"| {name} | {lang} | {100 * ok / max(n, 1):.1f}% | {ok} / {n} |{cell}")
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


_CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans SC", "SimHei", "Microsoft YaHei")


def plot_examples(grounded: list, data: Path, path: Path, per_set: int = 4) -> None:
    """A grid of held-out grounding questions, a row per set: each the input with its true box (green) beside the
    picture annotated with the model's answer (grounding.annotate), titled with the question, right or wrong and
    the IoU. Chinese questions only where matplotlib has a CJK font; else the English ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    from matplotlib.patches import Rectangle
    from PIL import Image

    from seekmoe.multimodal.data import GROUND_IOU
    from seekmoe.multimodal.grounding import annotate, parse_regions, to_pixels

    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [name for name in _CJK_FONTS if name in installed]
    rows = {}
    for name, r, reply, iou in grounded:
        if cjk or r["meta"]["lang"] == "en":
            rows.setdefault(name, [])
            if len(rows[name]) < per_set:
                rows[name].append((r, reply, iou))
    if not rows:
        raise ValueError("no grounding answer to draw: ask at least one grounding set")
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), 2 * cols, figsize=(3.0 * cols * 2, 3.4 * len(rows)), squeeze=False)
    family = {"family": [cjk[0], "DejaVu Sans"]} if cjk else {}
    for ax in axes.flat:
        ax.axis("off")
    for row, (name, examples) in enumerate(rows.items()):
        for col, (r, reply, iou) in enumerate(examples):
            media, question = r["messages"][0]["content"]
            with Image.open(data / media["path"]) as im:
                image = im.convert("RGB")
            x1, y1, x2, y2 = to_pixels(tuple(r["meta"]["box"]), *image.size)
            left, right = axes[row, 2 * col], axes[row, 2 * col + 1]
            left.imshow(image, interpolation="nearest")
            left.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="lime", lw=1.5))
            left.set_title(f"{name}: {question['text']}", fontsize=8, **family)
            right.imshow(annotate(image, parse_regions(reply)))
            ok = iou >= GROUND_IOU
            right.set_title(f"{'right' if ok else 'wrong'}, IoU {iou:.2f}", fontsize=8,
                            color="green" if ok else "red")
    fig.suptitle("Held-out grounding questions: input with the true box (green), answer drawn by the model",
                 y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a multimodal model folder (the OUT/model of seekmoe train-multimodal)")
    p.add_argument("--data", default="data/mm", help="folder written by `seekmoe data multimodal` (default data/mm)")
    p.add_argument("--sets", help="comma list of the sets to ask (default: every set of --data; a folder built before "
                                  "the grounding sets is asked without them)")
    p.add_argument("--limit", type=int, metavar="N", help="ask at most N questions a set")
    p.add_argument("--plot", default="expert_load_by_modality.png", metavar="PNG",
                   help="where to draw the expert-load heatmaps (default expert_load_by_modality.png)")
    p.add_argument("--json", action="store_true", help="print the accuracy as JSON instead of a table")
    p.add_argument("--examples-plot", metavar="PNG",
                   help="also draw held-out grounding questions (input with the true box, the picture annotated "
                        "with the model's answer, right or wrong) into PNG, four a grounding set asked")


def run_from_args(args: argparse.Namespace) -> int:
    if args.sets is None:
        sets = tuple(name for name in SETS if (Path(args.data) / f"{name}.test.jsonl").is_file()) or SETS
        missing = [name for name in GROUND_SETS if name not in sets]
        if missing and len(sets) < len(SETS):
            print(f"seekmoe: {args.data} has no {', '.join(missing)} (built before the grounding sets): asking "
                  "without them; `seekmoe data multimodal --overwrite` adds them", file=sys.stderr)
    else:
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
        iou = result["iou"]
        print(json.dumps({k: {"correct": ok, "asked": n, **({"mean_iou": round(iou[k], 4)} if k in iou else {})}
                          for k, (ok, n) in result["accuracy"].items()}, indent=2))
    else:
        print(table(result))
    if result["loads"]:
        if not args.json:
            print("\ntotal variation distance between the experts a modality's tokens choose and the text tokens' "
                  "(0: alike, 1: disjoint)\n" + specialisation(result["loads"]))
        plot_loads(result["loads"], Path(args.plot))
        print(f"seekmoe: expert load by modality drawn in {args.plot}", file=sys.stderr)
    if args.examples_plot:
        if not result["grounded"]:
            print(f"seekmoe: error: --examples-plot: no grounding set asked (--sets with one of "
                  f"{', '.join(GROUND_SETS)})", file=sys.stderr)
            return 2
        plot_examples(result["grounded"], Path(args.data), Path(args.examples_plot))
        print(f"seekmoe: grounding examples drawn in {args.examples_plot}", file=sys.stderr)
    return 0
