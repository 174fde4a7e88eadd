"""The chat template: the same text as transformers' apply_chat_template, and clear errors for bad messages."""

from __future__ import annotations

import pytest

from seekmoe.chat import DEFAULT_CHAT_TEMPLATE, ChatError, render_chat
from seekmoe.llm import DEFAULT_MODEL
from seekmoe.tokenizer import Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}],
    [{"role": "user", "content": "天气如何？"}, {"role": "assistant", "content": "晴。"}],
    [{"role": "user", "content": "Integrate x"}, {"role": "assistant", "content": "calling the tool"},
     {"role": "tool", "content": "x**2/2"}, {"role": "tool", "content": "ok"},
     {"role": "assistant", "content": "x²/2"}, {"role": "tool", "content": "again"}],
    [{"role": "user", "content": "  spaces \n and newlines\n\n"}, {"role": "assistant", "content": ""}],
]
TOOLS = [
    {"type": "function", "function": {"name": "math", "description": "Symbolic math: <solve> & \"simplify\".",
                                      "parameters": {"type": "object", "properties": {"expression": {
                                          "type": "string", "description": "e.g. x^2 - 1 = 0"}}}}},
    {"type": "function", "function": {"name": "weather"}},
]
CALLS = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Solve x² = 4 and tell me the weather"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "math", "arguments": '{"expression": "x^2 = 4"}'}},
        {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"answer": "[-2, 2]"}'},
    {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
    {"role": "assistant", "content": "x = ±2; sunny."},
]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))


def test_bundled_tokenizer_carries_the_default_template(ours):
    assert ours.chat_template == DEFAULT_CHAT_TEMPLATE


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_same_text_and_ids_as_transformers(ours, hf, messages, add_generation_prompt):
    text = render_chat(messages, ours.chat_template, ours.bos_token, ours.eos_token, add_generation_prompt)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                 return_dict=False)
    assert ours.apply_chat_template(messages, add_generation_prompt) == list(ids)


@pytest.mark.parametrize("messages", [CALLS, CALLS[1:], CALLS[:2]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tools_and_tool_calls_same_as_transformers(ours, hf, messages, add_generation_prompt):
    text = render_chat(messages, ours.chat_template, ours.bos_token, ours.eos_token, add_generation_prompt, TOOLS)
    assert text == hf.apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                          add_generation_prompt=add_generation_prompt)
    ids = hf.apply_chat_template(messages, tools=TOOLS, tokenize=True, return_dict=False,
                                 add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt, tools=TOOLS) == list(ids)


def test_tool_layout(ours):
    text = render_chat(CALLS[1:3], ours.chat_template, "<s>", "</s>", False, TOOLS[1:])
    assert text == ("<s><｜System｜>## Tools\nYou can call these tools. To call one, write <｜tool▁calls▁begin｜>"
                    "<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS AS JSON<｜tool▁call▁end｜><｜tool▁calls▁end｜>; "
                    "its result comes back as a tool output.\n\n### weather\n\nParameters: {}"
                    "<｜User｜>Solve x² = 4 and tell me the weather<｜Assistant｜><｜tool▁calls▁begin｜>"
                    '<｜tool▁call▁begin｜>math<｜tool▁sep｜>{"expression": "x^2 = 4"}<｜tool▁call▁end｜>'
                    "<｜tool▁call▁begin｜>weather<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜></s>")
    # arguments given as an object render as the JSON transformers' tojson writes
    as_object = [CALLS[1], {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "math", "arguments": {"expression": "x^2 = 4"}}},
        {"type": "function", "function": {"name": "weather", "arguments": {}}}]}]
    assert render_chat(as_object, ours.chat_template, "<s>", "</s>", False, TOOLS[1:]) == text


def test_layout(ours):
    text = render_chat(CONVERSATIONS[3], ours.chat_template, "<s>", "</s>", add_generation_prompt=True)
    assert text == ("<s><｜User｜>Integrate x<｜Assistant｜>calling the tool</s>"
                    "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>x**2/2<｜tool▁output▁end｜>"
                    "<｜tool▁output▁begin｜>ok<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
                    "<｜Assistant｜>x²/2</s>"
                    "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>again<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
                    "<｜Assistant｜>")
    # every role marker is one special id, so a conversation's structure survives tokenisation
    ids = ours.apply_chat_template(CONVERSATIONS[3])
    assert ids.count(ours.token_to_id("<｜tool▁outputs▁begin｜>")) == 2
    assert ids.count(ours.eos_id) == 2


@pytest.mark.parametrize(("messages", "needle"), [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "messages[0].content must be a string"),
    ([{"role": "robot", "content": "x"}], "messages[0].role must be one of"),
    ([{"role": "user", "content": "x"}, ["user", "y"]], "messages[1] must be an object"),
    ([{"role": "user", "content": 3}], "must be a string, got int"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}],
     "messages[0].tool_calls[0] must be"),
    ([{"role": "assistant", "content": None}], "messages[0].content must be a string, got NoneType"),
])
def test_bad_messages(ours, messages, needle):
    with pytest.raises(ChatError, match=None) as e:
        render_chat(messages, ours.chat_template, ours.bos_token, ours.eos_token)
    assert needle in str(e.value)


@pytest.mark.parametrize(("tools", "needle"), [
    ("math", "tools must be a list"),
    ([{"type": "function"}], "tools[0] must be"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "parameters an object"),
    ([{"type": "function", "function": {"name": "f"}}] * 200, "at most 128"),
])
def test_bad_tools(ours, tools, needle):
    with pytest.raises(ChatError) as e:
        render_chat(CALLS[:2], ours.chat_template, ours.bos_token, ours.eos_token, tools=tools)
    assert needle in str(e.value)


def test_template_that_raises_is_a_chat_error():
    template = "{{ raise_exception('no system prompts here') }}"
    with pytest.raises(ChatError, match="no system prompts here"):
        render_chat([{"role": "user", "content": "x"}], template, "<s>", "</s>")


def test_sandboxed_template_cannot_reach_python():
    template = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatError):
        render_chat([{"role": "user", "content": "x"}], template, "<s>", "</s>")
