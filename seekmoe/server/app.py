"""The FastAPI app: thin routes over the Serving class, keys, CORS, a body limit, the access log and request ids,
errors in OpenAI's shape.

The app answers as soon as it listens: the model loads on a thread meanwhile, /health says 503 until it is ready
(as llama.cpp's server does) and the API answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekmoe import __version__
from seekmoe.llm import LLM
from seekmoe.multimodal.speech import FORMATS, SpeechError, speak
from seekmoe.server import errors
from seekmoe.server import schemas as s
from seekmoe.server.config import ServeConfig
from seekmoe.server.graph import GraphService
from seekmoe.server.metrics import Metrics
from seekmoe.server.serving import Serving, on_thread
from seekmoe.server.streams import RequestLog, Stream

log = logging.getLogger("seekmoe.server")

STATIC = Path(__file__).parent / "static"  # the chat page: plain files, no build step
PUBLIC = ("/health", "/", "/graph")  # the pages, and everything under /static/ (the API behind them needs a key)
ADMIN = ("/metrics", "/v2/expert_load")  # every tenant's activity: with admin keys set, only they may read these
SPEECH_WORKERS = 2  # espeak-ng runs at once; more requests wait their turn (each one's audio is bounded)
MODEL = "/v1/models/{model}"  # one metrics label for every model's path: the client chooses the name
ENDPOINTS = ("/", "/health", "/metrics", "/openapi.json", "/v1/models", MODEL, "/v1/completions",
             "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/audio/speech", "/v2/generate",
             "/v2/summarize", "/v2/expert_load", "/graph", "/v2/graph", "/v2/graph/neighbors", "/v2/graph/path",
             "/v2/graph/discover")
ERRORS = {status: {"model": s.ErrorResponse} for status in errors.DOCUMENTED}
REQUEST_ID = "x-request-id"  # on every answer: the client's own when it sent a sane one, else a new one
MAX_REQUEST_ID = 128


class State:
    """The app's model: None while it loads, then a Serving; `error` if loading failed."""

    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.serving: Serving | None = None
        self.error: str | None = None

    def load(self, load: Callable[[], LLM], on_fatal: Callable[[str], None] | None) -> None:
        try:
            llm = load()
            tools = {}
            if self.config.tools:
                from seekmoe.plugins import select

                tools = select(list(self.config.tools))
            serving = Serving(llm, self.config, self.metrics, tools)  # starts the tools' worker processes
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log.error("the model failed to load: %s", self.error)
            if on_fatal is not None:
                on_fatal(self.error)
            return
        self.metrics.llm = llm
        self.serving = serving
        log.info("ready: serving %s as %r, context %d tokens%s", llm.path, serving.model_name, llm.context_length,
                 f"; running tools {', '.join(tools)}" if tools else "")

    def ready(self) -> Serving:
        if self.serving is None:
            message = f"the model failed to load: {self.error}" if self.error else "the model is loading"
            raise errors.loading(message)
        return self.serving

    def close(self) -> None:
        if self.serving is not None:
            self.serving.close()


