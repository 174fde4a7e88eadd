"""Expert load balancing: DeepSeek-V2's auxiliary losses, DeepSeek-V3's sequence-wise loss and its
auxiliary-loss-free bias, and the load statistics that show whether experts are used evenly.

All functions take the `Routing` a MoE layer returns (model/model.py); none of them touch the model's weights except
`update_bias`, which moves the routing bias that steers selection only.

Shape legend: N tokens (B*T flattened), B sequences, T tokens per sequence, E routed experts, K experts per
token, G device groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from seekmoe.model.model import Gate, Routing
from seekmoe.train import distributed
from seekmoe.train.config import BalanceConfig


def expert_counts(r: Routing, n_experts: int) -> torch.Tensor:
    """Tokens each expert computed (E,), as float32: pairs dropped by the capacity limit do not count."""
    idx = r.topk_idx if r.kept is None else r.topk_idx[r.kept]
    return torch.bincount(idx.flatten(), minlength=n_experts).float()


def _selection_fraction(r: Routing) -> torch.Tensor:
    """f_i = E / (K N) * (number of tokens choosing expert i): 1.0 for every expert when perfectly balanced.

    Under torchrun the counts and N are summed over the ranks first: f is the global batch's, so each rank's
    loss sum_i f_i P_i (P over its own tokens), averaged over the ranks, is the loss one process computes.
    """
    k, e = r.topk_idx.shape[1], r.scores.shape[1]
    counts = torch.cat([torch.bincount(r.topk_idx.flatten(), minlength=e).float(),
                        torch.tensor([float(r.topk_idx.shape[0])], device=r.topk_idx.device)])
    counts = distributed.all_reduce_sum(counts)  # (E + 1,): per-expert counts, then N
    return counts[:e] * e / (k * counts[e])


def expert_balance_loss(r: Routing) -> torch.Tensor:
    """DeepSeek-V2 expert-level loss sum_i f_i P_i (before α1); f_i carries no gradient, P_i does."""
    p_E = r.scores.mean(dim=0)  # P_i: mean affinity
    return (_selection_fraction(r) * p_E).sum()


def device_balance_loss(r: Routing, n_devices: int) -> torch.Tensor:
    """DeepSeek-V2 device-level loss sum_d f'_d P'_d (before α2): experts split into n_devices equal groups."""
    e = r.scores.shape[1]
    if e % n_devices:
        raise ValueError(f"n_routed_experts ({e}) must be divisible by n_devices ({n_devices})")
    f_G = _selection_fraction(r).view(n_devices, -1).mean(dim=1)  # f'_d: mean f over the group
    p_G = r.scores.mean(dim=0).view(n_devices, -1).sum(dim=1)  # P'_d: summed affinity of the group
    return (f_G * p_G).sum()


def sequence_balance_loss(r: Routing, batch_size: int) -> torch.Tensor:
    """DeepSeek-V3's complementary loss: the expert-level loss within each sequence, scores normalised per token."""
    n, k = r.topk_idx.shape
    e = r.scores.shape[1]
    t = n // batch_size
    scores_BTE = (r.scores / r.scores.sum(dim=-1, keepdim=True)).view(batch_size, t, e)
    chosen_BTE = torch.zeros_like(scores_BTE).scatter_(2, r.topk_idx.view(batch_size, t, k), 1.0)
    f_BE = chosen_BTE.sum(dim=1) * e / (k * t)
    p_BE = scores_BTE.mean(dim=1)
    return (f_BE * p_BE).sum(dim=1).mean()


def balance_loss(routing: list[Routing], cfg: BalanceConfig, batch_size: int) -> torch.Tensor | None:
    """The auxiliary loss to add to the LM loss, summed over MoE layers; None when the mode adds none."""
    if cfg.mode != "aux" or not routing:
        return None
    total = routing[0].scores.new_zeros(())
    for r in routing:
        total = total + cfg.expert_alpha * expert_balance_loss(r)
        if cfg.n_devices > 1:
            total = total + cfg.device_alpha * device_balance_loss(r, cfg.n_devices)
        if cfg.sequence_alpha > 0:
            total = total + cfg.sequence_alpha * sequence_balance_loss(r, batch_size)
    return total


