"""The model on its own: MoE dispatch against a dense reference loop, the router's outputs, input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seekmoe.model.model import MoE, Routing, capacity_mask
from tests.conftest import tiny_model


def dense_moe_reference(moe: MoE, x: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Every expert on every token, weighted by the router's choice: slow and obviously right."""
    x_ND = x.reshape(-1, x.shape[-1])
    r = moe.gate(x_ND)
    weight_NK = r.topk_weight if kept is None else r.topk_weight * kept
    w = moe.experts
    out = torch.zeros_like(x_ND)
    for e in range(w.gate_proj.shape[0]):
        y = (F.silu(x_ND @ w.gate_proj[e].T) * (x_ND @ w.up_proj[e].T)) @ w.down_proj[e].T
        weight_N = (weight_NK * (r.topk_idx == e)).sum(-1)
        out += weight_N.unsqueeze(-1) * y
    if moe.shared_experts is not None:
        out += moe.shared_experts(x_ND)
    return out.view(x.shape)


ROUTERS = {
    "softmax greedy": dict(),
    "softmax group-limited": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2),
    "sigmoid noaux_tc": dict(topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
                             norm_topk_prob=True, routed_scaling_factor=2.5),
    "no shared experts, top-1": dict(n_shared_experts=0, num_experts_per_tok=1),
}


@pytest.mark.parametrize("grouped_mm", [True, False], ids=["grouped-gemm", "loop"])
@pytest.mark.parametrize("name", list(ROUTERS))
def test_grouped_dispatch_equals_dense_reference(name, grouped_mm, monkeypatch):
    import seekmoe.model.model

    monkeypatch.setattr(seekmoe.model.model, "_HAS_GROUPED_MM", grouped_mm and seekmoe.model.model._HAS_GROUPED_MM)
    model = tiny_model(**ROUTERS[name])
    moe = model.model.layers[1].mlp
    assert isinstance(moe, MoE)
    x = torch.randn(3, 11, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, _ = moe(x)
        torch.testing.assert_close(y, dense_moe_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_router_exposes_scores_and_choices_per_moe_layer():
    model = tiny_model(topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2, num_hidden_layers=3)
    ids = torch.randint(0, 97, (2, 7))
    out = model(ids, return_routing=True)
    assert out.logits.shape == (2, 7, 97)
    assert len(out.routing) == 2  # layers 1 and 2 are MoE
    r = out.routing[0]
    assert isinstance(r, Routing)
    assert r.scores.shape == (14, 8) and r.scores.dtype == torch.float32
    assert r.topk_idx.shape == (14, 2) and r.topk_weight.shape == (14, 2)
    # scores are plain sigmoid affinities: the bias steers the choice, never the weights
    assert ((r.scores > 0) & (r.scores < 1)).all()
    # each token's two experts are distinct and lie in its two allowed groups
    assert (r.topk_idx[:, 0] != r.topk_idx[:, 1]).all()
    torch.testing.assert_close(out.logits, model(ids))


def test_bias_steers_selection_only():
    model = tiny_model(topk_method="noaux_tc", scoring_func="sigmoid", n_group=1, topk_group=1)
    gate = model.model.layers[1].mlp.gate
    x = torch.randn(64, model.config.hidden_size)
    with torch.no_grad():
        gate.e_score_correction_bias.zero_()
        gate.e_score_correction_bias[3] = 10.0  # expert 3 now wins every token
        r = gate(x)
    assert (r.topk_idx == 3).any(dim=-1).all()
    # its weight is still its own unbiased score (normalised over the chosen pair when norm_topk_prob)
    chosen = r.scores.gather(1, r.topk_idx)
    expected = chosen / chosen.sum(-1, keepdim=True) if gate.norm_topk_prob else chosen
    torch.testing.assert_close(r.topk_weight, expected * gate.routed_scaling_factor)


def test_group_limited_routing_stays_in_chosen_groups():
    model = tiny_model(topk_method="group_limited_greedy", n_group=4, topk_group=1, num_experts_per_tok=2)
    gate = model.model.layers[1].mlp.gate
    with torch.no_grad():
        r = gate(torch.randn(50, model.config.hidden_size))
    groups = r.topk_idx // 2  # 8 experts in 4 groups of 2
    assert (groups[:, 0] == groups[:, 1]).all()
    best_group = r.scores.view(50, 4, 2).amax(-1).argmax(-1)
    assert torch.equal(groups[:, 0], best_group)


@pytest.mark.parametrize("grouped_mm", [True, False], ids=["grouped-gemm", "loop"])
def test_idle_experts_are_never_computed(grouped_mm, monkeypatch):
    """Poison one expert with NaN and make sure no token routes to it: the output stays finite."""
    import seekmoe.model.model

    monkeypatch.setattr(seekmoe.model.model, "_HAS_GROUPED_MM", grouped_mm and seekmoe.model.model._HAS_GROUPED_MM)
    model = tiny_model(topk_method="noaux_tc", scoring_func="sigmoid", n_group=1, topk_group=1)
    moe = model.model.layers[1].mlp
    with torch.no_grad():
        moe.gate.e_score_correction_bias[5] = -100.0
        moe.experts.gate_proj[5] = float("nan")
        out = model(torch.randint(0, 97, (2, 9)), return_routing=True)
    assert not (out.routing[0].topk_idx == 5).any()
    assert torch.isfinite(out.logits).all()


def test_dense_only_model_runs():
    model = tiny_model(n_routed_experts=None, num_experts_per_tok=None, moe_intermediate_size=None)
    out = model(torch.randint(0, 97, (1, 5)), return_routing=True)
    assert out.routing == [] and out.logits.shape == (1, 5, 97)


def test_causal_and_batch_independent():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(ids)
        prefix = model(ids[:, :5])
        single = model(ids[1:])
    torch.testing.assert_close(full[:, :5], prefix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[1:], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("v_head_dim", [6, 12, 20])  # narrower than, equal to and wider than q·k (12)
def test_attention_equals_explicit_softmax_whatever_the_value_width(v_head_dim):
    # the fused SDPA path needs one head width, so forward pads the narrower side; nothing may leak into the output
    torch.manual_seed(0)
    model = tiny_model(v_head_dim=v_head_dim)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 9, 32, requires_grad=True)
    cos, sin = model.model.rotary_emb(torch.arange(9).expand(2, 9))
    out = attn(x, cos, sin)

    b, t, h = 2, 9, attn.n_heads
    q_nope, q_pe = attn.queries(x, cos, sin)
    c_kv, k_pe = attn.latent(x, cos, sin)
    k_nope, v = attn.kv_b_proj(c_kv).view(b, t, h, -1).split([attn.nope_dim, attn.v_dim], dim=-1)
    scores = (torch.einsum("bihn,bjhn->bhij", q_nope, k_nope) + torch.einsum("bihr,bjr->bhij", q_pe, k_pe))
    scores = scores * attn.softmax_scale + torch.full((t, t), float("-inf")).triu(1)
    want = attn.o_proj(torch.einsum("bhij,bjhv->bihv", scores.softmax(-1), v).reshape(b, t, h * v_head_dim))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    g_out, = torch.autograd.grad(out.square().sum(), x)
    g_want, = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(g_out, g_want, atol=1e-5, rtol=1e-4)


def test_bfloat16_forward_runs_with_float32_router():
    model = tiny_model().to(torch.bfloat16)
    model.model.layers[1].mlp.gate.float()
    logits = model(torch.randint(0, 97, (2, 6)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long)])
def test_input_ids_must_be_2d(bad):
    with pytest.raises(ValueError, match="batch, seq"):
        tiny_model()(bad)


def test_init_weights_is_seeded_and_sane():
    a, b = tiny_model(), tiny_model()
    a.init_weights(torch.Generator().manual_seed(3))
    b.init_weights(torch.Generator().manual_seed(3))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if name.endswith("norm.weight"):
            assert (pa == 1).all()
        else:
            assert 0.005 < pa.std() < 0.05, name


def test_a_model_built_on_the_meta_device_initialises_whole():
    from seekmoe.model.model import CausalLM
    from tests.conftest import tiny_config

    cfg = tiny_config()
    with torch.device("meta"):
        meta = CausalLM(cfg)
    model = meta.to_empty(device="cpu")
    model.model.rotary_emb.inv_freq.fill_(float("nan"))  # what to_empty may leave there
    model.init_weights(torch.Generator().manual_seed(0))
    assert torch.equal(model.model.rotary_emb.inv_freq, CausalLM(cfg).model.rotary_emb.inv_freq)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_capacity_mask_keeps_each_experts_best_pairs():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [2, 0]])
    weight = torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.3, 0.8], [0.7, 0.4]])
    kept = capacity_mask(idx, weight, capacity=2)
    # expert 0 has weights 0.1, 0.5, 0.3, 0.4: keeps 0.5 and 0.4; experts 1 and 2 have two pairs each
    assert kept.tolist() == [[False, True], [True, True], [False, True], [True, True]]
    assert capacity_mask(idx, weight, capacity=4).all()


