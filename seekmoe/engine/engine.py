"""The engine: token ids in, token ids out, many requests at once over one model. It knows nothing of text or HTTP.

Continuous batching: every `step()` runs one forward pass over whatever is running — one new token for each
decoding sequence plus chunks of prompts still being read — then samples, appends and retires finished
sequences. New requests join between steps; a long prompt is read `max_step_tokens` at a time so it never stalls
the sequences already decoding. When the cache runs out of blocks the youngest running sequence is preempted
(its blocks freed, its tokens recomputed later), so the oldest always make progress.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field

import torch

from seekmoe.engine.cache import BlockTable, LatentCache, bytes_per_token, salt_hash
from seekmoe.engine.runner import ModelRunner, Segment
from seekmoe.engine.sampling import Sample, SamplingParams, SeqSampler, TokenConstraint, sample, score
from seekmoe.errors import SeekmoeError
from seekmoe.model.config import KV_CACHE_DTYPES, ModelConfig
from seekmoe.model.model import CausalLM

SMALL_STEP_TOKENS = 16  # steps of at most this many tokens (decoding) run on one intra-op thread


class EngineError(SeekmoeError, ValueError):
    """A request the engine refuses: bad prompt, too long for the context or the cache, queue full."""


class QueueFull(EngineError):
    """Too many sequences are waiting already; the same request may succeed later."""


@dataclass
class Output:
    """One event of one sequence: a new token, or its end (token_id None when it ends without one)."""

    index: int  # which of the request's n sequences
    token_id: int | None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop", "length" or "cancelled" on the sequence's last event
    # on a sequence's first event, with params.prompt_logprobs: one entry a prompt token, None for the first
    prompt_logprobs: list[Sample | None] | None = None


_SEQUENCE_IDS = itertools.count()


@dataclass(eq=False)  # identity: two samples of one prompt may hold equal tokens
class Sequence:
    request: Request = field(repr=False)
    index: int
    sampler: SeqSampler
    tokens: list[int]  # prompt then output
    table: BlockTable = field(default_factory=BlockTable)
    finish_reason: str | None = None
    uid: int = field(default_factory=_SEQUENCE_IDS.__next__)  # never reused (id() is, once a sequence is freed)

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.request.num_prompt


@dataclass
class PromptEmbeds:
    """Rows that replace the token embeddings of some prompt positions (a multimodal prompt's media)."""

    positions: list[int]  # ascending prompt positions
    rows: torch.Tensor  # (len(positions), D)
    key: str  # identifies the rows' source: the prefix cache shares blocks only between equal keys


@dataclass(eq=False)
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: int
    seqs: list[Sequence] = field(default_factory=list)
    embeds: PromptEmbeds | None = None
    prompt_keys: list[int | str] | None = None  # prompt_ids with embedded positions made unique, for cache hashes
    cache_salt: bytes = b""  # starts the prefix cache's hash chain: only requests with the same salt share blocks
    # with params.prompt_logprobs: the prompt's scores so far, [None] then one a token; sequence 0 makes them
    prompt_logprobs: list[Sample | None] | None = None

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)

    def cache_keys(self, tokens: list[int]) -> list[int | str]:
        """What the prefix cache hashes for a sequence's tokens: its ids, with each embedded position's id replaced by
        the embeddings' key, so two prompts with the same placeholder ids but other media never share a block."""
        return tokens if self.prompt_keys is None else self.prompt_keys + tokens[len(self.prompt_keys):]


DEFAULT_CACHE_SHARE = 0.25  # of the memory available when an engine starts, the most its default cache takes


