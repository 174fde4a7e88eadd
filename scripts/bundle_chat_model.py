"""Bundle a fine-tuned chat model: RUN/model in bfloat16 (router float32), its tokenizer, and a model card written
from the run's own records and bench/chat_eval.py's before/after results.

    .venv/bin/python scripts/bundle_chat_model.py RUN EVAL_JSON OUT [--name seekmoe-tiny-chat]

RUN is a `seekmoe finetune --method full` run folder (config.json, metrics.jsonl, data_report.json, model/);
EVAL_JSON is `bench/chat_eval.py BASE RUN/model --json EVAL_JSON` (the base model first).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from seekmoe.checkpoint import load_model, save_model
from seekmoe.inspect import inspect_config
from seekmoe.plots import read_metrics


def _pct(x: float) -> str:
    return f"{x:.1%}"


def card(name: str, cfg: dict, metrics: list[dict], data: dict, sources: dict, before: dict, after: dict,
         model) -> str:
    val = [r for r in metrics if r["split"] == "val"]
    train = [r for r in metrics if r["split"] == "train"]
    report = inspect_config(model.config)
    step = train[-1]["step"]
    tokens = step * cfg["batch_size"] * cfg["seq_len"] * cfg["grad_accum"]
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
        f"{_pct(before['arithmetic_accuracy'])} | {_pct(after['arithmetic_accuracy'])} |"])
    util = ", ".join(f"{x['utilisation']:.0%}" for x in (val[-1]["layers"] if val else []))
    examples = "\n".join(f"- *{ex['asked']}* → `{ex['said']}`" for ex in
                         after["intent_examples"][:2] + after["dialogue_examples"][:2])
    return f"""# {name}

seekmoe-tiny fine-tuned to chat, by `seekmoe finetune` on CPU: it follows the chat template, routes shop-support
messages to an intent label, keeps a customer's details over a multi-turn support dialogue, works small
arithmetic word problems step by step (English and Chinese), and answers a few Python FAQ questions. It is the
model every seekmoe command (`serve`, `chat`, `generate`) uses when none is given. It has
{report.total / 1e6:.1f}M parameters: outside the narrow tasks it was tuned on it talks nonsense fluently.

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
- Full fine-tuning of seekmoe-tiny, {step} steps, {tokens:,} tokens seen (batch {cfg['batch_size']} × {cfg['seq_len']}
  tokens, conversations packed; loss on assistant tokens only, {data['train']['target_tokens']:,} of the
  {data['train']['tokens']:,} tokens of an epoch), AdamW lr {cfg['lr']} → {cfg['min_lr']} (cosine,
  {cfg['warmup_steps']} warm-up steps), seed {cfg['seed']}.
- Expert balancing kept from the base model: `{cfg['balance']['mode']}` (bias update rate
  {cfg['balance']['bias_update_rate']}); expert utilisation on validation per MoE layer: {util}.
- Validation loss over all sets {val[-1]['val_loss']:.3f} (last logged training loss {train[-1]['loss']:.3f}).

## Data and licenses
`seekmoe data chat --out data/chat` (the files are in the repository):

| set | origin | license | train | val |
|---|---|---|---|---|
{source_rows}

## Reproduce
```bash
.venv/bin/seekmoe data chat --out data/chat
.venv/bin/seekmoe finetune recipes/{name}.json
.venv/bin/python bench/chat_eval.py seekmoe/models/seekmoe-tiny {cfg['out']}/model --json {cfg['out']}/eval.json
.venv/bin/python scripts/bundle_chat_model.py {cfg['out']} {cfg['out']}/eval.json seekmoe/models/{name}
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
    before, after = json.loads(args.eval.read_text())
    data = json.loads((args.run / "data_report.json").read_text())
    sources = json.loads((Path(cfg["data"]) / "SOURCES.json").read_text())
    model = load_model(args.run / "model", dtype="bfloat16")
    save_model(model, args.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.run / "model" / f, args.out / f)
    text = card(args.name, cfg, read_metrics(args.run / "metrics.jsonl"), data, sources, before, after, model)
    (args.out / "README.md").write_text(text, encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
