"""Constrained decoding: the grammar an answer must follow, compiled against the tokenizer by llguidance.

A Grammar is compiled once: any JSON object, a JSON Schema, a Lark grammar, or a chat answer in the template's
tool-call format whose arguments follow each function's parameters schema. Each request gets its own Matcher from
it, which the engine takes as an opaque TokenConstraint (seekmoe.engine.sampling): every step it asks for the
bitmask of the tokens allowed next and is told the token drawn. This layer knows text (the tokenizer, JSON, the
tool-call markers); the engine knows only token ids.

JSON is written with json.dumps' separators (", " and ": ") and no other whitespace: a grammar that allows any
whitespace lets a weak model write newlines until max_tokens. An answer that ends normally ("stop") is complete and
follows the grammar; one cut short by max_tokens ends mid-value, with finish_reason "length".
"""

from __future__ import annotations

import json

import llguidance
from jsonschema import Draft202012Validator, SchemaError, validators

from seekmoe.errors import SeekmoeError
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.text.tool_calls import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP

# llguidance's JSON options: no free whitespace (see above), json.dumps' separators
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}


def constrains(tools: list[dict] | None, forced: str | None, json_schema: dict | None) -> bool:
    """Whether a chat answer has a grammar to follow: a forced call, a JSON answer, or a strict tool."""
    return bool(forced) or json_schema is not None or any(t["function"].get("strict") for t in tools or [])


class GrammarError(SeekmoeError, ValueError):
    """A JSON Schema or grammar that cannot be compiled. tool: the index of the tool whose parameters are at fault
    (the tool-call grammars of `Grammars.chat`), else None."""

    def __init__(self, message: str, tool: int | None = None):
        super().__init__(message)
        self.tool = tool


