"""Embeddings: one unit vector a prompt, from the model's final hidden states (after the last norm), mean-pooled over
the prompt's tokens and L2-normalised.

Mean rather than last-token pooling: a last token's state is tuned to predict the next token, and only models
trained for it (E5-Mistral, SFR) make it stand for the whole text; seekmoe's models are not, and the mean of every
position (each one having read its own prefix) is the steadier summary, as sentence-transformers' default mean
pooling is. Unit length, so a dot product is the cosine similarity, as OpenAI's embeddings are.

A pass reads whole prompts through the model's own blocks, no KV cache: nothing of the engine's state is touched,
so it can run between engine steps (EngineLoop.embed). Shape legend: B prompts, T the longest, D model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seekmoe.model.model import CausalLM


@torch.inference_mode()
def embed(model: CausalLM, prompts: list[list[int]]) -> torch.Tensor:
    """(B, D) float32 unit rows, one a prompt (each a non-empty list of token ids)."""
    device = model.model.embed_tokens.weight.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    t = int(lengths.max())
    # right padding changes nothing of the real tokens: attention is causal, so none sees a pad after it, and
    # experts route each token alone
    ids = torch.zeros(len(prompts), t, dtype=torch.long, device=device)  # (B, T)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p, device=device)
    # (B, T, D), summed in float32: a bf16 sum of thousands of rows loses digits
    h = model.hidden_states(ids)[0].float()
    real = (torch.arange(t, device=device)[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
    mean = (h * real).sum(dim=1) / lengths[:, None]  # (B, D)
    return F.normalize(mean, dim=-1).cpu()


def batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Prompt indices in passes of at most max_tokens padded tokens (a longer prompt goes alone), shortest first so
    little of a pass is padding."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # sorted: the newcomer is the longest, so it sets the pass's padded width
        if out and (len(out[-1]) + 1) * lengths[i] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out
