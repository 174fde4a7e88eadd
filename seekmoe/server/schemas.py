"""Request and response bodies: the native API (/v2/generate) and OpenAI's (/v1), as pydantic models.

Requests are strict about types (OpenAI answers "5" for an integer with a 400, not a guess) and ignore fields
they do not know, as OpenAI-compatible servers do: new client versions send new optional fields. An optional field
sent as null gets its default (openai-python and others send null for a parameter left unset). Value ranges are
checked once, by SamplingParams, so the messages are the same from the CLI, the Python API and HTTP.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from seekmoe.engine.sampling import MAX_LOGPROBS, MAX_N, MAX_STOP, RANGES
from seekmoe.multimodal import speech

INT64 = (-2**63, 2**63 - 1)  # OpenAI's seed: any int64


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: object) -> object:
        """Drop the optional fields sent as null, so they get their defaults ("n": null is n = 1, not a 400);
        a required field sent as null stays, to be refused."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}


def _field(description: str, default: object = None, **bounds: float) -> object:
    """A field whose bounds are documented in the schema (so clients and fuzzers see them) but checked only by
    SamplingParams, which words the errors the same for every entry point."""
    return Field(default, description=description, json_schema_extra=bounds or None)


def _real(name: str, description: str) -> object:
    """A float field of SamplingParams, its interval documented as SamplingParams checks it."""
    low, high, low_excluded = RANGES[name]
    return _field(description, **{"exclusiveMinimum" if low_excluded else "minimum": low, "maximum": high})


class Sampling(Request):
    """Fields all three generation endpoints share; None keeps the default: the model's generation_config.json
    where it sets the field (as vLLM does), else SamplingParams'."""

    max_tokens: int | None = _field("most tokens to write; the prompt and these must fit the context", minimum=1)
    temperature: float | None = _real("temperature", "randomness; 0 picks the likeliest token (default: the "
                                                 "model's generation_config.json, else 1)")
    top_p: float | None = _real("top_p", "nucleus sampling (default: the model's, else 1: off)")
    top_k: int | None = _field("sample from the k likeliest tokens; 0 or -1: off", minimum=-1)
    min_p: float | None = _real("min_p", "drop tokens less likely than min_p times the likeliest")
    repetition_penalty: float | None = _real("repetition_penalty", "above 1 repeats less")
    presence_penalty: float | None = _real("presence_penalty", "subtracted from tokens already written")
    frequency_penalty: float | None = _real("frequency_penalty", "times their count, subtracted")
    stop: str | list[str] | None = _field(f"end where the text holds one of these (not returned); up to {MAX_STOP}")
    seed: int | None = _field("for repeatable sampling; any int64", minimum=INT64[0], maximum=INT64[1])
    ignore_eos: bool | None = _field("keep writing past the end-of-sequence token (benchmarks)")
    stream: bool = _field("send the text as server-sent events as it is written", False)


class StreamOptions(Request):
    include_usage: bool = False


# ---- native ----------------------------------------------------------------------------------------------------

class GenerateRequest(Sampling):
    prompt: str = Field(description="the text to continue (no chat template); with images or audio, the question "
                                    "of one user turn that shows them first (a multimodal model is a chat model)")
    model: str | None = None
    images: list[str] | None = Field(None, description="images (PNG, JPEG, GIF), base64 or data: URLs")
    audio: list[str] | None = Field(None, description="audio (WAV, FLAC), base64 or data: URLs")
    json_schema: dict[str, Any] | None = Field(
        None, description='the text is one JSON value following this JSON Schema ({"type": "object"}: any JSON '
                          'object); cut short by max_tokens, it ends mid-value with finish_reason "length"')
    grammar: str | None = Field(None, description="the text follows this Lark grammar (llguidance's dialect); not "
                                                  "with json_schema")


class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _unless_none(description: str) -> object:
    """An optional response field left out of the body, not sent as null, when it has nothing."""
    return Field(None, description=description, exclude_if=lambda v: v is None)


IMAGES = ("the request's last image with the regions the answer names (<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]"
          "<|/det|>, 0..999) drawn on it, a PNG; left out when the answer names none or the request had no image")


class GenerateResponse(BaseModel):
    id: str
    generated_text: str
    finish_reason: str | None
    usage: GenerateUsage
    images: list[str] | None = _unless_none(f"base64: {IMAGES}")


class SummarizeRequest(Request):
    text: str = Field(description="the document, of any length")
    max_length: int = Field(200, ge=1, le=100_000, description="most tokens in the summary")
    style: Literal["bullets", "paragraph", "sections"] = Field(
        "bullets", description="sections keeps the document's own headings")
    method: Literal["hybrid", "abstractive", "extractive"] = Field(
        "hybrid", description="hybrid: the sentences that state the conclusions, the opening and the central ones, "
                              "shortened by the model only where every fact survives; abstractive: the model, "
                              "map-reduce; extractive: the central sentences, no model")
    model: str | None = None


class SummarizeResponse(BaseModel):
    summary: str
    summary_tokens: int
    style: str
    method: str


