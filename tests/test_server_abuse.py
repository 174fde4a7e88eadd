"""One request cannot stall the server, tenants are kept apart (issue 17): a real server on loopback, the bundled
model, attacked with one valid key. bench/serve_abuse.py runs the same attacks and prints what each cost."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from seekmoe.engine.cache import BlockTable, salt_hash
from seekmoe.llm import LLM
from seekmoe.model.checkpoint import DEFAULT_MODEL
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled model")

KEY, OTHER, ADMIN = "sk-tenant-one", "sk-tenant-two", "sk-admin"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server():
    config = ServeConfig(api_keys=(KEY, OTHER), admin_keys=(ADMIN,), max_summary_chars=1_000_000)
    with running_server(config, lambda: LLM()) as (url, app):
        yield url, app.state.seekmoe.serving


@pytest.fixture
def spy(server, monkeypatch):
    """Counts what the serving class hands the tokenizer: refused requests must cost nothing there."""
    calls: list[str] = []
    llm = server[1].llm
    for name in ("encode", "chat_prompt"):
        real = getattr(llm, name)
        monkeypatch.setattr(llm, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    return calls


def error_of(r: requests.Response) -> dict:
    return r.json()["error"]


# ---- cost bounded before the work starts -------------------------------------------------------------------------

def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(server, spy):
    url, serving = server
    r = requests.post(f"{url}/v2/generate", headers=auth(KEY), json={"prompt": "1" * 8_000_000, "max_tokens": 1},
                      timeout=120)
    assert r.status_code == 400 and error_of(r)["code"] == "context_length_exceeded", r.text
    assert "8000000 characters" in error_of(r)["message"] and error_of(r)["param"] == "prompt"
    huge = {"role": "user", "content": "x" * (serving.max_prompt_chars + 1)}
    r = requests.post(f"{url}/v1/chat/completions", headers=auth(KEY), json={"messages": [huge]}, timeout=120)
    assert r.status_code == 400 and error_of(r)["param"] == "messages", r.text
    assert spy == []
    # the bound is no tighter than the context: a prompt just under it is tokenized and judged by its tokens
    r = requests.post(f"{url}/v2/generate", headers=auth(KEY), json={"prompt": "1" * serving.max_prompt_chars},
                      timeout=120)
    assert r.status_code == 400 and "tokens" in error_of(r)["message"] and spy == ["encode"]


def test_many_prompts_are_refused_before_any_is_tokenized(server, spy):
    url, serving = server
    r = requests.post(f"{url}/v1/completions", headers=auth(KEY), json={"prompt": ["a"] * 300_000, "max_tokens": 1},
                      timeout=120)
    assert r.status_code == 400 and error_of(r)["param"] == "prompt" and "300000 sequences" in error_of(r)["message"]
    n = serving.config.max_queue // 100 + 1
    r = requests.post(f"{url}/v1/completions", headers=auth(KEY), json={"prompt": ["a"] * 100, "n": n, "max_tokens": 1},
                      timeout=60)
    assert r.status_code == 400 and error_of(r)["param"] == "n"
    assert spy == []


def test_a_huge_stop_string_is_refused(server):
    url, _ = server
    r = requests.post(f"{url}/v1/completions", headers=auth(KEY),
                      json={"prompt": "hi", "stop": ["a" * 30_000], "n": 4, "max_tokens": 4}, timeout=60)
    assert r.status_code == 400 and error_of(r)["param"] == "stop" and "characters" in error_of(r)["message"], r.text


def test_summaries_have_a_length_limit(server):
    url, _ = server
    r = requests.post(f"{url}/v2/summarize", headers=auth(KEY), json={"text": "word " * 200_001}, timeout=60)
    assert r.status_code == 413 and error_of(r)["code"] == "text_too_long" and "1000000" in error_of(r)["message"]


def test_a_summary_stops_when_its_client_leaves(server):
    url, serving = server
    engine = serving.llm.engine
    text = " ".join(f"Sentence number {i} tells of the ship and the whale, and of the sea." for i in range(13_000))
    with pytest.raises(requests.exceptions.ReadTimeout):  # 900k characters: hundreds of map-reduce prompts
        requests.post(f"{url}/v2/summarize", headers=auth(KEY), timeout=3,
                      json={"text": text, "max_length": 60, "method": "abstractive"})
    # Run to its end, this summary takes over two minutes here (~95k characters take 15 s); cancelled, it stops
    # within one batch of generation.
    deadline = time.monotonic() + 60
    while serving.summary_queue.waiting or engine.requests:
        assert time.monotonic() < deadline, "the summary went on after its client left"
        time.sleep(0.1)
    assert requests.get(f"{url}/health", timeout=10).status_code == 200


# ---- tenants kept apart ------------------------------------------------------------------------------------------

def test_cached_prefixes_are_kept_per_api_key(server):
    url, serving = server
    cache = serving.llm.engine.cache
    ids = [int(t) for t in range(100, 180)]  # 80 tokens: 5 full blocks of 16
    r = requests.post(f"{url}/v1/completions", headers=auth(KEY), json={"prompt": ids, "max_tokens": 1}, timeout=60)
    assert r.status_code == 200, r.text
    assert cache.match_prefix(BlockTable(), ids, salt_hash("1")) == 64  # the first key's own prefix is reused
    for salt in (b"", salt_hash("2"), salt_hash("admin-1")):  # nobody else's request finds it
        assert cache.match_prefix(BlockTable(), ids, salt) == 0


def test_admin_paths_need_an_admin_key(server):
    url, _ = server
    for path in ("/metrics", "/v2/expert_load"):
        r = requests.get(url + path, headers=auth(KEY), timeout=30)
        assert r.status_code == 403 and error_of(r)["code"] == "admin_key_required", path
        assert error_of(r)["type"] == "permission_error"
        assert requests.get(url + path, headers=auth(ADMIN), timeout=30).status_code == 200, path
        assert requests.get(url + path, timeout=30).status_code == 401, path
    assert requests.get(f"{url}/v1/models", headers=auth(ADMIN), timeout=30).status_code == 200
    assert requests.get(f"{url}/v1/models", headers=auth(OTHER), timeout=30).status_code == 200


def test_the_access_log_cannot_be_forged(server, caplog):
    url, _ = server
    with caplog.at_level(logging.INFO, logger="seekmoe.server"):
        requests.get(f"{url}/x%0a127.0.0.1%20%22GET%20/admin%22%20200%0d", timeout=30)  # no key needed to try
        requests.get(f"{url}/v1/models", headers=auth(OTHER), timeout=30)
        deadline = time.monotonic() + 10  # the line is written when the answer ends, on the server's thread
        while not any("/v1/models" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "seekmoe.server"]
    forged = next(line for line in lines if "/x" in line)
    assert "\n" not in forged and "\r" not in forged and forged.replace('\\"', "").count('"') == 2, forged
    assert "/x\\n127.0.0.1 \\\"GET /admin\\\" 200\\r" in forged
    assert any('"GET /v1/models" 200' in line and "key=2" in line for line in lines), lines
    assert not any(KEY in line or OTHER in line for line in lines)  # the log names keys by number only
