"""A request's generation while it runs: its engine requests merged, timed and counted (Job), its server-sent
events (sse, DONE, Stream), and what the access log says of it (RequestLog)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from seekmoe.engine.engine import EngineError
from seekmoe.llm import Completion, Delta, TextRequest
from seekmoe.server.errors import http_error
from seekmoe.server.metrics import Metrics

DONE = "data: [DONE]\n\n"


def sse(obj: object, event: str | None = None) -> str:
    """One server-sent event; event: its name (the Responses API names every event)."""
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class Stream:
    """A streaming answer: its SSE chunks, and how to stop its generation (the route calls it when done)."""

    chunks: AsyncIterator[str]
    cancel: Callable[[], None]


@dataclass
class RequestLog:
    """What the access log line says about a generation request; the serving class fills it in."""

    id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None
    prompt: str | None = None  # only with --log-prompts
    key: str | None = None  # which API key sent it ("1": the first configured, "admin-1"), never the key itself


def loggable(messages: list[dict]) -> list[dict]:
    """Messages for the access log: media as [image] / [audio], not their base64."""
    names = {"text": "", "image_url": "[image]", "input_audio": "[audio]"}

    def text(content):
        return content if not isinstance(content, list) else "".join(p.get("text", names[p["type"]]) for p in content)

    return [{**m, "content": text(m["content"])} for m in messages]


class Job:
    """The engine requests of one HTTP request (one per prompt): their deltas merged, timed and counted."""

    def __init__(self, id: str, reqs: list[TextRequest], metrics: Metrics, log: RequestLog, start: float):
        self.id, self.reqs, self.metrics, self.log, self.start = id, reqs, metrics, log, start
        self.created = int(time.time())
        self.prompt_tokens = sum(len(r.prompt_token_ids) for r in reqs)
        self.completion_tokens = 0

    def cancel(self) -> None:
        for r in self.reqs:
            r.cancel()

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """(prompt index, delta) until every sequence ends; leaving early (or being cancelled) stops them all."""
        last: dict[tuple[int, int], float] = {}
        try:
            async for i, d in self._merged():
                if d.token_ids:
                    now, key = time.perf_counter(), (i, d.index)
                    if key in last:
                        self.metrics.itl.observe(now - last[key])
                    else:
                        self.metrics.ttft.observe(now - self.start)
                    last[key] = now
                    self.completion_tokens += len(d.token_ids)
                    self.log.completion_tokens = self.completion_tokens
                    self.metrics.generation_tokens.inc(len(d.token_ids))
                if d.finish_reason is not None:
                    self.log.finish_reason = d.finish_reason
                yield i, d
        except EngineError as e:  # the engine thread died under us
            raise http_error(e, accepted=True) from e
        finally:
            self.cancel()

    async def _merged(self) -> AsyncIterator[tuple[int, Delta]]:
        if len(self.reqs) == 1:
            async for d in self.reqs[0]:
                yield 0, d
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, req: TextRequest) -> None:
            try:
                async for d in req:
                    queue.put_nowait((i, d))
            except Exception as e:
                queue.put_nowait((i, e))
            queue.put_nowait((i, None))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(self.reqs)]
        try:
            open_ = len(tasks)
            while open_:
                i, item = await queue.get()
                if item is None:
                    open_ -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()

    async def collect(self) -> list[Completion]:
        per: list[list[Delta]] = [[] for _ in self.reqs]
        async for i, d in self.deltas():
            per[i].append(d)
        return [r.collect(ds) for r, ds in zip(self.reqs, per, strict=True)]
