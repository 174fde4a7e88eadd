"""`seekmoe serve`: flags, environment variables, the loopback rule, and one real run as a subprocess."""

from __future__ import annotations

import argparse
import signal

import pytest
import requests

from seekmoe.cli.main import build_parser
from seekmoe.cli.serve import config_from_args, parse_size
from seekmoe.errors import CLIError
from tests.conftest import assert_usage_error, run_cli, serve_process, tiny_model_folder


def config(*argv: str, env: dict[str, str] | None = None):
    args = build_parser().parse_args(["serve", *argv])
    return config_from_args(args, environ=env or {})


def test_keyless_servers_stay_on_loopback(capsys):
    rc, _, err = run_cli(capsys, "serve", "--host", "0.0.0.0")
    assert_usage_error(rc, err, "0.0.0.0", "--api-key", "--allow-unauthenticated")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert config("--host", host).host == host
    assert config("--host", "0.0.0.0", "--allow-unauthenticated").allow_unauthenticated
    assert config("--host", "0.0.0.0", "--api-key", "k").api_keys == ("k",)


def test_flags_environment_and_key_files(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nalpha\n\n  beta  \n")
    c = config("--api-key", "gamma", "--api-key-file", str(keys), "--max-queue", "8", "--cache-memory", "64MiB",
               env={"SEEKMOE_PORT": "9001", "SEEKMOE_MAX_QUEUE": "99", "SEEKMOE_INT8": "yes"})
    assert c.api_keys == ("gamma", "alpha", "beta") and c.port == 9001 and c.max_queue == 8 and c.int8
    assert c.cache_bytes == 64 << 20 and c.max_body_bytes == 16 << 20 and c.host == "127.0.0.1"
    c = config(env={"SEEKMOE_API_KEY": "a, b", "SEEKMOE_MAX_BODY": "2K", "SEEKMOE_SERVED_MODEL_NAME": "m"})
    assert c.api_keys == ("a", "b") and c.max_body_bytes == 2048 and c.served_model_name == "m"
    assert c.kv_cache_dtype == "auto" and config("--kv-cache-dtype", "int8").kv_cache_dtype == "int8"
    assert config(env={"SEEKMOE_KV_CACHE_DTYPE": "bfloat16"}).kv_cache_dtype == "bfloat16"
    for env, needle in (({"SEEKMOE_PORT": "http"}, "SEEKMOE_PORT"), ({"SEEKMOE_INT8": "maybe"}, "SEEKMOE_INT8"),
                        ({"SEEKMOE_MAX_BODY": "lots"}, "SEEKMOE_MAX_BODY"),
                        ({"SEEKMOE_KV_CACHE_DTYPE": "int4"}, "kv_cache_dtype must be one of auto")):
        with pytest.raises(CLIError, match=needle):
            config(env=env)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    for argv, needle in ((["--api-key-file", str(empty)], "holds no key"), (["--api-key-file", "/no/file"], "read"),
                         (["--port", "70000"], "port"), (["--max-queue", "0"], "max_queue"),
                         (["--cache-tokens", "10", "--cache-memory", "1M"], "not both"),
                         (["--api-key", "has space"], "API key 1"), ([str(tmp_path / "nope")], "no such model")):
        with pytest.raises(CLIError, match=needle):
            config(*argv)


def test_parse_size():
    assert [parse_size(s) for s in ("1048576", "512K", "1MiB", "2G", "1MB", "3 kb")] == [
        1 << 20, 512 << 10, 1 << 20, 2 << 30, 10**6, 3000]
    for bad in ("", "1.5M", "M", "-1", "12T"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-body", "huge"])
    assert isinstance(build_parser().parse_args(["serve"]), argparse.Namespace)


def test_seekmoe_serve_prints_its_address_serves_and_stops_on_ctrl_c(tmp_path):
    with serve_process(tiny_model_folder(tmp_path / "model")) as (url, proc):
        r = requests.post(f"{url}/v2/generate", headers={"Authorization": "Bearer k"},
                          json={"prompt": "private words", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
        assert '"POST /v2/generate" 200' in log and "private words" not in log
