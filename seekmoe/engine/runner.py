"""One forward step of the model over a mixed batch: prompt chunks and decode tokens, all against the latent cache.

Every new token of the step is flattened into one (N, D) batch for the parts that do not mix tokens (norms,
projections, experts); attention is the one place that looks at each sequence's past, read from the cache.

MLA has two equal ways to attend (DeepSeek-V2 §2.1.2):
- expanded: rebuild per-head keys and values from the cached latents with W_UK, W_UV (kv_b_proj), then ordinary
  attention. Cheap per query when many queries share the rebuild: prompt chunks use it. A prompt read in several
  chunks keeps what its earlier chunks rebuilt until its last chunk (Prefill), so each chunk rebuilds only its own
  tokens: rebuilding the whole context every chunk cost about as much as the attention itself at 3k tokens.
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

from seekmoe.engine import layout
from seekmoe.engine.cache import LatentCache
from seekmoe.engine.fused import FusedDecode, describe
from seekmoe.model import kernels
from seekmoe.model.int4 import Int4Linear
from seekmoe.model.model import MLA, CausalLM, MoE, apply_rope, few_tokens
from seekmoe.model.quant import Int8Linear, quantize_rows

ROPE_MATRIX_TOKENS = 16
# the most the expanded keys and values of prompts being read may hold (DeepSeek-V2-Lite's shape: 16k tokens of
# `small`'s, 670 MB; a prompt whose would not fit rebuilds them every chunk instead)
PREFILL_KV_BYTES = 1 << 30
# keys per block of a prompt chunk's attention over its context (chunked_attention)
ATTENTION_BLOCK = 512


@dataclass
class Segment:
    """A run of new tokens of one sequence: `length` tokens at positions start..start+length-1."""

    slots: torch.Tensor  # (T,) cache rows of every token of the sequence so far, new ones last
    start: int  # position of the first new token (= tokens already in the cache)
    length: int  # new tokens
    logits: bool  # whether the last new token's logits are wanted
    every: bool = False  # whether every new token's logits are wanted (prompt logprobs), not only the last's
    seq: int | None = None  # the sequence's id: its expanded keys and values are kept between its prompt chunks


class Prefill:
    """One sequence's keys and values rebuilt so far, per layer: rows [0, tokens) of (capacity, H, n) and
    (capacity, H, v) buffers that grow by doubling."""

    def __init__(self, layers: int):
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers
        self.tokens = [0] * layers

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def extend(self, i: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's rows [0, start + len(k)), the new ones (k, v) written at start."""
        end = start + len(k)
        if self.k[i] is None or len(self.k[i]) < end:
            cap = max(end, 2 * (len(self.k[i]) if self.k[i] is not None else 0))
            grown_k, grown_v = k.new_empty(cap, *k.shape[1:]), v.new_empty(cap, *v.shape[1:])
            if self.k[i] is not None:
                grown_k[:start], grown_v[:start] = self.k[i][:start], self.v[i][:start]
            self.k[i], self.v[i] = grown_k, grown_v
        self.k[i][start:end], self.v[i][start:end] = k, v
        self.tokens[i] = end
        return self.k[i][:end], self.v[i][:end]


