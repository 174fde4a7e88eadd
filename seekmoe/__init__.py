"""seekmoe: train, fine-tune and serve DeepSeek-V2/V3-style Mixture-of-Experts models on your own machines."""

from seekmoe.checkpoint import CheckpointError, load_model, save_model
from seekmoe.config import ConfigError, ModelConfig
from seekmoe.model import CausalLM

__all__ = ["CausalLM", "CheckpointError", "ConfigError", "ModelConfig", "load_model", "save_model"]
__version__ = "0.1.0"
