"""Weights laid out for decoding: fused projections and the faster of the two storage orders. Values never change.

A decode step multiplies one or a few rows by every weight it touches, so it is bound by how fast each matrix
streams from memory, and by the count of calls for the small ones. Two things help, both measured on this 2-core
AVX2 machine, one thread, matrices read from DRAM (bench/decode.py's `small` shapes):

- Storage order. y = W x for W (O, I) can stream W row by row (dot products, W stored (O, I)) or column by
  column (scaled sums of columns, W stored transposed as (I, O)). The first is fast when rows are long, the second
  when the output is wide: (1024, 352) streams at 7.9 GB/s one way and 13.1 the other, (32000, 1024) at 14.5 and
  16.6, (288, 1024) at 12.7 and 7.3. `laid_out` picks by shape; the module keeps its (O, I) view either way, so
  every other use (prompt chunks, training code) sees the same tensor.
- Fusion. Projections that read the same input become one call over their stacked rows: MLA's query (or
  low-rank query) projection with kv_a_proj_with_mqa; each SwiGLU's gate and up. The modules' weights become
  views into the stacked tensor, so nothing is stored twice.

int8 weights keep their (O, I) order (torch's int8 kernel needs it) and are only fused.

Shape legend: O output features, I input features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekmoe.engine import kernels
from seekmoe.engine.quant import Int8Linear, Int8RoutedExperts, int8_linear
from seekmoe.model import MLA, MLP, CausalLM, MoE, RoutedExperts

_FIRST, _WHOLE = torch.zeros(1, dtype=torch.long), torch.ones(1)  # expert 0 with weight 1: a plain SwiGLU


def columns_first(out_features: int, in_features: int) -> bool:
    """Whether a matrix streams faster stored transposed (I, O): outputs wider than inputs, or wide anyway."""
    return out_features > in_features or out_features >= 768


def laid_out(w_OI: torch.Tensor) -> torch.Tensor:
    """w (O, I), values unchanged, stored in the order that streams faster (a transposed view when (I, O))."""
    if columns_first(*w_OI.shape):
        return w_OI.t().contiguous().t()
    return w_OI.contiguous()


class Proj:
    """x (..., I) -> (..., O) by one weight: float (any storage order) or int8 with per-row scales."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor | None = None):
        self.weight, self.scale = weight, scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) if self.scale is None else int8_linear(x, self.weight, self.scale)


@torch.no_grad()
def fuse(*modules: nn.Module) -> Proj:
    """One projection over the stacked rows of bias-free nn.Linear or Int8Linear modules that read the same input;
    each module's weight (and scale) becomes a view of its rows."""
    if all(type(m) is nn.Linear and m.bias is None for m in modules):
        stacked = laid_out(torch.cat([m.weight for m in modules]))  # (sum of O, I)
        start = 0
        for m in modules:
            m.weight.data = stacked[start:start + m.out_features]
            start += m.out_features
        return Proj(stacked)
    if all(isinstance(m, Int8Linear) for m in modules):
        q, scale = torch.cat([m.weight for m in modules]), torch.cat([m.weight_scale for m in modules])
        start = 0
        for m in modules:
            m.weight, m.weight_scale = q[start:start + m.out_features], scale[start:start + m.out_features]
            start += m.out_features
        return Proj(q, scale)
    raise TypeError(f"cannot fuse {', '.join(type(m).__name__ for m in modules)}: bias-free nn.Linear or Int8Linear "
                    "only, all of one kind")


@torch.no_grad()
def relayout(linear: nn.Module) -> None:
    """A float nn.Linear's weight in its faster order, in place (int8 and other modules are left as they are)."""
    if type(linear) is nn.Linear:
        linear.weight.data = laid_out(linear.weight)


@torch.no_grad()
def relayout_experts(experts: nn.Module) -> None:
    """Gate and up fused per expert; a float down projection (E, D, F) stored per expert in its faster order."""
    experts.fuse_gate_up()
    if isinstance(experts, RoutedExperts) and columns_first(*experts.down_proj.shape[1:]):
        experts.down_proj.data = experts.down_proj.transpose(1, 2).contiguous().transpose(1, 2)


class DecodeLayer:
    """One layer's fused projections: the attention input and, for a dense MLP or shared experts, gate + up."""

    def __init__(self, attn: MLA, mlp: nn.Module):
        first = attn.q_proj if attn.q_lora_rank is None else attn.q_a_proj
        self.attn_in = fuse(first, attn.kv_a_proj_with_mqa)  # h -> [q or q_a | c_KV | k_rope]
        self.q_width = first.out_features
        relayout(attn.o_proj)
        if attn.q_lora_rank is not None:
            relayout(attn.q_b_proj)
        swiglu = mlp.shared_experts if isinstance(mlp, MoE) else mlp
        self.gate_up = None
        if isinstance(swiglu, MLP):
            self.gate_up = fuse(swiglu.gate_proj, swiglu.up_proj)
            relayout(swiglu.down_proj)
        if isinstance(mlp, MoE) and isinstance(mlp.experts, (RoutedExperts, Int8RoutedExperts)):
            relayout_experts(mlp.experts)

    def swiglu(self, mlp: MLP, h: torch.Tensor) -> torch.Tensor:
        """The dense MLP or the shared experts over h (N, D), through the fused gate and up; one int8 token goes
        through the int8 experts kernel as a single expert (one call instead of four)."""
        if (self.gate_up.scale is not None and h.shape[0] == 1 and h.dtype == torch.float32
                and isinstance(mlp.down_proj, Int8Linear) and (fn := kernels.experts()) is not None):
            down = mlp.down_proj
            return fn(h[0], self.gate_up.weight[None], self.gate_up.scale[None], down.weight[None],
                      down.weight_scale[None], _FIRST, _WHOLE)[None]
        g, u = self.gate_up(h).chunk(2, dim=-1)
        return mlp.down_proj(F.silu(g) * u)


def prepare(model: CausalLM) -> list[DecodeLayer]:
    """Lay out every layer of `model` for decoding, in place (values unchanged); the per-layer fused projections."""
    layers = [DecodeLayer(layer.self_attn, layer.mlp) for layer in model.model.layers]
    if model.lm_head.weight is not model.model.embed_tokens.weight:  # a tied head is the embedding table: left alone
        relayout(model.lm_head)
    return layers
