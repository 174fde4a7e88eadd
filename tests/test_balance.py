"""Balancing losses and the loss-free bias, on hand-built routings and a real Gate."""

from __future__ import annotations

import pytest
import torch

from seekmoe.model.model import Gate, Routing
from seekmoe.train.balance import (
    BalanceConfig,
    balance_loss,
    calibrate_bias,
    device_balance_loss,
    expert_balance_loss,
    expert_counts,
    load_stats,
    router_entropy,
    sequence_balance_loss,
    update_bias,
)
from tests.conftest import tiny_config, tiny_model


def routing(idx: list[list[int]], scores: torch.Tensor) -> Routing:
    idx_NK = torch.tensor(idx)
    return Routing(scores, idx_NK, scores.gather(1, idx_NK))


def test_expert_loss_is_one_when_balanced_and_larger_when_collapsed():
    uniform = torch.full((4, 4), 0.25)
    balanced = routing([[0, 1], [2, 3], [0, 2], [1, 3]], uniform)
    assert expert_balance_loss(balanced).item() == pytest.approx(1.0)
    peaked = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4)
    collapsed = routing([[0, 1]] * 4, peaked)
    # f = (2, 2, 0, 0), P = (0.7, 0.1, 0.1, 0.1): 2*0.7 + 2*0.1
    assert expert_balance_loss(collapsed).item() == pytest.approx(1.6)


def test_device_loss_groups_experts():
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 2)
    r = routing([[0, 1], [0, 2]], scores)
    # f = (2, 1, 1, 0) * 4/(2*2) = (2, 1, 1, 0); groups {0,1},{2,3}: f' = (1.5, 0.5), P' = (0.7, 0.3)
    assert device_balance_loss(r, 2).item() == pytest.approx(1.5 * 0.7 + 0.5 * 0.3)
    with pytest.raises(ValueError, match="divisible by n_devices"):
        device_balance_loss(r, 3)


def test_sequence_loss_normalises_scores_per_token_and_averages_sequences():
    scores = torch.rand(6, 4) + 0.1  # sigmoid-like: rows do not sum to 1
    idx = [[0, 1], [1, 2], [2, 3], [0, 3], [0, 1], [0, 1]]
    r = routing(idx, scores)
    per_seq = []
    for s in range(2):
        rows = slice(3 * s, 3 * s + 3)
        normed = scores[rows] / scores[rows].sum(-1, keepdim=True)
        per_seq.append(expert_balance_loss(routing(idx[rows], normed)))
    assert sequence_balance_loss(r, batch_size=2).item() == pytest.approx(torch.stack(per_seq).mean().item())


def test_aux_loss_trains_the_router_only_through_scores():
    gate = Gate(tiny_config())
    torch.nn.init.normal_(gate.weight, std=0.5)
    r = gate(torch.randn(32, 32))
    loss = balance_loss([r], BalanceConfig(mode="aux", n_devices=2), batch_size=4)
    loss.backward()
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0
    assert balance_loss([r], BalanceConfig(mode="loss_free"), batch_size=4) is None
    assert balance_loss([r], BalanceConfig(mode="none"), batch_size=4) is None


def test_update_bias_moves_against_load():
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([10.0, 2.0, 2.0, 2.0]), rate=0.01)
    assert bias.tolist() == pytest.approx([-0.01, 0.01, 0.01, 0.01])
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([10.0, 2.0, 2.0, 2.0]), rate=0.01, rule="proportional")  # mean 4
    assert bias.tolist() == pytest.approx([-0.015, 0.005, 0.005, 0.005])
    update_bias(bias, torch.zeros(4), rate=0.01, rule="proportional")  # nothing routed: nothing to learn
    assert bias.tolist() == pytest.approx([-0.015, 0.005, 0.005, 0.005])
    with pytest.raises(ValueError, match="sign"):
        update_bias(bias, torch.ones(4), rate=0.01, rule="squared")


