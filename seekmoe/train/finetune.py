"""`seekmoe finetune`: supervised fine-tuning of a model on chat data, all weights or LoRA adapters.

It runs the pretraining loop (train.run: the same progress bar, metrics.jsonl, plots, balancing, atomic checkpoints
and exact resume) on SFTData, and ends by writing the result into the run folder: OUT/model/ (full fine-tuning:
a model folder with its tokenizer, servable as it is) or OUT/adapter/ (LoRA: peft's adapter files, served with
`seekmoe serve BASE --adapter OUT/adapter` or merged with `seekmoe merge`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekmoe.files import atomic_write, write_folder
from seekmoe.model.checkpoint import CheckpointError, load_model, save_model
from seekmoe.model.lora import AdapterError, add_adapter, load_adapter_weights, lora_config, save_adapter
from seekmoe.multimodal.model import WEIGHTS_FILE as MULTIMODAL_WEIGHTS
from seekmoe.text.tokenizer import Tokenizer, TokenizerError
from seekmoe.train.checkpoints import refuse_another_run
from seekmoe.train.config import FinetuneConfig, TrainError
from seekmoe.train.loop import run
from seekmoe.train.sft import SFTData, SFTError, data_files, read_conversations
from seekmoe.train.trainee import Trainee, full_trainee

GENERATION_CONFIG = "generation_config.json"  # a model's sampling defaults
# what a fine-tune and a merge keep from the base folder: its sampling defaults, and the image and speech encoders
# that text fine-tuning does not train (config.json still names them, so a folder without them would not load)
BASE_FILES = (GENERATION_CONFIG, MULTIMODAL_WEIGHTS)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def base_model_path(cfg: FinetuneConfig) -> Path:
    from seekmoe.model.checkpoint import DEFAULT_MODEL

    return Path(cfg.model) if cfg.model else DEFAULT_MODEL


def lora_trainee(model, cfg: FinetuneConfig) -> Trainee:
    """Only the adapter trains; a checkpoint holds the adapter (and the routing bias), not the frozen base."""
    s = cfg.lora
    peft_model = add_adapter(model, lora_config(s.targets, s.r, s.alpha, s.dropout))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return Trainee(model, params, lambda path: save_adapter(peft_model, path),
                   lambda path: load_adapter_weights(peft_model, path))


def load_data(cfg: FinetuneConfig, tok: Tokenizer, log) -> tuple[SFTData, SFTData]:
    fmt, skip = cfg.format, cfg.skip_bad_lines
    train_files = data_files(cfg.data, "train")
    val_files = data_files(cfg.val_data, "all") if cfg.val_data else data_files(cfg.data, "val")
    conversations = read_conversations(train_files, fmt, skip, log=log)
    # shuffled before packing, so a row mixes the data sets rather than holding one file's neighbours
    order = np.random.default_rng(cfg.seed).permutation(len(conversations))
    conversations = [conversations[i] for i in order]
    if val_files:
        val = read_conversations(val_files, fmt, skip, log=log)
    else:
        n_val = max(1, round(cfg.val_fraction * len(conversations))) if len(conversations) > 1 else 0
        val, conversations = conversations[:n_val], conversations[n_val:]
    train_data = SFTData.from_conversations(conversations, tok, cfg.seq_len, packing=cfg.packing, seed=cfg.seed,
                                            lookup_weight=cfg.lookup_weight)
    if not val:
        raise SFTError("no validation conversations: give val_data, or more than one conversation")
    val_data = SFTData.from_conversations(val, tok, cfg.seq_len, packing=cfg.packing, shuffle=False)
    log(f"seekmoe: train: {train_data.report.summary()} -> {len(train_data)} rows of {cfg.seq_len} tokens")
    log(f"seekmoe: val: {val_data.report.summary()} -> {len(val_data)} rows")
    if cfg.lookup_weight != 1:
        log(f"seekmoe: train: {train_data.report.lookups(cfg.lookup_weight)}")
    return train_data, val_data


def finetune(cfg: FinetuneConfig, progress: bool = True, log=_stderr) -> dict[str, Any]:
    """Fine-tune (or resume) to cfg.steps, then write OUT/model or OUT/adapter; returns the last metrics."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise TrainError("seekmoe finetune runs in one process; under torchrun only seekmoe train is data parallel")
    base = base_model_path(cfg)
    # before loading anything: another run's checkpoints are refused at once, not after a minute of loading
    refuse_another_run(Path(cfg.out) / "config.json", cfg.to_dict(), [Path(cfg.out) / "checkpoints"])
    torch.manual_seed(cfg.seed)
    try:
        tok = Tokenizer.from_pretrained(base)
        train_data, val_data = load_data(cfg, tok, log)
        model = load_model(base).train()
        trainee = full_trainee(model) if cfg.method == "full" else lora_trainee(model, cfg)
    except (TokenizerError, CheckpointError, SFTError, AdapterError) as e:
        raise TrainError(str(e)) from None
    if cfg.context and cfg.context != model.config.max_position_embeddings:
        if cfg.method != "full":
            raise TrainError("--context changes the model's positions, which a LoRA adapter cannot carry: "
                             "use --method full")
        try:
            model.extend_context(cfg.context)
        except ValueError as e:
            raise TrainError(str(e)) from None
        log(f"seekmoe: context stretched to {cfg.context:,} tokens with YaRN (factor "
            f"{model.config.rope_scaling['factor']:g})")
    if cfg.seq_len > model.config.max_position_embeddings:
        raise TrainError(f"seq_len {cfg.seq_len} is longer than the model's context "
                         f"(max_position_embeddings {model.config.max_position_embeddings})")
    last = run(cfg, trainee, train_data, val_data, progress, log)
    out = Path(cfg.out)
    if cfg.method == "full":
        def write(tmp: Path) -> None:
            save_model(model, tmp)
            tok.save_pretrained(tmp)
            _copy_present(base, tmp, BASE_FILES)

        write_folder(out / "model", write)
    else:
        write_folder(out / "adapter", trainee.save)
    _write_data_report(out, train_data, val_data)
    return last


def _write_data_report(out: Path, train_data: SFTData, val_data: SFTData) -> None:
    report = {name: {**vars(d.report), "skipped_lines": d.report.skipped_lines[:100], "rows": len(d)}
              for name, d in (("train", train_data), ("val", val_data))}
    atomic_write(out / "data_report.json", json.dumps(report, indent=2, ensure_ascii=False).encode())


def merge_adapter(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """BASE with ADAPTER folded in, written as a model folder (with BASE's tokenizer) at OUT."""
    from seekmoe.model.lora import apply_adapter

    base, out = Path(base), Path(out)
    model = apply_adapter(load_model(base), adapter)

    def write(tmp: Path) -> None:
        save_model(model, tmp)
        _copy_present(base, tmp, ("tokenizer.json", "tokenizer_config.json", *BASE_FILES))

    return write_folder(out, write)


def _copy_present(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def run_from_args(args) -> int:
    cfg = FinetuneConfig.from_args(args)
    last = finetune(cfg, progress=not args.no_progress)
    if last:
        print(json.dumps({k: v for k, v in last.items() if k != "layers"}))
    result = Path(cfg.out) / ("model" if cfg.method == "full" else "adapter")
    print(f"wrote {result}")
    return 0


__all__ = ["finetune", "merge_adapter"]
