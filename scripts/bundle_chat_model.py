"""Bundle a fine-tuned chat model: RUN/model in bfloat16 (router float32), its tokenizer, and a model card written
from the run's own records and bench/chat_eval.py's before/after results.

    .venv/bin/python scripts/bundle_chat_model.py RUN EVAL_JSON OUT [--name seekmoe-tiny-chat]

RUN is a `seekmoe finetune --method full` run folder (config.json, metrics.jsonl, data_report.json, model/); when
its base model is itself a run's model/ folder, that run is described as the stage before. EVAL_JSON is
`bench/chat_eval.py BASE [STAGE/model ...] RUN/model --json EVAL_JSON`: the base model first, this one last.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.inspect import inspect_config
from seekmoe.train.plots import read_metrics


def _pct(x: float) -> str:
    return f"{x:.1%}"


def stages(run: Path) -> list[Path]:
    """The run and the runs its base model came from, oldest first."""
    chain = [run]
    while True:
        base = Path(json.loads((chain[0] / "config.json").read_text())["model"])
        if base.name != "model" or not (base.parent / "config.json").is_file():
            return chain
        chain.insert(0, base.parent)


def stage_text(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    metrics = read_metrics(run / "metrics.jsonl")
    data = json.loads((run / "data_report.json").read_text())
    val = [r for r in metrics if r["split"] == "val"]
    train = [r for r in metrics if r["split"] == "train"]
    step = train[-1]["step"]
    tokens = step * cfg["batch_size"] * cfg["seq_len"] * cfg["grad_accum"]
    util = ", ".join(f"{x['utilisation']:.0%}" for x in (val[-1]["layers"] if val else []))
    return (f"- `{run}` (`seekmoe finetune` from `{cfg['model']}`, method {cfg['method']}): {step} steps, "
            f"{tokens:,} tokens seen (batch {cfg['batch_size']} × {cfg['seq_len']} tokens, conversations packed; "
            f"loss on assistant tokens only, {data['train']['target_tokens']:,} of the {data['train']['tokens']:,} "
            f"tokens of an epoch), AdamW lr {cfg['lr']} → {cfg['min_lr']} (cosine, {cfg['warmup_steps']} warm-up "
            f"steps), seed {cfg['seed']}. Balancing kept from the base model: `{cfg['balance']['mode']}` (bias "
            f"update rate {cfg['balance']['bias_update_rate']}); expert utilisation on validation per MoE layer: "
            f"{util}. Validation loss {val[-1]['val_loss']:.3f}, last training loss {train[-1]['loss']:.3f}.")


def card(name: str, run: Path, sources: dict, before: dict, after: dict, model) -> str:
    report = inspect_config(model.config)
    chain = stages(run)
    recipes = "\n".join(f".venv/bin/seekmoe finetune recipes/{r.name}.json" for r in chain)
    models = " ".join(f"{r}/model" for r in chain)
    sets = sorted(after["val_loss"])
    loss_rows = "\n".join(f"| {s} | {before['val_loss'][s]:.3f} | {after['val_loss'][s]:.3f} |" for s in sets)
    source_rows = "\n".join(
        f"| {s['name']} | {s.get('origin', '')} | {s.get('license', '')} | {s['counts']['train']:,} | "
        f"{s['counts']['val']:,} |" for s in sources.get("sets", []))
    c = after["counts"]
    results = "\n".join([
        f"| | seekmoe-tiny (before) | {name} (after) |", "|---|---|---|",
        f"| intent accuracy ({c['intents']} messages, 6 labels) | {_pct(before['intent_accuracy'])} | "
        f"{_pct(after['intent_accuracy'])} |",
        f"| multi-turn recall: the last answer gives the first turn's fact ({c['dialogues']} dialogues of 5-8 "
        f"turns) | {_pct(before['multi_turn_recall'])} | {_pct(after['multi_turn_recall'])} |",
        f"| arithmetic word problems, final answer right ({c['arithmetic']}) | "
        f"{_pct(before['arithmetic_accuracy'])} | {_pct(after['arithmetic_accuracy'])} |",
        f"| the same problems with the math tool offered (the model calls it, the plugin runs, the model answers) | "
        f"{_pct(before['arithmetic_tool_accuracy'])} | {_pct(after['arithmetic_tool_accuracy'])} |"])
    examples = "\n".join(f"- *{ex['asked']}* → `{ex['said']}`" for ex in
                         after["intent_examples"][:2] + after["dialogue_examples"][:2])
    for ex in after.get("tool_examples", [])[:2]:
        calls = ", ".join(f"{c['name']} {c['arguments']}" for c in ex["calls"])
        examples += f"\n- *{ex['asked']}* → calls {calls} → `{ex['said']}`"
    return f"""# {name}

seekmoe-tiny fine-tuned to chat by `seekmoe finetune` on CPU, in {len(chain)} stage(s) (below). It is the model every
seekmoe command (`serve`, `chat`, `generate`) uses when none is given. It follows the chat template and the tool
format: it labels shop-support messages with their intent, answers support questions in the shape it was taught,
writes worked arithmetic answers in English and Chinese, and calls the math tool and answers from its result.

What it cannot do at {report.total / 1e6:.1f}M parameters: copy a number or a name from earlier in the
conversation. It names *an* order number, not the customer's, and puts wrong numbers into its sums and tool calls:
see the multi-turn recall and arithmetic rows below. It is a working part for demos and for testing the stack
(serving, tools, fine-tuning), not an assistant.

## Results on held-out data
Measured by `bench/chat_eval.py` (greedy answers through the engine; the intent and dialogue sets use phrasings
that never occur in training).

{results}

Validation loss, nats per assistant token:

| set | before | after |
|---|---|---|
{loss_rows}

Some answers of {name}:
{examples}

## Training
{chr(10).join(stage_text(r) for r in chain)}

## Data and licenses
`seekmoe data chat --out data/chat` (the files are in the repository):

| set | origin | license | train | val |
|---|---|---|---|---|
{source_rows}

## Reproduce
```bash
.venv/bin/seekmoe data chat --out data/chat
{recipes}
.venv/bin/python bench/chat_eval.py seekmoe/models/seekmoe-tiny {models} --json {run}/eval.json
.venv/bin/python scripts/bundle_chat_model.py {run} {run}/eval.json seekmoe/models/{name}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the fine-tuning run folder")
    parser.add_argument("eval", type=Path, help="bench/chat_eval.py --json output: the base model, then the run's")
    parser.add_argument("out", type=Path, help="the model folder to write")
    parser.add_argument("--name", default="seekmoe-tiny-chat", help="model name in the card")
    args = parser.parse_args()
    cfg = json.loads((args.run / "config.json").read_text())
    results = json.loads(args.eval.read_text())
    before, after = results[0], results[-1]
    sources = json.loads((Path(cfg["data"]) / "SOURCES.json").read_text())
    model = load_model(args.run / "model", dtype="bfloat16")
    save_model(model, args.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.run / "model" / f, args.out / f)
    text = card(args.name, args.run, sources, before, after, model)
    (args.out / "README.md").write_text(text, encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
