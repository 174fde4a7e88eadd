"""Chat completions with tools: the model's calls parsed out of its output, and the calls the server runs itself.

A request's tools are the client's, returned to it as `tool_calls`, or, when it brings none, the server's plugins
(`seekmoe serve --tools`): never both, as vLLM and OpenAI add nothing to a request that defines its own tools, and
`tool_choice: "none"` turns the server's off. When an answer calls server tools, the server runs them (arguments
checked against their schema, in a separate process, with a timeout), appends the call and its result to the
conversation, and generates again, up to MAX_ROUNDS times; the client sees the final answer (and, with tool_trace,
what ran). A plugin that fails gives the model an error message as its result: the request goes on.

Everything else behaves as without tools. With n > 1 each choice runs its own rounds (its own calls, results and
answer), as n requests would, answered as one: usage counts every round of every choice. Logprobs are those of
the tokens the client gets (ToolLoop says which); stop strings apply to content only, never inside a call
(LLM.submit's tool_calls).

The rounds are seekmoe.text.tool_calls.ToolLoop's, one a choice, as in LLM.chat_with_tools; here they run in
asyncio, each round a Job of the serving class, and come out as events (text, a call, the end of a choice), so
one loop serves both the JSON answer and the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from seekmoe.server import annotate
from seekmoe.server import schemas as s
from seekmoe.server.errors import HTTPError, http_error, invalid
from seekmoe.server.streams import DONE, Job, RequestLog, Stream, loggable, sse
from seekmoe.text.tool_calls import MAX_ROUNDS, ToolCall, ToolEvent, ToolLoop, check_tool_choice, tool_names


@dataclass
class ToolTurn:
    """One tools request across its rounds."""

    loops: list[ToolLoop]  # one a choice
    limit: int | None  # the request's max tokens
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    job_id: str | None = None
    created: int | None = None
    job: Job | None = None  # the round running now: what cancelling the request stops
    media: list = field(default_factory=list)  # the conversation's, decoded: an answer's regions are drawn on them

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def trace(self) -> list[s.ToolRun]:
        return [s.ToolRun(index=loop.index, name=r.call.name, arguments=r.call.arguments, ok=r.ok, result=r.result,
                          seconds=round(r.seconds, 4)) for loop in self.loops for r in loop.trace]


@dataclass
class Round:
    """A round that has started: its job, the opening its prompt forces, and its choices, in the job's order."""

    job: Job
    forced: str | None
    loops: list[ToolLoop]


def plan(serving, body: s.ChatCompletionRequest, messages: list[dict]) -> ToolTurn | None:
    """The tools this request offers, or None when it offers none (the plain chat path)."""
    client = [t.model_dump(exclude_none=True) for t in body.tools or []]
    server = {} if client else serving.tools
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, s.NamedTool) else body.tool_choice
    if choice == "none" or not (client or server):
        if choice not in (None, "none", "auto"):
            raise invalid("tool_choice needs tools to choose from", param="tool_choice")
        return None
    if client:
        offered = client
    else:
        from seekmoe.plugins import openai_tool

        offered = [openai_tool(p) for p in server.values()]
    try:
        check_tool_choice(choice, tool_names(offered))
    except ValueError as e:
        raise http_error(e, param="tool_choice") from None
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    loops = [ToolLoop(list(messages), offered, server, choice, MAX_ROUNDS, index=i) for i in range(body.n)]
    return ToolTurn(loops, limit)


async def start_round(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log: RequestLog,
                      loops: list[ToolLoop]) -> Round | None:
    """Render these choices' conversations and start generating: the first round is one prompt with a sequence a
    choice; a later one a prompt a choice, each with its own calls and results by then, and without the choices
    that have no room left in the context (None when none has). The first round runs before the response starts,
    so its refusals (bad messages, a full queue) are HTTP errors."""
    first = loops[0].rounds == 0
    rendered = await asyncio.gather(*(serving.chat_prompt(loop.messages, loop.tools, loop.tool_choice)
                                      for loop in (loops[:1] if first else loops)))
    if not first:
        fits = [i for i, (ids, *_) in enumerate(rendered) if len(ids) < serving.context]
        loops, rendered = [loops[i] for i in fits], [rendered[i] for i in fits]
        if not loops:
            return None
    prompts, forced = [ids for ids, *_ in rendered], rendered[0][1]
    room = serving.context - max(map(len, prompts))
    # a later round's prompts share one max_tokens: the room the longest leaves, when the request set no limit
    limit = turn.limit if first or turn.limit is None else min(turn.limit, room)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = serving.params(body, prompts, "messages", limit, n=len(loops) if first else 1, logprobs=logprobs,
                            renames={"max_tokens": field, "logprobs": "top_logprobs"})
    grammar = await serving.chat_grammar(body, loops[0].tools, forced)
    turn.job = serving.start("chatcmpl", prompts, params, log, loggable(loops[0].messages), tool_calls=True,
                             embeds=[embeds for _, _, embeds, _ in rendered], grammar=grammar)
    if turn.job_id is None:
        turn.job_id, turn.created, turn.media = turn.job.id, turn.job.created, rendered[0][3]
    return Round(turn.job, forced, loops)


