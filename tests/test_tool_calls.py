"""Tool calls: parsing the model's output (whole and streamed), LLM.chat with tools, and /v1/chat/completions
through the openai client, on a tiny model fine-tuned to call a tool."""

from __future__ import annotations

import json

import pytest

from seekmoe.text.tool_calls import (
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    SEP,
    ToolCallStream,
    ToolLoop,
    check_tool_choice,
    parse_tool_calls,
)
from tests.conftest import WEATHER_TOOL, running_server, weather_chat


def block(*calls: tuple[str, str]) -> str:
    return CALLS_BEGIN + "".join(f"{CALL_BEGIN}{n}{SEP}{a}{CALL_END}" for n, a in calls) + CALLS_END


NAMES = {"get_weather", "math"}


@pytest.mark.parametrize(("text", "content", "calls"), [
    ("no tools here", "no tools here", []),
    (block(("get_weather", '{"city": "Paris"}')), "", [("get_weather", {"city": "Paris"})]),
    ("Let me look. " + block(("get_weather", '{"city":"Oslo"}'), ("math", '{"expression": "2+2"}')),
     "Let me look. ", [("get_weather", {"city": "Oslo"}), ("math", {"expression": "2+2"})]),
    (block(("math", "")), "", [("math", {})]),  # no arguments at all: an empty object
])
def test_parse(text, content, calls):
    got_content, got = parse_tool_calls(text, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert len({c.id for c in got}) == len(got) and all(c.id.startswith("call_") for c in got)


@pytest.mark.parametrize("text", [
    block(("get_weather", '{"city": ')),  # arguments cut short
    block(("get_weather", '["Paris"]')),  # not an object
    block(("delete_everything", "{}")),  # a tool nobody offered
    block(("get_weather", '{"city": "Paris"}'))[:-len(CALL_END + CALLS_END)],  # never closed
    CALLS_BEGIN + "just words" + CALLS_END,
    "Sure: " + block(("get_weather", "{}"), ("get_weather", "{oops")),  # one bad call spoils the block
])
def test_output_that_does_not_parse_is_plain_text(text):
    content, calls = parse_tool_calls(text, NAMES)
    assert calls == []
    assert not any(m in content for m in (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP))
    for word in ("Paris", "delete_everything", "just words", "Sure"):
        assert (word in text) == (word in content)


def streamed(text: str, step: int) -> tuple[str, list]:
    stream = ToolCallStream(NAMES)
    items = []
    for i in range(0, len(text), step):
        items += stream.feed(text[i:i + step])
    items += stream.finish()
    return "".join(x for x in items if isinstance(x, str)), [x for x in items if not isinstance(x, str)]


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize("text", [
    "plain text with a < and <｜ but no marker",
    "Checking. " + block(("get_weather", '{"city": "Lima"}'), ("math", '{"expression": "x"}')),
    block(("get_weather", '{"city": ')),
])
def test_streaming_gives_what_parsing_the_whole_gives(text, step):
    content, calls = parse_tool_calls(text, NAMES)
    s_content, s_calls = streamed(text, step)
    assert s_content == content
    assert [(c.name, c.arguments) for c in s_calls] == [(c.name, c.arguments) for c in calls]


def test_streaming_sends_content_before_the_calls_at_once():
    stream = ToolCallStream(NAMES)
    assert stream.feed("Hello ") == ["Hello "]
    assert stream.feed("there <｜tool") == ["there "]  # could be the start of the marker: held
    assert stream.feed("▁calls▁begin｜>") == []
    assert stream.feed(f"{CALL_BEGIN}math{SEP}") == []
    (call,) = stream.feed('{"expression": "1"}' + CALL_END)
    assert call.name == "math" and stream.finish() == []


def test_tool_choice():
    assert check_tool_choice(None, NAMES) is None and check_tool_choice("auto", NAMES) is None
    assert check_tool_choice("none", NAMES) == ""
    assert check_tool_choice("required", NAMES) == CALLS_BEGIN + CALL_BEGIN
    named = {"type": "function", "function": {"name": "math"}}
    assert check_tool_choice(named, NAMES) == CALLS_BEGIN + CALL_BEGIN + "math" + SEP
    with pytest.raises(ValueError, match="not one of the tools"):
        check_tool_choice({"type": "function", "function": {"name": "rm"}}, NAMES)
    with pytest.raises(ValueError, match="tool_choice must be"):
        check_tool_choice("always", NAMES)
    with pytest.raises(ValueError, match="needs tools"):
        check_tool_choice("required", set())


def test_tool_loop_runs_its_calls_then_answers_and_stops_at_max_rounds():
    """The rounds without a model: deltas in, events out; calls it may run are held back and fed back."""
    from types import SimpleNamespace

    def result(content):
        return SimpleNamespace(ok=True, content=content, seconds=0.01)

    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    call = block(("get_weather", '{"city": "Oslo"}'))
    loop = ToolLoop([{"role": "user", "content": "Weather?"}], tools, {"get_weather": "plugin"},
                    tool_choice="required", max_rounds=1)
    assert loop.tool_choice == "required"
    loop.begin()
    assert [e.kind for e in loop.feed("Looking. " + call, "stop")] == ["text"]  # the call is held
    (ran,) = loop.end_round()
    loop.add_results([ran], [result("sunny")])
    assert [m["role"] for m in loop.messages] == ["user", "assistant", "tool"]
    assert loop.messages[1]["content"] == "Looking. " and loop.messages[2]["content"] == "sunny"
    assert loop.tool_choice == "auto"  # a forced call is forced once
    loop.begin()
    assert loop.feed(call, "stop") == []
    assert loop.end_round() == []  # max_rounds reached: this answer is the last, its call goes to the client
    assert [(e.kind, e.finish_reason) for e in loop.finish()] == [("call", None), ("end", "tool_calls")]
    assert [(r.call.name, r.result) for r in loop.trace] == [("get_weather", "sunny")]


def test_tool_loop_returns_calls_it_does_not_run_as_they_come():
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    loop = ToolLoop([], tools)
    loop.begin()
    events = loop.feed(block(("get_weather", "{}")), "stop")
    assert [e.kind for e in events] == ["call"] and loop.end_round() == []
    assert [(e.kind, e.finish_reason) for e in loop.finish()] == [("end", "tool_calls")]


def test_tool_loop_logprobs_follow_what_the_client_gets():
    """Content tokens' logprobs go out with the text; a returned call's with the end, its markers never; those of a
    call run on our side are dropped with it."""
    from types import SimpleNamespace

    def lps(*tokens):
        return [SimpleNamespace(token=t) for t in tokens]

    tools = [{"type": "function", "function": {"name": "f"}}]
    call = block(("f", "{}"))
    tokens = lps("Hi", CALLS_BEGIN, CALL_BEGIN, "f", SEP, "{}", CALL_END, CALLS_END)
    returned = ToolLoop([], tools)
    returned.begin()
    (text, called) = returned.feed("Hi" + call, None, tokens)
    assert text.text == "Hi" and [lp.token for lp in text.logprobs] == ["Hi"] and called.logprobs == []
    assert [lp.token for lp in returned.finish()[-1].logprobs] == ["f", "{}"]
    ran = ToolLoop([], tools, {"f": "plugin"})
    ran.begin()
    ran.feed("Hi" + call, "stop", tokens)
    ran.begin()  # the next round: the call ran, its tokens are not the client's
    assert ran.feed("", "stop", lps("ok")) and ran.finish()[-1].logprobs == []


# ---- a real (tiny, fine-tuned) model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm(tool_model):
    from seekmoe.llm import LLM

    with LLM(tool_model) as llm:
        yield llm


def test_llm_chat_returns_the_calls(llm):
    done = llm.chat(weather_chat("Paris")[:1], tools=[WEATHER_TOOL], temperature=0, max_tokens=40)
    (call,) = done.choices[0].tool_calls
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    assert done.finish_reason == "tool_calls" and done.text == ""
    answer = llm.chat(weather_chat("Paris", answer=False), tools=[WEATHER_TOOL], temperature=0, max_tokens=40)
    assert answer.choices[0].tool_calls == [] and answer.finish_reason == "stop"
    assert answer.text.startswith("It is sunny in ")  # (too small to copy the city; it learned the shape)


def test_llm_chat_tool_choice(llm):
    question = weather_chat("Oslo")[:1]
    none = llm.chat(question, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=20)
    assert none.choices[0].tool_calls == [] and none.finish_reason in ("stop", "length")
    required = llm.chat(question, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=40)
    assert [c.name for c in required.choices[0].tool_calls] == ["get_weather"]
    # off its training, the model is still made to open a call; its arguments may not parse, and then the
    # client gets that text, the forced opening included
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        forced = llm.chat([{"role": "user", "content": "Hello"}], tools=[WEATHER_TOOL], tool_choice=choice,
                          temperature=0, max_tokens=40)
        assert forced.choices[0].tool_calls or forced.text.lstrip().startswith("get_weather")
    with pytest.raises(ValueError, match="not one of the tools"):
        llm.chat(question, tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "x"}})