class Matcher:
    """One sequence's place in a grammar: the engine's TokenConstraint."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self._matcher = matcher

    def fill_bitmask(self, out_W) -> None:
        if out_W.element_size() != 4 or not out_W.is_contiguous() or out_W.device.type != "cpu":
            raise ValueError("the bitmask must be a contiguous CPU tensor of 32-bit words")
        # llguidance checks the size against the vocabulary; a token it cannot take leaves only eos allowed
        self._matcher.unsafe_compute_mask_ptr(out_W.data_ptr(), out_W.numel() * 4)

    def advance(self, token_id: int) -> None:
        self._matcher.consume_token(token_id)  # a refused token puts it in its error state: eos only, then done

    @property
    def done(self) -> bool:
        return self._matcher.is_stopped()

    def fork(self) -> Matcher:
        return Matcher(self._matcher.deep_copy())


class Grammar:
    """A compiled grammar; `matcher()` gives each request a fresh state (a copy: microseconds, not a compile)."""

    def __init__(self, start: llguidance.LLMatcher):
        self._start = start

    def matcher(self) -> Matcher:
        return Matcher(self._start.deep_copy())


def _from_schema(schema: dict) -> str:
    """llguidance's grammar of a JSON Schema; GrammarError for one it cannot take (an integer past 64 bits in it:
    ValueError "Value is not JSON serializable")."""
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"the JSON Schema cannot be compiled: {e}") from None


class Grammars:
    """Compiles grammars for one tokenizer and model: vocab_size is the model's (the width of its logits, which may be
    more than the tokenizer's ids), eos_id the token that ends an answer."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_id: int):
        self._tokenizer = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size, eos_token=eos_id)
        # the tool-call markers, written in Lark by id: <[6]>; a tokenizer without them still does JSON and Lark
        ids = {m: tokenizer.token_to_id(m) for m in (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)}
        self._marker = {m: f"<[{i}]>" for m, i in ids.items() if i is not None}

    def _compile(self, grammar: str) -> Grammar:
        start = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if start.is_error():
            raise GrammarError(start.get_error())
        return Grammar(start)

    def json(self, schema: dict | None = None, strict: bool = True) -> Grammar:
        """Output that is one JSON value following `schema` (None: any JSON object). strict False: keywords
        llguidance does not implement are ignored rather than refused."""
        schema = ANY_OBJECT if schema is None else schema
        return self._compile(_from_schema(self._schema(schema, strict)))

    def lark(self, grammar: str) -> Grammar:
        """Output in a Lark grammar (llguidance's dialect: `start: ...`, %json {schema}, special tokens as <[id]>)."""
        if not isinstance(grammar, str) or not grammar.strip():
            raise GrammarError("the grammar must be a non-empty string (Lark)")
        return self._compile(llguidance.LLMatcher.grammar_from_lark(grammar))

    def chat(self, tools: list[dict] | None, forced: str | None, *, parallel: bool = True,
             json_schema: dict | None = None, strict: bool = True) -> Grammar | None:
        """The grammar of a chat answer with these tools offered (OpenAI's list); None when nothing constrains it.

        forced: what LLM.chat_prompt forced the answer to start with, already in the prompt. The opening of a call
        to a named function: then its arguments follow its parameters schema and the block closes. The opening of a
        call to any tool ("required"): then one call to an offered tool (one or more when parallel), each with its
        arguments. None, the model decides: free text, or with json_schema one JSON value following it, then
        optionally a block of calls; constrained only when json_schema is given or a tool is strict ("strict":
        true), and then strict tools' arguments follow their schema, the others' are any JSON object.
        strict: how json_schema is compiled (see `json`). Every strict tool's schema is compiled whatever forced is,
        so one that cannot be is refused on the first round of a tool loop, not a later one."""
        tools = tools or []
        if not tools and not forced:
            return self.json(json_schema, strict) if json_schema is not None else None
        missing = [m for m in (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP) if m not in self._marker]
        if missing:
            raise GrammarError(f"the tokenizer has no {missing[0]} token, which tool calls are written with")
        strict_tools = [i for i, t in enumerate(tools) if t["function"].get("strict")]
        schemas = {i: self._arguments(tools, i) for i in strict_tools}
        m = self._marker
        more = f" ({m[CALL_BEGIN]} call)*" if parallel else ""
        if forced:
            name = forced.rpartition(CALL_BEGIN)[2].removesuffix(SEP)
            if name:  # NAME<sep> is in the prompt: its arguments, then the block closes
                i = next(i for i, t in enumerate(tools) if t["function"]["name"] == name)
                return self._lark([f"start: args_{i} {m[CALL_END]} {m[CALLS_END]}"], tools,
                                  {i: schemas.get(i) or self._arguments(tools, i)}, calls=False)
            return self._lark([f"start: call{more} {m[CALLS_END]}"], tools,
                              {i: schemas.get(i) or self._arguments(tools, i) for i in range(len(tools))})
        if not strict_tools and json_schema is None:
            return None
        any_object = json.dumps(self._schema(ANY_OBJECT, strict=False))
        rules = [f"calls: {m[CALLS_BEGIN]} {m[CALL_BEGIN]} call{more} {m[CALLS_END]}"]
        if json_schema is not None:
            rules = ["start: answer | calls", f"answer: %json {json.dumps(self._schema(json_schema, strict))}",
                     *rules]
        else:
            rules = ["start: TEXT? calls?", r"TEXT: /(.|\n)+/", *rules]  # text: anything but special tokens
        return self._lark(rules, tools, {i: schemas.get(i, any_object) for i in range(len(tools))})

    def _lark(self, rules: list[str], tools: list[dict], schemas: dict[int, str], calls: bool = True) -> Grammar:
        """rules, plus `args_I: %json {schema}` for each tool index I in schemas and, with calls, the rule `call`:
        NAME<sep>ARGUMENTS<call end> of one of those tools."""
        m = self._marker
        lines = list(rules)
        if calls:
            lines.append("call: " + " | ".join(f"call_{i}" for i in schemas))
            lines += [f"call_{i}: {json.dumps(tools[i]['function']['name'], ensure_ascii=False)} {m[SEP]} args_{i} "
                      f"{m[CALL_END]}" for i in schemas]
        lines += [f"args_{i}: %json {schema}" for i, schema in schemas.items()]
        return self._compile(llguidance.LLMatcher.grammar_from_lark("\n".join(lines)))

    def _arguments(self, tools: list[dict], i: int) -> str:
        """Tool i's parameters schema, checked and compiled on its own (so an error names the tool), as JSON."""
        f = tools[i]["function"]
        schema = self._schema(f.get("parameters") or ANY_OBJECT, bool(f.get("strict")), tool=i)
        try:
            self._compile(_from_schema(schema))
        except GrammarError as e:
            raise GrammarError(str(e), tool=i) from None
        return json.dumps(schema)

    def _schema(self, schema: object, strict: bool, tool: int | None = None) -> dict:
        """The schema with our JSON options, after a check against its JSON Schema meta-schema."""
        if not isinstance(schema, dict):
            raise GrammarError(f"a JSON Schema must be an object, got {type(schema).__name__}", tool)
        try:
            validators.validator_for(schema, default=Draft202012Validator).check_schema(schema)
        except SchemaError as e:
            where = "/".join(map(str, e.path))
            raise GrammarError(f"{e.message}{f' (at {where})' if where else ''}", tool) from None
        options = {**JSON_OPTIONS, **({} if strict else {"lenient": True})}
        given = schema.get("x-guidance")
        return {**schema, "x-guidance": options | (given if isinstance(given, dict) else {})}
