"""Data parallelism under torchrun: the few collective calls the training loop makes, and nothing more.

`torchrun --nproc-per-node N -m seekmoe train CONFIG` sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the
process group (gloo on the CPU, nccl with CUDA). Without torchrun's environment every function is a no-op and
the loop runs as one process. The state lives in torch.distributed's own process group, not in this module.
With `parallel` "fsdp", `shard` applies FSDP2 and the full_* functions move whole tensors in and out of the shards;
save_sharded / load_sharded write and read each rank's shards with torch.distributed.checkpoint instead.

A collective that gets no answer within the timeout (a rank died, exited early or stalls) raises TrainError
naming the operation and the rank, instead of hanging: the loop's ranks all make the same calls in the same order.

`shutdown` must really end the process group: gloo runs it on C++ threads, and one still alive when Python exits
frees a tensor without the interpreter and aborts the process ("terminate called without an active exception",
SIGABRT). Nothing may keep the group referenced past destroy_process_group, hence the imports in `init` and the
errors raised outside their except blocks (`checked`).
"""

from __future__ import annotations

import datetime
import gc
import importlib
import os
import sys

import torch
import torch.distributed as dist

from seekmoe.model import sharded
from seekmoe.train.config import TrainError


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise TrainError(f"{name} must be an integer (torchrun sets it), got {value!r}") from None


def init(timeout_s: float = 300.0) -> None:
    """Join torchrun's process group; a no-op in a single process (no WORLD_SIZE, or WORLD_SIZE 1)."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1 or dist.is_initialized():
        return
    rank = _env_int("RANK", 0)
    if not 0 <= rank < world_size:
        raise TrainError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    # torch.distributed.nn.functional binds group.WORLD into its functions' default arguments when imported (FSDP
    # imports it; is_sharded imports FSDP in every run): imported after the group exists, it holds the group past
    # shutdown, and its threads until Python exits (see the module docstring). Imported now, it binds None.
    importlib.import_module("torch.distributed.nn")
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise TrainError(f"rank {rank}: cannot join the process group of {world_size} ranks within "
                         f"{timeout_s:g} s (MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                         f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {e}") from None


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 writes metrics, plots and checkpoints."""
    return rank() == 0


def checked(what: str, collective, /, *args, **kwargs):
    """collective(*args, **kwargs), or TrainError naming `what` when another rank does not answer.

    Raised after the except block, not inside it: there the backend's error would become the TrainError's
    __context__ (`from None` only hides it), and its traceback's frames hold the process group past shutdown.
    """
    try:
        return collective(*args, **kwargs)
    except RuntimeError as e:  # gloo and nccl raise DistBackendError, a RuntimeError
        error = TrainError(f"rank {rank()}: {what} across {world()} ranks failed: another rank exited, crashed or did "
                           f"not answer within dist_timeout_s ({e})")
    raise error


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks, in place; returns it."""
    if world() > 1:
        checked("all_reduce", dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if world() > 1:
        checked("barrier", dist.barrier)


def shutdown() -> None:
    """Leave the process group; its backend's threads end here if nothing else holds it (a sharded model does)."""
    if dist.is_initialized():
        redistribute = sys.modules.get("torch.distributed.tensor._redistribute")  # imported by FSDP2
        if redistribute is not None:
            redistribute.clear_redistribute_planner_cache()  # its plans hold the device mesh, the mesh the group
        gc.collect()  # a sharded model's parameters and mesh, in reference cycles
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], local: list[torch.nn.Parameter] = ()) -> None:
    """Mean of every gradient over the ranks, as one process would get from the whole batch: sum, then / world.

    One flat all-reduce after backward (no overlap with it, unlike DDP's buckets; plain and exact for the small
    models trained here). A parameter no rank gave a gradient keeps None, so AdamW skips it as it would in one
    process; one that only some ranks reached gets zeros from the others. `local` parameters (expert parallel:
    each rank holds other experts) already sum every rank's tokens: they are only divided by world, and get zeros
    where this rank's experts saw no token, as the whole expert tensor of one process does.
    """
    n = world()
    if n == 1:
        return
    for p in local:
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad.div_(n)
    skip = {id(p) for p in local}
    params = [p for p in params if id(p) not in skip]
    has_grad = all_reduce_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32))
    live = [p for p, h in zip(params, has_grad.tolist(), strict=True) if h > 0]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live])
    all_reduce_sum(flat).div_(n)
    start = 0
    for p in live:
        p.grad = flat[start:start + p.numel()].view_as(p).clone()
        start += p.numel()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float,
                   local: list[torch.nn.Parameter] = ()) -> float:
    """torch's clip_grad_norm_ over the whole model: `local` slices (expert parallel) add their squares over the
    ranks, the replicated rest counts once."""
    if not local or world() == 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    skip = {id(p) for p in local}
    zero = torch.zeros((), dtype=torch.float64)
    squares = sum((p.grad.detach().double().pow(2).sum() for p in params if p.grad is not None and id(p) not in skip),
                  zero)
    local_sq = all_reduce_sum(sum((p.grad.detach().double().pow(2).sum() for p in local), zero.clone()))
    total = (squares + local_sq).sqrt().item()
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return total


# ---- FSDP2 (parallel "fsdp"): sharded weights, gradients and optimizer state; full tensors in checkpoints ----------

def shard(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
    """fully_shard each decoder block, then the model (embeddings, final norm, head) over a 1-D mesh of the ranks.

    Buffers (rotary tables, the loss-free routing bias) are not sharded: every rank keeps a whole copy, and the loop
    moves the bias by the same all-reduced counts on every rank. Gradients are reduce-scattered as the sum / world,
    the mean one process gets from the whole batch: summed in the collective, then divided (gloo has no AVG op).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (world(),))
    for block in blocks:
        fully_shard(block, mesh=mesh).set_force_sum_reduction_for_comms(True)
    fully_shard(model, mesh=mesh).set_force_sum_reduction_for_comms(True)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def param_names(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by position (what opt.state_dict() numbers them) as the model names them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every rank takes part; rank 0 gets the whole state dict on the CPU, the others an empty one."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return checked("gathering the model", get_model_state_dict, model, options=_full_options(cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """opt.state_dict() as one process has it (parameters numbered by position), gathered to whole tensors on
    rank 0; None on the others. Every rank takes part."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = checked("gathering the optimizer state", get_optimizer_state_dict, model, opt,
                     options=_full_options(cpu_offload=True))
    if rank() != 0:
        return None
    index = {n: i for i, n in enumerate(param_names(model, opt))}
    return {"state": {index[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every rank passes the whole state dict (all read the same checkpoint) and keeps its shards of it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options())


def load_full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """The inverse of full_optimizer_state, on every rank: whole tensors in, each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = param_names(model, opt)
    by_name = {"state": {names[int(i)]: s for i, s in state["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=_full_options())


def save_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer, folder) -> list:
    """Every rank writes its shards of the model and AdamW state into `folder`; returns the param groups (JSON)."""
    return checked("saving the sharded checkpoint", sharded.save_sharded, model, opt, folder)


def load_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer | None, folder, param_groups: list) -> None:
    """The inverse of save_sharded, on any number of ranks (each reads the parts of its own shards)."""
    sharded.load_sharded(model, opt, folder, param_groups)


