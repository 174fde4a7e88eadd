"""The Python API: text in, text out, over the engine.

    llm = seekmoe.LLM()                       # the bundled default model
    llm.generate("Call me", max_tokens=20).text
    for piece in llm.stream("Call me"): print(piece, end="")
    llm.chat([{"role": "user", "content": "Hello"}]).text

`submit()` is the layer the others (and the server) build on: one request, its events as text deltas, in a
thread (`for delta in req`) or in asyncio (`async for delta in req`). Stop strings live here, where ids become
text: a sequence that writes one is ended at once and nothing of the stop string is returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from seekmoe.engine.engine import Engine, EngineError, Output, PromptEmbeds
from seekmoe.engine.loop import EngineLoop, RequestStream
from seekmoe.engine.sampling import SamplingError, SamplingParams, read_generation_defaults
from seekmoe.model.checkpoint import DEFAULT_MODEL, CheckpointError
from seekmoe.text.stream import TextStream
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.text.tool_calls import (
    CALL_BEGIN,
    CALLS_BEGIN,
    CALLS_END,
    MARKERS,
    MAX_ROUNDS,
    SEP,
    ToolCall,
    ToolLoop,
    check_tool_choice,
    parse_tool_calls,
    tool_names,
)

if TYPE_CHECKING:
    import torch

    from seekmoe.multimodal.model import Media
    from seekmoe.text.grammar import Grammar, Grammars

_PARAM_NAMES = {f.name for f in fields(SamplingParams)}


def _sampling_defaults(folder: Path) -> dict[str, float | int]:
    """The sampling defaults of folder/generation_config.json ({} without one), as vLLM applies them: a request's
    own values win."""
    try:
        return read_generation_defaults(folder) or {}
    except SamplingError as e:
        raise CheckpointError(str(e)) from None


@dataclass
class TokenLogprob:
    token_id: int
    token: str  # the token's text on its own (U+FFFD where it is part of a character)
    bytes: list[int]
    logprob: float
    top_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Delta:
    """What one sequence added since its last delta."""

    index: int  # which of the request's n sequences
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None  # "stop", "length" or "cancelled" on its last delta
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on its first delta, with params.prompt_logprobs


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # chat with tools: the calls the answer makes
    prompt_logprobs: list[TokenLogprob | None] | None = None  # with prompt_logprobs: one a prompt token, None first


@dataclass
class Completion:
    """One prompt's result; `.text`, `.token_ids` and `.finish_reason` are those of its first choice."""

    prompt_token_ids: list[int]
    choices: list[Choice]
    usage: Usage

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.choices[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.choices[0].logprobs

    @property
    def prompt_logprobs(self) -> list[TokenLogprob | None] | None:
        """With prompt_logprobs (max_tokens=0 scores the prompt alone): each prompt token's logprob given the tokens
        before it, and the likeliest tokens there; None for the first token, which nothing predicts."""
        return self.choices[0].prompt_logprobs


@dataclass
class EngineStats:
    """What the engine is doing (LLM.stats): for metrics and the expert-load heatmap."""

    waiting: int  # sequences waiting for a place in the batch
    running: int  # sequences in the running batch
    cache_blocks: int  # KV-cache blocks in all
    free_cache_blocks: int
    expert_counts: dict[int, list[int]]  # MoE layer -> tokens routed to each of its routed experts since start


class TextRequest:
    """One submitted request as text deltas; iterate it once, sync or async; cancel() any time."""

    def __init__(self, llm: LLM, stream: RequestStream, params: SamplingParams, skip_special_tokens: bool = True,
                 tool_calls: bool = False):
        self.llm, self.params, self._stream = llm, params, stream
        self.prompt_token_ids = stream.request.prompt_ids
        block = (CALLS_BEGIN, CALLS_END) if tool_calls else None
        opened = tool_calls and _ends_in_block(llm.tokenizer, self.prompt_token_ids)
        self._text = [TextStream(llm.tokenizer, params.stop, skip_special_tokens, MARKERS if tool_calls else (),
                                 block, opened) for _ in range(params.n)]
        self._done = [False] * params.n

    @property
    def id(self) -> str:
        return self._stream.id

    def cancel(self) -> None:
        self._stream.cancel()

    def _delta(self, out: Output) -> Delta | None:
        i = out.index
        if self._done[i]:
            return None  # tokens already in flight when a stop string ended it
        text, ids, logprobs = self._text[i], [], []
        piece = ""
        if out.token_id is not None:
            ids.append(out.token_id)
            piece = text.push(out.token_id)
            if self.params.logprobs is not None:
                logprobs.append(self._logprob(out.token_id, out.logprob, out.top_logprobs or []))
        reason = out.finish_reason
        scored = None
        if out.prompt_logprobs is not None:
            scored = [self._logprob(lp.token_id, lp.logprob, lp.top_logprobs) if lp is not None else None
                      for lp in out.prompt_logprobs]
        if text.stopped is not None:
            reason = "stop"
            self._stream.cancel(i, "stop")  # free its blocks now; its own final event is then dropped above
        elif reason is not None:
            piece += text.finish()
        if reason is not None:
            self._done[i] = True
        return Delta(i, piece, ids, logprobs, reason, scored)

    def _logprob(self, token_id: int, logprob: float | None, top: list[tuple[int, float]]) -> TokenLogprob:
        tok = self.llm.tokenizer
        def one(i: int, lp: float) -> TokenLogprob:
            return TokenLogprob(i, tok.decode([i]), list(tok.token_bytes(i)), lp)
        entry = one(token_id, float(logprob) if logprob is not None else float("nan"))
        entry.top_logprobs = [one(i, lp) for i, lp in top]
        return entry

    def __iter__(self) -> Iterator[Delta]:
        for out in self._stream:
            delta = self._delta(out)
            if delta is not None:
                yield delta

    async def __aiter__(self) -> AsyncIterator[Delta]:
        async for out in self._stream:
            delta = self._delta(out)
            if delta is not None:
                yield delta

    def result(self) -> Completion:
        """Run to the end and collect (in a thread; from asyncio, iterate with `async for` instead)."""
        return self.collect(iter(self))

    def collect(self, deltas) -> Completion:
        choices = [Choice(i, logprobs=[] if self.params.logprobs is not None else None)
                   for i in range(self.params.n)]
        for d in deltas:
            c = choices[d.index]
            c.text += d.text
            c.token_ids += d.token_ids
            if c.logprobs is not None:
                c.logprobs += d.logprobs
            c.finish_reason = d.finish_reason or c.finish_reason
            c.prompt_logprobs = d.prompt_logprobs or c.prompt_logprobs
        used = sum(len(c.token_ids) for c in choices)
        return Completion(self.prompt_token_ids, choices, Usage(len(self.prompt_token_ids), used))


def _ends_in_block(tokenizer: Tokenizer, prompt_ids: list[int]) -> bool:
    """Whether the prompt ends inside a tool-call block (a forced call's opening): its last calls marker opens one
    (the calls of earlier turns are closed)."""
    begin, end = tokenizer.token_to_id(CALLS_BEGIN), tokenizer.token_to_id(CALLS_END)
    last = next((t for t in reversed(prompt_ids) if t in (begin, end)), None)
    return last is not None and last == begin


class LLM:
    """A model, its tokenizer and an engine running on a background thread.

    path None means the bundled default model. adapter: a LoRA adapter folder, merged into the weights at load.
    quantize="int8" stores attention, MLP, expert and output projections as int8 with per-channel scales
    (weight-only). kv_cache_dtype: the latent cache's ("auto": the model's dtype; "int8": a quarter of float32's
    bytes, long contexts decoded faster, logits off by the rounding).
    """

    def __init__(self, path: str | Path | None = None, dtype: str = "float32", quantize: str | None = None, *,
                 adapter: str | Path | None = None, cache_tokens: int | None = None, cache_bytes: int | None = None,
                 max_num_seqs: int = 64, max_step_tokens: int = 256, max_waiting: int | None = None,
                 kv_cache_dtype: str = "auto"):
        from seekmoe.model.checkpoint import cast_model, load_model

        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        self.path = Path(path) if path is not None else DEFAULT_MODEL
        if adapter is None:
            self.model = load_model(self.path, dtype=dtype)
        else:
            from seekmoe.model.lora import apply_adapter

            # merged in float32, then cast: the update is added to the weights before any rounding
            self.model = cast_model(apply_adapter(load_model(self.path), adapter), dtype)
        self.adapter = Path(adapter) if adapter is not None else None
        if quantize == "int8" and "quantization_config" not in self.model.config.extra:
            from seekmoe.model.quant import quantize_int8

            quantize_int8(self.model)
        from seekmoe.multimodal.media import MediaLimits
        from seekmoe.multimodal.model import load_encoders

        self.encoders = load_encoders(self.path, self.model)  # None for a text-only model
        self.media_limits = MediaLimits()
        self.sampling_defaults = _sampling_defaults(self.path)
        self.tokenizer = Tokenizer.from_pretrained(self.path)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ValueError(f"{self.path}: the tokenizer has {self.tokenizer.vocab_size} ids, the model only "
                             f"{self.model.config.vocab_size}")
        self.engine = Engine(self.model, cache_tokens=cache_tokens, cache_bytes=cache_bytes,
                             max_num_seqs=max_num_seqs, max_step_tokens=max_step_tokens, max_waiting=max_waiting,
                             vocab_limit=self.tokenizer.vocab_size, kv_cache_dtype=kv_cache_dtype)
        self._loop = EngineLoop(self.engine)

    # ---- building blocks ------------------------------------------------------------------------------------

    def params(self, params: SamplingParams | None = None, **kwargs) -> SamplingParams:
        """SamplingParams from keyword arguments (max_tokens=..., temperature=..., stop=..., ...); what they leave
        out comes from the model's generation_config.json (sampling_defaults), then SamplingParams' defaults. An
        explicit params is used as it is."""
        unknown = sorted(set(kwargs) - _PARAM_NAMES)
        if unknown:
            raise TypeError(f"unknown sampling parameter {unknown[0]!r}; known: {', '.join(sorted(_PARAM_NAMES))}")
        if params is not None:
            if kwargs:
                raise TypeError("give either params= or keyword sampling parameters, not both")
            return params
        return SamplingParams(**{**self.sampling_defaults, **kwargs})

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        return self.tokenizer.encode(prompt, add_bos=True)

    def submit(self, prompt_token_ids: list[int], params: SamplingParams | None = None,
               request_id: str | None = None, skip_special_tokens: bool = True, tool_calls: bool = False,
               embeds: PromptEmbeds | None = None, cache_salt: str | None = None,
               grammar: Grammar | None = None) -> TextRequest:
        """tool_calls: the output may hold tool calls: their markers stay in the text (for parse_tool_calls), and
        stop strings apply only outside the calls, to what becomes the answer's content.
        embeds: the media rows of a multimodal prompt (chat_prompt makes them). cache_salt: cached prompt prefixes
        are shared only between requests with the same salt (None: with every request without one). grammar: what
        the output must follow (from `grammars`); its sequences end with "stop" once the grammar is complete."""
        params = params if params is not None else self.params()
        constraint = grammar.matcher() if grammar is not None else None
        stream = self._loop.submit(prompt_token_ids, params, request_id, embeds, cache_salt, constraint)
        return TextRequest(self, stream, params, skip_special_tokens, tool_calls)

    # ---- constrained decoding ------------------------------------------------------------------------------

    @cached_property
    def grammars(self) -> Grammars:
        """Compiles the grammars of constrained decoding against this model's tokenizer (made on first use)."""
        from seekmoe.text.grammar import Grammars

        eos = self.engine.eos_token_id
        return Grammars(self.tokenizer, self.vocab_size, eos if eos is not None else self.tokenizer.eos_id)

    def grammar(self, json_schema: dict | None = None, grammar: str | None = None) -> Grammar | None:
        """The grammar of a JSON Schema ({"type": "object"}: any JSON object) or of a Lark grammar (llguidance's
        dialect); None without either. GrammarError (a ValueError) for one that does not compile."""
        if json_schema is not None and grammar is not None:
            raise TypeError("give json_schema or grammar, not both")
        if json_schema is not None:
            return self.grammars.json(json_schema)
        return self.grammars.lark(grammar) if grammar is not None else None

    def chat_grammar(self, tools: list[dict] | None, forced: str | None, json_schema: dict | None = None, *,
                     strict: bool = True, parallel: bool = True) -> Grammar | None:
        """What a chat answer must follow (Grammars.chat: a forced call's arguments, strict tools' calls, a JSON
        answer); None, without building the compiler, when nothing constrains it."""
        from seekmoe.text.grammar import constrains

        if not constrains(tools, forced, json_schema):
            return None
        return self.grammars.chat(tools, forced, parallel=parallel, json_schema=json_schema, strict=strict)

    # ---- what a server reads -------------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        """Tokens of prompt and output one sequence may hold."""
        return self.engine.max_model_len

    @property
    def hidden_size(self) -> int:
        """The width of the model's hidden states: the dimensions of its embeddings."""
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """The model's token ids are [0, vocab_size)."""
        return self.model.config.vocab_size

    def stats(self) -> EngineStats:
        """The engine's load now, read without its lock: each value one length or one copy, at worst a step old."""
        engine = self.engine
        return EngineStats(waiting=len(engine.waiting), running=len(engine.running),
                           cache_blocks=engine.cache.num_blocks, free_cache_blocks=engine.cache.free_blocks,
                           expert_counts={layer: c.tolist() for layer, c in list(engine.runner.expert_counts.items())})

    # ---- the friendly calls ---------------------------------------------------------------------------------

    def generate(self, prompts: str | list[str] | None = None, *, prompt_token_ids: list[int] | list[list[int]] |
                 None = None, params: SamplingParams | None = None, json_schema: dict | None = None,
                 grammar: str | None = None, **kwargs) -> Completion | list[Completion]:
        """Complete one prompt (a Completion) or a list of them (a list, run as one batch). json_schema or grammar
        (Lark): what each completion must follow (see `grammar`)."""
        params = self.params(params, **kwargs)
        constrained = self.grammar(json_schema, grammar)
        if (prompts is None) == (prompt_token_ids is None):
            raise TypeError("give prompts or prompt_token_ids (exactly one)")
        if prompts is not None:
            single = isinstance(prompts, str)
            batch = [self.encode(p) for p in ([prompts] if single else list(prompts))]
        else:
            single = not prompt_token_ids or not isinstance(prompt_token_ids[0], (list, tuple))
            batch = [list(prompt_token_ids)] if single else [list(p) for p in prompt_token_ids]
        if not batch:
            return []
        requests = []
        try:
            for ids in batch:  # all in the engine before any is awaited: they run as one batch
                requests.append(self.submit(ids, params, grammar=constrained))
            results = [r.result() for r in requests]
        except BaseException:
            for r in requests:
                r.cancel()
            raise
        return results[0] if single else results

    def embed(self, inputs: str | list[str] | list[int] | list[list[int]],
              cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
        """Unit vectors that stand for texts or token id lists: (hidden_size,) for one, (B, hidden_size) float32 for a
        list. Each is the mean of the model's final hidden states over the input's tokens (a text's with its BOS),
        L2-normalised (seekmoe.engine.embed says why mean pooling), computed between engine steps, so generation
        goes on. cancelled: asked between passes; once True, EngineError."""
        single = isinstance(inputs, str) or (bool(inputs) and not isinstance(inputs[0], (str, list, tuple)))
        batch = [inputs] if single else list(inputs)
        prompts = [self.encode(x) if isinstance(x, str) else x for x in batch]
        vectors = self._loop.embed(prompts, cancelled)
        return vectors[0] if single else vectors

    def stream(self, prompt: str | None = None, *, prompt_token_ids: list[int] | None = None,
               params: SamplingParams | None = None, **kwargs) -> Iterator[str]:
        """Yield the text of one completion as it is written (n must be 1)."""
        params = self.params(params, **kwargs)
        if params.n != 1:
            raise SamplingError("stream() writes one completion: n must be 1 (use submit() for several)")
        if (prompt is None) == (prompt_token_ids is None):
            raise TypeError("give prompt or prompt_token_ids (exactly one)")
        req = self.submit(self.encode(prompt) if prompt is not None else list(prompt_token_ids), params)
        try:
            for delta in req:
                if delta.text:
                    yield delta.text
        finally:
            req.cancel()  # a consumer that stops early frees the sequence

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None,
                 keep_special: tuple[str, ...] = ()) -> list[int]:
        """The prompt ids of a conversation: its text plain, so no typed marker forges a turn (keep_special: the
        media placeholders media_parts writes into it)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools,
                                                  keep_special=keep_special)

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None,
                    tool_choice: object = None) -> tuple[list[int], str | None, PromptEmbeds | None]:
        """The prompt ids of a conversation with these tools offered, what the answer is forced to start with
        (tool_choice "required" or a named function: the opening of a call; None when the model decides alone),
        and the rows of its images and audio (None without media). ValueError (ChatError, MediaError) for bad
        messages, media, tools or tool_choice."""
        return self.chat_inputs(messages, tools, tool_choice)[:3]

    def chat_inputs(self, messages: list[dict], tools: list[dict] | None = None, tool_choice: object = None
                    ) -> tuple[list[int], str | None, PromptEmbeds | None, list[Media]]:
        """chat_prompt's three, and the conversation's media as decoded, in reading order (an image's `source` is
        its picture: what a server draws an answer's regions on)."""
        from seekmoe.text.chat import check_tools

        tools = check_tools(tools)
        forced = check_tool_choice(tool_choice, tool_names(tools))
        if forced == "":  # tool_choice "none": the model is not told of the tools
            tools, forced = None, None
        messages, media = self._split_media(messages)
        keep = tuple({m.token for m in media})  # the placeholders split_media wrote; typed ones stay plain
        ids, embeds = self.media_embeds(self.chat_ids(messages, tools, keep), media)
        ids = ids + self._forced_ids(forced) if forced else ids
        return ids, (forced if tools else None), embeds, media

    def _forced_ids(self, forced: str) -> list[int]:
        """The forced opening of a call: its markers special, the function name (the client's text) plain."""
        head, sep, name = forced.rpartition(CALL_BEGIN)
        if not sep or not name.endswith(SEP):
            return self.tokenizer.encode(forced)
        return (self.tokenizer.encode(head + sep) + self.tokenizer.encode(name[:-len(SEP)], special=False)
                + self.tokenizer.encode(SEP))

    def _split_media(self, messages):
        if not isinstance(messages, list) or not any(
                isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages):
            return messages, []
        from seekmoe.multimodal.parts import split_media

        return split_media(messages, self.encoders.config if self.encoders else None, self.media_limits)

    def media_embeds(self, ids: list[int], media: list) -> tuple[list[int], PromptEmbeds | None]:
        """The prompt with its media placeholders expanded, and the encoders' rows for them (None without media).
        ValueError when the placeholders do not pair with the media: a multimodal model never reads a placeholder
        token that no medium fills, even one typed as text."""
        import torch

        from seekmoe.multimodal.model import encode, expand, media_key

        if self.encoders is None:
            return ids, None
        cfg = self.encoders.config
        ids = expand(ids, media, cfg)
        if not media:
            return ids, None
        with torch.inference_mode():
            rows = torch.cat(encode(self.encoders, media))
        positions = [i for i, t in enumerate(ids) if t in (cfg.image_token_id, cfg.audio_token_id)]
        return ids, PromptEmbeds(positions, rows, media_key(media))

    def chat(self, messages: list[dict], *, tools: list[dict] | None = None, tool_choice: object = None,
             json_schema: dict | None = None, parallel_tool_calls: bool = True, params: SamplingParams | None = None,
             **kwargs) -> Completion:
        """Answer a conversation ([{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...]). With
        tools (OpenAI's list), each choice's tool_calls holds the calls its answer makes, its text what it says
        besides, and its finish_reason is "tool_calls" when there are any. A tool_choice that forces a call
        ("required", or a named function) gets one whose arguments follow the function's parameters schema, as do
        the calls of tools marked "strict": true. json_schema: the answer is JSON following it ({"type": "object"}:
        any JSON object)."""
        params = self.params(params, **kwargs)
        ids, forced, embeds = self.chat_prompt(messages, tools, tool_choice)
        plain = tools is None or tool_choice == "none"
        grammar = self.chat_grammar(None if plain else tools, forced, json_schema, parallel=parallel_tool_calls)
        req = self.submit(ids, params, tool_calls=not plain, embeds=embeds, grammar=grammar)
        try:
            done = req.result()
        except BaseException:
            req.cancel()
            raise
        if plain:
            return done
        names = tool_names(tools)
        for choice in done.choices:
            choice.text, choice.tool_calls = parse_tool_calls((forced or "") + choice.text, names)
            if choice.tool_calls:
                choice.finish_reason = "tool_calls"
        return done

    def chat_with_tools(self, messages: list[dict], plugins: dict, *, max_rounds: int = MAX_ROUNDS,
                        timeout: float = 10.0, pool=None, tool_choice: object = None,
                        params: SamplingParams | None = None, **kwargs) -> tuple[Completion, list[dict]]:
        """Answer a conversation, running the plugins ({name: Plugin}) the model calls and feeding their results
        back, up to max_rounds times: (the final Completion, whose usage counts every round; what ran: [{"index",
        "name", "arguments", "ok", "result"}], index being the choice). With n > 1 each choice runs its own rounds.
        A tool_choice that forces a call forces the first round's only. The server runs the same ToolLoop."""
        from seekmoe.plugins import call, openai_tool

        params = self.params(params, **kwargs)
        tools = [openai_tool(p) for p in plugins.values()]
        loops = [ToolLoop(list(messages), tools, plugins, tool_choice, max_rounds, index=i) for i in range(params.n)]
        one = replace(params, n=1)
        going, finals, prompt_ids = loops, [Choice(i) for i in range(params.n)], None
        usage = Usage(0, 0)  # every round's
        while going:
            # round 1: one prompt, a sequence per choice; later: a prompt per choice, each with its conversation
            first = going[0].rounds == 0
            keep = going[0].tool_choice != "none"
            reqs = []
            try:
                for loop in going[:1] if first else going:
                    ids, forced, embeds = self.chat_prompt(loop.messages, loop.tools, loop.tool_choice)
                    grammar = self.chat_grammar(loop.tools if keep else None, forced)
                    reqs.append(self.submit(ids, params if first else one, tool_calls=keep, embeds=embeds,
                                            grammar=grammar))
                prompt_ids = prompt_ids or reqs[0].prompt_token_ids
                for loop in going:
                    loop.begin(forced)
                for i, req in enumerate(reqs):
                    deltas = list(req)
                    usage.prompt_tokens += len(req.prompt_token_ids)
                    usage.completion_tokens += sum(len(d.token_ids) for d in deltas)
                    for d in deltas:
                        going[i + d.index].feed(d.text, d.finish_reason, d.logprobs)
                    for k, choice in enumerate(req.collect(deltas).choices):
                        finals[going[i + k].index] = choice
            except BaseException:
                for req in reqs:
                    req.cancel()
                raise
            ran = [(loop, loop.end_round()) for loop in going]
            for loop, calls in ran:
                if calls:
                    loop.add_results(calls, [call(loop.runnable[c.name], c.arguments, timeout, pool) for c in calls])
            going = [loop for loop, calls in ran if calls]
        for loop, choice in zip(loops, finals, strict=True):
            choice.index, choice.text, choice.tool_calls = loop.index, loop.said, loop.calls
            choice.finish_reason = loop.finish()[-1].finish_reason
        trace = [{"index": loop.index, "name": r.call.name, "arguments": r.call.arguments, "ok": r.ok,
                  "result": r.result} for loop in loops for r in loop.trace]
        return Completion(prompt_ids, finals, usage), trace

    def generate_summary(self, text: str, max_length: int = 200, style: str = "bullets",
                         method: str = "hybrid", progress: bool = False,
                         cancelled: Callable[[], bool] | None = None) -> str:
        """A summary of a text of any length, within max_length tokens. method "hybrid" (the default): the
        sentences that state the conclusions, the opening one and the central ones (TextRank), each shortened by
        the model only where its facts survive; "abstractive": the model summarises chunks, then their summaries
        (map-reduce), falling back to the central sentences where it does not shorten; "extractive": only those.
        style: bullets, paragraph, or sections (the document's headings).
        cancelled: asked between steps; once it says True, SummaryCancelled is raised (a server's client left)."""
        from seekmoe.text.summarize import chat_generate, summarize

        context = self.engine.max_model_len
        return summarize(text, max_length=max_length, style=style, method=method,
                         generate=chat_generate(self, context) if method != "extractive" else None,
                         count_tokens=lambda s: len(self.tokenizer.encode(s)), context_tokens=context,
                         progress=progress, cancelled=cancelled)

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["LLM", "Choice", "Completion", "Delta", "EngineError", "EngineStats", "SamplingError", "SamplingParams",
           "TextRequest", "TokenLogprob", "ToolCall", "Usage"]
