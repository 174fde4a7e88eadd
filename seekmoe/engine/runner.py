"""One forward step of the model over a mixed batch: prompt chunks and decode tokens, all against the latent cache.

Every new token of the step is flattened into one (N, D) batch for the parts that do not mix tokens (norms,
projections, experts); attention is the one place that looks at each sequence's past, read from the cache.

MLA has two equal ways to attend (DeepSeek-V2 §2.1.2):
- expanded: rebuild per-head keys and values from the cached latents with W_UK, W_UV (kv_b_proj), then ordinary
  attention. Cheap per query when many queries share the rebuild: prompt chunks use it.
- absorbed: fold W_UK into the query and W_UV into the output, so each head attends straight over the cached
  latents (a multi-query attention whose keys are [c_KV, k_rope] and values c_KV). Nothing per-head is rebuilt
  for past tokens, so a decode step costs O(T * (L + R)) per head instead of rebuilding T keys: decode uses it.

Shape legend: N new tokens in the step, B decoding sequences, T context length, H heads, L kv_lora_rank,
R qk_rope_head_dim, n qk_nope_head_dim, v v_head_dim, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seekmoe.engine.cache import LatentCache
from seekmoe.model import MLA, CausalLM, MoE


@dataclass
class Segment:
    """A run of new tokens of one sequence: `length` tokens at positions start..start+length-1."""

    slots: torch.Tensor  # (T,) cache rows of every token of the sequence so far, new ones last
    start: int  # position of the first new token (= tokens already in the cache)
    length: int  # new tokens
    logits: bool  # whether the last new token's logits are wanted


class Absorbed:
    """W_UK and W_UV of one MLA layer, split per head from kv_b_proj, for the absorbed path."""

    def __init__(self, attn: MLA):
        h, n, v, lat = attn.n_heads, attn.nope_dim, attn.v_dim, attn.kv_lora_rank
        w = attn.kv_b_proj.weight.detach().view(h, n + v, lat)  # (H, n + v, L)
        self.w_uk = w[:, :n]  # (H, n, L): q_nope @ w_uk gives the query in latent space
        self.w_uv_t = w[:, n:].transpose(1, 2)  # (H, L, v): latent output @ w_uv_t gives per-head values


class ModelRunner:
    """Runs `model`'s weights step by step against a LatentCache. The model itself is not changed."""

    def __init__(self, model: CausalLM, cache: LatentCache, absorb: bool = True):
        self.model, self.cache, self.absorb = model, cache, absorb
        self.cfg = model.config
        self.absorbed = [Absorbed(layer.self_attn) for layer in model.model.layers]
        # tokens routed to each expert of each MoE layer since start, for monitoring: {layer index: (E,) int64}
        self.expert_counts = {i: torch.zeros(self.cfg.n_routed_experts, dtype=torch.long)
                              for i, layer in enumerate(model.model.layers) if isinstance(layer.mlp, MoE)}

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, segments: list[Segment],
                spliced: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """token_ids, positions (N,): the step's new tokens, segment after segment. spliced: (indices (M,), rows
        (M, D)) that replace those tokens' embeddings (media). Returns (S, vocab) float32 logits for the segments
        that want them, in order."""
        m = self.model.model
        # the slot each new token writes: the last `length` rows of its segment's slots
        write = torch.cat([s.slots[s.start:s.start + s.length] for s in segments])  # (N,)
        cos, sin = m.rotary_emb(positions[None])  # (1, N, R/2)
        x = m.embed_tokens(token_ids)[None]  # (1, N, D)
        if spliced is not None:
            x[0, spliced[0]] = spliced[1].to(x.dtype)
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q_nope, q_pe = attn.queries(h, cos, sin)  # (1, N, H, n), (1, N, H, R)
            c_kv, k_pe = attn.latent(h, cos, sin)  # (1, N, L), (1, N, R)
            kv = self.cache.kv[i]
            kv[write] = torch.cat([c_kv[0], k_pe[0]], dim=-1).to(kv.dtype)
            out = self._attend(i, attn, kv, q_nope[0], q_pe[0], segments)  # (N, H * v)
            x = x + attn.o_proj(out[None])
            h = layer.post_attention_layernorm(x)
            if isinstance(layer.mlp, MoE):
                y, routing = layer.mlp(h)
                counts = self.expert_counts[i]
                counts += torch.bincount(routing.topk_idx.flatten(), minlength=len(counts))
                x = x + y
            else:
                x = x + layer.mlp(h)
        ends = [0]
        for s in segments:
            ends.append(ends[-1] + s.length)
        last = torch.tensor([ends[j + 1] - 1 for j, s in enumerate(segments) if s.logits], dtype=torch.long)
        if last.numel() == 0:
            return x.new_zeros(0, self.cfg.vocab_size, dtype=torch.float32)
        return self.model.lm_head(m.norm(x[0, last])).float()  # logits only where a token will be sampled

    def _attend(self, i: int, attn: MLA, kv: torch.Tensor, q_nope: torch.Tensor, q_pe: torch.Tensor,
                segments: list[Segment]) -> torch.Tensor:
        if self.absorb and all(s.length == 1 for s in segments):  # the common decode step: one batched call
            return self._absorbed(i, attn, kv, q_nope, q_pe, segments)
        outs, start = [], 0
        for s in segments:
            qn, qp = q_nope[start:start + s.length], q_pe[start:start + s.length]
            if s.length == 1 and self.absorb:
                outs.append(self._absorbed(i, attn, kv, qn, qp, [s]))
            else:
                outs.append(self._expanded(attn, kv, qn, qp, s))
            start += s.length
        return torch.cat(outs)

    def _expanded(self, attn: MLA, kv: torch.Tensor, q_nope: torch.Tensor, q_pe: torch.Tensor,
                  s: Segment) -> torch.Tensor:
        """One sequence's chunk of C new tokens over its T cached ones (the new ones included), keys rebuilt."""
        h, n, v, lat = attn.n_heads, attn.nope_dim, attn.v_dim, attn.kv_lora_rank
        ctx = kv[s.slots[:s.start + s.length]].to(q_nope.dtype)  # (T, L + R)
        t, c = ctx.shape[0], s.length
        k_nope, val = attn.kv_b_proj(ctx[:, :lat]).view(t, h, n + v).split([n, v], dim=-1)  # (T, H, n), (T, H, v)
        k = torch.cat([k_nope, ctx[:, None, lat:].expand(t, h, attn.rope_dim)], dim=-1)  # (T, H, n + R)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (C, H, n + R)
        # query i sits at position T - C + i and sees keys 0..T - C + i
        mask = None if c == t else torch.ones(c, t, dtype=torch.bool).tril(t - c)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), val.transpose(0, 1),
                                             attn_mask=mask, is_causal=c == t and c > 1,
                                             scale=attn.softmax_scale)  # (H, C, v)
        return out.transpose(0, 1).reshape(c, h * v)

    def _absorbed(self, i: int, attn: MLA, kv: torch.Tensor, q_nope: torch.Tensor, q_pe: torch.Tensor,
                  segments: list[Segment]) -> torch.Tensor:
        """B sequences, one new token each, attending over their cached latents; W_UK, W_UV folded in."""
        ab, lat = self.absorbed[i], attn.kv_lora_rank
        b = len(segments)
        q_lat = torch.bmm(q_nope.transpose(0, 1), ab.w_uk.to(q_nope.dtype))  # (H, B, L)
        q = torch.cat([q_lat.transpose(0, 1), q_pe], dim=-1)  # (B, H, L + R)
        lengths = [s.start + 1 for s in segments]
        t = max(lengths)
        if b == 1:
            ctx = kv[segments[0].slots[:t]][None]  # (1, T, L + R)
            mask = None
        else:
            rows = torch.stack([F.pad(s.slots[:s.start + 1], (0, t - s.start - 1)) for s in segments])  # (B, T)
            ctx = kv[rows]  # (B, T, L + R)
            mask = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T): padding
        ctx = ctx.to(q.dtype)
        scores = torch.bmm(q, ctx.transpose(1, 2)) * attn.softmax_scale  # (B, H, T)
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        p = scores.float().softmax(dim=-1).to(q.dtype)
        o_lat = torch.bmm(p, ctx[..., :lat])  # (B, H, L)
        out = torch.bmm(o_lat.transpose(0, 1), ab.w_uv_t.to(q.dtype))  # (H, B, v)
        return out.transpose(0, 1).reshape(b, -1)  # (B, H * v)
