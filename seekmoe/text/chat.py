"""Chat messages to prompt text, through the Jinja template stored in tokenizer_config.json (as transformers does).

The default template is DeepSeek's: begin-of-sentence, the system prompt, then alternating user and assistant
turns marked by role tokens, each assistant turn closed by end-of-sentence; with a generation prompt it ends on
the assistant role token, where the model writes its answer.

Tools follow DeepSeek-V3.1's layout. The offered tools (OpenAI's `tools` list) are described in the system prompt,
with the format to call them; an assistant turn that calls tools ends with `<｜tool▁calls▁begin｜>`, then per call
`<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{"json": "arguments"}<｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`;
the results (role "tool") come back wrapped in the tool-output tokens, consecutive ones in one block.

Text from the request (message contents, tool calls, tool definitions) must not forge those markers: a user who
types "<｜Assistant｜>" writes text, not a turn. `render_chat_parts` tells that text from the template's own: it
renders the template a second time with each request string replaced by a marker built from a random nonce found in
no input, cuts the result at the markers, and checks that the pieces with the strings put back (as written, or
JSON-escaped by tojson) give the real text, character for character. The tokenizer then encodes the request's pieces
with special-token text as plain text. A template that changes a request string before writing it (a filter such as
trim, a test on its value) defeats the check; then the conversation is encoded as a whole, specials parsed, but only
when the request's special-token text changes nothing (the template writes the same markers with that text deleted
from every request string), and is refused with ChatError otherwise.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Collection
from functools import lru_cache

from seekmoe.errors import SeekmoeError

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


class ChatError(SeekmoeError, ValueError):
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


def _render(template: str, messages: list[dict], tools: list[dict] | None, bos_token: str, eos_token: str,
            add_generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return _compile(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                         add_generation_prompt=add_generation_prompt, tools=tools)
    except TemplateError as e:
        raise ChatError(f"chat template: {e}") from None


def render_chat(messages: object, template: str, bos_token: str, eos_token: str,
                add_generation_prompt: bool = True, tools: object = None) -> str:
    """The prompt text for `messages` (a list of role/content dicts), with `tools` offered when given."""
    return _render(template, check_messages(messages), check_tools(tools), bos_token, eos_token,
                   add_generation_prompt)


# ---- which text the request wrote ------------------------------------------------------------------------------

def _map_tree(x: object, fn: Callable[[str], str]) -> object:
    """A JSON value with fn applied to every string in it, object keys included."""
    if isinstance(x, str):
        return fn(x)
    if isinstance(x, dict):
        return {fn(k) if isinstance(k, str) else k: _map_tree(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_map_tree(v, fn) for v in x]
    return x


def _map_request_text(messages: list[dict], tools: list[dict] | None, fn: Callable[[str], str],
                      ) -> tuple[list[dict], list[dict] | None]:
    """Checked messages and tools with fn applied to every string the request wrote; roles, types and the keys of
    our own schema stay, so the template takes the same branches."""
    out = []
    for m in messages:
        m = {**m, "content": fn(m["content"])}
        if "tool_calls" in m:
            m["tool_calls"] = [{**c, **({"id": fn(c["id"])} if "id" in c else {}), "function": {
                "name": fn(c["function"]["name"]), "arguments": fn(c["function"]["arguments"])}}
                for c in m["tool_calls"]]
        out.append(m)
    if tools is not None:
        tools = [{**t, "function": {k: _map_tree(v, fn) for k, v in t["function"].items()}} for t in tools]
    return out, tools


@lru_cache(maxsize=8)
def any_of(strings: tuple[str, ...]) -> re.Pattern:
    """Any of strings, the longest where several start at one place (as the tokenizer matches added tokens)."""
    if not strings:
        return re.compile(r"(?!)")
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


def render_chat_parts(messages: object, template: str, bos_token: str, eos_token: str,
                      add_generation_prompt: bool = True, tools: object = None,
                      specials: Collection[str] = ()) -> list[tuple[str, bool]]:
    """render_chat's text cut into (piece, written by the request): see the module docstring. specials: the
    special-token strings a request must not forge (used only for a template that changes the request's text)."""
    checked, checked_tools = check_messages(messages), check_tools(tools)
    args = (bos_token, eos_token, add_generation_prompt)
    text = _render(template, checked, checked_tools, *args)
    parts = _cut_at_request_text(text, template, checked, checked_tools, args)
    if parts is not None:
        return parts
    pattern = any_of(tuple(sorted(set(specials))))

    def delete_specials(s: str) -> str:
        while (shorter := pattern.sub("", s)) != s:  # until none is left: "<｜Us<｜User｜>er｜>" hides a second
            s = shorter
        return s

    found = pattern.findall(text)
    expected = pattern.findall(_render(template, *_map_request_text(checked, checked_tools, delete_specials), *args))
    if found != expected:  # in order: the same markers in another order are another conversation
        surplus = (Counter(found) - Counter(expected)) or (Counter(expected) - Counter(found))
        token = (list(surplus) or found)[0]
        raise ChatError(f"the chat template does not write the messages' text as given (a filter such as trim, or a "
                        f"test on its value), and that text holds the special token {token!r}: refused, as it would "
                        "become a control token (remove it from the messages, or use a template that writes the "
                        "text as given)")
    return [(text, False)]


def _cut_at_request_text(text: str, template: str, messages: list[dict], tools: list[dict] | None,
                         args: tuple) -> list[tuple[str, bool]] | None:
    """text cut into (piece, written by the request), found by rendering with markers for the request's strings;
    None when the marked rendering does not give back text exactly."""
    strings: list[str] = []

    def collect(s: str) -> str:
        strings.append(s)
        return s

    _map_request_text(messages, tools, collect)
    nonce = secrets.token_hex(8)
    while any(nonce in s for s in (template, *args[:2], *strings)):
        nonce = secrets.token_hex(8)
    strings.clear()

    def mark(s: str) -> str:
        if not s:  # "" stays "": templates test for empty text
            return s
        strings.append(s)
        return f"MARK{nonce}_{len(strings) - 1}_"

    try:
        marked = _render(template, *_map_request_text(messages, tools, mark), *args)
    except Exception:  # any error: the template looked into the strings, and the markers are not text to look into
        return None
    pieces = re.split(f"MARK{nonce}_([0-9]+)_", marked)  # template text, string index, template text, ...
    parts, pos = [], 0
    for j in range(0, len(pieces), 2):
        piece = pieces[j]
        if not text.startswith(piece, pos):
            return None
        if piece:
            parts.append((piece, False))
        pos += len(piece)
        if j + 1 == len(pieces):
            break
        index, after = int(pieces[j + 1]), pieces[j + 2]
        if index >= len(strings):
            return None
        s = strings[index]
        # as written, or escaped by tojson (ensure_ascii false, as transformers' tojson, or true)
        for written in dict.fromkeys((s, json.dumps(s, ensure_ascii=False)[1:-1], json.dumps(s)[1:-1])):
            if text.startswith(written, pos) and text.startswith(after, pos + len(written)):
                break
        else:
            return None
        parts.append((written, True))
        pos += len(written)
    return parts if pos == len(text) else None
