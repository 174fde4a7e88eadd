"""The command line as users of vLLM's, llama.cpp's and transformers' expect it (issue 21): options and positionals
in any order, typos answered under the subcommand's usage with the closest spelling, a closed pipe ends the command
quietly, a missing optional extra names its pip command. (Export's parent folders: tests/test_export.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from seekmoe.cli.main import EXTRAS, build_parser, pip_command
from seekmoe.llm import DEFAULT_MODEL
from tests.conftest import assert_usage_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def usage_error(err: str, command: str, *needles: str) -> None:
    """argparse's usage error: the command's own usage, then one `seekmoe COMMAND: error: ...` line."""
    assert err.startswith(f"usage: {command} "), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{command}: error: "), err
    for needle in needles:
        assert needle in last, last
    assert "Traceback" not in err


# ---- options and positionals in any order ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["MODEL", "--max-tokens", "10", "Hello"],  # refused before: Hello was an unrecognized argument
    ["--max-tokens", "10", "MODEL", "Hello"],
    ["MODEL", "Hello", "--max-tokens", "10"],
    ["MODEL", "--temperature", "0", "Hello", "--max-tokens", "10", "-q"],
])
def test_generate_takes_model_prompt_and_flags_in_any_order(argv):
    args = build_parser().parse_args(["generate", *argv])
    assert (args.model, args.prompt, args.max_tokens) == ("MODEL", "Hello", 10)


def test_positionals_between_flags_in_other_commands():
    parser = build_parser()
    args = parser.parse_args(["generate", "--max-tokens", "10", "Hello"])  # MODEL left out: the bundled one
    assert (args.model, args.prompt) == (None, "Hello")
    args = parser.parse_args(["tokenizer", "train", "a.txt", "--out", "tok", "b.txt", "--vocab-size", "300"])
    assert (args.files, args.out, args.vocab_size) == (["a.txt", "b.txt"], "tok", 300)
    args = parser.parse_args(["export", "gguf", "M", "--quant", "q8_0", "out.gguf"])
    assert (args.model, args.out, args.quant) == ("M", "out.gguf", "q8_0")
    args = parser.parse_args(["inspect", "--json", "deepseek-v3", "--ranks", "2"])
    assert (args.config, args.json, args.ranks) == ("deepseek-v3", True, 2)


def test_double_dash_still_ends_the_flags():
    args = build_parser().parse_args(["generate", "MODEL", "--max-tokens", "3", "--", "-5 degrees"])
    assert (args.model, args.prompt, args.max_tokens) == ("MODEL", "-5 degrees", 3)
    args = build_parser().parse_args(["generate", "-q", "--", "--not-a-flag"])
    assert (args.model, args.prompt, args.quiet) == (None, "--not-a-flag", True)


def test_generate_with_flags_between_model_and_prompt_runs(capsys):
    rc, out, err = run_cli(capsys, "generate", str(DEFAULT_MODEL), "--max-tokens", "3", "--temperature", "0",
                           "Hello")
    assert rc == 0 and out.strip() and "completion 3 tokens" in err


# ---- typos -----------------------------------------------------------------------------------------------------

def test_unknown_flag_shows_the_subcommand_usage_and_the_closest_flag(capsys):
    rc, out, err = run_cli(capsys, "generate", "--max-tokns", "10", "Hello")
    assert rc == 2 and out == ""
    usage_error(err, "seekmoe generate", "unrecognized arguments: --max-tokns", "did you mean --max-tokens?")
    assert "[MODEL] PROMPT" in err  # generate's usage, not the top-level one

    rc, _, err = run_cli(capsys, "inspect", "deepseek-v3", "--jsno", "--rnks=2")
    assert rc == 2
    usage_error(err, "seekmoe inspect", "unrecognized arguments: --jsno --rnks=2", "did you mean --json or --ranks?")

    rc, _, err = run_cli(capsys, "data", "chat", "--out", "x", "--skip-mising")
    usage_error(err, "seekmoe data chat", "did you mean --skip-missing?")


def test_misspelt_required_flag_is_named(capsys):
    """argparse reports the missing --out first; the typo that was meant as --out is named with it."""
    rc, _, err = run_cli(capsys, "tokenizer", "train", "a.txt", "--vocab-size", "300", "--ouut", "tok")
    assert rc == 2
    usage_error(err, "seekmoe tokenizer train", "required: --out", "unrecognized: --ouut; did you mean --out?")


def test_no_suggestion_when_nothing_is_close(capsys):
    rc, _, err = run_cli(capsys, "chat", "-n", "2")
    assert rc == 2
    usage_error(err, "seekmoe chat", "unrecognized arguments: -n")
    assert "did you mean" not in err


@pytest.mark.parametrize("argv, command, needle", [
    (["genrate", "Hello"], "seekmoe", "invalid choice: 'genrate' (did you mean 'generate'? choose from"),
    (["export", "gguff", "M", "out.gguf"], "seekmoe export", "invalid choice: 'gguff' (did you mean 'gguf'?"),
    (["data", "chatt", "--out", "x"], "seekmoe data", "invalid choice: 'chatt' (did you mean 'chat'?"),
    (["generate", "--dtype", "flot32", "Hi"], "seekmoe generate", "--dtype: invalid choice: 'flot32' (did you "
                                                                  "mean 'float32'?"),
])
def test_unknown_command_or_choice_names_the_closest(capsys, argv, command, needle):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    usage_error(err, command, needle)


# ---- a closed pipe ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["inspect", "deepseek-v3", "--json"], ["generate", "--help"],
                                  ["generate", "--max-tokens", "50", "Hello"]])
def test_closed_pipe_ends_quietly_with_141(argv):
    """`seekmoe inspect --json | head`: as coreutils there, no message and the status of a SIGPIPE death."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run([sys.executable, "-m", "seekmoe", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# ---- optional extras -------------------------------------------------------------------------------------------

def test_extras_table_matches_pyproject():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, package in EXTRAS.values():
        assert any(req.startswith(package) for req in optional[extra]), (extra, package)


def test_pip_command_installs_into_this_checkout():
    assert pip_command("data") == f"pip install -e '{ROOT}[data]'"


def test_data_chat_without_the_data_extra_names_the_pip_command(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", None)  # find_spec: not installed
    rc, out, err = run_cli(capsys, "data", "chat", "--out", str(tmp_path / "chat"))
    assert_usage_error(rc, err, "seekmoe data chat needs chatterbot-corpus", "optional 'data' dependencies",
                       f"pip install -e '{ROOT}[data]'", "--skip-missing")
    assert out == "" and not (tmp_path / "chat").exists()


def test_module_of_an_extra_missing_at_import_names_the_pip_command(capsys, monkeypatch, tmp_path):
    """A command importing an extra's module unchecked (chat_data's chatterbot reader imports yaml) still ends in
    one line naming the extra, not a traceback."""
    import seekmoe.train.chat_data as chat_data

    def run_from_args(args):
        import yaml  # noqa: F401

    monkeypatch.setitem(sys.modules, "yaml", None)
    monkeypatch.setattr(chat_data, "run_from_args", run_from_args)
    rc, _, err = run_cli(capsys, "data", "chat", "--out", str(tmp_path / "chat"), "--skip-missing")
    assert_usage_error(rc, err, "seekmoe data chat needs pyyaml", f"pip install -e '{ROOT}[data]'")


def test_the_command_line_is_built_without_torch():
    """`seekmoe --help`, `seekmoe inspect`, `seekmoe graph ...` start in a fraction of the seconds torch takes to
    import: each subcommand imports what it runs when it runs."""
    code = "import sys; from seekmoe.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False"
