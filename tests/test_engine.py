"""The engine: latent cache, absorbed MLA, continuous batching, cancellation, streaming, refusals."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from seekmoe.engine.cache import BlockTable, CacheError, LatentCache, bytes_per_token, mha_bytes_per_token
from seekmoe.engine.engine import Engine, EngineError
from seekmoe.engine.loop import EngineLoop
from seekmoe.engine.runner import ModelRunner, Segment
from seekmoe.engine.sampling import SamplingParams
from seekmoe.model.config import ModelConfig
from tests.conftest import tiny_model

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}
VARIANTS = {
    "low-rank q": {},
    "full-rank q, yarn": dict(q_lora_rank=None, rope_scaling=YARN),
    "v3 sigmoid, halves rope": dict(model_type="deepseek_v3", topk_method="noaux_tc", scoring_func="sigmoid",
                                    norm_topk_prob=True, rope_interleave=False),
}
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


def prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=g).tolist() for n in lengths]


def reference_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def run_chunks(model, tokens, chunks, absorb):
    """Feed `tokens` through a runner in the given chunk sizes; logits after each chunk's last token."""
    cache = LatentCache(model.config, 32, block_size=4)
    runner, table, pos, out = ModelRunner(model, cache, absorb=absorb), BlockTable(), 0, {}
    for n in chunks:
        assert cache.reserve(table, pos + n)
        seg = Segment(cache.slots(table, 0, pos + n), pos, n, True)
        out[pos + n - 1] = runner.forward(torch.tensor(tokens[pos:pos + n]), torch.arange(pos, pos + n), [seg])[0]
        table.num_tokens = pos = pos + n
    return out


# ---- MLA from the latent cache ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_absorbed_and_expanded_decoding_match_the_model(variant):
    model = tiny_model(**VARIANTS[variant])
    tokens = prompts([40])[0]
    with torch.no_grad():
        full = model(torch.tensor([tokens]))[0]
    chunks = [17, 7] + [1] * 16  # a chunk past ROPE_MATRIX_TOKENS, one below it, then decoding
    absorbed, expanded = run_chunks(model, tokens, chunks, True), run_chunks(model, tokens, chunks, False)
    for pos, logits in absorbed.items():
        assert (logits - full[pos]).abs().max() <= 1e-4
        assert (logits - expanded[pos]).abs().max() <= 1e-4


def test_cache_holds_only_latent_and_rope_key():
    cfg = tiny_model().config
    cache = LatentCache(cfg, 4, block_size=8)
    assert [t.shape for t in cache.kv] == [(32, cfg.kv_lora_rank + cfg.qk_rope_head_dim)] * cfg.num_hidden_layers
    assert bytes_per_token(cfg) == cfg.num_hidden_layers * (16 + 4) * 4
    assert mha_bytes_per_token(cfg) == cfg.num_hidden_layers * 4 * (8 + 4 + 6) * 4


def test_an_int8_cache_holds_each_rows_parts_at_their_own_scale():
    cfg = tiny_model().config
    cache = LatentCache(cfg, 4, block_size=8, dtype=torch.int8)
    lat, width = cfg.kv_lora_rank, cfg.kv_lora_rank + cfg.qk_rope_head_dim
    assert [t.dtype for t in cache.kv] == [torch.int8] * cfg.num_hidden_layers
    assert bytes_per_token(cfg, torch.int8) == cfg.num_hidden_layers * (width + 16)
    assert cache.nbytes() == 32 * bytes_per_token(cfg, torch.int8)
    rows = torch.randn(5, width, generator=torch.Generator().manual_seed(0))
    rows[:, lat:] *= 100  # the rope part far larger: at one scale the latent part would round to zero
    rows[3] = 0  # a row of zeros stays zeros
    slots = torch.tensor([0, 9, 3, 31, 17])
    cache.write(1, slots, rows)
    back = cache.read(1, slots, torch.float32)
    for cols in (slice(0, lat), slice(lat, None)):
        step = rows[:, cols].abs().amax(-1, keepdim=True) / 127
        assert ((back[:, cols] - rows[:, cols]).abs() <= step / 2 + 1e-6 * step).all()
    assert back[3].abs().max() == 0
    assert torch.equal(cache.read(1, slots, torch.float32, "latent"), back[:, :lat])
    assert torch.equal(cache.read(1, slots, torch.float32, "rope"), back[:, lat:])
    sums = torch.stack([cache.kv[1][slots, :lat].float().sum(-1), cache.kv[1][slots, lat:].float().sum(-1)], -1)
    assert torch.equal(cache.meta[1][slots, 2:], sums)
    with pytest.raises(CacheError, match="dtype"):
        LatentCache(cfg, 4, dtype=torch.float64)
    with pytest.raises(EngineError, match="kv_cache_dtype"):
        Engine(tiny_model(), cache_tokens=64, kv_cache_dtype="int4")


