"""Chat completions with tools: the model's calls parsed out of its output, and the calls the server runs itself.

A request's tools are the client's (returned to it as `tool_calls`) and, with `seekmoe serve --tools`, the
server's plugins. When an answer calls only server tools, the server runs them (arguments checked against their
schema, in a separate process, with a timeout), appends the call and its result to the conversation, and generates
again, up to MAX_ROUNDS times; the client sees the final answer (and, with tool_trace, what ran). A plugin that
fails gives the model an error message as its result: the request goes on.

Rounds are events (text, a call, the end of a choice), so one loop serves both the JSON answer and the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from seekmoe.server import schemas as s
from seekmoe.text.tool_calls import MARKERS, ToolCall, ToolCallStream, check_tool_choice, tool_names

MAX_ROUNDS = 4  # server-run tool rounds per request; then the model's answer is returned as it is


@dataclass
class Event:
    kind: str  # "text", "call" or "end"
    index: int  # the choice
    text: str = ""
    call: ToolCall | None = None
    finish_reason: str | None = None


@dataclass
class ToolTurn:
    """The state of one tools request across its rounds."""
    messages: list[dict]
    offered: list[dict]  # OpenAI tool definitions: the client's, then the server's
    server: dict  # name -> Plugin the server runs
    tool_choice: object
    limit: int | None  # the request's max tokens
    n: int
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    trace: list[s.ToolRun] = field(default_factory=list)
    job_id: str | None = None
    created: int | None = None
    job: object = None  # the round running now: what cancelling the request stops

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


def plan(serving, body: s.ChatCompletionRequest, messages: list[dict]) -> ToolTurn | None:
    """The tools this request offers, or None when it offers none (the plain chat path)."""
    from seekmoe.server.serving import APIError

    client = [t.model_dump(exclude_none=True) for t in body.tools or []]
    client_names = tool_names(client)
    server = {name: p for name, p in serving.tools.items() if name not in client_names}  # the client's tool wins
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, s.NamedTool) else body.tool_choice
    if choice == "none" or not (client or server):
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools to choose from", param="tool_choice")
        return None
    offered = list(client)
    if server:
        from seekmoe.plugins import openai_tool

        offered += [openai_tool(p) for p in server.values()]
    try:
        check_tool_choice(choice, tool_names(offered))
    except ValueError as e:
        raise APIError(400, str(e), param="tool_choice") from None
    if body.logprobs:
        raise APIError(400, "logprobs are not supported together with tools", param="logprobs")
    if server and body.n != 1:
        raise APIError(400, "n must be 1 when the server runs tools itself (serve --tools)", param="n")
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return ToolTurn(messages, offered, server, choice, limit, body.n)


async def start_round(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log, round_: int):
    """Render the conversation so far and start generating: (job, forced opening), or None when no room is left.
    Round 0 runs before the response starts, so its refusals (bad messages, a full queue) are HTTP errors."""
    from seekmoe.server.serving import loggable

    choice = turn.tool_choice if round_ == 0 else "auto"  # a forced call is forced once
    ids, forced, embeds = await serving.chat_prompt(turn.messages, turn.offered, choice)
    room = serving.context - len(ids)
    if round_ and room < 1:
        return None
    limit = turn.limit if round_ == 0 or turn.limit is None else min(turn.limit, room)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = serving._params(body, [ids], "messages", limit, n=turn.n, renames={"max_tokens": field})
    turn.job = serving._start("chatcmpl", [ids], params, log, loggable(turn.messages), keep_special_tokens=MARKERS,
                              embeds=[embeds])
    if turn.job_id is None:
        turn.job_id, turn.created = turn.job.id, turn.job.created
    return turn.job, forced


async def rounds(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log, started) -> AsyncIterator[Event]:
    """Generate, run the server's tools, generate again...: the events of what the client gets. `started` is
    round 0, begun by start_round."""
    for round_ in range(MAX_ROUNDS + 1):
        if round_:
            started = await start_round(serving, body, turn, log, round_)
            if started is None:
                yield Event("end", 0, finish_reason="length")
                return
        job, forced = started
        parsers = [ToolCallStream(tool_names(turn.offered)) for _ in range(turn.n)]
        for parser in parsers:
            parser.feed(forced or "")  # the opening of a forced call: a call completes only with the model's part
        calls: list[list[ToolCall]] = [[] for _ in range(turn.n)]
        said = [""] * turn.n
        hold = bool(turn.server)  # the server may run the calls itself: they are sent only if it does not
        held: list[Event] = []
        ends: dict[int, str | None] = {}
        async for _, d in job.deltas():
            parser = parsers[d.index]
            items = parser.feed(d.text) if d.text else []
            if d.finish_reason is not None:
                items += parser.finish()
                ends[d.index] = d.finish_reason
            for item in items:
                if isinstance(item, ToolCall):
                    calls[d.index].append(item)
                    event = Event("call", d.index, call=item)
                else:
                    said[d.index] += item
                    event = Event("text", d.index, text=item)
                if hold and event.kind == "call":
                    held.append(event)
                else:
                    yield event  # text streams as it comes, whoever runs the calls
        turn.usage["prompt_tokens"] += job.prompt_tokens
        turn.usage["completion_tokens"] += job.completion_tokens
        runnable = calls[0] and all(c.name in turn.server for c in calls[0])
        if hold and runnable and round_ < MAX_ROUNDS:
            await run_calls(serving, turn, said[0], calls[0])
            continue
        for e in held:
            yield e
        for i in range(turn.n):
            yield Event("end", i, finish_reason="tool_calls" if calls[i] else ends.get(i))
        return


async def run_calls(serving, turn: ToolTurn, content: str, calls: list[ToolCall]) -> None:
    """Run the calls (concurrently), then add the assistant's calls and their results to the conversation."""
    from seekmoe.plugins import call

    results = await asyncio.gather(*(asyncio.to_thread(call, turn.server[c.name], c.arguments,
                                                       serving.config.tool_timeout, serving.tool_pool) for c in calls))
    turn.messages.append({"role": "assistant", "content": content, "tool_calls": [c.to_openai() for c in calls]})
    for c, r in zip(calls, results, strict=True):
        turn.messages.append({"role": "tool", "tool_call_id": c.id, "content": r.content})
        turn.trace.append(s.ToolRun(name=c.name, arguments=c.arguments, ok=r.ok, result=r.content,
                                    seconds=round(r.seconds, 4)))