def test_llm_chat_with_tools_runs_the_plugin(llm):
    from seekmoe.plugins import WorkerPool
    from tests import plugin_fixtures

    with WorkerPool() as pool:
        done, trace = llm.chat_with_tools(weather_chat("Lima")[:1], {"get_weather": plugin_fixtures.WEATHER},
                                          pool=pool, temperature=0, max_tokens=40)
    assert [(t["name"], t["ok"], t["result"]) for t in trace] == [("get_weather", True, "sunny")]
    assert done.finish_reason == "stop" and done.text.startswith("It is sunny in ")


# ---- over HTTP, with the openai client ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tool_model):
    from seekmoe.llm import LLM
    from seekmoe.server.config import ServeConfig

    with running_server(ServeConfig(model=str(tool_model)), lambda: LLM(tool_model)) as (url, app):
        yield url, app


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def test_openai_client_round_trip(client):
    messages = weather_chat("Lima")[:1]
    first = client.chat.completions.create(model="model", messages=messages, tools=[WEATHER_TOOL],
                                           temperature=0, max_tokens=40)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    json.loads(call.function.arguments)  # valid JSON, always
    # the client sends the call and its result back; the model answers from it
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="model", messages=messages, tools=[WEATHER_TOOL],
                                            temperature=0, max_tokens=40)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.tool_calls is None
    assert "sunny" in second.choices[0].message.content


