"""Training settings: TrainConfig (with its BalanceConfig) and the `seekmoe train` flags made from it.

Kept free of torch so that building the command line stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("none", "aux", "loss_free")
BIAS_RULES = ("sign", "proportional")


@dataclass
class BalanceConfig:
    mode: str = "loss_free"  # none | aux | loss_free
    expert_alpha: float = 0.003  # α1: expert-level balance loss (DeepSeek-V2)
    device_alpha: float = 0.05  # α2: device-level balance loss, experts split into n_devices groups
    n_devices: int = 1  # 1: no device-level loss
    sequence_alpha: float = 0.0001  # α of DeepSeek-V3's sequence-wise complementary loss
    bias_update_rate: float = 0.001  # u of the loss-free strategy
    bias_update: str = "sign"  # sign (DeepSeek-V3) | proportional (step scaled by the relative imbalance)
    bias_update_schedule: str = "constant"  # constant u | lr: u scaled by lr / peak lr (warm-up and cosine)
    capacity_factor: float | None = None  # token dropping during training; None keeps every token

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"balance mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("expert_alpha", "device_alpha", "sequence_alpha", "bias_update_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.bias_update_schedule not in ("constant", "lr"):
            raise ValueError(f"bias_update_schedule must be 'constant' or 'lr', got {self.bias_update_schedule!r}")
        if self.bias_update not in BIAS_RULES:
            raise ValueError(f"bias_update must be one of {list(BIAS_RULES)}, got {self.bias_update!r}")
        if self.n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {self.n_devices}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None, got {self.capacity_factor}")



class TrainError(ValueError):
    """A training setting or file is wrong; the message names it."""


@dataclass
class TrainConfig:
    model: str  # a config.json, a bundled config name, or a checkpoint folder to continue from
    data: str  # a folder written by `seekmoe data prepare`
    out: str = "runs/default"
    # optimisation
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    bf16: bool = False  # bfloat16 autocast on the CPU
    # bookkeeping
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    balance: BalanceConfig = field(default_factory=BalanceConfig)

    def __post_init__(self) -> None:
        if isinstance(self.balance, dict):
            self.balance = BalanceConfig(**self.balance)
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "eval_every", "eval_batches",
                     "save_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise TrainError(f"warmup_steps must be between 0 and steps ({self.steps}), got {self.warmup_steps}")
        if not (0 < self.lr < 1 and 0 <= self.min_lr <= self.lr):
            raise TrainError(f"need 0 < lr < 1 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise TrainError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not (self.grad_clip > 0 and self.weight_decay >= 0):
            raise TrainError(f"grad_clip must be > 0 and weight_decay >= 0, got {self.grad_clip}, "
                             f"{self.weight_decay}")

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """A JSON or TOML file; `overrides` (from flags) replace its values, 'balance.mode' style for nesting."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise TrainError(f"{path}: cannot read the training config ({e})") from None
        if not isinstance(data, dict):
            raise TrainError(f"{path}: the training config must be an object")
        return cls.from_dict(data, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
        data = {**data, "balance": dict(data.get("balance") or {})}
        for key, value in (overrides or {}).items():
            if key.startswith("balance."):
                data["balance"][key.removeprefix("balance.")] = value
            else:
                data[key] = value
        known = {f.name for f in dataclasses.fields(cls)}
        known_balance = {f.name for f in dataclasses.fields(BalanceConfig)}
        unknown = [k for k in data if k not in known] + [f"balance.{k}" for k in data["balance"]
                                                          if k not in known_balance]
        if unknown:
            raise TrainError(f"unknown training setting {unknown[0]!r}")
        for name in ("model", "data"):
            if not data.get(name):
                raise TrainError(f"missing required training setting {name!r}")
        try:
            return cls(**data)
        except TypeError as e:
            raise TrainError(str(e)) from None
        except ValueError as e:
            raise TrainError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- command line ------------------------------------------------------------------------------------------

_HELP = {
    "model": "a config.json, a bundled config name, or a checkpoint folder to continue from",
    "data": "a folder written by `seekmoe data prepare`",
    "out": "run folder: metrics.jsonl, plots and checkpoints/ go here; an existing run resumes",
    "steps": "optimizer steps in the whole run", "batch_size": "sequences per micro-batch",
    "seq_len": "tokens per sequence", "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate", "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "linear warm-up steps", "weight_decay": "AdamW weight decay on matrices",
    "beta1": "AdamW beta1", "beta2": "AdamW beta2", "grad_clip": "clip the global gradient norm to this",
    "bf16": "bfloat16 autocast on the CPU", "log_every": "log training metrics every N steps",
    "eval_every": "validate every N steps", "eval_batches": "validation batches per evaluation",
    "save_every": "checkpoint every N steps", "keep_checkpoints": "keep the newest N checkpoints",
    "seed": "seed of the model init and data order",
    "mode": "expert balancing: none, aux (V2/V3 auxiliary losses) or loss_free (bias)",
    "expert_alpha": "α1 of the expert-level balance loss (aux)",
    "device_alpha": "α2 of the device-level balance loss (aux)",
    "n_devices": "device groups for the device-level loss (aux; 1 turns it off)",
    "sequence_alpha": "α of the sequence-wise balance loss (aux)",
    "bias_update_rate": "u of the loss-free bias update",
    "bias_update_schedule": "loss-free u: constant, or lr (scaled like the learning rate: large while the router "
                            "moves fast, small at the end)",
    "bias_update": "loss-free rule: sign (u * sign of the imbalance, DeepSeek-V3) or proportional (u * relative "
                   "imbalance)",
    "capacity_factor": "drop tokens past this capacity factor during training (default: keep all)",
}


def _add_field(parser, f: dataclasses.Field, flag: str, dest: str) -> None:
    kind = f.type.split("|")[0].strip() if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                            help=_HELP[f.name])
    else:
        parser.add_argument(flag, dest=dest, type={"int": int, "float": float}.get(kind, str), default=None,
                            metavar=kind.upper(), help=_HELP[f.name])


def add_arguments(parser) -> None:
    """`seekmoe train CONFIG [--field value ...]`: every TrainConfig field can be set on the command line."""
    parser.add_argument("config", nargs="?", metavar="CONFIG",
                        help="training config (JSON or TOML); flags override its values")
    for f in dataclasses.fields(TrainConfig):
        if f.name != "balance":
            _add_field(parser, f, f"--{f.name.replace('_', '-')}", f.name)
    for f in dataclasses.fields(BalanceConfig):
        _add_field(parser, f, f"--balance.{f.name.replace('_', '-')}", f"balance.{f.name}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


