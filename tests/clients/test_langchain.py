"""langchain-openai against a live server (issue 21): ChatOpenAI invoke, stream and batch, structured output through
a JSON Schema and through a forced tool, bound tools under required and named tool_choice, the completions-API
`OpenAI` and OpenAIEmbeddings. A tiny random model: free answers are checked for shape only, constrained ones in
full."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from tests.clients.conftest import needs_tokenizer

langchain_openai = pytest.importorskip("langchain_openai")
messages = pytest.importorskip("langchain_core.messages")

pytestmark = needs_tokenizer

ASK = "Describe the weather."


class Weather(pydantic.BaseModel):
    """The weather: fields a random model ends within a few tokens, whatever it picks."""

    sunny: bool
    kind: Literal["sun", "rain", "snow"]
    days: int = pydantic.Field(ge=1, le=7)


class GetWeather(pydantic.BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "Oslo", "Lima"]


class GetTime(pydantic.BaseModel):
    """The time in a zone."""

    zone: Literal["UTC", "CET"]


@pytest.fixture(scope="module", autouse=True)
def no_tiktoken_downloads(tmp_path_factory):
    """An empty tiktoken cache: a code path that needed a BPE file would try to download one, which the offline
    guard refuses and reports."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken")))
        patch.delenv("LANGSMITH_TRACING", raising=False)
        patch.delenv("LANGCHAIN_TRACING_V2", raising=False)
        yield


@pytest.fixture(scope="module")
def chat(live):
    return langchain_openai.ChatOpenAI(base_url=live.base_url, api_key=live.key, model=live.model, max_tokens=8,
                                       temperature=0, max_retries=0, timeout=120)


def test_invoke_stream_and_batch(chat, live):
    answer = chat.invoke(ASK)
    assert isinstance(answer, messages.AIMessage) and isinstance(answer.content, str) and answer.content
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    assert answer.response_metadata["model_name"] == live.model
    assert answer.usage_metadata["output_tokens"] <= 8 and answer.usage_metadata["input_tokens"] > 0

    chunks = list(chat.stream([("system", "Be brief."), ("user", ASK)]))
    assert chunks and all(isinstance(c, messages.AIMessageChunk) for c in chunks)
    whole = sum(chunks[1:], chunks[0])
    assert whole.content and whole.response_metadata["finish_reason"] in ("stop", "length")
    # greedy, the same prompt: streamed and whole answers agree
    assert whole.content == chat.invoke([("system", "Be brief."), ("user", ASK)]).content

    batch = chat.batch([ASK, "Hello"])
    assert len(batch) == 2 and batch[0].content == answer.content and all(m.content for m in batch)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_is_a_parsed_model(live, method):
    chat = langchain_openai.ChatOpenAI(base_url=live.base_url, api_key=live.key, model=live.model, max_tokens=60,
                                       temperature=1.0, max_retries=0, timeout=120)
    for seed in range(3):
        structured = chat.bind(seed=seed).with_structured_output(Weather, method=method, strict=True)
        answer = structured.invoke(ASK)
        assert isinstance(answer, Weather), answer
        assert 1 <= answer.days <= 7


@pytest.mark.parametrize("choice", ["required", "GetTime"])
def test_bound_tools_under_a_forced_choice_give_parsed_calls(live, choice):
    chat = langchain_openai.ChatOpenAI(base_url=live.base_url, api_key=live.key, model=live.model, max_tokens=60,
                                       temperature=1.0, max_retries=0, timeout=120)
    for seed in range(3):  # strict: no extra keys, so a random model's call closes within max_tokens
        bound = chat.bind(seed=seed).bind_tools([GetWeather, GetTime], tool_choice=choice, strict=True,
                                                parallel_tool_calls=False)
        answer = bound.invoke("What is the weather in Paris?")
        assert answer.response_metadata["finish_reason"] == "tool_calls"
        assert len(answer.tool_calls) == 1 and not answer.invalid_tool_calls, answer
        call = answer.tool_calls[0]
        assert call["id"] and call["type"] == "tool_call"
        tool = {"GetWeather": GetWeather, "GetTime": GetTime}[call["name"]]
        tool.model_validate(call["args"])  # the arguments follow the tool's schema
        if choice == "GetTime":
            assert call["name"] == "GetTime"


def test_a_forced_call_streams_into_one_parsed_call(live):
    chat = langchain_openai.ChatOpenAI(base_url=live.base_url, api_key=live.key, model=live.model, max_tokens=60,
                                       temperature=0, max_retries=0, timeout=120)
    bound = chat.bind_tools([GetWeather], tool_choice="required", strict=True, parallel_tool_calls=False)
    chunks = list(bound.stream("What is the weather in Oslo?"))
    whole = sum(chunks[1:], chunks[0])
    assert len(whole.tool_calls) == 1 and whole.tool_calls[0]["name"] == "GetWeather", whole
    GetWeather.model_validate(whole.tool_calls[0]["args"])


def test_the_completions_llm(live):
    llm = langchain_openai.OpenAI(base_url=live.base_url, api_key=live.key, model=live.model, max_tokens=8,
                                  temperature=0, max_retries=0, timeout=120)
    text = llm.invoke("Once upon a time")
    assert isinstance(text, str) and text
    assert [len(g) for g in llm.generate(["Hello", "The sky"]).generations] == [1, 1]
    assert "".join(llm.stream("Once upon a time")) == text


def test_embeddings_send_raw_strings(live):
    embeddings = langchain_openai.OpenAIEmbeddings(base_url=live.base_url, api_key=live.key, model=live.model,
                                                   check_embedding_ctx_length=False, max_retries=0)
    one = embeddings.embed_query("The cat sat on the mat.")
    many = embeddings.embed_documents(["The cat sat on the mat.", "Stock markets fell.", "x"])
    assert len(many) == 3 and all(len(v) == len(one) for v in many) and len(one) > 0
    assert many[0] == pytest.approx(one, abs=1e-5)
    assert sum(x * x for x in one) == pytest.approx(1.0, abs=1e-4)  # the server's rows are unit vectors
