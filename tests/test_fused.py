"""A decode step with each layer one native call (engine/fused.py, kernels.decode_layer), against the runner's own
step on the same cache: the same logits and expert counts, for every kind of layer the kernel takes."""

from __future__ import annotations

import pytest
import torch

from seekmoe.engine.cache import BlockTable, LatentCache
from seekmoe.engine.runner import ModelRunner, Segment
from seekmoe.model import kernels
from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.kernels import LayerDesc
from seekmoe.model.quant import quantize_int8
from seekmoe.model.quantize import quantize_checkpoint
from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="seekmoe's kernels cannot be built here")

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}
VARIANTS = {
    "low-rank q, dense first layer": {},
    "full-rank q, yarn, no shared experts": dict(q_lora_rank=None, rope_scaling=YARN, n_shared_experts=None),
    "v3: sigmoid, noaux_tc in groups, halves rope": dict(
        model_type="deepseek_v3", topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
        rope_interleave=False, n_group=4, topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=0),
    "v2: group-limited greedy": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                     num_experts_per_tok=3),
}
# every quantized matrix's input width a multiple of 32: whole int4 groups
WIDE = dict(hidden_size=64, q_lora_rank=32, v_head_dim=8, intermediate_size=64, moe_intermediate_size=32,
            kv_lora_rank=32)


def decode(model, fused: bool, prompt: int = 9, steps: int = 12, dtype: torch.dtype = torch.float32,
           caches: list | None = None) -> tuple[list[torch.Tensor], dict]:
    """A prompt read by the runner's own step, then `steps` more tokens decoded one a step, with the fused layers or
    without: each step's logits, and the expert counts after (and the cache, appended to `caches`). The tokens are
    fixed, not sampled, so that a near tie cannot send the two runs different ways."""
    cache = LatentCache(model.config, 64, block_size=4, dtype=dtype)
    if caches is not None:
        caches.append(cache)
    runner = ModelRunner(model, cache)
    assert runner.fused_layers is not None  # every layer is of a kind the kernel takes
    if not fused:
        runner.fused_layers = None
    table, out = BlockTable(), []
    tokens = torch.randint(3, model.config.vocab_size, (prompt + steps,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    pos, n = 0, prompt
    for _ in range(steps + 1):
        assert cache.reserve(table, pos + n)
        seg = Segment(cache.slots(table, 0, pos + n), pos, n, True)
        logits = runner.forward(torch.tensor(tokens[pos:pos + n]), torch.arange(pos, pos + n), [seg])[0]
        table.num_tokens = pos = pos + n
        out.append(logits)
        n = 1
    return out[1:], {i: c.clone() for i, c in runner.expert_counts.items()}


def decode_batch(model, fused: bool, seqs: int, steps: int = 6,
                 dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], dict]:
    """`seqs` prompts of different lengths, each read by the runner's own step, then `steps` steps that decode one
    token of every sequence at once: each step's logits (seqs, vocab), and the expert counts after."""
    cache = LatentCache(model.config, 256, block_size=4, dtype=dtype)
    runner = ModelRunner(model, cache)
    if not fused:
        runner.fused_layers = None
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, model.config.vocab_size, (3 + 2 * i,), generator=gen).tolist() for i in range(seqs)]
    tables = [BlockTable() for _ in range(seqs)]
    for table, prompt in zip(tables, prompts, strict=True):
        assert cache.reserve(table, len(prompt))
        runner.forward(torch.tensor(prompt), torch.arange(len(prompt)),
                       [Segment(cache.slots(table, 0, len(prompt)), 0, len(prompt), True)])
        table.num_tokens = len(prompt)
    out = []
    for _ in range(steps):
        segs, ids = [], torch.randint(3, model.config.vocab_size, (seqs,), generator=gen)
        for table in tables:
            assert cache.reserve(table, table.num_tokens + 1)
            segs.append(Segment(cache.slots(table, 0, table.num_tokens + 1), table.num_tokens, 1, True))
        out.append(runner.forward(ids, torch.tensor([t.num_tokens for t in tables]), segs))
        for table in tables:
            table.num_tokens += 1
    return out, {i: c.clone() for i, c in runner.expert_counts.items()}