def default_cache_tokens(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Room for four full contexts (at least 8192 tokens), but no more than DEFAULT_CACHE_SHARE of the memory
    available now: the cache is allocated whole at start, and four of DeepSeek-V2-Lite's 163,840-token contexts
    would take 40 GB. Never under 8192 tokens (or four contexts, when those are fewer)."""
    want = max(4 * cfg.max_position_embeddings, 8192)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on Linux: no cap
        return want
    fits = int(available * DEFAULT_CACHE_SHARE) // bytes_per_token(cfg, dtype)
    return max(min(want, fits), min(want, 8192))


def cache_dtype(name: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """The cache dtype a `kv_cache_dtype` setting names (config.KV_CACHE_DTYPES): None or "auto" is the model's."""
    if name is None or name == "auto":
        return model_dtype
    if name not in KV_CACHE_DTYPES:
        raise EngineError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {name!r}")
    return getattr(torch, name)


class Engine:
    """Schedules sequences over a ModelRunner and a LatentCache. Not thread-safe: one caller steps it.

    kv_cache_dtype: one of config.KV_CACHE_DTYPES, "auto" (None) the model's dtype; "int8" keeps a quarter of
    float32's bytes and decodes long contexts faster (engine/cache.py)."""

    def __init__(self, model: CausalLM, cache_tokens: int | None = None, cache_bytes: int | None = None,
                 block_size: int = 16, max_num_seqs: int = 64, max_step_tokens: int = 256,
                 max_waiting: int | None = None, absorb: bool = True, vocab_limit: int | None = None,
                 kv_cache_dtype: str | None = None):
        cfg = model.config
        dtype = cache_dtype(kv_cache_dtype, model.model.embed_tokens.weight.dtype)
        if cache_tokens is None and cache_bytes is None:
            cache_tokens = default_cache_tokens(cfg, dtype)
        for name, value in (("max_num_seqs", max_num_seqs), ("max_step_tokens", max_step_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EngineError(f"{name} must be an int >= 1, got {value!r}")
        if max_waiting is not None and (not isinstance(max_waiting, int) or max_waiting < 0):
            raise EngineError(f"max_waiting must be an int >= 0 or None, got {max_waiting!r}")
        if vocab_limit is not None and (not isinstance(vocab_limit, int) or isinstance(vocab_limit, bool)
                                        or not 1 <= vocab_limit <= cfg.vocab_size):
            raise EngineError(f"vocab_limit must be an int in [1, {cfg.vocab_size}] or None, got {vocab_limit!r}")
        # ids from vocab_limit on are never drawn: the rows a checkpoint pads its vocabulary with past its
        # tokenizer's (DeepSeek-V2's 102,400 for 100,015 ids), which no text decodes to
        self.vocab_limit = vocab_limit if vocab_limit is not None and vocab_limit < cfg.vocab_size else None
        self.model, self.config = model, cfg
        self.cache = LatentCache.with_budget(cfg, cache_tokens, cache_bytes, block_size, dtype)
        self.runner = ModelRunner(model, self.cache, absorb=absorb)
        self.max_num_seqs, self.max_step_tokens, self.max_waiting = max_num_seqs, max_step_tokens, max_waiting
        self.max_model_len = cfg.max_position_embeddings
        self.eos_token_id = cfg.eos_token_id
        self.threads = torch.get_num_threads()  # for steps with prompt chunks; small ones run on one
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[str, Request] = {}
        self._arrivals = itertools.count()
        self._ids = itertools.count()

    # ---- requests -------------------------------------------------------------------------------------------

    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, embeds: PromptEmbeds | None = None,
                    cache_salt: str | None = None, constraint: TokenConstraint | None = None) -> Request:
        """Queue a request; raises EngineError when it can never run. embeds: rows that replace the embeddings of
        some prompt positions (images, audio). cache_salt: cached prompt prefixes are shared only between requests
        with the same salt (a server gives each API key its own, so no tenant can time another's prompts).
        constraint: the tokens each sequence may write (a grammar's matcher, fresh; forked for n > 1); a sequence
        whose grammar is complete ends with "stop"."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise EngineError(f"params must be SamplingParams, got {type(params).__name__}")
        if constraint is not None and not isinstance(constraint, TokenConstraint):
            raise EngineError(f"constraint must be a TokenConstraint or None, got {type(constraint).__name__}")
        prompt = self.check_prompt(prompt_ids)
        if embeds is not None:
            self._check_embeds(embeds, len(prompt))
        total = len(prompt) + params.max_tokens
        if total > self.max_model_len:
            raise EngineError(f"the context is {self.max_model_len} tokens, but the request needs {total} "
                              f"({len(prompt)} in the prompt, max_tokens {params.max_tokens})")
        if total > self.cache.capacity_tokens:
            raise EngineError(f"the KV cache holds {self.cache.capacity_tokens} tokens, but one sequence of this "
                              f"request needs up to {total}: raise the cache budget or lower max_tokens")
        if self.max_waiting is not None and len(self.waiting) + params.n > self.max_waiting:
            n = len(self.waiting)
            raise QueueFull(f"the queue is full ({n} sequence{'s' * (n != 1)} waiting, limit {self.max_waiting})")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests:
            raise EngineError(f"request id {rid!r} is already running")
        req = Request(rid, prompt, params, next(self._arrivals), embeds=embeds)
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None]  # nothing comes before the first token to predict it
        if cache_salt is not None:
            if not isinstance(cache_salt, str):
                raise EngineError(f"cache_salt must be a str or None, got {type(cache_salt).__name__}")
            req.cache_salt = salt_hash(cache_salt)
        if embeds is not None:
            req.prompt_keys = list(prompt)
            for j, p in enumerate(embeds.positions):
                req.prompt_keys[p] = f"{embeds.key}.{j}"
        vocab = self.config.vocab_size
        for i in range(params.n):
            own = constraint if i == 0 or constraint is None else constraint.fork()
            seq = Sequence(req, i, SeqSampler(params, prompt, vocab, seed_offset=i, constraint=own), list(prompt))
            req.seqs.append(seq)
            self.waiting.append(seq)
        self.requests[rid] = req
        return req

    def check_prompt(self, prompt_ids) -> list[int]:
        """The prompt as a list; EngineError unless it is a non-empty sequence of ids in the vocabulary."""
        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.tolist()
        if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
            raise EngineError("prompt_ids must be a non-empty list of token ids")
        vocab = self.config.vocab_size
        for t in prompt_ids:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
                raise EngineError(f"prompt token {t!r} is not a token id in [0, {vocab})")
        return list(prompt_ids)

    def _check_embeds(self, embeds: PromptEmbeds, n: int) -> None:
        if not isinstance(embeds, PromptEmbeds):
            raise EngineError(f"embeds must be PromptEmbeds, got {type(embeds).__name__}")
        pos, rows = embeds.positions, embeds.rows
        if not isinstance(rows, torch.Tensor) or rows.shape != (len(pos), self.config.hidden_size):
            raise EngineError(f"embeds.rows must be a ({len(pos)}, {self.config.hidden_size}) tensor, one row a "
                              f"position, got {getattr(rows, 'shape', type(rows).__name__)}")
        if any(not isinstance(p, int) or not 0 <= p < n for p in pos) or sorted(set(pos)) != list(pos):
            raise EngineError(f"embeds.positions must be ascending, distinct prompt positions in [0, {n})")

    def cancel(self, request_id: str, index: int | None = None, reason: str = "cancelled") -> list[Output]:
        """End a request's sequences (or only sequence `index`) now and free their blocks; returns their final
        events, none for sequences already finished. reason "stop" is for a stop string found by the caller."""
        req = self.requests.get(request_id)
        if req is None:
            return []
        events = []
        for seq in req.seqs:
            if seq.finish_reason is None and index in (None, seq.index):
                self._finish(seq, reason)
                events.append(Output(seq.index, None, finish_reason=reason))
        return events

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step -------------------------------------------------------------------------------------------

    def step(self) -> list[tuple[Request, Output]]:
        """Run one forward pass over the scheduled tokens; returns the new events, in sequence order."""
        plan = self._schedule()
        if not plan:
            if self.waiting and not self.running:  # cannot happen: add_request admits only what fits alone
                raise RuntimeError(f"scheduler stalled: {len(self.waiting)} waiting, {self.cache.free_blocks} of "
                                   f"{self.cache.num_blocks} blocks free")
            return []
        ids, pos, segments, at, rows = [], [], [], [], []
        for seq, n in plan:
            start = seq.table.num_tokens
            embeds = seq.request.embeds
            # media rows of the prompt positions this chunk reads, at their index in the step (decode steps read none)
            if embeds is not None and start < seq.request.num_prompt:
                for j, p in enumerate(embeds.positions):
                    if start <= p < start + n:
                        at.append(len(ids) + p - start)
                        rows.append(embeds.rows[j])
            ids += seq.tokens[start:start + n]
            pos += range(start, start + n)
            done = start + n == len(seq.tokens)  # the last known token is read: a new one can be sampled
            wanted = done and seq.request.params.max_tokens > 0
            segments.append(Segment(self.cache.slots(seq.table, 0, start + n), start, n, wanted, self._scores(seq),
                                    seq.uid))
        # a step of a few tokens is a chain of tiny matrix-vector products: a second OpenMP thread costs more than it
        # gives, above all on the engine loop's own thread (measured: decode 70 -> 139 tok/s on the bundled model);
        # prompt chunks are GEMMs that the other threads do speed up. The setting is this thread's (OpenMP, MKL)
        threads = 1 if len(ids) <= SMALL_STEP_TOKENS else self.threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        spliced = (torch.tensor(at), torch.stack(rows)) if rows else None
        logits = self.runner.forward(torch.tensor(ids), torch.tensor(pos), segments, spliced)
        for seq, n in plan:
            seq.table.num_tokens += n
            self.cache.register_full_blocks(seq.table, seq.request.cache_keys(seq.tokens), seq.request.cache_salt)
        if any(s.every for s in segments):
            logits = self._score_prompts(logits, plan, segments)
        sampling = [seq for (seq, _), s in zip(plan, segments, strict=True) if s.logits]
        if self.vocab_limit is not None:
            with torch.inference_mode():  # the runner's logits are inference tensors
                logits[:, self.vocab_limit:] = float("-inf")
        events = []
        for seq, drawn in zip(sampling, sample(logits, [s.sampler for s in sampling]), strict=True):
            seq.tokens.append(drawn.token_id)
            seq.sampler.append(drawn.token_id)
            reason = self._stop_reason(seq, drawn.token_id)
            top = drawn.top_logprobs if seq.request.params.logprobs is not None else None
            scored = seq.request.prompt_logprobs if seq.num_output == 1 else None
            events.append((seq.request, Output(seq.index, drawn.token_id, drawn.logprob, top, reason, scored)))
            if reason is not None:
                self._finish(seq, reason)
        for (seq, _), s in zip(plan, segments, strict=True):
            if s.start + s.length == len(seq.tokens) and seq.request.params.max_tokens == 0:  # prompt read: done
                events.append((seq.request, Output(seq.index, None, finish_reason="length",
                                                   prompt_logprobs=seq.request.prompt_logprobs)))
                self._finish(seq, "length")
        return events

    def _scores(self, seq: Sequence) -> bool:
        """Whether this sequence's next chunk is scored: its request wants prompt logprobs not all made yet. Its
        sequence 0 makes them (the others read the same prompt, and come no sooner: they are younger)."""
        scored = seq.request.prompt_logprobs
        return scored is not None and seq.index == 0 and len(scored) < seq.request.num_prompt

    def _score_prompts(self, logits: torch.Tensor, plan: list[tuple[Sequence, int]],
                       segments: list[Segment]) -> torch.Tensor:
        """Add the scores of the prompt tokens the scored chunks predicted; returns the rows left to sample from.

        A chunk at positions start..start+n-1 predicts tokens start+1..start+n; those past the prompt are output, and
        those already scored (a preempted sequence reads its prompt again) are skipped."""
        keep, row = [], 0
        for (seq, _), s in zip(plan, segments, strict=True):
            if s.every:
                req = seq.request
                first = len(req.prompt_logprobs)  # the next token to score
                stop = min(s.start + s.length + 1, req.num_prompt)  # one past the last token this chunk predicts
                if first < stop:
                    rows = logits[row + first - 1 - s.start:row + stop - 1 - s.start]  # (stop - first, V)
                    req.prompt_logprobs += score(rows, torch.tensor(req.prompt_ids[first:stop]),
                                                 req.params.prompt_logprobs)
                row += s.length
                if s.logits:
                    keep.append(row - 1)
            elif s.logits:
                keep.append(row)
                row += 1
        return logits[keep]

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.request.params
        if (token == self.eos_token_id and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if seq.sampler.constraint is not None and seq.sampler.constraint.done:  # a whole answer: only eos may follow
            return "stop"
        if seq.num_output >= p.max_tokens or len(seq.tokens) >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.cache.release(seq.table)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.request.finished:
            self.requests.pop(seq.request.id, None)

    def _schedule(self) -> list[tuple[Sequence, int]]:
        """Pick (sequence, new tokens) for this step: decodes first, then prompt chunks, within the token budget."""
        plan: list[tuple[Sequence, int]] = []

        def budget() -> int:
            return self.max_step_tokens - sum(n for _, n in plan)

        # running sequences, oldest first; each wants the rest of its tokens (1 when decoding)
        for seq in sorted(self.running, key=lambda s: (s.request.arrival, s.index)):
            if seq not in self.running:
                continue  # preempted for an older one in this loop
            n = min(len(seq.tokens) - seq.table.num_tokens, budget())
            if n == 0:
                break
            while not self.cache.reserve(seq.table, seq.table.num_tokens + n):
                victim = max(self.running, key=lambda s: (s.request.arrival, s.index))
                self._preempt(victim)
                plan = [(s, k) for s, k in plan if s is not victim]
                if victim is seq:
                    break
            else:
                plan.append((seq, n))
        # then admit waiting sequences in arrival order while there is room
        while self.waiting and budget() > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.table.blocks and seq.request.prompt_logprobs is None:  # a cached prefix would go unscored
                self.cache.match_prefix(seq.table, seq.request.cache_keys(seq.tokens), seq.request.cache_salt)
            n = min(len(seq.tokens) - seq.table.num_tokens, budget())
            if not self.cache.reserve(seq.table, seq.table.num_tokens + n):
                # first come, first served: it waits for blocks to come back, holding none meanwhile (a waiting
                # sequence that kept its cached prefix could starve the running ones); the prefix stays findable
                self.cache.release(seq.table)
                break
            self.waiting.popleft()
            self.running.append(seq)
            plan.append((seq, n))
        return plan

    def _preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks; it goes back to the front of the queue and is recomputed later."""
        self.cache.release(seq.table)
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    # ---- convenience ----------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[list[list[int]]]:
        """Run prompts to completion: for each prompt, its n output token lists."""
        reqs = [self.add_request(p, params) for p in prompts]
        try:
            while self.has_work:
                self.step()
        finally:
            torch.set_num_threads(self.threads)  # this is the caller's thread: leave it as it was
        return [[s.tokens[r.num_prompt:] for s in r.seqs] for r in reqs]
