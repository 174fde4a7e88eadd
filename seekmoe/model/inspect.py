"""What a ModelConfig costs, from the config alone: parameters per component (total and active per token), the
layer layout, KV-cache bytes per token, and the memory they take to train and serve over N ranks. No weights, no
torch.

Counting convention (the one that reproduces DeepSeek's published figures):
  total            = every parameter, the input embedding table included; a tied lm_head is counted once.
  active per token = every parameter one token's forward pass multiplies by: the input embedding table is left
                     out (a row lookup, not compute), and so are the routed experts the token is not sent to.
  Multi-token-prediction modules (num_nextn_predict_layers) are counted in neither.

Against the published figures the bundled configs give (deviation in brackets):
  DeepSeek-V2-Lite  15.71B total (+0.04% of 15.7B)   2.45B active (+2.1% of 2.4B)
  DeepSeek-V2      235.74B total (-0.11% of 236B)   20.85B active (-0.7% of 21B)
  DeepSeek-V3      671.03B total (+0.004% of 671B)  36.63B active (-1.0% of 37B)
Counting the input embedding table as active instead gives 2.66B for V2-Lite (+10.9%), so the papers leave it out.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass
from typing import Any

from seekmoe.model.config import ModelConfig

CONVENTION = {
    "total": "every parameter, the input embedding table included (a tied lm_head counted once)",
    "active": "what one token's forward pass multiplies by: no input embedding table (a lookup, not compute), "
              "only the num_experts_per_tok routed experts it is sent to",
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_DTYPE = "bfloat16"  # what every published DeepSeek checkpoint declares
# float32 weights and gradients, AdamW's two float32 moments; activations come on top and depend on the batch
TRAIN_BYTES_PER_PARAM = 16
TRAIN_LAYOUTS = {
    "ddp": "whole model on every rank",
    "fsdp": "everything sharded over the ranks",
    "expert": "routed experts split, the rest replicated",
}


@dataclass(frozen=True)
class Component:
    name: str
    total: int
    active: int
    note: str = ""


@dataclass(frozen=True)
class KVCache:
    """Cache bytes per token, all layers: MLA's latent beside an MHA model with the same heads."""

    dtype: str
    bytes_per_element: int
    mla_elements_per_layer: int  # kv_lora_rank + qk_rope_head_dim: c_kv and the shared rope key
    mha_elements_per_layer: int  # heads * (qk_head_dim + v_head_dim): full K and V
    mla_bytes_per_token: int
    mha_bytes_per_token: int

    @property
    def ratio(self) -> float:
        return self.mha_bytes_per_token / self.mla_bytes_per_token


@dataclass(frozen=True)
class Memory:
    """Bytes from the parameter counts alone: training state per rank, serving weights, one sequence's KV cache."""

    ranks: int
    context: int  # tokens of the one sequence whose KV cache is given
    train_per_rank: dict[str, int | None]  # TRAIN_LAYOUTS -> bytes; None where the layout does not apply
    expert_note: str  # why train_per_rank["expert"] is None
    bf16: int  # serving weights, whole model
    int8: int  # approximate: the per-row float32 scales are not counted
    kv_mla: int  # KV cache of `context` tokens, MLA latent
    kv_mha: int  # the same with MHA's full K and V

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranks": self.ranks,
            "context": self.context,
            "train_bytes_per_param": TRAIN_BYTES_PER_PARAM,
            "train_per_rank": self.train_per_rank,
            "expert_note": self.expert_note,
            "serving": {"bfloat16": {"whole": self.bf16, "per_rank": _ceil_div(self.bf16, self.ranks)},
                        "int8": {"whole": self.int8, "per_rank": _ceil_div(self.int8, self.ranks),
                                 "approximate": True}},
            "kv_cache": {"tokens": self.context, "mla": self.kv_mla, "mha": self.kv_mha},
        }


