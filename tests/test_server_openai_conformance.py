"""What OpenAI clients rely on beyond the bodies (issue 21): null for an optional field, any int64 seed, CORS for
browser pages, OpenAI's error types and context-length wording, and an x-request-id on every answer. A real server
on loopback with a tiny random model, driven by the openai package and plain HTTP."""

from __future__ import annotations

import json
import logging
import re
import time

import openai
import pytest
import requests
from starlette.testclient import TestClient

from seekmoe.cli.main import build_parser
from seekmoe.cli.serve import config_from_args
from seekmoe.errors import CLIError
from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server.app import create_app, request_id_of
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled tokenizer")

KEY = "sk-conformance"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "http://app.example:3000"
CONTEXT = 128
GENERATED = re.compile(r"[0-9a-f]{32}")  # a request id the server made
CONTEXT_MESSAGE = re.compile(r"This model's maximum context length is (\d+) tokens\. However, you requested (\d+) "
                             r"tokens \((\d+) in the (messages|prompt), (\d+) in the completion\)\. Please reduce the "
                             r"length of the \4 or completion\.")
USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tiny_model_folder(tmp_path_factory.mktemp("conformance"), max_position_embeddings=CONTEXT)
    config = ServeConfig(api_keys=(KEY,), allowed_origins=(ORIGIN,))
    with running_server(config, lambda: LLM(folder)) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def post(url: str, path: str, body: dict, headers: dict | None = None) -> requests.Response:
    return requests.post(url + path, headers=AUTH | (headers or {}), json=body, timeout=60)


def error_of(r: requests.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---- null is "not given" ---------------------------------------------------------------------------------------

def test_null_for_every_optional_chat_field_is_the_default(url):
    nulls = dict.fromkeys(("n", "logprobs", "top_logprobs", "stream", "stream_options", "top_p", "max_tokens",
                           "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "user",
                           "tools", "tool_choice", "parallel_tool_calls", "logit_bias", "tool_trace", "model"))
    base = {"messages": USER, "temperature": 0, "max_tokens": 6}
    plain = post(url, "/v1/chat/completions", base)
    r = post(url, "/v1/chat/completions", nulls | base)  # max_tokens given: the nulls are only the others
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    assert len(r.json()["choices"]) == 1 and r.json()["choices"][0]["logprobs"] is None
    r = post(url, "/v1/chat/completions", nulls | {"messages": USER, "temperature": None})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text  # stream null: not streamed


def test_null_inside_messages_tools_and_stream_options(url):
    messages = [{"role": "system", "content": None, "name": None},
                {"role": "user", "content": "Hi", "name": None, "tool_calls": None, "tool_call_id": None}]
    tool = {"type": None, "function": {"name": "get_weather", "description": None, "parameters": None,
                                       "strict": None}}
    r = post(url, "/v1/chat/completions", {"messages": messages, "tools": [tool], "tool_choice": None,
                                           "max_tokens": 4})
    assert r.status_code == 200, r.text
    body = {"messages": USER, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": None}}
    with requests.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, stream=True, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]
    assert r.status_code == 200 and chunks and all("usage" not in c for c in chunks)  # include_usage: false


def test_null_for_every_optional_completions_field_is_the_default(url):
    nulls = dict.fromkeys(("n", "logprobs", "echo", "stream", "stream_options", "top_p", "stop", "seed", "suffix",
                           "best_of", "logit_bias", "presence_penalty", "frequency_penalty", "user", "model"))
    base = {"prompt": "The sea", "temperature": 0, "max_tokens": 5}
    r = post(url, "/v1/completions", nulls | base)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == post(url, "/v1/completions", base).json()["choices"][0]["text"]
    r = post(url, "/v1/completions", nulls | {"prompt": "The sea", "max_tokens": None, "temperature": None})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 16, r.text  # the default max_tokens


def test_null_for_a_required_field_is_refused(url):
    for path, body, param in (("/v1/chat/completions", {"messages": None}, "messages"),
                              ("/v1/chat/completions", {"messages": [{"role": None, "content": "x"}]},
                               "messages[0].role"),
                              ("/v1/completions", {"prompt": None}, "prompt")):
        r = post(url, path, body)
        assert r.status_code == 400 and error_of(r)["param"] == param, r.text


def test_the_openai_client_sends_none_as_null(client):
    raw = client.chat.completions.with_raw_response.create(
        model=None, messages=USER, n=None, stop=None, seed=None, temperature=0, max_tokens=4, top_p=None,
        presence_penalty=None, frequency_penalty=None, logprobs=None, top_logprobs=None, user=None, tools=None,
        tool_choice=None, stream_options=None)
    sent = json.loads(raw.http_request.content)
    assert sent["n"] is None and sent["seed"] is None and sent["tools"] is None  # really null on the wire
    assert raw.parse().choices[0].finish_reason in ("stop", "length")
    c = client.completions.create(model=None, prompt="Hi", max_tokens=3, n=None, logprobs=None, echo=None,
                                  seed=None, stop=None, stream=None, user=None)
    assert len(c.choices) == 1


# ---- seed: any int64 -------------------------------------------------------------------------------------------

def test_any_int64_seed_is_repeatable(client):
    def text(seed: int) -> str:
        return client.chat.completions.create(model=None, messages=USER, max_tokens=8, temperature=1.0, seed=seed,
                                              extra_body={"ignore_eos": True}).choices[0].message.content

    for seed in (-1, -(2**63), 2**63 - 1, 0, 12345):
        assert text(seed) == text(seed), seed
    with pytest.raises(openai.BadRequestError) as e:
        text(2**64)
    assert e.value.param == "seed" and "int64" in e.value.body["message"]


@pytest.mark.parametrize("seed", [2**63, 2**64, -(2**63) - 1, 10**4000, 1.5, "1", True])
def test_a_seed_outside_int64_or_not_an_integer_is_400(url, seed):
    r = post(url, "/v1/completions", {"prompt": "x", "max_tokens": 1, "seed": seed})
    assert r.status_code == 400 and error_of(r)["param"] == "seed", r.text
    assert len(error_of(r)["message"]) < 200


# ---- errors as OpenAI words them -------------------------------------------------------------------------------

def test_a_wrong_key_is_an_authentication_error(url):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = requests.get(f"{url}/v1/models", headers=headers, timeout=30)
        assert r.status_code == 401 and error_of(r)["type"] == "authentication_error", r.text
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert e.value.type == "authentication_error" and e.value.code == "invalid_api_key"


def check_context_error(error: openai.BadRequestError, field: str, param: str, completion: int) -> None:
    assert (error.status_code, error.type, error.code, error.param) == (
        400, "invalid_request_error", "context_length_exceeded", param)
    m = CONTEXT_MESSAGE.fullmatch(error.body["message"])
    assert m, error.body["message"]
    context, total, prompt, words, wanted = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    assert context == CONTEXT and words == field and wanted == completion and total == prompt + wanted > context


def test_a_request_longer_than_the_context_is_worded_as_openai_does(client):
    long = [{"role": "user", "content": "word " * 150}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=None, messages=long, max_tokens=5)
    check_context_error(e.value, "messages", "messages", 5)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=None, messages=USER, max_completion_tokens=500)
    check_context_error(e.value, "messages", "max_completion_tokens", 500)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=None, prompt="Hi", max_tokens=1000)
    check_context_error(e.value, "prompt", "max_tokens", 1000)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=None, prompt="word " * 150)
    check_context_error(e.value, "prompt", "prompt", 1)  # the context must hold one new token at least


