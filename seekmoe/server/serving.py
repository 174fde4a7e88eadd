"""The serving class: a request body -> SamplingParams -> `llm.submit` -> a response, or server-sent event chunks.

It knows the request and response shapes and nothing of HTTP routing: routes (app.py) hand it parsed bodies and
send what it returns. Every refusal is an HTTPError (seekmoe/server/errors.py, where its status is chosen).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from typing import TypeVar

from seekmoe.engine.engine import EngineError, QueueFull
from seekmoe.engine.sampling import MAX_SEED, SamplingError, SamplingParams
from seekmoe.llm import LLM, TextRequest, TokenLogprob
from seekmoe.server import annotate, responses, tool_chat
from seekmoe.server import schemas as s
from seekmoe.server.config import ServeConfig
from seekmoe.server.errors import (
    HTTPError,
    context_exceeded,
    http_error,
    invalid,
    not_found,
    text_exceeds_context,
    too_large,
)
from seekmoe.server.metrics import Metrics
from seekmoe.server.streams import DONE, Job, RequestLog, Stream, loggable, sse
from seekmoe.text.grammar import ANY_OBJECT, Grammar, GrammarError, constrains
from seekmoe.text.stream import TextStream
from seekmoe.text.summarize import SummaryError

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
            "stop", "seed", "ignore_eos")
LONG_TEXT = 4096  # characters; longer prompts are tokenised off the event loop, so other streams keep flowing
T = TypeVar("T")
SUMMARY_WORKERS = 2  # summaries run on threads of their own, never on the pool that renders chats and decodes media
# Embeddings run on a thread of their own, one request at a time: their passes take the engine lock in turn anyway.
# Past this many requests running or waiting, 429.
MAX_WAITING_EMBEDDINGS = 16


async def on_thread(pool: ThreadPoolExecutor, fn: Callable[[Callable[[], bool]], T],
                    done: Callable[[Future], None] | None = None) -> T:
    """fn(cancelled) on one of pool's threads. When the awaiting task is cancelled (its client left), cancelled()
    turns True, for fn to stop at its next check, and a call still waiting for a thread never starts. done: called
    when the thread is done with it (or it is dropped unstarted)."""
    cancelled = threading.Event()
    future = pool.submit(fn, cancelled.is_set)
    if done is not None:
        future.add_done_callback(done)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        cancelled.set()
        future.cancel()
        raise


class WorkQueue:
    """Threads of the server's own for work beside the engine's requests (summaries, embeddings), and how much may
    wait for them: past `limit` running or waiting, a request is refused at once (QueueFull)."""

    def __init__(self, threads: int, limit: int, what: str, name: str):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.limit, self.what = limit, what
        self.waiting = 0  # until its thread is done with it, not until its client stops waiting
        self._lock = threading.Lock()  # decremented on the pool's threads

    async def run(self, fn: Callable[[Callable[[], bool]], T]) -> T:
        """fn(cancelled) on one of the threads, as on_thread runs it."""
        if self.waiting >= self.limit:
            raise QueueFull(f"{self.waiting} {self.what} are running or waiting")
        with self._lock:
            self.waiting += 1
        return await on_thread(self.pool, fn, done=self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self.waiting -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _sampler_seed(seed: int) -> int:
    """OpenAI's seed is any int64, the sampler's is in [0, 2**63): a negative seed wraps (-1 samples as 2**63 - 1
    does), so each seed still gives the same text, and one >= 0 the same as `seekmoe generate --seed`."""
    low, high = s.INT64
    if not low <= seed <= high:
        shown = seed if seed.bit_length() <= 128 else f"a number of {len(str(abs(seed)))} digits"
        raise invalid(f"seed must be an int64, in [-2**63, 2**63 - 1], got {shown}", param="seed")
    return seed % MAX_SEED


class Serving:
    """One model behind the native and the OpenAI-compatible API."""

    def __init__(self, llm: LLM, config: ServeConfig, metrics: Metrics, tools: dict | None = None):
        self.llm, self.config, self.metrics = llm, config, metrics
        # the first name is the one answers report; a request may name any of them
        self.model_names = (config.served_model_name or llm.path.name, *config.served_model_aliases)
        self.model_name = self.model_names[0]
        self.tools = tools or {}  # name -> Plugin the server runs itself
        self.tool_pool = None
        if self.tools:
            from seekmoe.plugins import WorkerPool

            self.tool_pool = WorkerPool()  # warm worker processes: a call does not pay for a process start
            for plugin in self.tools.values():
                self.tool_pool.warm(plugin)  # while the model loads anyway: the first request does not wait
        self.summary_queue = WorkQueue(SUMMARY_WORKERS, SUMMARY_WORKERS + config.max_waiting_summaries, "summaries",
                                       "seekmoe-summary")
        self.embedding_queue = WorkQueue(1, MAX_WAITING_EMBEDDINGS, "embedding requests", "seekmoe-embed")
        self.created = int(time.time())
        self.context = llm.context_length
        # No text of more characters than this fits the context, whatever it holds: every token stands for at most
        # the bytes of the longest one, and every character for at least one byte. Longer text is refused before
        # it is tokenized (a multi-megabyte prompt would hold a thread and memory for seconds to be refused anyway).
        self.max_prompt_chars = self.context * llm.tokenizer.max_token_bytes

    def close(self) -> None:
        self.llm.close()
        self.summary_queue.close()
        self.embedding_queue.close()
        if self.tool_pool is not None:
            self.tool_pool.close()

    # ---- endpoints ----------------------------------------------------------------------------------------

    def models(self) -> s.ModelList:
        return s.ModelList(data=[self.model(name) for name in self.model_names])

    def model(self, name: str) -> s.ModelCard:
        if name not in self.model_names:  # OpenAI's words: clients match on the code
            raise not_found(f"The model '{name}' does not exist", param="model", code="model_not_found")
        return s.ModelCard(id=name, created=self.created, max_model_len=self.context)

    def expert_load(self) -> s.ExpertLoad:
        """Tokens routed to each expert of each MoE layer since the server started (read without the engine's lock:
        at worst a step old)."""
        counts = self.llm.stats().expert_counts
        return s.ExpertLoad(layers=[s.LayerLoad(layer=i, counts=c) for i, c in counts.items()])

    async def generate(self, body: s.GenerateRequest, log: RequestLog) -> s.GenerateResponse | Stream:
        self._check_model(body.model)
        if body.images or body.audio:  # one user turn: the media, then the prompt as its question
            parts = [{"type": "image_url", "image_url": {"url": x}} for x in body.images or []]
            parts += [{"type": "input_audio", "input_audio": {"data": x, "format": "wav"}} for x in body.audio or []]
            ids, _, embeds, media = await self.chat_prompt([{"role": "user", "content": [
                *parts, {"type": "text", "text": body.prompt}]}])
        else:
            ids, embeds, media = await self._encode(body.prompt), None, []
        params = self.params(body, [ids], "prompt", body.max_tokens, default_max=128)
        grammar = await self._generate_grammar(body)
        job = self.start("gen", [ids], params, log, body.prompt, embeds=[embeds], grammar=grammar)
        if body.stream:
            return Stream(self._generate_chunks(job, media), job.cancel)
        c = (await job.collect())[0]
        return s.GenerateResponse(id=job.id, generated_text=c.text, finish_reason=c.finish_reason,
                                  usage=s.GenerateUsage(**job.usage()), images=await annotate.images(c.text, media))

    async def summarize(self, body: s.SummarizeRequest) -> s.SummarizeResponse:
        """A summary within max_length tokens; long documents go map-reduce over the engine, on a summary thread that
        stops when the client leaves."""
        self._check_model(body.model)
        limit = self.config.max_summary_chars
        if len(body.text) > limit:
            raise too_large(f"text is {len(body.text)} characters; this server summarises at most {limit} "
                            "(seekmoe serve --max-summary-chars)", param="text", code="text_too_long")
        try:
            summary = await self.summary_queue.run(lambda cancelled: self.llm.generate_summary(
                body.text, body.max_length, body.style, body.method, cancelled=cancelled))
        except (SummaryError, QueueFull) as e:
            raise http_error(e) from None
        tokens = len(self.llm.tokenizer.encode(summary))
        return s.SummarizeResponse(summary=summary, summary_tokens=tokens, style=body.style, method=body.method)

    async def completion(self, body: s.CompletionRequest, log: RequestLog) -> s.CompletionResponse | Stream:
        """echo: each text starts with its prompt, and with logprobs so do the logprobs (the first token's are null):
        with max_tokens 0 that scores a prompt, as lm-evaluation-harness's loglikelihood does."""
        self._check_model(body.model)
        for name, unsupported in (("suffix", body.suffix), ("logit_bias", body.logit_bias),
                                  ("best_of", body.best_of not in (None, 1, body.n))):
            if unsupported:
                raise invalid(f"{name} is not supported by this server", param=name)
        count = len(body.prompt) if isinstance(body.prompt, list) and body.prompt and isinstance(
            body.prompt[0], str | list) else 1
        self._check_sequences(count * body.n, body.n)  # before any prompt is tokenized: 300,000 prompts cost nothing
        if body.max_tokens is not None and body.max_tokens < 0:  # SamplingParams would speak of prompt_logprobs
            raise invalid(f"max_tokens must be an int >= 0, got {body.max_tokens}", param="max_tokens")
        prompts = await self._completion_prompts(body.prompt)
        # to the engine, max_tokens 0 means scoring the prompt: without echoed logprobs the scores go unshown, a
        # vocabulary projection per prompt token spent on a rare request to keep one path for all
        scored = body.logprobs if body.echo and body.logprobs is not None else 0 if body.max_tokens == 0 else None
        params = self.params(body, prompts, "prompt", body.max_tokens, n=body.n, logprobs=body.logprobs,
                             prompt_logprobs=scored, default_max=16)
        job = self.start("cmpl", prompts, params, log, body.prompt)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return Stream(self._completion_chunks(job, params, usage, body.echo), job.cancel)
        choices = []
        for i, c in enumerate(await job.collect()):
            for ch in c.choices:
                text, lps = "", _no_logprobs()
                if body.echo:
                    text, lps = self._echo(c.prompt_token_ids, ch.prompt_logprobs)
                if ch.logprobs is not None:
                    lps = _joined(lps, _completion_logprobs(ch.logprobs, len(text)))
                choices.append(s.CompletionChoice(index=i * params.n + ch.index, text=text + ch.text,
                                                  logprobs=lps if params.logprobs is not None else None,
                                                  finish_reason=ch.finish_reason))
        return s.CompletionResponse(id=job.id, created=job.created, model=self.model_name, choices=choices,
                                    usage=s.Usage(**job.usage()))

    async def chat(self, body: s.ChatCompletionRequest, log: RequestLog) -> s.ChatCompletionResponse | Stream:
        self._check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise invalid("top_logprobs needs logprobs: true", param="top_logprobs")
        if body.logit_bias:
            raise invalid("logit_bias is not supported by this server", param="logit_bias")
        body = _tools_of_functions(body) if body.legacy else body
        messages = [_message(m) for m in body.messages]
        try:
            turn = tool_chat.plan(self, body, messages)
            if turn is not None:
                if body.stream:
                    return await tool_chat.stream(self, body, turn, log)
                return await tool_chat.respond(self, body, turn, log)
        except HTTPError as e:
            if body.legacy:  # name the fields the client sent
                e.param = _legacy_param(e.param)
            raise
        ids, _, embeds, media = await self.chat_prompt(messages)
        grammar = await self.chat_grammar(body, None, None)
        prompts = [ids]
        limit, field = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens is not None
                        else (body.max_tokens, "max_tokens"))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = self.params(body, prompts, "messages", limit, n=body.n, logprobs=logprobs,
                             renames={"max_tokens": field, "logprobs": "top_logprobs"})
        job = self.start("chatcmpl", prompts, params, log, loggable(messages), embeds=[embeds], grammar=grammar)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return Stream(self._chat_chunks(job, params, usage, media), job.cancel)
        c = (await job.collect())[0]
        choices = [s.ChatChoice(index=ch.index, message=s.ChatMessageOut(
                                    content=ch.text, images=await annotate.image_parts(ch.text, media)),
                                logprobs=s.ChoiceLogprobs.of(ch.logprobs) if ch.logprobs is not None else None,
                                finish_reason=ch.finish_reason) for ch in c.choices]
        return s.ChatCompletionResponse(id=job.id, created=job.created, model=self.model_name, choices=choices,
                                        usage=s.Usage(**job.usage()))

    async def responses(self, body: s.ResponsesRequest, log: RequestLog) -> s.ResponseObject | Stream:
        self._check_model(body.model)
        return await responses.create(self, body, log)

    async def embeddings(self, body: s.EmbeddingRequest) -> s.EmbeddingResponse:
        """Unit vectors of the inputs (LLM.embed: the last hidden states, mean-pooled), as OpenAI's floats or base64
        of their little-endian float32 bytes."""
        self._check_model(body.model)
        width = self.llm.hidden_size
        if body.dimensions is not None and body.dimensions != width:
            raise invalid(f"dimensions must be {width}, this model's embedding size, got {body.dimensions} (its "
                          "vectors are not trained to be shortened)", param="dimensions")
        prompts = await self._embedding_prompts(body.input)
        for ids in prompts:
            if len(ids) > self.context:
                raise context_exceeded(self.context, "input", len(ids), 0, param="input")
        try:
            vectors = await self.embedding_queue.run(lambda cancelled: self.llm.embed(prompts, cancelled))
        except QueueFull as e:
            raise http_error(e) from None
        except EngineError as e:
            raise http_error(e, param="input") from None
        data = [s.Embedding(index=i, embedding=_encoded(v, body.encoding_format)) for i, v in enumerate(vectors)]
        tokens = sum(map(len, prompts))
        return s.EmbeddingResponse(data=data, model=self.model_name,
                                   usage=s.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    async def _embedding_prompts(self, given: str | list) -> list[list[int]]:
        """The inputs' token ids (texts with their BOS, as a prompt gets it); none may be empty."""
        single = isinstance(given, str) or (bool(given) and isinstance(given[0], int))
        batch = [given] if single else given
        if len(batch) > s.MAX_EMBEDDING_INPUTS:
            raise invalid(f"input holds {len(batch)} inputs; at most {s.MAX_EMBEDDING_INPUTS} are embedded at once",
                          param="input")
        empty = [i for i, x in enumerate(batch) if not x]
        if not batch or empty:
            where = "input" if single or not batch else f"input[{empty[0]}]"
            raise invalid(f"{where} must not be empty", param="input")
        if isinstance(batch[0], list):
            vocab = self.llm.vocab_size
            bad = next((t for ids in batch for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise invalid(f"input token {bad} is not a token id in [0, {vocab})", param="input")
            return [list(ids) for ids in batch]
        for text in batch:
            self._check_chars(len(text), "input")
        return await self._offload(lambda texts: [self.llm.encode(t) for t in texts], batch, sum(map(len, batch)))

    async def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None, tool_choice: object = None):
        """LLM.chat_inputs' (prompt ids, forced opening, media rows or None, media) of a conversation, rendered off
        the event loop when it is long, has media or offers tools; bad messages or media are 4xx."""
        self._check_chars(text_chars(messages), "messages")
        size = text_length(messages) if tools is None else LONG_TEXT + 1
        try:
            return await self._offload(lambda m: self.llm.chat_inputs(m, tools, tool_choice), messages, size)
        except ValueError as e:  # ChatError, MediaError, and media placeholders that do not pair with the media
            raise http_error(e, param="messages") from None

    async def chat_grammar(self, body: s.ChatCompletionRequest, tools: list[dict] | None,
                           forced: str | None) -> Grammar | None:
        """What the answer must follow: its response_format, a forced call's arguments, strict tools' calls
        (LLM.chat_grammar), compiled off the event loop; a schema that cannot be is a 400 in OpenAI's words."""
        rf = body.response_format
        schema, strict = None, True
        if rf is not None and rf.type == "json_object":
            schema = ANY_OBJECT
        elif rf is not None and rf.type == "json_schema":
            if rf.json_schema is None:
                raise invalid("Missing required parameter: 'response_format.json_schema'.",
                              param="response_format.json_schema", code="missing_required_parameter")
            schema, strict = rf.json_schema.schema_ or ANY_OBJECT, bool(rf.json_schema.strict)
        if not constrains(tools, forced, schema):
            return None  # nothing to compile: no trip to a thread
        parallel = body.parallel_tool_calls is not False
        try:
            return await asyncio.to_thread(self.llm.chat_grammar, tools, forced, schema, strict=strict,
                                           parallel=parallel)
        except GrammarError as e:
            if e.tool is None and rf is not None and rf.type == "json_schema":
                raise invalid(f"Invalid schema for response_format '{rf.json_schema.name}': {e}",
                              param="response_format", code="invalid_json_schema") from None
            if e.tool is None:  # a tokenizer without the tool-call markers
                raise http_error(e) from None
            name = tools[e.tool]["function"]["name"]
            param = f"tools[{e.tool}].function.parameters" if e.tool < len(body.tools or []) else None
            raise invalid(f"Invalid schema for function '{name}': {e}", param=param,
                          code="invalid_function_parameters") from None

    async def _generate_grammar(self, body: s.GenerateRequest) -> Grammar | None:
        if body.json_schema is not None and body.grammar is not None:
            raise invalid("give json_schema or grammar, not both", param="grammar")
        if body.json_schema is None and body.grammar is None:
            return None
        try:
            return await asyncio.to_thread(self.llm.grammar, body.json_schema, body.grammar)
        except GrammarError as e:
            if body.json_schema is not None:
                raise invalid(f"Invalid schema for json_schema: {e}", param="json_schema",
                              code="invalid_json_schema") from None
            raise invalid(f"Invalid grammar: {e}", param="grammar", code="invalid_grammar") from None

    # ---- requests to the engine ---------------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_names:
            served = ", ".join(repr(name) for name in self.model_names)
            raise not_found(f"the model {model!r} does not exist; this server serves {served}",
                            param="model", code="model_not_found")

    async def _offload(self, fn: Callable, arg: object, size: int):
        return await asyncio.to_thread(fn, arg) if size > LONG_TEXT else fn(arg)

    async def _encode(self, text: str) -> list[int]:
        self._check_chars(len(text), "prompt")
        return await self._offload(self.llm.encode, text, len(text))

    def _check_chars(self, chars: int, field: str) -> None:
        """Refuse, before tokenizing it, text that cannot fit the context whatever its tokens."""
        if chars > self.max_prompt_chars:
            raise text_exceeds_context(self.context, field, chars, self.max_prompt_chars)

    def _check_sequences(self, sequences: int, n: int) -> None:
        if sequences > self.config.max_queue:
            raise invalid(f"the request asks for {sequences} sequences (prompts × n), but the queue holds at "
                          f"most {self.config.max_queue}", param="n" if n > 1 else "prompt")

    async def _completion_prompts(self, prompt: str | list) -> list[list[int]]:
        if isinstance(prompt, str):
            return [await self._encode(prompt)]
        if not prompt:
            raise invalid("prompt must not be empty", param="prompt")
        if isinstance(prompt[0], str):
            return [await self._encode(p) for p in prompt]
        batch = [prompt] if isinstance(prompt[0], int) else prompt
        vocab = self.llm.vocab_size
        for ids in batch:
            if not ids:
                raise invalid("prompt must not hold an empty list of token ids", param="prompt")
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise invalid(f"prompt token {bad} is not a token id in [0, {vocab})", param="prompt")
        return [list(ids) for ids in batch]

    def params(self, body: s.Sampling, prompts: list[list[int]], prompt_field: str, max_tokens: int | None, *,
               n: int = 1, logprobs: int | None = None, prompt_logprobs: int | None = None,
               default_max: int | None = None, renames: dict[str, str] | None = None) -> SamplingParams:
        """SamplingParams for these prompts; max_tokens None: default_max, or all the room the context leaves.
        renames: SamplingParams field -> the request field its errors should name."""
        renames = renames or {}
        longest = max(len(p) for p in prompts)
        if longest + (max_tokens != 0) > self.context:  # the context must also hold one new token, if one is wanted
            raise context_exceeded(self.context, prompt_field, longest, max(max_tokens or 1, 1), param=prompt_field)
        room = self.context - longest
        if max_tokens is None:
            max_tokens = min(default_max, room) if default_max is not None else room
        elif max_tokens > room:
            field = renames.get("max_tokens", "max_tokens")
            raise context_exceeded(self.context, prompt_field, longest, max_tokens, param=field)
        given = {name: getattr(body, name) for name in SAMPLING if getattr(body, name) is not None}
        given = {**self.llm.sampling_defaults, **given}  # the model's generation_config.json, as vLLM does
        if "seed" in given:
            given["seed"] = _sampler_seed(given["seed"])
        try:
            return SamplingParams(**given, max_tokens=max_tokens, n=n, logprobs=logprobs,
                                  prompt_logprobs=prompt_logprobs)
        except SamplingError as e:  # "top_p must be in (0, 1], got 0.0": e.param is the field
            message, field = str(e), e.param
            if field in renames:
                message = renames[field] + message[len(field):]
            known = field in given or field in ("max_tokens", "n", "logprobs")
            raise http_error(e, param=renames.get(field, field) if known else None, message=message) from None

    def start(self, kind: str, prompts: list[list[int]], params: SamplingParams, log: RequestLog,
              prompt: object, tool_calls: bool = False, embeds: list | None = None,
              grammar: Grammar | None = None) -> Job:
        """Submit the prompts (one engine request each) as one Job; a full queue or a prompt the engine refuses is an
        HTTPError. prompt: what the access log shows with --log-prompts. tool_calls: LLM.submit's. grammar: what every
        output must follow."""
        start = time.perf_counter()
        job_id = f"{kind}-{uuid.uuid4().hex}"
        self._check_sequences(len(prompts) * params.n, params.n)
        # Each API key's prompts get their own prefix cache: a shared one tells by timing whether another tenant
        # sent a prompt. One salt for all requests without a key (or with --share-prefix-cache).
        salt = None if self.config.share_prefix_cache or log.key is None else log.key
        reqs: list[TextRequest] = []
        try:
            for i, ids in enumerate(prompts):
                reqs.append(self.llm.submit(ids, params, request_id=f"{job_id}-{i}",
                                            tool_calls=tool_calls,
                                            embeds=embeds[i] if embeds else None, cache_salt=salt, grammar=grammar))
        except EngineError as e:  # QueueFull among them
            for r in reqs:
                r.cancel()
            raise http_error(e) from None
        job = Job(job_id, reqs, self.metrics, log, start)
        log.id, log.prompt_tokens = job_id, job.prompt_tokens
        if self.config.log_prompts:
            log.prompt = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        return job

    def _echo(self, ids: list[int], scored: list[TokenLogprob | None] | None) -> tuple[str, s.CompletionLogprobs]:
        """A prompt as echo writes it, its text with special tokens left out as in generated text, and its logprobs
        (empty without scores): text_offset is where each token's text starts in that text."""
        tok, stream = self.llm.tokenizer, TextStream(self.llm.tokenizer)
        offsets, text = [], ""
        for t in ids:
            offsets.append(len(text))
            text += stream.push(t)
        text += stream.finish()
        if scored is None:
            return text, _no_logprobs()
        return text, s.CompletionLogprobs(
            tokens=[tok.decode([t]) for t in ids], text_offset=offsets,
            token_logprobs=[s.finite(lp.logprob) if lp is not None else None for lp in scored],
            top_logprobs=[_top(lp) if lp is not None else None for lp in scored])

    # ---- streams ------------------------------------------------------------------------------------------

    async def _generate_chunks(self, job: Job, media: list) -> AsyncIterator[str]:
        text = []
        try:
            async for _, d in job.deltas():
                if not d.text and d.finish_reason is None:
                    continue
                text.append(d.text)
                chunk = {"id": job.id, "text": d.text, "finish_reason": d.finish_reason}
                if d.finish_reason is not None:
                    chunk |= {"generated_text": "".join(text), "usage": job.usage()}
                    images = await annotate.images(chunk["generated_text"], media)
                    chunk |= {"images": images} if images else {}
                yield sse(chunk)
        except HTTPError as e:
            yield sse(e.body())
        yield DONE

    async def _completion_chunks(self, job: Job, params: SamplingParams, usage: bool,
                                 echo: bool) -> AsyncIterator[str]:
        """With echo, a choice's first chunk starts with its prompt (and its prompt's logprobs), as vLLM streams it:
        the prompt's logprobs come from the engine with the first token."""
        base = {"id": job.id, "object": "text_completion", "created": job.created, "model": self.model_name}
        offsets: dict[int, int] = {}
        try:
            async for i, d in job.deltas():
                index = i * params.n + d.index
                head, lps = "", _no_logprobs()
                if echo and index not in offsets:
                    head, lps = self._echo(job.reqs[i].prompt_token_ids, d.prompt_logprobs)
                    offsets[index] = len(head)
                if params.logprobs is None and not head and not d.text and d.finish_reason is None:
                    continue
                if params.logprobs is not None:
                    lps = _joined(lps, _completion_logprobs(d.logprobs, offsets.get(index, 0)))
                    offsets[index] = offsets.get(index, 0) + sum(len(lp.token) for lp in d.logprobs)
                choice = {"index": index, "text": head + d.text,
                          "logprobs": lps.model_dump() if params.logprobs is not None else None,
                          "finish_reason": d.finish_reason}
                yield sse(base | {"choices": [choice]} | ({"usage": None} if usage else {}))
            if usage:
                yield sse(base | {"choices": [], "usage": job.usage()})
        except HTTPError as e:
            yield sse(e.body())
        yield DONE

    async def _chat_chunks(self, job: Job, params: SamplingParams, usage: bool, media: list) -> AsyncIterator[str]:
        """A choice's annotated images (serving/annotate.py) come on its finish chunk, as delta.images."""
        base = {"id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": self.model_name}
        tail = {"usage": None} if usage else {}
        text: dict[int, list[str]] = {}
        try:
            for index in range(params.n):
                role = {"role": "assistant", "content": ""}
                yield sse(base | {"choices": [{"index": index, "delta": role, "logprobs": None,
                                               "finish_reason": None}]} | tail)
            async for _, d in job.deltas():
                if params.logprobs is None and not d.text and d.finish_reason is None:
                    continue
                lps = s.ChoiceLogprobs.of(d.logprobs).model_dump() if params.logprobs is not None else None
                delta = {"content": d.text} if d.text else {}
                if media:
                    text.setdefault(d.index, []).append(d.text)
                    if d.finish_reason is not None:
                        images = await annotate.image_parts("".join(text.pop(d.index)), media)
                        delta |= {"images": images} if images else {}
                choice = {"index": d.index, "delta": delta, "logprobs": lps, "finish_reason": d.finish_reason}
                yield sse(base | {"choices": [choice]} | tail)
            if usage:
                yield sse(base | {"choices": [], "usage": job.usage()})
        except HTTPError as e:
            yield sse(e.body())
        yield DONE


def _encoded(v, encoding_format: str) -> list[float] | str:
    """One embedding as OpenAI sends it: floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")
    return v.tolist()


def _message(m: s.ChatMessage) -> dict:
    role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
    out = {"role": role, "content": _content(m.content)}
    calls = m.tool_calls or ([s.ToolCall(function=m.function_call)] if m.function_call is not None else None)
    if calls:
        out["tool_calls"] = [c.model_dump(exclude_none=True) for c in calls]
    return out


def _tools_of_functions(body: s.ChatCompletionRequest) -> s.ChatCompletionRequest:
    """The request with OpenAI's deprecated functions and function_call read as tools and tool_choice; one call an
    answer, as the old shape holds one."""
    if body.functions is not None and body.tools is not None:
        raise invalid("give functions or tools, not both (functions is the deprecated form of tools)",
                      param="functions")
    if body.function_call is not None and body.tool_choice is not None:
        raise invalid("give function_call or tool_choice, not both (function_call is the deprecated form of "
                      "tool_choice)", param="function_call")
    update: dict = {"parallel_tool_calls": False}
    if body.functions is not None:
        update["tools"] = [s.ToolDefinition(function=f) for f in body.functions]
    if isinstance(body.function_call, s.NamedFunction):
        update["tool_choice"] = s.NamedTool(function={"name": body.function_call.name})
    elif body.function_call is not None:
        update["tool_choice"] = body.function_call
    return body.model_copy(update=update)


def _legacy_param(param: str | None) -> str | None:
    """A tools field's name as the deprecated field the client sent: tools[0].function.parameters ->
    functions[0].parameters, tool_choice -> function_call."""
    if param == "tool_choice":
        return "function_call"
    if param is not None and param.startswith("tools["):
        return "functions" + param.removeprefix("tools").replace(".function", "", 1)
    return param


def _content(content: str | list | None) -> str | list[dict]:
    """A string, or OpenAI's parts as dicts when there are images or audio among them (LLM.chat_prompt reads them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if all(part.type == "text" for part in content):
        return "".join(part.text for part in content)
    return [part.model_dump(exclude_none=True) for part in content]


def text_chars(messages: list[dict]) -> int:
    """Characters of text in the messages (their media not counted)."""
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return total


def text_length(messages: list[dict]) -> int:
    """Characters to render; a message with media counts as long (decoding and encoding media is work)."""
    return text_chars(messages) + sum(1 << 20 for m in messages if isinstance(m["content"], list))


def _no_logprobs() -> s.CompletionLogprobs:
    return s.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])


def _top(lp: TokenLogprob) -> dict[str, float]:
    """The token's own logprob and its alternatives', as OpenAI's top_logprobs holds them."""
    return {lp.token: s.finite(lp.logprob)} | {t.token: s.finite(t.logprob) for t in lp.top_logprobs}


def _completion_logprobs(lps: list[TokenLogprob], offset: int) -> s.CompletionLogprobs:
    tokens = [lp.token for lp in lps]
    return s.CompletionLogprobs(tokens=tokens, token_logprobs=[s.finite(lp.logprob) for lp in lps],
                                top_logprobs=[_top(lp) for lp in lps],
                                text_offset=list(accumulate((len(t) for t in tokens), initial=offset))[:-1])


def _joined(a: s.CompletionLogprobs, b: s.CompletionLogprobs) -> s.CompletionLogprobs:
    """b's tokens after a's (an echoed prompt's, then the completion's)."""
    return s.CompletionLogprobs(tokens=a.tokens + b.tokens, token_logprobs=a.token_logprobs + b.token_logprobs,
                                top_logprobs=a.top_logprobs + b.top_logprobs, text_offset=a.text_offset + b.text_offset)
