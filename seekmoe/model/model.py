"""DeepSeek-V2/V3 in PyTorch, top to bottom as the papers describe it.

RMSNorm -> rotary embedding with YaRN -> Multi-head Latent Attention (MLA) -> SwiGLU MLP ->
DeepSeekMoE (Gate + routed experts + shared experts) -> Block -> CausalLM.

Module and parameter names follow Hugging Face's `deepseek_v2`/`deepseek_v3` checkpoints, so a state dict maps
onto their safetensors keys one to one, except the routed experts, which we keep stacked in 3-D tensors (see
`checkpoint.py` for the mapping).

Shape legend: B batch, T tokens (sequence), H heads, D model width, E routed experts, K experts per token,
F expert width, N flattened tokens (B*T), L kv_lora_rank, R qk_rope_head_dim.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seekmoe.model import kernels
from seekmoe.model.config import ModelConfig

# torch's grouped GEMM (CPU and CUDA since 2.8-ish); private, so we keep the plain loop as the fallback
_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one call, the same arithmetic
        # normalise in float32: bf16 squares lose the small components
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---- rotary embedding with YaRN ----------------------------------------------------------------------------

def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (R/2,) and the cos/sin magnitude; YaRN blends interpolated and original ones."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    yarn = cfg.rope_scaling
    if yarn is None:
        return inv_freq, 1.0
    factor = yarn["factor"]
    original = yarn.get("original_max_position_embeddings") or cfg.max_position_embeddings
    beta_fast, beta_slow = yarn.get("beta_fast") or 32, yarn.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        # the rope dim whose wavelength fits `rotations` times into the original context
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: high-frequency dims keep their original frequency; 0: fully interpolated
    inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
    mscale, mscale_all_dim = yarn.get("mscale") or 1.0, yarn.get("mscale_all_dim") or 0.0
    return inv_freq, yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)


def attention_scale(cfg: ModelConfig) -> float:
    """MLA's softmax scale: 1/sqrt(qk dim), times YaRN's attention temperature (for both q and k) when stretched."""
    scale = cfg.qk_head_dim**-0.5
    if cfg.rope_scaling is not None and cfg.rope_scaling.get("mscale_all_dim"):
        scale *= yarn_get_mscale(cfg.rope_scaling["factor"], cfg.rope_scaling["mscale_all_dim"]) ** 2
    return scale


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.magnitude = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, R/2)
        return freqs.cos() * self.magnitude, freqs.sin() * self.magnitude


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x (B, T, H, R) by position. Interleaved pairs are (x0, x1), (x2, x3), ...; otherwise halves.

    The output lays the two members of each pair out as halves either way: queries and keys get the same layout,
    so their dot products are unchanged.
    """
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, R/2)
    x1, x2 = x1.float(), x2.float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


# ---- Multi-head Latent Attention ------------------------------------------------------------------------------

class MLA(nn.Module):
    """Keys and values come from one low-rank latent c_KV (L wide) plus one rope key shared by all heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.q_lora_rank, self.kv_lora_rank = cfg.q_lora_rank, cfg.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.qk_dim = cfg.qk_head_dim
        self.rope_interleave = cfg.rope_interleave
        d, h = cfg.hidden_size, cfg.num_attention_heads
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * self.qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * self.qk_dim, bias=False)
        # one projection gives the latent and the decoupled rope key (the "mqa" part: one key for every head)
        self.kv_a_proj_with_mqa = nn.Linear(d, cfg.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, h * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, d, bias=False)
        self.softmax_scale = attention_scale(cfg)

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries split into the no-position part (B, T, H, nope) and the rotated part (B, T, H, R)."""
        b, t, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, self.n_heads, self.qk_dim)  # (B, T, H, nope + R)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, apply_rope(q_pe, cos, sin, self.rope_interleave)

    def latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What MLA caches per token: the normalised latent (B, T, L) and the rotated shared key (B, T, R)."""
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin, self.rope_interleave).squeeze(2)
        return self.kv_a_layernorm(c_kv), k_pe

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The naive (expanded) form: rebuild per-head keys and values from the latent, then causal attention."""
        b, t, _ = x.shape
        q_nope, q_pe = self.queries(x, cos, sin)
        c_kv, k_pe = self.latent(x, cos, sin)
        kv = self.kv_b_proj(c_kv).view(b, t, self.n_heads, self.nope_dim + self.v_dim)  # (B, T, H, nope + v)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, T, H, nope + R)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(b, t, self.n_heads, self.rope_dim)], dim=-1)
        # SDPA's fused (flash) kernels want one head width for q, k and v; with v narrower than q·k it falls back
        # to the math path, which writes the whole (H, T, T) score matrix (4 GB a layer at 16k tokens and 4 heads).
        # Zero columns on v keep the fused path and add nothing to the output, which drops them again (on q and k:
        # nothing to the scores, the scale being given).
        width = max(self.qk_dim, self.v_dim)
        q, k, v = (F.pad(z, (0, width - z.shape[-1])) if z.shape[-1] < width else z for z in (q, k, v))
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=self.softmax_scale
        )[..., : self.v_dim]  # (B, H, T, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.v_dim))


