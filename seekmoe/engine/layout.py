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

With seekmoe's own kernels (model/kernels.py), which stream every matrix fastest row by row, plain matrices are stored
(O, I) and SwiGLU down projections transposed, the order the experts kernel adds them in; `columns_first` only
decides when the kernels cannot be used. int8 and int4 weights keep their (O, I) order and are only fused.

Shape legend: O output features, I input features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekmoe.model import kernels
from seekmoe.model.int4 import Int4Linear, Int4RoutedExperts, int4_linear
from seekmoe.model.model import MLA, MLP, CausalLM, MoE, RoutedExperts
from seekmoe.model.quant import Int8Linear, Int8RoutedExperts, int8_linear

_FIRST, _WHOLE = torch.zeros(1, dtype=torch.long), torch.ones(1)  # expert 0 with weight 1: a plain SwiGLU


def columns_first(out_features: int, in_features: int) -> bool:
    """Whether a matrix streams faster through torch stored transposed (I, O): outputs wider than inputs, or wide
    anyway. With seekmoe's kernels every plain matrix is stored row by row (they stream rows fastest)."""
    if kernels.available():
        return False
    return out_features > in_features or out_features >= 768


def laid_out(w_OI: torch.Tensor) -> torch.Tensor:
    """w (O, I), values unchanged, stored in the order that streams faster (a transposed view when (I, O))."""
    if columns_first(*w_OI.shape):
        return w_OI.t().contiguous().t()
    return w_OI.contiguous()


def down_laid_out(w_DF: torch.Tensor) -> torch.Tensor:
    """A SwiGLU's down projection (D, F), or a stack of them (E, D, F): stored transposed whenever the experts kernel
    runs it (it adds scaled rows of (F, D)) or torch streams it faster that way."""
    if kernels.available() or columns_first(*w_DF.shape[-2:]):
        return w_DF.transpose(-1, -2).contiguous().transpose(-1, -2)
    return w_DF.contiguous()


class Proj:
    """x (..., I) -> (..., O) by one weight: float (any storage order), int8 with per-row scales, or int4 (uint8
    packed, model/int4.py) with float16 group scales."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor | None = None):
        self.weight, self.scale = weight, scale
        self.int4 = weight.dtype == torch.uint8
        self.gemv = kernels.f32_gemv() if scale is None and weight.dtype == torch.float32 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.int4:
            return int4_linear(x, self.weight, self.scale)
        if self.scale is not None:
            return int8_linear(x, self.weight, self.scale)
        if self.gemv is not None and x.dim() == 2 and x.shape[0] <= kernels.MAX_ROWS and x.is_contiguous():
            return self.gemv(x, self.weight)  # a few tokens: seekmoe's kernel
        return F.linear(x, self.weight)


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
    if all(isinstance(m, Int8Linear) for m in modules) or all(isinstance(m, Int4Linear) for m in modules):
        # rows stacked: int8 (O, I) with scales (O,), or int4 (O, I / 2) with (O, I / G); a copy (the attention's
        # and dense MLPs' few matrices), the mapped originals then left for the kernel to drop
        q, scale = torch.cat([m.weight for m in modules]), torch.cat([m.weight_scale for m in modules])
        start = 0
        for m in modules:
            m.weight, m.weight_scale = q[start:start + m.out_features], scale[start:start + m.out_features]
            start += m.out_features
        return Proj(q, scale)
    raise TypeError(f"cannot fuse {', '.join(type(m).__name__ for m in modules)}: bias-free nn.Linear, Int8Linear or "
                    "Int4Linear only, all of one kind")


@torch.no_grad()
def relayout(linear: nn.Module, down: bool = False) -> Proj:
    """A float nn.Linear's weight in its faster order (down: as a SwiGLU's down projection), in place; the module
    as a Proj. int8 and int4 modules keep their order."""
    if type(linear) is nn.Linear:
        linear.weight.data = down_laid_out(linear.weight) if down else laid_out(linear.weight)
        return Proj(linear.weight)
    if isinstance(linear, (Int8Linear, Int4Linear)):
        return Proj(linear.weight, linear.weight_scale)
    raise TypeError(f"cannot lay out {type(linear).__name__}: nn.Linear, Int8Linear or Int4Linear only")


@torch.no_grad()
def relayout_experts(experts: nn.Module) -> None:
    """Gate and up fused per expert; a float down projection (E, D, F) stored in its faster order."""
    experts.fuse_gate_up()
    if isinstance(experts, RoutedExperts):
        experts.down_proj.data = down_laid_out(experts.down_proj)


class DecodeLayer:
    """One layer's projections for the runner: the fused attention input, the attention output (and low-rank query
    up-projection), and, for a dense MLP or shared experts, the fused gate + up."""

    def __init__(self, attn: MLA, mlp: nn.Module):
        first = attn.q_proj if attn.q_lora_rank is None else attn.q_a_proj
        self.attn_in = fuse(first, attn.kv_a_proj_with_mqa)  # h -> [q or q_a | c_KV | k_rope]
        self.q_width = first.out_features
        self.o_proj = relayout(attn.o_proj)
        self.q_b_proj = relayout(attn.q_b_proj) if attn.q_lora_rank is not None else None
        swiglu = mlp.shared_experts if isinstance(mlp, MoE) else mlp
        self.gate_up = self.down = None
        if isinstance(swiglu, MLP):
            self.gate_up = fuse(swiglu.gate_proj, swiglu.up_proj)
            self.down = relayout(swiglu.down_proj, down=True)
        if isinstance(mlp, MoE) and isinstance(mlp.experts, (RoutedExperts, Int8RoutedExperts, Int4RoutedExperts)):
            relayout_experts(mlp.experts)

    def swiglu(self, h: torch.Tensor) -> torch.Tensor:
        """The dense MLP or the shared experts over h (N, D), through the fused gate and up; one float32 token goes
        through the experts kernel as a single expert (one call instead of four)."""
        if h.shape[0] == 1 and h.dtype == torch.float32 and (fn := kernels.experts()) is not None:
            g, d = self.gate_up, self.down
            if g.int4 and d.int4 and (fn4 := kernels.int4_experts()) is not None:
                return fn4(h[0], g.weight[None], g.scale[None], d.weight[None], d.scale[None], _FIRST, _WHOLE)[None]
            if g.scale is not None and d.scale is not None:
                return fn(h[0], g.weight[None], g.scale[None], d.weight[None], d.scale[None], _FIRST, _WHOLE)[None]
            if (g.scale is None and d.scale is None and g.weight.is_contiguous()
                    and d.weight.t().is_contiguous()):
                return fn(h[0], g.weight[None], None, d.weight[None], None, _FIRST, _WHOLE)[None]
        g, u = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


def prepare(model: CausalLM) -> tuple[list[DecodeLayer], Proj]:
    """Lay out every layer of `model` for decoding, in place (values unchanged): the per-layer projections and the
    output head."""
    layers = [DecodeLayer(layer.self_attn, layer.mlp) for layer in model.model.layers]
    if model.lm_head.weight is not model.model.embed_tokens.weight:  # a tied head is the embedding table: left alone
        return layers, relayout(model.lm_head)
    return layers, Proj(model.lm_head.weight)