def test_decoding_from_an_int8_cache_stays_near_float32s():
    """A prompt read in chunks, then tokens decoded one a step, over a float32 cache and an int8 one: the logits
    differ by the rounding of the rows (and, in the decode kernel, of the queries and weights), a few hundredths."""
    model = tiny_model()
    tokens = prompts([110])[0]
    logits = {}
    for dtype in (torch.float32, torch.int8):
        cache = LatentCache(model.config, 32, block_size=4, dtype=dtype)
        runner, table, pos, out = ModelRunner(model, cache), BlockTable(), 0, []
        for n in [40, 40, 20] + [1] * 10:
            assert cache.reserve(table, pos + n)
            seg = Segment(cache.slots(table, 0, pos + n), pos, n, True)
            out.append(runner.forward(torch.tensor(tokens[pos:pos + n]), torch.arange(pos, pos + n), [seg])[0])
            table.num_tokens = pos = pos + n
        logits[dtype] = torch.stack(out)
    a, b = logits[torch.float32], logits[torch.int8]
    assert (a - b).abs().max() <= 0.05 * a.abs().max()
    assert (a - b).abs().max() > 0  # it did round


def test_cache_budget_in_tokens_or_bytes():
    cfg = tiny_model().config
    assert LatentCache.with_budget(cfg, tokens=100, block_size=16).capacity_tokens == 96
    by_bytes = LatentCache.with_budget(cfg, nbytes=64 * bytes_per_token(cfg), block_size=16)
    assert by_bytes.capacity_tokens == 64 and by_bytes.nbytes() == 64 * bytes_per_token(cfg)
    for kwargs, needle in [({}, "exactly one"), ({"tokens": 8, "nbytes": 8}, "exactly one"),
                           ({"tokens": 15}, "less than one block"), ({"tokens": -1}, "tokens"),
                           ({"nbytes": 0}, "bytes")]:
        with pytest.raises(CacheError, match=needle):
            LatentCache.with_budget(cfg, block_size=16, **kwargs)