def create_app(config: ServeConfig, load: Callable[[], LLM], on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The app; `load` builds the LLM (on a thread, after the server starts listening)."""
    metrics = Metrics()
    state = State(config, metrics)
    graph = GraphService(config.graph) if config.graph else None  # GraphError here: a bad file stops the start
    speakers = ThreadPoolExecutor(SPEECH_WORKERS, thread_name_prefix="seekmoe-speech")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(load, on_fatal), name="seekmoe-load", daemon=True).start()
        yield
        state.close()
        speakers.shutdown(wait=False, cancel_futures=True)
        if graph is not None:
            graph.close()

    app = FastAPI(title="seekmoe", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.seekmoe = state

    @app.get("/health", responses=ERRORS)
    async def health() -> dict:
        state.ready()
        return {"status": "ok"}

    @app.get("/", response_class=FileResponse, responses={200: {"content": {"text/html": {}}}})
    async def index() -> FileResponse:
        """The chat page (its script and style are under /static/)."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/v1/models", response_model=s.ModelList, responses=ERRORS)
    async def models() -> s.ModelList:
        return state.ready().models()

    @app.get("/v1/models/{model:path}", response_model=s.ModelCard, responses=ERRORS)
    async def model(model: str) -> s.ModelCard:
        """One served model, by any of its names (they may hold slashes: org/name)."""
        return state.ready().model(model)

    @app.get("/v2/expert_load", response_model=s.ExpertLoad, responses=ERRORS)
    async def expert_load() -> s.ExpertLoad:
        """Tokens routed to each expert of each MoE layer since the server started (the chat page's heatmap)."""
        return state.ready().expert_load()

    @app.post("/v2/generate", response_model=s.GenerateResponse, responses=ERRORS)
    async def generate(body: s.GenerateRequest, request: Request):
        return await respond(request, state.ready().generate(body, request_log(request)))

    @app.post("/v2/summarize", response_model=s.SummarizeResponse, responses=ERRORS)
    async def summarize(body: s.SummarizeRequest, request: Request):
        return await respond(request, state.ready().summarize(body))

    @app.post("/v1/completions", response_model=s.CompletionResponse, responses=ERRORS)
    async def completions(body: s.CompletionRequest, request: Request):
        return await respond(request, state.ready().completion(body, request_log(request)))

    @app.post("/v1/chat/completions", response_model=s.ChatCompletionResponse, responses=ERRORS)
    async def chat_completions(body: s.ChatCompletionRequest, request: Request):
        return await respond(request, state.ready().chat(body, request_log(request)))

    @app.post("/v1/responses", response_model=s.ResponseObject, responses=ERRORS)
    async def responses(body: s.ResponsesRequest, request: Request):
        """OpenAI's Responses API, stateless, over the chat path."""
        return await respond(request, state.ready().responses(body, request_log(request)))

    @app.post("/v1/embeddings", response_model=s.EmbeddingResponse, responses=ERRORS)
    async def embeddings(body: s.EmbeddingRequest, request: Request):
        return await respond(request, state.ready().embeddings(body))

    @app.post("/v1/audio/speech", response_class=Response,
              responses={200: {"content": {t: {} for t in FORMATS.values()}}, **ERRORS})
    async def audio_speech(body: s.SpeechRequest, request: Request) -> Response:
        """Text to speech by espeak-ng; needs no model (answers while it loads). espeak-ng missing or failing: 503
        (SpeechUnavailable)."""
        async def work() -> Response:
            try:  # on a thread of its own pool: espeak-ng takes seconds for a long text, and never starves the others
                audio, media_type = await on_thread(speakers, lambda cancelled: speak(
                    body.input, body.voice, body.speed, body.response_format, cancelled=cancelled))
            except SpeechError as e:
                raise errors.http_error(e, param=e.param) from e
            return Response(audio, media_type=media_type)

        return await until_disconnect(request, work())

    # ---- the knowledge graph: no model needed, so these answer while it loads ----------------------------------

    def knowledge() -> GraphService:
        if graph is None:
            raise errors.not_found("this server has no knowledge graph: start it with seekmoe serve --graph GRAPH",
                                   code="no_graph")
        return graph

    @app.get("/graph", response_class=FileResponse, responses={200: {"content": {"text/html": {}}}})
    async def graph_page() -> FileResponse:
        """The graph page: a term's neighbourhood and a discovery, drawn."""
        return FileResponse(STATIC / "graph.html", headers={"Cache-Control": "no-cache"})

    @app.get("/v2/graph", response_model=s.GraphInfo, responses=ERRORS)
    async def graph_info() -> s.GraphInfo:
        return await knowledge().info()

    @app.get("/v2/graph/neighbors", response_model=s.GraphNeighbors, response_model_by_alias=True,
             responses=ERRORS)
    async def graph_neighbors(term: str = Query(min_length=1, max_length=200), limit: int = Query(20, ge=1, le=200),
                              min_count: int = Query(1, ge=1), evidence: int = Query(2, ge=0, le=20)):
        """The terms most strongly related to `term`, each with the sentences that relate them."""
        return await knowledge().neighbors(term, limit, min_count, evidence)

    @app.get("/v2/graph/path", response_model=s.GraphPath, response_model_by_alias=True, responses=ERRORS)
    async def graph_path(source: str = Query(min_length=1, max_length=200),
                         target: str = Query(min_length=1, max_length=200), max_hops: int = Query(4, ge=1, le=8),
                         min_count: int = Query(1, ge=1)):
        """The strongest short chain of related terms from source to target (data is empty when there is none)."""
        return await knowledge().path(source, target, max_hops, min_count)

    @app.get("/v2/graph/discover", response_model=s.GraphDiscover, response_model_by_alias=True, responses=ERRORS)
    async def graph_discover(term: str = Query(min_length=1, max_length=200), limit: int = Query(10, ge=1, le=100),
                             min_count: int = Query(1, ge=1), evidence: int = Query(2, ge=0, le=20)):
        """Open discovery (Swanson's ABC): terms never mentioned together with `term`, ranked by the terms linking
        them to it, with the sentences behind each link."""
        return await knowledge().discover(term, limit, min_count, evidence)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_exception_handler(errors.HTTPError, error_response)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, routing_error)
    app.add_exception_handler(Exception, internal_error)
    # the last added runs first: the access log sees every answer, keys are checked before the body is read
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Keys, keys=config.api_keys, admin_keys=config.admin_keys)
    if config.allowed_origins:  # outside Keys: a browser's preflight carries no key, and a 401 must be readable
        # Any request header: openai-node also sends X-Stainless-*; with no cookies allowed, a header grants
        # nothing, the API key does.
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=[REQUEST_ID, "Retry-After"])
    app.add_middleware(AccessLog, metrics=metrics, log_prompts=config.log_prompts)
    return app


