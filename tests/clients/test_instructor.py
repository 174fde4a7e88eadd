"""instructor against a live server (issue 21): from_openai in JSON_SCHEMA mode (response_format json_schema) and
in TOOLS mode (a named, forced tool call) returns a validated Pydantic object, on the first try: constrained
decoding makes the answer valid, so no retry is ever needed."""

from __future__ import annotations

from typing import Literal

import openai
import pydantic
import pytest

from tests.clients.conftest import needs_tokenizer

instructor = pytest.importorskip("instructor")

pytestmark = needs_tokenizer

USER = [{"role": "user", "content": "Describe the weather."}]


class Weather(pydantic.BaseModel):
    """The weather: fields a random model ends within a few tokens, whatever it picks."""

    model_config = pydantic.ConfigDict(extra="forbid")

    sunny: bool
    kind: Literal["sun", "rain", "snow"]
    days: int = pydantic.Field(ge=1, le=7)
    note: str = pydantic.Field(max_length=6)


@pytest.fixture(scope="module")
def openai_client(live):
    return openai.OpenAI(base_url=live.base_url, api_key=live.key, max_retries=0, timeout=120)


@pytest.mark.parametrize("mode", ["JSON_SCHEMA", "TOOLS"])
def test_a_response_model_comes_back_validated(openai_client, live, mode):
    client = instructor.from_openai(openai_client, mode=getattr(instructor.Mode, mode))
    for seed in range(3):
        weather, completion = client.chat.completions.create_with_completion(
            model=live.model, messages=USER, response_model=Weather, max_retries=0, max_tokens=80,
            temperature=1.0, seed=seed)
        assert isinstance(weather, Weather) and 1 <= weather.days <= 7 and len(weather.note) <= 6
        choice = completion.choices[0]
        if mode == "TOOLS":  # instructor forces its one tool by name
            assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "Weather"
        else:
            assert choice.finish_reason == "stop" and choice.message.content.startswith("{")

