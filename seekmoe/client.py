"""A Python client for `seekmoe serve`: the native /v2/generate and the OpenAI-compatible /v1, sync and async.

    client = seekmoe.Client("http://127.0.0.1:8000", api_key="KEY")
    client.generate("Call me Ishmael.", max_tokens=50).text
    client.chat("Tell me a story.", max_tokens=60).choices[0].message.content
    for chunk in client.chat_stream("Tell me a story."):
        print(chunk.text, end="")

Images and audio go as file paths or bytes: `generate(prompt, images=[...], audio=[...])`, and in chat messages
`image(...)` / `audio(...)` parts (or `{"type": "image"|"audio", "path"|"data": ...}`), a bare string in a content
list being a text part:

    from seekmoe.client import audio, image
    client.chat([{"role": "user", "content": [image("cat.png"), "What is this?"]}])
    client.speech("Hello there")  # WAV bytes from /v1/audio/speech

They are checked here before anything is sent (PNG, JPEG, GIF, WAV or FLAC by their magic bytes, at most
`max_media_bytes`), and a bad one raises ValueError naming it.

Results are small dataclasses. The `*_stream` methods yield `Chunk` objects (the new text, its choice index, and
on the last ones the finish reason and usage), not bare strings. A reply that names regions of the image it was
shown (`<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`) comes with the request's last image annotated with
them: `.images`, a list of PNG bytes, on the Generation, the chat Message and the Chunk that finishes the reply
(empty otherwise):

    reply = client.chat([{"role": "user", "content": [image("circuit.png"), "Circle the LED"]}])
    for i, png in enumerate(reply.choices[0].message.images):
        Path(f"annotated-{i}.png").write_bytes(png)

Any other field the server knows (top_k, min_p, ignore_eos, ...) passes through as a keyword argument. Refusals
raise `APIError` with the server's message.

Retries: 429 (after its Retry-After), 503 and failed connections are retried up to `max_retries` times with
exponential backoff and jitter; other errors are not, and neither is a stream once its first byte has come.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RETRY_STATUS = (429, 503)
# a connection that never opened or was dropped before any answer: the request did not run, so it is safe to resend
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class APIError(Exception):
    """The server refused or failed a request. `status` is None when there was no HTTP answer (the connection
    failed) or the error came inside a stream that had already started."""

    def __init__(self, status: int | None, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    @classmethod
    def from_body(cls, status: int | None, body: object, fallback: str) -> APIError:
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return cls(status, fallback)
        return cls(status, str(err.get("message", fallback)), err.get("type"), err.get("param"), err.get("code"))


class APIConnectionError(APIError):
    """The server could not be reached, after every retry."""


# ---- results ---------------------------------------------------------------------------------------------------

@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def parse(cls, d: dict | None) -> Usage | None:
        return None if d is None else cls(d["prompt_tokens"], d["completion_tokens"], d["total_tokens"])


@dataclass
class Generation:
    """The answer of /v2/generate."""

    id: str
    text: str
    finish_reason: str | None
    usage: Usage
    images: list[bytes] = field(default_factory=list)  # PNGs: the request's last image, the regions drawn on it


@dataclass
class CompletionChoice:
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict | None = None  # OpenAI's shape, as the server sent it


@dataclass
class Completion:
    """The answer of /v1/completions."""

    id: str
    model: str
    created: int
    choices: list[CompletionChoice]
    usage: Usage | None


@dataclass
class Message:
    role: str
    content: str
    images: list[bytes] = field(default_factory=list)  # PNGs: the request's last image, the regions drawn on it


@dataclass
class ChatChoice:
    index: int
    message: Message
    finish_reason: str | None
    logprobs: dict | None = None


@dataclass
class ChatCompletion:
    """The answer of /v1/chat/completions."""

    id: str
    model: str
    created: int
    choices: list[ChatChoice]
    usage: Usage


@dataclass
class Chunk:
    """One streamed piece: the new `text` of choice `index`; `finish_reason` on its last piece; `usage` on the last
    chunk of a native stream, or of an OpenAI stream with include_usage (then `text` is empty)."""

    id: str
    text: str
    index: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: dict = field(default_factory=dict, repr=False)
    images: list[bytes] = field(default_factory=list)  # PNGs, on the chunk that finishes a reply naming regions


def _png(data: str) -> bytes:
    """An image of an answer (base64, or a data: URL of it) as its bytes."""
    return base64.b64decode(data.partition("base64,")[2] if data.startswith("data:") else data)


def _images(images: list | None) -> list[bytes]:
    """The PNGs of /v2/generate's images (base64 strings) or of a chat message's (OpenAI image_url parts)."""
    return [_png(x if isinstance(x, str) else x["image_url"]["url"]) for x in images or []]


def _generation(d: dict) -> Generation:
    return Generation(d["id"], d["generated_text"], d["finish_reason"], Usage.parse(d["usage"]),
                      _images(d.get("images")))


def _completion(d: dict) -> Completion:
    choices = [CompletionChoice(c["index"], c["text"], c.get("finish_reason"), c.get("logprobs")) for c in d["choices"]]
    return Completion(d["id"], d["model"], d["created"], choices, Usage.parse(d.get("usage")))


def _chat(d: dict) -> ChatCompletion:
    choices = [ChatChoice(c["index"], Message(c["message"]["role"], c["message"]["content"],
                                              _images(c["message"].get("images"))),
                          c.get("finish_reason"), c.get("logprobs")) for c in d["choices"]]
    return ChatCompletion(d["id"], d["model"], d["created"], choices, Usage.parse(d["usage"]))


def _chunks(d: dict) -> list[Chunk]:
    """The Chunks of one SSE event of any of the three endpoints."""
    if "error" in d:
        raise APIError.from_body(None, d, "the stream failed")
    usage = Usage.parse(d.get("usage"))
    if "choices" not in d:  # native
        return [Chunk(d["id"], d["text"], 0, d.get("finish_reason"), usage, d, _images(d.get("images")))]
    if not d["choices"]:  # the usage chunk
        return [Chunk(d["id"], "", 0, None, usage, d)]
    out = []
    for c in d["choices"]:
        text = (c["delta"].get("content") or "") if "delta" in c else c["text"]
        images = _images(c["delta"].get("images")) if "delta" in c else []
        out.append(Chunk(d["id"], text, c["index"], c.get("finish_reason"), usage, d, images))
    return out


DONE = object()


def _cut(path: str, e: Exception | None = None) -> APIConnectionError:
    """A stream that ended before `data: [DONE]`: the server went away, so what came is not the whole answer."""
    return APIConnectionError(None, f"the stream of {path} was cut before it finished"
                                    + (f" ({type(e).__name__}: {e})" if e is not None else ""))


def _event(line: str) -> dict | object | None:
    """An SSE line's JSON, DONE for `data: [DONE]`, None for anything else (blank lines, comments)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return DONE if data == "[DONE]" else json.loads(data)