def test_openai_client_streams_tool_calls(client):
    chunks = list(client.chat.completions.create(model="model", messages=weather_chat("Paris")[:1],
                                                 tools=[WEATHER_TOOL], temperature=0, max_tokens=40, stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    json.loads(calls[0].function.arguments)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


def test_no_calls_means_finish_reason_is_not_tool_calls(client):
    done = client.chat.completions.create(model="model", messages=weather_chat("Paris")[:1], tools=[WEATHER_TOOL],
                                          tool_choice="none", temperature=0, max_tokens=8)
    assert done.choices[0].finish_reason in ("stop", "length") and done.choices[0].message.tool_calls is None


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required", "tools": None}, "tool_choice"),
])
def test_bad_tool_requests_are_400(client, extra, param):
    import openai

    body = {"model": "model", "messages": weather_chat("Paris")[:1], "tools": [WEATHER_TOOL], **extra}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**body)
    assert e.value.body["param"] == param


# ---- tools the server runs itself (serve --tools) ------------------------------------------------------------

@pytest.fixture(scope="module")
def tool_server(tool_model):
    """The server runs get_weather itself (the plugin in tests/plugin_fixtures.py), in a worker process."""
    from seekmoe.llm import LLM
    from seekmoe.server.config import ServeConfig
    from tests import plugin_fixtures

    with running_server(ServeConfig(model=str(tool_model), tool_timeout=2.0), lambda: LLM(tool_model)) as (url, app):
        serving = app.state.seekmoe.ready()
        serving.tools = {"get_weather": plugin_fixtures.WEATHER}
        from seekmoe.plugins import WorkerPool

        serving.tool_pool = WorkerPool()
        yield url, serving


