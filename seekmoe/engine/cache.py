"""The paged latent cache: what MLA keeps per token, in fixed-size blocks shared by every running sequence.

Per token and layer MLA needs only the normalised latent c_KV (L wide) and the rotated key shared by all heads
(R wide), so a slot is one row of L + R numbers, never per-head keys or values. Slots live in blocks of
`block_size` tokens; a sequence owns a list of blocks (its block table), so memory is handed out and taken back a
block at a time and no sequence reserves room for a maximum length it may never reach.

The cache is float32 (or the model's dtype), or int8: each row's latent and rope parts rounded to int8 at their own
scale, the scales and each part's sum in `meta` (model/csrc/attend.c, "the int8 latent cache"). int8 is a quarter of
the bytes, and the decode kernel multiplies it at twice float32's rate, which is what a step at 4k tokens of context
and more is bound by. Whatever reads the rows as numbers (a prompt's attention, the torch paths) reads them through
`read`, dequantized.

Full blocks of a prompt are remembered by a hash of every token up to and including them, so a second request
with the same prefix (a system prompt) maps those blocks instead of computing them again. A block whose last user
finished stays findable until its memory is needed for something else (least recently freed goes first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from seekmoe.errors import SeekmoeError
from seekmoe.model.config import ModelConfig
from seekmoe.model.quant import quantize_rows


class CacheError(SeekmoeError, ValueError):
    """The cache cannot be built as asked (a budget too small for one block, an unknown dtype)."""


CACHE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
META = 4  # an int8 row's [scale of its latent part, scale of its rope part, their sums of int8 values]


def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Latent-cache bytes one token costs over all layers: (L + R) numbers per layer (int8: and META floats)."""
    width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if dtype == torch.int8:
        return cfg.num_hidden_layers * (width + 4 * META)
    return cfg.num_hidden_layers * width * torch.finfo(dtype).bits // 8