def test_the_default_cache_takes_at_most_a_quarter_of_the_memory_available(monkeypatch):
    import os

    from seekmoe.engine import engine as engine_module

    cfg = ModelConfig.from_dict({**tiny_model().config.to_dict(), "max_position_embeddings": 163_840})
    per = bytes_per_token(cfg)
    pages = {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 64 * 2**30 // 4096}  # 64 GiB available: 4 contexts fit
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert engine_module.default_cache_tokens(cfg, torch.float32) == 4 * 163_840
    pages["SC_AVPHYS_PAGES"] = 2**26 // 4096  # 64 MiB: a quarter of it
    assert engine_module.default_cache_tokens(cfg, torch.float32) == 2**26 // 4 // per
    pages["SC_AVPHYS_PAGES"] = 1  # nearly nothing: still 8192 tokens, as before the cap
    assert engine_module.default_cache_tokens(cfg, torch.float32) == 8192
    small = ModelConfig.from_dict({**cfg.to_dict(), "max_position_embeddings": 128})
    assert engine_module.default_cache_tokens(small, torch.float32) == 8192
    assert Engine(tiny_model(), cache_tokens=64, block_size=16).cache.capacity_tokens == 64  # a given budget stands


# ---- batching -----------------------------------------------------------------------------------------------

def test_a_prompt_read_in_chunks_rebuilds_only_each_chunks_keys(monkeypatch):
    from seekmoe.engine import runner as runner_module

    model = tiny_model()
    prompt = prompts([70])[0]
    want = Engine(model, cache_tokens=256).generate([prompt], GREEDY)  # the prompt in one chunk
    starts = []
    extend = runner_module.Prefill.extend
    monkeypatch.setattr(runner_module.Prefill, "extend",
                        lambda self, i, k, v, start: starts.append((start, len(k))) or extend(self, i, k, v, start))
    eng = Engine(model, cache_tokens=256, max_step_tokens=16)
    assert eng.generate([prompt], GREEDY) == want
    layers = model.config.num_hidden_layers
    # each layer: the first chunk's 16 rows, then only each later chunk's own (the last chunk, 6 rows, too)
    assert starts == [(start, 16 if start < 64 else 6) for start in range(0, 70, 16) for _ in range(layers)]
    assert eng.runner._prefills == {}  # dropped once the prompt was read
    monkeypatch.setattr(runner_module, "PREFILL_KV_BYTES", 0)  # no room: every chunk rebuilds the whole context
    starts.clear()
    assert Engine(model, cache_tokens=256, max_step_tokens=16).generate([prompt], GREEDY) == want
    assert starts == []  # and keeps no copy of it


def test_engine_greedy_equals_the_plain_model_and_batching_changes_nothing():
    model = tiny_model()
    ps = prompts([5, 40, 17, 3, 33])
    alone = [Engine(model, cache_tokens=256).generate([p], GREEDY)[0][0] for p in ps]
    together = Engine(model, cache_tokens=256, block_size=4, max_step_tokens=16).generate(ps, GREEDY)
    assert [t[0] for t in together] == alone
    assert alone == [reference_greedy(model, p, 10) for p in ps]


def test_requests_join_a_running_batch_between_steps():
    model = tiny_model()
    a, b = prompts([6, 30])
    eng = Engine(model, cache_tokens=256, block_size=4, max_step_tokens=8)
    ra = eng.add_request(a, GREEDY)
    for _ in range(3):
        eng.step()
    assert ra.seqs[0].num_output == 3  # prefill gave the first token, two decode steps the next: a is decoding
    rb = eng.add_request(b, GREEDY)
    sizes = []
    while eng.has_work:
        sizes.append(sum(1 for s in eng.running))
        eng.step()
    # b's 30-token prompt is read 8 tokens a step (7 beside a's decode token) while a keeps decoding
    assert max(sizes) == 2
    assert ra.seqs[0].tokens[6:] == reference_greedy(model, a, 10)
    assert rb.seqs[0].tokens[30:] == reference_greedy(model, b, 10)


def test_long_prompt_is_read_in_chunks_without_stalling_decoders():
    model = tiny_model()
    short, long = prompts([4, 100])
    eng = Engine(model, cache_tokens=512, max_step_tokens=16)
    rs = eng.add_request(short, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    eng.step()
    rl = eng.add_request(long, GREEDY)
    made = []
    for _ in range(6):  # the long prompt needs 7 steps of 15 tokens; the short one decodes every step
        before = rs.seqs[0].num_output
        eng.step()
        made.append(rs.seqs[0].num_output - before)
    assert made == [1] * 6 and rl.seqs[0].num_output == 0
    while eng.has_work:
        eng.step()
    assert rl.seqs[0].tokens[100:] == reference_greedy(model, long, 10)


def test_preemption_under_a_tight_cache_keeps_every_output():
    model = tiny_model()
    ps = prompts([5, 40, 17, 3, 33])
    roomy = Engine(model, cache_tokens=512).generate(ps, GREEDY)
    tight = Engine(model, cache_tokens=64, block_size=4, max_step_tokens=16)
    assert tight.generate(ps, GREEDY) == roomy
    assert tight.cache.free_blocks == tight.cache.num_blocks


def test_an_int8_cache_pages_preempts_and_shares_prefixes(monkeypatch):
    """The engine over an int8 cache: prompts read in chunks, sequences preempted and read again, a shared prefix
    mapped, every block back at the end. (Its tokens are not float32's: on `tiny`'s near-flat logits the rounding
    changes a quarter of the greedy choices; bench/kv_cache.py measures a trained model.)"""
    model = tiny_model()
    ps = prompts([5, 40, 17, 3, 33])
    tight = Engine(model, cache_tokens=64, block_size=4, max_step_tokens=16, kv_cache_dtype="int8")
    preempted = []
    preempt = tight._preempt
    monkeypatch.setattr(tight, "_preempt", lambda seq: (preempted.append(seq), preempt(seq)))
    out = tight.generate(ps, GREEDY)
    assert [len(o[0]) for o in out] == [10] * 5 and preempted
    assert tight.cache.free_blocks == tight.cache.num_blocks
    system = prompts([32], seed=2)[0]
    eng = Engine(model, cache_tokens=256, block_size=8, kv_cache_dtype="int8")
    first = eng.generate([[*system, 5, 6, 7]], GREEDY)
    rb = eng.add_request([*system, 8, 9], GREEDY)
    eng.step()
    assert rb.seqs[0].table.num_tokens == 34  # 32 mapped, 2 computed
    while eng.has_work:
        eng.step()
    again = Engine(model, cache_tokens=256, block_size=8, kv_cache_dtype="int8")
    assert again.generate([[*system, 5, 6, 7]], GREEDY) == first  # the same rounding, the same tokens


def test_a_request_that_fits_later_waits():
    model = tiny_model()
    eng = Engine(model, cache_tokens=64, block_size=16)  # room for one sequence of 40 + 10 at a time
    a, b = prompts([40, 40])
    ra, rb = eng.add_request(a, GREEDY), eng.add_request(b, GREEDY)
    eng.step()
    assert rb.seqs[0] in eng.waiting and ra.seqs[0] in eng.running
    while eng.has_work:
        eng.step()
    assert rb.seqs[0].tokens[40:] == reference_greedy(model, b, 10)


def test_shared_prefix_is_computed_once():
    model = tiny_model()
    system = prompts([32])[0]
    a, b = [*system, 5, 6, 7], [*system, 8, 9]
    eng = Engine(model, cache_tokens=256, block_size=8)
    out_a = eng.generate([a], GREEDY)
    rb = eng.add_request(b, GREEDY)
    eng.step()
    assert rb.seqs[0].table.num_tokens == 34 and eng.cache.match_prefix(BlockTable(), b) == 32
    while eng.has_work:
        eng.step()
    assert rb.seqs[0].tokens[34:] == reference_greedy(model, b, 10)
    assert out_a[0][0] == reference_greedy(model, a, 10)


def test_cached_prefixes_are_shared_only_within_a_cache_salt():
    """A server salts the prefix cache per API key: another key's request recomputes the prefix (its timing then
    says nothing of what the first key sent), the same key's reuses it."""
    model = tiny_model()
    system = prompts([32])[0]
    a, b = [*system, 5, 6, 7], [*system, 8, 9]
    eng = Engine(model, cache_tokens=512, block_size=8, max_step_tokens=8)
    eng.generate([a], GREEDY)  # no salt: the blocks of `system` are cached
    eng.add_request(a, GREEDY, "alice-a", cache_salt="alice")
    while eng.has_work:
        eng.step()
    for salt, reused in ((None, 32), ("alice", 32), ("bob", 0), ("", 0)):
        req = eng.add_request(b, GREEDY, f"b-{salt}", cache_salt=salt)
        eng.step()
        # a hit maps 32 cached tokens and computes the last 2; a miss computes one step's 8
        assert req.seqs[0].table.num_tokens == (reused + 2 if reused else 8), salt
        while eng.has_work:
            eng.step()
        assert req.seqs[0].tokens[34:] == reference_greedy(model, b, 10)
    with pytest.raises(EngineError, match="cache_salt"):
        eng.add_request(b, GREEDY, cache_salt=b"bytes")


def test_cancel_frees_blocks_and_ends_the_request():
    model = tiny_model()
    eng = Engine(model, cache_tokens=256, block_size=4)
    req = eng.add_request(prompts([20])[0], SamplingParams(max_tokens=50, n=2, seed=0, ignore_eos=True))
    for _ in range(3):
        eng.step()
    assert eng.cache.free_blocks < eng.cache.num_blocks
    events = eng.cancel(req.id)
    assert [(e.index, e.finish_reason) for e in events] == [(0, "cancelled"), (1, "cancelled")]
    assert eng.cache.free_blocks == eng.cache.num_blocks and not eng.has_work
    assert eng.cancel(req.id) == [] and eng.cancel("no-such-id") == []


def test_stop_reasons():
    model = tiny_model()
    p = prompts([8])[0]
    greedy = reference_greedy(model, p, 10)
    eng = Engine(model, cache_tokens=256)
    req = eng.add_request(p, SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[greedy[3]],
                                            ignore_eos=True))
    while eng.has_work:
        events = eng.step()
    assert req.seqs[0].tokens[8:] == greedy[:greedy.index(greedy[3]) + 1]
    assert events[-1][1].finish_reason == "stop"
    eos = tiny_model(eos_token_id=greedy[2])
    out = Engine(eos, cache_tokens=256).generate([p], SamplingParams(max_tokens=10, temperature=0))
    assert out[0][0][-1] == greedy[2] and len(out[0][0]) <= 3
    req = eng.add_request(p, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    last = None
    while eng.has_work:
        last = eng.step() or last
    assert req.seqs[0].num_output == 4 and last[-1][1].finish_reason == "length"


def test_seeded_sampling_is_the_same_whatever_else_is_in_the_batch():
    model = tiny_model()
    p, *others = prompts([12, 7, 30, 3])
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=42)
    alone = Engine(model, cache_tokens=512).generate([p], params)[0]
    eng = Engine(model, cache_tokens=512, max_step_tokens=8)
    for o in others:
        eng.add_request(o, SamplingParams(max_tokens=16, temperature=0.7))
    mixed = eng.generate([p], params)[0]
    assert mixed == alone
    two = Engine(model, cache_tokens=512).generate([p], SamplingParams(max_tokens=16, n=2, seed=42))[0]
    assert two[0] != two[1]  # n samples of one request differ, and are reproducible
    assert Engine(model, cache_tokens=512).generate([p], SamplingParams(max_tokens=16, n=2, seed=42))[0] == two


# ---- refusals -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, needle", [
    ([], "non-empty"), ("text", "non-empty list"), ([1, 2, 97], "97"), ([1, -1], "-1"), ([1, True], "True"),
    ([1.0], "1.0"), (None, "non-empty"),
])
def test_bad_prompts_are_refused(prompt, needle):
    with pytest.raises(EngineError, match=needle):
        Engine(tiny_model(), cache_tokens=256).add_request(prompt, GREEDY)