async def rounds(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log: RequestLog,
                 started: Round) -> AsyncIterator[ToolEvent]:
    """Generate, run the server's tools, generate again...: the events of what the client gets. `started` is
    the first round, begun by start_round."""
    from seekmoe.plugins import call

    timeout, pool = serving.config.tool_timeout, serving.tool_pool
    while True:
        job, going = started.job, started.loops
        for loop in going:
            loop.begin(started.forced)
        # (prompt, sequence): the first round's are (0, choice), a later one's (its place in going, 0)
        async for i, d in job.deltas():
            for event in going[i + d.index].feed(d.text, d.finish_reason, d.logprobs):
                yield event  # text streams as it comes, whoever runs the calls
        turn.usage["prompt_tokens"] += job.prompt_tokens
        turn.usage["completion_tokens"] += job.completion_tokens
        ran = [(loop, loop.end_round()) for loop in going]
        for loop, calls in ran:
            if not calls:
                for event in loop.finish():
                    yield event
        ran = [(loop, calls) for loop, calls in ran if calls]
        if not ran:
            return
        results = iter(await asyncio.gather(*(  # concurrently, all choices' calls
            asyncio.to_thread(call, loop.runnable[c.name], c.arguments, timeout, pool)
            for loop, calls in ran for c in calls)))
        for loop, calls in ran:
            loop.add_results(calls, [next(results) for _ in calls])
        started = await start_round(serving, body, turn, log, [loop for loop, _ in ran])
        for loop, _ in ran:
            if started is None or loop not in started.loops:
                for event in loop.out_of_room():
                    yield event
        if started is None:
            return


async def respond(serving, body: s.ChatCompletionRequest, turn: ToolTurn,
                  log: RequestLog) -> s.ChatCompletionResponse:
    started = await start_round(serving, body, turn, log, turn.loops)
    n = len(turn.loops)
    text = [""] * n
    calls: list[list[ToolCall]] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    logprobs: list[list] = [[] for _ in range(n)]
    async for e in rounds(serving, body, turn, log, started):
        logprobs[e.index] += e.logprobs
        if e.kind == "text":
            text[e.index] += e.text
        elif e.kind == "call":
            calls[e.index].append(e.call)
        else:
            reasons[e.index] = e.finish_reason
    choices = [s.ChatChoice(index=i, finish_reason=_reason(body, reasons[i]), message=s.ChatMessageOut(
        content=text[i] if text[i] or not calls[i] else None, **_calls(body, calls[i]),
        images=await annotate.image_parts(text[i], turn.media)),
        logprobs=s.ChoiceLogprobs.of(logprobs[i]) if body.logprobs else None) for i in range(n)]
    usage = turn.usage | {"total_tokens": turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]}
    return s.ChatCompletionResponse(id=turn.job_id, created=turn.created, model=serving.model_name, choices=choices,
                                    usage=s.Usage(**usage), tool_trace=turn.trace() if body.tool_trace else None)


async def stream(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log: RequestLog) -> Stream:
    """A Stream whose first round has started (so refusals are still HTTP errors)."""
    started = await start_round(serving, body, turn, log, turn.loops)
    return Stream(chunks(serving, body, turn, rounds(serving, body, turn, log, started)), turn.cancel)


async def chunks(serving, body: s.ChatCompletionRequest, turn: ToolTurn,
                 events: AsyncIterator[ToolEvent]) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: content deltas, and each tool call whole in one delta."""
    base = {"id": turn.job_id, "object": "chat.completion.chunk", "created": turn.created,
            "model": serving.model_name}
    usage = body.stream_options is not None and body.stream_options.include_usage
    tail = {"usage": None} if usage else {}
    n = len(turn.loops)
    counts = [0] * n
    text = [""] * n  # what each choice's answer says: its regions are drawn when it ends

    def chunk(e: ToolEvent | None, index: int, delta: dict, reason: str | None = None) -> str:
        lps = s.ChoiceLogprobs.of(e.logprobs).model_dump() if e is not None and body.logprobs else None
        return sse(base | {"choices": [{"index": index, "delta": delta, "logprobs": lps,
                                        "finish_reason": reason}]} | tail)

    try:
        for index in range(n):
            yield chunk(None, index, {"role": "assistant", "content": ""})
        async for e in events:
            if e.kind == "text":
                text[e.index] += e.text
                yield chunk(e, e.index, {"content": e.text} if e.text else {})
            elif e.kind == "call" and body.legacy:
                if not counts[e.index]:  # the old shape holds one call
                    yield chunk(e, e.index, {"function_call": e.call.to_openai()["function"]})
                counts[e.index] += 1
            elif e.kind == "call":
                delta = {"index": counts[e.index], **e.call.to_openai()}
                counts[e.index] += 1
                yield chunk(e, e.index, {"tool_calls": [delta]})
            else:
                images = await annotate.image_parts(text[e.index], turn.media)
                yield chunk(e, e.index, {"images": images} if images else {}, _reason(body, e.finish_reason))
        if usage:
            total = turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]
            yield sse(base | {"choices": [], "usage": turn.usage | {"total_tokens": total}})
        if body.tool_trace and any(loop.trace for loop in turn.loops):
            yield sse(base | {"choices": [], "tool_trace": [t.model_dump() for t in turn.trace()]})
    except HTTPError as e:
        yield sse(e.body())
    yield DONE


def _calls(body: s.ChatCompletionRequest, calls: list[ToolCall]) -> dict:
    """A message's calls: tool_calls, or for a request sent with the deprecated functions, its first call as
    function_call (the old shape holds one; parallel_tool_calls is off for such requests)."""
    if not calls:
        return {}
    if body.legacy:
        return {"function_call": s.FunctionCallOut(**calls[0].to_openai()["function"])}
    return {"tool_calls": [s.ToolCallOut(**c.to_openai()) for c in calls]}


def _reason(body: s.ChatCompletionRequest, reason: str | None) -> str | None:
    return "function_call" if reason == "tool_calls" and body.legacy else reason
