"""A decode step with each layer one native call (kernels.decode_layer).

The runner's own step calls PyTorch about fifty times a layer around the products (norms, splits, rope, the cache
write, the router, ...): more time than `tiny`'s products take, and a fifth of a V2-Lite int4 step. Here each layer
is described once, as pointers to the weights the runner already laid out (layout.DecodeLayer, the absorbed
W_UK / W_UV), and a step of one new token per sequence runs it in C, for one sequence or several (which share each
product, their routed experts grouped by expert). The arithmetic is the runner's, in float32.

`describe` returns None, and the runner keeps its own path, for what the kernel does not take: weights other than
float32, int8 or int4 (or a mix the experts kernels do not read), a bfloat16 model.
"""

from __future__ import annotations

import torch
from torch import nn

from seekmoe.engine.layout import DecodeLayer, Proj
from seekmoe.model import kernels
from seekmoe.model.int4 import Int4RoutedExperts
from seekmoe.model.kernels import ExpertsDesc, LayerDesc, ProjDesc
from seekmoe.model.model import MoE, RoutedExperts
from seekmoe.model.quant import Int8RoutedExperts


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _proj(p: Proj, keep: list[torch.Tensor]) -> ProjDesc | None:
    w, s = p.weight, p.scale
    keep += [w] if s is None else [w, s]
    if p.int4 and s is not None and w.is_contiguous() and s.is_contiguous():
        return ProjDesc(kernels.PROJ_INT4, 2 * w.shape[1] // s.shape[1], w.shape[0], 2 * w.shape[1], w.data_ptr(),
                        s.data_ptr())
    if w.dtype == torch.int8 and s is not None and w.is_contiguous() and s.dtype == torch.float32:
        return ProjDesc(kernels.PROJ_INT8, 0, w.shape[0], w.shape[1], w.data_ptr(), s.data_ptr())
    if w.dtype == torch.float32 and s is None:
        if w.is_contiguous():
            return ProjDesc(kernels.PROJ_F32, 0, w.shape[0], w.shape[1], w.data_ptr(), None)
        if w.t().is_contiguous():
            return ProjDesc(kernels.PROJ_F32_T, 0, w.shape[0], w.shape[1], w.data_ptr(), None)
    return None


def _experts(gate_up: torch.Tensor, gate_up_scale: torch.Tensor | None, down: torch.Tensor,
             down_scale: torch.Tensor | None, keep: list[torch.Tensor]) -> ExpertsDesc | None:
    """gate_up (E, 2F, D) and down (E, D, F), as the experts kernels read them (float32 down stored transposed)."""
    tensors = [t for t in (gate_up, gate_up_scale, down, down_scale) if t is not None]
    keep += tensors
    e, f = gate_up.shape[0], gate_up.shape[1] // 2
    scaled = gate_up_scale is not None and down_scale is not None
    if scaled and gate_up.dtype == down.dtype == torch.uint8 and all(t.is_contiguous() for t in tensors):
        group = 2 * gate_up.shape[2] // gate_up_scale.shape[2]
        return ExpertsDesc(kernels.PROJ_INT4, group, e, f, *map(_ptr, (gate_up, gate_up_scale, down, down_scale)))
    if scaled and gate_up.dtype == down.dtype == torch.int8 and all(t.is_contiguous() for t in tensors):
        return ExpertsDesc(kernels.PROJ_INT8, 0, e, f, *map(_ptr, (gate_up, gate_up_scale, down, down_scale)))
    if (gate_up_scale is None and down_scale is None and gate_up.dtype == down.dtype == torch.float32
            and gate_up.is_contiguous() and down.transpose(1, 2).is_contiguous()):
        return ExpertsDesc(kernels.PROJ_F32, 0, e, f, gate_up.data_ptr(), None, down.data_ptr(), None)
    return None


def _routed(experts: nn.Module, keep: list[torch.Tensor]) -> ExpertsDesc | None:
    if isinstance(experts, (RoutedExperts, Int8RoutedExperts)) and experts.gate_up is not None:
        scales = (experts.gate_up_scale, experts.down_proj_scale) if isinstance(experts, Int8RoutedExperts) \
            else (None, None)
        return _experts(experts.gate_up, scales[0], experts.down_proj, scales[1], keep)
    if isinstance(experts, Int4RoutedExperts):
        return _experts(experts.gate_up, experts.gate_up_scale, experts.down_proj, experts.down_proj_scale, keep)
    return None


