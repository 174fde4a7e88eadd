"""The sharded checkpoint format (checkpoint_format "sharded"): each rank writes its own shards with
torch.distributed.checkpoint; any number of ranks, or one process, reads them back.

Through DCP's Hugging Face storage: safetensors files only (DCP's default writer pickles its metadata, which we
never read back). Tensors are named model/<parameter> and optim/<parameter>/<exp_avg|exp_avg_sq|step>.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _flat_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], list]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    flat = {f"model/{k}": v for k, v in get_model_state_dict(model).items()}
    if opt is None:
        return flat, []
    optim = get_optimizer_state_dict(model, opt)  # AdamW's moments are created (zeros) if no step ran yet
    for name, state in optim["state"].items():
        for key, value in state.items():
            flat[f"optim/{name}/{key}"] = value
    return flat, optim["param_groups"]


def save_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer, folder) -> list:
    """Every rank writes its shards of the model and AdamW state into `folder`; returns the param groups (JSON)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    flat, groups = _flat_state(model, opt)
    dcp.save(flat, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=_world() > 1),
             no_dist=_world() == 1)
    return groups


def load_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer | None, folder, param_groups: list) -> None:
    """The inverse of save_sharded, on any number of ranks (each reads the parts of its own shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    flat, _ = _flat_state(model, opt)
    dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=_world() == 1)
    set_model_state_dict(model, {k[len("model/"):]: v for k, v in flat.items() if k.startswith("model/")})
    if opt is not None:
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            if key.startswith("optim/"):
                name, field = key[len("optim/"):].rsplit("/", 1)
                state.setdefault(name, {})[field] = value
        set_optimizer_state_dict(model, opt, {"state": state, "param_groups": param_groups})


__all__ = ["load_sharded", "save_sharded"]
