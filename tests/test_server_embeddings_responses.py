"""/v1/embeddings and /v1/responses (issue 21): a real server on loopback with the bundled chat model (it ends its
answers, so a response can complete), driven by the openai package and plain HTTP."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import requests

from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled model")

KEY = "sk-embed"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "x"]
# Batched rows are padded to the longest and go through matmuls of another shape: float32 sums in another order,
# the same math. Rows are unit vectors, so 1e-5 is far below any real difference (other texts differ by > 1e-2).
BATCH_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def server():
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM()) as (url, app):
        yield url, app.state.seekmoe.serving


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def serving(server):
    return server[1]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def post(url: str, path: str, body: dict, headers: dict | None = None) -> requests.Response:
    return requests.post(url + path, headers=AUTH | (headers or {}), json=body, timeout=120)


def embed(url: str, input, **fields) -> np.ndarray:
    r = post(url, "/v1/embeddings", {"input": input, **fields})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def refused(r: requests.Response, param: str | None, *words: str, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error
    return error


# ---- embeddings ------------------------------------------------------------------------------------------------

def test_embeddings_are_unit_vectors_of_the_hidden_size(url, serving):
    r = post(url, "/v1/embeddings", {"input": TEXTS, "model": serving.model_name})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == serving.model_name
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(len(TEXTS))]
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (len(TEXTS), serving.llm.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    tokens = sum(len(serving.llm.encode(t)) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_same_input_same_vector_and_other_texts_differ(url):
    first, again = embed(url, TEXTS[0]), embed(url, TEXTS[0])
    np.testing.assert_array_equal(first, again)  # same shapes, same thread: the same sums in the same order
    vectors = embed(url, TEXTS)
    cosines = vectors @ vectors.T
    assert all(cosines[i, j] < 0.99 for i in range(len(TEXTS)) for j in range(len(TEXTS)) if i != j), cosines


def test_a_batch_equals_its_inputs_one_by_one(url):
    batch = embed(url, TEXTS)
    singles = np.concatenate([embed(url, t) for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=BATCH_TOLERANCE)


def test_token_ids_equal_their_text(url, serving):
    ids = [serving.llm.encode(t) for t in TEXTS]
    np.testing.assert_allclose(embed(url, ids[0]), embed(url, TEXTS[0]), atol=1e-7)
    np.testing.assert_allclose(embed(url, ids), embed(url, TEXTS), atol=1e-7)


def test_base64_is_the_float32_bytes_of_the_floats(url):
    floats = embed(url, TEXTS)
    r = post(url, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    np.testing.assert_array_equal(decoded, floats.astype(np.float32))


def test_the_openai_client_reads_its_default_base64(client, url, serving):
    """openai-python asks for base64 when no encoding_format is given, and decodes it itself."""
    got = client.embeddings.create(model=serving.model_name, input=TEXTS)
    vectors = np.array([d.embedding for d in got.data])
    assert all(isinstance(x, float) for x in got.data[0].embedding)
    np.testing.assert_array_equal(vectors, embed(url, TEXTS).astype(np.float32))
    assert got.usage.prompt_tokens == got.usage.total_tokens > 0
    floats = client.embeddings.create(model=serving.model_name, input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=BATCH_TOLERANCE)  # alone, not batched


def test_llm_embed_is_what_the_server_answers(url, serving):
    one, batch = serving.llm.embed(TEXTS[0]), serving.llm.embed(TEXTS)
    assert tuple(one.shape) == (serving.llm.hidden_size,) and tuple(batch.shape) == (3, serving.llm.hidden_size)
    np.testing.assert_allclose(batch.numpy(), embed(url, TEXTS), atol=1e-7)
    np.testing.assert_allclose(one.numpy(), batch[0].numpy(), atol=BATCH_TOLERANCE)


def test_dimensions_must_be_the_hidden_size(url, serving):
    width = serving.llm.hidden_size
    assert embed(url, TEXTS[0], dimensions=width).shape == (1, width)
    refused(post(url, "/v1/embeddings", {"input": TEXTS[0], "dimensions": 64}), "dimensions", str(width), "64")


@pytest.mark.parametrize("given, words", [("", ["input must not be empty"]), ([], ["input must not be empty"]),
                                          (["a", ""], ["input[1] must not be empty"]),
                                          ([[5], []], ["input[1] must not be empty"]),
                                          ([10**9], ["not a token id"])])
def test_empty_inputs_and_bad_ids_are_refused(url, given, words):
    refused(post(url, "/v1/embeddings", {"input": given}), "input", *words)


def test_too_many_inputs_are_refused(url):
    refused(post(url, "/v1/embeddings", {"input": ["a"] * 2049}), "input", "2049", "2048")


def test_an_input_beyond_the_context_is_refused_in_openais_words(url, serving):
    r = post(url, "/v1/embeddings", {"input": ["short", "word " * (serving.context + 10)]})
    error = refused(r, "input", f"This model's maximum context length is {serving.context} tokens")
    assert error["code"] == "context_length_exceeded"


def test_both_routes_need_the_key(url):
    for path, body in (("/v1/embeddings", {"input": "a"}), ("/v1/responses", {"input": "a"})):
        r = requests.post(url + path, json=body, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
        assert r.headers["x-request-id"]


# ---- responses -------------------------------------------------------------------------------------------------

def test_a_response_through_the_openai_client(client, serving):
    r = client.responses.create(model=serving.model_name, input="Hello", instructions="Be brief.", temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert isinstance(r.output_text, str) and r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant" and r.output[0].id.startswith("msg_")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert r.usage.input_tokens == len(serving.llm.chat_ids(chat))
    assert r.usage.output_tokens > 0 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_max_output_tokens_reached_is_incomplete(client, serving):
    r = client.responses.create(model=serving.model_name, input="Tell me a long story.", max_output_tokens=2,
                                temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2 and r.output_text


def test_instructions_are_the_system_message_of_the_same_chat(url):
    """Greedy: the same messages give the same text and the same prompt as /v1/chat/completions."""
    chat = post(url, "/v1/chat/completions", {"messages": [{"role": "system", "content": "Answer in French."},
                                                           {"role": "user", "content": "Hello there"}],
                                              "temperature": 0, "max_tokens": 24}).json()
    for body in ({"instructions": "Answer in French.", "input": "Hello there"},
                 {"input": [{"role": "developer", "content": "Answer in French."},
                            {"role": "user", "content": [{"type": "input_text", "text": "Hello "},
                                                         {"type": "input_text", "text": "there"}]}]}):
        r = post(url, "/v1/responses", body | {"temperature": 0, "max_output_tokens": 24})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["output"][0]["content"][0]["text"] == chat["choices"][0]["message"]["content"]
        assert answer["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]


def test_streamed_deltas_add_up_to_the_final_text(client, serving):
    with client.responses.stream(model=serving.model_name, input="Hello", instructions="Be brief.",
                                 temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == final.output_text
    assert final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events if e.type != "response.output_text.delta"]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    plain = client.responses.create(model=serving.model_name, input="Hello", instructions="Be brief.", temperature=0)
    assert final.output_text == plain.output_text


def test_a_stream_cut_short_ends_incomplete(client, serving):
    events = list(client.responses.create(model=serving.model_name, input="Tell me a long story.",
                                          max_output_tokens=3, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    done = events[-1].response
    assert done.incomplete_details.reason == "max_output_tokens" and done.usage.output_tokens == 3
    assert done.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")


@pytest.mark.parametrize("field, value", [("tools", [{"type": "function", "name": "f"}]),
                                          ("previous_response_id", "resp_123"), ("background", True),
                                          ("reasoning", {"effort": "low"}), ("tool_choice", "required")])
def test_unsupported_features_are_refused_by_name(url, field, value):
    refused(post(url, "/v1/responses", {"input": "Hi", field: value}), field, field, "not supported")


def test_harmless_fields_are_accepted(url):
    r = post(url, "/v1/responses", {"input": "Hi", "max_output_tokens": 2, "store": False, "user": "u",
                                    "metadata": {"k": "v"}, "tools": [], "tool_choice": "auto",
                                    "text": {"format": {"type": "text"}}})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == {"k": "v"}


def test_response_limits_name_the_responses_fields(url, serving):
    refused(post(url, "/v1/responses", {"input": "Hi", "max_output_tokens": serving.context + 1}),
            "max_output_tokens", "maximum context length")
    refused(post(url, "/v1/responses", {"input": "Hi", "temperature": -1}), "temperature", "temperature")
    refused(post(url, "/v1/responses", {"input": []}), "input", "at least one message")
    refused(post(url, "/v1/responses", {"input": "Hi", "model": "nope"}), "model", "nope", status=404)
