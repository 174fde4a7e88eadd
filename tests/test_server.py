"""The HTTP server, black-box: a real uvicorn server on loopback, driven by requests, httpx and the openai package."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import openai
import pytest
import requests

from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled model")
MODEL_NAME = DEFAULT_MODEL.name  # what the server calls the bundled model

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    """The bundled model, as `seekmoe serve` runs it, with one API key."""
    config = ServeConfig(api_keys=(KEY,))
    with running_server(config, lambda: LLM()) as (url, app):
        yield url, app.state.seekmoe.serving.llm.engine


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def small():
    """Tight limits, no key: one sequence at a time, one waiting, 2 KB bodies, prompts logged."""
    config = ServeConfig(max_num_seqs=1, max_queue=1, max_body_bytes=2048, log_prompts=True, served_model_name="small")
    with running_server(config, lambda: LLM(max_num_seqs=1, max_waiting=1)) as (url, _):
        yield url


def sync_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---- the native API and keys -------------------------------------------------------------------------------------

def test_the_documented_client_code_works_unchanged(url):
    answer = requests.post(f"{url}/v2/generate", headers={"Authorization": f"Bearer {KEY}"},
                           json={"prompt": "Call me Ishmael.", "max_tokens": 200, "temperature": 0.7}).json()
    assert isinstance(answer["generated_text"], str)
    assert answer["finish_reason"] in ("stop", "length")
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]


def test_native_stream_and_seed(url):
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0.9, "seed": 3, "ignore_eos": True}
    full = requests.post(f"{url}/v2/generate", headers=AUTH, json=body).json()
    events = []
    with requests.post(f"{url}/v2/generate", headers=AUTH, json=body | {"stream": True}, stream=True) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == full["generated_text"] == chunks[-1]["generated_text"]
    assert chunks[-1]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 12


def test_keys_guard_everything_but_health_and_the_page(url):
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v2/generate"),
                         ("POST", "/v1/chat/completions"), ("GET", "/openapi.json"), ("GET", "/no/such/path")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = requests.request(method, url + path, headers=headers, data=b"{not json")
            assert r.status_code == 401, (path, headers)
            assert error_of(r)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert requests.get(f"{url}/health").json() == {"status": "ok"}
    assert "seekmoe" in requests.get(f"{url}/").text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


# ---- OpenAI's API through the openai package -------------------------------------------------------------------

def test_openai_models_and_completions(url):
    client = sync_client(url)
    (model,) = client.models.list().data
    assert model.id == MODEL_NAME and model.object == "model"
    c = client.completions.create(model=model.id, prompt="The sea was", max_tokens=8, temperature=0, seed=1,
                                  logprobs=2, extra_body={"ignore_eos": True})
    assert c.id.startswith("cmpl-") and c.object == "text_completion" and abs(c.created - time.time()) < 60
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 8
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert all(len(top) >= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    batch = client.completions.create(model=model.id, prompt=["A", "B"], n=2, max_tokens=3, temperature=1,
                                      extra_body={"ignore_eos": True})
    assert sorted(ch.index for ch in batch.choices) == [0, 1, 2, 3] and batch.usage.completion_tokens == 12


def test_openai_chat_n_stop_seed_logprobs(url):
    client = sync_client(url)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Tell me a story."}]
    kw = dict(model=MODEL_NAME, messages=messages, temperature=1.0, seed=11, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(max_completion_tokens=10, n=2, logprobs=True, top_logprobs=3, **kw)
    b = client.chat.completions.create(max_tokens=10, n=2, **kw)
    assert a.id.startswith("chatcmpl-") and a.object == "chat.completion" and a.usage.completion_tokens == 20
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert all(c.message.role == "assistant" and c.finish_reason == "length" for c in a.choices)
    content = a.choices[0].logprobs.content
    assert len(content) == 10 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    stop = a.choices[0].message.content[2:5]
    if stop.strip():
        c = client.chat.completions.create(max_tokens=10, stop=[stop], **kw)
        assert stop not in c.choices[0].message.content and c.choices[0].finish_reason == "stop"


def test_openai_streaming_matches_and_reports_usage(url):
    client = sync_client(url)
    kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Write about the sea."}], max_tokens=16,
              temperature=0.8, seed=5, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert len({c.id for c in chunks}) == 1 and all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL_NAME, prompt="The sea", max_tokens=6, temperature=0, stream=True))
    assert text == client.completions.create(model=MODEL_NAME, prompt="The sea", max_tokens=6,
                                             temperature=0).choices[0].text


def test_openai_async_clients_run_together(url):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        async def one(i):
            stream = await client.chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=8,
                stream=True, extra_body={"ignore_eos": True})
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        plain = await client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=4)
        return plain, await asyncio.gather(*(one(i) for i in range(6)))

    plain, texts = asyncio.run(main())
    assert plain.usage.completion_tokens <= 4 and len(texts) == 6 and all(texts)


# ---- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body, status, param, needles", [
    ("/v2/generate", b'{"prompt": "x", ', 400, None, ["JSON"]),
    ("/v2/generate", b'["prompt"]', 400, None, ["JSON object"]),
    ("/v2/generate", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", ["integer"]),
    ("/v2/generate", {"prompt": 5}, 400, "prompt", ["prompt"]),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature", []),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", []),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", ["user"]),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", []),
    ("/v2/generate", {"prompt": "word " * 1500}, 400, "prompt", ["context length is 1024 tokens", "in the prompt"]),
    ("/v2/generate", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", [">= 1"]),
    ("/v2/generate", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens", []),
    ("/v2/generate", {"prompt": "x", "max_tokens": 5000}, 400, "max_tokens", ["5000", "1024"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5000}, 400,
     "max_completion_tokens", ["5000"]),
    ("/v2/generate", {"prompt": "x", "temperature": 2.5}, 400, "temperature", ["[0, 2]"]),
    ("/v2/generate", {"prompt": "x", "temperature": -0.1}, 400, "temperature", ["[0, 2]"]),
    ("/v1/completions", {"prompt": "x", "n": 99}, 400, "n", []),
    ("/v1/completions", {"prompt": [5, 99999]}, 400, "prompt", ["99999"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 50,
                              "logprobs": True}, 400, "top_logprobs", []),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model", ["gpt-4"]),
    ("/v2/generate", {"prompt": "x" * (16 << 20)}, 413, None, ["limit"]),
])
def test_bad_requests_get_openai_errors(url, path, body, status, param, needles):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(url + path, headers=AUTH | {"Content-Type": "application/json"}, data=data)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["param"] == param, err
    for needle in needles:
        assert needle in err["message"], err


def read_events(response, count: int):
    """Read `count` SSE data lines of a streamed response; returns the iterator, which must stay alive (when it is
    collected, httpx closes the connection: a disconnect)."""
    lines = (line for line in response.iter_lines() if line.startswith("data: "))
    for _ in range(count):
        next(lines)
    return lines


def test_queue_full_is_429_with_retry_after(small):
    client = sync_client(small)
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as first, httpx.Client(timeout=30) as second, \
            first.stream("POST", f"{small}/v1/chat/completions", json=body) as running:
        events = read_events(running, 3)  # tokens come: it holds the one place in the batch
        with second.stream("POST", f"{small}/v1/chat/completions", json=body) as waiting:
            assert waiting.status_code == 200  # it holds the one place in the queue
            r = requests.post(f"{small}/v2/generate", json={"prompt": "x", "max_tokens": 2})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert error_of(r)["code"] == "queue_full" and "queue" in error_of(r)["message"]
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model="small", prompt="x", max_tokens=2)
            assert next(events)  # the first one still streams


# ---- disconnects and other clients ------------------------------------------------------------------------------

def wait_idle(engine, seconds: float) -> float:
    start = time.monotonic()
    while engine.running or engine.waiting or engine.cache.free_blocks != engine.cache.num_blocks:
        assert time.monotonic() - start < seconds, (len(engine.running), engine.cache.free_blocks)
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_client_that_disconnects_mid_stream_frees_its_sequence(server, monkeypatch):
    url, engine = server
    # what the engine's cancels ended while it still ran: nothing, were the 900 tokens run to the end (3 s alone,
    # longer on a busy machine; a clock would confuse the two there)
    ended, cancel = [], engine.cancel

    def recording_cancel(*args, **kwargs):
        events = cancel(*args, **kwargs)
        ended.extend(events)
        return events

    monkeypatch.setattr(engine, "cancel", recording_cancel)
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 900, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=30, headers=AUTH) as client, \
            client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        events = read_events(r, 4)
        assert engine.running and next(events)  # generating while we read
    wait_idle(engine, 60)
    assert [e.finish_reason for e in ended] == ["cancelled"]  # the connection closed: cancelled and freed
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.5, headers=AUTH) as client:  # not streamed
        client.post(f"{url}/v2/generate", json={"prompt": "x", "max_tokens": 900, "ignore_eos": True})
    wait_idle(engine, 60)
    assert [e.finish_reason for e in ended] == ["cancelled"] * 2


def test_bad_clients_do_not_disturb_a_stream(url):
    body = {"prompt": "The", "max_tokens": 150, "temperature": 0, "ignore_eos": True, "stream": True}
    result = {}

    def stream():
        with requests.post(f"{url}/v2/generate", headers=AUTH, json=body, stream=True) as r:
            events = [line for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
        result["last"] = json.loads(events[-2][6:])

    t = threading.Thread(target=stream)
    t.start()
    host, port = url.removeprefix("http://").split(":")
    garbage = [b"POST /v2/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"prompt\":",  # then hang up
               b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 20, b"GET / HTTP/1.1\r\nHost: " + b"x" * 100_000,
               b"POST /v2/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
               b"\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"prompt\":\xff\xfe}"]
    for data in garbage:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(data)
    for data in (b"\xff\xfe\x00", b'{"prompt": "\\ud800", "max_tokens": 2}', b'{"prompt": "x", "seed": -1}',
                 b'{"prompt": "x", "stop": [""]}', b'{"prompt": "x", "top_p": NaN}', b"null", b""):
        r = requests.post(f"{url}/v2/generate", headers=AUTH | {"Content-Type": "application/json"}, data=data)
        assert r.status_code in (200, 400), (data, r.status_code, r.text)
    t.join(timeout=60)
    assert result["last"]["finish_reason"] == "length" and result["last"]["usage"]["completion_tokens"] == 150
    assert requests.get(f"{url}/health").status_code == 200


# ---- health, metrics, logs -------------------------------------------------------------------------------------

def test_health_is_503_until_the_model_has_loaded(tmp_path):
    folder = tiny_model_folder(tmp_path)
    release = threading.Event()

    def load():
        release.wait(30)
        return LLM(folder)

    with running_server(ServeConfig(), load, wait=False) as (url, _):
        r = requests.get(f"{url}/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and error_of(r)["code"] == "model_loading"
        assert requests.post(f"{url}/v2/generate", json={"prompt": "x"}).status_code == 503
        release.set()
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert requests.post(f"{url}/v2/generate", json={"prompt": "x", "max_tokens": 2}).status_code == 200

    def broken():
        raise OSError("no weights here")

    with running_server(ServeConfig(), broken, wait=False) as (url, _):
        deadline = time.monotonic() + 60  # the loader fails at once; a busy machine may run its thread late
        while "no weights here" not in error_of(r := requests.get(f"{url}/health"))["message"]:
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.02)
        assert r.status_code == 503


def test_metrics(url):
    requests.post(f"{url}/v2/generate", headers=AUTH, json={"prompt": "Hello", "max_tokens": 5})
    requests.get(f"{url}/v1/models")
    text = requests.get(f"{url}/metrics", headers=AUTH).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['seekmoe_requests_total{endpoint="/v2/generate",status="200"}'] >= 1
    assert samples['seekmoe_requests_total{endpoint="/v1/models",status="401"}'] >= 1
    assert samples["seekmoe_prompt_tokens_total"] > 0 and samples["seekmoe_generation_tokens_total"] > 0
    assert samples["seekmoe_time_to_first_token_seconds_count"] > 0
    assert samples["seekmoe_inter_token_latency_seconds_count"] > 0
    assert samples["seekmoe_queue_depth"] == 0 and "seekmoe_running_sequences" in samples
    layers = {name.split('layer="')[1].split('"')[0] for name in samples if name.startswith("seekmoe_expert_tokens")}
    assert layers == {"1", "2", "3", "4", "5"}  # the bundled model: layer 0 dense, 5 MoE layers of 16 experts
    assert samples['seekmoe_expert_tokens_total{expert="0",layer="1"}'] >= 0


def test_access_log_keeps_prompts_out_unless_asked(url, small, caplog):
    with caplog.at_level("INFO", logger="seekmoe.server"):
        requests.post(f"{url}/v2/generate", headers=AUTH, json={"prompt": "SECRET-ONE", "max_tokens": 2})
        requests.post(f"{small}/v2/generate", json={"prompt": "SECRET-TWO", "max_tokens": 2})
        deadline = time.monotonic() + 60  # each line is written when its answer ends, on the server's thread
        while sum("/v2/generate" in r.getMessage() for r in caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if "/v2/generate" in r.getMessage()]
    assert len(lines) == 2 and all("200" in line and "completion_tokens=" in line for line in lines)
    assert not any("SECRET-ONE" in line for line in lines) and any("SECRET-TWO" in line for line in lines)