def test_requests_that_can_never_run_are_refused_with_the_reason():
    model = tiny_model()  # context 128
    eng = Engine(model, cache_tokens=64, block_size=16)
    with pytest.raises(EngineError, match=r"context is 128 tokens.*needs 130 \(120 in the prompt, max_tokens 10\)"):
        eng.add_request([5] * 120, GREEDY)
    with pytest.raises(EngineError, match="KV cache holds 64 tokens"):
        eng.add_request([5] * 60, GREEDY)
    eng = Engine(model, cache_tokens=256, max_waiting=2)
    eng.add_request([5], GREEDY, request_id="x")
    with pytest.raises(EngineError, match="already running"):
        eng.add_request([5], GREEDY, request_id="x")
    eng.add_request([5], GREEDY)
    with pytest.raises(EngineError, match=r"queue is full \(2 sequences waiting, limit 2\)"):
        eng.add_request([5], GREEDY)
    eng = Engine(model, cache_tokens=256, max_waiting=1)
    eng.add_request([5], GREEDY)
    with pytest.raises(EngineError, match=r"queue is full \(1 sequence waiting, limit 1\)"):
        eng.add_request([5], GREEDY)
    with pytest.raises(EngineError, match="max_num_seqs"):
        Engine(model, max_num_seqs=0)


