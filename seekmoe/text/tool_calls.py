"""The model's tool calls, read back from its output text (special tokens kept), whole or while it streams.

The chat template asks for `<｜tool▁calls▁begin｜>` then, per call, `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{JSON}
<｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`. Text before the block is the message's content. A call counts only
when its name is one of the offered tools and its arguments are a JSON object; output that does not parse is
handed back as plain text (what it says is kept; it is never an error), and `tool_calls` is then empty.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
MARKERS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it: a string
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _call(body: str, names: set[str] | None) -> ToolCall | None:
    """NAME<｜tool▁sep｜>{JSON} as a ToolCall, or None when it is not one."""
    name, sep, arguments = body.partition(SEP)
    name = name.strip()
    if not sep or not name or (names is not None and name not in names):
        return None
    try:
        parsed = json.loads(arguments.strip() or "{}")
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return ToolCall(name, json.dumps(parsed, ensure_ascii=False))


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a finished output; (the text without tool markers, []) when the block does not parse.

    names: the offered tools (None accepts any name)."""
    head, begin, block = text.partition(CALLS_BEGIN)
    if not begin:
        return text, []
    block = block.split(CALLS_END, 1)[0]
    calls = []
    for piece in block.split(CALL_BEGIN)[1:]:
        body, end, _ = piece.partition(CALL_END)
        call = _call(body, names) if end else None
        if call is None:
            return plain(text), []
        calls.append(call)
    if not calls:
        return plain(text), []
    return head, calls


def plain(text: str) -> str:
    """The text with the tool-call markers taken out: what a client sees of a call that did not parse."""
    for marker in MARKERS:
        text = text.replace(marker, " " if marker == SEP else "")
    return text


class ToolCallStream:
    """Split streamed text into content deltas and whole tool calls, as they complete.

    feed(text) returns what can be sent now: strings (content) and ToolCalls. Content is held back only while it
    could be the start of the calls marker; after the marker everything waits until a call ends. finish() returns
    the rest: with a broken block, its text as plain content, so nothing the model wrote is lost.
    """

    def __init__(self, names: set[str] | None = None):
        self.names = names
        self.pending = ""  # text not yet sent
        self.in_block = False
        self.calls: list[ToolCall] = []
        self.broken = False

    def feed(self, text: str) -> list[str | ToolCall]:
        self.pending += text
        out: list[str | ToolCall] = []
        if not self.in_block:
            head, begin, rest = self.pending.partition(CALLS_BEGIN)
            if not begin:
                keep = _partial_suffix(self.pending, CALLS_BEGIN)
                sendable = self.pending[:len(self.pending) - keep]
                self.pending = self.pending[len(sendable):]
                return [sendable] if sendable else []
            if head:
                out.append(head)
            self.in_block, self.pending = True, rest
        while not self.broken:
            start, begin, rest = self.pending.partition(CALL_BEGIN)
            body, end, after = rest.partition(CALL_END)
            if not (begin and end):
                break
            call = _call(body, self.names)
            if call is None or start.strip():
                self.broken = True
                break
            self.calls.append(call)
            out.append(call)
            self.pending = after
        return out

    def finish(self) -> list[str | ToolCall]:
        """What is left when the output ends."""
        rest, self.pending = self.pending, ""
        if not self.in_block:
            return [rest] if rest else []
        rest = rest.split(CALLS_END, 1)[0]
        if self.broken or rest.strip() or not self.calls:
            # a call that never closed, or did not parse: the client gets the text of what is left
            text = plain(rest)
            return [text] if text.strip() else []
        return []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of text that is a beginning of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def check_tool_choice(tool_choice: object, names: set[str]) -> str | None:
    """OpenAI's tool_choice as what the answer must start with: None (auto: the model decides), "" (none: no
    tools offered), or the opening of a forced call ("required": a call to any tool, or one named function)."""
    if tool_choice is None or tool_choice == "auto":
        return None
    if tool_choice == "none":
        return ""
    if not names:
        raise ValueError("tool_choice needs tools to choose from")
    if tool_choice == "required":
        return CALLS_BEGIN + CALL_BEGIN
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(name, str):
        raise ValueError("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': "
                         f"{{'name': ...}}}}, got {tool_choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not one of the tools ({', '.join(sorted(names))})")
    return CALLS_BEGIN + CALL_BEGIN + name + SEP


def tool_names(tools: list[dict] | None) -> set[str]:
    return {t["function"]["name"] for t in tools or []}
