"""litellm against a live server (issue 21): completion through its openai/ route, plain, streamed, with a forced
tool and with a JSON Schema response_format, and the server's errors mapped to litellm's exception classes (its
context-window detection reads the server's OpenAI wording). litellm makes no network call: its cost map is read
from the package and nothing else is fetched (LITELLM_LOCAL_MODEL_COST_MAP, LITELLM_OFFLINE_MODE; this version has
no telemetry left to turn off), and the offline guard fails the module if it tried."""

from __future__ import annotations

import importlib
import importlib.util
import json

import jsonschema
import pytest

from tests.clients.conftest import CONTEXT, needs_tokenizer

pytestmark = [
    needs_tokenizer,
    # not imported at collection: its import fetches the cost map unless the fixture's settings are in place
    pytest.mark.skipif(importlib.util.find_spec("litellm") is None, reason="litellm is not installed"),
    # litellm's own TypedDicts, which pydantic warns about as it builds their schemas
    pytest.mark.filterwarnings("ignore:Item.* using the `ReadOnly` qualifier:UserWarning"),
]

USER = [{"role": "user", "content": "Describe the weather as JSON."}]
ANSWER = {"type": "object", "additionalProperties": False, "required": ["ok", "kind", "n"],
          "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["sun", "rain", "snow"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}}}}}


@pytest.fixture(scope="module")
def litellm():
    """litellm imported with its cost map read from the package (else it fetches one at import) and in its offline
    mode (else its first completion fetches Anthropic's beta-header list, even for an openai/ model)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        patch.setenv("LITELLM_OFFLINE_MODE", "true")
        module = importlib.import_module("litellm")
        patch.setattr(module, "num_retries", 0)
        yield module


@pytest.fixture(scope="module")
def complete(litellm, live):
    def complete(**fields):
        return litellm.completion(model=f"openai/{live.model}", api_base=live.base_url, api_key=live.key,
                                  timeout=120, **fields)

    return complete


def test_plain_and_streamed(complete, live):
    r = complete(messages=USER, max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0

    chunks = list(complete(messages=USER, max_tokens=8, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the stream says what the whole answer said
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        choice.finish_reason]


def test_a_required_tool_is_called_with_valid_arguments(complete):
    for seed in range(3):
        r = complete(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
                     tool_choice="required", parallel_tool_calls=False, max_tokens=60, temperature=1.0, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice
        call = choice.message.tool_calls[0]
        assert call.id and call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_json_schema_response_format(complete):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": ANSWER, "strict": True}}
    for seed in range(3):
        r = complete(messages=USER, response_format=fmt, max_tokens=60, temperature=1.0, seed=seed)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER)


def test_errors_map_to_litellm_exceptions(litellm, live, complete):
    with pytest.raises(litellm.AuthenticationError) as err:
        litellm.completion(model=f"openai/{live.model}", api_base=live.base_url, api_key="sk-wrong", messages=USER,
                           max_tokens=4)
    assert err.value.status_code == 401

    long = [{"role": "user", "content": "word " * (2 * CONTEXT)}]
    with pytest.raises(litellm.ContextWindowExceededError) as err:  # detected from the message's wording
        complete(messages=long, max_tokens=4)
    assert err.value.status_code == 400 and "maximum context length" in str(err.value)

    with pytest.raises(litellm.BadRequestError) as err:
        complete(messages=USER, max_tokens=4, temperature=3.0)
    assert err.value.status_code == 400 and "temperature" in str(err.value)
    assert not isinstance(err.value, litellm.ContextWindowExceededError)
