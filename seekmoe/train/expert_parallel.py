"""Expert parallelism under torchrun (`parallel` "expert"): rank r of N holds experts [r*E/N, (r+1)*E/N) of every
MoE layer and only those; tokens travel to the rank of each expert they chose and their outputs travel back.

Everything else (attention, the router, shared experts, dense layers, embeddings) stays whole on every rank and
data parallel, as under "ddp". One routed-experts forward is:

  1. every rank groups its (token, expert) pairs by expert, as one process does (RoutedExperts.forward);
  2. dispatch: all_to_all of the counts, then of the grouped rows, so each rank receives, from each source rank,
     the rows for its own experts;
  3. its experts run on the received rows, regrouped by expert;
  4. combine: the outputs go back by the inverse all_to_all and are weighted and summed per token as in one process.

The all_to_all is autograd's own (functional collectives), so backward sends the gradients the same way back.
A local expert's gradient then already sums every rank's tokens: it is divided by N, not all-reduced, to be the
mean over the global batch that one process gets (distributed.average_gradients). Checkpoints hold whole
tensors: rank 0 gathers the experts (and their AdamW moments) along the expert dimension; every rank slices its
own when it resumes, so a run saved under expert parallel resumes in one process, under ddp or fsdp, and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from seekmoe.model.model import CausalLM, RoutedExperts, sort_by_expert
from seekmoe.train import distributed
from seekmoe.train.config import TrainError

WEIGHTS = ("gate_proj", "up_proj", "down_proj")


class ParallelExperts(RoutedExperts):
    """This rank's slice of a RoutedExperts; the forward moves tokens between ranks, not weights."""

    def __init__(self, whole: RoutedExperts, rank: int, world: int):
        nn.Module.__init__(self)
        self.n_experts = whole.gate_proj.shape[0]
        self.rank, self.world = rank, world
        self.local = self.n_experts // world
        lo = rank * self.local
        for name in WEIGHTS:  # the same order as in RoutedExperts: the optimizer numbers parameters by it
            setattr(self, name, nn.Parameter(getattr(whole, name).detach()[lo:lo + self.local].clone()))
        self.register_buffer("gate_up", None, persistent=False)  # training: gate and up stay apart (RoutedExperts)

    def forward(
        self, x_ND: torch.Tensor, idx_NK: torch.Tensor, weight_NK: torch.Tensor, kept_NK: torch.Tensor | None = None
    ) -> torch.Tensor:
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        order, token_of = sort_by_expert(idx_NK, kept_NK)
        counts_E = torch.bincount(idx_NK.flatten()[order], minlength=self.n_experts)
        # recv_RL[s, j]: rows rank s sends to this rank's expert j
        recv_RL = torch.empty(self.world, self.local, dtype=counts_E.dtype)
        _all_to_all(recv_RL, counts_E.view(self.world, self.local))
        send, recv = counts_E.view(self.world, self.local).sum(1).tolist(), recv_RL.sum(1).tolist()
        group = dist.group.WORLD
        x_recv = all_to_all_single_autograd(x_ND[token_of], recv, send, group)  # (sum recv, D): by source, expert
        expert_of = torch.arange(self.local).repeat(self.world).repeat_interleave(recv_RL.flatten())
        by_expert = expert_of.argsort(stable=True)
        out_local = self.compute(x_recv[by_expert], recv_RL.sum(0))  # rows grouped by local expert
        out_recv = torch.empty_like(out_local).index_copy(0, by_expert, out_local)  # back in received order
        out = all_to_all_single_autograd(out_recv, send, recv, group)  # (N*K kept, D) in this rank's order
        out = out * weight_NK.flatten()[order].unsqueeze(-1).to(out.dtype)
        return torch.zeros_like(x_ND).index_add_(0, token_of, out)


def _all_to_all(out: torch.Tensor, inp: torch.Tensor) -> None:
    distributed.checked("all_to_all", dist.all_to_all_single, out, inp.contiguous())


def split(model: CausalLM, rank: int, world: int) -> None:
    """Replace every MoE layer's routed experts by this rank's slice (every rank built the same seeded weights)."""
    layers = [block.mlp for block in model.model.layers if hasattr(block.mlp, "experts")]
    if not layers:
        raise TrainError("parallel 'expert' needs a MoE model (n_routed_experts > 0); this one is dense")
    n = model.config.n_routed_experts
    if n % world:
        raise TrainError(f"parallel 'expert': n_routed_experts ({n}) must be divisible by the number of ranks "
                         f"({world})")
    for moe in layers:
        moe.experts = ParallelExperts(moe.experts, rank, world)


def local_names(model: nn.Module) -> set[str]:
    """Names of the parameters each rank holds a different slice of."""
    return {f"{prefix}.{name}" for prefix, m in model.named_modules() if isinstance(m, ParallelExperts)
            for name in WEIGHTS}


def _gather(t: torch.Tensor) -> torch.Tensor:
    """The experts of every rank, concatenated along dim 0 in rank order (every rank takes part)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    distributed.checked("all_gather", dist.all_gather, parts, t.detach().contiguous())
    return torch.cat(parts)


def _slice(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    local = t.shape[0] // world
    return t[rank * local:(rank + 1) * local].clone()


def full_model_state(model: CausalLM) -> dict[str, torch.Tensor]:
    local = local_names(model)
    return {k: _gather(v) if k in local else v for k, v in model.state_dict().items()}


def full_optimizer_state(model: CausalLM, opt: torch.optim.Optimizer) -> dict:
    """opt.state_dict() with the local experts' moments gathered whole (every rank takes part)."""
    local, names = local_names(model), distributed.param_names(model, opt)
    state = opt.state_dict()
    for i, s in state["state"].items():
        if names[i] in local:
            state["state"][i] = {k: _gather(v) if v.dim() else v for k, v in s.items()}
    return state


def local_model_state(model: CausalLM, whole: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    local, rank, world = local_names(model), dist.get_rank(), dist.get_world_size()
    return {k: _slice(v, world, rank) if k in local else v for k, v in whole.items()}


def local_optimizer_state(model: CausalLM, opt: torch.optim.Optimizer, whole: dict) -> dict:
    """The inverse of full_optimizer_state: this rank's slice of the local experts' moments."""
    local, names = local_names(model), distributed.param_names(model, opt)
    rank, world = dist.get_rank(), dist.get_world_size()
    state = {int(i): ({k: _slice(v, world, rank) if v.dim() else v for k, v in s.items()}
                      if names[int(i)] in local else s) for i, s in whole["state"].items()}
    return {**whole, "state": state}
