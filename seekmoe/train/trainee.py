"""What the loop trains: the model, the parameters the optimizer moves, and how a checkpoint holds them.

Pretraining and full fine-tuning train every weight (full_trainee); LoRA trains an adapter
(seekmoe/train/finetune.py), the multimodal stages the encoders, then everything (seekmoe/train/multimodal.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.model import CausalLM
from seekmoe.train import distributed, expert_parallel


@dataclass
class Trainee:
    """What the loop trains: the model, the parameters the optimizer moves, and how a checkpoint holds them."""
    model: CausalLM  # for LoRA, with the adapter layers injected
    params: list[torch.nn.Parameter]
    save: Callable[[Path], None]  # write the weights into a checkpoint folder
    load: Callable[[Path], None]  # and read them back
    sharded: bool = False  # FSDP2: params are DTensor shards; checkpoints gather whole tensors on rank 0
    local: list[torch.nn.Parameter] = field(default_factory=list)  # expert parallel: this rank's experts only


def full_trainee(model: CausalLM) -> Trainee:
    """Every weight trains; a checkpoint holds the whole model in the Hugging Face layout."""
    sharded, names = distributed.is_sharded(model), expert_parallel.local_names(model)
    local = [p for n, p in model.named_parameters() if n in names]

    def load(path: Path) -> None:
        state = load_model(path).state_dict()
        if sharded:
            distributed.load_full_model_state(model, state)
        elif local:
            model.load_state_dict(expert_parallel.local_model_state(model, state))
        else:
            model.load_state_dict(state)

    return Trainee(model, list(model.parameters()), lambda path: save_model(model, path), load, sharded, local)


__all__ = ["Trainee", "full_trainee"]