# ---- the knowledge graph (seekmoe serve --graph) ---------------------------------------------------------------

class GraphEvidence(BaseModel):
    doc: str = Field(description="the document the sentence is in: its file, or its JSONL id")
    sentence: str
    subject: str = Field(description="the pair's terms in the order the sentence gives them")
    relation: str
    object: str
    link: list[str] | None = Field(None, description="discover: the two terms this sentence links")


class GraphNeighbor(BaseModel):
    term: str
    kind: str
    weight: float = Field(description="NPMI of the pair over sentences, damped for pairs seen once or twice")
    count: int = Field(description="sentences that relate them")
    relation: str
    evidence: list[GraphEvidence]


class GraphHop(BaseModel):
    from_: str = Field(alias="from")
    to: str
    weight: float
    count: int
    relation: str
    evidence: list[GraphEvidence]


class GraphLink(BaseModel):
    term: str
    a_b: float
    b_c: float


class GraphDiscovery(BaseModel):
    term: str
    kind: str
    score: float = Field(description="sum over the linking terms of min(weight(A, B), weight(B, C))")
    via: list[str] = Field(description="the linking terms B, strongest first")
    links: list[GraphLink]
    evidence: list[GraphEvidence]


class GraphInfo(BaseModel):
    object: Literal["graph"] = "graph"
    documents: int
    sentences: int
    terms: int
    edges: int
    extractor: str | None


class GraphNeighbors(BaseModel):
    object: Literal["list"] = "list"
    term: str
    data: list[GraphNeighbor]


class GraphPath(BaseModel):
    object: Literal["list"] = "list"
    source: str
    target: str
    data: list[GraphHop] = Field(description="the steps; empty when no path is within max_hops")


class GraphDiscover(BaseModel):
    object: Literal["list"] = "list"
    term: str
    data: list[GraphDiscovery]


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
    max_tokens: int | None = _field("most tokens to write; the prompt and these must fit the context; 0: none (with "
                                    "echo and logprobs: only score the prompt)", minimum=0)
    n: int = _field("completions per prompt", 1, minimum=1, maximum=MAX_N)
    logprobs: int | None = _field("the chosen token's logprob and this many alternatives", minimum=0,
                                  maximum=MAX_LOGPROBS)
    echo: bool = _field("the text (and with logprobs, the logprobs) starts with the prompt's", False)
    best_of: int | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # with echo, the first prompt token's is null: nothing predicts it
    top_logprobs: list[dict[str, float] | None]
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

class TextPart(Request):
    type: Literal["text"]
    text: str


class ImageURL(Request):
    url: str = Field(description="a data: URL (data:image/png;base64,...): the server fetches nothing remote")
    detail: str | None = Field(None, description="accepted, ignored")


class ImagePart(Request):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Request):
    data: str = Field(description="the audio file, base64")
    format: str = Field(description="wav or flac")


class AudioPart(Request):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class FunctionCall(Request):
    name: str
    arguments: str = Field(description="the arguments as a JSON object, in a string")


class ToolCall(Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Request):
    role: Literal["system", "user", "assistant", "developer", "tool", "function"] = Field(
        description="developer is read as system; tool carries a tool's result (function: the deprecated form)")
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant message's calls")
    tool_call_id: str | None = Field(None, description="a tool message: the call it answers")
    function_call: FunctionCall | None = Field(None, description="deprecated: an assistant message's one call")