# ---- media -----------------------------------------------------------------------------------------------------

MAX_MEDIA_BYTES = 10 << 20  # the server's default limit on one image or audio file
Source = str | os.PathLike | bytes | bytearray | memoryview  # a file's path, or its bytes
MAGIC = {  # leading bytes -> (kind, mime of an image or input_audio format of a sound), the formats the server reads
    b"\x89PNG\r\n\x1a\n": ("image", "image/png"), b"\xff\xd8\xff": ("image", "image/jpeg"),
    b"GIF87a": ("image", "image/gif"), b"GIF89a": ("image", "image/gif"), b"fLaC": ("audio", "flac"),
}


def _sniff(data: bytes) -> tuple[str, str] | None:
    if data[:4] in (b"RIFF", b"RIFX") and data[8:12] == b"WAVE":
        return "audio", "wav"
    return next((kind for magic, kind in MAGIC.items() if data.startswith(magic)), None)


def _read(source: Source, kind: str, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of a path or bytes-like source, and their mime (image) or format (audio); ValueError naming the
    file when it is missing, unreadable, empty, over max_bytes or not a PNG/JPEG/GIF (image), WAV/FLAC (audio)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), f"the {kind} data"
        if len(data) > max_bytes:
            raise ValueError(f"{name} is {len(data):,} bytes; the limit is {max_bytes:,} (max_media_bytes)")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)  # never more: a huge file (or a device) is refused unread
        except FileNotFoundError:
            raise ValueError(f"{kind} file {name} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"{kind} file {name} is a directory, not a file") from None
        except OSError as e:
            raise ValueError(f"cannot read {kind} file {name}: {e.strerror or e}") from None
        if len(data) > max_bytes:
            raise ValueError(f"{kind} file {name} is over the {max_bytes:,}-byte limit (max_media_bytes)")
    else:
        raise TypeError(f"an {kind} must be a file path or bytes, got {type(source).__name__}")
    if not data:
        raise ValueError(f"{name} is empty")
    found = _sniff(data)
    expected = "a PNG, JPEG or GIF image" if kind == "image" else "a WAV or FLAC recording"
    if found is None:
        raise ValueError(f"{name} is not {expected} (unknown file type)")
    if found[0] != kind:
        raise ValueError(f"{name} is {'an image' if found[0] == 'image' else 'audio'}, not {expected}; "
                         f"use {found[0]}() / {found[0]}{'s' * (found[0] == 'image')}=")
    return data, found[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image(source: Source, max_bytes: int = MAX_MEDIA_BYTES) -> dict:
    """OpenAI's image_url part (a data: URL) of a PNG, JPEG or GIF file path or bytes."""
    data, mime = _read(source, "image", max_bytes)
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{_b64(data)}"}}


def audio(source: Source, max_bytes: int = MAX_MEDIA_BYTES) -> dict:
    """OpenAI's input_audio part of a WAV or FLAC file path or bytes."""
    data, fmt = _read(source, "audio", max_bytes)
    return {"type": "input_audio", "input_audio": {"data": _b64(data), "format": fmt}}


def _part(part: object, max_bytes: int) -> dict:
    """An OpenAI content part: a str is a text part, {"type": "image"|"audio", "path"|"data"} is read and encoded,
    any other dict (OpenAI's own parts) passes unchanged."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise TypeError(f"a content part must be a dict or a str, got {type(part).__name__}")
    kind = part.get("type")
    if kind not in ("image", "audio"):
        return part
    if ("path" in part) == ("data" in part):
        raise ValueError(f"an {kind} part needs exactly one of 'path' and 'data', got keys {sorted(part)}")
    source = part["path"] if "path" in part else part["data"]
    return image(source, max_bytes) if kind == "image" else audio(source, max_bytes)


def _media(sources: list[Source] | None, kind: str, max_bytes: int) -> list[str] | None:
    """/v2/generate's images or audio list: each file as a data: URL (images) or base64 (audio)."""
    if sources is None:
        return None
    if isinstance(sources, (str, os.PathLike, bytes, bytearray, memoryview)):
        name = "images" if kind == "image" else "audio"
        raise TypeError(f"{name} must be a list of file paths or bytes, got one {type(sources).__name__}: "
                        f"write {name}=[...]")
    out = []
    for source in sources:
        data, mime = _read(source, kind, max_bytes)
        out.append(f"data:{mime};base64,{_b64(data)}" if kind == "image" else _b64(data))
    return out


# ---- requests --------------------------------------------------------------------------------------------------

def _body(fields: dict[str, Any], extra: dict[str, Any]) -> dict:
    """The JSON body: the given fields without the Nones (the server's defaults apply), then `extra` as given."""
    return {k: v for k, v in fields.items() if v is not None} | extra


def _messages(messages: str | list[dict], max_bytes: int) -> list[dict]:
    """The messages to send: a string is one user message; content lists get their parts made OpenAI's (_part)."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [{**m, "content": [_part(p, max_bytes) for p in m["content"]]}
            if isinstance(m, dict) and isinstance(m.get("content"), list) else m for m in messages]


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return APIError.from_body(response.status_code, body, response.text[:200] or response.reason_phrase)


class _Base:
    _transport: type  # httpx.Client or httpx.AsyncClient

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float | httpx.Timeout = 600.0, max_retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0, max_media_bytes: int = MAX_MEDIA_BYTES):
        """max_media_bytes: the largest image or audio file sent (bigger ones are refused before any request)."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_media_bytes < 1:
            raise ValueError(f"max_media_bytes must be >= 1, got {max_media_bytes}")
        self.max_media_bytes = max_media_bytes
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._http = self._transport(base_url=self.base_url, headers=self._headers, timeout=timeout)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Exponential backoff with full jitter; at least the server's Retry-After (in seconds) when it sends one."""
        delay = random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))
        try:
            after = float(response.headers.get("retry-after", "")) if response is not None else 0.0
        except ValueError:  # an HTTP date: not sent by seekmoe, fall back to the backoff
            after = 0.0
        return max(delay, min(after, self.max_backoff * 4))

    def _generate_body(self, fields: dict[str, Any], extra: dict[str, Any]) -> dict:
        """/v2/generate's body, its images and audio files read and encoded."""
        media = dict(images=_media(fields["images"], "image", self.max_media_bytes),
                     audio=_media(fields["audio"], "audio", self.max_media_bytes))
        return _body(fields | media, extra)

    def _chat_body(self, fields: dict[str, Any], extra: dict[str, Any]) -> dict:
        return _body(fields | {"messages": _messages(fields["messages"], self.max_media_bytes)}, extra)

    def _give_up(self, url: str, e: Exception, attempts: int) -> APIConnectionError:
        return APIConnectionError(None, f"could not reach {url}: {e} ({attempts} attempt{'s' * (attempts > 1)})")