@pytest.mark.parametrize("seqs", [3, 6, 17])  # the runner's own step: experts token by token, grouped by expert;
# 17: past the row count the runner's products take its kernels for
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_steps_of_several_sequences_match_the_runners_own(variant, seqs):
    model = tiny_model(**VARIANTS[variant])
    (fused, fused_counts), (own, own_counts) = decode_batch(model, True, seqs), decode_batch(model, False, seqs)
    for a, b in zip(fused, own, strict=True):
        assert a.shape == (seqs, model.config.vocab_size) and (a - b).abs().max() <= 1e-4
    for i in own_counts:
        assert torch.equal(fused_counts[i], own_counts[i])


@pytest.mark.parametrize("bits", [8, 4])
def test_fused_steps_of_several_sequences_of_a_quantized_model_match_the_runners_own(bits, tmp_path):
    if bits == 8:
        model = quantize_int8(tiny_model(**WIDE))
    else:
        save_model(tiny_model(**WIDE), tmp_path / "f")
        quantize_checkpoint(tmp_path / "f", tmp_path / "q", 4, progress=False)
        model = load_model(tmp_path / "q")
    (fused, _), (own, _) = decode_batch(model, True, 6), decode_batch(model, False, 6)
    for a, b in zip(fused, own, strict=True):  # int4: the bound of test_fused_steps_of_an_int4_model_...
        assert (a - b).abs().max() <= (1e-4 if bits == 8 else 0.02 * b.abs().max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_steps_match_the_runners_own(variant):
    model = tiny_model(**VARIANTS[variant])
    (fused, fused_counts), (own, own_counts) = decode(model, True), decode(model, False)
    for a, b in zip(fused, own, strict=True):
        assert (a - b).abs().max() <= 1e-4
    assert fused_counts.keys() == own_counts.keys() and len(own_counts) > 0
    for i in own_counts:
        assert torch.equal(fused_counts[i], own_counts[i])


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_steps_over_an_int8_cache_match_the_runners_own(variant):
    """The kernel rounds each new row as cache.quantize_latent does (the same bytes), and both steps attend through
    the same int8 kernel."""
    model, caches = tiny_model(**VARIANTS[variant]), []
    (fused, _), (own, _) = decode(model, True, dtype=torch.int8, caches=caches), \
        decode(model, False, dtype=torch.int8, caches=caches)
    # the two compute a row's floats in other orders (within 1e-6 of each other): one may round a number to the
    # neighbouring int8 value, which moves later logits by up to ~1e-3 on `tiny`; a wrong row, scale or sum moves
    # them by tenths
    tipped = 0
    for kv_a, kv_b, meta_a, meta_b in zip(caches[0].kv, caches[1].kv, caches[0].meta, caches[1].meta, strict=True):
        assert (kv_a.int() - kv_b.int()).abs().max() <= 1
        tipped += int((kv_a != kv_b).sum())
        torch.testing.assert_close(meta_a[:, :2], meta_b[:, :2], rtol=1e-5, atol=0)
        assert (meta_a[:, 2:] - meta_b[:, 2:]).abs().max() <= 2  # the sums, of the tipped values
    assert tipped <= 0.001 * sum(kv.numel() for kv in caches[0].kv)
    for a, b in zip(fused, own, strict=True):
        assert (a - b).abs().max() <= (1e-4 if tipped == 0 else 0.01)
    (batch, _), (batch_own, _) = decode_batch(model, True, 5, dtype=torch.int8), \
        decode_batch(model, False, 5, dtype=torch.int8)
    for a, b in zip(batch, batch_own, strict=True):
        assert (a - b).abs().max() <= 0.01


def test_fused_steps_of_an_int8_model_match_the_runners_own():
    model = quantize_int8(tiny_model(**WIDE))
    (fused, _), (own, _) = decode(model, True), decode(model, False)
    for a, b in zip(fused, own, strict=True):
        assert (a - b).abs().max() <= 1e-4


def test_fused_steps_of_an_int4_model_stay_with_the_runners_own(tmp_path):
    save_model(tiny_model(**WIDE), tmp_path / "f")
    quantize_checkpoint(tmp_path / "f", tmp_path / "q", 4, progress=False)
    model = load_model(tmp_path / "q")
    (fused, _), (own, _) = decode(model, True), decode(model, False)
    # int4 products round their activations to int8 blocks: a float difference upstream (the norms' sums, in
    # another order) can move a rounding by one step, so the bound is that of a few such steps, not float rounding's
    for a, b in zip(fused, own, strict=True):
        assert (a - b).abs().max() <= 0.02 * b.abs().max()


def test_a_bfloat16_model_keeps_the_runners_own_step():
    model = tiny_model().to(torch.bfloat16)
    runner = ModelRunner(model, LatentCache(model.config, 16, block_size=4))
    assert runner.fused_layers is None


def fused_layer(model) -> tuple:
    cache = LatentCache(model.config, 16, block_size=4)
    runner = ModelRunner(model, cache)
    return runner.fused_layers, cache


@pytest.mark.parametrize("bad", ["x shape", "x dtype", "cos shape", "slots dtype", "counts shape", "kv width",
                                 "two rows, no offsets", "offsets short", "offsets not rising",
                                 "offsets past the slots", "offsets int32", "int8 cache without meta",
                                 "int8 cache, meta short", "float cache with meta"])
def test_decode_layer_refuses_what_it_cannot_read(bad):
    model = tiny_model()
    layers, cache = fused_layer(model)
    d, r = model.config.hidden_size, model.config.qk_rope_head_dim
    args = dict(x=torch.zeros(d), kv=cache.kv[1], cos=torch.ones(r // 2), sin=torch.zeros(r // 2),
                slots=torch.arange(3), counts=torch.zeros(model.config.n_routed_experts, dtype=torch.long))
    two = dict(x=torch.zeros(2, d), cos=torch.ones(2, r // 2), sin=torch.zeros(2, r // 2))  # two sequences
    args |= {"x shape": dict(x=torch.zeros(d + 1)), "x dtype": dict(x=torch.zeros(d, dtype=torch.float64)),
             "cos shape": dict(cos=torch.ones(r)), "slots dtype": dict(slots=torch.arange(3, dtype=torch.int32)),
             "counts shape": dict(counts=torch.zeros(3, dtype=torch.long)),
             "kv width": dict(kv=torch.zeros(16, 5)), "two rows, no offsets": two,
             "offsets short": two | dict(offsets=torch.tensor([0, 3])),
             "offsets not rising": two | dict(offsets=torch.tensor([0, 0, 3])),
             "offsets past the slots": two | dict(offsets=torch.tensor([0, 1, 5])),
             "offsets int32": two | dict(offsets=torch.tensor([0, 1, 3], dtype=torch.int32)),
             "int8 cache without meta": dict(kv=cache.kv[1].to(torch.int8)),
             "int8 cache, meta short": dict(kv=cache.kv[1].to(torch.int8), meta=torch.zeros(len(cache.kv[1]) - 1, 4)),
             "float cache with meta": dict(meta=torch.zeros(len(cache.kv[1]), 4))}[bad]
    with pytest.raises(ValueError, match=r"kernels\.decode_layer"):
        layers.run(layers.descs[1], **args)


@pytest.mark.parametrize("slot", [-1, "rows", 2**40])
def test_a_slot_outside_the_cache_is_refused_before_anything_is_written(slot):
    model = tiny_model()
    layers, cache = fused_layer(model)
    r, rows = model.config.qk_rope_head_dim, cache.kv[1].shape[0]
    slot = rows if slot == "rows" else slot
    x, before = torch.randn(model.config.hidden_size), [kv.clone() for kv in cache.kv]
    x0 = x.clone()
    with pytest.raises(ValueError, match=f"slot outside the cache's {rows} rows"):
        layers.run(layers.descs[1], x, cache.kv[1], torch.ones(r // 2), torch.zeros(r // 2),
                   torch.tensor([0, slot, 2]))
    assert torch.equal(x, x0) and all(torch.equal(a, b) for a, b in zip(cache.kv, before, strict=True))


def test_a_descriptor_whose_shapes_disagree_is_refused():
    model = tiny_model()
    layers, cache = fused_layer(model)
    r = model.config.qk_rope_head_dim
    bad = LayerDesc.from_buffer_copy(layers.descs[1])
    bad.o_proj.n_out += 1  # o_proj no longer maps back to the model width
    with pytest.raises(ValueError, match="descriptor whose shapes do not agree"):
        layers.run(bad, torch.zeros(model.config.hidden_size), cache.kv[1], torch.ones(r // 2), torch.zeros(r // 2),
                   torch.arange(2))
