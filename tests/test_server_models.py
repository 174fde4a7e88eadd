"""Model names (GET /v1/models/{model}, --served-model-name with aliases) and OpenAI's deprecated functions /
function_call on chat completions (issue 21). A real server on loopback with a tiny random model, driven by the
openai package and plain HTTP."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests

from seekmoe.cli.main import build_parser
from seekmoe.cli.serve import config_from_args
from seekmoe.errors import CLIError
from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled tokenizer")

KEY = "sk-models"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAMES = ("tiny-moe", "org/tiny", "gpt-3.5-turbo")  # the first is what answers report
USER = [{"role": "user", "content": "What is the weather?"}]
# arguments a random model ends within a few tokens: an enum and a small integer
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                          "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}
TIME = {"name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                           "properties": {"zone": {"enum": ["UTC", "CET"]}}}}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    folder = tiny_model_folder(tmp_path_factory.mktemp("models"), max_position_embeddings=512)  # room for tools
    config = ServeConfig(api_keys=(KEY,), served_model_name=NAMES[0], served_model_aliases=NAMES[1:])
    with running_server(config, lambda: LLM(folder)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=60)


# ---- model names ------------------------------------------------------------------------------------------------

def test_every_served_name_is_listed_and_retrievable(client, url):
    listed = client.models.list().data
    assert [m.id for m in listed] == list(NAMES)
    for card in listed:
        got = client.models.retrieve(card.id)
        assert got.model_dump() == card.model_dump() and got.object == "model" and got.owned_by == "seekmoe"
        assert isinstance(got.created, int)
    r = requests.get(f"{url}/v1/models/org/tiny", headers=AUTH, timeout=30)  # a name with a slash, unescaped
    assert r.status_code == 200 and r.json()["id"] == "org/tiny"


def test_an_unknown_model_is_404_in_openais_shape(client, url):
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.body == {"message": "The model 'gpt-4o' does not exist", "type": "invalid_request_error",
                            "param": "model", "code": "model_not_found"}
    r = requests.get(f"{url}/v1/models/tiny-moe", timeout=30)  # the same keys as every /v1 route
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    metrics = requests.get(f"{url}/metrics", headers=AUTH, timeout=30).text  # one label, whatever the name
    assert 'endpoint="/v1/models/{model}",status="404"' in metrics and "gpt-4o" not in metrics


def test_requests_may_name_any_served_name_and_answers_report_the_first(client):
    for name in (*NAMES, None):
        r = client.chat.completions.create(model=name, messages=USER, max_tokens=2)
        assert r.model == NAMES[0]
        c = client.completions.create(model=name, prompt="Hi", max_tokens=2)
        assert c.model == NAMES[0]
    with pytest.raises(openai.NotFoundError) as e:  # a name the server does not serve is refused, as before
        client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and "'tiny-moe', 'org/tiny'" in e.value.body["message"]


def test_served_model_name_flag_and_environment():
    def config(*argv: str, env: dict[str, str] | None = None) -> ServeConfig:
        return config_from_args(build_parser().parse_args(["serve", *argv]), environ=env or {})

    c = config("--served-model-name", "a", "org/b", "a")
    assert (c.served_model_name, c.served_model_aliases) == ("a", ("org/b",))
    c = config(env={"SEEKMOE_SERVED_MODEL_NAME": "x, y"})
    assert (c.served_model_name, c.served_model_aliases) == ("x", ("y",))
    c = config("--served-model-name", "m", env={"SEEKMOE_SERVED_MODEL_NAME": "x,y"})  # the flag wins
    assert (c.served_model_name, c.served_model_aliases) == ("m", ())
    c = config()
    assert (c.served_model_name, c.served_model_aliases) == (None, ())  # the model folder's name
    with pytest.raises(CLIError, match="served model name"):
        config("--served-model-name", " ")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--served-model-name"])


# ---- deprecated functions / function_call -----------------------------------------------------------------------

@pytest.mark.parametrize("choice,name", [({"name": "get_time"}, "get_time"), ({"name": "get_weather"}, "get_weather")])
def test_a_forced_function_call_comes_back_in_the_old_shape(client, choice, name):
    for seed in range(2):
        r = client.chat.completions.create(model=NAMES[1], messages=USER, functions=[WEATHER, TIME],
                                           function_call=choice, max_tokens=60, temperature=1.0, seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "function_call" and c.message.tool_calls is None, c
        assert c.message.content is None and c.message.function_call.name == name
        jsonschema.validate(json.loads(c.message.function_call.arguments),
                            {"get_weather": WEATHER, "get_time": TIME}[name]["parameters"])


def test_a_forced_function_call_streams_in_the_old_shape(client):
    chunks = list(client.chat.completions.create(model=None, messages=USER, functions=[WEATHER],
                                                 function_call={"name": "get_weather"}, max_tokens=60,
                                                 temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.tool_calls for d in deltas)
    calls = [d.function_call for d in deltas if d.function_call is not None]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    assert chunks[-1].choices[0].finish_reason == "function_call"


def test_function_call_none_and_auto(client):
    r = client.chat.completions.create(model=None, messages=USER, functions=[WEATHER], function_call="none",
                                       max_tokens=4)
    c = r.choices[0]
    assert c.message.function_call is None and c.message.tool_calls is None and c.finish_reason == "length"
    r = client.chat.completions.create(model=None, messages=USER, functions=[WEATHER], function_call="auto",
                                       max_tokens=8, temperature=1.0, seed=0)
    c = r.choices[0]
    assert c.message.tool_calls is None and c.finish_reason in ("stop", "length", "function_call")
    assert (c.finish_reason == "function_call") == (c.message.function_call is not None)


def test_a_conversation_in_the_old_shape_is_read(url):
    messages = [*USER, {"role": "assistant", "content": None,
                        "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}},
                {"role": "function", "name": "get_weather", "content": "sunny"}]
    r = post(url, {"messages": messages, "functions": [WEATHER], "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["tool_calls"] is None


@pytest.mark.parametrize("extra,param,needle", [
    ({"functions": [WEATHER], "tools": [{"type": "function", "function": TIME}]}, "functions", "not both"),
    ({"functions": [WEATHER], "function_call": "auto", "tool_choice": "auto"}, "function_call", "not both"),
    ({"functions": [WEATHER], "function_call": {"name": "rm"}}, "function_call", "'rm'"),
    ({"function_call": {"name": "get_weather"}}, "function_call", "needs tools"),
    ({"functions": [{"name": "broken", "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}}}],
      "function_call": {"name": "broken"}}, "functions[0].parameters", "broken"),
])
def test_refusals_name_the_deprecated_fields(url, extra, param, needle):
    r = post(url, {"messages": USER, "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == param and needle in e["message"], e
