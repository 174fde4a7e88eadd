"""Chat messages to prompt text, through the Jinja template stored in tokenizer_config.json (as transformers does).

The default template is DeepSeek's: begin-of-sentence, the system prompt, then alternating user and assistant
turns marked by role tokens, each assistant turn closed by end-of-sentence; with a generation prompt it ends on
the assistant role token, where the model writes its answer.

Tools follow DeepSeek-V3.1's layout. The offered tools (OpenAI's `tools` list) are described in the system prompt,
with the format to call them; an assistant turn that calls tools ends with `<｜tool▁calls▁begin｜>`, then per call
`<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{"json": "arguments"}<｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`;
the results (role "tool") come back wrapped in the tool-output tokens, consecutive ones in one block.
"""

from __future__ import annotations

import json
from functools import lru_cache

TOOLS_HEADER = (
    "## Tools\nYou can call these tools. To call one, write <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME"
    "<｜tool▁sep｜>ARGUMENTS AS JSON<｜tool▁call▁end｜><｜tool▁calls▁end｜>; its result comes back as a tool output."
)

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(tools='') %}"
    "{% if tools %}{% set ns.tools = '" + TOOLS_HEADER.replace("\n", "\\n") + "' %}"
    "{% for tool in tools %}{% set f = tool['function'] if tool['function'] is defined else tool %}"
    "{% set ns.tools = ns.tools + '\\n\\n### ' + f['name'] + '\\n' + (f['description'] or '') + '\\nParameters: '"
    " + ((f['parameters'] if f['parameters'] is defined else {}) | tojson) %}"
    "{% endfor %}{% endif %}"
    "{% if ns.tools and messages[0]['role'] != 'system' %}{{ '<｜System｜>' + ns.tools }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<｜System｜>' + message['content'] }}"
    "{% if loop.first and ns.tools %}{{ '\\n\\n' + ns.tools }}{% endif %}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + (message['content'] or '') }}"
    "{% if message['tool_calls'] %}{{ '<｜tool▁calls▁begin｜>' }}"
    "{% for call in message['tool_calls'] %}{% set f = call['function'] if call['function'] is defined else call %}"
    "{{ '<｜tool▁call▁begin｜>' + f['name'] + '<｜tool▁sep｜>' }}"
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    "{{ '<｜tool▁call▁end｜>' }}{% endfor %}{{ '<｜tool▁calls▁end｜>' }}{% endif %}"
    "{{ eos_token }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or loop.previtem['role'] != 'tool' %}{{ '<｜tool▁outputs▁begin｜>' }}{% endif %}"
    "{{ '<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>' }}"
    "{% if loop.last or loop.nextitem['role'] != 'tool' %}{{ '<｜tool▁outputs▁end｜>' }}{% endif %}"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 10_000
MAX_TOOLS = 128


class ChatError(ValueError):
    """Messages that cannot be rendered: wrong shape, unknown role, a template that fails."""


def _tool_calls(calls: object, where: str) -> list[dict]:
    """OpenAI's tool_calls, each {"id"?, "type": "function", "function": {"name", "arguments"}}, with the
    arguments as a JSON string (an object given is dumped the way the template's tojson would)."""
    if not isinstance(calls, list) or not calls:
        raise ChatError(f"{where}.tool_calls must be a non-empty list")
    out = []
    for j, call in enumerate(calls):
        f = call.get("function") if isinstance(call, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ChatError(f"{where}.tool_calls[{j}] must be {{'type': 'function', 'function': {{'name': ..., "
                            "'arguments': ...}}")
        arguments = f.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        out.append({**({"id": call["id"]} if isinstance(call.get("id"), str) else {}), "type": "function",
                    "function": {"name": f["name"], "arguments": arguments}})
    return out


def check_messages(messages: object) -> list[dict]:
    """[{"role": ..., "content": str}, ...] with roles system/user/assistant/tool (an assistant message may carry
    tool_calls instead of content); a clear error for anything else."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    if len(messages) > MAX_MESSAGES:
        raise ChatError(f"messages holds {len(messages)} messages; at most {MAX_MESSAGES}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        checked = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            checked["tool_calls"] = _tool_calls(m["tool_calls"], f"messages[{i}]")
            checked["content"] = content if content is not None else ""
        if not isinstance(checked["content"], str):
            raise ChatError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append(checked)
    return out


def check_tools(tools: object) -> list[dict] | None:
    """OpenAI's tools list ({"type": "function", "function": {"name", "description"?, "parameters"?}}), or None."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)) or len(tools) > MAX_TOOLS:
        raise ChatError(f"tools must be a list of at most {MAX_TOOLS} function definitions")
    out = []
    for i, tool in enumerate(tools):
        f = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ChatError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        if not isinstance(f.get("description", ""), str) or not isinstance(f.get("parameters", {}), dict):
            raise ChatError(f"tools[{i}].function: description must be a string and parameters an object")
        out.append({"type": "function", "function": {k: f[k] for k in ("name", "description", "parameters")
                                                      if k in f}})
    return out or None


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers replaces Jinja's tojson (which escapes <, >, & and ' for HTML) with plain json.dumps
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    # the environment transformers renders chat templates in, so the same template gives the same text
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(messages: object, template: str, bos_token: str, eos_token: str,
                add_generation_prompt: bool = True, tools: object = None) -> str:
    """The prompt text for `messages` (a list of role/content dicts), with `tools` offered when given."""
    from jinja2 import TemplateError

    checked = check_messages(messages)
    try:
        return _compile(template).render(messages=checked, bos_token=bos_token, eos_token=eos_token,
                                         add_generation_prompt=add_generation_prompt, tools=check_tools(tools))
    except TemplateError as e:
        raise ChatError(f"chat template: {e}") from None
