"""Sampling: parameters checked by name, penalties exact, filters never leak, draws match softmax, seeds reproduce."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from seekmoe.engine.sampling import (
    Sample,
    SamplingError,
    SamplingParams,
    SeqSampler,
    apply_penalties,
    process_logits,
    sample,
)

NAN, INF = float("nan"), float("inf")

BAD = [  # (field, value, what the message must say about the valid range)
    ("max_tokens", 0, ">= 1"), ("max_tokens", 1.5, ">= 1"), ("max_tokens", True, ">= 1"), ("max_tokens", "8", ">= 1"),
    ("temperature", -0.1, "[0, 2]"), ("temperature", 3.5, "[0, 2]"), ("temperature", NAN, "[0, 2]"),
    ("temperature", INF, "[0, 2]"), ("temperature", "1", "[0, 2]"), ("temperature", True, "[0, 2]"),
    ("temperature", None, "[0, 2]"),
    ("top_p", 0, "(0, 1]"), ("top_p", 1.01, "(0, 1]"), ("top_p", NAN, "(0, 1]"), ("top_p", False, "(0, 1]"),
    ("top_k", -2, ">= 1"), ("top_k", 2.0, ">= 1"), ("top_k", True, ">= 1"), ("top_k", None, ">= 1"),
    ("min_p", -0.01, "[0, 1]"), ("min_p", 1.5, "[0, 1]"), ("min_p", NAN, "[0, 1]"), ("min_p", -INF, "[0, 1]"),
    ("repetition_penalty", 0, "(0, 2]"), ("repetition_penalty", -1.0, "(0, 2]"),
    ("repetition_penalty", 2.5, "(0, 2]"), ("repetition_penalty", NAN, "(0, 2]"),
    ("repetition_penalty", True, "(0, 2]"),
    ("presence_penalty", 2.5, "[-2, 2]"), ("presence_penalty", -2.01, "[-2, 2]"), ("presence_penalty", NAN, "[-2, 2]"),
    ("presence_penalty", INF, "[-2, 2]"), ("presence_penalty", "0", "[-2, 2]"),
    ("frequency_penalty", -3, "[-2, 2]"), ("frequency_penalty", 2.01, "[-2, 2]"), ("frequency_penalty", NAN, "[-2, 2]"),
    ("frequency_penalty", True, "[-2, 2]"),
    ("stop", [""], "non-empty"), ("stop", "", "non-empty"), ("stop", [1], "non-empty"), ("stop", 5, "str"),
    ("stop", ["x"] * 17, "at most 16"),
    ("stop", ["ok", "x" * 1001], "at most 1000 characters, got 1001 in stop[1]"),
    ("stop_token_ids", [-1], ">= 0"), ("stop_token_ids", [True], ">= 0"), ("stop_token_ids", [1.0], ">= 0"),
    ("stop_token_ids", 7, ">= 0"),
    ("ignore_eos", 1, "bool"), ("ignore_eos", "yes", "bool"),
    ("n", 0, "[1, 16]"), ("n", 17, "[1, 16]"), ("n", True, "[1, 16]"), ("n", 2.0, "[1, 16]"),
    ("logprobs", -1, "[0, 20]"), ("logprobs", 21, "[0, 20]"), ("logprobs", True, "[0, 20]"),
    ("logprobs", 1.0, "[0, 20]"),
    ("seed", -1, "[0, 2**63)"), ("seed", 2**63, "[0, 2**63)"), ("seed", True, "[0, 2**63)"),
    ("seed", 1.0, "[0, 2**63)"), ("seed", "1", "[0, 2**63)"),
]


@pytest.mark.parametrize(("name", "value", "expected"), BAD, ids=[f"{n}={v!r:.12}" for n, v, _ in BAD])
def test_bad_value_names_field_and_range(name, value, expected):
    with pytest.raises(SamplingError) as err:
        SamplingParams(**{name: value})
    assert str(err.value).startswith(f"{name} must be"), str(err.value)
    assert err.value.param == name  # callers rename it (a CLI flag, an API field) from this, not the text
    assert expected in str(err.value), str(err.value)
    assert isinstance(err.value, ValueError)


def test_error_message_example():
    with pytest.raises(SamplingError, match=r"^temperature must be in \[0, 2\], got 3\.5$"):
        SamplingParams(temperature=3.5)


def test_good_values_are_normalised():
    p = SamplingParams(temperature=1, top_k=-1, stop="###", stop_token_ids=[3, 4], seed=2**63 - 1, logprobs=0)
    assert p.temperature == 1.0 and isinstance(p.temperature, float)
    assert p.top_k == 0 and p.stop == ("###",) and p.stop_token_ids == (3, 4)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop=["x"] * 16, n=16, logprobs=20, min_p=1, top_p=1e-9, repetition_penalty=2).n == 16
    assert SamplingParams(stop="x" * 1000).stop == ("x" * 1000,)  # MAX_STOP_CHARS itself is allowed
    hash(p)  # frozen and hashable: the engine may key caches on it


def test_greedy_property():
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(temperature=1.3, top_k=1).greedy
    assert not SamplingParams().greedy and not SamplingParams(top_k=2).greedy


def samplers(params: SamplingParams, count: int, V: int, prompt=(), first_seed: int = 0) -> list[SeqSampler]:
    """`count` samplers of the same params, seeds first_seed, first_seed + 1, ..."""
    return [SeqSampler(dataclasses.replace(params, seed=first_seed + i), prompt, V) for i in range(count)]


def draw_counts(logits_V: torch.Tensor, params: SamplingParams, rows: int = 1000, steps: int = 20) -> torch.Tensor:
    """Token counts over rows * steps draws from one logits row, each batch row a differently seeded sampler."""
    V = logits_V.numel()
    batch = samplers(params, rows, V)
    counts = torch.zeros(V)
    for _ in range(steps):
        for s in sample(logits_V.expand(rows, V), batch):
            counts[s.token_id] += 1
    return counts


def test_greedy_is_argmax_and_draws_nothing():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    batch = [SeqSampler(SamplingParams(temperature=0), [], 50) for _ in range(8)]
    assert [s.token_id for s in sample(logits, batch)] == logits.argmax(dim=1).tolist()
    assert all(s._generator is None for s in batch)


def test_top_k_1_is_greedy_at_any_temperature():
    logits = torch.randn(16, 200, generator=torch.Generator().manual_seed(1))
    batch = [SeqSampler(SamplingParams(temperature=1.7, top_k=1, seed=i), [], 200) for i in range(16)]
    for _ in range(3):
        assert [s.token_id for s in sample(logits, batch)] == logits.argmax(dim=1).tolist()


def test_tiny_temperature_is_argmax_not_nan():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(2)) * 30
    batch = [SeqSampler(SamplingParams(temperature=1e-6, seed=i), [], 100) for i in range(4)]
    assert [s.token_id for s in sample(logits, batch)] == logits.argmax(dim=1).tolist()


PROBS = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.15, 0.05])  # sorted: 1 (.4), 3 (.25), 4 (.15), 2 (.1), 0 and 5 (.05)
FILTERS = [  # params, the tokens they keep from PROBS
    (SamplingParams(top_k=3), {1, 3, 4}),
    (SamplingParams(top_p=0.5), {1, 3}),  # .4 < .5, so the second token is needed to reach .5
    (SamplingParams(top_p=0.7), {1, 3, 4}),
    (SamplingParams(top_p=0.1), {1}),  # the best token always stays
    (SamplingParams(min_p=0.3), {1, 3, 4}),  # drops p < .12
    (SamplingParams(min_p=0.5), {1, 3}),  # drops p < .2
    (SamplingParams(min_p=1.0), {1}),
    (SamplingParams(top_k=4, top_p=0.8, min_p=0.3), {1, 3, 4}),
    (SamplingParams(top_k=2, temperature=2.0), {1, 3}),
]


@pytest.mark.parametrize(("params", "allowed"), FILTERS)
def test_filters_keep_exactly_the_allowed_set(params, allowed):
    x = process_logits(PROBS.log().unsqueeze(0), [SeqSampler(params, [], 6)])[0]
    assert {i for i in range(6) if x[i] > -math.inf} == allowed
    counts = draw_counts(PROBS.log(), params, rows=200, steps=10)
    assert {i for i in range(6) if counts[i] > 0} == allowed  # every allowed token drawn, no other ever
    # what is kept is drawn in proportion to its renormalised probability (at temperature 1)
    if params.temperature == 1.0:
        keep = torch.tensor([i in allowed for i in range(6)])
        expected = torch.where(keep, PROBS, 0.0) / PROBS[keep].sum()
        assert (counts / counts.sum() - expected).abs().max() < 0.04


def test_filters_apply_per_row_in_a_mixed_batch():
    rows = [SeqSampler(p, [], 6) for p, _ in FILTERS] + [SeqSampler(SamplingParams(), [], 6)]
    x = process_logits(PROBS.log().expand(len(rows), 6), rows)
    for row, (_, allowed) in zip(x, [*FILTERS, (None, set(range(6)))], strict=True):
        assert {i for i in range(6) if row[i] > -math.inf} == allowed


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.6])
def test_draws_match_softmax_of_logits_over_temperature(temperature):
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -1.5])
    counts = draw_counts(logits, SamplingParams(temperature=temperature), rows=1000, steps=20)
    expected = (logits / temperature).softmax(dim=0)
    assert (counts / counts.sum() - expected).abs().max() < 0.012  # ~4 sigma at 20k draws


def test_repetition_penalty_exact():
    logits = torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0]] * 2)
    pen = SeqSampler(SamplingParams(repetition_penalty=2.0), [0, 1], 5)
    pen.append(2)
    off = SeqSampler(SamplingParams(), [0, 1], 5)
    out = apply_penalties(logits, [pen, off])
    # prompt tokens 0 and 1 and output token 2: positive divided, negative multiplied; 3 and 4 untouched
    assert out[0].tolist() == [1.0, -2.0, 0.25, -0.5, 3.0]
    assert out[1].tolist() == logits[1].tolist()
    assert logits[0].tolist() == [2.0, -1.0, 0.5, -0.5, 3.0]  # the input is not changed in place


def test_presence_and_frequency_exact_over_output_only():
    logits = torch.zeros(2, 5)
    a = SeqSampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [0, 0, 4], 5)
    b = SeqSampler(SamplingParams(presence_penalty=-1.0, frequency_penalty=-0.5), [0], 5)
    for t in [1, 1, 2, 3, 3, 3]:
        a.append(t)
        b.append(t)
    out = apply_penalties(logits, [a, b])
    # token: 0 and 4 are prompt only (no penalty); 1 seen twice, 2 once, 3 three times
    assert out[0].tolist() == [0.0, -(0.5 + 0.5), -(0.5 + 0.25), -(0.5 + 0.75), 0.0]
    assert out[1].tolist() == [0.0, 1.0 + 1.0, 1.0 + 0.5, 1.0 + 1.5, 0.0]


def test_repetition_then_presence_frequency_order():
    s = SeqSampler(SamplingParams(repetition_penalty=1.5, presence_penalty=1.0, frequency_penalty=0.5), [0], 3)
    s.append(1)
    out = apply_penalties(torch.tensor([[3.0, 3.0, 3.0]]), [s])
    assert out[0].tolist() == [2.0, 3.0 / 1.5 - 1.0 - 0.5, 3.0]


def run_steps(batch: list[SeqSampler], row_of: dict[int, int], steps: int, V: int) -> dict[int, list[int]]:
    """Decode `steps` steps with fresh random logits, appending each draw; returns the tokens of the tracked rows.

    row_of maps a tracked name to its row; the logits a tracked name sees depend on the name only, never the row."""
    out = {name: [] for name in row_of}
    for step in range(steps):
        logits = torch.randn(len(batch), V, generator=torch.Generator().manual_seed(1000 + step))
        for name, row in row_of.items():
            logits[row] = torch.randn(V, generator=torch.Generator().manual_seed(name * 7919 + step))
        for i, (s, drawn) in enumerate(zip(batch, sample(logits, batch), strict=True)):
            s.append(drawn.token_id)
            if i in row_of.values():
                out[next(n for n, r in row_of.items() if r == i)].append(drawn.token_id)
    return out


def test_seeded_row_is_independent_of_batch_composition():
    V = 300
    params = SamplingParams(temperature=0.9, top_p=0.95, repetition_penalty=1.2, frequency_penalty=0.3, seed=123)
    alone = run_steps([SeqSampler(params, [5, 6], V)], {1: 0}, steps=40, V=V)[1]
    others = [
        SamplingParams(temperature=0),
        SamplingParams(top_k=5, seed=9),
        SamplingParams(min_p=0.2, presence_penalty=1.0),
        SamplingParams(temperature=1.5, top_p=0.5, seed=123),  # same seed, other params: no shared state
        SamplingParams(seed=123, repetition_penalty=1.2, frequency_penalty=0.3),
    ]
    batch = [SeqSampler(p, [1, 2, 3], V) for p in others[:3]] + [SeqSampler(params, [5, 6], V)]
    batch += [SeqSampler(p, [], V) for p in others[3:]]
    assert run_steps(batch, {1: 3}, steps=40, V=V)[1] == alone
    assert len(set(alone)) > 10  # it really drew


def test_seed_reproduces_and_n_samples_differ():
    V = 1000
    params = SamplingParams(temperature=1.0, seed=5, n=4)

    def run(offsets, p=params):
        batch = [SeqSampler(p, [], V, seed_offset=o) for o in offsets]
        return run_steps(batch, {o + 1: i for i, o in enumerate(offsets)}, steps=20, V=V)

    first, again = run(range(4)), run(range(4))
    assert first == again
    # give every sample the same logits: only the generator tells them apart
    same = torch.randn(4, V, generator=torch.Generator().manual_seed(0))[:1].expand(4, V)
    batch = [SeqSampler(params, [], V, seed_offset=o) for o in range(4)]
    seqs = list(zip(*[[s.token_id for s in sample(same, batch)] for _ in range(20)], strict=True))
    assert len(set(seqs)) == 4
    assert run([2])[3] == first[3]  # sample 2 alone is sample 2 of the batch
    unseeded = [SeqSampler(SamplingParams(), [], V) for _ in range(2)]
    draws = [[s.token_id for s in sample(same[:2], unseeded)] for _ in range(20)]
    assert [d[0] for d in draws] != [d[1] for d in draws]


def test_logprobs_are_raw_log_softmax_and_sorted():
    V = 40
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3)) * 2
    params = [
        SamplingParams(logprobs=5, temperature=0.7, repetition_penalty=1.8, presence_penalty=2.0, seed=0),
        SamplingParams(logprobs=0, seed=1),
        SamplingParams(temperature=0),
        SamplingParams(logprobs=20, top_k=3, seed=2),
    ]
    batch = [SeqSampler(p, list(range(10)), V) for p in params]
    raw = logits.log_softmax(dim=1)
    for _ in range(5):
        out = sample(logits, batch)
        for row, (s, p) in enumerate(zip(out, params, strict=True)):
            assert isinstance(s, Sample)
            assert s.logprob == pytest.approx(raw[row, s.token_id].item(), abs=1e-5)
            assert len(s.top_logprobs) == (p.logprobs or 0)
            best = raw[row].sort(descending=True)
            assert [t for t, _ in s.top_logprobs] == best.indices[: len(s.top_logprobs)].tolist()
            top_lps = best.values[: len(s.top_logprobs)].tolist()
            assert [lp for _, lp in s.top_logprobs] == pytest.approx(top_lps, abs=1e-5)
            batch[row].append(s.token_id)


def test_bad_inputs_name_the_thing():
    s = SeqSampler(SamplingParams(repetition_penalty=1.1), [1, 2], 10)
    with pytest.raises(SamplingError, match=r"token_id must be an int in \[0, 10\)"):
        s.append(10)
    with pytest.raises(SamplingError, match=r"prompt token ids must be in \[0, 10\), got 12"):
        SeqSampler(SamplingParams(), [1, 12], 10)
    with pytest.raises(SamplingError, match="logits must be"):
        sample(torch.zeros(2, 10), [s])
    with pytest.raises(SamplingError, match="vocab_size 10, but logits have V = 11"):
        sample(torch.zeros(1, 11), [s])
    with pytest.raises(SamplingError, match="seed_offset must be an int >= 0"):
        SeqSampler(SamplingParams(), [], 10, seed_offset=-1)


def test_logprobs_are_skipped_when_no_row_asks():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(0))
    rows = [SeqSampler(SamplingParams(temperature=0), [1], 30), SeqSampler(SamplingParams(seed=1), [1], 30)]
    out = sample(logits, rows)
    assert [s.logprob for s in out] == [None, None] and out[0].token_id == logits[0].argmax().item()
