"""int4 weights: weight-only, symmetric, one float16 scale per group of G consecutive inputs of a row (G = 32 or 64).

Storage, the same for every quantized matrix w (O, I) and for stacks of them (E, O, I):
- `weight` (O, I / 2) uint8: each run of 32 inputs is 16 bytes, byte j holding input j in its low nibble and input
  j + 16 in its high one (llama.cpp's Q4_0 order: one AND and one shift unpack 32 values for the kernel), each value
  stored as q + 8 for q in -8..7;
- `weight_scale` (O, I / G) float16, w ~= q * scale.

Rounding: llama.cpp's Q4_0's, round to nearest with each group's largest-magnitude value mapped to -8 (a step of
max|w| / 8, where max|w| / 7 wastes the code -8). Tried and not kept: trying smaller steps per group and keeping the
one with the least squared error (`MSE_SEARCH`, the extreme value then clipped): it lowers the weights' error, but
raises perplexity on the bundled model (+3.8% against +3.0% for plain rounding on runs/sft-mix4's held-out text, +3.3%
against +2.9% on the corpus sample; bench/int8_quality.py): the largest weights matter more than their count says.

Two matmul paths computing x @ (q * s).T:
- up to kernels.MAX_ROWS float32 rows (decode): seekmoe's AVX2 kernel (csrc/int4.c). It rounds x to
  int8 in blocks of 32 (llama.cpp's scheme for its Q4_0 products: each input off by at most half its block's step,
  max|x_block| / 254) and multiplies two blocks at a time with integer instructions: widening int4 to float32 made
  it compute-bound below what memory streams;
- otherwise (prefill, or no kernel): dequantize to x's dtype (wide matrices a block of rows at a time) and run a
  float matmul, exact against the dequantized weights.

Shape legend as in quant.py: a linear maps I inputs to O outputs; P = I / 2 packed bytes; G inputs per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekmoe.model import kernels
from seekmoe.model.model import RoutedExperts, few_tokens

GROUP_SIZES = (32, 64)
BLOCK = 32  # inputs per 16 packed bytes
DEQUANT_BYTES = 64 * 2**20  # the most float weight the many-rows path dequantizes at once
# steps tried per group, as fractions of max|w| / 8, the least squared error kept: 1.0 alone is Q4_0's rounding
SEARCH = (1.0,)
MSE_SEARCH = (1.0, 0.95, 0.9, 0.85, 0.8)  # smaller steps clip the extreme value: less error, worse perplexity


def check_group(in_features: int, group_size: int, what: str = "the input width") -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"int4 needs {what} to be a multiple of the group size {group_size}, got {in_features}")


def quantize_int4(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., O, I) -> (packed (..., O, I / 2) uint8, scale (..., O, I / G) float16), per group of G inputs."""
    check_group(w.shape[-1], group_size)
    w = w.detach().float()
    *lead, i = w.shape
    w_RG = w.reshape(-1, group_size)  # (rows * I / G, G): one group a row
    idx = w_RG.abs().argmax(dim=-1, keepdim=True)
    extreme = w_RG.gather(-1, idx)  # (R, 1), signed: it maps to -8
    best_q, best_s, best_err = None, None, None
    for frac in SEARCH:
        s = (extreme / -8 * frac).half().float()  # rounded to float16 first: q is computed against what is stored
        safe = torch.where(s != 0, s, torch.ones_like(s))  # an all-zero group stays zero
        q = torch.round(w_RG / safe).clamp(-8, 7)
        err = (q * s - w_RG).square().sum(dim=-1, keepdim=True)  # (R, 1)
        if best_q is None:
            best_q, best_s, best_err = q, s, err
        else:
            better = err < best_err
            best_q = torch.where(better, q, best_q)
            best_s, best_err = torch.where(better, s, best_s), torch.minimum(err, best_err)
    u = (best_q + 8).to(torch.uint8).view(-1, BLOCK)  # (R * G / 32, 32): stored q + 8, 0..15
    packed = u[:, :16] | (u[:, 16:] << 4)  # (.., 16): input j low nibble, j + 16 high
    return packed.reshape(*lead, i // 2), best_s.half().reshape(*lead, i // group_size)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(packed (..., O, I / 2), scale (..., O, I / G)) -> w (..., O, I) in `dtype`: in one pass by the kernel where
    it can (float32, contiguous), else by torch ops."""
    *lead, p = packed.shape
    if (dtype == torch.float32 and packed.is_contiguous() and scale.is_contiguous() and scale.dtype == torch.float16
            and (dequant := kernels.int4_dequant()) is not None):
        return dequant(packed.view(-1, p), scale.view(-1, scale.shape[-1])).view(*lead, 2 * p)
    return dequantize_int4_torch(packed, scale, dtype)


def dequantize_int4_torch(packed: torch.Tensor, scale: torch.Tensor,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """dequantize_int4 by torch ops: any dtype and layout, and the reference the kernel is tested against."""
    *lead, p = packed.shape
    i, groups = 2 * p, scale.shape[-1]
    b = packed.reshape(-1, 16)  # (blocks, 16)
    q = torch.cat([b & 15, b >> 4], dim=-1).to(torch.int8) - 8  # (blocks, 32) in input order
    w = q.to(dtype).view(-1, groups, i // groups) * scale.to(dtype).reshape(-1, groups, 1)  # (rows, I / G, G)
    return w.reshape(*lead, i)


def int4_linear(x: torch.Tensor, packed_OP: torch.Tensor, scale_OG: torch.Tensor) -> torch.Tensor:
    """x (..., I) @ (q * scale).T -> (..., O) in x's dtype. Inference only: the kernel path has no gradient."""
    shape = x.shape
    o = packed_OP.shape[0]
    x_NI = x if x.dim() == 2 else x.reshape(-1, shape[-1])  # (N, I)
    if (x.dtype == torch.float32 and 0 < x_NI.shape[0] <= kernels.MAX_ROWS and packed_OP.is_contiguous()
            and scale_OG.is_contiguous() and (gemv := kernels.int4_gemv()) is not None):
        out = gemv(x_NI.contiguous(), packed_OP, scale_OG)
    elif o * 2 * packed_OP.shape[1] * x.element_size() <= DEQUANT_BYTES:
        out = F.linear(x_NI, dequantize_int4(packed_OP, scale_OG, x.dtype))
    else:  # a wide matrix (lm_head: 0.8 GB of float32 at V2-Lite's shape) dequantized a block of rows at a time
        rows = max(1, DEQUANT_BYTES // (2 * packed_OP.shape[1] * x.element_size()))
        out = torch.cat([F.linear(x_NI, dequantize_int4(packed_OP[r:r + rows], scale_OG[r:r + rows], x.dtype))
                         for r in range(0, o, rows)], dim=-1)  # (N, O)
    return out.view(*shape[:-1], o)  # (..., O)


class Int4Linear(nn.Module):
    """A bias-free nn.Linear with an int4 weight (O, I / 2) uint8 and float16 group scales (O, I / G)."""

    def __init__(self, in_features: int, out_features: int, group_size: int):
        super().__init__()
        check_group(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.empty(out_features, in_features // group_size,
                                                         dtype=torch.float16))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4Linear:
        if linear.bias is not None:
            raise ValueError("Int4Linear has no bias; got an nn.Linear with one")
        m = cls(linear.in_features, linear.out_features, group_size)
        m.weight, m.weight_scale = quantize_int4(linear.weight, group_size)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int4_linear(x, self.weight, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 g{self.group_size}"


class Int4RoutedExperts(nn.Module):
    """RoutedExperts with int4 weights, gate and up already fused per expert (the layout the kernel reads, and the
    file's: a memory-mapped checkpoint is used as it lies, with no fused copy made at load)."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int, group_size: int):
        super().__init__()
        check_group(dim, group_size, "the model width")
        check_group(inter_dim, group_size, "moe_intermediate_size")
        self.group_size = group_size
        # gate_up (E, 2F, D / 2): expert e's F gate rows, then its F up rows; down (E, D, F / 2)
        self.register_buffer("gate_up", torch.empty(n_experts, 2 * inter_dim, dim // 2, dtype=torch.uint8))
        self.register_buffer("gate_up_scale", torch.empty(n_experts, 2 * inter_dim, dim // group_size,
                                                          dtype=torch.float16))
        self.register_buffer("down_proj", torch.empty(n_experts, dim, inter_dim // 2, dtype=torch.uint8))
        self.register_buffer("down_proj_scale", torch.empty(n_experts, dim, inter_dim // group_size,
                                                            dtype=torch.float16))

    @classmethod
    @torch.no_grad()
    def from_experts(cls, experts: RoutedExperts, group_size: int = 32) -> Int4RoutedExperts:
        n, inter, dim = experts.gate_proj.shape
        m = cls(n, dim, inter, group_size)
        for e in range(n):  # one expert at a time: no float copy of all of them
            m.gate_up[e], m.gate_up_scale[e] = quantize_int4(
                torch.cat([experts.gate_proj[e], experts.up_proj[e]]), group_size)  # (2F, D)
            m.down_proj[e], m.down_proj_scale[e] = quantize_int4(experts.down_proj[e], group_size)
        return m

    def fuse_gate_up(self) -> None:
        """Already fused: kept for engine/layout.py, which calls it on every kind of experts."""

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e's SwiGLU over rows x (M, D) -> (M, D)."""
        g, u = int4_linear(x, self.gate_up[e], self.gate_up_scale[e]).chunk(2, dim=-1)  # (M, F) each
        return int4_linear(F.silu(g) * u, self.down_proj[e], self.down_proj_scale[e])

    def one_token(self, x_D: torch.Tensor, idx_K: torch.Tensor, weight_K: torch.Tensor) -> torch.Tensor | None:
        """One float32 token through its chosen experts in one kernel call (kernels.int4_experts), or None."""
        fn = kernels.int4_experts() if x_D.dtype == torch.float32 else None
        if fn is None:
            return None
        return fn(x_D, self.gate_up, self.gate_up_scale, self.down_proj, self.down_proj_scale, idx_K,
                  weight_K.float())

    def forward(
        self, x_ND: torch.Tensor, idx_NK: torch.Tensor, weight_NK: torch.Tensor, kept_NK: torch.Tensor | None = None
    ) -> torch.Tensor:
        return few_tokens(self, x_ND, idx_NK, weight_NK, kept_NK)  # only the experts in use, at any token count


__all__ = ["GROUP_SIZES", "Int4Linear", "Int4RoutedExperts", "check_group", "dequantize_int4", "dequantize_int4_torch",
           "int4_linear", "quantize_int4"]
