"""LoRA adapters through peft: which weights a target name covers, and saving, loading and merging adapters.

Attention projections, shared experts and dense MLPs are nn.Linear layers and get peft's LoRA Linear. Routed experts
are stacked (E, F, D) parameters, which peft adapts with its ParamWrapper: a rank-r update per expert, applied to the
stacked weight, so the grouped-GEMM path runs unchanged.

An adapter folder is what peft's `save_pretrained` writes (adapter_config.json, adapter_model.safetensors), plus
routing_bias.safetensors when the model's routing bias moved during fine-tuning (loss-free balancing keeps running
under LoRA: the bias is not a weight of the adapter, but the routing it trained with needs it).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from seekmoe.errors import SeekmoeError
from seekmoe.model.config import LORA_TARGETS
from seekmoe.model.model import CausalLM
from seekmoe.model.weights import save_tensors

LINEAR_TARGETS = {
    "attention": r"self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)",
    "shared_experts": r"mlp\.shared_experts\.(gate_proj|up_proj|down_proj)",
    "dense_mlp": r"mlp\.(gate_proj|up_proj|down_proj)",
}
ROUTED_EXPERTS = ("experts.gate_proj", "experts.up_proj", "experts.down_proj")
BIAS_FILE = "routing_bias.safetensors"
BIAS_SUFFIX = "e_score_correction_bias"


class AdapterError(SeekmoeError, ValueError):
    """An adapter that cannot be made, read or applied; the message names the file or setting."""


def parse_targets(targets: str | list[str]) -> list[str]:
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    names = [t for t in names if t]
    unknown = [t for t in names if t not in LORA_TARGETS]
    if unknown or not names:
        raise AdapterError(f"LoRA targets must be a comma-separated list of {', '.join(LORA_TARGETS)}, got {targets!r}")
    return names


def lora_config(targets: str | list[str], r: int = 8, alpha: float = 16, dropout: float = 0.0):
    from peft import LoraConfig

    names = parse_targets(targets)
    if r < 1:
        raise AdapterError(f"LoRA rank must be >= 1, got {r}")
    if not 0 <= dropout < 1:
        raise AdapterError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if dropout and "routed_experts" in names:
        raise AdapterError("LoRA dropout must be 0 when the targets include routed_experts: peft applies the "
                           "update to the stacked expert weight, where dropout of the input cannot be factored in")
    linear = [LINEAR_TARGETS[n] for n in names if n in LINEAR_TARGETS]
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
        # a regex is matched against the whole module name
        target_modules=rf".*\.({'|'.join(linear)})" if linear else [],
        target_parameters=list(ROUTED_EXPERTS) if "routed_experts" in names else None,
    )


def add_adapter(model: CausalLM, config):
    """The model with fresh LoRA layers (B = 0: it computes what the base computes); only they require grad."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft maps transformers-v4 MoE names onto v5's fused ones for any model whose config has a model_type;
        # ours has no fused weights, so its patterns match nothing, which is all the warning says
        warnings.filterwarnings("ignore", message=".*_pattern keys did not match", category=RuntimeWarning)
        return get_peft_model(model, config)


def routing_biases(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The routing bias of every MoE layer, under the base model's own names."""
    return {_base_name(name): buf.detach().clone().contiguous() for name, buf in model.named_buffers()
            if name.endswith(BIAS_SUFFIX)}


def _base_name(name: str) -> str:
    return name.removeprefix("base_model.model.")


def save_adapter(peft_model, folder: Path) -> None:
    """peft's adapter files (safetensors, never pickles) and the routing bias beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    biases = routing_biases(peft_model)
    if biases:
        save_tensors(biases, folder / BIAS_FILE)


def load_adapter_weights(peft_model, folder: Path) -> None:
    """Load an adapter saved by save_adapter into a model made by add_adapter with the same config."""
    from peft import set_peft_model_state_dict

    state = _read(folder / "adapter_model.safetensors")
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise AdapterError(f"{folder}: the adapter lacks {len(missing)} LoRA weights (first {missing[0]})")
    _load_biases(peft_model, folder)


def apply_adapter(model: CausalLM, folder: str | Path) -> CausalLM:
    """The base model with the adapter merged into its weights: what `serve --adapter` and `merge` run."""
    from peft import LoraConfig

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise AdapterError(f"{folder}: no adapter_config.json here (expected a folder written by seekmoe finetune "
                           "with method lora, or by peft's save_pretrained)")
    try:
        raw = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
            raise ValueError(f"peft_type must be LORA, got {raw.get('peft_type') if isinstance(raw, dict) else raw!r}")
        config = LoraConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise AdapterError(f"{folder / 'adapter_config.json'}: not a LoRA adapter config ({e})") from None
    config.inference_mode = False
    try:
        peft_model = add_adapter(model, config)
    except (ValueError, KeyError) as e:
        raise AdapterError(f"{folder}: the adapter does not fit this model ({e})") from None
    try:
        load_adapter_weights(peft_model, folder)
    except RuntimeError as e:  # a shape that does not match the base model
        raise AdapterError(f"{folder}: the adapter does not fit this model ({_first_line(e)})") from None
    return merge(peft_model)


def merge(peft_model) -> CausalLM:
    """Fold every LoRA update into its base weight and return the plain model."""
    with torch.no_grad():
        return peft_model.merge_and_unload()


def _load_biases(model: torch.nn.Module, folder: Path) -> None:
    path = folder / BIAS_FILE
    if not path.is_file():
        return
    biases = _read(path)
    own = {_base_name(n): b for n, b in model.named_buffers() if n.endswith(BIAS_SUFFIX)}
    for name, value in biases.items():
        if name not in own or own[name].shape != value.shape:
            raise AdapterError(f"{path}: {name} {tuple(value.shape)} does not match the model")
        with torch.no_grad():
            own[name].copy_(value)


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise AdapterError(f"{path}: cannot read ({e})") from None


def _first_line(e: Exception) -> str:
    return re.sub(r"\s+", " ", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:300]


__all__ = ["AdapterError", "add_adapter", "apply_adapter", "lora_config", "merge", "save_adapter"]