async def respond(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log) -> s.ChatCompletionResponse:
    started = await start_round(serving, body, turn, log, 0)
    text = [""] * turn.n
    calls: list[list[ToolCall]] = [[] for _ in range(turn.n)]
    reasons: list[str | None] = [None] * turn.n
    async for e in rounds(serving, body, turn, log, started):
        if e.kind == "text":
            text[e.index] += e.text
        elif e.kind == "call":
            calls[e.index].append(e.call)
        else:
            reasons[e.index] = e.finish_reason
    choices = [s.ChatChoice(index=i, finish_reason=reasons[i], message=s.ChatMessageOut(
        content=text[i] if text[i] or not calls[i] else None,
        tool_calls=[s.ToolCallOut(**c.to_openai()) for c in calls[i]] or None)) for i in range(turn.n)]
    usage = turn.usage | {"total_tokens": turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]}
    return s.ChatCompletionResponse(id=turn.job_id, created=turn.created, model=serving.model_name, choices=choices,
                                    usage=s.Usage(**usage), tool_trace=turn.trace if body.tool_trace else None)


async def stream(serving, body: s.ChatCompletionRequest, turn: ToolTurn, log):
    """A Stream whose round 0 has started (so refusals are still HTTP errors)."""
    from seekmoe.server.serving import Stream

    started = await start_round(serving, body, turn, log, 0)
    return Stream(chunks(serving, body, turn, rounds(serving, body, turn, log, started)), turn.cancel)


async def chunks(serving, body: s.ChatCompletionRequest, turn: ToolTurn,
                 events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: content deltas, and each tool call whole in one delta."""
    from seekmoe.server.serving import DONE, APIError, sse

    base = {"id": turn.job_id, "object": "chat.completion.chunk", "created": turn.created,
            "model": serving.model_name}
    usage = body.stream_options is not None and body.stream_options.include_usage
    tail = {"usage": None} if usage else {}
    counts = [0] * turn.n

    def chunk(index: int, delta: dict, reason: str | None = None) -> str:
        return sse(base | {"choices": [{"index": index, "delta": delta, "logprobs": None,
                                        "finish_reason": reason}]} | tail)

    try:
        for index in range(turn.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for e in events:
            if e.kind == "text":
                yield chunk(e.index, {"content": e.text})
            elif e.kind == "call":
                delta = {"index": counts[e.index], **e.call.to_openai()}
                counts[e.index] += 1
                yield chunk(e.index, {"tool_calls": [delta]})
            else:
                yield chunk(e.index, {}, e.finish_reason)
        if usage:
            total = turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]
            yield sse(base | {"choices": [], "usage": turn.usage | {"total_tokens": total}})
        if body.tool_trace and turn.trace:
            yield sse(base | {"choices": [], "tool_trace": [t.model_dump() for t in turn.trace]})
    except APIError as e:
        yield sse(e.body())
    yield DONE
