"""The engine on a thread of its own: submit from anywhere, stream each request's events (sync or async).

The Engine is stepped by one thread only; callers hand it requests and cancellations under a lock and read their
events from a per-request stream, in plain threads (`for out in stream`) or in asyncio (`async for out in stream`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import torch

from seekmoe.engine import embed
from seekmoe.engine.engine import Engine, EngineError, Output, PromptEmbeds, Request
from seekmoe.engine.sampling import SamplingParams, TokenConstraint


class RequestStream:
    """One submitted request's events, in order; iteration ends when all of its sequences have finished."""

    def __init__(self, loop: EngineLoop, request: Request):
        self._loop, self.request = loop, request
        self._events: deque[Output | BaseException] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._open = request.params.n  # sequences not yet finished

    @property
    def id(self) -> str:
        return self.request.id

    def _put(self, item: Output | BaseException) -> None:
        with self._cond:
            self._events.append(item)
            self._cond.notify_all()
            for aloop, event in self._waiters:
                aloop.call_soon_threadsafe(event.set)

    def _take(self, item: Output | BaseException) -> Output:
        if isinstance(item, BaseException):
            self._open = 0
            raise EngineError(f"the engine stopped: {item}") from item
        if item.finish_reason is not None:
            self._open -= 1
        return item

    def __iter__(self) -> Iterator[Output]:
        while self._open > 0:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                item = self._events.popleft()
            yield self._take(item)

    async def __aiter__(self) -> AsyncIterator[Output]:
        event = asyncio.Event()
        with self._cond:
            self._waiters.append((asyncio.get_running_loop(), event))
        try:
            while self._open > 0:
                with self._cond:
                    item = self._events.popleft() if self._events else None
                    if item is None:
                        event.clear()
                if item is None:
                    await event.wait()
                    continue
                yield self._take(item)
        finally:
            with self._cond:
                self._waiters = [w for w in self._waiters if w[1] is not event]

    def cancel(self, index: int | None = None, reason: str = "cancelled") -> None:
        """Stop generating (all sequences, or one); the stream still delivers each one's final event."""
        self._loop.cancel(self.request.id, index, reason)


class EngineLoop:
    """Steps an Engine on a daemon thread whenever it has work."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._streams: dict[str, RequestStream] = {}
        self._cond = threading.Condition()
        # callers waiting for the engine lock: the engine thread steps back for them between steps, since a
        # lock released and at once re-taken by the same thread would keep a cancel waiting a whole generation
        self._waiting_callers = 0
        self._count_lock = threading.Lock()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="seekmoe-engine", daemon=True)
        self._thread.start()

    @contextmanager
    def _engine_lock(self):
        """The engine lock, for a caller thread: taken at the next gap between steps."""
        with self._count_lock:
            self._waiting_callers += 1
        try:
            self._cond.acquire()
        finally:
            with self._count_lock:
                self._waiting_callers -= 1
        try:
            yield
        finally:
            self._cond.release()

    def submit(self, prompt_ids: list[int], params: SamplingParams | None = None,
               request_id: str | None = None, embeds: PromptEmbeds | None = None,
               cache_salt: str | None = None, constraint: TokenConstraint | None = None) -> RequestStream:
        with self._engine_lock():
            if self._closed or self._error is not None:
                raise EngineError(f"the engine is not running{f' ({self._error})' if self._error else ''}")
            stream = RequestStream(self, self.engine.add_request(prompt_ids, params, request_id, embeds,
                                                                      cache_salt, constraint))
            self._streams[stream.id] = stream
            self._cond.notify_all()
        return stream

    def embed(self, prompts: list[list[int]], cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
        """(B, D) unit vectors of the prompts (seekmoe.engine.embed), on the caller's thread between engine steps:
        in passes of at most max_step_tokens padded tokens, one at a time under the engine lock, so running
        sequences keep decoding meanwhile as they do beside a long prompt's chunks. cancelled: asked before each
        pass; once True, EngineError."""
        checked = [self.engine.check_prompt(p) for p in prompts]
        for p in checked:
            if len(p) > self.engine.max_model_len:
                raise EngineError(f"the context is {self.engine.max_model_len} tokens, but a prompt to embed has "
                                  f"{len(p)}")
        out = torch.empty(len(checked), self.engine.config.hidden_size)
        for batch in embed.batches([len(p) for p in checked], self.engine.max_step_tokens):
            if cancelled is not None and cancelled():
                raise EngineError("embedding cancelled")
            with self._engine_lock():
                if self._closed or self._error is not None:
                    raise EngineError(f"the engine is not running{f' ({self._error})' if self._error else ''}")
                out[batch] = embed.embed(self.engine.model, [checked[i] for i in batch])
        return out

    def cancel(self, request_id: str, index: int | None = None, reason: str = "cancelled") -> None:
        with self._engine_lock():
            stream = self._streams.get(request_id)
            events = self.engine.cancel(request_id, index, reason)
            if request_id not in self.engine.requests:
                self._streams.pop(request_id, None)
        if stream is not None:
            for out in events:
                stream._put(out)

    def _run(self) -> None:
        while True:
            while self._waiting_callers:
                time.sleep(0)  # let them in first (sleep(0) hands over the GIL)
            with self._cond:
                while not self._closed and not self.engine.has_work:
                    self._cond.wait()
                if self._closed:
                    return
                try:
                    events = self.engine.step()
                except BaseException as e:  # every waiting caller must hear of it, not hang
                    self._error = e
                    for stream in self._streams.values():
                        stream._put(e)
                    self._streams.clear()
                    return
                streams = [(self._streams.get(req.id), out) for req, out in events]
                for req in {req.id: req for req, _ in events}.values():
                    if req.finished:
                        self._streams.pop(req.id, None)
            for stream, out in streams:
                if stream is not None:
                    stream._put(out)

    def close(self) -> None:
        """Cancel everything and stop the thread."""
        with self._engine_lock():
            ids = list(self._streams)
        for rid in ids:
            self.cancel(rid)
        with self._engine_lock():
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
