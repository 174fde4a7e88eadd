"""Fuzz the server's OpenAPI schema with schemathesis (valid and invalid bodies), bounded in examples and time:
no answer is a 5xx, every error has OpenAI's shape, and another client's streams go on undisturbed."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from seekmoe.llm import LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

KEY = "sk-fuzz"
BUDGET = 60.0  # seconds for all the examples of this module; past it the remaining ones send nothing
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a 64-token context keeps every valid request short, so the examples stay fast
    folder = tiny_model_folder(tmp_path_factory.mktemp("fuzz"), max_position_embeddings=64)
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(folder, max_waiting=64)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def bystander(server):
    """Another client streaming all along; collects what went wrong for it."""
    problems: list[str] = []
    done = threading.Event()
    body = {"prompt": "a", "max_tokens": 40, "ignore_eos": True, "stream": True}

    def run():
        while not done.is_set():
            with requests.post(f"{server}/v2/generate", headers=AUTH, json=body, stream=True, timeout=30) as r:
                events = [line[6:] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
            last = json.loads(events[-2]) if r.status_code == 200 and len(events) >= 2 else {}
            if r.status_code not in (200, 429) or (r.status_code == 200 and (
                    events[-1] != "[DONE]" or last.get("usage", {}).get("completion_tokens") != 40)):
                problems.append(f"{r.status_code}: {events[-2:]}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield problems
    done.set()
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def operations(server, bystander):
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", headers=AUTH)
    return [result.ok() for result in schema.get_all_operations()], time.monotonic() + BUDGET


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_nothing_a_client_sends_breaks_the_server(operations, mode):
    operations, deadline = operations
    assert {op.path for op in operations} >= {"/v2/generate", "/v1/completions", "/v1/chat/completions"}
    for operation in operations:
        takes_body = operation.method.upper() == "POST"
        if mode == GenerationMode.NEGATIVE and not takes_body:
            continue  # nothing to get wrong in a GET without parameters
        @settings(max_examples=40 if takes_body else 5, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            if time.monotonic() > deadline:
                return
            response = case.call(headers=AUTH, timeout=30)
            assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"} and error["message"], error

        check()


def test_the_server_and_the_other_client_are_fine_after_the_fuzz(server, bystander):
    assert requests.get(f"{server}/health").status_code == 200
    r = requests.post(f"{server}/v2/generate", headers=AUTH, json={"prompt": "a", "max_tokens": 5})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert bystander == []
