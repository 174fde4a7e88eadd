"""`seekmoe serve [MODEL]`: flags, their environment variables, and uvicorn.

Free of torch and fastapi at import, like cli/main.py: they load inside the command.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from seekmoe.cli import model_flags
from seekmoe.errors import CLIError
from seekmoe.server.config import ServeConfig, ServeConfigError

if TYPE_CHECKING:
    from seekmoe.llm import LLM

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from '1048576', '512K', '1MiB', '2G', '1MB' (K, M, G and KiB... are powers of 1024; KB, MB, GB of 1000)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected a size such as 1048576, 512K, 64MiB or 2G, got {text!r}")
    number, unit, suffix = int(m[1]), m[2].lower(), m[3].lower()
    base = 1000 if suffix == "b" and unit else 1024
    return number * base ** " kmg".index(unit or " ")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 1/true/yes/on or 0/false/no/off, got {text!r}")


def _csv(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


# dest: (environment variable, how its text is read); a flag given wins over its variable
ENV = {
    "model": ("SEEKMOE_MODEL", str), "adapter": ("SEEKMOE_ADAPTER", str), "host": ("SEEKMOE_HOST", str),
    "port": ("SEEKMOE_PORT", int),
    "api_key": ("SEEKMOE_API_KEY", _csv), "api_key_file": ("SEEKMOE_API_KEY_FILE", str),
    "admin_key": ("SEEKMOE_ADMIN_KEY", _csv), "share_prefix_cache": ("SEEKMOE_SHARE_PREFIX_CACHE", _bool),
    "max_summary_chars": ("SEEKMOE_MAX_SUMMARY_CHARS", int),
    "allowed_origins": ("SEEKMOE_ALLOWED_ORIGINS", _csv),
    "served_model_name": ("SEEKMOE_SERVED_MODEL_NAME", _csv), "dtype": ("SEEKMOE_DTYPE", str),
    "int8": ("SEEKMOE_INT8", _bool), "max_num_seqs": ("SEEKMOE_MAX_NUM_SEQS", int),
    "max_queue": ("SEEKMOE_MAX_QUEUE", int), "cache_tokens": ("SEEKMOE_CACHE_TOKENS", int),
    "cache_memory": ("SEEKMOE_CACHE_MEMORY", parse_size), "kv_cache_dtype": ("SEEKMOE_KV_CACHE_DTYPE", str),
    "max_body": ("SEEKMOE_MAX_BODY", parse_size),
    "log_prompts": ("SEEKMOE_LOG_PROMPTS", _bool), "tools": ("SEEKMOE_TOOLS", str),
    "tool_timeout": ("SEEKMOE_TOOL_TIMEOUT", float), "graph": ("SEEKMOE_GRAPH", str),
    "max_media": ("SEEKMOE_MAX_MEDIA", parse_size), "max_image_pixels": ("SEEKMOE_MAX_IMAGE_PIXELS", int),
    "max_audio_seconds": ("SEEKMOE_MAX_AUDIO_SECONDS", float), "max_media_items": ("SEEKMOE_MAX_MEDIA_ITEMS", int),
}


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    model_flags.add_model_arguments(p, env={dest: var for dest, (var, _) in ENV.items()})
    p.add_argument("--host", help=f"address to listen on (default {d.host}); anything but loopback needs API keys "
                                  "or --allow-unauthenticated [SEEKMOE_HOST]")
    p.add_argument("--port", type=int, help=f"TCP port (default {d.port}; 0: any free port) [SEEKMOE_PORT]")
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="a key clients must send as 'Authorization: Bearer KEY'; repeat for several. Other users "
                        "of this machine can read flags: prefer --api-key-file [SEEKMOE_API_KEY, comma-separated]")
    p.add_argument("--api-key-file", metavar="PATH",
                   help="a file of API keys, one a line (blank lines and lines starting with # are skipped) "
                        "[SEEKMOE_API_KEY_FILE]")
    p.add_argument("--admin-key", action="append", metavar="KEY",
                   help="a key that may also read /metrics and /v2/expert_load, which show every user's activity; "
                        "with admin keys set, API keys get 403 there; repeat for several [SEEKMOE_ADMIN_KEY, "
                        "comma-separated]")
    p.add_argument("--share-prefix-cache", action="store_true", default=None,
                   help="let requests with different API keys share cached prompt prefixes (faster for a common "
                        "system prompt, but one key holder can then tell by timing whether another sent a prompt; "
                        "off by default) [SEEKMOE_SHARE_PREFIX_CACHE=1]")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve on a non-loopback address without API keys (anyone who reaches it may use it)")
    p.add_argument("--served-model-name", nargs="+", action="extend", metavar="NAME",
                   help="the model name(s) clients may send and /v1/models lists; answers report the first "
                        "(default: the model folder's name). Put MODEL before this flag "
                        "[SEEKMOE_SERVED_MODEL_NAME, comma-separated]")
    p.add_argument("--allowed-origins", nargs="+", action="extend", metavar="ORIGIN",
                   help="web pages that may call the API from a browser (CORS), as their Origin, e.g. "
                        "http://localhost:3000, or * for any; they still need an API key when keys are set. Put "
                        "MODEL before this flag (default: none, no CORS headers) [SEEKMOE_ALLOWED_ORIGINS, "
                        "comma-separated]")
    p.add_argument("--max-num-seqs", type=int, metavar="N",
                   help=f"most sequences decoded together (default {d.max_num_seqs}) [SEEKMOE_MAX_NUM_SEQS]")
    p.add_argument("--max-queue", type=int, metavar="N",
                   help=f"most sequences waiting for a place; past it requests get 429 with Retry-After (default "
                        f"{d.max_queue}) [SEEKMOE_MAX_QUEUE]")
    p.add_argument("--cache-tokens", type=int, metavar="N",
                   help="KV-cache budget in tokens, shared by all sequences (default: 4 contexts, at least 8192, "
                        "at most a quarter of the memory available at start) [SEEKMOE_CACHE_TOKENS]")
    p.add_argument("--cache-memory", type=_size, metavar="SIZE",
                   help="KV-cache budget in bytes instead, e.g. 512MiB or 2G [SEEKMOE_CACHE_MEMORY]")
    p.add_argument("--max-body", type=_size, metavar="SIZE",
                   help="largest request body; larger ones get 413 (default 16MiB: images and audio come inside it, "
                        "base64) [SEEKMOE_MAX_BODY]")
    p.add_argument("--max-media", type=_size, metavar="SIZE",
                   help=f"largest image or audio file of a multimodal model (default {d.max_media_bytes >> 20}MiB) "
                        "[SEEKMOE_MAX_MEDIA]")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help=f"largest image, width x height (default {d.max_image_pixels:,}) [SEEKMOE_MAX_IMAGE_PIXELS]")
    p.add_argument("--max-audio-seconds", type=float, metavar="S",
                   help=f"longest audio (default {d.max_audio_seconds:g}) [SEEKMOE_MAX_AUDIO_SECONDS]")
    p.add_argument("--max-media-items", type=int, metavar="N",
                   help=f"most images and audio files in one request (default {d.max_media_items}) "
                        "[SEEKMOE_MAX_MEDIA_ITEMS]")
    p.add_argument("--max-summary-chars", type=int, metavar="N",
                   help=f"longest text /v2/summarize takes; longer gets 413 (default {d.max_summary_chars:,}) "
                        "[SEEKMOE_MAX_SUMMARY_CHARS]")
    p.add_argument("--tools", metavar="NAME,...",
                   help="plugins the server runs itself when the model calls them (seekmoe plugins list shows "
                        "what is installed; math is built in) [SEEKMOE_TOOLS]")
    p.add_argument("--tool-timeout", type=float, metavar="SECONDS",
                   help=f"longest a tool call may run before its result is an error (default {d.tool_timeout}) "
                        "[SEEKMOE_TOOL_TIMEOUT]")
    p.add_argument("--graph", metavar="GRAPH",
                   help="a knowledge graph file (seekmoe graph build) answered at /v2/graph/neighbors, /path and "
                        "/discover, and drawn by the page at /graph [SEEKMOE_GRAPH]")
    p.add_argument("--log-prompts", action="store_true", default=None,
                   help="put prompt text in the access log (off by default: prompts may be private) "
                        "[SEEKMOE_LOG_PROMPTS=1]")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServeConfig:
    environ = os.environ if environ is None else environ
    given = {}
    for dest, (var, read) in ENV.items():
        value = getattr(args, dest)
        if value is None and environ.get(var) is not None:
            try:
                value = read(environ[var])
            except ValueError as e:
                raise CLIError(f"{var}: {e}") from None
        given[dest] = value
    keys = list(given["api_key"] or [])
    if given["api_key_file"]:
        try:
            lines = Path(given["api_key_file"]).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"--api-key-file: cannot read {given['api_key_file']}: {e}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise CLIError(f"--api-key-file: {given['api_key_file']} holds no key")
    model_flags.check_model_folders(given["model"], given["adapter"])
    tools: tuple[str, ...] = ()
    if given["tools"]:
        from seekmoe.plugins import PluginError, select

        try:
            tools = tuple(select(given["tools"]))
        except PluginError as e:
            raise CLIError(f"--tools: {e}") from None
    if given["graph"]:
        from seekmoe.graph import GraphError
        from seekmoe.graph.store import Graph

        try:
            Graph.open(given["graph"]).close()  # refused now, not after the model has loaded
        except GraphError as e:
            raise CLIError(f"--graph: {e}") from None
    names = list(dict.fromkeys(given["served_model_name"] or []))
    fields = {"model": given["model"], "adapter": given["adapter"], "host": given["host"], "port": given["port"],
              "tools": tools, "tool_timeout": given["tool_timeout"], "graph": given["graph"],
              "dtype": given["dtype"],
              "served_model_name": names[0] if names else None, "served_model_aliases": tuple(names[1:]),
              "int8": given["int8"],
              "max_num_seqs": given["max_num_seqs"], "max_queue": given["max_queue"],
              "cache_tokens": given["cache_tokens"], "cache_bytes": given["cache_memory"],
              "kv_cache_dtype": given["kv_cache_dtype"],
              "max_body_bytes": given["max_body"], "log_prompts": given["log_prompts"],
              "max_media_bytes": given["max_media"], "max_image_pixels": given["max_image_pixels"],
              "max_audio_seconds": given["max_audio_seconds"], "max_media_items": given["max_media_items"],
              "share_prefix_cache": given["share_prefix_cache"], "max_summary_chars": given["max_summary_chars"]}
    config = ServeConfig(**{k: v for k, v in fields.items() if v is not None}, api_keys=tuple(dict.fromkeys(keys)),
                         admin_keys=tuple(dict.fromkeys(given["admin_key"] or [])),
                         allowed_origins=tuple(dict.fromkeys(given["allowed_origins"] or [])),
                         allow_unauthenticated=args.allow_unauthenticated)
    try:
        config.check()
    except ServeConfigError as e:
        raise CLIError(str(e)) from None
    return config


def load_llm(config: ServeConfig) -> LLM:
    llm = model_flags.load_llm(config.model, dtype=config.dtype, int8=config.int8, adapter=config.adapter,
                               cache_tokens=config.cache_tokens, cache_bytes=config.cache_bytes,
                               kv_cache_dtype=config.kv_cache_dtype,
                               max_num_seqs=config.max_num_seqs, max_waiting=config.max_queue)
    llm.media_limits = config.media_limits()
    if llm.sampling_defaults:  # as vLLM says it: a surprise otherwise, when a request without them samples cooler
        shown = ", ".join(f"{k}={v:g}" for k, v in llm.sampling_defaults.items())
        logging.getLogger("seekmoe.serve").info("sampling defaults from %s: %s (a request's own values win)",
                                                llm.path / "generation_config.json", shown)
    return llm


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.graph:  # the graph plugin's workers (processes of their own) find the graph here
        os.environ["SEEKMOE_GRAPH"] = str(Path(config.graph).resolve())
    import uvicorn

    from seekmoe.server.app import create_app

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name, level in (("seekmoe", logging.INFO), ("uvicorn", logging.WARNING)):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(level)
    failed: list[str] = []

    def fatal(error: str) -> None:
        failed.append(error)
        server.should_exit = True

    app = create_app(config, lambda: load_llm(config), on_fatal=fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           access_log=False, timeout_graceful_shutdown=5))

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            host = f"[{config.host}]" if ":" in config.host else config.host
            auth = f"{len(config.api_keys)} API key(s)" if config.api_keys else "no API key"
            auth += f", {len(config.admin_keys)} admin key(s)" if config.admin_keys else ""
            print(f"seekmoe serve: http://{host}:{port}/ (chat page; API at /v1 and /v2/generate; {auth}); "
                  "loading the model, /health says 200 when ready", file=sys.stderr, flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind, after logging why
        raise CLIError(f"could not listen on {config.host}:{config.port} (see the message above)") from None
    except KeyboardInterrupt:  # uvicorn shut down gracefully on Ctrl-C, then raised it again for us
        print("seekmoe serve: stopped", file=sys.stderr)
        return 0
    if failed:
        raise CLIError(f"the model failed to load: {failed[0]}")
    if not server.started:
        raise CLIError(f"could not listen on {config.host}:{config.port} (see the message above)")
    return 0
