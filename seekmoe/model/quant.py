"""int8 "lite" weights: weight-only, symmetric, one float32 scale per output row (scale = max|w| / 127).

Quantized: the attention projections except kv_b_proj (the absorbed MLA path reads its float weight), dense MLPs,
shared and routed experts, and an untied lm_head. Float: the embedding table, routers (Gate), norms, kv_b_proj.

Three matmul paths, all computing x @ (q * s).T:
- float32 rows, any count (decode steps and prompt chunks): seekmoe's own kernel (kernels.py, csrc/gemv.c), which
  widens the int8 weights to float32 as it streams them, four rows of x against four weight rows at a time: float32
  activations, float32 accumulation, no rounding but the sums'. It is also the fastest of the three for a prompt
  (256 rows of `small`'s shapes: 165-220 GFLOP/s on two threads, torch's int8 kernel 75-170, its float32 GEMM
  140-160). Where it cannot be built or used, the next paths take these rows.
- few rows (<= KERNEL_MAX_ROWS) that seekmoe's kernel does not take (bfloat16 activations, or no kernels): torch's
  int8-weight kernel, which streams the int8 weight once. On the CPU it is fast only for bfloat16 activations
  (float32 ones take a scalar loop, 5-40x slower), so x and the output are rounded to bfloat16 (~0.4% relative,
  under the int8 rounding itself); the float32 scale is applied afterwards so it is not rounded. Its AVX-512 loop
  reads 16 inputs at a time with aligned loads, so it is only used when the input width is a multiple of 16 and
  the buffers are aligned: otherwise it reads past the row.
- many rows that seekmoe's kernel does not take: dequantize the weight to x's dtype and run a float matmul; exact
  against the dequantized reference, and faster than torch's kernel once the dequantization is shared by enough
  rows.

Checkpoints keep the Hugging Face names: `<module>.weight` is the int8 tensor, `<module>.weight_scale` its scales;
routed experts are stored one tensor per expert (`model.layers.{i}.mlp.experts.{e}.gate_proj.weight`).

Shape legend as in model.py (N tokens, K experts per token, E experts, D model width, F expert width); a plain
linear maps I input features to O output features.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from seekmoe.model import kernels, weights
from seekmoe.model.config import ModelConfig
from seekmoe.model.model import CausalLM, Gate, RotaryEmbedding, RoutedExperts, few_tokens
from seekmoe.model.weights import CheckpointError, hf_tensors

QUANT_METHOD = "seekmoe-int8"
# fnmatch patterns over module names: what stays float
FLOAT_MODULES = ["model.embed_tokens", "model.layers.*.self_attn.kv_b_proj", "model.layers.*.mlp.gate", "*norm"]
# the bf16 kernel's cost grows with the rows; past ~32 the shared dequantization wins (measured on an AVX-512 EPYC)
KERNEL_MAX_ROWS = 32
# without AVX2/AVX-512 torch runs the kernel's scalar loop, slower than dequantizing
HAS_INT8_KERNEL = hasattr(torch, "_weight_int8pack_mm") and torch.backends.cpu.get_cpu_capability() in (
    "AVX2", "AVX512")
_UNIT: dict[int, torch.Tensor] = {}  # bfloat16 ones per output width, the kernel's scales
_EXPERT_SCALE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)_scale$")
_EXPERT_SCALE_KEY = re.compile(
    r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight_scale$")


# ---- kernels ---------------------------------------------------------------------------------------------------

def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim: (q int8, scale float32) with w ~= q * scale[..., None]."""
    w = w.detach().float()
    scale = w.abs().amax(dim=-1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return torch.round(w / safe.unsqueeze(-1)).clamp(-127, 127).to(torch.int8), scale


def kernel_fits(x_NI: torch.Tensor, q_OI: torch.Tensor) -> bool:
    return (HAS_INT8_KERNEL and x_NI.device.type == "cpu" and 0 < x_NI.shape[0] <= KERNEL_MAX_ROWS
            and q_OI.shape[1] % 16 == 0 and q_OI.is_contiguous() and q_OI.data_ptr() % 16 == 0)


def int8_linear(x: torch.Tensor, q_OI: torch.Tensor, scale_O: torch.Tensor) -> torch.Tensor:
    """x (..., I) @ (q * scale).T -> (..., O) in x's dtype. Inference only: the kernel path has no gradient."""
    shape = x.shape
    x_NI = x if x.dim() == 2 else x.reshape(-1, shape[-1])  # (N, I)
    if (x.dtype == torch.float32 and x_NI.shape[0] > 0 and q_OI.is_contiguous()
            and (gemv := kernels.int8_gemv()) is not None):
        out = gemv(x_NI.contiguous(), q_OI, scale_O.float().contiguous())
        return out if x.dim() == 2 else out.view(*shape[:-1], q_OI.shape[0])
    if kernel_fits(x_NI, q_OI):
        xb = x_NI.to(torch.bfloat16).contiguous()
        if xb.data_ptr() % 64:
            xb = xb.clone()  # the kernel's aligned loads need an aligned row start
        unit = _UNIT.get(q_OI.shape[0])
        if unit is None:  # the scale is applied in float32 below: the kernel gets ones
            unit = _UNIT[q_OI.shape[0]] = torch.ones(q_OI.shape[0], dtype=torch.bfloat16)
        out = torch.mul(torch._weight_int8pack_mm(xb, q_OI, unit), scale_O.float()).to(x.dtype)  # float32 product
    else:
        out = F.linear(x_NI, (q_OI * scale_O.float()[:, None]).to(x.dtype))
    return out.view(*shape[:-1], q_OI.shape[0])  # (..., O)


class Int8Linear(nn.Module):
    """A bias-free nn.Linear with an int8 weight (O, I) and float32 per-row scales (O,)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ValueError("Int8Linear has no bias; got an nn.Linear with one")
        m = cls(linear.in_features, linear.out_features)
        m.weight, m.weight_scale = quantize_rows(linear.weight)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8RoutedExperts(nn.Module):
    """RoutedExperts with int8 stacked weights; runs only the experts some token chose, one at a time."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        for name, shape in (("gate_proj", (inter_dim, dim)), ("up_proj", (inter_dim, dim)),
                            ("down_proj", (dim, inter_dim))):
            # (E, F, D), (E, F, D), (E, D, F) and their scales (E, F), (E, F), (E, D)
            self.register_buffer(name, torch.empty(n_experts, *shape, dtype=torch.int8))
            self.register_buffer(f"{name}_scale", torch.empty(n_experts, shape[0], dtype=torch.float32))
        self.register_buffer("gate_up", None, persistent=False)  # (E, 2F, D) once fuse_gate_up() has run
        self.register_buffer("gate_up_scale", None, persistent=False)  # (E, 2F)

    @classmethod
    @torch.no_grad()
    def from_experts(cls, experts: RoutedExperts) -> Int8RoutedExperts:
        n, inter, dim = experts.gate_proj.shape
        m = cls(n, dim, inter).to(experts.gate_proj.device)
        for name in ("gate_proj", "up_proj", "down_proj"):
            q, s = getattr(m, name), getattr(m, f"{name}_scale")
            for e, w in enumerate(getattr(experts, name)):  # one expert at a time: no float copy of all of them
                q[e], s[e] = quantize_rows(w)
        return m

    @torch.no_grad()
    def fuse_gate_up(self) -> None:
        """As RoutedExperts.fuse_gate_up: gate and up rows (and their scales) side by side, one kernel call for both."""
        if self.gate_up is None:
            f = self.gate_proj.shape[1]
            self.gate_up = torch.cat([self.gate_proj, self.up_proj], dim=1)  # (E, 2F, D)
            self.gate_up_scale = torch.cat([self.gate_proj_scale, self.up_proj_scale], dim=1)  # (E, 2F)
            self.gate_proj, self.up_proj = self.gate_up[:, :f], self.gate_up[:, f:]
            self.gate_proj_scale, self.up_proj_scale = self.gate_up_scale[:, :f], self.gate_up_scale[:, f:]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e's SwiGLU over rows x (M, D) -> (M, D)."""
        if self.gate_up is not None:
            g, u = int8_linear(x, self.gate_up[e], self.gate_up_scale[e]).chunk(2, dim=-1)  # (M, F) each
        else:
            g = int8_linear(x, self.gate_proj[e], self.gate_proj_scale[e])
            u = int8_linear(x, self.up_proj[e], self.up_proj_scale[e])
        return int8_linear(F.silu(g) * u, self.down_proj[e], self.down_proj_scale[e])

    def one_token(self, x_D: torch.Tensor, idx_K: torch.Tensor, weight_K: torch.Tensor) -> torch.Tensor | None:
        """One float32 token through its chosen experts in one kernel call (kernels.experts), or None where
        that kernel is not available or the layout is not the fused one."""
        fn = kernels.experts() if self.gate_up is not None and x_D.dtype == torch.float32 else None
        if fn is None:
            return None
        return fn(x_D, self.gate_up, self.gate_up_scale, self.down_proj, self.down_proj_scale, idx_K,
                  weight_K.float())

    def grouped(self, x_PD: torch.Tensor, used_U: torch.Tensor, start_U1: torch.Tensor,
                weight_P: torch.Tensor) -> torch.Tensor | None:
        """Rows sorted by expert through their experts in one kernel call (kernels.experts_grouped; see
        RoutedExperts.grouped), or None where that kernel is not available or the layout is not the fused one."""
        fn = kernels.experts_grouped() if self.gate_up is not None and x_PD.dtype == torch.float32 else None
        if fn is None:
            return None
        return fn(x_PD.contiguous(), self.gate_up, self.gate_up_scale, self.down_proj, self.down_proj_scale, used_U,
                  start_U1, weight_P)

    def forward(
        self, x_ND: torch.Tensor, idx_NK: torch.Tensor, weight_NK: torch.Tensor, kept_NK: torch.Tensor | None = None
    ) -> torch.Tensor:
        return few_tokens(self, x_ND, idx_NK, weight_NK, kept_NK)  # only the experts in use, at any token count