@torch.no_grad()
def update_bias(bias: torch.Tensor, counts: torch.Tensor, rate: float, rule: str = "sign") -> None:
    """Loss-free balancing: overloaded experts become less attractive, starved ones more.

    "sign" is DeepSeek-V3's rule, b_i += u * sign(mean load - load_i): every step moves every bias by u, whatever
    the size of the imbalance. "proportional" moves it by u * (mean load - load_i) / mean load: far from balance
    it corrects in a few steps what the sign rule takes hundreds for (on a short run it lags the router and
    oscillates), and near balance it barely moves, so a small batch's noise does not shake it.
    """
    mean = counts.mean()
    if rule == "sign":
        bias += rate * torch.sign(mean - counts)
    elif rule == "proportional":
        if mean > 0:
            bias += rate * (mean - counts) / mean
    else:
        raise ValueError(f"bias update rule must be 'sign' or 'proportional', got {rule!r}")


@torch.no_grad()
def calibrate_bias(model: torch.nn.Module, batches: Callable[[], Iterable[torch.Tensor]],
                   iterations: int = 300) -> list[tuple[float, float]]:
    """The loss-free bias solved over many tokens at once, after training: each layer's utilisation over them -> 1.

    Per-step updates see one batch's loads; at a few thousand tokens a step those move by 15% from step to step
    (a batch is a handful of documents, and experts specialise by domain), so the bias ends wherever the last
    batches pushed it. DeepSeek's steps hold millions of tokens. This pass keeps the router scores of every token
    of `batches()` (any number of tokens: hundreds of thousands) and moves the bias by the relative imbalance,
    with a shrinking step, until every expert's load over all of them is the mean. Layer after layer: a layer's
    choices change what the next one sees. Under torchrun the loads are summed over the ranks' batches.
    Returns (utilisation before, after) per MoE layer, over the calibration tokens.
    """
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    if any(g.topk_method != "noaux_tc" for g in gates):
        raise ValueError("calibrating the bias needs a model with topk_method 'noaux_tc' (e_score_correction_bias)")
    training = model.training
    model.eval()
    result = []
    for layer, gate in enumerate(gates):
        scores_NE = torch.cat([model(x, return_routing=True).routing[layer].scores for x in batches()])
        bias_E = gate.e_score_correction_bias.float().clone()
        step = 0.25 * scores_NE.std().item()  # the scale of the scores: softmax ones are E times smaller

        before = counts = _loads(gate, scores_NE, bias_E)
        for i in range(iterations):
            mean = counts.mean()
            bias_E += step * 0.98 ** i * (mean - counts) / mean
            counts = _loads(gate, scores_NE, bias_E)
        gate.e_score_correction_bias.copy_(bias_E)
        result.append(((before.mean() / before.max()).item(), (counts.mean() / counts.max()).item()))
    model.train(training)
    return result


def _loads(gate: Gate, scores_NE: torch.Tensor, bias_E: torch.Tensor) -> torch.Tensor:
    idx = gate.select(scores_NE, bias_E)
    return distributed.all_reduce_sum(torch.bincount(idx.flatten(), minlength=gate.n_experts).float())


@dataclass
class LoadStats:
    """How evenly one layer's experts were used over some tokens."""

    fractions: list[float]  # share of routed (token, expert) pairs per expert; sums to 1
    max_vio: float  # (max load - mean load) / mean load; 0 is perfect
    utilisation: float  # mean load / max load; 1 is perfect
    entropy: float  # mean per-token entropy of the normalised router scores, in nats
    dropped: float = 0.0  # fraction of (token, expert) pairs dropped by the capacity limit


def load_stats(counts: torch.Tensor, entropy: float = float("nan"), dropped: float = 0.0) -> LoadStats:
    counts = counts.double()
    mean, top = counts.mean().item(), counts.max().item()
    total = counts.sum().item()
    return LoadStats(
        fractions=(counts / total).tolist() if total else [0.0] * counts.numel(),
        max_vio=(top - mean) / mean if mean else 0.0,
        utilisation=mean / top if top else 0.0,
        entropy=entropy,
        dropped=dropped,
    )


def router_entropy(r: Routing) -> float:
    p = r.scores / r.scores.sum(dim=-1, keepdim=True)
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean().item()