# ---- the engine thread and streams --------------------------------------------------------------------------

def test_streams_sync_and_async_give_the_engine_tokens():
    model = tiny_model()
    ps = prompts([9, 14])
    want = Engine(model, cache_tokens=256).generate(ps, GREEDY)
    loop = EngineLoop(Engine(model, cache_tokens=256))
    try:
        got = [out.token_id for out in loop.submit(ps[0], GREEDY)]
        assert got == want[0][0]

        async def consume():
            stream = loop.submit(ps[1], GREEDY)
            return [out async for out in stream]

        outs = asyncio.run(consume())
        assert [o.token_id for o in outs] == want[1][0] and outs[-1].finish_reason == "length"
    finally:
        loop.close()


def test_cancel_from_the_consumer_ends_the_stream(monkeypatch):
    engine = Engine(tiny_model(), cache_tokens=256)
    forward = engine.runner.forward

    def slow_forward(*args):
        # a step as slow as a real model's: the 100 steps take 5 s, so the engine cannot finish before the cancel,
        # even while a busy machine keeps this thread waiting
        time.sleep(0.05)
        return forward(*args)

    monkeypatch.setattr(engine.runner, "forward", slow_forward)
    loop = EngineLoop(engine)
    try:
        stream = loop.submit(prompts([5])[0], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
        seen = []
        for out in stream:
            seen.append(out)
            if len(seen) == 3:
                stream.cancel()
        assert seen[-1].finish_reason == "cancelled" and len(seen) < 100
        cache = loop.engine.cache
        assert cache.free_blocks == cache.num_blocks
    finally:
        loop.close()


def test_an_engine_failure_reaches_every_waiting_stream(monkeypatch):
    engine = Engine(tiny_model(), cache_tokens=256)

    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.runner, "forward", broken)
    loop = EngineLoop(engine)
    stream = loop.submit(prompts([5])[0], GREEDY)
    with pytest.raises(EngineError, match="out of memory"):
        list(stream)
    with pytest.raises(EngineError, match="not running"):
        loop.submit([5], GREEDY)
    loop.close()


