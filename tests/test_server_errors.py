"""The server's one error table (seekmoe/server/errors.py): each seekmoe error's status, and no status chosen
anywhere else in the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from seekmoe.engine.engine import EngineError, QueueFull
from seekmoe.engine.sampling import SamplingError
from seekmoe.multimodal.media import MediaError, MediaTooLarge
from seekmoe.multimodal.speech import SpeechError, SpeechUnavailable
from seekmoe.server import errors
from seekmoe.text.chat import ChatError
from seekmoe.text.summarize import SummaryCancelled, SummaryError

SERVER = Path(errors.__file__).parent


@pytest.mark.parametrize(("error", "status", "type_", "code"), [
    (SamplingError("top_p must be in (0, 1], got 0.0", "top_p"), 400, "invalid_request_error", None),
    (EngineError("prompt token 9 is not a token id"), 400, "invalid_request_error", None),
    (ChatError("messages must be a non-empty list"), 400, "invalid_request_error", None),
    (MediaError("the image is empty"), 400, "invalid_request_error", None),
    (MediaTooLarge("the image is 11 MB"), 413, "invalid_request_error", None),
    (SummaryError("max_length must be >= 1"), 400, "invalid_request_error", None),
    (SpeechError("unknown voice", "voice"), 400, "invalid_request_error", None),
    (QueueFull("the queue is full"), 429, "rate_limit_error", "queue_full"),
    (SpeechUnavailable("espeak-ng is not installed"), 503, "service_unavailable", "speech_unavailable"),
    (SummaryCancelled("cancelled"), 500, "server_error", None),  # not the client's fault
])
def test_each_error_gets_its_status(error, status, type_, code):
    e = errors.http_error(error, param="x")
    assert (e.status, e.type, e.code, e.param) == (status, type_, code, "x")


def test_the_answer_keeps_or_words_the_message():
    busy = errors.http_error(QueueFull("3 waiting"))
    assert busy.message == "the server is busy: 3 waiting; retry shortly" and busy.headers == {"Retry-After": "1"}
    assert errors.http_error(SamplingError("top_p must be..."), message="p must be...").message == "p must be..."
    stopped = errors.http_error(EngineError("the engine stopped: boom"), accepted=True)
    assert (stopped.status, stopped.type) == (500, "server_error")  # after the request was taken in: ours


def test_no_server_module_but_errors_makes_an_http_error():
    for path in sorted(SERVER.glob("*.py")):
        if path.name == "errors.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        made = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and (
            getattr(n.func, "id", None) == "HTTPError" or getattr(n.func, "attr", None) == "HTTPError")]
        assert made == [], f"{path.name} builds an HTTPError itself (lines {made}): use seekmoe/server/errors.py"