# ---- converting a model -----------------------------------------------------------------------------------------

def quantize_int8(model: CausalLM) -> CausalLM:
    """Replace the quantizable modules with int8 ones, in place; returns the model."""
    quant = model.config.extra.get("quantization_config")
    if quant or any(isinstance(m, (Int8Linear, Int8RoutedExperts)) for m in model.modules()):
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ValueError(f"the model is already quantized ({method or QUANT_METHOD}); quantize_int8 needs the float "
                         "model")
    return _convert(model, Int8Linear.from_linear, Int8RoutedExperts.from_experts)


def _convert(model: CausalLM, linear: Callable[[nn.Linear], nn.Module],
             experts: Callable[[RoutedExperts], nn.Module]) -> CausalLM:
    tied = model.config.tie_word_embeddings  # a tied head shares the float embedding table: an int8 copy costs more
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RoutedExperts):
                setattr(parent, name, experts(child))
            elif isinstance(child, nn.Linear) and name != "kv_b_proj" and not (tied and child is model.lm_head):
                setattr(parent, name, linear(child))
    model.config.extra["quantization_config"] = {
        "quant_method": QUANT_METHOD, "bits": 8, "scheme": "weight-only, symmetric, per output channel",
        "modules_not_converted": FLOAT_MODULES + (["lm_head"] if tied else []),
    }
    return model