def quantize_latent(rows: torch.Tensor, lat: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows (N, L + R) -> int8 (N, L + R) and meta (N, META) float32: the latent part (first `lat` columns) and the
    rope part each rounded at its own largest magnitude / 127 (quantize_rows; the rope part is not normalised and
    can be far larger); csrc/attend.c's seekmoe_quantize_latent does the same in the decode kernel."""
    q, meta = torch.empty(rows.shape, dtype=torch.int8), torch.empty(len(rows), META)
    for part, cols in enumerate((slice(0, lat), slice(lat, rows.shape[1]))):
        q[:, cols], meta[:, part] = quantize_rows(rows[:, cols])
        meta[:, 2 + part] = q[:, cols].sum(-1, dtype=torch.float32)
    return q, meta


def mha_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """What a plain multi-head cache of the same shape would cost: every head's key and value."""
    per_layer = cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    return cfg.num_hidden_layers * per_layer * torch.finfo(dtype).bits // 8


def salt_hash(salt: str) -> bytes:
    """What a cache salt starts a prefix's hash chain with (LatentCache.match_prefix's salt)."""
    return hashlib.blake2b(salt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _block_hash(parent: bytes, tokens: list[int]) -> bytes:
    return hashlib.blake2b(parent + b"|" + ",".join(map(str, tokens)).encode(), digest_size=16).digest()


@dataclass
class BlockTable:
    """One sequence's view of the cache: its blocks in order and how many of its tokens are written."""

    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0  # tokens whose slots hold computed values
    hashes: list[bytes] = field(default_factory=list)  # hash chain of its full, registered blocks
    _rows: torch.Tensor | None = field(default=None, repr=False)  # cache rows of all its blocks' slots


class LatentCache:
    """`kv[layer]` is (num_blocks * block_size, L + R): slot s of block b is row b * block_size + s."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int = 16, dtype: torch.dtype = torch.float32):
        if dtype not in CACHE_DTYPES:
            raise CacheError(f"the cache's dtype must be one of {', '.join(map(str, CACHE_DTYPES))}, got {dtype!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise CacheError(f"block_size must be an int >= 1, got {block_size!r}")
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise CacheError(f"the cache needs at least one block of {block_size} tokens, got {num_blocks!r} blocks")
        self.block_size, self.num_blocks, self.dtype = block_size, num_blocks, dtype
        self.latent_dim, self.rope_dim = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        self.kv = [torch.zeros(num_blocks * block_size, width, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        # int8: each row's scales and sums (quantize_latent); None otherwise
        self.meta = [torch.zeros(num_blocks * block_size, META) for _ in self.kv] if dtype == torch.int8 else None
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # block -> hash, for blocks that hold a registered full prefix
        self._by_hash: dict[bytes, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unused but findable, least recently freed first

    @classmethod
    def with_budget(cls, cfg: ModelConfig, tokens: int | None = None, nbytes: int | None = None,
                    block_size: int = 16, dtype: torch.dtype = torch.float32) -> LatentCache:
        """A cache holding at most `tokens` tokens, or at most `nbytes` bytes (exactly one of the two)."""
        if (tokens is None) == (nbytes is None):
            raise CacheError("give the cache budget in tokens or in bytes (exactly one)")
        if nbytes is not None:
            if not isinstance(nbytes, int) or nbytes < 1:
                raise CacheError(f"cache bytes must be an int >= 1, got {nbytes!r}")
            tokens = nbytes // bytes_per_token(cfg, dtype)
        if not isinstance(tokens, int) or tokens < 1:
            raise CacheError(f"cache tokens must be an int >= 1, got {tokens!r}")
        num_blocks = tokens // block_size
        if num_blocks < 1:
            raise CacheError(f"a cache budget of {tokens} tokens is less than one block of {block_size}")
        return cls(cfg, num_blocks, block_size, dtype)

    # ---- capacity -------------------------------------------------------------------------------------------

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        """Blocks that can be handed out now: never used, or holding a prefix nobody is using."""
        return len(self._free) + len(self._evictable)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv + (self.meta or []))

    # ---- rows -----------------------------------------------------------------------------------------------

    def write(self, layer: int, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Layer `layer`'s rows at `slots` (N,) = rows (N, L + R), rounded to the cache's dtype."""
        if self.meta is None:
            self.kv[layer][slots] = rows.to(self.dtype)
        else:
            self.kv[layer][slots], self.meta[layer][slots] = quantize_latent(rows, self.latent_dim)

    def read(self, layer: int, slots: torch.Tensor, dtype: torch.dtype, part: str = "all") -> torch.Tensor:
        """Layer `layer`'s rows at `slots` (..., ) as `dtype`: (..., L + R), or only their latent ("latent", L) or
        rope ("rope", R) part; an int8 cache's dequantized."""
        cols = {"all": slice(None), "latent": slice(0, self.latent_dim), "rope": slice(self.latent_dim, None)}[part]
        rows = self.kv[layer][slots, cols]
        if self.meta is None:
            return rows.to(dtype)
        meta = self.meta[layer][slots]  # (..., META)
        lat = self.latent_dim
        if part == "latent":
            return (rows * meta[..., :1]).to(dtype)
        if part == "rope":
            return (rows * meta[..., 1:2]).to(dtype)
        return torch.cat([rows[..., :lat] * meta[..., :1], rows[..., lat:] * meta[..., 1:2]], dim=-1).to(dtype)

    # ---- blocks ---------------------------------------------------------------------------------------------

    def _take(self) -> int:
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self._by_hash[self._hash_of.pop(block)]
        self._refs[block] = 1
        return block

    def reserve(self, table: BlockTable, num_tokens: int) -> bool:
        """Make room for the sequence to hold `num_tokens` tokens in all; False (and no change) if it cannot."""
        need = self.blocks_for(num_tokens) - len(table.blocks)
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        table.blocks.extend(self._take() for _ in range(need))
        return True

    def release(self, table: BlockTable) -> None:
        """The sequence is done (finished, cancelled or preempted): its blocks go back."""
        for block in table.blocks:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        table.blocks.clear()
        table.hashes.clear()
        table.num_tokens = 0
        table._rows = None

    # ---- prefix reuse ---------------------------------------------------------------------------------------

    def match_prefix(self, table: BlockTable, token_ids: list[int], salt: bytes = b"") -> int:
        """Map the longest run of cached full blocks that starts `token_ids`; returns how many tokens it covers.

        Never the whole prompt: its last token must be computed to give logits for the first new token. salt starts
        the hash chain: blocks are shared only between sequences with the same salt (one API key's requests).
        """
        assert not table.blocks, "match_prefix starts a sequence"
        bs, parent = self.block_size, salt
        for start in range(0, len(token_ids) - 1 - bs + 1, bs):
            h = _block_hash(parent, token_ids[start:start + bs])
            block = self._by_hash.get(h)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            table.blocks.append(block)
            table.hashes.append(h)
            parent = h
        table.num_tokens = len(table.blocks) * bs
        return table.num_tokens

    def register_full_blocks(self, table: BlockTable, token_ids: list[int], salt: bytes = b"") -> None:
        """Remember the sequence's newly completed blocks (token_ids: every token whose slot is written; salt: as
        match_prefix's)."""
        bs = self.block_size
        for i in range(len(table.hashes), table.num_tokens // bs):
            parent = table.hashes[-1] if table.hashes else salt
            h = _block_hash(parent, token_ids[i * bs:(i + 1) * bs])
            table.hashes.append(h)
            block = table.blocks[i]
            if h not in self._by_hash and block not in self._hash_of:
                self._by_hash[h] = block
                self._hash_of[block] = h

    # ---- slots ----------------------------------------------------------------------------------------------

    def slots(self, table: BlockTable, start: int, end: int) -> torch.Tensor:
        """Cache rows of the sequence's tokens start..end-1, (end - start,) int64."""
        if table._rows is None or table._rows.numel() != len(table.blocks) * self.block_size:
            # rebuilt only when the block list changed: a decode step asks for every sequence's rows
            blocks = torch.tensor(table.blocks, dtype=torch.long)
            table._rows = (blocks[:, None] * self.block_size + torch.arange(self.block_size)).flatten()
        return table._rows[start:end]
