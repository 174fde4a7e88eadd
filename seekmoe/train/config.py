"""Training settings: RunSettings, the base of every training command's settings; TrainConfig (with its
BalanceConfig), FinetuneConfig (with its LoraSettings), and the `seekmoe train` / `seekmoe finetune` flags made from
them; MultimodalSettings, those of `seekmoe train-multimodal` (seekmoe/train/multimodal.py).

Kept free of torch so that building the command line stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from seekmoe.errors import SeekmoeError
from seekmoe.model.config import LORA_TARGETS
from seekmoe.multimodal.data import SETS

MODES = ("none", "aux", "loss_free", "auto")
BIAS_RULES = ("sign", "proportional")
PARALLEL = ("ddp", "fsdp", "expert")


@dataclass
class BalanceConfig:
    mode: str = "loss_free"  # none | aux | loss_free | auto (the model's own: loss_free with noaux_tc, else aux)
    expert_alpha: float = 0.003  # α1: expert-level balance loss (DeepSeek-V2)
    device_alpha: float = 0.05  # α2: device-level balance loss, experts split into n_devices groups
    n_devices: int = 1  # 1: no device-level loss
    sequence_alpha: float = 0.0001  # α of DeepSeek-V3's sequence-wise complementary loss
    bias_update_rate: float = 0.001  # u of the loss-free strategy
    bias_update: str = "sign"  # sign (DeepSeek-V3) | proportional (step scaled by the relative imbalance)
    bias_update_schedule: str = "constant"  # constant u | lr: u scaled by lr / peak lr (warm-up and cosine)
    capacity_factor: float | None = None  # token dropping during training; None keeps every token
    calibrate_tokens: int = 0  # loss_free: after the last step, solve the bias over this many unseen tokens (0: off)

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
        if not isinstance(self.calibrate_tokens, int) or isinstance(self.calibrate_tokens, bool) or \
                self.calibrate_tokens < 0:
            raise ValueError(f"calibrate_tokens must be an int >= 0, got {self.calibrate_tokens!r}")


class TrainError(SeekmoeError, ValueError):
    """A training setting or file is wrong; the message names it."""


@dataclass
class RunSettings:
    """What every training command is set by (TrainConfig, FinetuneConfig, the multimodal Settings): the model, the
    data and the run folder, the batch, how often to validate and checkpoint, the seed. Read from a JSON or TOML
    file with flags over it, written back as JSON; each command's class adds its own fields and defaults."""
    model: str | None  # what the run starts from; each command says what it takes, and its default
    data: str
    out: str = "runs/default"  # the run folder: metrics.jsonl, plots, checkpoints/; an existing run resumes
    batch_size: int = 16
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    seed: int = 0

    COUNTS: ClassVar[tuple[str, ...]] = ("batch_size", "eval_every", "eval_batches", "save_every")  # integers >= 1
    SECTIONS: ClassVar[dict[str, type]] = {}  # nested settings: "balance.mode" on the command line
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self.SECTIONS and isinstance(value, dict):  # from a file: over this config's defaults
                setattr(self, f.name, dataclasses.replace(f.default_factory(), **value))
        if (name := self.bad_count(vars(self))) is not None:
            raise TrainError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")

    @classmethod
    def bad_count(cls, values: dict[str, Any]) -> str | None:
        """The first of COUNTS that is not an integer >= 1 in `values` (the fields, or the parsed flags), or None."""
        return next((name for name in cls.COUNTS if not isinstance(values[name], int) or values[name] < 1), None)

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Self:
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
    def from_dict(cls, data: dict[str, Any], overrides: dict[str, Any] | None = None) -> Self:
        data = {**data}
        for name in cls.SECTIONS:
            section = data.get(name) or {}
            if not isinstance(section, dict):
                raise TrainError(f"training setting {name!r} must be an object")
            data[name] = dict(section)
        for key, value in (overrides or {}).items():
            section, dot, sub = key.partition(".")
            if dot and section in cls.SECTIONS:
                data[section][sub] = value
            else:
                data[key] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in known]
        for name, kind in cls.SECTIONS.items():
            known_sub = {f.name for f in dataclasses.fields(kind)}
            unknown += [f"{name}.{k}" for k in data[name] if k not in known_sub]
        if unknown:
            raise TrainError(f"unknown training setting {unknown[0]!r}")
        for name in cls.REQUIRED:
            if not data.get(name):
                raise TrainError(f"missing required training setting {name!r}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise TrainError(str(e)) from None

    @classmethod
    def from_args(cls, args) -> Self:
        """The settings file given on the command line (if any), with every flag given overriding it."""
        overrides = {k: v for k, v in vars(args).items()
                     if v is not None and k not in ("config", "no_progress", "func", "command")}
        return cls.from_file(args.config, overrides) if args.config else cls.from_dict({}, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(RunSettings):
    model: str  # a config.json, a bundled config name, or a checkpoint folder to continue from
    data: str  # a folder written by `seekmoe data prepare`
    # optimisation (batch_size: sequences per micro-batch on each rank)
    steps: int = 1000
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    bf16: bool = False  # bfloat16 autocast (on the run's device)
    # auto: the GPU when torch sees one (one process only), else the CPU | cpu | cuda | cuda:N
    device: str = "auto"
    # bookkeeping, besides the evaluation and checkpoint cadence
    log_every: int = 10
    keep_checkpoints: int = 3
    # data parallel (torchrun): the global batch is batch_size x ranks x grad_accum sequences
    dist_timeout_s: float = 300.0  # a collective with no answer for this long (a rank died) fails the run
    # ddp: whole model on every rank | fsdp: FSDP2 shards weights, grads and optimizer state | expert: each rank
    # holds E / ranks routed experts per layer, tokens exchanged with all_to_all, the rest as ddp
    parallel: str = "ddp"
    # whole: rank 0 writes whole tensors in the Hugging Face layout | sharded (fsdp): torch.distributed.checkpoint,
    # every rank its own safetensors shard
    checkpoint_format: str = "whole"
    balance: BalanceConfig = field(default_factory=BalanceConfig)

    COUNTS: ClassVar[tuple[str, ...]] = (*RunSettings.COUNTS, "steps", "seq_len", "grad_accum", "log_every",
                                         "keep_checkpoints")
    SECTIONS: ClassVar[dict[str, type]] = {"balance": BalanceConfig}
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "data")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.warmup_steps <= self.steps:
            raise TrainError(f"warmup_steps must be between 0 and steps ({self.steps}), got {self.warmup_steps}")
        if not (0 < self.lr < 1 and 0 <= self.min_lr <= self.lr):
            raise TrainError(f"need 0 < lr < 1 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise TrainError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.parallel not in PARALLEL:
            raise TrainError(f"parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.checkpoint_format not in ("whole", "sharded"):
            raise TrainError(f"checkpoint_format must be 'whole' or 'sharded', got {self.checkpoint_format!r}")
        if self.checkpoint_format == "sharded" and self.parallel != "fsdp":
            raise TrainError("checkpoint_format 'sharded' needs parallel 'fsdp' (the shards are FSDP's)")
        if not (isinstance(self.dist_timeout_s, int | float) and self.dist_timeout_s > 0):
            raise TrainError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s!r}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(self.device))):
            raise TrainError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not (self.grad_clip > 0 and self.weight_decay >= 0):
            raise TrainError(f"grad_clip must be > 0 and weight_decay >= 0, got {self.grad_clip}, "
                             f"{self.weight_decay}")




