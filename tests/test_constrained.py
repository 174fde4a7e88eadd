"""Constrained decoding (issue 21): the engine masks each constrained row and no other; JSON Schema, any JSON object,
Lark and tool-call grammars compiled by llguidance; response_format, forced and strict tool calls and /v2/generate's
json_schema and grammar over a real server, driven by the openai package, on tiny random models."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import numpy as np
import openai
import pydantic
import pytest
import requests
import torch

from seekmoe.engine.engine import Engine
from seekmoe.engine.sampling import SamplingParams, SeqSampler, TokenConstraint, process_logits, sample
from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server import errors
from seekmoe.server.config import ServeConfig
from seekmoe.text.grammar import GrammarError, Grammars
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.text.tool_calls import CALL_BEGIN, CALLS_BEGIN, SEP
from tests.conftest import running_server, tiny_model, tiny_model_folder

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled tokenizer")

KEY = "sk-constrained"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "Describe the weather as JSON."}]
# answers that end within a few tokens even from a random model: booleans, enums, small integers, short strings
ANSWER = {"type": "object", "additionalProperties": False, "required": ["ok", "kind", "n"],
          "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["sun", "rain", "snow"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 9},
                         "note": {"type": "string", "maxLength": 6}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                   "properties": {"zone": {"enum": ["UTC", "CET"]}}}}}


class Allow:
    """A TokenConstraint for engine tests: only `allowed` tokens, done after `length` of them."""

    def __init__(self, allowed: set[int], length: int):
        self.allowed, self.length, self.taken = allowed, length, []

    def fill_bitmask(self, out_W: torch.Tensor) -> None:
        bits = np.zeros(out_W.numel() * 32, dtype=bool)
        bits[list(self.allowed)] = True
        out_W.copy_(torch.from_numpy(np.packbits(bits, bitorder="little").view(np.int32).copy()))

    def advance(self, token_id: int) -> None:
        assert token_id in self.allowed, token_id
        self.taken.append(token_id)

    @property
    def done(self) -> bool:
        return len(self.taken) >= self.length

    def fork(self) -> Allow:
        return Allow(self.allowed, self.length)


# ---- the engine: one mask per constrained row ------------------------------------------------------------------

def test_a_mask_touches_its_row_only_and_reads_every_bit():
    V = 100
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
    allowed = {0, 31, 32, 63, 64, 99}  # both ends of a word, the last token
    rows = [SeqSampler(SamplingParams(temperature=0), [], V),
            SeqSampler(SamplingParams(temperature=0), [], V, constraint=Allow(allowed, 5)),
            SeqSampler(SamplingParams(temperature=0.7, top_p=0.9, seed=1), [], V)]
    x = process_logits(logits, rows)
    plain = process_logits(logits, [rows[0], SeqSampler(SamplingParams(temperature=0), [], V), rows[2]])
    assert torch.equal(x[0], plain[0]) and torch.equal(x[2], plain[2])
    assert {i for i in range(V) if x[1, i] > -torch.inf} == allowed
    assert torch.equal(x[1, sorted(allowed)], logits[1, sorted(allowed)])
    assert sample(logits, rows)[1].token_id == max(allowed, key=lambda t: logits[1, t].item())
    assert isinstance(Allow(allowed, 1), TokenConstraint)


def test_sampled_rows_draw_only_allowed_tokens_and_unconstrained_batches_are_unchanged():
    V = 64
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(1))
    free = [SeqSampler(SamplingParams(seed=i), [], V) for i in range(8)]
    alone = [s.token_id for s in sample(logits, free)]
    free = [SeqSampler(SamplingParams(seed=i), [], V) for i in range(8)]
    mixed = free[:4] + [SeqSampler(SamplingParams(seed=i, temperature=1.5), [], V, constraint=Allow({3, 40}, 9))
                        for i in range(4)]
    drawn = [s.token_id for s in sample(logits, mixed)]
    assert drawn[:4] == alone[:4]  # each row draws with its own generator: the masks beside it change nothing
    assert set(drawn[4:]) <= {3, 40}


def test_the_engine_stops_a_complete_grammar_and_batches_it_with_free_requests():
    model = tiny_model()
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    alone = Engine(model, cache_tokens=256).generate([prompts[0]], greedy)[0][0]
    engine = Engine(model, cache_tokens=256)
    free = engine.add_request(prompts[0], greedy)
    constrained = engine.add_request(prompts[1], SamplingParams(max_tokens=12, temperature=0.9, seed=3, n=3),
                                     constraint=Allow({20, 21, 22}, 4))
    finish = {}
    while engine.has_work:
        for req, out in engine.step():
            if out.finish_reason is not None:
                finish[(req.id, out.index)] = out.finish_reason
    assert free.seqs[0].tokens[len(prompts[0]):] == alone
    for seq in constrained.seqs:  # n = 3: each sequence its own copy of the grammar's state
        assert seq.tokens[len(prompts[1]):] == seq.sampler.constraint.taken
        assert len(seq.sampler.constraint.taken) == 4 and set(seq.sampler.constraint.taken) <= {20, 21, 22}
        assert finish[(constrained.id, seq.index)] == "stop"
    assert len({id(s.sampler.constraint) for s in constrained.seqs}) == 3


# ---- grammars ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def grammars(tok):
    return Grammars(tok, tok.vocab_size + 7, tok.eos_id)  # a model's vocabulary may be wider than the tokenizer's


def follows(grammar, tok, text: str) -> bool:
    """Whether the grammar takes text (special-token text as the tokens) and is then complete."""
    m = grammar.matcher()
    out = torch.empty((tok.vocab_size + 7 + 31) // 32, dtype=torch.int32)
    for t in tok.encode(text):
        m.fill_bitmask(out)
        if not (int(out[t // 32]) >> (t % 32)) & 1:
            return False
        m.advance(t)
    return m.done


def test_tool_call_grammars_take_valid_calls_only(grammars, tok):
    tools = [WEATHER, TIME]
    named = grammars.chat(tools, CALLS_BEGIN + CALL_BEGIN + "get_weather" + SEP)
    assert follows(named, tok, '{"city": "Oslo", "days": 3}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    assert not follows(named, tok, '{"city": "Rome", "days": 3}')
    required = grammars.chat(tools, CALLS_BEGIN + CALL_BEGIN)
    two = ('get_time<｜tool▁sep｜>{"zone": "UTC"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>'
           '{"city": "Lima", "days": 7}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    assert follows(required, tok, two)
    assert not follows(grammars.chat(tools, CALLS_BEGIN + CALL_BEGIN, parallel=False), tok, two)
    assert not follows(required, tok, 'get_date<｜tool▁sep｜>{}')
    assert grammars.chat(tools, None) is None  # auto, nothing strict: the model is free
    strict = grammars.chat([{**WEATHER, "function": {**WEATHER["function"], "strict": True}}, TIME], None)
    assert follows(strict, tok, "Let me look. <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
                                '{"city": "Paris", "days": 1}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    assert not follows(strict, tok, '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": 1')
    assert follows(strict, tok, '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"any": [1]}'
                                "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")  # not strict: any object
    answer = grammars.chat(tools, None, json_schema=ANSWER)
    assert follows(answer, tok, '{"ok": true, "kind": "sun", "n": 4}')
    assert not follows(answer, tok, "Hello")


@pytest.mark.parametrize(("schema", "needle"), [
    ({"type": "wrong"}, "is not valid under any of the given schemas (at type)"),
    ({"type": "object", "required": "city"}, "is not of type 'array' (at required)"),
    ({"not": {"type": "string"}}, "Unimplemented keys"),
    ({"$ref": "#/definitions/missing"}, "does not exist"),
    ([1, 2], "must be an object"),
    ({"type": "integer", "maximum": 10**40}, "cannot be compiled"),  # found by test_server_fuzz: was a 500
])
def test_a_bad_schema_is_a_grammar_error(grammars, schema, needle):
    with pytest.raises(GrammarError) as err:
        grammars.json(schema)
    assert needle in str(err.value) and err.value.tool is None
    assert errors.http_error(err.value).status == 400


def test_strict_false_ignores_keywords_the_compiler_lacks(grammars):
    assert grammars.json({"type": "object", "not": {"required": ["x"]}}, strict=False) is not None
    bad = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": 3}}}
    with pytest.raises(GrammarError) as err:  # a strict tool's schema is checked even when another is forced
        grammars.chat([WEATHER, bad], CALLS_BEGIN + CALL_BEGIN + "get_weather" + SEP)
    assert err.value.tool == 1


# ---- the Python API ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("constrained"), max_position_embeddings=512)


@pytest.fixture(scope="module")
def llm(folder):
    with LLM(folder) as llm:
        yield llm


@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.5])
def test_json_schema_output_parses_and_validates(llm, temperature):
    for seed in range(4):
        c = llm.generate("Today", json_schema=ANSWER, max_tokens=60, temperature=temperature, seed=seed)
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), ANSWER)


def test_any_json_object_is_valid_when_it_stops_and_length_when_cut(llm):
    reasons = []
    for seed, temperature in [(s, t) for s in range(6) for t in (0.7, 1.3)]:
        c = llm.generate("Data:", json_schema={"type": "object"}, max_tokens=120, temperature=temperature, seed=seed)
        reasons.append(c.finish_reason)
        assert c.text.startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:  # max_tokens ran out mid-object
            assert c.finish_reason == "length" and len(c.token_ids) == 120
    assert "stop" in reasons, reasons
    cut = llm.generate("Data:", json_schema=ANSWER, max_tokens=3, temperature=0)
    assert cut.finish_reason == "length" and len(cut.token_ids) == 3


def test_a_lark_grammar(llm):
    for seed in range(3):
        c = llm.generate("Answer:", grammar='start: "yes" | "no" | "maybe " NUMBER\nNUMBER: /[0-9]{1,2}/',
                         temperature=1.0, seed=seed, max_tokens=10)
        assert c.finish_reason == "stop" and (c.text in ("yes", "no") or c.text.startswith("maybe ")), c.text


def test_constrained_and_free_requests_in_one_batch_each_get_their_own(llm):
    greedy = llm.params(max_tokens=12, temperature=0, ignore_eos=True)
    ids = llm.encode("Once upon a time")
    alone = llm.submit(ids, greedy).result()
    free = llm.submit(ids, greedy)
    constrained = llm.submit(ids, llm.params(max_tokens=60, temperature=0), grammar=llm.grammar(json_schema=ANSWER))
    assert free.result().token_ids == alone.token_ids
    answer = constrained.result()
    assert answer.finish_reason == "stop"
    jsonschema.validate(json.loads(answer.text), ANSWER)


def test_chat_forces_valid_calls(llm):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, parallel in (("required", False), ("required", True), (named, True)):
        c = llm.chat(USER, tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=parallel, max_tokens=80,
                     temperature=1.0, seed=2, n=3)
        for ch in c.choices:
            if parallel and choice == "required" and ch.finish_reason == "length":
                continue  # a random model may go on calling until max_tokens: the block never closes
            assert ch.finish_reason == "tool_calls" and ch.tool_calls, ch.text
            assert len(ch.tool_calls) == 1 or parallel
            for call in ch.tool_calls:
                tool = {"get_weather": WEATHER, "get_time": TIME}[call.name]
                jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])
            if choice == named:
                assert [call.name for call in ch.tool_calls] == ["get_weather"]


# ---- the server ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url(folder):
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(folder)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(url + path, headers=AUTH, json=body, timeout=60)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_response_format_json_object_and_json_schema(client, temperature):
    for seed in range(3):
        r = client.chat.completions.create(model=None, messages=USER, response_format={"type": "json_object"},
                                           max_tokens=100, temperature=temperature, seed=seed)
        c = r.choices[0]
        assert c.finish_reason in ("stop", "length") and c.message.content.startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict)
        fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": ANSWER, "strict": True}}
        r = client.chat.completions.create(model=None, messages=USER, response_format=fmt, max_tokens=60,
                                           temperature=temperature, seed=seed, n=2)
        for c in r.choices:
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.message.content), ANSWER)


class Weather(pydantic.BaseModel):
    sunny: bool
    kind: Literal["sun", "rain", "snow"]
    days: int = pydantic.Field(ge=1, le=7)


def test_the_openai_clients_parse_with_a_pydantic_model(client):
    for seed in range(3):
        r = client.chat.completions.parse(model=None, messages=USER, response_format=Weather,
                                          max_tokens=60, temperature=1.0, seed=seed)
        assert isinstance(r.choices[0].message.parsed, Weather), r.choices[0].message.content


def test_streamed_json_is_the_same_json(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": ANSWER}}
    ask = dict(model=None, messages=USER, response_format=fmt, max_tokens=60, temperature=0)
    whole = client.chat.completions.create(**ask)
    chunks = client.chat.completions.create(**ask, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and json.loads(text)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_tool_choice_gives_tool_calls_that_match_the_schema(client, choice):
    for seed in range(3):
        r = client.chat.completions.create(model=None, messages=USER, tools=[WEATHER, TIME], tool_choice=choice,
                                           max_tokens=60, temperature=1.0, seed=seed, parallel_tool_calls=False)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
        call = c.message.tool_calls[0].function
        tool = {"get_weather": WEATHER, "get_time": TIME}[call.name]
        jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])
        if isinstance(choice, dict):
            assert call.name == "get_time"


def test_a_forced_call_streams_as_a_tool_call(client):
    chunks = list(client.chat.completions.create(model=None, messages=USER, tools=[WEATHER], tool_choice="required",
                                                 max_tokens=60, temperature=0, stream=True))
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(calls) >= 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_strict_tool_under_auto_gets_valid_arguments_if_called(client):
    strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
    r = client.chat.completions.create(model=None, messages=USER, tools=[strict], max_tokens=60, temperature=1.0,
                                       seed=0, n=6)
    for c in r.choices:
        assert c.finish_reason in ("stop", "length", "tool_calls")
        for call in c.message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_bad_schemas_are_400_in_openai_words(url):
    bad = {"type": "object", "properties": {"a": {"type": "nonsense"}}}
    r = post(url, "/v1/chat/completions", {"messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": bad}}})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["message"].startswith("Invalid schema for response_format 'answer': ") and "nonsense" in e["message"]
    assert (e["type"], e["param"], e["code"]) == ("invalid_request_error", "response_format", "invalid_json_schema")
    tool = {"type": "function", "function": {"name": "broken", "parameters": bad}}
    for choice, strict in (("required", False), ("auto", True)):
        r = post(url, "/v1/chat/completions", {"messages": USER, "tool_choice": choice, "tools": [
            WEATHER, {"type": "function", "function": {**tool["function"], "strict": strict}}]})
        assert r.status_code == 400, r.text
        e = r.json()["error"]
        assert e["message"].startswith("Invalid schema for function 'broken': ")
        assert (e["param"], e["code"]) == ("tools[1].function.parameters", "invalid_function_parameters")
    r = post(url, "/v1/chat/completions", {"messages": USER, "response_format": {"type": "json_schema"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema", r.text
    r = post(url, "/v1/chat/completions", {"messages": USER, "response_format": {"type": "xml"}})
    assert r.status_code == 400, r.text


def test_generate_takes_a_json_schema_or_a_grammar(url):
    r = post(url, "/v2/generate", {"prompt": "Weather:", "json_schema": ANSWER, "max_tokens": 60, "temperature": 0})
    assert r.status_code == 200 and r.json()["finish_reason"] == "stop", r.text
    jsonschema.validate(json.loads(r.json()["generated_text"]), ANSWER)
    r = post(url, "/v2/generate", {"prompt": "Weather:", "grammar": 'start: "sunny" | "rainy"', "temperature": 1.0})
    assert r.status_code == 200 and r.json()["generated_text"] in ("sunny", "rainy"), r.text
    for body, param, code in [({"json_schema": {"type": 7}}, "json_schema", "invalid_json_schema"),
                              ({"grammar": "start: missing_rule"}, "grammar", "invalid_grammar"),
                              ({"grammar": 'start: "a"', "json_schema": {}}, "grammar", None)]:
        r = post(url, "/v2/generate", {"prompt": "x", **body})
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
