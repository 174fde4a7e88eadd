"""The server's edge for errors: the one place an exception becomes an HTTP status and OpenAI's error body.

Below the server, errors are SeekmoeErrors that say what is wrong, and nothing of HTTP (seekmoe/errors.py). ANSWERS
says how the server answers each class; http_error() applies it. The server's own refusals (a model it does not
serve, a missing key, a body over the limit...) are made by the functions below, named for what they mean. No
other module of the server writes a status code.
"""

from __future__ import annotations

from dataclasses import dataclass

from seekmoe.engine.engine import EngineError, QueueFull
from seekmoe.engine.sampling import SamplingError
from seekmoe.graph import GraphError, TermNotFound
from seekmoe.multimodal.media import MediaError, MediaTooLarge
from seekmoe.multimodal.speech import SpeechError, SpeechUnavailable
from seekmoe.text.chat import ChatError
from seekmoe.text.grammar import GrammarError
from seekmoe.text.summarize import SummaryError

CLIENT_CLOSED = 499  # nginx's "client closed request": the access log's status for a client that left
NO_ANSWER = 500  # what a request that ended before any answer was sent is logged as
DOCUMENTED = (400, 401, 404, 413, 429, 503)  # the statuses the OpenAPI schema lists for the API routes
RETRY_SOON = {"Retry-After": "1"}
CONTEXT_EXCEEDED = "context_length_exceeded"  # OpenAI's code for a request longer than the context


class HTTPError(Exception):
    """A request refused (4xx) or failed (5xx): its status, OpenAI's error fields and the headers to send."""

    def __init__(self, status: int, message: str, type: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers) if headers else None  # its own: a response may add to them

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Answer:
    """How the server answers one class of error."""

    status: int
    type: str = "invalid_request_error"
    code: str | None = None
    headers: dict[str, str] | None = None
    message: str = "{}"  # the error's own message goes in {}


# The entry of the nearest class in an error's MRO answers it.
ANSWERS: dict[type[Exception], Answer] = {
    # the request as sent is wrong
    SamplingError: Answer(400),
    EngineError: Answer(400),  # a prompt the engine can never run
    ChatError: Answer(400),
    MediaError: Answer(400),
    SummaryError: Answer(400),
    GrammarError: Answer(400),  # a JSON Schema or grammar that does not compile
    SpeechError: Answer(400),
    TermNotFound: Answer(404, code="term_not_found"),
    GraphError: Answer(400),
    ValueError: Answer(400),  # input the layers below refuse without a class of their own (unpaired media tokens)
    # it is over a limit
    MediaTooLarge: Answer(413),
    # it may work later
    QueueFull: Answer(429, "rate_limit_error", "queue_full", RETRY_SOON, "the server is busy: {}; retry shortly"),
    SpeechUnavailable: Answer(503, "service_unavailable", "speech_unavailable"),
}
# A request taken in and then failed (the engine stopped under it), or an error with no entry: the server's fault.
FAILED = Answer(500, "server_error")


def http_error(e: Exception, param: str | None = None, *, message: str | None = None,
               accepted: bool = False) -> HTTPError:
    """How the server answers `e`. param: the request field at fault; message: words of the server's own instead
    of e's; accepted: e came after the request was taken in, while it was being answered (a 500 whatever its
    class: nothing the client sent is to blame)."""
    answer = FAILED if accepted else next((ANSWERS[c] for c in type(e).__mro__ if c in ANSWERS), FAILED)
    text = answer.message.format(str(e) if message is None else message)
    return HTTPError(answer.status, text, answer.type, param, answer.code, answer.headers)


# ---- the server's own refusals --------------------------------------------------------------------------------

def invalid(message: str, param: str | None = None, code: str | None = None) -> HTTPError:
    """A request the server itself refuses as sent."""
    return HTTPError(400, message, "invalid_request_error", param, code)


def context_exceeded(context: int, field: str, prompt_tokens: int, completion_tokens: int,
                     param: str) -> HTTPError:
    """A prompt and completion the context cannot hold, in OpenAI's words: clients (litellm, LangChain...) match on
    "maximum context length" and the code to shorten the conversation and retry."""
    total = prompt_tokens + completion_tokens
    return invalid(f"This model's maximum context length is {context} tokens. However, you requested {total} tokens "
                   f"({prompt_tokens} in the {field}, {completion_tokens} in the completion). Please reduce the length "
                   f"of the {field} or completion.", param, CONTEXT_EXCEEDED)


def text_exceeds_context(context: int, field: str, chars: int, max_chars: int) -> HTTPError:
    """Text refused before it is tokenized: no token count to give, but the same opening words and code."""
    return invalid(f"This model's maximum context length is {context} tokens. However, you sent {chars} characters "
                   f"in the {field}, more than {context} tokens can hold (at most {max_chars}). Please reduce the "
                   f"length of the {field}.", field, CONTEXT_EXCEEDED)


def too_large(message: str, param: str | None = None, code: str | None = None) -> HTTPError:
    return HTTPError(413, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> HTTPError:
    return HTTPError(404, message, "invalid_request_error", param, code)


def loading(message: str) -> HTTPError:
    """The model is not ready (still loading, or failed to)."""
    return HTTPError(503, message, "service_unavailable", code="model_loading", headers=RETRY_SOON)


def unauthorized(message: str) -> HTTPError:
    return HTTPError(401, message, "authentication_error", code="invalid_api_key",
                     headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> HTTPError:
    """A key that is valid but may not read this path (an admin path without an admin key)."""
    return HTTPError(403, message, "permission_error", code="admin_key_required")


def routing(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPError:
    """The router's own answer (no such path, method not allowed), whose status the router chose."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return HTTPError(status, message, "invalid_request_error", None, code, headers)


def internal(e: Exception) -> HTTPError:
    """A bug: the client learns its type, the log its traceback."""
    return HTTPError(FAILED.status, f"internal error: {type(e).__name__}", FAILED.type)
