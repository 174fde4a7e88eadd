"""The model's tool calls, read back from its output text (special tokens kept), whole or while it streams.

The chat template asks for `<｜tool▁calls▁begin｜>` then, per call, `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{JSON}
<｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`. Text before the block is the message's content. A call counts only
when its name is one of the offered tools and its arguments are a JSON object; output that does not parse is
handed back as plain text (what it says is kept; it is never an error), and `tool_calls` is then empty.

ToolLoop holds the rounds of one answer whose tools run on our side (plugins): generate, read the calls, run them,
append the calls and their results to the conversation, generate again. LLM.chat_with_tools and the server both
drive it, one loop per choice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
MARKERS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)
MAX_ROUNDS = 4  # rounds of calls run for one answer; then the model's answer is returned as it is


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


# ---- the tool loop ------------------------------------------------------------------------------------------------

@dataclass
class ToolEvent:
    """What a round adds to a choice's answer: text, a whole call, or the end of the choice; logprobs: those of the
    tokens it brings the client (see ToolLoop)."""

    kind: str  # "text", "call" or "end"
    index: int  # the choice
    text: str = ""
    call: ToolCall | None = None
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)


@dataclass
class ToolRun:
    """One call run on our side, and what it gave back."""

    call: ToolCall
    ok: bool
    result: str
    seconds: float


class ToolLoop:
    """The rounds of one answer (one choice of a request) whose tools may run on our side: generate, read the calls,
    run them, append the calls and their results to its conversation, generate again, until an answer calls
    something not ours or max_rounds rounds of calls have run (that answer is then returned as it is). A request
    with n choices has n loops, each with its own conversation, calls, results and final answer.

    It does no I/O, so one loop serves a thread (LLM.chat_with_tools) and asyncio (the server, which streams). Per
    round the driver renders `messages` with `tools` and `tool_choice`, generates, and calls begin(forced), then
    feed() for each delta (the events to send now), then end_round(): the calls to run, whose results go to
    add_results() before the next round, or none, and finish() gives the answer's last events. While tools may
    run here, calls are held back until the answer is final; text goes out as it comes.

    Logprobs, when the deltas carry them, are those of the tokens whose text the client gets: a content token's go
    out with the text, as it comes; those of the final round's calls with the end (calls run here are not the
    client's, nor are their tokens). The call markers have none: special tokens whose text is in no part of the
    message (the call's name and arguments are, in tool_calls, and keep theirs).
    """

    def __init__(self, messages: list[dict], tools: list[dict], runnable: Mapping[str, object] | None = None,
                 tool_choice: object = None, max_rounds: int = MAX_ROUNDS, index: int = 0):
        self.messages = messages  # the conversation, grown in place by each round of calls
        self.tools = tools  # the OpenAI definitions offered
        self.runnable = runnable or {}  # the tools run on our side: name -> what runs it (a Plugin)
        self.first_choice, self.max_rounds, self.index = tool_choice, max_rounds, index
        self.names = tool_names(tools)
        self.rounds = 0  # begun so far
        self.trace: list[ToolRun] = []

    @property
    def tool_choice(self) -> object:
        """The tool_choice of the next round: a forced call is forced once."""
        return self.first_choice if self.rounds == 0 else "auto"

    def begin(self, forced: str | None = None) -> None:
        """A round starts (the round's state is set here); forced: the opening its prompt forces (a call's markers),
        read before the model's part."""
        self.rounds += 1
        self.parser = ToolCallStream(self.names)
        self.parser.feed(forced or "")  # a forced call completes only with what the model writes
        self.said = ""  # the text of this round
        self.calls: list[ToolCall] = []  # the calls of this round
        self.end: str | None = None  # the round's finish_reason
        self.held: list[ToolEvent] = []
        self.in_block = bool(forced)  # past the calls marker: the tokens are those of calls
        self.block_logprobs: list = []

    def feed(self, text: str, finish_reason: str | None = None, logprobs: Sequence = ()) -> list[ToolEvent]:
        """The events one delta of this choice's round (its text, finish_reason and token logprobs) gives now."""
        content = []
        for lp in logprobs:
            self.in_block = self.in_block or lp.token == CALLS_BEGIN
            if lp.token not in MARKERS:
                (self.block_logprobs if self.in_block else content).append(lp)
        items = self.parser.feed(text) if text else []
        if finish_reason is not None:
            items += self.parser.finish()
            self.end = finish_reason
        out = []
        for item in items:
            if isinstance(item, ToolCall):
                self.calls.append(item)
                event = ToolEvent("call", self.index, call=item)
            else:
                self.said += item
                event = ToolEvent("text", self.index, text=item)
            if event.kind == "call" and self.runnable:
                self.held.append(event)  # sent only if the answer is final
            else:
                out.append(event)
        if content:  # with the first text, or on their own while the text waits (part of a marker, a stop string)
            first = next((e for e in out if e.kind == "text"), None)
            if first is None:
                out.insert(0, first := ToolEvent("text", self.index))
            first.logprobs = content
        return out

    def end_round(self) -> list[ToolCall]:
        """The calls to run before the next round: this round's, when they are all ours and rounds are left; []
        when this round's answer is the final one."""
        ours = bool(self.calls) and all(c.name in self.runnable for c in self.calls)
        return list(self.calls) if ours and self.rounds <= self.max_rounds else []

    def finish(self) -> list[ToolEvent]:
        """The final answer's last events: the calls held back, then its end."""
        reason = "tool_calls" if self.calls else self.end
        return [*self.held, ToolEvent("end", self.index, finish_reason=reason, logprobs=self.block_logprobs)]

    def out_of_room(self) -> list[ToolEvent]:
        """The end of an answer that has no room left in the context for another round."""
        return [ToolEvent("end", self.index, finish_reason="length")]

    def add_results(self, calls: list[ToolCall], results: list) -> None:
        """Append this round's calls and their results (each with ok, content and seconds, as seekmoe.plugins.call
        returns them) to the conversation."""
        self.messages.append({"role": "assistant", "content": self.said,
                              "tool_calls": [c.to_openai() for c in calls]})
        for c, r in zip(calls, results, strict=True):
            self.messages.append({"role": "tool", "tool_call_id": c.id, "content": r.content})
            self.trace.append(ToolRun(c, r.ok, r.content, r.seconds))
