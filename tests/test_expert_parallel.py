"""ParallelExperts on 2 gloo processes against RoutedExperts in one: the same outputs and gradients, also when
every token chooses the other rank's experts (that rank receives no row but must still take part in backward)."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn  # before any group exists, as seekmoe.train.distributed.init does (see there)
import torch.multiprocessing as mp

from seekmoe.model.model import RoutedExperts
from tests.test_distributed import HANG_S, free_port

E, D, F, N, K = 4, 8, 12, 10, 2  # widths in multiples of 16 bytes, as grouped_mm needs


def inputs(rank: int, only_second_half: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(N, D, generator=g)
    low = E // 2 if only_second_half else 0
    idx = torch.stack([torch.randperm(E - low, generator=g)[:K] + low for _ in range(N)])  # distinct per token
    return x, idx, torch.rand(N, K, generator=g)


def whole_experts() -> RoutedExperts:
    experts = RoutedExperts(E, D, F)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return experts


def reference(only_second_half: bool):
    """One process with both ranks' tokens: outputs per rank, and the gradients of the sum of both losses."""
    experts = whole_experts()
    outs, xs = [], []
    for rank in range(2):
        x, idx, w = inputs(rank, only_second_half)
        x.requires_grad_()
        outs.append(experts(x, idx, w))
        xs.append(x)
    sum((o * (r + 1)).sum() for r, o in enumerate(outs)).backward()
    return [o.detach() for o in outs], [x.grad for x in xs], {n: p.grad for n, p in experts.named_parameters()}


def worker(rank: int, port: int, only_second_half: bool, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # gloo's default timeout is 30 minutes: a rank that is lost fails the other within HANG_S instead
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=HANG_S))
    try:
        from seekmoe.train.expert_parallel import ParallelExperts

        experts = ParallelExperts(whole_experts(), rank, 2)
        x, idx, w = inputs(rank, only_second_half)
        x.requires_grad_()
        out = experts(x, idx, w)
        (out * (rank + 1)).sum().backward()
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in experts.named_parameters()}
        results[rank] = (out.detach().clone(), x.grad.clone(), grads)
    finally:
        dist.destroy_process_group()


def assert_same_sums(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 sums taken in another order (grouped by rank, other kernels on another CPU): within
    1e-5 of the tensor's largest value (measured: 2e-7). A row sent to the wrong expert or back to the wrong token,
    or a gradient lost, differs by the order of that value itself."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("only_second_half", [False, True])
def test_parallel_experts_match_one_process(only_second_half):
    with mp.Manager() as manager:  # the manager's process ends with the block
        shared = manager.dict()
        mp.start_processes(worker, args=(free_port(), only_second_half, shared), nprocs=2, start_method="spawn")
        results = dict(shared)
    outs, x_grads, param_grads = reference(only_second_half)
    for rank in range(2):
        out, x_grad, grads = results[rank]
        assert_same_sums(out, outs[rank])
        assert_same_sums(x_grad, x_grads[rank])
        for name, grad in grads.items():  # this rank's slice of the whole gradient: every rank's tokens summed
            whole = param_grads[name][rank * 2:(rank + 1) * 2]
            if grad is None:  # no token reached these experts: the whole gradient is zero there
                assert only_second_half and rank == 0 and whole.abs().max() == 0
            else:
                assert_same_sums(grad, whole)