@dataclass(frozen=True)
class Report:
    components: tuple[Component, ...]
    layout: str
    kv_cache: KVCache
    memory: Memory
    not_counted: str = ""  # modules the config declares that the counts leave out (MTP layers)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.components)

    @property
    def active(self) -> int:
        return sum(c.active for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": CONVENTION,
            "total": self.total,
            "active": self.active,
            "components": [asdict(c) for c in self.components],
            "layout": self.layout,
            "not_counted": self.not_counted,
            "kv_cache": {**asdict(self.kv_cache), "ratio": self.kv_cache.ratio},
            "memory": self.memory.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---- shapes ------------------------------------------------------------------------------------------------
def attention_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """One layer's MLA weights, Hugging Face names, (out, in) as nn.Linear stores them."""
    h, d = cfg.num_attention_heads, cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.q_lora_rank is None:
        shapes["q_proj"] = (h * cfg.qk_head_dim, d)
    else:
        shapes["q_a_proj"] = (cfg.q_lora_rank, d)
        shapes["q_a_layernorm"] = (cfg.q_lora_rank,)
        shapes["q_b_proj"] = (h * cfg.qk_head_dim, cfg.q_lora_rank)
    shapes["kv_a_proj_with_mqa"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d)
    shapes["kv_a_layernorm"] = (cfg.kv_lora_rank,)
    shapes["kv_b_proj"] = (h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
    shapes["o_proj"] = (d, h * cfg.v_head_dim)
    return shapes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ---- counts ------------------------------------------------------------------------------------------------
def count_parameters(cfg: ModelConfig) -> tuple[Component, ...]:
    """Parameters per component, total and active per token (see the module docstring for the convention)."""
    d, n_layers = cfg.hidden_size, cfg.num_hidden_layers
    n_moe = sum(cfg.is_moe_layer(i) for i in range(n_layers))
    n_dense = n_layers - n_moe
    table = cfg.vocab_size * d

    attention = n_layers * sum(_numel(s) for s in attention_shapes(cfg).values())
    norms = (2 * n_layers + 1) * d  # input + post-attention per layer, final norm
    dense_mlp = n_dense * 3 * d * cfg.intermediate_size  # gate, up, down
    expert = 3 * d * cfg.moe_intermediate_size if n_moe else 0
    shared = n_moe * (cfg.n_shared_experts or 0) * expert
    routed = n_moe * (cfg.n_routed_experts or 0) * expert
    routed_active = n_moe * (cfg.num_experts_per_tok or 0) * expert
    router_bias = cfg.n_routed_experts if cfg.topk_method == "noaux_tc" else 0  # e_score_correction_bias
    router = n_moe * ((cfg.n_routed_experts or 0) * d + (router_bias or 0))
    return (
        Component("embeddings", table, 0, "lookup, not compute"),
        Component("attention", attention, attention),
        Component("norms", norms, norms),
        Component("dense MLP", dense_mlp, dense_mlp),
        Component("shared experts", shared, shared),
        Component("routed experts", routed, routed_active,
                  f"top-{cfg.num_experts_per_tok} of {cfg.n_routed_experts}" if n_moe else ""),
        Component("router", router, router),
        Component("head", 0 if cfg.tie_word_embeddings else table, table,
                  "tied: shares the embedding table" if cfg.tie_word_embeddings else ""),
    )


def layer_layout(cfg: ModelConfig) -> str:
    """Which layers are dense and which MoE, as compact ranges: 'layers 0: dense MLP; 1-26: MoE (...)'."""
    shared = f", {cfg.n_shared_experts} shared" if cfg.n_shared_experts else ""
    moe = f"MoE ({cfg.n_routed_experts} routed, top-{cfg.num_experts_per_tok}{shared})"
    kinds: dict[str, list[int]] = {}  # insertion order: the kind of layer 0 comes first
    for i in range(cfg.num_hidden_layers):
        kinds.setdefault(moe if cfg.is_moe_layer(i) else "dense MLP", []).append(i)
    return "layers " + "; ".join(f"{_ranges(idx)}: {kind}" for kind, idx in kinds.items())


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2, 4, 6-7'."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def kv_cache(cfg: ModelConfig) -> KVCache:
    dtype = cfg.torch_dtype or DEFAULT_DTYPE
    b = DTYPE_BYTES[dtype]
    mla = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    mha = cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    n = cfg.num_hidden_layers
    return KVCache(dtype, b, mla, mha, n * mla * b, n * mha * b)


def int8_parameters(cfg: ModelConfig, components: tuple[Component, ...]) -> int:
    """Parameters `seekmoe serve --int8` stores as int8 (model/quant.py): the attention projections but kv_b_proj,
    the MLPs and experts, an untied lm_head. The embedding table, routers, norms and kv_b_proj stay bfloat16."""
    parts = {c.name: c.total for c in components}
    attention = cfg.num_hidden_layers * sum(_numel(s) for name, s in attention_shapes(cfg).items()
                                            if len(s) == 2 and name != "kv_b_proj")
    return attention + parts["dense MLP"] + parts["shared experts"] + parts["routed experts"] + parts["head"]


def memory(cfg: ModelConfig, components: tuple[Component, ...], kv: KVCache, ranks: int, context: int) -> Memory:
    if ranks < 1 or context < 1:
        raise ValueError(f"ranks and context must be >= 1, got ranks={ranks}, context={context}")
    total = sum(c.total for c in components)
    routed = {c.name: c.total for c in components}["routed experts"]
    train = {"ddp": TRAIN_BYTES_PER_PARAM * total, "fsdp": _ceil_div(TRAIN_BYTES_PER_PARAM * total, ranks)}
    experts = cfg.n_routed_experts or 0
    if not routed:
        train["expert"], note = None, "no routed experts"
    elif experts % ranks:
        train["expert"], note = None, f"n_routed_experts ({experts}) not divisible by {ranks}"
    else:  # every MoE layer holds the same experts, so routed / ranks is exact
        train["expert"], note = TRAIN_BYTES_PER_PARAM * (routed // ranks + total - routed), ""
    q = int8_parameters(cfg, components)
    return Memory(ranks, context, train, note, 2 * total, q + 2 * (total - q),
                  kv.mla_bytes_per_token * context, kv.mha_bytes_per_token * context)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)  # a shard is rounded up: FSDP pads, and a split weight cannot hold a fraction of a byte


def inspect_config(cfg: ModelConfig, ranks: int = 8, context: int = 4096) -> Report:
    mtp = cfg.extra.get("num_nextn_predict_layers") or 0
    not_counted = f"{mtp} multi-token-prediction layer{'s' * (mtp != 1)} (num_nextn_predict_layers)" if mtp else ""
    components, kv = count_parameters(cfg), kv_cache(cfg)
    return Report(components, layer_layout(cfg), kv, memory(cfg, components, kv, ranks, context), not_counted)


# ---- text --------------------------------------------------------------------------------------------------
def human(n: float, unit: str = "") -> str:
    """15_706_484_224 -> '15.71B'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def human_bytes(n: int) -> str:
    """69_120 -> '69,120 B (67.50 KiB)'."""
    short = binary_bytes(n)
    return f"{n:,} B" if short.endswith(" B") else f"{n:,} B ({short})"


def binary_bytes(n: int) -> str:
    """69_120 -> '67.50 KiB'."""
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def format_report(report: Report) -> str:
    rows = [(c.name, c.total, c.active, c.note) for c in report.components]
    header = f"{'component':<16}{'total':>26}{'active per token':>26}"
    lines = [header]
    for name, total, active, note in rows:
        lines.append(f"{name:<16}{total:>17,}{human(total):>9}{active:>17,}{human(active):>9}"
                     + (f"  {note}" if note else ""))
    lines += ["-" * len(header),
              f"{'total':<16}{report.total:>17,}{human(report.total):>9}{report.active:>17,}{human(report.active):>9}"]
    kv = report.kv_cache
    lines += [
        "",
        f"convention: total  = {CONVENTION['total']}",
        textwrap.fill(f"            active = {CONVENTION['active']}", width=110, subsequent_indent=" " * 21),
        *([f"not counted: {report.not_counted}"] if report.not_counted else []),
        "",
        report.layout,
        "",
        f"KV cache per token, all layers, {kv.dtype} ({kv.bytes_per_element} bytes/element):",
        f"  MLA latent, kv_lora_rank + qk_rope_head_dim = {kv.mla_elements_per_layer:,}/layer: "
        f"{human_bytes(kv.mla_bytes_per_token)}",
        f"  MHA with the same heads, K + V = {kv.mha_elements_per_layer:,}/layer: "
        f"{human_bytes(kv.mha_bytes_per_token)}",
        f"  MHA / MLA: {kv.ratio:.1f}x",
        "",
        *format_memory(report.memory, report.total, kv.dtype),
    ]
    return "\n".join(lines)


def format_memory(m: Memory, total: int, kv_dtype: str) -> list[str]:
    def row(label: str, *sizes: int) -> str:
        return f"    {label:<58}" + "".join(f"{binary_bytes(b):>12}" for b in sizes)

    lines = [
        f"Memory over {m.ranks} rank{'s' * (m.ranks != 1)} (--ranks), from the {human(total)} parameters above; "
        "activations not counted:",
        f"  training, per rank: float32 weights, gradients and AdamW's two moments, {TRAIN_BYTES_PER_PARAM} "
        "bytes/parameter",
    ]
    for name, what in TRAIN_LAYOUTS.items():
        b = m.train_per_rank[name]
        lines.append(row(f"{name:<8}{what}", b) if b is not None else f"    {name:<8}{m.expert_note}")
    lines += [
        f"  {f'serving weights (tensor/expert parallel over {m.ranks})':<60}{'whole':>12}{'per rank':>12}",
        row("bfloat16, 2 bytes/parameter", m.bf16, _ceil_div(m.bf16, m.ranks)),
        row("int8 weight-only (serve --int8), approximate: no scales", m.int8, _ceil_div(m.int8, m.ranks)),
        f"  KV cache of one {m.context:,}-token sequence (--context), {kv_dtype}",
        row("MLA latent", m.kv_mla),
        row("MHA with the same heads", m.kv_mha),
    ]
    return lines


def decode_reads(model) -> tuple[float, float]:
    """(parameters, bytes) of the weights one decode token reads in a built model (float or int8): every tensor in
    full but the routed experts, of which the token reads its K of E, and the input embedding, of which it reads a
    row; rotary tables left out, and int8 scales counted as bytes, not parameters. The memory-bandwidth floor of a
    decode step is bandwidth / these bytes."""
    cfg = model.config
    k_of_e = cfg.num_experts_per_tok / cfg.n_routed_experts
    params = nbytes = 0.0
    for n, t in [*model.named_parameters(), *model.named_buffers()]:
        if n.endswith("inv_freq"):
            continue
        share = k_of_e if ".mlp.experts." in n else 1 / cfg.vocab_size if n == "model.embed_tokens.weight" else 1
        params += t.numel() * share * (not n.endswith("_scale"))
        nbytes += t.numel() * t.element_size() * share
    return params, nbytes