@dataclass
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: str = "attention,shared_experts"  # comma list of attention, shared_experts, dense_mlp, routed_experts

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora.r must be an integer >= 1, got {self.r!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        names = [t.strip() for t in self.targets.split(",") if t.strip()] if isinstance(self.targets, str) else []
        if not names or any(t not in LORA_TARGETS for t in names):
            raise ValueError(f"LoRA targets must be a comma-separated list of {', '.join(LORA_TARGETS)}, got "
                             f"{self.targets!r}")
        if self.dropout and "routed_experts" in names:
            raise ValueError("lora.dropout must be 0 when the targets include routed_experts: peft applies the "
                             "update to the stacked expert weight, where dropout of the input cannot be factored in")


FINETUNE_METHODS = ("full", "lora")
SFT_FORMATS = ("auto", "messages", "alpaca", "text")


@dataclass
class FinetuneConfig(TrainConfig):
    """Supervised fine-tuning: the training loop's settings, with fine-tuning defaults, plus data and LoRA."""
    model: str = ""  # a model folder (with its tokenizer); empty: the bundled model
    data: str = ""  # a JSONL file, or a folder of *.jsonl (its *.val.jsonl files are the validation set)
    out: str = "runs/finetune"
    val_data: str | None = None  # JSONL file or folder; default: the data folder's *.val.jsonl, else val_fraction
    val_fraction: float = 0.05
    format: str = "auto"  # auto | messages | alpaca
    skip_bad_lines: bool = False
    packing: bool = True
    lookup_weight: float = 1.0  # answer tokens that look a fact up count this many times (train/sft.py); 1: off
    method: str = "lora"  # full | lora
    context: int = 0  # stretch the model's context to this many tokens with YaRN first; 0 keeps it
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_every: int = 50
    eval_batches: int = 32
    save_every: int = 50
    keep_checkpoints: int = 2
    # the base model's balancing; the bias moves 10x faster than pretraining's default, scaled like the lr: new data
    # shifts what the router sees at once. The chat model's second stage at u = 0.001 had 42-66% utilisation per
    # layer on validation at step 250, the same run at u = 0.01 x lr/peak 56-64%; u = 0.01 x lr/peak was also the
    # best-balanced pretraining run (README, issue 3)
    balance: BalanceConfig = field(default_factory=lambda: BalanceConfig(
        mode="auto", bias_update_rate=0.01, bias_update_schedule="lr"))
    lora: LoraSettings = field(default_factory=LoraSettings)

    SECTIONS: ClassVar[dict[str, type]] = {"balance": BalanceConfig, "lora": LoraSettings}
    REQUIRED: ClassVar[tuple[str, ...]] = ("data",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in FINETUNE_METHODS:
            raise TrainError(f"method must be one of {', '.join(FINETUNE_METHODS)}, got {self.method!r}")
        if self.format not in SFT_FORMATS:
            raise TrainError(f"format must be one of {', '.join(SFT_FORMATS)}, got {self.format!r}")
        if not 0 < self.val_fraction < 1:
            raise TrainError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if (bad := lookup_weight_error(self.lookup_weight)) is not None:
            raise TrainError(bad)
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 0:
            raise TrainError(f"context must be an integer >= 0 (0 keeps the model's), got {self.context!r}")
        if self.checkpoint_format != "whole":  # one process, and a LoRA trainee saves its adapter, not the model
            raise TrainError("fine-tuning writes whole checkpoints: checkpoint_format must be 'whole'")


# ---- command line ------------------------------------------------------------------------------------------

_HELP = {
    "model": "a config.json, a bundled config name, or a checkpoint folder to continue from",
    "data": "a folder written by `seekmoe data prepare`",
    "out": "run folder: metrics.jsonl, plots and checkpoints/ go here; an existing run resumes",
    "steps": "optimizer steps in the whole run",
    "batch_size": "sequences per micro-batch on each rank (the global batch is batch_size x ranks x grad_accum)",
    "seq_len": "tokens per sequence", "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate", "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "linear warm-up steps", "weight_decay": "AdamW weight decay on matrices",
    "beta1": "AdamW beta1", "beta2": "AdamW beta2", "grad_clip": "clip the global gradient norm to this",
    "bf16": "bfloat16 autocast", "log_every": "log training metrics every N steps",
    "device": "where the run trains: auto (the GPU when torch sees one, in one process; else the CPU), cpu, cuda "
              "or cuda:N",
    "eval_every": "validate every N steps", "eval_batches": "validation batches per evaluation",
    "save_every": "checkpoint every N steps", "keep_checkpoints": "keep the newest N checkpoints",
    "seed": "seed of the model init and data order",
    "parallel": "under torchrun: ddp (every rank holds the whole model, gradients all-reduced), fsdp (FSDP2 shards "
                "weights, gradients and optimizer state over the ranks) or expert (each rank holds n_routed_experts "
                "/ ranks experts per MoE layer, tokens sent to them with all_to_all; the rest as ddp); checkpoints "
                "hold whole tensors in every case",
    "checkpoint_format": "whole (rank 0 writes whole tensors, the Hugging Face layout) or sharded (with fsdp: "
                         "torch.distributed.checkpoint, every rank writes its own safetensors shard)",
    "dist_timeout_s": "under torchrun: fail when another rank gives no answer for this many seconds (it died)",
    "mode": "expert balancing: none, aux (V2/V3 auxiliary losses), loss_free (bias), or auto (the model's own: "
            "loss_free when its routing has a bias, noaux_tc, else aux)",
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
    "calibrate_tokens": "loss_free: after the last step, solve the bias over this many training tokens the run did "
                        "not read, layer by layer (default 0: off)",
    "val_data": "validation JSONL file or folder (default: the data folder's *.val.jsonl files, else a val_fraction "
                "share of the conversations)",
    "val_fraction": "share of the conversations held out for validation when there is no validation file",
    "format": "line format: auto (per line), messages (OpenAI chat) or alpaca (instruction/input/output)",
    "skip_bad_lines": "report malformed lines as file:line and skip them (default: stop at the first)",
    "packing": "pack several short conversations into one row of seq_len tokens",
    "lookup_weight": "how many times the loss counts the answer tokens that start a copy of the user's words "
                     "where the word before them is the answer's own (\"I'm Kenji\" -> \"Your name is "
                     "Kenji\"), which a small model guesses; 1: off",
    "context": "stretch the model's context to this many tokens with YaRN before training, as DeepSeek-V2 did "
               "(the rope's slow dimensions interpolated; then train on long sequences); 0 keeps it",
    "method": "full (every weight trains) or lora (peft adapters; the base stays frozen)",
    "r": "LoRA rank", "alpha": "LoRA alpha (the update is scaled by alpha / r)",
    "dropout": "LoRA dropout on the adapted layers' input (0 when routed_experts is a target)",
    "targets": "LoRA targets, comma-separated: attention, shared_experts, dense_mlp, routed_experts",
}
_FINETUNE_HELP = {
    "model": "base model folder, with its tokenizer (default: the bundled model)",
    "data": "fine-tuning data: a JSONL file, or a folder of *.jsonl files (*.val.jsonl ones are validation)",
    "out": "run folder: metrics.jsonl, plots, checkpoints/ and the result (model/ or adapter/); an existing run "
           "resumes",
}


def _add_field(parser, f: dataclasses.Field, flag: str, dest: str, helps: dict[str, str]) -> None:
    kind = f.type.split("|")[0].strip() if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                            help=helps[f.name])
    else:
        parser.add_argument(flag, dest=dest, type={"int": int, "float": float}.get(kind, str), default=None,
                            metavar=kind.upper(), help=helps[f.name])


def add_arguments(parser, cls: type[TrainConfig] = TrainConfig) -> None:
    """`seekmoe train CONFIG [--field value ...]`: every field of the config (and its sections) is a flag."""
    helps = {**_HELP, **(_FINETUNE_HELP if cls is FinetuneConfig else {})}
    parser.add_argument("config", nargs="?", metavar="CONFIG",
                        help="settings file (JSON or TOML); flags override its values")
    for f in dataclasses.fields(cls):
        if f.name not in cls.SECTIONS:
            _add_field(parser, f, f"--{f.name.replace('_', '-')}", f.name, helps)
    for name, kind in cls.SECTIONS.items():
        for f in dataclasses.fields(kind):
            _add_field(parser, f, f"--{name}.{f.name.replace('_', '-')}", f"{name}.{f.name}", helps)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def lookup_weight_error(weight: object) -> str | None:
    """What is wrong with a lookup weight (train/sft.py), or None."""
    if isinstance(weight, int | float) and math.isfinite(weight) and weight >= 1:
        return None
    return f"lookup_weight must be a number >= 1 (1: every target counts once), got {weight!r}"


@dataclass
class MultimodalSettings(RunSettings):
    """`seekmoe train-multimodal`'s settings (seekmoe/train/multimodal.py): RunSettings with its defaults, the sets
    to read, and each stage's steps and peak learning rate."""
    model: str | None = None  # a chat model folder; None: the bundled one
    data: str = "data/mm"
    out: str = "runs/mm"
    batch_size: int = 32
    eval_every: int = 200
    save_every: int = 200
    sets: tuple[str, ...] = SETS
    stage1_steps: int = 400
    stage2_steps: int = 2400
    max_tokens: int = 384  # a grounding picture alone is 256 rows
    lr1: float = 2e-3
    lr2: float = 6e-4
    encoder: dict = field(default_factory=dict)  # MultimodalConfig settings other than the token ids
    text: str | None = None  # fine-tuning chats mixed into stage 2; None: media only
    text_every: int = 4
    text_batch_size: int = 4
    text_seq_len: int = 1024
    lookup_weight: float = 1.0  # the text chats' lookup targets count this many times (train/sft.py); 1: off
    repeat_every: int = 0  # every repeat_every-th stage 2 step a repeat drill (train/repeat_drill.py); 0: none
    device: str = "auto"  # as TrainConfig's: media batches are built on the CPU and moved there
    bf16: bool = False

    COUNTS: ClassVar[tuple[str, ...]] = (*RunSettings.COUNTS, "stage1_steps", "stage2_steps", "max_tokens",
                                         "text_every", "text_batch_size", "text_seq_len")
