"""The model and its files: ModelConfig, the DeepSeek-V2 network, checkpoints (safetensors, int8, LoRA)."""