def test_expert_loads_are_counted_per_moe_layer():
    model = tiny_model()
    eng = Engine(model, cache_tokens=256)
    eng.generate(prompts([10]), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    counts = eng.runner.expert_counts
    assert sorted(counts) == [1, 2]  # layer 0 is dense
    k = model.config.num_experts_per_tok
    assert all(c.sum().item() == (10 + 4) * k for c in counts.values())  # 10 prompt tokens + 4 fed back


def test_a_cancel_gets_in_between_two_steps(monkeypatch):
    """The engine thread re-takes its lock at once after each step; a caller must still get in at the next gap."""
    engine = Engine(tiny_model(), cache_tokens=256)
    forward = engine.runner.forward

    steps = []

    def busy_forward(*args):  # busy like a real step: holding the GIL, not sleeping
        steps.append(1)
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        return forward(*args)

    monkeypatch.setattr(engine.runner, "forward", busy_forward)
    loop = EngineLoop(engine)
    try:
        stream = loop.submit(prompts([5])[0], SamplingParams(max_tokens=120, temperature=0, ignore_eos=True))
        for i, _ in enumerate(stream):
            if i == 2:
                before = len(steps)
                stream.cancel()
                during = len(steps) - before
                break
        # counted in steps, not seconds (a busy machine stretches those): the step under way and at most one that
        # began as the cancel came, not the rest of the 120-token generation
        assert during <= 2, during
    finally:
        loop.close()


@pytest.mark.parametrize("c, t, block", [(1, 9, 4), (5, 5 + 37, 8), (40, 41, 16), (17, 300, 64), (64, 1000, 512)])
def test_chunked_attention_is_causal_attention_over_the_context(c, t, block):
    """A prompt chunk's blocked attention (online softmax) equals SDPA with the explicit mask: query i of the chunk
    sits at position T - C + i; blocks that end mid-chunk, a chunk wider than a block, a lone query."""
    import torch.nn.functional as F

    from seekmoe.engine.runner import chunked_attention

    g = torch.Generator().manual_seed(c + t)
    q, k, v = torch.randn(c, 3, 12, generator=g), torch.randn(t, 3, 12, generator=g), torch.randn(t, 3, 7, generator=g)
    mask = torch.ones(c, t, dtype=torch.bool).tril(t - c)
    want = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                          scale=0.3).transpose(0, 1)
    torch.testing.assert_close(chunked_attention(q, k, v, 0.3, block=block), want, atol=1e-5, rtol=1e-5)
    bf = chunked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3, block=block)
    assert bf.dtype == torch.bfloat16 and (bf.float() - want).abs().max() < 0.05