@pytest.mark.parametrize("rule", ["sign", "proportional"])
def test_loss_free_bias_evens_out_a_skewed_router(rule):
    """The mechanism itself: a router that favours a few experts becomes balanced by bias updates alone."""
    cfg = tiny_config(topk_method="noaux_tc", scoring_func="sigmoid", n_group=1, topk_group=1, n_routed_experts=8,
                      norm_topk_prob=False)
    gate = Gate(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(8, 32, generator=g) * 0.1)
        gate.weight[:2] += 0.1  # experts 0 and 1 are everyone's favourite
        gate.e_score_correction_bias.zero_()
    x = torch.randn(512, 32, generator=g).abs()
    before = load_stats(expert_counts(gate(x), 8))
    for step in range(300):
        rate = 0.01 if step < 200 else 0.002  # coarse, then fine: sign updates oscillate by about the rate
        if rule == "proportional":
            rate = 0.02  # steps shrink with the imbalance by themselves
        update_bias(gate.e_score_correction_bias, expert_counts(gate(x), 8), rate=rate, rule=rule)
    r = gate(x)
    after = load_stats(expert_counts(r, 8))
    assert before.utilisation < 0.3 and before.max_vio > 2
    assert after.utilisation > 0.95 and after.max_vio < 0.05
    torch.testing.assert_close(r.topk_weight, r.scores.gather(1, r.topk_idx))  # the bias never enters the weights


@pytest.mark.parametrize("n_group", [1, 4])
def test_calibration_balances_every_layer_over_many_tokens_at_once(n_group):
    """Solved over the scores of all the tokens, the bias evens out each layer's load; the weights never change."""
    model = tiny_model(n_routed_experts=8, topk_method="noaux_tc", scoring_func="sigmoid", n_group=n_group,
                       topk_group=2 if n_group > 1 else 1, num_hidden_layers=4, norm_topk_prob=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight[:2] += 0.3  # experts 0 and 1 are everyone's favourite in every layer
    batches = [torch.randint(3, 97, (8, 32), generator=g) for _ in range(4)]
    weights = {n: p.clone() for n, p in model.named_parameters()}
    result = calibrate_bias(model, lambda: iter(batches))
    assert len(result) == 3 and all(before < 0.7 for before, _ in result)
    assert all(after > 0.97 for _, after in result), result
    for r in model(torch.cat(batches), return_routing=True).routing:  # the loads the model now gives
        assert load_stats(expert_counts(r, 8)).utilisation > 0.97
        torch.testing.assert_close(r.topk_weight, r.scores.gather(1, r.topk_idx))  # the bias never enters them
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="noaux_tc"):
        calibrate_bias(tiny_model(topk_method="greedy"), lambda: iter(batches))


def test_load_stats():
    even = load_stats(torch.tensor([3.0, 3.0, 3.0]))
    assert even.max_vio == 0 and even.utilisation == 1 and even.fractions == pytest.approx([1 / 3] * 3)
    skew = load_stats(torch.tensor([4.0, 0.0, 0.0, 0.0]))
    assert skew.max_vio == pytest.approx(3.0) and skew.utilisation == pytest.approx(0.25)
    empty = load_stats(torch.zeros(4))
    assert empty.utilisation == 0 and empty.max_vio == 0


def test_router_entropy_bounds():
    flat = routing([[0, 1]], torch.full((1, 4), 0.25))
    assert router_entropy(flat) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    sharp = routing([[0, 1]], torch.tensor([[1.0, 1e-9, 1e-9, 1e-9]]))
    assert router_entropy(sharp) < 1e-6


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"mode": "dense"}, "mode"), ({"expert_alpha": -1.0}, "expert_alpha"), ({"n_devices": 0}, "n_devices"),
     ({"bias_update_rate": float("inf")}, "bias_update_rate"), ({"capacity_factor": 0.0}, "capacity_factor"),
     ({"calibrate_tokens": -1}, "calibrate_tokens"), ({"calibrate_tokens": 1.5}, "calibrate_tokens")],
)
def test_balance_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BalanceConfig(**kwargs)
