"""Sampling: a request's parameters, each sequence's generator and token counts, one batched draw per decode step.

A sequence may also carry a TokenConstraint (constrained decoding: JSON, a JSON Schema, a grammar): it says which
tokens may come next, as a bitmask. The constraint is built above the engine, where the text and the tokenizer are
known (seekmoe.text.grammar); here it is only asked for its mask and told the token drawn. Rows without one cost
nothing extra.

Shapes: B rows in the batch, V vocabulary, S rows that draw (not greedy), R rows with a given penalty (or a
constraint) on, K top tokens, W 32-bit words of a token bitmask (ceil(V / 32)).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from seekmoe.errors import SeekmoeError

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOP = 16
# Characters in one stop string. Real ones are short (OpenAI takes up to 4 stop sequences; clients of vLLM and
# llama.cpp send markers like "\n\nUser:" or "</tool_call>"), and text is held back from the stream while it could
# still be the start of one, so a long one delays every choice's output by up to its length: 1,000 leaves room for
# any marker or template line and keeps the stop-matching state small (see TextStream).
MAX_STOP_CHARS = 1000
MAX_SEED = 2**63

# name: (low, high, low excluded); errors show the interval, e.g. (0, 2] for repetition_penalty
RANGES = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "repetition_penalty": (0.0, 2.0, True),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
}


class SamplingError(SeekmoeError, ValueError):
    """A sampling parameter, prompt or logits tensor has the wrong type, shape or value.

    `param` names the SamplingParams field at fault (the message starts with it), None for anything else, so
    callers can name it in their own terms (a CLI flag, an API field) without parsing the message."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int to Python, never to a client