def test_text_too_long_to_tokenize_says_maximum_context_length(server, client):
    _, app = server
    chars = app.state.seekmoe.serving.max_prompt_chars + 1
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=None, messages=[{"role": "user", "content": "x" * chars}])
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    assert e.value.body["message"].startswith(f"This model's maximum context length is {CONTEXT} tokens. However, ")
    assert f"{chars} characters" in e.value.body["message"]


# ---- x-request-id ----------------------------------------------------------------------------------------------

def test_every_answer_has_a_request_id(server, monkeypatch):
    url, app = server
    answers = [requests.get(f"{url}/health", timeout=30), requests.get(f"{url}/v1/models", timeout=30),
               requests.get(f"{url}/no/such/path", headers=AUTH, timeout=30),
               post(url, "/v1/completions", {"prompt": "x", "max_tokens": 1}),
               post(url, "/v1/completions", {"prompt": "x", "max_tokens": "1"})]
    assert [r.status_code for r in answers] == [200, 401, 404, 200, 400]
    ids = [r.headers["x-request-id"] for r in answers]
    assert all(GENERATED.fullmatch(i) for i in ids) and len(set(ids)) == len(ids), ids
    with requests.post(f"{url}/v1/chat/completions", headers=AUTH, stream=True, timeout=60,
                       json={"messages": USER, "max_tokens": 2, "stream": True}) as r:
        assert r.status_code == 200 and GENERATED.fullmatch(r.headers["x-request-id"])

    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.seekmoe.serving, "models", broken)
    r = requests.get(f"{url}/v1/models", headers=AUTH | {"x-request-id": "trace-500"}, timeout=30)
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-500"