def test_token_dropping_matches_reference_and_reports_what_it_kept():
    model = tiny_model()
    moe = model.model.layers[1].mlp
    x = torch.randn(4, 16, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, r = moe(x, capacity_factor=0.5)
        assert r.kept is not None and 0 < (~r.kept).sum() < r.kept.numel()
        per_expert = torch.bincount(r.topk_idx[r.kept], minlength=8)
        assert per_expert.max() <= 4 * 16 * 2 * 0.5 / 8
        torch.testing.assert_close(y, dense_moe_reference(moe, x, r.kept), atol=1e-5, rtol=1e-5)
        y_all, r_all = moe(x, capacity_factor=100.0)
        torch.testing.assert_close(y_all, moe(x)[0])
        assert r_all.kept.all()


@pytest.mark.parametrize("grouped_mm", [True, False], ids=["grouped-gemm", "loop"])
def test_expert_gradients_match_the_reference(grouped_mm, monkeypatch):
    import seekmoe.model.model

    monkeypatch.setattr(seekmoe.model.model, "_HAS_GROUPED_MM", grouped_mm and seekmoe.model.model._HAS_GROUPED_MM)
    model = tiny_model()
    moe = model.model.layers[1].mlp
    x = torch.randn(2, 9, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    moe(x)[0].square().sum().backward()
    ours = [p.grad.clone() for p in moe.parameters()]
    moe.zero_grad()
    dense_moe_reference(moe, x).square().sum().backward()
    for a, (name, p) in zip(ours, moe.named_parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4, msg=name)