def request_log(request: Request) -> RequestLog:
    record = request.scope["state"]["log"]  # put there by AccessLog
    record.key = request.scope["state"].get("key")  # by Keys, when keys are set
    return record


async def respond(request: Request, work: Awaitable):
    """The serving class's answer: a body, or a stream of server-sent events."""
    result = await until_disconnect(request, work)
    if isinstance(result, Stream):
        # the background task runs when the stream ends, also when starlette ends it for a disconnect
        return StreamingResponse(result.chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(result.cancel))
    return result


async def until_disconnect(request: Request, work: Awaitable):
    """Await `work`, cancelling it (its generation with it) if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            return Response(status_code=errors.CLIENT_CLOSED)  # nobody reads it: the access log's status
        raise
    finally:
        watcher.cancel()


# ---- errors in OpenAI's shape ------------------------------------------------------------------------------------

def error_response(request: Request, e: errors.HTTPError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """The first problem, naming its field: 'max_tokens: Input should be a valid integer'."""
    err = e.errors()[0]
    loc = [part for part in err.get("loc", ()) if part != "body"]
    if err.get("type") == "json_invalid":
        message, param = f"the body is not valid JSON: {err.get('ctx', {}).get('error', 'decode error')}", None
    elif not loc or err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        sent_json = not isinstance(err.get("input"), bytes)  # bytes: FastAPI did not read it as JSON
        message = "the body must be a JSON object" + ("" if sent_json else ", sent as Content-Type: application/json")
        param = None
    else:
        # drop pydantic's union member tags ("str", "list[int]"): the client wrote a field path, not a type
        path = [p for p in loc if isinstance(p, int) or ("[" not in p and p not in ("str", "int", "float", "bool"))]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or str(loc[0])
        message = f"{param}: {err.get('msg', 'invalid value')}"
        if len(path) < len(loc):  # a union: no one member's complaint is the answer
            message = f"{param}: {_json_type(err.get('input'))} is not one of the accepted types"
    return error_response(request, errors.invalid(message, param))


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def routing_error(request: Request, e: HTTPException) -> JSONResponse:
    message = f"{request.method} {request.url.path}: {e.detail}"
    return error_response(request, errors.routing(e.status_code, message, getattr(e, "headers", None)))


def internal_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    response = error_response(request, errors.internal(e))
    # starlette answers this outside every middleware, so the access log could not add the request's id
    response.headers[REQUEST_ID] = request.scope["state"].get("request_id") or uuid.uuid4().hex
    return response


async def send_error(send: Send, e: errors.HTTPError) -> None:
    """Answer with e from plain ASGI middleware (no exception handlers there)."""
    data = JSONResponse(e.body()).body
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()]
    await send({"type": "http.response.start", "status": e.status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


# ---- middleware (plain ASGI: they also see streamed answers to their end) ---------------------------------------

class Keys:
    """Every path outside PUBLIC needs `Authorization: Bearer <key>`, compared in constant time; with admin keys set,
    the ADMIN paths need one of those. The request's state gets which key it was ("2", "admin-1"), never the key."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], admin_keys: tuple[str, ...] = ()):
        self.app = app
        self.keys = [(str(i + 1), k.encode()) for i, k in enumerate(keys)]
        self.keys += [(f"admin-{i + 1}", k.encode()) for i, k in enumerate(admin_keys)]
        self.admin, self.open = bool(admin_keys), not keys  # open: no API keys, only the ADMIN paths need a key

    def key_of(self, scope: Scope) -> str | None:
        """The name of the key the request sent, or None."""
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        found = None
        for name, key in self.keys:  # every key compared, so the time says nothing of which one nearly matched
            if hmac.compare_digest(given.strip(), key):
                found = name
        return found if scheme.lower() == b"bearer" else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or not self.keys or path in PUBLIC or path.startswith("/static/")
                or (self.open and path not in ADMIN)):
            return await self.app(scope, receive, send)
        key = self.key_of(scope)
        if key is None:
            return await send_error(send, errors.unauthorized(
                "missing or wrong API key: send the header Authorization: Bearer <key>"))
        if self.admin and path in ADMIN and not key.startswith("admin-"):
            return await send_error(send, errors.forbidden(
                f"{path} shows every user's activity: it needs an admin key (seekmoe serve --admin-key)"))
        scope.setdefault("state", {})["key"] = key
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over the limit, by its Content-Length or, when streamed in chunks, as it arrives."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = errors.too_large(f"the request body is larger than the limit of {self.limit} bytes",
                                 code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit():
            return await send_error(send, errors.invalid("Content-Length must be a number"))
        if int(length) > self.limit:
            return await send_error(send, error)
        seen, answered = 0, False

        async def limited_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                if not answered:
                    answered = True
                    await send_error(send, error)
                raise BodyTooLarge  # whatever the app answers to this is dropped below
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        with suppress(BodyTooLarge):  # FastAPI makes it a 400 while reading the body; either way it is dropped
            await self.app(scope, limited_receive, guarded_send)