def test_server_runs_its_tools_and_answers(tool_server):
    import requests

    url, _ = tool_server
    body = {"messages": weather_chat("Oslo")[:1], "temperature": 0, "max_tokens": 40, "tool_trace": True}
    reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["tool_calls"] is None
    assert choice["message"]["content"].startswith("It is sunny in ")
    (run,) = reply["tool_trace"]
    assert run["name"] == "get_weather" and run["ok"] and run["result"] == "sunny"
    assert reply["usage"]["prompt_tokens"] > 0  # both rounds counted


def test_server_tools_stream_the_final_answer(tool_server):
    import requests

    url, _ = tool_server
    body = {"messages": weather_chat("Lima")[:1], "temperature": 0, "max_tokens": 40, "stream": True}
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text.startswith("It is sunny in ")
    assert not any(e["choices"][0]["delta"].get("tool_calls") for e in events if e["choices"])
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"


def test_a_hanging_tool_becomes_an_error_result_and_the_server_stays_up(tool_server):
    import requests

    from tests import plugin_fixtures

    url, serving = tool_server
    serving.tools = {"get_weather": plugin_fixtures.WEATHER_HANGS}
    try:
        body = {"messages": weather_chat("Paris")[:1], "temperature": 0, "max_tokens": 30, "tool_trace": True}
        reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        run = reply["tool_trace"][0]
        # stopped at its timeout (the plugin sleeps an hour), however slowly a loaded machine then kills it
        assert not run["ok"] and "did not finish within 2 s" in run["result"] and run["seconds"] < 120
        assert requests.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        serving.tools = {"get_weather": plugin_fixtures.WEATHER}


# ---- tools change nothing else: client tools win; n, logprobs and stop as without tools (issue 21) ----------------

LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look something up.", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}


