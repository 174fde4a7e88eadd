"""Decode layout: fused projections and storage order change no value; the rope matrices and the few-token expert
loop equal the model's own arithmetic."""

from __future__ import annotations

import pytest
import torch

from seekmoe.engine import layout
from seekmoe.engine.runner import rope_matrices
from seekmoe.model import kernels, quant
from seekmoe.model.model import MoE, RotaryEmbedding, apply_rope, few_tokens
from seekmoe.model.quant import quantize_int8
from tests.conftest import tiny_config, tiny_model

IDS = torch.randint(0, 97, (3, 13), generator=torch.Generator().manual_seed(0))
MODELS = {
    "low-rank q": {},
    "full-rank q, tied head": dict(q_lora_rank=None, tie_word_embeddings=True),
    "v3 sigmoid": dict(model_type="deepseek_v3", topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True),
}


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("name", MODELS)
def test_laying_out_changes_no_output(name, int8, monkeypatch):
    model = tiny_model(**MODELS[name])
    if int8:
        quantize_int8(model)
        # laid out, many tokens go through the grouped experts kernel in float32: compare with the float32 path,
        # not with torch's int8 kernel, which rounds activations to bfloat16
        monkeypatch.setattr(quant, "KERNEL_MAX_ROWS", 0)
    with torch.no_grad():
        want = model(IDS)
        layers, _ = layout.prepare(model)
        torch.testing.assert_close(model(IDS), want, rtol=1e-5, atol=1e-5)
        layout.prepare(model)  # a second engine over the same model lays it out again: still the same values
        torch.testing.assert_close(model(IDS), want, rtol=1e-5, atol=1e-5)
    assert len(layers) == model.config.num_hidden_layers


def test_fused_weights_are_views_of_one_tensor_not_copies():
    model = tiny_model(q_lora_rank=None)
    layers, _ = layout.prepare(model)
    attn, moe = model.model.layers[1].self_attn, model.model.layers[1].mlp
    assert isinstance(moe, MoE)
    assert same_storage(attn.q_proj.weight, layers[1].attn_in.weight)
    assert same_storage(attn.kv_a_proj_with_mqa.weight, layers[1].attn_in.weight)
    assert same_storage(moe.shared_experts.gate_proj.weight, layers[1].gate_up.weight)
    assert same_storage(moe.experts.gate_proj, moe.experts.gate_up)
    assert same_storage(moe.experts.up_proj, moe.experts.gate_up)
    assert moe.experts.gate_up.shape == (8, 2 * 16, 32)
    # the down projections are stored transposed (the experts kernel adds scaled rows; torch streams this shape
    # faster so too); the other matrices row by row with the kernels, by shape without them
    assert moe.experts.down_proj.stride()[1:] == (1, 32)
    assert moe.shared_experts.down_proj.weight.stride() == (1, 32)
    assert (attn.o_proj.weight.stride() == (1, 32)) == layout.columns_first(32, 24)
    assert layers[1].attn_in.weight.shape == (48 + 20, 32)
    assert layers[1].attn_in.weight.t().is_contiguous() == layout.columns_first(68, 32)


def test_without_the_kernels_the_order_follows_the_shape(monkeypatch):
    monkeypatch.setattr(layout.kernels, "available", lambda: False)
    monkeypatch.setattr(layout.kernels, "_loaded", {"lib": None})
    model = tiny_model(q_lora_rank=None)
    with torch.no_grad():
        want = model(IDS)
        layers, head = layout.prepare(model)
        torch.testing.assert_close(model(IDS), want, rtol=1e-5, atol=1e-5)
    assert layers[1].attn_in.weight.t().is_contiguous()  # (68, 32): wider out than in
    assert model.model.layers[1].self_attn.o_proj.weight.stride() == (1, 32)  # (32, 24)
    assert head.gemv is None and model.lm_head.weight.stride() == (1, 97)  # (97, 32)