def _layer(d: int, layer: nn.Module, fused: DecodeLayer, absorbed, keep: list[torch.Tensor]) -> LayerDesc | None:
    """One layer's descriptor (width d; `absorbed` the runner's W_UK / W_UV: int8 rows, or None for the float
    kv_b_proj), or None where the kernel does not take it. Every tensor it points into is added to `keep`."""
    attn, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, attn.kv_a_layernorm, layer.post_attention_layernorm)
    norms += (attn.q_a_layernorm,) if attn.q_lora_rank is not None else ()
    if (layer.input_layernorm.eps != layer.post_attention_layernorm.eps
            or any(n.weight.dtype != torch.float32 or not n.weight.is_contiguous() for n in norms)):
        return None
    attn_in, o_proj = _proj(fused.attn_in, keep), _proj(fused.o_proj, keep)
    if attn_in is None or o_proj is None or (fused.gate_up is None and not isinstance(mlp, MoE)):
        return None
    shared = ExpertsDesc()  # none
    if fused.gate_up is not None:  # the shared experts, or the dense MLP, as one expert: (1, 2F, D), (1, D, F)
        g, dn = fused.gate_up, fused.down
        shared = _experts(g.weight[None], None if g.scale is None else g.scale[None], dn.weight[None],
                          None if dn.scale is None else dn.scale[None], keep)
        if shared is None:
            return None
    desc = LayerDesc(d=d, heads=attn.n_heads, nope=attn.nope_dim, rope=attn.rope_dim, v=attn.v_dim,
                     lat=attn.kv_lora_rank, eps=layer.input_layernorm.eps, kv_eps=attn.kv_a_layernorm.eps,
                     softmax_scale=attn.softmax_scale, routed_scale=1.0, interleave=int(attn.rope_interleave),
                     input_norm=norms[0].weight.data_ptr(), kv_norm=norms[1].weight.data_ptr(),
                     post_norm=norms[2].weight.data_ptr(), attn_in=attn_in, o_proj=o_proj, shared=shared)
    keep += [n.weight for n in norms]
    if attn.q_lora_rank is not None:
        q_b = _proj(fused.q_b_proj, keep)
        if q_b is None:
            return None
        desc.q_lora, desc.q_eps, desc.q_norm, desc.q_b = attn.q_lora_rank, norms[3].eps, norms[3].weight.data_ptr(), q_b
    if absorbed.uk is not None:
        desc.int8_heads = 1
        desc.uk, desc.uk_scale = absorbed.uk[0].data_ptr(), absorbed.uk[1].data_ptr()
        desc.uv, desc.uv_scale = absorbed.uv[0].data_ptr(), absorbed.uv[1].data_ptr()
        keep += [*absorbed.uk, *absorbed.uv]
    else:
        w = attn.kv_b_proj.weight
        if w.dtype != torch.float32 or not w.is_contiguous():
            return None
        desc.uk = w.data_ptr()
        keep.append(w)
    if isinstance(mlp, MoE):
        gate = mlp.gate
        routed = _routed(mlp.experts, keep)
        if routed is None or gate.weight.dtype != torch.float32 or not gate.weight.is_contiguous():
            return None
        desc.routed, desc.gate, desc.top_k = routed, gate.weight.data_ptr(), gate.top_k
        desc.n_group, desc.topk_group = 1, 1
        if gate.topk_method != "greedy" and gate.n_group > 1:  # group-limited (model.Gate._limit_to_groups)
            desc.n_group, desc.topk_group = gate.n_group, gate.topk_group
            desc.group_top2 = int(gate.topk_method == "noaux_tc")
        desc.sigmoid, desc.norm_topk = int(gate.scoring_func == "sigmoid"), int(gate.norm_topk_prob)
        desc.routed_scale = gate.routed_scaling_factor
        keep.append(gate.weight)
        if gate.topk_method == "noaux_tc":
            bias = gate.e_score_correction_bias
            if bias.dtype != torch.float32 or not bias.is_contiguous():
                return None
            desc.gate_bias = bias.data_ptr()
            keep.append(bias)
    return desc


class FusedDecode:
    """Every layer's descriptor and the tensors they point into (kept alive as long as this is)."""

    def __init__(self, descs: list[LayerDesc], keep: list[torch.Tensor]):
        self.descs, self._keep = descs, keep
        self.run = kernels.decode_layer()


def describe(model: nn.Module, layers: list[DecodeLayer], absorbed: list) -> FusedDecode | None:
    """The layers of `model` (laid out as `layers`, absorbed as `absorbed`) for kernels.decode_layer, or None where
    the kernels are not here or some layer is of a kind it does not take."""
    if kernels.decode_layer() is None or model.model.embed_tokens.weight.dtype != torch.float32:
        return None
    keep: list[torch.Tensor] = []
    descs = []
    for layer, fused, ab in zip(model.model.layers, layers, absorbed, strict=True):
        desc = _layer(model.config.hidden_size, layer, fused, ab, keep)
        if desc is None:
            return None
        descs.append(desc)
    return FusedDecode(descs, keep)