class AccessLog:
    """One line per request when its answer ends (a stream's too); counts requests by endpoint and status; gives
    every answer the request's id (x-request-id), which its line shows."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_prompts: bool):
        self.app, self.metrics, self.log_prompts = app, metrics, log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, record = time.perf_counter(), [errors.NO_ANSWER], RequestLog()
        scope.setdefault("state", {})["log"] = record
        request_id = scope["state"]["request_id"] = request_id_of(scope)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [*message.get("headers", ()), (REQUEST_ID.encode(), request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status[0] = errors.CLIENT_CLOSED if status[0] == errors.NO_ANSWER else status[0]
            raise
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else MODEL if path.startswith("/v1/models/") else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            client = scope.get("client") or ("-", 0)
            # the path is the client's text, URL-decoded: escaped, so "%0a" cannot start a forged log line
            line = (f'{client[0]} "{printable(scope["method"])} {printable(path)}" {status[0]} '
                    f'{time.perf_counter() - start:.3f}s request_id={printable(request_id)}')
            key = scope["state"].get("key")  # put there by Keys
            if key is not None:
                line += f" key={key}"
            if record.id is not None:
                line += (f" id={record.id} prompt_tokens={record.prompt_tokens} completion_tokens="
                         f"{record.completion_tokens} finish={record.finish_reason}")
            if record.prompt is not None:
                line += f" prompt={record.prompt!r}"
            log.info(line)


def request_id_of(scope: Scope) -> str:
    """The client's x-request-id if it is visible ASCII (no spaces: one field of a log line) of at most
    MAX_REQUEST_ID characters, so it is safe to send back and to log; else a new one."""
    given = next((v for k, v in scope["headers"] if k == REQUEST_ID.encode()), b"")
    if 0 < len(given) <= MAX_REQUEST_ID and all(0x21 <= c <= 0x7E for c in given):
        return given.decode("ascii")
    return uuid.uuid4().hex


def printable(text: str) -> str:
    """text with control characters, quotes, backslashes and non-ASCII escaped as in JSON: one log line, one field."""
    return json.dumps(text)[1:-1]


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    """Run `app` under uvicorn on a daemon thread (tests, benchmarks); returns (server, thread, its URL).
    Stop it with `server.should_exit = True; thread.join()`."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="seekmoe-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://{host}:{bound}"
