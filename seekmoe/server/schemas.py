"""Request and response bodies: the native API (/v2/generate) and OpenAI's (/v1), as pydantic models.

Requests are strict about types (OpenAI answers "5" for an integer with a 400, not a guess) and ignore fields
they do not know, as OpenAI-compatible servers do: new client versions send new optional fields. Value ranges
are checked once, by SamplingParams, so the messages are the same from the CLI, the Python API and HTTP.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from seekmoe.engine.sampling import MAX_LOGPROBS, MAX_N, MAX_SEED


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _field(description: str, default: object = None, **bounds: float) -> object:
    """A field whose bounds are documented in the schema (so clients and fuzzers see them) but checked only by
    SamplingParams, which words the errors the same for every entry point."""
    return Field(default, description=description, json_schema_extra=bounds or None)


class Sampling(Request):
    """Fields all three generation endpoints share; None keeps the default."""

    max_tokens: int | None = _field("most tokens to write; the prompt and these must fit the context", minimum=1)
    temperature: float | None = _field("randomness; 0 picks the likeliest token (default 1)", minimum=0, maximum=2)
    top_p: float | None = _field("nucleus sampling (default 1: off)", exclusiveMinimum=0, maximum=1)
    top_k: int | None = _field("sample from the k likeliest tokens; 0 or -1: off", minimum=-1)
    min_p: float | None = _field("drop tokens less likely than min_p times the likeliest", minimum=0, maximum=1)
    repetition_penalty: float | None = _field("above 1 repeats less", exclusiveMinimum=0, maximum=2)
    presence_penalty: float | None = _field("subtracted from tokens already written", minimum=-2, maximum=2)
    frequency_penalty: float | None = _field("times their count, subtracted", minimum=-2, maximum=2)
    stop: str | list[str] | None = _field("end where the text holds one of these (not returned); up to 16")
    seed: int | None = _field("for repeatable sampling", minimum=0, maximum=MAX_SEED - 1)
    ignore_eos: bool | None = _field("keep writing past the end-of-sequence token (benchmarks)")
    stream: bool = _field("send the text as server-sent events as it is written", False)


class StreamOptions(Request):
    include_usage: bool = False


# ---- native ----------------------------------------------------------------------------------------------------

class GenerateRequest(Sampling):
    prompt: str = Field(description="the text to continue (no chat template)")
    model: str | None = None


class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    id: str
    generated_text: str
    finish_reason: str | None
    usage: GenerateUsage


# ---- OpenAI: models --------------------------------------------------------------------------------------------

class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "seekmoe"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- OpenAI: completions ---------------------------------------------------------------------------------------

class CompletionRequest(Sampling):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, texts, token ids, or lists of token ids")
    n: int = _field("completions per prompt", 1, minimum=1, maximum=MAX_N)
    logprobs: int | None = _field("the chosen token's logprob and this many alternatives", minimum=0,
                                  maximum=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- OpenAI: chat ----------------------------------------------------------------------------------------------

class ContentPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "user", "assistant", "developer"] = Field(description="developer is read as system")
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(Sampling):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = _field("answers to write", 1, minimum=1, maximum=MAX_N)
    max_completion_tokens: int | None = Field(None, description="the newer name of max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = _field("alternatives per token, with logprobs: true", minimum=0,
                                      maximum=MAX_LOGPROBS)
    logit_bias: dict[str, float] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# ---- monitoring ------------------------------------------------------------------------------------------------

class LayerLoad(BaseModel):
    layer: int = Field(description="the layer's index in the model (dense layers are left out)")
    counts: list[int] = Field(description="tokens routed to each routed expert since the server started")


class ExpertLoad(BaseModel):
    layers: list[LayerLoad]


# ---- errors ----------------------------------------------------------------------------------------------------

class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
