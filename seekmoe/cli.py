"""The `seekmoe` command: a small argparse dispatch, one function per subcommand.

Subcommands import what they need inside their function, so `seekmoe inspect` never pays for torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from seekmoe.config import ConfigError, ModelConfig


class CLIError(Exception):
    """Bad input the user can fix; printed as one line, exit code 2."""


def bundled_configs() -> list[str]:
    """Names of the published configs shipped in seekmoe/configs/."""
    folder = resources.files("seekmoe").joinpath("configs")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_config(source: str) -> ModelConfig:
    """A directory holding config.json, a .json file, or the name of a bundled config."""
    path = Path(source)
    try:
        if path.exists():
            return ModelConfig.from_pretrained(path)
        names = bundled_configs()
        if source in names:
            with resources.as_file(resources.files("seekmoe").joinpath("configs", f"{source}.json")) as p:
                return ModelConfig.from_json(p)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    if source.endswith(".json") or path.parent != Path("."):
        raise CLIError(f"{source}: no such file or directory")
    raise CLIError(f"{source!r} is neither a path nor a bundled config (one of {', '.join(names)})")


def cmd_inspect(args: argparse.Namespace) -> int:
    from seekmoe.inspect import format_report, inspect_config

    report = inspect_config(load_config(args.config))
    if args.json:
        print(json.dumps({"source": args.config, **report.to_dict()}, indent=2))
    else:
        print(f"seekmoe inspect {args.config}\n")
        print(format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seekmoe", description="DeepSeek-V2/V3 MoE models on your own machines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="parameter counts, layer layout and KV-cache size of a config, no weights",
                       description="Parameter counts (total and active per token), layer layout and KV-cache "
                                   "bytes per token, computed from config.json alone.")
    p.add_argument("config", metavar="PATH_OR_CONFIG",
                   help="a directory holding config.json, a .json file, or a bundled config name "
                        "(deepseek-v2-lite, deepseek-v2, deepseek-v3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): argparse has printed the message already
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except CLIError as e:
        print(f"seekmoe: error: {e}", file=sys.stderr)
        return 2