def test_a_sane_client_request_id_is_echoed(client, url):
    rid = "req_" + "A-z.0:9~" * 15  # 124 visible characters
    c = client.completions.create(model=None, prompt="x", max_tokens=1, extra_headers={"x-request-id": rid})
    assert c._request_id == rid  # the openai package reads it back
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=None, prompt="x", max_tokens=-1, extra_headers={"x-request-id": "bad-1"})
    assert e.value.request_id == "bad-1"
    stream = client.chat.completions.create(model=None, messages=USER, max_tokens=2, stream=True,
                                            extra_headers={"x-request-id": "stream-1"})
    assert stream.response.headers["x-request-id"] == "stream-1"
    stream.close()
    r = requests.get(f"{url}/v1/models", headers={"x-request-id": "no-key-1"}, timeout=30)
    assert r.status_code == 401 and r.headers["x-request-id"] == "no-key-1"
    assert requests.get(f"{url}/health", headers={"x-request-id": "x" * 128}, timeout=30).headers[
        "x-request-id"] == "x" * 128


@pytest.mark.parametrize("given", ["x" * 129, "y" * 10_000, "has space", "tab\there", "caf\xe9", 'say "hi"'])
def test_an_odd_client_request_id_is_replaced(url, given):
    r = requests.get(f"{url}/health", headers={"x-request-id": given.encode("latin-1")}, timeout=30)
    assert r.status_code == 200 and GENERATED.fullmatch(r.headers["x-request-id"]), r.headers


def test_control_characters_never_make_a_request_id():
    # the HTTP parser refuses most of these before the app sees them; the check does not rely on it
    for given in (b"a\x00b", b"a\x01b", b"a\nb", b"a\rb", b"a\x7fb", b"", b"\xff" * 4):
        assert GENERATED.fullmatch(request_id_of({"headers": [(b"x-request-id", given)]})), given
    assert request_id_of({"headers": [(b"x-request-id", b"ok-1"), (b"x-request-id", b"two")]}) == "ok-1"


def test_the_access_log_shows_the_request_id(url, caplog):
    with caplog.at_level(logging.INFO, logger="seekmoe.server"):
        post(url, "/v1/completions", {"prompt": "x", "max_tokens": 1}, {"x-request-id": "log-me-1"})
        deadline = time.monotonic() + 30  # the line is written when the answer ends, on the server's thread
        while not any("log-me-1" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.02)
    line = next(r.getMessage() for r in caplog.records if "log-me-1" in r.getMessage())
    assert '"POST /v1/completions" 200' in line and "request_id=log-me-1 " in line and " id=cmpl-" in line


# ---- CORS ------------------------------------------------------------------------------------------------------

def preflight(url: str, origin: str, path: str = "/v1/chat/completions") -> requests.Response:
    return requests.options(url + path, timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})


def test_a_browser_preflight_is_answered_without_a_key(url):
    r = preflight(url, ORIGIN)
    assert r.status_code in (200, 204), r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN and "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed and GENERATED.fullmatch(r.headers["x-request-id"])
    other = preflight(url, "http://evil.example")
    assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers


def test_allowed_origins_can_read_answers_and_errors(url):
    r = post(url, "/v1/completions", {"prompt": "x", "max_tokens": 1}, {"Origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = requests.get(f"{url}/v1/models", headers={"Origin": ORIGIN}, timeout=30)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN  # the page can tell why
    r = post(url, "/v1/completions", {"prompt": "x", "max_tokens": 1}, {"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_no_cors_unless_asked_and_star_allows_any():
    # these answers come from the middleware alone: the model is never loaded (no lifespan without `with`)
    def never():
        raise AssertionError("loaded")

    plain = TestClient(create_app(ServeConfig(api_keys=(KEY,)), never))
    r = plain.options("/v1/chat/completions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 401 and "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in plain.get("/health", headers={"Origin": ORIGIN}).headers
    star = TestClient(create_app(ServeConfig(api_keys=(KEY,), allowed_origins=("*",)), never))
    r = star.options("/v1/chat/completions", headers={"Origin": "https://any.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert r.status_code in (200, 204) and r.headers["access-control-allow-origin"] == "*"


def test_the_allowed_origins_flag():
    def config(*argv: str, env: dict[str, str] | None = None) -> ServeConfig:
        return config_from_args(build_parser().parse_args(["serve", *argv]), environ=env or {})

    assert config().allowed_origins == ()
    assert config("--allowed-origins", ORIGIN, "https://b.example", "--allowed-origins", ORIGIN).allowed_origins == (
        ORIGIN, "https://b.example")
    assert config("--allowed-origins", "*").allowed_origins == ("*",)
    assert config(env={"SEEKMOE_ALLOWED_ORIGINS": f"{ORIGIN}, *"}).allowed_origins == (ORIGIN, "*")
    for bad in ("http://a.example/", "a.example", "http://a.example/path", "http:// a"):
        with pytest.raises(CLIError, match="allowed origin"):
            config("--allowed-origins", bad)