@pytest.mark.parametrize("interleave", [True, False])
def test_rope_matrices_rotate_as_apply_rope(interleave):
    cfg = tiny_config(qk_rope_head_dim=8, rope_scaling={"type": "yarn", "factor": 4.0, "mscale": 1.0,
                                                        "mscale_all_dim": 0.5,
                                                        "original_max_position_embeddings": 32})
    positions = torch.tensor([0, 3, 17, 100])
    cos, sin = RotaryEmbedding(cfg)(positions)  # (N, R/2)
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))  # (N, heads, R)
    want = apply_rope(x[None], cos[None], sin[None], interleave)[0]
    # two products and a sum, rounded (and fused) otherwise than apply_rope's: an ulp or two of products up to ~4
    torch.testing.assert_close(torch.bmm(x, rope_matrices(cos, sin, interleave)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("tokens", [1, 3, 5])  # one token, token by token (kernel), grouped by expert
def test_few_token_experts_equal_the_batched_dispatch(tokens, int8, fused):
    model = tiny_model()
    moe = model.model.layers[1].mlp
    x_ND = torch.randn(tokens, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        routing = moe.gate(x_ND)
        want = moe.experts(x_ND, routing.topk_idx, routing.topk_weight)  # float, grouped or looped
        if int8:
            quantize_int8(model)
            want = moe.experts(x_ND, routing.topk_idx, routing.topk_weight)
        if fused:
            moe.experts.fuse_gate_up()
            torch.testing.assert_close(moe.experts(x_ND, routing.topk_idx, routing.topk_weight), want)
        got = few_tokens(moe.experts, x_ND, routing.topk_idx, routing.topk_weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_few_token_experts_read_only_the_chosen_experts():
    moe = tiny_model().model.layers[1].mlp
    moe.experts.fuse_gate_up()
    x_ND = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    idx_NK, weight_NK = torch.tensor([[2, 5], [5, 7]]), torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    want = few_tokens(moe.experts, x_ND, idx_NK, weight_NK)
    with torch.no_grad():
        for e in {0, 1, 3, 4, 6}:  # poison every unused expert: reading one would show as nan
            moe.experts.gate_up[e] = float("nan")
            moe.experts.down_proj[e] = float("nan")
    assert torch.equal(few_tokens(moe.experts, x_ND, idx_NK, weight_NK), want)


def test_fusing_what_cannot_be_fused_is_refused():
    model = tiny_model()
    attn = model.model.layers[0].self_attn
    with pytest.raises(TypeError, match="cannot fuse"):
        layout.fuse(attn.q_a_proj, attn.q_a_layernorm)


def test_a_bfloat16_model_decodes_through_the_engine_as_through_the_model():
    from seekmoe.engine.engine import Engine
    from seekmoe.engine.sampling import SamplingParams
    from tests.test_engine import prompts, reference_greedy

    model = tiny_model().to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, MoE):
            module.gate.float()  # the router stays float32, as load_model keeps it
    prompt = prompts([12])[0]
    got = Engine(model, cache_tokens=256).generate([prompt], SamplingParams(max_tokens=8, temperature=0,
                                                                            ignore_eos=True))[0][0]
    assert got == reference_greedy(model, prompt, 8)


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_the_fused_swiglu_equals_the_modules_own(int8):
    """Dense MLP and shared experts through DecodeLayer.swiglu (for one int8 token: the experts kernel)."""
    model = tiny_model()
    if int8:
        quantize_int8(model)
    layers, _ = layout.prepare(model)
    for rows in (1, 3):
        h = torch.randn(rows, 32, generator=torch.Generator().manual_seed(rows))
        for fused, layer in zip(layers, model.model.layers, strict=True):
            mlp = layer.mlp.shared_experts if isinstance(layer.mlp, MoE) else layer.mlp
            with torch.no_grad():
                torch.testing.assert_close(fused.swiglu(h), mlp(h), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(kernels.int8_gemv_heads() is None, reason="the kernels cannot be built here")
def test_a_quantized_model_absorbs_kv_b_proj_as_int8_rows_within_their_rounding():
    from seekmoe.engine.runner import Absorbed

    model = quantize_int8(tiny_model())
    attn = model.model.layers[1].self_attn
    ab = Absorbed(attn, int8=True)
    q_nope = torch.randn(4, attn.n_heads, attn.nope_dim, generator=torch.Generator().manual_seed(1))  # (B, H, n)
    x = q_nope.transpose(0, 1).contiguous()  # (H, B, n)
    got = kernels.int8_gemv_heads()(x, *ab.uk)  # (H, B, L)
    want = torch.bmm(x, ab.w_uk)
    # each output is off by at most half its row's step times the inputs' absolute sum
    bound = x.abs().sum(-1, keepdim=True) * ab.uk[1][:, None, :] / 2
    assert ((got - want).abs() <= bound + 1e-6).all() and not torch.equal(got, want)
    o_lat = torch.randn(attn.n_heads, 4, attn.kv_lora_rank, generator=torch.Generator().manual_seed(2))
    got, want = kernels.int8_gemv_heads()(o_lat, *ab.uv), torch.bmm(o_lat, ab.w_uv_t)
    assert ((got - want).abs() <= o_lat.abs().sum(-1, keepdim=True) * ab.uv[1][:, None, :] / 2 + 1e-6).all()


@pytest.mark.skipif(kernels.int8_gemv_heads() is None, reason="the kernels cannot be built here")
def test_a_quantized_model_decodes_through_the_engine_as_through_the_model():
    from seekmoe.engine.engine import Engine
    from seekmoe.engine.sampling import SamplingParams
    from tests.test_engine import prompts, reference_greedy

    model = quantize_int8(tiny_model())
    prompt = prompts([12])[0]
    engine = Engine(model, cache_tokens=256)
    assert engine.runner.absorbed[0].uk is not None  # the int8 rows are what decode reads
    got = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0][0]
    assert got == reference_greedy(model, prompt, 8)
