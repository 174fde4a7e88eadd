"""The argparse parser every `seekmoe` command is built on, behaving as users of vLLM's, llama.cpp's and transformers'
command lines expect:

- options and positionals in any order: `seekmoe generate MODEL --max-tokens 10 PROMPT` (argparse's intermixed
  parsing, in every command without subcommands);
- an unknown flag is reported under the usage of the command it was given to, with the closest flag:
  "seekmoe generate: error: unrecognized arguments: --max-tokns (did you mean --max-tokens?)";
- an unknown command or choice names the closest one: "invalid choice: 'genrate' (did you mean 'generate'? ...)".
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Sequence


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like `word`, if one is close (difflib's ratio >= 0.6)."""
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return matches[0] if matches else None


class Parser(argparse.ArgumentParser):
    """ArgumentParser with intermixed options and positionals, and typos answered with the closest valid spelling.
    add_subparsers hands the class down, so every subcommand's parser is a Parser too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands: argparse._SubParsersAction | None = None  # the subcommands, once added
        # the arguments while this (leaf) parser parses them: parse_known_intermixed_args calls parse_known_args
        # back, twice (options, then positionals), which then parses plainly; error() looks for typos in them
        self._parsing: list[str] | None = None

    def add_subparsers(self, **kwargs) -> argparse._SubParsersAction:
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        # a command with subcommands hands the rest to one of them, which argparse cannot intermix
        if self.commands is not None:
            return super().parse_known_args(args, namespace)
        if self._parsing is None:
            self._parsing = list(sys.argv[1:] if args is None else args)
            try:
                return self.parse_known_intermixed_args(self._parsing, namespace)
            finally:
                self._parsing = None
        args = list(args or [])
        if "--" in args and all(a.nargs == argparse.SUPPRESS for a in self._get_positional_actions()):
            # the first pass, of the options alone: Python 3.11's drops a `--`, and the words after it then read as
            # flags (`generate -- -5 degrees`); they are positionals, so they go to the second pass as they came
            i = args.index("--")
            namespace, rest = super().parse_known_args(args[:i], namespace)
            return namespace, rest + args[i:]
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # the command they were given to reports them, under its own usage
            command = self.chosen(namespace)
            hint = command.did_you_mean(x for x in extras if x.startswith("-"))
            command.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({hint})" if hint else ""))
        return namespace

    def chosen(self, namespace: argparse.Namespace) -> Parser:
        """The parser of the innermost subcommand in `namespace`: `seekmoe data chat ...` -> data chat's."""
        parser = self
        while parser.commands is not None and getattr(namespace, parser.commands.dest, None) in parser.commands.choices:
            parser = parser.commands.choices[getattr(namespace, parser.commands.dest)]
        return parser

    def error(self, message: str):
        # argparse checks required flags before it reports unknown ones: a misspelt --out is "required: --out"
        if message.startswith("the following arguments are required") and self._parsing is not None:
            typos = [x for x in self.unknown_flags(self._parsing) if closest(x, self.flags())]
            if typos:
                message += f" (unrecognized: {' '.join(typos)}; {self.did_you_mean(typos)})"
        super().error(message)

    def did_you_mean(self, unknown: Iterable[str]) -> str:
        """'did you mean --max-tokens?' for the flags the unknown ones may have meant; '' when none is close."""
        hints = [hint for x in unknown if (hint := closest(x.split("=", 1)[0], self.flags()))]
        return f"did you mean {' or '.join(dict.fromkeys(hints))}?" if hints else ""

    def flags(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def unknown_flags(self, args: list[str]) -> list[str]:
        """The words of args before any `--` that look like flags this parser has not, whole or abbreviated."""
        flags, unknown = self.flags(), []
        for arg in args[:args.index("--") if "--" in args else len(args)]:
            name = arg.split("=", 1)[0]
            if name.startswith("-") and name != "-" and not name[1:].replace(".", "").isdigit() \
                    and not any(f == name or (name.startswith("--") and f.startswith(name)) for f in flags):
                unknown.append(name)
        return unknown

    def _print_message(self, message: str, file=None) -> None:
        # argparse drops write errors: `seekmoe generate --help | head -1` then exits 0 with its help lost; raised,
        # a closed pipe ends the command as it ends any other (cli/main.py: quietly, status 141)
        file = file or sys.stderr
        if message and file is not None:  # None: no console (pythonw)
            file.write(message)

    def _check_value(self, action: argparse.Action, value) -> None:
        # argparse's check of a choice (or subcommand), naming the closest one as Python 3.14's suggest_on_error does
        if action.choices is not None and value not in action.choices:
            hint = closest(value, map(str, action.choices)) if isinstance(value, str) else None
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} ("
                                         + (f"did you mean {hint!r}? " if hint else "") + f"choose from {choices})")


def positive_int(text: str) -> int:
    """argparse type: '8' -> 8; '0', '-1' and 'abc' are usage errors naming what was given."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n