def sse_events(url: str, body: dict) -> list[dict]:
    import requests

    with requests.post(f"{url}/v1/chat/completions", json=body | {"stream": True}, stream=True, timeout=60) as r:
        return [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: {")]


def test_client_tools_win_over_the_servers(tool_server):
    """A request with its own tools gets exactly those: its forced call comes back, the server's plugin never runs."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{tool_server[0]}/v1", api_key="unused", max_retries=0)
    done = client.chat.completions.create(model="model", messages=weather_chat("Oslo")[:1], tools=[LOOKUP],
                                          tool_choice="required", temperature=0, max_tokens=40,
                                          extra_body={"tool_trace": True})
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and [c.function.name for c in choice.message.tool_calls] == ["lookup"]
    assert "q" in json.loads(choice.message.tool_calls[0].function.arguments)
    assert done.model_extra["tool_trace"] == []  # nothing ran on the server
    # without tools of its own, the request gets the server's; tool_choice "none" turns them off
    plain = client.chat.completions.create(model="model", messages=weather_chat("Oslo")[:1], tool_choice="none",
                                           temperature=0, max_tokens=8, extra_body={"tool_trace": True})
    assert plain.model_extra.get("tool_trace") is None and plain.choices[0].message.tool_calls is None


def test_n_choices_each_run_their_own_rounds(tool_server):
    import requests

    url, _ = tool_server
    body = {"messages": weather_chat("Oslo")[:1], "temperature": 0, "max_tokens": 40, "tool_trace": True}
    one = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    three = requests.post(f"{url}/v1/chat/completions", json=body | {"n": 3}, timeout=60).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    for c in three["choices"]:  # greedy: each choice's rounds are the single request's
        assert c["message"] == one["choices"][0]["message"] and c["finish_reason"] == "stop"
    assert [(r["index"], r["name"], r["result"]) for r in three["tool_trace"]] == [
        (i, "get_weather", "sunny") for i in range(3)]
    # usage sums every round of every choice: the first prompt once, each choice's second round and its tokens
    assert three["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    second_prompt = (three["usage"]["prompt_tokens"] - one["usage"]["prompt_tokens"]) / 2
    assert second_prompt == int(second_prompt) and 0 < one["usage"]["prompt_tokens"] - second_prompt < second_prompt
    events = sse_events(url, body | {"n": 2})
    for i in range(2):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == i]
        assert "".join(c["delta"].get("content", "") for c in mine) == one["choices"][0]["message"]["content"]
        assert mine[-1]["finish_reason"] == "stop"


def test_logprobs_are_those_of_the_message_the_client_gets(tool_server, client):
    import requests

    url, _ = tool_server
    body = {"messages": weather_chat("Oslo")[:1], "temperature": 0, "max_tokens": 40, "logprobs": True,
            "top_logprobs": 2}
    reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    # the final answer's tokens (its end of sentence too, as without tools), not those of the call the server ran
    assert "".join(t["token"] for t in content) == choice["message"]["content"] + "<｜end▁of▁sentence｜>"
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    assert all(bytes(t["bytes"]).decode() == t["token"] for t in content)
    streamed = [t for e in sse_events(url, body) if e["choices"] and e["choices"][0]["logprobs"]
                for t in e["choices"][0]["logprobs"]["content"]]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]
    assert [t["logprob"] for t in streamed] == pytest.approx([t["logprob"] for t in content], abs=1e-4)
    # a client's call: the tokens of its name and arguments, not the call markers
    done = client.chat.completions.create(model="model", messages=weather_chat("Paris")[:1], tools=[WEATHER_TOOL],
                                          temperature=0, max_tokens=40, logprobs=True, top_logprobs=1)
    (call,) = done.choices[0].message.tool_calls
    tokens = "".join(t.token for t in done.choices[0].logprobs.content)
    assert tokens.startswith(call.function.name) and "｜tool" not in tokens
    assert json.loads(tokens[len(call.function.name):].removesuffix("<｜end▁of▁sentence｜>")) == json.loads(
        call.function.arguments)


def test_stop_strings_apply_to_content_never_inside_a_call(tool_server, client):
    # "o" is in every call marker ("<｜tool▁calls▁begin｜>") and in the arguments the model writes ("Oslo")
    done = client.chat.completions.create(model="model", messages=weather_chat("Paris")[:1], tools=[WEATHER_TOOL],
                                          temperature=0, max_tokens=40, stop=["o", "tool", "city"])
    assert done.choices[0].finish_reason == "tool_calls" and done.choices[0].message.tool_calls[0].function.name == (
        "get_weather")
    forced = client.chat.completions.create(model="model", messages=weather_chat("Oslo")[:1], tools=[WEATHER_TOOL],
                                            tool_choice="required", temperature=0, max_tokens=40, stop=["o", "}"])
    assert forced.choices[0].finish_reason == "tool_calls"  # generation starts inside the forced call's block
    # the server runs the call whole; the answer's content is cut before its stop string, as without tools
    import requests

    body = {"messages": weather_chat("Lima")[:1], "temperature": 0, "max_tokens": 40, "stop": ["o", "sunny"],
            "tool_trace": True}
    reply = requests.post(f"{tool_server[0]}/v1/chat/completions", json=body, timeout=60).json()
    assert [r["name"] for r in reply["tool_trace"]] == ["get_weather"]
    assert reply["choices"][0]["message"]["content"] == "It is " and reply["choices"][0]["finish_reason"] == "stop"