class FunctionDefinition(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments")
    strict: bool | None = None


class ToolDefinition(Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedTool(Request):
    type: Literal["function"] = "function"
    function: dict[str, str] = Field(description='{"name": ...}')


class NamedFunction(Request):
    name: str


class JSONSchemaFormat(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="the JSON Schema (none: any object)")
    strict: bool | None = Field(None, description="true: a schema keyword the grammar compiler lacks is a 400; "
                                                  "otherwise it is ignored")


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description='json_object: the answer is a JSON object; json_schema: JSON following json_schema.schema (cut '
                    'short by max_tokens, it ends mid-value with finish_reason "length")')
    json_schema: JSONSchemaFormat | None = Field(None, description="with type json_schema")


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
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedTool | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_trace: bool = Field(False, description="seekmoe: also return the calls the server ran itself, with results")
    # OpenAI's deprecated forms of tools and tool_choice, which older clients still send: read as those, and
    # answered in the old shape (message.function_call, finish_reason "function_call")
    functions: list[FunctionDefinition] | None = Field(None, max_length=128, description="deprecated: tools")
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(None, description="deprecated: tool_choice")

    @property
    def legacy(self) -> bool:
        """Sent with functions or function_call: answered with function_call rather than tool_calls."""
        return self.functions is not None or self.function_call is not None


def finite(x: float | None) -> float:
    """JSON has no NaN or infinity; OpenAI-compatible servers report -9999 for a token the model rules out."""
    return x if x is not None and math.isfinite(x) else -9999.0


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None

    @classmethod
    def of(cls, lps: list) -> ChoiceLogprobs:
        """The engine's logprobs (seekmoe.llm.TokenLogprob) in OpenAI's shape."""
        return cls(content=[
            TokenLogprob(token=lp.token, logprob=finite(lp.logprob), bytes=lp.bytes,
                         top_logprobs=[TopLogprob(token=t.token, logprob=finite(t.logprob), bytes=t.bytes)
                                       for t in lp.top_logprobs])
            for lp in lps])


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ImageURLOut(BaseModel):
    url: str = Field(description="data:image/png;base64,...")


class ImageOut(BaseModel):
    """An image in an answer, as OpenRouter returns them (openai-python keeps it: message.images)."""
    type: Literal["image_url"] = "image_url"
    image_url: ImageURLOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCallOut | None = Field(None, description="the answer to a request sent with functions")
    images: list[ImageOut] | None = _unless_none(IMAGES)


class ToolRun(BaseModel):
    """One call the server ran itself (serve --tools), as tool_trace reports it."""
    index: int  # the choice whose rounds ran it
    name: str
    arguments: str
    ok: bool
    result: str
    seconds: float


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
    tool_trace: list[ToolRun] | None = None


# ---- OpenAI: embeddings ----------------------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit of inputs in one request


class EmbeddingRequest(Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"text, texts, token ids, or lists of token ids; at most {MAX_EMBEDDING_INPUTS} inputs, none "
                    "empty, each within the context")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's little-endian float32 bytes, base64-encoded")
    dimensions: int | None = Field(None, description="must be the model's hidden size, if given: the vectors are "
                                                     "not trained to be cut shorter")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ---- OpenAI: responses -----------------------------------------------------------------------------------------

class InputText(Request):
    type: Literal["input_text", "output_text"] = Field(description="output_text: an earlier answer's text")
    text: str


class InputMessage(Request):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"] = Field(description="developer is read as system")
    content: str | list[InputText]


class TextFormat(Request):
    type: Literal["text"] = Field(description="only plain text")


class TextConfig(Request):
    format: TextFormat | None = None


class ResponsesRequest(Request):
    """OpenAI's Responses API over the chat path, without state: no stored responses, tools or reasoning."""

    model: str | None = None
    input: str | list[InputMessage] = Field(description="a user message's text, or the conversation's messages")
    instructions: str | None = Field(None, description="the system message, put before input's messages")
    max_output_tokens: int | None = _field("most tokens to write; the input and these must fit the context",
                                           minimum=1)
    temperature: float | None = _real("temperature", "randomness; 0 picks the likeliest token (default: the "
                                                 "model's generation_config.json, else 1)")
    top_p: float | None = _real("top_p", "nucleus sampling (default: the model's, else 1: off)")
    stream: bool = _field("send the answer as the Responses API's server-sent events", False)
    text: TextConfig | None = None
    store: bool | None = Field(None, description="accepted, ignored: nothing is stored")
    metadata: dict[str, str] | None = Field(None, description="accepted, returned unchanged")
    user: str | None = None
    # refused when set, by name (serving checks them): features this server does not have
    tools: list[Any] | None = None
    tool_choice: Any = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    reasoning: Any = None
    include: list[Any] | None = None
    prompt: Any = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = {"cached_tokens": 0}
    output_tokens: int
    output_tokens_details: dict[str, int] = {"reasoning_tokens": 0}
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[OutputMessage]
    usage: ResponseUsage | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] | None = None
    error: None = None
    # what a client reads of a response made without tools
    tools: list[Any] = []
    tool_choice: Literal["none"] = "none"
    parallel_tool_calls: bool = False
    store: bool = False
    text: dict[str, Any] = {"format": {"type": "text"}}


# ---- OpenAI: speech -------------------------------------------------------------------------------------------

_LANGUAGE, _VOICE = "|".join(speech.LANGUAGES), "|".join([*speech.VOICES, *speech.VARIANTS])


class SpeechRequest(Request):
    """Spoken by espeak-ng: the schema documents the values, seekmoe.multimodal.speech checks them (its
    messages everywhere)."""

    model: str | None = Field(None, description="accepted and ignored (tts-1, gpt-4o-mini-tts...): espeak-ng speaks")
    input: str = Field(description="the text; with Chinese characters it is spoken in Mandarin, else in English",
                       json_schema_extra={"minLength": 1, "maxLength": speech.MAX_CHARS})
    voice: str = Field(description="OpenAI's (alloy...), an espeak-ng variant (f3...), a language (en, zh) or both "
                                   "(zh+f3)",
                       json_schema_extra={"pattern": f"^(({_LANGUAGE})|(({_LANGUAGE})\\+)?({_VOICE}))$"})
    response_format: str = Field("wav", description="pcm: raw 16-bit little-endian mono samples at 24 kHz",
                                 json_schema_extra={"enum": list(speech.FORMATS)})
    speed: float = Field(1.0, description=f"1.0: {speech.WPM} words per minute",
                         json_schema_extra={"minimum": 0.25, "maximum": 4.0})
    instructions: str | None = Field(None, description="accepted and ignored: espeak-ng takes no instructions")


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