class Absorbed:
    """W_UK and W_UV of one MLA layer, split per head from kv_b_proj, for the absorbed path. int8: also as int8
    rows for the kernel (a product per head in one call), where the rest of the model is quantized: kv_b_proj stays
    float in a quantized checkpoint, and its two float32 products per layer were a sixth of an int4 V2-Lite decode
    step (bandwidth-bound, 216 MB a token)."""

    def __init__(self, attn: MLA, int8: bool = False):
        h, n, v, lat = attn.n_heads, attn.nope_dim, attn.v_dim, attn.kv_lora_rank
        w = attn.kv_b_proj.weight.detach().view(h, n + v, lat)  # (H, n + v, L)
        self.w_uk = w[:, :n]  # (H, n, L): q_nope @ w_uk gives the query in latent space
        self.w_uv_t = w[:, n:].transpose(1, 2)  # (H, L, v): latent output @ w_uv_t gives per-head values
        self.uk = self.uv = None
        if int8:  # rows in the order the kernel reads them: an output's inputs contiguous
            self.uk = quantize_rows(w[:, :n].transpose(1, 2).contiguous())  # (H, L, n) int8, (H, L) scales
            self.uv = quantize_rows(w[:, n:])  # (H, v, L) int8, (H, v) scales

    def queries(self, q_nope: torch.Tensor) -> torch.Tensor:
        """q_nope (B, H, n) -> the queries in latent space (H, B, L)."""
        return self._per_head(q_nope.transpose(0, 1), self.w_uk, self.uk)

    def values(self, o_lat: torch.Tensor) -> torch.Tensor:
        """The attention's latent output (B, H, L) -> per-head values (H, B, v)."""
        return self._per_head(o_lat.transpose(0, 1), self.w_uv_t, self.uv)

    @staticmethod
    def _per_head(x: torch.Tensor, w: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """x (H, B, I) @ w (H, I, O): by the int8 rows' kernel for a decode step's few float32 rows, else bmm."""
        heads = kernels.int8_gemv_heads() if rows is not None and x.dtype == torch.float32 \
            and x.shape[1] <= kernels.MAX_ROWS else None
        if heads is not None:
            return heads(x.contiguous(), *rows)
        return torch.bmm(x, w.to(x.dtype))


def rope_matrices(cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """apply_rope as one matrix per token: x (N, ..., R) @ m (N, R, R) rotates x by its token's position, with
    model.apply_rope's output layout (pair members as halves). Built once per step, used by every layer."""
    n, half = cos.shape
    m = cos.new_zeros(n, 2 * half, 2 * half)
    first = torch.arange(0, 2 * half, 2) if interleave else torch.arange(half)  # where each pair's members sit
    second = first + 1 if interleave else first + half
    out = torch.arange(half)
    m[:, first, out], m[:, second, out] = cos, -sin  # out[j] = x1 cos - x2 sin
    m[:, second, out + half], m[:, first, out + half] = cos, sin  # out[j + R/2] = x2 cos + x1 sin
    return m


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      block: int = ATTENTION_BLOCK) -> torch.Tensor:
    """Causal attention of a prompt chunk's C queries, the last C of the T positions, over all T keys: q (C, H, n),
    k (T, H, n), v (T, H, v) -> (C, H, v). The keys are taken a block at a time with a running max and sum
    (flash attention's online softmax), so the (H, C, T) scores are never whole: SDPA's math path, which a mask
    or unequal key and value widths send it to, writes and rereads them all, and at 16k tokens of context that
    traffic cost three times the arithmetic (measured: 0.74 against 0.25 s a layer on `small`, one thread)."""
    c, t, dtype = len(q), len(k), q.dtype
    q, k, v = q.float(), k.float(), v.float()  # the running sums in float32 whatever the model's dtype
    qh = q.transpose(0, 1) * scale  # (H, C, n)
    kh, vh = k.transpose(0, 1), v.transpose(0, 1)  # (H, T, n), (H, T, v)
    top = q.new_full((qh.shape[0], c, 1), float("-inf"))  # (H, C, 1): each query's running max
    total = q.new_zeros(qh.shape[0], c, 1)  # (H, C, 1): its running sum of exp(score - max)
    acc = q.new_zeros(qh.shape[0], c, v.shape[-1])  # (H, C, v)
    rows = torch.arange(c)[:, None] + (t - c)  # (C, 1): each query's position
    for start in range(0, t, block):
        end = min(t, start + block)
        s = torch.matmul(qh, kh[:, start:end].transpose(1, 2))  # (H, C, b)
        if end > t - c:  # the block reaches the chunk's own keys: each query sees those up to its own position
            s.masked_fill_(torch.arange(start, end)[None, :] > rows, float("-inf"))
        new_top = torch.maximum(top, s.amax(-1, keepdim=True))  # finite: every query sees key 0 in block 0
        s.sub_(new_top).exp_()
        kept = (top - new_top).exp()  # rescales what earlier blocks summed
        total = total * kept + s.sum(-1, keepdim=True)
        acc = acc * kept + torch.matmul(s, vh[:, start:end])
        top = new_top
    return (acc / total).transpose(0, 1).to(dtype)  # (C, H, v)


class ModelRunner:
    """Runs `model`'s weights step by step against a LatentCache. The model's values are not changed; its weights
    are laid out for decoding (layout.prepare: fused projections, the faster storage order)."""

    def __init__(self, model: CausalLM, cache: LatentCache, absorb: bool = True):
        self.model, self.cache, self.absorb = model, cache, absorb
        self.cfg = model.config
        # before layout fuses them: whether the model's projections are int8 or int4
        quantized = kernels.int8_gemv_heads() is not None and any(
            isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())
        self.layers, self.lm_head = layout.prepare(model)
        self.absorbed = [Absorbed(layer.self_attn, int8=quantized) for layer in model.model.layers]
        # tokens routed to each expert of each MoE layer since start, for monitoring: {layer index: (E,) int64}
        self.expert_counts = {i: torch.zeros(self.cfg.n_routed_experts, dtype=torch.long)
                              for i, layer in enumerate(model.model.layers) if isinstance(layer.mlp, MoE)}
        self._one = torch.ones((), dtype=torch.long)
        # the attention kernel for decode steps, where the cache is one it reads (float32 or int8, contiguous: fixed
        # for the cache's life)
        fits = absorb and all(kv.dtype in (torch.float32, torch.int8) and kv.is_contiguous() for kv in cache.kv)
        self._mla_attend = kernels.mla_attend() if fits else None
        self._grouped_experts = kernels.experts_grouped() is not None
        # a decode step (one new token per sequence) as one native call a layer, where the kernel takes every layer
        # (None: the step below, which takes everything)
        self.fused_layers: FusedDecode | None = describe(model, self.layers, self.absorbed) \
            if self._mla_attend is not None else None
        self._prefills: dict[int, Prefill] = {}  # sequence id -> its prompt's keys and values, while it is read
        # what one token's rebuilt keys and values take over all layers: (n + v) numbers per head
        attns = [layer.self_attn for layer in model.model.layers]
        self._prefill_token_bytes = model.model.embed_tokens.weight.element_size() * sum(
            a.n_heads * (a.nope_dim + a.v_dim) for a in attns)

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, segments: list[Segment],
                spliced: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """token_ids, positions (N,): the step's new tokens, segment after segment. spliced: (indices (M,), rows
        (M, D)) that replace those tokens' embeddings (media). Returns (S, vocab) float32 logits, in order: a row
        for each segment that wants its last token's, `length` rows for each that wants every token's."""
        m, cfg = self.model.model, self.cfg
        if self.fused_layers is not None and spliced is None and all(s.length == 1 and s.logits for s in segments):
            return self._fused_step(token_ids, positions, segments)
        # the slot each new token writes: the last `length` rows of its segment's slots
        write = torch.cat([s.slots[s.start:s.start + s.length] for s in segments])  # (N,)
        x = m.embed_tokens(token_ids)  # (N, D)
        if spliced is not None:
            x[spliced[0]] = spliced[1].to(x.dtype)
        cos, sin = m.rotary_emb(positions)  # (N, R/2)
        # a few tokens: rope as one small matrix product per layer; many: elementwise, cheaper than N tiny products
        rot = rope_matrices(cos, sin, cfg.rope_interleave).to(x.dtype) if len(x) <= ROPE_MATRIX_TOKENS else None
        lat, r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        rows = self._cached_rows(segments, x.dtype)
        self._open_prefills(segments)
        for i, (layer, fused) in enumerate(zip(m.layers, self.layers, strict=True)):
            attn = layer.self_attn
            q, c_kv, k_pe = fused.attn_in(layer.input_layernorm(x)).split([fused.q_width, lat, r], dim=-1)
            if attn.q_lora_rank is not None:
                q = fused.q_b_proj(attn.q_a_layernorm(q))
            q_nope, q_pe = q.view(len(x), attn.n_heads, attn.qk_dim).split([attn.nope_dim, r], dim=-1)
            if rot is not None:
                q_pe, k_pe = torch.bmm(q_pe, rot), torch.bmm(k_pe[:, None], rot)[:, 0]  # (N, H, R), (N, R)
            else:
                q_pe = apply_rope(q_pe[None], cos[None], sin[None], cfg.rope_interleave)[0]
                k_pe = apply_rope(k_pe[None, :, None], cos[None], sin[None], cfg.rope_interleave)[0, :, 0]
            self.cache.write(i, write, torch.cat([attn.kv_a_layernorm(c_kv), k_pe], dim=-1))
            x = x + fused.o_proj(self._attend(i, attn, q_nope, q_pe, segments, rows))  # (N, D)
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp
            if isinstance(mlp, MoE):
                routing = mlp.gate(h)
                self.expert_counts[i].index_put_((routing.topk_idx.flatten(),), self._one, accumulate=True)
                if len(x) * cfg.num_experts_per_tok < 2 * cfg.n_routed_experts or (
                        self._grouped_experts and h.dtype == torch.float32):
                    # a few pairs (decoding), or any count where the grouped kernel runs them: each used expert's
                    # weights read once for all its rows, in tiles (a 256-token prompt on `small`: 480 -> 700-790
                    # tokens/s, where torch's grouped GEMM runs one small GEMM after another, one per expert)
                    y = few_tokens(mlp.experts, h, routing.topk_idx, routing.topk_weight)
                else:
                    y = mlp.experts(h, routing.topk_idx, routing.topk_weight)
                if mlp.shared_experts is not None:
                    y = y + fused.swiglu(h)
                x = x + y
            else:
                x = x + fused.swiglu(h)
        self._close_prefills(segments)
        rows, end = [], 0
        for s in segments:
            end += s.length
            if s.every:
                rows += range(end - s.length, end)
            elif s.logits:
                rows.append(end - 1)
        if not rows:
            return x.new_zeros(0, cfg.vocab_size, dtype=torch.float32)
        # logits only where a token will be sampled or a prompt token scored: the vocabulary projection is the
        # model's widest matrix, and a scored chunk's (length, vocab) rows are bounded by max_step_tokens
        return self.lm_head(m.norm(x[torch.tensor(rows, dtype=torch.long)])).float()

    def _fused_step(self, token_ids: torch.Tensor, positions: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """B sequences' one new token each, each layer one kernel call (engine/fused.py): their logits (B, vocab)."""
        m = self.model.model
        x = m.embed_tokens(token_ids)  # (B, D)
        cos, sin = (t.contiguous() for t in m.rotary_emb(positions))  # (B, R/2) each
        slots, offsets = self._cached_rows(segments, x.dtype)
        meta = self.cache.meta or [None] * len(self.cache.kv)
        for i, desc in enumerate(self.fused_layers.descs):
            self.fused_layers.run(desc, x, self.cache.kv[i], cos, sin, slots, self.expert_counts.get(i), offsets,
                                  meta=meta[i])
        self._prefills = {}  # as _close_prefills leaves them after a step in which every sequence samples
        return self.lm_head(m.norm(x)).float()

    def _open_prefills(self, segments: list[Segment]) -> None:
        """Keep the Prefills of the sequences in this step, and start one for each that reads a prompt chunk with
        more to come, if its context's keys and values fit PREFILL_KV_BYTES (else a copy beside the rebuild would
        only double the step's memory): they are kept from chunk to chunk."""
        kept = {s.seq: self._prefills[s.seq] for s in segments if s.seq in self._prefills}
        for s in segments:
            if (s.seq is not None and s.seq not in kept and not s.logits and (s.length > 1 or not self.absorb)
                    and (s.start + s.length) * self._prefill_token_bytes <= PREFILL_KV_BYTES):
                kept[s.seq] = Prefill(len(self.absorbed))
        self._prefills = kept

    def _close_prefills(self, segments: list[Segment]) -> None:
        """Drop the Prefills of prompts read to their end, and any past PREFILL_KV_BYTES."""
        kept, total = {}, 0
        for s in segments:
            if (p := self._prefills.get(s.seq)) is not None and not s.logits:
                total += p.nbytes()
                if total <= PREFILL_KV_BYTES:
                    kept[s.seq] = p
        self._prefills = kept

    def _cached_rows(self, segments: list[Segment], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a decode step the attention kernel can take (float32): every sequence's cache rows, new one
        included, end to end (N,), and where each sequence's begin (B + 1,); built once for all layers."""
        if self._mla_attend is None or dtype != torch.float32 or any(s.length != 1 for s in segments):
            return None
        if len(segments) == 1:
            return segments[0].slots[:segments[0].start + 1], torch.tensor([0, segments[0].start + 1])
        lengths = torch.tensor([0] + [s.start + 1 for s in segments])
        return torch.cat([s.slots[:s.start + 1] for s in segments]), lengths.cumsum(0)

    def _attend(self, i: int, attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, segments: list[Segment],
                rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.absorb and all(s.length == 1 for s in segments):  # the common decode step: one batched call
            return self._absorbed(i, attn, q_nope, q_pe, segments, rows)
        outs, start = [], 0
        for s in segments:
            qn, qp = q_nope[start:start + s.length], q_pe[start:start + s.length]
            if s.length == 1 and self.absorb:
                outs.append(self._absorbed(i, attn, qn, qp, [s]))
            else:
                outs.append(self._expanded(i, attn, qn, qp, s))
            start += s.length
        return torch.cat(outs)

    def _expanded(self, i: int, attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, s: Segment) -> torch.Tensor:
        """One sequence's chunk of C new tokens over its T cached ones (the new ones included), keys rebuilt: only
        the chunk's own when its sequence's earlier chunks left theirs in a Prefill."""
        h, n, v = attn.n_heads, attn.nope_dim, attn.v_dim
        t, c = s.start + s.length, s.length
        kept = self._prefills.get(s.seq) if s.seq is not None else None
        first = 0 if kept is None or kept.tokens[i] != s.start else s.start  # rows to rebuild: [first, T)
        ctx = self.cache.read(i, s.slots[first:t], q_nope.dtype, "latent")  # (T - first, L)
        k_nope, val = attn.kv_b_proj(ctx).view(t - first, h, n + v).split([n, v], dim=-1)  # (., H, n), (., H, v)
        if kept is not None:
            k_nope, val = kept.extend(i, k_nope, val, first)  # (T, H, n), (T, H, v)
        k_pe = self.cache.read(i, s.slots[:t], q_nope.dtype, "rope")  # (T, R)
        k = torch.cat([k_nope, k_pe[:, None].expand(t, h, attn.rope_dim)], dim=-1)  # (T, H, n + R)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (C, H, n + R)
        if c < t:  # a later chunk: query i sits at position T - C + i and sees keys 0..T - C + i
            return chunked_attention(q, k, val, attn.softmax_scale).reshape(c, h * v)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), val.transpose(0, 1),
                                             is_causal=c > 1, scale=attn.softmax_scale)  # (H, C, v)
        return out.transpose(0, 1).reshape(c, h * v)

    def _absorbed(self, i: int, attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, segments: list[Segment],
                  rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """B sequences, one new token each, attending over their cached latents; W_UK, W_UV folded in. rows: the
        step's cache rows for the attention kernel (_cached_rows), which reads them where they sit."""
        ab, lat = self.absorbed[i], attn.kv_lora_rank
        b = len(segments)
        q_lat = ab.queries(q_nope)  # (H, B, L)
        q = torch.cat([q_lat.transpose(0, 1), q_pe], dim=-1)  # (B, H, L + R)
        if rows is not None:
            meta = None if self.cache.meta is None else self.cache.meta[i]
            o_lat = self._mla_attend(q, self.cache.kv[i], rows[0], rows[1], lat, attn.softmax_scale, meta)  # (B, H, L)
            return ab.values(o_lat).transpose(0, 1).reshape(b, -1)  # (B, H * v)
        lengths = [s.start + 1 for s in segments]
        t = max(lengths)
        if b == 1:
            ctx = self.cache.read(i, segments[0].slots[:t], q.dtype)[None]  # (1, T, L + R)
            mask = None
        else:
            rows = torch.stack([F.pad(s.slots[:s.start + 1], (0, t - s.start - 1)) for s in segments])  # (B, T)
            ctx = self.cache.read(i, rows, q.dtype)  # (B, T, L + R)
            mask = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T): padding
        scores = torch.bmm(q, ctx.transpose(1, 2)) * attn.softmax_scale  # (B, H, T)
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        p = scores.float().softmax(dim=-1).to(q.dtype)
        o_lat = torch.bmm(p, ctx[..., :lat])  # (B, H, L)
        return ab.values(o_lat).transpose(0, 1).reshape(b, -1)  # (B, H * v)
