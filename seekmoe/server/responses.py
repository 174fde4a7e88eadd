"""OpenAI's Responses API (/v1/responses) over the chat path: instructions and input become chat messages, answered
as a chat completion is (the chat template, the sampling, one Job), then written as a response object or as the
Responses API's server-sent events (response.created ... response.completed, each with its sequence_number).

Stateless: nothing is stored, so what needs stored responses (previous_response_id, background), tools or reasoning
is refused by name; store, metadata and user are accepted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from seekmoe.server import schemas as s
from seekmoe.server.errors import HTTPError, invalid
from seekmoe.server.streams import Job, RequestLog, Stream, loggable, sse

UNSUPPORTED = ("tools", "tool_choice", "previous_response_id", "conversation", "background", "reasoning", "include",
               "prompt", "top_logprobs", "max_tool_calls")


def check(body: s.ResponsesRequest) -> None:
    """Refuse, by name, a feature the request asks for; empty, false and tool_choice "auto" or "none" ask for none."""
    for name in UNSUPPORTED:
        value = getattr(body, name)
        if value not in (None, False, [], {}) and not (name == "tool_choice" and value in ("auto", "none")):
            raise invalid(f"{name} is not supported by this server (it keeps no state and runs no tools)", param=name)


def messages(body: s.ResponsesRequest) -> list[dict]:
    """The chat messages of instructions (a system message first) and input."""
    out = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    for m in body.input:
        text = m.content if isinstance(m.content, str) else "".join(part.text for part in m.content)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


async def create(serving, body: s.ResponsesRequest, log: RequestLog) -> s.ResponseObject | Stream:
    """serving: the Serving whose chat path answers."""
    check(body)
    chat = messages(body)
    if not chat:
        raise invalid("input must hold at least one message", param="input")
    ids, _, _, _ = await serving.chat_prompt(chat)
    sampling = s.Sampling(temperature=body.temperature, top_p=body.top_p)
    params = serving.params(sampling, [ids], "input", body.max_output_tokens,
                            renames={"max_tokens": "max_output_tokens"})
    job = serving.start("resp", [ids], params, log, loggable(chat))
    answer = Answer(job, serving.model_name, body)
    if body.stream:
        return Stream(answer.events(), job.cancel)
    c = (await job.collect())[0]
    return answer.response(c.text, c.finish_reason)


class Answer:
    """One response's ids and fields, written whole or as events."""

    def __init__(self, job: Job, model: str, body: s.ResponsesRequest):
        self.job, self.model, self.body = job, model, body
        self.id = f"resp_{job.id.removeprefix('resp-').replace('-', '')}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sequence = 0

    def message(self, text: str, status: str) -> s.OutputMessage:
        content = [s.OutputText(text=text)] if status != "in_progress" else []
        return s.OutputMessage(id=self.message_id, status=status, content=content)

    def response(self, text: str | None, finish_reason: str | None) -> s.ResponseObject:
        """The response object: in progress (text None), or done with this text."""
        b = self.body
        fields = dict(id=self.id, created_at=self.created, model=self.model, instructions=b.instructions,
                      max_output_tokens=b.max_output_tokens, temperature=b.temperature, top_p=b.top_p,
                      metadata=b.metadata)
        if text is None:
            return s.ResponseObject(status="in_progress", output=[], **fields)
        # "length": max_output_tokens reached, or the context's end (the only budget there was)
        status = "incomplete" if finish_reason == "length" else "completed"
        usage = self.job.usage()
        return s.ResponseObject(
            status=status, output=[self.message(text, status)], **fields,
            incomplete_details=s.IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            usage=s.ResponseUsage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"],
                                  total_tokens=usage["total_tokens"]))

    def event(self, type: str, **fields) -> str:
        """One server-sent event, named as OpenAI names it (the event: line) and numbered."""
        data = {"type": type, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(data, event=type)

    async def events(self) -> AsyncIterator[str]:
        place = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        yield self.event("response.created", response=self.response(None, None).model_dump())
        yield self.event("response.in_progress", response=self.response(None, None).model_dump())
        yield self.event("response.output_item.added", output_index=0,
                         item=self.message("", "in_progress").model_dump())
        yield self.event("response.content_part.added", **place, part=s.OutputText(text="").model_dump())
        text, reason = [], None
        try:
            async for _, d in self.job.deltas():
                if d.text:
                    text.append(d.text)
                    yield self.event("response.output_text.delta", **place, delta=d.text, logprobs=[])
                reason = d.finish_reason or reason
        except HTTPError as e:  # the engine stopped under it: the Responses API's error event, then the end
            yield self.event("error", code=e.code, message=e.message, param=e.param)
            return
        done = self.response("".join(text), reason)
        item = done.output[0]
        yield self.event("response.output_text.done", **place, text=item.content[0].text, logprobs=[])
        yield self.event("response.content_part.done", **place, part=item.content[0].model_dump())
        yield self.event("response.output_item.done", output_index=0, item=item.model_dump())
        yield self.event(f"response.{done.status}", response=done.model_dump())
