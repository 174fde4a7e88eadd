"""seekmoe: train, fine-tune and serve DeepSeek-V2/V3-style Mixture-of-Experts models on your own machines."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# imported on first use, so `seekmoe inspect` and other torch-free commands start fast
_LAZY = {
    "ModelConfig": "seekmoe.model.config", "ConfigError": "seekmoe.model.config",
    "CausalLM": "seekmoe.model.model",
    "LLM": "seekmoe.llm", "SamplingParams": "seekmoe.engine.sampling", "Completion": "seekmoe.llm",
    "Client": "seekmoe.client", "AsyncClient": "seekmoe.client", "APIError": "seekmoe.client",
    "load_model": "seekmoe.model.checkpoint", "save_model": "seekmoe.model.checkpoint",
    "CheckpointError": "seekmoe.model.checkpoint", "SeekmoeError": "seekmoe.errors",
}
__all__ = ["LLM", "APIError", "AsyncClient", "CausalLM", "CheckpointError", "Client", "Completion", "ConfigError",
           "ModelConfig", "SamplingParams", "SeekmoeError", "load_model", "save_model"]

if TYPE_CHECKING:
    from seekmoe.client import APIError, AsyncClient, Client
    from seekmoe.engine.sampling import SamplingParams
    from seekmoe.errors import SeekmoeError
    from seekmoe.llm import LLM, Completion
    from seekmoe.model.checkpoint import CheckpointError, load_model, save_model
    from seekmoe.model.config import ConfigError, ModelConfig
    from seekmoe.model.model import CausalLM


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'seekmoe' has no attribute {name!r}")