def _require(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise SamplingError(f"{name} must be {expected}, got {value!r}", param=name)


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; every field is checked on construction."""

    max_tokens: int = 128  # the engine checks the upper bound against the context length; 0: only score the prompt
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off (-1 is stored as 0)
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/vLLM: over prompt + output tokens
    presence_penalty: float = 0.0  # OpenAI: over output tokens only
    frequency_penalty: float = 0.0  # OpenAI: over output tokens only
    stop: tuple[str, ...] = ()  # matched on text elsewhere; a str or list is normalised to a tuple
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    logprobs: int | None = None  # None: off; else how many top tokens to report (0: only the chosen one)
    # None: off; else each prompt token's logprob (the first has none) and this many top tokens at its position
    prompt_logprobs: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        low = 0 if self.prompt_logprobs is not None else 1  # writing nothing is only worth it to score the prompt
        _require(_is_int(self.max_tokens) and self.max_tokens >= low, "max_tokens",
                 "an int >= 1 (0 only with prompt_logprobs)" if low else "an int >= 0", self.max_tokens)
        for name, (lo, hi, lo_open) in RANGES.items():
            value = getattr(self, name)
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            is_real = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            in_range = is_real and (lo < value if lo_open else lo <= value) and value <= hi
            _require(in_range, name, f"in {interval}", value)
            object.__setattr__(self, name, float(value))
        _require(_is_int(self.top_k) and (self.top_k >= -1), "top_k", "an int >= 1, or 0 or -1 for off", self.top_k)
        object.__setattr__(self, "top_k", max(self.top_k, 0))
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        _require(isinstance(stop, list | tuple), "stop", "a str or a list of str", self.stop)
        if len(stop) > MAX_STOP:
            raise SamplingError(f"stop must be at most {MAX_STOP} strings, got {len(stop)}", param="stop")
        for i, s in enumerate(stop):
            _require(isinstance(s, str) and s != "", "stop", "a list of non-empty str", s)
            if len(s) > MAX_STOP_CHARS:  # the message leaves the string out: it can be long
                raise SamplingError(f"stop must be strings of at most {MAX_STOP_CHARS} characters, got "
                                    f"{len(s)} in stop[{i}]", param="stop")
        object.__setattr__(self, "stop", tuple(stop))
        ids = self.stop_token_ids
        _require(isinstance(ids, list | tuple), "stop_token_ids", "a list of ints >= 0", ids)
        for i in ids:
            _require(_is_int(i) and i >= 0, "stop_token_ids", "a list of ints >= 0", i)
        object.__setattr__(self, "stop_token_ids", tuple(ids))
        _require(isinstance(self.ignore_eos, bool), "ignore_eos", "a bool", self.ignore_eos)
        _require(_is_int(self.n) and 1 <= self.n <= MAX_N, "n", f"an int in [1, {MAX_N}]", self.n)
        for name in ("logprobs", "prompt_logprobs"):
            lp = getattr(self, name)
            _require(lp is None or (_is_int(lp) and 0 <= lp <= MAX_LOGPROBS), name,
                     f"None or an int in [0, {MAX_LOGPROBS}]", lp)
        _require(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < MAX_SEED), "seed",
                 "None or an int in [0, 2**63)", self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


# Hugging Face generation_config.json keys that set a model's sampling defaults, as vLLM reads them (its
# max_new_tokens is left out: our default answer length is the endpoint's); do_sample is ignored, as vLLM does
GENERATION_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def generation_defaults(config: object) -> dict[str, float | int]:
    """The SamplingParams fields a model's parsed generation_config.json sets, checked as a request's would be."""
    if not isinstance(config, dict):
        raise SamplingError(f"must be a JSON object, got {type(config).__name__}")
    given = {key: config[key] for key in GENERATION_CONFIG_KEYS if config.get(key) is not None}
    params = SamplingParams(**given)  # "top_p must be in (0, 1], got 0" names the key
    return {key: getattr(params, key) for key in given}


def read_generation_defaults(folder: Path) -> dict[str, float | int] | None:
    """generation_defaults of folder/generation_config.json, None without one; SamplingError naming the file for
    one that is unreadable, not JSON, or holds a bad value."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    try:
        return generation_defaults(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SamplingError) as e:
        raise SamplingError(f"{path}: not a usable generation config ({e})") from None


@runtime_checkable
class TokenConstraint(Protocol):
    """What one sequence may write next: a grammar's matcher, opaque to the engine. `fill_bitmask` always allows at
    least one token (a finished or broken grammar allows end-of-sequence)."""

    def fill_bitmask(self, out_W: torch.Tensor) -> None:
        """Write the allowed tokens into a contiguous int32 CPU tensor of W words: token t is bit t % 32 of word
        t // 32."""

    def advance(self, token_id: int) -> None:
        """Take the token drawn (always one the last mask allowed)."""

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but end-of-sequence may follow, so the sequence ends here."""

    def fork(self) -> TokenConstraint:
        """An independent copy in the same state (one for each of a request's n sequences)."""


def _derive_seed(seed: int, offset: int) -> int:
    """The generator seed of sample `offset` of a request: hashed, as seed + offset would make (s, 1) == (s + 1, 0)."""
    digest = hashlib.blake2b(f"{seed}:{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: every torch device accepts it


class SeqSampler:
    """One sequence's sampling state: its params, its own torch.Generator (seeded from params.seed, or from a fresh
    random seed when None), and the token counts penalties need.

    The generator and counts move to the logits' device on first use, so the engine builds these without knowing it.
    """

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int, seed_offset: int = 0,
                 constraint: TokenConstraint | None = None):
        _require(isinstance(params, SamplingParams), "params", "a SamplingParams", params)
        _require(constraint is None or isinstance(constraint, TokenConstraint), "constraint",
                 "None or a TokenConstraint", constraint)
        _require(_is_int(vocab_size) and vocab_size >= 1, "vocab_size", "an int >= 1", vocab_size)
        _require(_is_int(seed_offset) and seed_offset >= 0, "seed_offset", "an int >= 0", seed_offset)
        self.params = params
        self.vocab_size = vocab_size
        self.constraint = constraint
        self.seed = _derive_seed(params.seed if params.seed is not None else secrets.randbits(63), seed_offset)
        self._generator: torch.Generator | None = None  # made on the logits' device at the first draw
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
        bad = prompt[(prompt < 0) | (prompt >= vocab_size)]
        if bad.numel():
            raise SamplingError(f"prompt token ids must be in [0, {vocab_size}), got {bad[0].item()}")
        # only sequences with a penalty on carry (V,) state: most requests pay nothing
        self._seen: torch.Tensor | None = None  # bool (V,): in prompt or output, for the repetition penalty
        self._counts: torch.Tensor | None = None  # int32 (V,): output occurrences, for presence/frequency
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(vocab_size, dtype=torch.bool)
            self._seen[prompt] = True
        if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
            self._counts = torch.zeros(vocab_size, dtype=torch.int32)

    def append(self, token_id: int) -> None:
        """Record an output token (updates the counts penalties read, and moves the constraint on)."""
        _require(_is_int(token_id) and 0 <= token_id < self.vocab_size, "token_id", f"an int in [0, {self.vocab_size})",
                 token_id)
        if self.constraint is not None:
            self.constraint.advance(token_id)
        if self._seen is not None:
            self._seen[token_id] = True
        if self._counts is not None:
            self._counts[token_id] += 1

    def _seen_on(self, device: torch.device) -> torch.Tensor:
        if self._seen.device != device:
            self._seen = self._seen.to(device)
        return self._seen

    def _counts_on(self, device: torch.device) -> torch.Tensor:
        if self._counts.device != device:
            self._counts = self._counts.to(device)
        return self._counts

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator


@dataclass
class Sample:
    """One row's draw (or, from `score`, a token read); logprobs are under the raw model distribution (see `sample`)."""

    token_id: int
    logprob: float | None  # None when no row of the batch asked for logprobs (it costs a pass over the vocabulary)
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # best first


def _check_batch(logits: torch.Tensor, samplers: Sequence[SeqSampler]) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(samplers):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise SamplingError(f"logits must be (B, V) with B = {len(samplers)} samplers, got {shape}")
    for i, s in enumerate(samplers):
        if s.vocab_size != logits.shape[1]:
            raise SamplingError(f"sampler {i} has vocab_size {s.vocab_size}, but logits have V = {logits.shape[1]}")


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)  # (R, 1)


def _select(rows: list[int], batch: int) -> list[int] | slice:
    """An index for these rows: a slice when they are the whole batch, so indexing is a view, not a (B, V) copy."""
    return slice(None) if len(rows) == batch else rows


def apply_penalties(logits: torch.Tensor, samplers: Sequence[SeqSampler]) -> torch.Tensor:
    """Repetition penalty (over prompt + output), then presence and frequency (over output only); new (B, V) float32."""
    _check_batch(logits, samplers)
    x_BV = logits.float().clone()
    rep = [i for i, s in enumerate(samplers) if s._seen is not None]
    if rep:
        seen_RV = torch.stack([samplers[i]._seen_on(x_BV.device) for i in rep])
        pen_R1 = _column([samplers[i].params.repetition_penalty for i in rep], x_BV)
        x_RV = x_BV[_select(rep, len(samplers))]
        # dividing a positive logit and multiplying a negative one both push a seen token down when penalty > 1
        x_RV = torch.where(seen_RV, torch.where(x_RV > 0, x_RV / pen_R1, x_RV * pen_R1), x_RV)
        x_BV[_select(rep, len(samplers))] = x_RV
    pf = [i for i, s in enumerate(samplers) if s._counts is not None]
    if pf:
        counts_RV = torch.stack([samplers[i]._counts_on(x_BV.device) for i in pf]).to(x_BV.dtype)
        freq_R1 = _column([samplers[i].params.frequency_penalty for i in pf], x_BV)
        pres_R1 = _column([samplers[i].params.presence_penalty for i in pf], x_BV)
        x_BV[_select(pf, len(samplers))] -= freq_R1 * counts_RV + pres_R1 * (counts_RV > 0)
    return x_BV


# what each byte of a token bitmask adds to the logits of its 8 tokens: 0 where a bit is set, -inf where not; a
# read-only table, so masking is one lookup and one add (cheaper than unpacking bits, then a masked fill)
_BYTE_BIAS = torch.where((torch.arange(256)[:, None] >> torch.arange(8)) & 1 == 1, 0.0, -math.inf)  # (256, 8)


def apply_constraints(x_BV: torch.Tensor, samplers: Sequence[SeqSampler]) -> None:
    """Set the logits of the tokens each constrained row's grammar forbids to -inf, in place; other rows untouched."""
    rows = [i for i, s in enumerate(samplers) if s.constraint is not None]
    if not rows:
        return
    V = x_BV.shape[1]
    mask_RW = torch.empty(len(rows), (V + 31) // 32, dtype=torch.int32)
    for j, i in enumerate(rows):
        samplers[i].constraint.fill_bitmask(mask_RW[j])
    # the words' bytes in memory order (little-endian) hold token t at bit t % 8 of byte t // 8
    bias_RV = _BYTE_BIAS[mask_RW.view(torch.uint8).long()].view(len(rows), -1)[:, :V].to(x_BV.device)  # (R, V)
    if len(rows) == len(samplers):
        x_BV.add_(bias_RV)
    else:
        x_BV[rows] += bias_RV


def filter_logits(x_SV: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top_k, top_p and min_p (removed tokens become -inf), each skipped when no row uses it."""
    if any(p.temperature != 1.0 for p in params):
        # subtract the row max first: a tiny temperature then gives large negatives, never inf - inf = nan
        x_SV = (x_SV - x_SV.amax(dim=1, keepdim=True)) / _column([p.temperature for p in params], x_SV)
    if any(p.top_k > 0 for p in params):
        V = x_SV.shape[1]
        ks = [min(p.top_k, V) for p in params]
        top_SK = x_SV.topk(max(ks), dim=1).values
        kth_S1 = top_SK.gather(1, torch.tensor(ks, device=x_SV.device).unsqueeze(1).sub(1).clamp_min(0))
        off_S1 = torch.tensor([k == 0 for k in ks], device=x_SV.device).unsqueeze(1)
        kth_S1 = kth_S1.masked_fill(off_S1, -math.inf)
        x_SV = x_SV.masked_fill(x_SV < kth_S1, -math.inf)  # ties with the k-th token stay, as in vLLM
    if any(p.top_p < 1.0 for p in params):
        probs_SV, order_SV = x_SV.softmax(dim=1).sort(dim=1, descending=True)
        ahead_SV = probs_SV.cumsum(dim=1) - probs_SV  # mass of the better tokens; 0 for the best, so it always stays
        # rows with top_p off compare against inf: float rounding of the cumsum can never drop their tail
        drop_SV = ahead_SV >= _column([p.top_p if p.top_p < 1.0 else math.inf for p in params], x_SV)
        x_SV = x_SV.masked_fill(torch.zeros_like(drop_SV).scatter(1, order_SV, drop_SV), -math.inf)
    if any(p.min_p > 0.0 for p in params):
        # p < min_p * p_max  <=>  x < x_max + log(min_p): the same test in logit space, without a softmax
        log_min_S1 = _column([math.log(p.min_p) if p.min_p > 0.0 else -math.inf for p in params], x_SV)
        x_SV = x_SV.masked_fill(x_SV < x_SV.amax(dim=1, keepdim=True) + log_min_S1, -math.inf)
    return x_SV


def _drawing_rows(samplers: Sequence[SeqSampler]) -> list[int]:
    return [i for i, s in enumerate(samplers) if not s.params.greedy]


def process_logits(logits: torch.Tensor, samplers: Sequence[SeqSampler]) -> torch.Tensor:
    """The (B, V) logits each row picks from: penalties for every row, then each constraint's mask; for rows that
    draw, then temperature, top_k, top_p and min_p, with removed tokens at -inf (greedy rows take the argmax of their
    penalised, masked logits). The filters see only the tokens the grammar allows: top_p keeps a share of those."""
    x_BV = apply_penalties(logits, samplers)
    apply_constraints(x_BV, samplers)
    rows = _drawing_rows(samplers)
    if rows:
        at = _select(rows, len(samplers))
        x_BV[at] = filter_logits(x_BV[at], [samplers[i].params for i in rows])
    return x_BV


def sample(logits: torch.Tensor, samplers: Sequence[SeqSampler]) -> list[Sample]:
    """Pick one token per row of logits (B, V), row i with samplers[i]; see `process_logits` for the order of steps.

    Each drawing row uses only its own generator (the exponential race: argmax p / E with E ~ Exp(1) from that
    generator), so a seeded row gives the same tokens whatever else is in the batch. Greedy rows draw nothing.
    Logprobs are under the raw distribution, log_softmax of the logits before penalties and temperature (vLLM's
    default): they say what the model thinks of the token, not how likely this sampler was to pick it.
    Does not call `append`: the engine records the chosen token once it keeps it.
    """
    raw_BV = logits.float()
    x_BV = process_logits(raw_BV, samplers)
    token_B = x_BV.argmax(dim=1)
    rows = _drawing_rows(samplers)
    if rows:
        probs_SV = x_BV[_select(rows, len(samplers))].softmax(dim=1)
        race_SV = torch.empty_like(probs_SV)
        for j, i in enumerate(rows):
            race_SV[j].exponential_(generator=samplers[i]._generator_on(x_BV.device))
        # removed tokens have p = 0 and never win; the clamp keeps a (vanishingly rare) E = 0 from making 0 / 0
        race_SV.clamp_min_(torch.finfo(race_SV.dtype).tiny)
        token_B[_select(rows, len(samplers))] = (probs_SV / race_SV).argmax(dim=1)
    if all(s.params.logprobs is None for s in samplers):  # a log-sum-exp over the vocabulary costs a decode step
        return [Sample(tok, None, []) for tok in token_B.tolist()]
    lse_B1 = raw_BV.logsumexp(dim=1, keepdim=True)
    logprob_B = (raw_BV.gather(1, token_B.unsqueeze(1)) - lse_B1).squeeze(1)
    k = min(max((s.params.logprobs or 0) for s in samplers) if samplers else 0, raw_BV.shape[1])
    top_ids, top_lps = [[]] * len(samplers), [[]] * len(samplers)
    if k:
        top_BK = raw_BV.topk(k, dim=1)
        top_ids, top_lps = top_BK.indices.tolist(), (top_BK.values - lse_B1).tolist()
    out = []
    for i, (tok, lp, s) in enumerate(zip(token_B.tolist(), logprob_B.tolist(), samplers, strict=True)):
        n = s.params.logprobs or 0
        out.append(Sample(tok, lp, list(zip(top_ids[i][:n], top_lps[i][:n], strict=True))))
    return out


def score(logits_CV: torch.Tensor, next_C: torch.Tensor, k: int) -> list[Sample]:
    """What the model thought of tokens it read: for each row of logits (C, V), the logprob of the token that came
    next (next_C) and the k likeliest, under the raw distribution as `sample` reports them (prompt logprobs)."""
    x_CV = logits_CV.float()
    lse_C1 = x_CV.logsumexp(dim=1, keepdim=True)
    logprob_C = (x_CV.gather(1, next_C.unsqueeze(1)) - lse_C1).squeeze(1)
    k = min(k, x_CV.shape[1])
    if not k:
        return [Sample(t, lp) for t, lp in zip(next_C.tolist(), logprob_C.tolist(), strict=True)]
    top_CK = x_CV.topk(k, dim=1)
    tops = [list(zip(ids, lps, strict=True)) for ids, lps in
            zip(top_CK.indices.tolist(), (top_CK.values - lse_C1).tolist(), strict=True)]
    return [Sample(t, lp, top) for t, lp, top in zip(next_C.tolist(), logprob_C.tolist(), tops, strict=True)]