class Client(_Base):
    """A blocking client; use it in a `with` block or call `close()`."""

    _transport = httpx.Client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, body: dict | None = None, stream: bool = False) -> httpx.Response:
        """The answer to a request, retried as the module says; an error status raises APIError."""
        request = self._http.build_request(method, path, json=body)
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = self._http.send(request, stream=stream)
            except RETRY_ERRORS as e:
                if attempt == self.max_retries:
                    raise self._give_up(str(request.url), e, attempt + 1) from e
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                if response.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    raise _error(response)
            time.sleep(self._delay(attempt, response))
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        return self._send(method, path, body).json()

    def _stream(self, path: str, body: dict) -> Iterator[Chunk]:
        response = self._send("POST", path, body | {"stream": True}, stream=True)
        try:
            for line in response.iter_lines():
                event = _event(line)
                if event is DONE:
                    return
                if event is not None:
                    yield from _chunks(event)
        except httpx.TransportError as e:
            raise _cut(path, e) from e
        finally:
            response.close()  # also when the caller stops early: the server cancels the generation
        raise _cut(path)

    def models(self) -> list[str]:
        return [m["id"] for m in self._json("GET", "/v1/models")["data"]]

    def generate(self, prompt: str, *, images: list[Source] | None = None, audio: list[Source] | None = None,
                 max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> Generation:
        """POST /v2/generate: continue `prompt` (no chat template); with images or audio (file paths or bytes), one
        user turn of the media then `prompt` as its question."""
        fields = dict(prompt=prompt, images=images, audio=audio, max_tokens=max_tokens, temperature=temperature,
                      top_p=top_p, stop=stop, seed=seed)
        return _generation(self._json("POST", "/v2/generate", self._generate_body(fields, extra)))

    def generate_stream(self, prompt: str, *, images: list[Source] | None = None, audio: list[Source] | None = None,
                        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                        stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> Iterator[Chunk]:
        fields = dict(prompt=prompt, images=images, audio=audio, max_tokens=max_tokens, temperature=temperature,
                      top_p=top_p, stop=stop, seed=seed)
        return self._stream("/v2/generate", self._generate_body(fields, extra))

    def completions(self, prompt: str | list[str] | list[int], *, model: str | None = None,
                    max_tokens: int | None = None, temperature: float | None = None, n: int | None = None,
                    **extra: Any) -> Completion:
        """POST /v1/completions."""
        fields = dict(prompt=prompt, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return _completion(self._json("POST", "/v1/completions", _body(fields, extra)))

    def completions_stream(self, prompt: str | list[str] | list[int], *, model: str | None = None,
                           max_tokens: int | None = None, temperature: float | None = None, n: int | None = None,
                           **extra: Any) -> Iterator[Chunk]:
        fields = dict(prompt=prompt, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return self._stream("/v1/completions", _body(fields, extra))

    def chat(self, messages: str | list[dict], *, model: str | None = None, max_tokens: int | None = None,
             temperature: float | None = None, n: int | None = None, **extra: Any) -> ChatCompletion:
        """POST /v1/chat/completions; a string is one user message."""
        fields = dict(messages=messages, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return _chat(self._json("POST", "/v1/chat/completions", self._chat_body(fields, extra)))

    def chat_stream(self, messages: str | list[dict], *, model: str | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, n: int | None = None, **extra: Any) -> Iterator[Chunk]:
        fields = dict(messages=messages, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return self._stream("/v1/chat/completions", self._chat_body(fields, extra))

    def speech(self, text: str, *, voice: str = "alloy", response_format: str = "wav", speed: float = 1.0,
               model: str | None = None, **extra: Any) -> bytes:
        """POST /v1/audio/speech: `text` spoken, as the bytes of a WAV file (or raw 16-bit PCM at 24 kHz)."""
        fields = dict(input=text, voice=voice, response_format=response_format, speed=speed, model=model)
        return self._send("POST", "/v1/audio/speech", _body(fields, extra)).content


class AsyncClient(_Base):
    """The same methods as Client, awaited; the `*_stream` methods are async iterators. Close with `aclose()`."""

    _transport = httpx.AsyncClient

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, body: dict | None = None, stream: bool = False) -> httpx.Response:
        request = self._http.build_request(method, path, json=body)
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = await self._http.send(request, stream=stream)
            except RETRY_ERRORS as e:
                if attempt == self.max_retries:
                    raise self._give_up(str(request.url), e, attempt + 1) from e
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                if response.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    raise _error(response)
            await asyncio.sleep(self._delay(attempt, response))
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        return (await self._send(method, path, body)).json()

    async def _stream(self, path: str, body: dict) -> AsyncIterator[Chunk]:
        response = await self._send("POST", path, body | {"stream": True}, stream=True)
        try:
            async for line in response.aiter_lines():
                event = _event(line)
                if event is DONE:
                    return
                if event is not None:
                    for chunk in _chunks(event):
                        yield chunk
        except httpx.TransportError as e:
            raise _cut(path, e) from e
        finally:
            await response.aclose()
        raise _cut(path)

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._json("GET", "/v1/models"))["data"]]

    async def generate(self, prompt: str, *, images: list[Source] | None = None, audio: list[Source] | None = None,
                       max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                       stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> Generation:
        fields = dict(prompt=prompt, images=images, audio=audio, max_tokens=max_tokens, temperature=temperature,
                      top_p=top_p, stop=stop, seed=seed)
        return _generation(await self._json("POST", "/v2/generate", self._generate_body(fields, extra)))

    def generate_stream(self, prompt: str, *, images: list[Source] | None = None, audio: list[Source] | None = None,
                        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                        stop: str | list[str] | None = None, seed: int | None = None,
                        **extra: Any) -> AsyncIterator[Chunk]:
        fields = dict(prompt=prompt, images=images, audio=audio, max_tokens=max_tokens, temperature=temperature,
                      top_p=top_p, stop=stop, seed=seed)
        return self._stream("/v2/generate", self._generate_body(fields, extra))

    async def completions(self, prompt: str | list[str] | list[int], *, model: str | None = None,
                          max_tokens: int | None = None, temperature: float | None = None, n: int | None = None,
                          **extra: Any) -> Completion:
        fields = dict(prompt=prompt, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return _completion(await self._json("POST", "/v1/completions", _body(fields, extra)))

    def completions_stream(self, prompt: str | list[str] | list[int], *, model: str | None = None,
                           max_tokens: int | None = None, temperature: float | None = None, n: int | None = None,
                           **extra: Any) -> AsyncIterator[Chunk]:
        fields = dict(prompt=prompt, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return self._stream("/v1/completions", _body(fields, extra))

    async def chat(self, messages: str | list[dict], *, model: str | None = None, max_tokens: int | None = None,
                   temperature: float | None = None, n: int | None = None, **extra: Any) -> ChatCompletion:
        fields = dict(messages=messages, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return _chat(await self._json("POST", "/v1/chat/completions", self._chat_body(fields, extra)))

    def chat_stream(self, messages: str | list[dict], *, model: str | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, n: int | None = None, **extra: Any) -> AsyncIterator[Chunk]:
        fields = dict(messages=messages, model=model, max_tokens=max_tokens, temperature=temperature, n=n)
        return self._stream("/v1/chat/completions", self._chat_body(fields, extra))

    async def speech(self, text: str, *, voice: str = "alloy", response_format: str = "wav", speed: float = 1.0,
                     model: str | None = None, **extra: Any) -> bytes:
        fields = dict(input=text, voice=voice, response_format=response_format, speed=speed, model=model)
        return (await self._send("POST", "/v1/audio/speech", _body(fields, extra))).content