def _hf_tensors(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """hf_tensors, plus the routed experts' scales split per expert as `...experts.{e}.<proj>.weight_scale`."""
    for name, tensor in hf_tensors(model):
        m = _EXPERT_SCALE.match(name)
        if m:
            for e in range(tensor.shape[0]):
                yield f"{m[1]}.{e}.{m[2]}.weight_scale", tensor[e]
        else:
            yield name, tensor


# ---- saving and loading ------------------------------------------------------------------------------------------

def save_quantized(model: CausalLM, path: str | os.PathLike) -> None:
    """Write config.json (with quantization_config) and one model.safetensors; all or nothing replaces the old."""
    quant = model.config.extra.get("quantization_config") if isinstance(model, CausalLM) else None
    if not isinstance(quant, dict) or quant.get("quant_method") != QUANT_METHOD:
        raise CheckpointError("save_quantized needs a CausalLM converted by quantize_int8")
    path = weights.as_path(path)
    dtype = weights.dtype_name(model.model.embed_tokens.weight.dtype)
    tensors = {}
    for name, tensor in _hf_tensors(model):
        if tensor.is_meta:
            raise CheckpointError(f"tensor {name} is on the meta device: it has no values to save")
        # scales stay float32 even if the model was cast: that is what the loader expects
        tensors[name] = (tensor.float() if name.endswith(".weight_scale") else tensor).detach().contiguous()
    config = ModelConfig.from_dict({**model.config.to_dict(), "torch_dtype": dtype})
    weights.write_weights(path, [tensors], config)


def load_int8(path: Path, cfg: ModelConfig, dtype: torch.dtype) -> CausalLM:
    """The seekmoe-int8 half of checkpoint.load_model: check every header, then build and fill the model."""
    quant = cfg.extra["quantization_config"]
    if quant.get("bits", 8) != 8:
        raise CheckpointError(f"{path / 'config.json'}: {QUANT_METHOD} stores 8-bit weights, but "
                              f"quantization_config says bits={quant.get('bits')!r}")
    found = weights.read_headers(path)
    weights.check_layers(found, cfg, path)
    with torch.device("meta"):
        model = CausalLM(cfg).to(dtype)
        for module in model.modules():
            if isinstance(module, Gate):
                module.float()  # the router stays float32
        _convert(model, lambda m: Int8Linear(m.in_features, m.out_features),
                 lambda m: Int8RoutedExperts(m.gate_proj.shape[0], m.gate_proj.shape[2], m.gate_proj.shape[1]))
    names = _check_headers(found, model, path)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.model.rotary_emb = RotaryEmbedding(cfg)
    state = model.state_dict(keep_vars=True)
    # weights.batches sizes tensors as floats; counting int8 ones as F32 only makes each mapping smaller
    sized = {n: (f, shape, "F32" if kind == "I8" else kind) for n, (f, shape, kind) in found.items()}
    with torch.no_grad():
        for file, batch in weights.batches(names, sized):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in batch:
                    m = _EXPERT_SCALE_KEY.match(name)
                    target = state[f"{m[1]}.{m[3]}_scale"][int(m[2])] if m else weights.target(state, name)
                    target.copy_(f.get_tensor(name))
    return model


def _check_headers(found: weights.Headers, model: CausalLM, path: Path) -> list[str]:
    """Every tensor the quantized model needs: present, the right shape, int8 / float32 scales / float."""
    names = []
    for name, tensor in _hf_tensors(model):
        file, dtype = weights.find_tensor(found, name, tuple(tensor.shape), path)
        if tensor.dtype == torch.int8:
            want, ok = "I8 (int8)", dtype == "I8"
        elif name.endswith(".weight_scale"):
            want, ok = "F32", dtype == "F32"
        else:
            want, ok = "a float dtype (F64, F32, F16, BF16)", dtype in weights.FLOAT_BYTES
        if not ok:
            raise CheckpointError(f"{file}: tensor {name} is {dtype}; {QUANT_METHOD} expects {want}")
        names.append(name)
    weights.check_unexpected(found, names, model.config, 0)
    return names


__all__ = ["Int8Linear", "Int8RoutedExperts", "int8_linear", "load_int8", "quantize_int8", "quantize_rows",
           "save_quantized"]
