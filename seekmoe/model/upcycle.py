"""Sparse upcycling: a trained MoE model grown to twice its routed experts, its function kept.

Every routed expert gets a twin, and every expert group a twin group that holds the twins in the same order, so
the router's choice doubles exactly: the kept groups are the old kept groups and their twins (the twin group
scores the same, under DeepSeek-V2's best expert as under V3's best two), and the top 2K experts are the old top K
and their twins. Each twin pair shares its old weight: normalised top-K weights are renormalised over twice the
experts, a softmax spreads over twice the logits; only unnormalised sigmoid weights, which would count twice, get
half the routed scaling factor. So the grown model computes what the old one did (float sums aside) with twice
the routed parameters and twice the routed work per token. Training then has to tell the twins apart: twins
chosen together for every token would get the same gradients and stay twins, so `noise` perturbs the twins' router
rows and expert weights (that fraction of each weight's standard deviation): near a tie one twin is chosen without
the other, and the twins see different tokens. They drift apart slowly: in a 500-step fine-tune of the bundled chat
model they did not measurably (README, the chat model's "Not there yet"). (Komatsuzaki et al., 2022, "Sparse
Upcycling", copy the experts under a new router; here the router is copied too, so little is forgotten on the
first step.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch

from seekmoe.files import write_folder
from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.config import ConfigError, ModelConfig
from seekmoe.model.model import CausalLM, MoE

RECORD = "upcycle.json"  # where an upcycled folder came from
# the language model's own files, which save_model writes anew; everything else in a model folder (tokenizer,
# generation_config.json, multimodal.safetensors) is copied as it is
LM_FILES = re.compile(r"config\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")


def upcycled_config(cfg: ModelConfig) -> ModelConfig:
    """The config with twice the routed experts, groups, kept groups and experts per token."""
    if not cfg.is_moe:
        raise ConfigError("a dense model has no routed experts to upcycle (n_routed_experts is 0 or null)")
    groups = cfg.n_group or 1
    scale = cfg.routed_scaling_factor
    if cfg.scoring_func == "sigmoid" and not cfg.norm_topk_prob:
        scale /= 2  # each twin carries its expert's full sigmoid weight
    return dataclasses.replace(
        cfg, n_routed_experts=2 * cfg.n_routed_experts, num_experts_per_tok=2 * cfg.num_experts_per_tok,
        # one group stays one (the twins sit beside their experts in it)
        n_group=cfg.n_group if groups == 1 else 2 * groups,
        topk_group=cfg.topk_group if groups == 1 else 2 * (cfg.topk_group or 1),
        routed_scaling_factor=scale, extra=dict(cfg.extra))


def _twinned(t_E: torch.Tensor, groups: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """(E, ...) -> (2E, ...): each group of E / groups rows followed by its twin group (noise added to the twins)."""
    old = t_E.reshape(groups, -1, *t_E.shape[1:])  # (G, E/G, ...)
    twin = old.clone()
    if noise:
        std = float(t_E.float().std()) if t_E.numel() > 1 else 0.0
        twin += noise * std * torch.randn(twin.shape, generator=generator, dtype=torch.float32).to(twin.dtype)
    return torch.stack([old, twin], dim=1).reshape(2 * t_E.shape[0], *t_E.shape[1:])  # (G, 2, E/G, ...) -> (2E, ...)


@torch.no_grad()
def upcycle(model: CausalLM, noise: float = 0.0, seed: int = 0) -> CausalLM:
    """A new model with twice the routed experts of `model` (left as it was), computing the same function when
    noise is 0; noise perturbs the twins' router rows and expert weights by that fraction of each weight's standard
    deviation."""
    if not (isinstance(noise, int | float) and 0 <= noise < 1):
        raise ValueError(f"noise must be a number in [0, 1), got {noise!r}")
    cfg = model.config
    new = CausalLM(upcycled_config(cfg)).to(next(model.parameters()).dtype)
    groups = cfg.n_group or 1
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for prefix, module in model.named_modules():
        if not isinstance(module, MoE):
            continue
        bias = f"{prefix}.gate.e_score_correction_bias"
        if bias in state:  # balancing state, copied exactly: a twin starts as loaded as its expert
            state[bias] = _twinned(state[bias], groups, 0.0, generator)
        for key in ("gate.weight", "experts.gate_proj", "experts.up_proj", "experts.down_proj"):
            state[f"{prefix}.{key}"] = _twinned(state[f"{prefix}.{key}"], groups, noise, generator)
    new.load_state_dict(state)
    return new


def upcycle_folder(src: str | Path, dst: str | Path, noise: float = 0.0, seed: int = 0) -> Path:
    """The model folder src upcycled into dst (all or nothing), in float32, its other files copied and RECORD
    saying where it came from (what a model card's list of stages reads)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists: upcycling writes a new model folder")
    model = load_model(src)
    model_experts, grown = model.config.n_routed_experts, upcycle(model, noise, seed)

    def write(tmp: Path) -> None:
        save_model(grown, tmp)
        for f in sorted(src.iterdir()):
            if f.is_file() and not LM_FILES.fullmatch(f.name):
                shutil.copy(f, tmp / f.name)
        record = {"model": str(src), "noise": noise, "seed": seed,
                  "n_routed_experts": [model_experts, grown.config.n_routed_experts]}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    return write_folder(dst, write)
