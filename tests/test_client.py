"""The Python SDK (seekmoe.Client, AsyncClient) against a real server on a tiny model; and the OpenAPI schema."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import ExitStack

import httpx
import pytest
import requests

from seekmoe import APIError, AsyncClient, Client
from seekmoe.client import APIConnectionError, ChatCompletion, Chunk, Generation
from seekmoe.llm import LLM
from seekmoe.server.app import ENDPOINTS
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

KEY = "sk-client"
SAME = dict(max_tokens=8, temperature=0.9, seed=4, ignore_eos=True)  # the same text, streamed or not


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("client"), max_position_embeddings=128)


@pytest.fixture(scope="module")
def url(folder):
    with running_server(ServeConfig(api_keys=(KEY,), served_model_name="tiny"), lambda: LLM(folder)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def small(folder):
    """One sequence at a time, one waiting: the third request gets 429."""
    config = ServeConfig(max_num_seqs=1, max_queue=1)
    with running_server(config, lambda: LLM(folder, max_num_seqs=1, max_waiting=1)) as (url, _):
        yield url


def test_sync_generate_chat_completions_and_their_streams(url):
    with Client(url, api_key=KEY) as client:
        assert client.models() == ["tiny"]
        g = client.generate("The sea", **SAME)
        assert isinstance(g, Generation) and g.finish_reason == "length" and g.usage.completion_tokens == 8
        chunks = list(client.generate_stream("The sea", **SAME))
        assert all(isinstance(c, Chunk) for c in chunks) and "".join(c.text for c in chunks) == g.text
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.total_tokens == g.usage.total_tokens

        chat = client.chat([{"role": "user", "content": "Hello"}], **SAME)
        assert isinstance(chat, ChatCompletion) and chat.model == "tiny" and chat.id.startswith("chatcmpl-")
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 8
        chunks = list(client.chat_stream("Hello", stream_options={"include_usage": True}, **SAME))
        assert "".join(c.text for c in chunks) == chat.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == 8 and chunks[-2].finish_reason == "length"

        c = client.completions("The sea", n=2, **SAME)
        assert [ch.index for ch in c.choices] == [0, 1] and c.usage.completion_tokens == 16
        streamed = {0: "", 1: ""}
        for chunk in client.completions_stream("The sea", n=2, **SAME):
            streamed[chunk.index] += chunk.text
        assert streamed == {ch.index: ch.text for ch in c.choices}


def test_async_client_runs_requests_together(url):
    async def main():
        async with AsyncClient(url, api_key=KEY) as client:
            async def streamed(i):
                return "".join([c.text async for c in client.chat_stream(f"Story {i}", **SAME)])

            results = await asyncio.gather(client.generate("The sea", **SAME), client.chat("Hello", **SAME),
                                           client.completions("The sea", **SAME), *(streamed(i) for i in range(3)),
                                           client.models())
            generated = "".join([c.text async for c in client.generate_stream("The sea", **SAME)])
            completed = "".join([c.text async for c in client.completions_stream("The sea", **SAME)])
            return results, generated, completed

    (g, chat, c, *texts, models), generated, completed = asyncio.run(main())
    assert models == ["tiny"] and g.text == generated and c.choices[0].text == completed
    assert all(texts) and chat.choices[0].message.content


def test_errors_carry_the_server_message_and_are_not_retried(url):
    with Client(url, api_key=KEY, backoff=30) as client:  # a retry would wait for seconds (up to 30)
        start = time.monotonic()
        with pytest.raises(APIError) as e:
            client.generate("x", temperature=5)
        assert e.value.status == 400 and e.value.param == "temperature" and "[0, 2]" in e.value.message
        assert e.value.type == "invalid_request_error" and "temperature" in str(e.value)
        with pytest.raises(APIError) as e:
            client.chat("x", model="gpt-4")
        assert e.value.status == 404 and e.value.param == "model" and "gpt-4" in e.value.message
        assert time.monotonic() - start < 20  # two refusals take milliseconds, more on a busy machine
    with Client(url, api_key="wrong") as client, pytest.raises(APIError) as e:
        client.generate("x")
    assert e.value.status == 401 and e.value.code == "invalid_api_key"

    async def unauthenticated():
        async with AsyncClient(url) as client:
            return [c async for c in client.chat_stream("x")]

    with pytest.raises(APIError) as e:
        asyncio.run(unauthenticated())
    assert e.value.status == 401 and "Bearer" in e.value.message


def metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_queue_is_retried_after_retry_after_until_it_succeeds(small):
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 100, "ignore_eos": True, "stream": True}
    rejected = 'seekmoe_requests_total{endpoint="/v2/generate",status="429"}'
    result: dict = {}

    def call():  # retries every Retry-After (1 s) until a place frees, however long a busy machine takes
        with Client(small, max_retries=60, backoff=0.05) as client:
            result["g"] = client.generate("x", max_tokens=2)

    with ExitStack() as holders:
        client = holders.enter_context(httpx.Client(timeout=30))
        first = holders.enter_context(client.stream("POST", f"{small}/v1/chat/completions", json=body))
        lines = first.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # it runs: it holds the one place in the batch
        holders.enter_context(client.stream("POST", f"{small}/v1/chat/completions", json=body))  # it waits
        before = metric(small, rejected)
        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 60
        while metric(small, rejected) == before:
            assert time.monotonic() < deadline, "the SDK's request was never refused"
            time.sleep(0.02)
    # both holders disconnected: their places free up and the retried request gets one
    thread.join(timeout=120)
    assert result["g"].usage.completion_tokens <= 2 and metric(small, rejected) >= before + 1

    with Client(small, max_retries=0) as client:  # nothing holds a place now: it succeeds at once
        assert client.generate("x", max_tokens=1).usage.completion_tokens <= 1


def test_a_refused_connection_is_retried_then_raised():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.05) as client, \
            pytest.raises(APIConnectionError) as e:
        client.generate("x")
    # backoffs of 0.05 and 0.1 s: far below a hang on the 600 s connect timeout, even on a busy machine
    assert e.value.status is None and "3 attempts" in e.value.message and time.monotonic() - start < 30

    async def main():
        async with AsyncClient(f"http://127.0.0.1:{port}", max_retries=1, backoff=0.05) as client:
            return [c async for c in client.chat_stream("x")]

    with pytest.raises(APIConnectionError, match="2 attempts"):
        asyncio.run(main())


def test_openapi_documents_every_endpoint(url):
    schema = requests.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert set(schema["paths"]) == set(ENDPOINTS) - {"/openapi.json"}  # the schema does not list itself
    load = schema["paths"]["/v2/expert_load"]["get"]
    assert "401" in load["responses"] and "ExpertLoad" in str(load["responses"]["200"])


@pytest.fixture(scope="module")
def cut_url():
    """A fake server that sends one event of a stream, then drops the connection (tests/sdk_live.py)."""
    from collections import Counter
    from http.server import ThreadingHTTPServer

    from tests.sdk_live import CutStreams

    fake = ThreadingHTTPServer(("127.0.0.1", 0), type("Cut", (CutStreams,), {"requests": Counter()}))
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{fake.server_port}"
    fake.shutdown()
    fake.server_close()


@pytest.mark.parametrize("how", ["generate_stream", "chat_stream"])  # a chunked body cut, an unframed one ended
def test_a_stream_cut_before_done_is_a_connection_error_not_a_short_answer(cut_url, how):
    got = []
    with Client(cut_url, max_retries=0) as client, pytest.raises(APIConnectionError, match="was cut"):
        for chunk in getattr(client, how)("hi"):
            got.append(chunk.text)
    assert got == ["Hel"]

    async def main():
        seen = []
        async with AsyncClient(cut_url, max_retries=0) as client:
            with pytest.raises(APIConnectionError, match="was cut"):
                async for chunk in getattr(client, how)("hi"):
                    seen.append(chunk.text)
        return seen

    assert asyncio.run(main()) == ["Hel"]