# ---- feed-forward -----------------------------------------------------------------------------------------

class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Dense layers and the shared experts are this."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter_dim, bias=False)
        self.up_proj = nn.Linear(dim, inter_dim, bias=False)
        self.down_proj = nn.Linear(inter_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Routing(NamedTuple):
    """What one MoE layer's router decided for N tokens: what balancing losses and load statistics need."""

    scores: torch.Tensor  # (N, E) float32 affinities (softmax or sigmoid), before any bias
    topk_idx: torch.Tensor  # (N, K) chosen experts
    topk_weight: torch.Tensor  # (N, K) float32 combine weights
    kept: torch.Tensor | None = None  # (N, K) bool: pairs an expert computed; None when nothing was dropped


class Gate(nn.Module):
    """Top-K router: softmax or sigmoid affinities; greedy, group-limited or noaux_tc (bias-corrected) selection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.n_experts = cfg.num_experts_per_tok, cfg.n_routed_experts
        self.topk_method, self.scoring_func = cfg.topk_method, cfg.scoring_func
        self.n_group, self.topk_group = cfg.n_group or 1, cfg.topk_group or 1
        self.norm_topk_prob, self.routed_scaling_factor = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.n_experts, cfg.hidden_size))
        if self.topk_method == "noaux_tc":
            # auxiliary-loss-free balancing: a per-expert bias that steers selection but never the weights;
            # training adjusts it by load, not by gradient, hence a buffer
            self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts))

    def forward(self, x_ND: torch.Tensor) -> Routing:
        # router in float32: bf16 ties flip expert choice
        logits_NE = F.linear(x_ND.float(), self.weight.float())
        scores_NE = logits_NE.softmax(dim=-1) if self.scoring_func == "softmax" else logits_NE.sigmoid()
        idx_NK = self.select(scores_NE)
        weight_NK = scores_NE.gather(1, idx_NK)
        if self.norm_topk_prob and self.top_k > 1:
            weight_NK = weight_NK / (weight_NK.sum(dim=-1, keepdim=True) + 1e-20)
        return Routing(scores_NE, idx_NK, weight_NK * self.routed_scaling_factor)

    def select(self, scores_NE: torch.Tensor, bias_E: torch.Tensor | None = None) -> torch.Tensor:
        """The K experts of each token (N, K): the best scores, plus the balancing bias under noaux_tc (bias_E, or
        the gate's own), within the best groups under group-limited routing."""
        choice_NE = scores_NE
        if self.topk_method == "noaux_tc":
            bias_E = self.e_score_correction_bias if bias_E is None else bias_E
            choice_NE = scores_NE + bias_E.float()
        if self.topk_method != "greedy" and self.n_group > 1:
            choice_NE = self._limit_to_groups(choice_NE)
        return choice_NE.topk(self.top_k, dim=-1, sorted=False).indices

    def _limit_to_groups(self, choice_NE: torch.Tensor) -> torch.Tensor:
        """Keep only experts in the topk_group best groups (device-limited routing); mask the rest out."""
        n = choice_NE.shape[0]
        grouped_NGe = choice_NE.view(n, self.n_group, -1)
        if self.topk_method == "noaux_tc":
            group_score_NG = grouped_NGe.topk(2, dim=-1).values.sum(dim=-1)  # V3: sum of each group's best two
        else:
            group_score_NG = grouped_NGe.amax(dim=-1)  # V2: each group's best expert
        keep_NG = torch.zeros_like(group_score_NG, dtype=torch.bool)
        keep_NG.scatter_(1, group_score_NG.topk(self.topk_group, dim=-1, sorted=False).indices, True)
        fill = float("-inf") if self.topk_method == "noaux_tc" else 0.0
        return grouped_NGe.masked_fill(~keep_NG.unsqueeze(-1), fill).view(n, -1)


def sort_by_expert(idx_NK: torch.Tensor, kept_NK: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The N*K (token, expert) pairs ordered by expert, so each expert sees one contiguous slice: (order, the token
    of each sorted pair). Pairs dropped by the capacity limit are left out: they cost nothing and add nothing."""
    order = idx_NK.flatten().argsort(stable=True)  # (N*K,)
    if kept_NK is not None:
        order = order[kept_NK.flatten()[order]]
    return order, order // idx_NK.shape[1]


class RoutedExperts(nn.Module):
    """E SwiGLU experts with their weights stacked, so tokens can be grouped by expert and run in batches."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(n_experts, inter_dim, dim))  # w1_EFD
        self.up_proj = nn.Parameter(torch.empty(n_experts, inter_dim, dim))  # w3_EFD
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, inter_dim))  # w2_EDF
        # (E, 2F, D) once fuse_gate_up() has run; a buffer so that .to() moves it, never saved
        self.register_buffer("gate_up", None, persistent=False)

    @torch.no_grad()
    def fuse_gate_up(self) -> None:
        """Inference layout: each expert's gate and up rows side by side in one (E, 2F, D) tensor, so one matrix
        product computes both; gate_proj and up_proj become views into it (same values, no second copy)."""
        if self.gate_up is None:
            f = self.gate_proj.shape[1]
            self.gate_up = torch.cat([self.gate_proj, self.up_proj], dim=1)  # (E, 2F, D)
            self.gate_proj.data, self.up_proj.data = self.gate_up[:, :f], self.gate_up[:, f:]

    def forward(
        self, x_ND: torch.Tensor, idx_NK: torch.Tensor, weight_NK: torch.Tensor, kept_NK: torch.Tensor | None = None
    ) -> torch.Tensor:
        order, token_of = sort_by_expert(idx_NK, kept_NK)
        counts_E = torch.bincount(idx_NK.flatten()[order], minlength=self.gate_proj.shape[0])
        out = self.compute(x_ND[token_of], counts_E)  # (N*K, D)
        out = out * weight_NK.flatten()[order].unsqueeze(-1).to(out.dtype)
        return torch.zeros_like(x_ND).index_add_(0, token_of, out.to(x_ND.dtype))  # autocast: bf16 -> x's dtype

    def one_token(self, x_D: torch.Tensor, idx_K: torch.Tensor, weight_K: torch.Tensor) -> torch.Tensor | None:
        """One float32 token through its chosen experts in one kernel call (model/kernels.py: experts), or None where
        that kernel is not available or the weights are not laid out for it (engine/layout.py)."""
        if not (self.gate_up is not None and x_D.dtype == self.gate_up.dtype == torch.float32
                and self.down_proj.transpose(1, 2).is_contiguous()):
            return None
        fn = kernels.experts()
        return None if fn is None else fn(x_D, self.gate_up, None, self.down_proj, None, idx_K, weight_K.float())

    def grouped(self, x_PD: torch.Tensor, used_U: torch.Tensor, start_U1: torch.Tensor,
                weight_P: torch.Tensor) -> torch.Tensor | None:
        """Rows x_PD sorted by expert (expert used_U[u] owns rows start_U1[u]..start_U1[u + 1] - 1) through their
        experts times weight_P, in one kernel call (kernels.experts_grouped), or None where the kernel is not
        available or the weights are not laid out for it."""
        if not (self.gate_up is not None and x_PD.dtype == self.gate_up.dtype == torch.float32
                and self.down_proj.transpose(1, 2).is_contiguous()):
            return None
        fn = kernels.experts_grouped()
        return None if fn is None else fn(x_PD.contiguous(), self.gate_up, None, self.down_proj, None, used_U,
                                          start_U1, weight_P)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e's SwiGLU over rows x (M, D) -> (M, D)."""
        if self.gate_up is not None:
            g, u = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)  # (M, F) each
        else:
            g, u = F.linear(x, self.gate_proj[e]), F.linear(x, self.up_proj[e])
        return F.linear(F.silu(g) * u, self.down_proj[e])

    def compute(self, x_sorted: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """Each expert's SwiGLU over its slice of x_sorted (rows grouped by expert, counts_E rows each)."""
        # CUDA's grouped GEMM takes bfloat16 only: there it runs under autocast, in the dtype F.linear would use
        on_gpu = x_sorted.is_cuda
        if _HAS_GROUPED_MM and len(x_sorted) >= 2 * len(counts_E) and (
                torch.is_autocast_enabled("cuda") if on_gpu else x_sorted.dtype in (torch.float32, torch.bfloat16)):
            # one grouped GEMM per projection over all experts' slices: no per-expert Python overhead. Not for a
            # handful of tokens (decoding): the CPU kernel visits every expert, used or not
            offs = counts_E.cumsum(0).to(torch.int32)
            dtype = torch.bfloat16 if on_gpu else x_sorted.dtype

            def mm(x: torch.Tensor, w_EOI: torch.Tensor) -> torch.Tensor:
                return torch._grouped_mm(x.to(dtype), w_EOI.to(dtype).transpose(1, 2), offs=offs)

            if self.gate_up is not None:
                g, u = mm(x_sorted, self.gate_up).chunk(2, dim=-1)
            else:
                g, u = mm(x_sorted, self.gate_proj), mm(x_sorted, self.up_proj)
            return mm(F.silu(g) * u, self.down_proj)  # (N*K, D)
        outs, start = [], 0
        for e, count in enumerate(counts_E.tolist()):
            if count == 0:
                continue  # an idle expert costs nothing
            outs.append(self.expert(e, x_sorted[start:start + count]))  # (count, D)
            start += count
        # concatenated, not written into slices: autograd would copy the whole buffer once per slice. No row at all
        # (under expert parallel, every token chose other ranks' experts): an empty output that still depends on
        # x_sorted, or this rank would skip the backward all_to_all the others wait in
        return torch.cat(outs) if outs else x_sorted * 0


ONE_TOKEN_ROWS = 4  # steps of up to this many tokens run the experts token by token when a kernel can


@torch.inference_mode()
def few_tokens(experts: nn.Module, x_ND: torch.Tensor, idx_NK: torch.Tensor, weight_NK: torch.Tensor,
               kept_NK: torch.Tensor | None = None) -> torch.Tensor:
    """The routed experts' output at inference, only the experts in use run: for a handful of tokens (decoding), or
    for any count where the grouped kernel takes them (the engine's prompt chunks); without a kernel one at a time
    through `experts.expert(e, rows)`, each output added into place with its weight."""
    if x_ND.shape[0] <= ONE_TOKEN_ROWS and kept_NK is None and hasattr(experts, "one_token"):
        # a kernel for the whole block, where there is one: token by token (an expert two tokens share is read
        # twice, still cheaper than a handful of calls per expert)
        ys = [experts.one_token(x_ND[i], idx_NK[i], weight_NK[i]) for i in range(x_ND.shape[0])]
        if all(y is not None for y in ys):
            return torch.stack(ys)
    y_ND = torch.zeros_like(x_ND)
    if x_ND.shape[0] == 1 and kept_NK is None:  # one token: no grouping to do
        for e, w in zip(idx_NK[0].tolist(), weight_NK[0].tolist(), strict=True):
            y_ND.add_(experts.expert(e, x_ND), alpha=w)
        return y_ND
    order, token_of = sort_by_expert(idx_NK, kept_NK)
    used, counts = torch.unique_consecutive(idx_NK.flatten()[order], return_counts=True)
    if hasattr(experts, "grouped") and len(used) > 0:
        # a kernel over all the pairs at once, where there is one: each used expert read once for all its rows
        start_U1 = F.pad(counts.cumsum(0), (1, 0))  # (U + 1,)
        out_PD = experts.grouped(x_ND[token_of], used, start_U1, weight_NK.flatten()[order].float())
        if out_PD is not None:
            return y_ND.index_add_(0, token_of, out_PD.to(y_ND.dtype))
    weight_P1 = weight_NK.flatten()[order].unsqueeze(-1).to(x_ND.dtype)  # (N*K, 1) in expert order
    start = 0
    for e, count in zip(used.tolist(), counts.tolist(), strict=True):
        rows = token_of[start:start + count]
        y_ND.index_add_(0, rows, experts.expert(e, x_ND[rows]) * weight_P1[start:start + count])
        start += count
    return y_ND


def capacity_mask(idx_NK: torch.Tensor, weight_NK: torch.Tensor, capacity: int) -> torch.Tensor:
    """Token dropping (training only): each expert keeps its `capacity` highest-weighted pairs, drops the rest."""
    expert_P = idx_NK.flatten()
    by_weight = weight_NK.flatten().argsort(descending=True, stable=True)
    order = by_weight[expert_P[by_weight].argsort(stable=True)]  # by expert, best weight first within each
    counts = torch.bincount(expert_P)
    starts = counts.cumsum(0) - counts
    # position within the expert's queue
    rank = torch.arange(order.numel(), device=order.device) - starts[expert_P[order]]
    kept_P = torch.zeros_like(expert_P, dtype=torch.bool)
    kept_P[order] = rank < capacity
    return kept_P.view_as(idx_NK)


class MoE(nn.Module):
    """DeepSeekMoE: fine-grained routed experts (top-K of E) plus shared experts that every token passes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Gate(cfg)
        self.experts = RoutedExperts(cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        n_shared = cfg.n_shared_experts or 0
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * n_shared) if n_shared else None

    def forward(self, x: torch.Tensor, capacity_factor: float | None = None) -> tuple[torch.Tensor, Routing]:
        shape = x.shape
        x_ND = x.reshape(-1, shape[-1])  # (N, D)
        routing = self.gate(x_ND)
        if capacity_factor is not None:
            capacity = math.ceil(capacity_factor * routing.topk_idx.numel() / self.gate.n_experts)
            routing = routing._replace(kept=capacity_mask(routing.topk_idx, routing.topk_weight, capacity))
        y = self.experts(x_ND, routing.topk_idx, routing.topk_weight, routing.kept).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y, routing


# ---- the decoder ----------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MLA(cfg)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, capacity_factor: float | None = None
    ) -> tuple[torch.Tensor, Routing | None]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            h, routing = self.mlp(h, capacity_factor)
            return x + h, routing
        return x + self.mlp(h), None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, vocab)
    routing: list[Routing]  # one per MoE layer, in layer order


class CausalLM(nn.Module):
    """`model(input_ids)` -> logits (B, T, vocab). Pure: no loss, no sampling, no I/O."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Transformer(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the input table with the output head when the config says so (moving devices unties them)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        return_routing: bool = False,
        capacity_factor: float | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | CausalLMOutput:
        """capacity_factor drops the pairs each expert cannot take (training); inference leaves it None.
        inputs_embeds (B, T, D) replaces the token embedding lookup (multimodal prompts splice media in there)."""
        h, routing = self.hidden_states(input_ids, positions, capacity_factor, inputs_embeds)
        logits = self.lm_head(h)
        return CausalLMOutput(logits, routing) if return_routing else logits

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        capacity_factor: float | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Routing]]:
        """The last layer's states after the final norm (B, T, D), what the output head reads, and the routing of
        each MoE layer; the arguments as forward's."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if positions is None:
            positions = torch.arange(t, device=input_ids.device).expand(b, t)
        cos, sin = self.model.rotary_emb(positions)  # (B, T, R/2) each
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        routing = []
        for layer in self.model.layers:
            x, r = layer(x, cos, sin, capacity_factor)
            if r is not None:
                routing.append(r)
        return self.model.norm(x), routing

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random init as DeepSeek trains from: N(0, initializer_range) matrices, unit norms, zero routing bias; the
        rotary frequencies computed again, since a model built on the meta device and then `to_empty` has garbage
        there."""
        std = self.config.initializer_range
        self.model.rotary_emb.inv_freq.copy_(rope_frequencies(self.config)[0])
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=generator)
        for name, buf in self.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extend_context(self, tokens: int) -> None:
        """Stretch the context to `tokens` positions with YaRN, as DeepSeek-V2 took 4k to 128k: the rope dims that
        turn less than once over the trained context are interpolated by the factor, the fast ones kept, and the
        attention sharpened by YaRN's temperature (mscale 0.707 on both sides, DeepSeek-V2's values, unless the
        config has its own). The model then wants a short fine-tune on long sequences. A model with YaRN already is
        stretched from its original context, so extending twice is the same as extending once."""
        cfg = self.config
        yarn = cfg.rope_scaling or {}
        original = yarn.get("original_max_position_embeddings") or cfg.max_position_embeddings
        if tokens <= original:
            raise ValueError(f"extend_context: {tokens} tokens is not longer than the trained context ({original})")
        defaults = dict(beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707)
        cfg.rope_scaling = {**defaults, **yarn, "type": "yarn", "factor": tokens / original,
                            "original_max_position_embeddings": original}
        cfg.max_position_embeddings = tokens
        cfg.validate()
        self.model.rotary_emb = RotaryEmbedding(cfg).to(self.model.rotary_emb.inv_freq.device)
        for layer in self.model.layers:
            layer.self_attn.softmax_scale = attention_scale(cfg)
