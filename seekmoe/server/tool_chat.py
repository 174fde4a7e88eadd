"""Chat completions with tools: the model's calls parsed out of its output, and the calls the server runs itself.

A request's tools are the client's (returned to it as `tool_calls`) and, with `seekmoe serve --tools`, the
server's plugins. When an answer calls only server tools, the server runs them (arguments checked against their
schema, in a separate process, with a timeout), appends the call and its result to the conversation, and generates
again, up to MAX_ROUNDS times; the client sees the final answer (and, with tool_trace, what ran). A plugin that
fails gives the model an error message as its result: the request goes on.

The rounds are seekmoe.text.tool_calls.ToolLoop's, as in LLM.chat_with_tools; here they run in asyncio, each
round a Job of the serving class, and come out as events (text, a call, the end of a choice), so one loop serves
both the JSON answer and the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from seekmoe.server import schemas as s
from seekmoe.server.errors import HTTPError, http_error, invalid
from seekmoe.server.streams import DONE, Job, RequestLog, Stream, loggable, sse
from seekmoe.text.tool_calls import MARKERS, MAX_ROUNDS, ToolCall, ToolEvent, ToolLoop, check_tool_choice, tool_names


@dataclass
class ToolTurn:
    """One tools request across its rounds."""

    loop: ToolLoop
    limit: int | None  # the request's max tokens
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    job_id: str | None = None
    created: int | None = None
    job: Job | None = None  # the round running now: what cancelling the request stops

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def trace(self) -> list[s.ToolRun]:
        return [s.ToolRun(name=r.call.name, arguments=r.call.arguments, ok=r.ok, result=r.result,
                          seconds=round(r.seconds, 4)) for r in self.loop.trace]


def plan(serving, body: s.ChatCompletionRequest, messages: list[dict]) -> ToolTurn | None:
    """The tools this request offers, or None when it offers none (the plain chat path)."""
    client = [t.model_dump(exclude_none=True) for t in body.tools or []]
    client_names = tool_names(client)
    server = {name: p for name, p in serving.tools.items() if name not in client_names}  # the client's tool wins
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, s.NamedTool) else body.tool_choice
    if choice == "none" or not (client or server):
        if choice not in (None, "none", "auto"):
            raise invalid("tool_choice needs tools to choose from", param="tool_choice")
        return None
    offered = list(client)
    if server:
        from seekmoe.plugins import openai_tool

        offered += [openai_tool(p) for p in server.values()]
    try:
        check_tool_choice(choice, tool_names(offered))
    except ValueError as e:
        raise http_error(e, param="tool_choice") from None
    if body.logprobs:
        raise invalid("logprobs are not supported together with tools", param="logprobs")
    if server and body.n != 1:
        raise invalid("n must be 1 when the server runs tools itself (serve --tools)", param="n")
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return ToolTurn(ToolLoop(messages, offered, server, choice, body.n, MAX_ROUNDS), limit)


async def start_round(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log: RequestLog):
    """Render the conversation so far and start generating: (job, forced opening), or None when no room is left.
    The first round runs before the response starts, so its refusals (bad messages, a full queue) are HTTP
    errors."""
    loop, first = turn.loop, turn.loop.rounds == 0
    ids, forced, embeds = await serving.chat_prompt(loop.messages, loop.tools, loop.tool_choice)
    room = serving.context - len(ids)
    if not first and room < 1:
        return None
    limit = turn.limit if first or turn.limit is None else min(turn.limit, room)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = serving.params(body, [ids], "messages", limit, n=loop.n, renames={"max_tokens": field})
    grammar = await serving.chat_grammar(body, loop.tools, forced)
    turn.job = serving.start("chatcmpl", [ids], params, log, loggable(loop.messages), keep_special_tokens=MARKERS,
                             embeds=[embeds], grammar=grammar)
    if turn.job_id is None:
        turn.job_id, turn.created = turn.job.id, turn.job.created
    return turn.job, forced


async def rounds(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log: RequestLog,
                 started) -> AsyncIterator[ToolEvent]:
    """Generate, run the server's tools, generate again...: the events of what the client gets. `started` is
    the first round, begun by start_round."""
    from seekmoe.plugins import call

    loop = turn.loop
    while True:
        if started is None:
            for event in loop.out_of_room():
                yield event
            return
        job, forced = started
        loop.begin(forced)
        async for _, d in job.deltas():
            for event in loop.feed(d):
                yield event  # text streams as it comes, whoever runs the calls
        turn.usage["prompt_tokens"] += job.prompt_tokens
        turn.usage["completion_tokens"] += job.completion_tokens
        calls = loop.end_round()
        if not calls:
            for event in loop.finish():
                yield event
            return
        timeout, pool = serving.config.tool_timeout, serving.tool_pool
        results = await asyncio.gather(*(asyncio.to_thread(call, loop.runnable[c.name], c.arguments, timeout, pool)
                                         for c in calls))  # concurrently
        loop.add_results(calls, results)
        started = await start_round(serving, body, turn, log)


async def respond(serving, body: s.ChatCompletionRequest, turn: ToolTurn,
                  log: RequestLog) -> s.ChatCompletionResponse:
    started = await start_round(serving, body, turn, log)
    n = turn.loop.n
    text = [""] * n
    calls: list[list[ToolCall]] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    async for e in rounds(serving, body, turn, log, started):
        if e.kind == "text":
            text[e.index] += e.text
        elif e.kind == "call":
            calls[e.index].append(e.call)
        else:
            reasons[e.index] = e.finish_reason
    choices = [s.ChatChoice(index=i, finish_reason=_reason(body, reasons[i]), message=s.ChatMessageOut(
        content=text[i] if text[i] or not calls[i] else None, **_calls(body, calls[i]))) for i in range(n)]
    usage = turn.usage | {"total_tokens": turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]}
    return s.ChatCompletionResponse(id=turn.job_id, created=turn.created, model=serving.model_name, choices=choices,
                                    usage=s.Usage(**usage), tool_trace=turn.trace() if body.tool_trace else None)


async def stream(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log: RequestLog) -> Stream:
    """A Stream whose first round has started (so refusals are still HTTP errors)."""
    started = await start_round(serving, body, turn, log)
    return Stream(chunks(serving, body, turn, rounds(serving, body, turn, log, started)), turn.cancel)


async def chunks(serving, body: s.ChatCompletionRequest, turn: ToolTurn,
                 events: AsyncIterator[ToolEvent]) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: content deltas, and each tool call whole in one delta."""
    base = {"id": turn.job_id, "object": "chat.completion.chunk", "created": turn.created,
            "model": serving.model_name}
    usage = body.stream_options is not None and body.stream_options.include_usage
    tail = {"usage": None} if usage else {}
    n = turn.loop.n
    counts = [0] * n

    def chunk(index: int, delta: dict, reason: str | None = None) -> str:
        return sse(base | {"choices": [{"index": index, "delta": delta, "logprobs": None,
                                        "finish_reason": reason}]} | tail)

    try:
        for index in range(n):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for e in events:
            if e.kind == "text":
                yield chunk(e.index, {"content": e.text})
            elif e.kind == "call" and body.legacy:
                if not counts[e.index]:  # the old shape holds one call
                    yield chunk(e.index, {"function_call": e.call.to_openai()["function"]})
                counts[e.index] += 1
            elif e.kind == "call":
                delta = {"index": counts[e.index], **e.call.to_openai()}
                counts[e.index] += 1
                yield chunk(e.index, {"tool_calls": [delta]})
            else:
                yield chunk(e.index, {}, _reason(body, e.finish_reason))
        if usage:
            total = turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]
            yield sse(base | {"choices": [], "usage": turn.usage | {"total_tokens": total}})
        if body.tool_trace and turn.loop.trace:
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
