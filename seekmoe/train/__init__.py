"""Training: the loop and its checkpoints, token shards, expert balance, data and expert parallelism, SFT and
LoRA fine-tuning."""
