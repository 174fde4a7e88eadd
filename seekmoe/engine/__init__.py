"""Engine: generation over token ids (KV cache, batching, sampling); knows nothing of text or HTTP."""
