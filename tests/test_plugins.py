"""Plugins: validation, discovery through entry points, selection, and call() isolating misbehaving plugins: JSON
both ways between server and worker, the worker under memory and CPU limits."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import threading
import time

import pytest

from seekmoe.plugins import (
    MAX_RESULT_CHARS,
    MEMORY_LIMIT,
    START_TIMEOUT,
    Plugin,
    PluginError,
    Worker,
    WorkerFailed,
    WorkerPool,
    add_arguments,
    call,
    discover,
    format_list,
    import_name,
    openai_tool,
    run_from_args,
    select,
)
from seekmoe.plugins import math as math_plugin
from tests import plugin_fixtures as fx


@pytest.fixture(scope="module")
def pool():
    with WorkerPool() as p:
        yield p


# ------------------------------------------------------------------------------------------------- the dataclass

@pytest.mark.parametrize("kwargs, message", [
    (dict(name="1abc"), "plugin name"),
    (dict(name="has space"), "plugin name"),
    (dict(name="x" * 65), "plugin name"),
    (dict(parameters={"type": "array"}), '"type": "object"'),
    (dict(parameters=[]), '"type": "object"'),
    (dict(parameters={"type": "object", "properties": 5}), "not a valid JSON Schema"),
    (dict(run=42), "run must be callable"),
    (dict(description=None), "description must be a str"),
])
def test_plugin_rejects_malformed_fields(kwargs, message):
    fields = dict(name="ok", description="d", parameters={"type": "object"}, run=fx.echo) | kwargs
    with pytest.raises(PluginError, match=message):
        Plugin(**fields)


def test_openai_tool_form():
    tool = openai_tool(math_plugin.plugin)
    assert tool["type"] == "function"
    assert set(tool["function"]) == {"name", "description", "parameters"}
    assert tool["function"]["name"] == "math"
    assert tool["function"]["parameters"]["properties"]["operation"]["enum"][0] == "evaluate"
    tool["function"]["parameters"]["required"].append("x")  # a copy: the plugin's schema is untouched
    assert math_plugin.plugin.parameters["required"] == ["operation"]


def test_openai_tool_leaves_the_bounds_to_call():
    schema = {"type": "object", "additionalProperties": False, "required": ["maxLength"],
              "properties": {"maxLength": {"type": "string", "maxLength": 5, "description": "a property so named"},
                             "xs": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 2}}}
    plugin = Plugin(name="bounded", description="d", parameters=schema, run=fx.echo)
    shown = openai_tool(plugin)["function"]["parameters"]
    assert shown == {"type": "object", "required": ["maxLength"],
                     "properties": {"maxLength": {"type": "string", "description": "a property so named"},
                                    "xs": {"type": "array", "items": {"type": "string"}}}}
    assert plugin.parameters["properties"]["xs"]["maxItems"] == 2  # the schema call() checks keeps them
    math = openai_tool(math_plugin.plugin)["function"]["parameters"]
    assert "maxLength" not in json.dumps(math) and "additionalProperties" not in math


# --------------------------------------------------------------------------------------------------- discovery

def _fake_entry_points(monkeypatch, *specs):
    eps = [importlib.metadata.EntryPoint(name, value, "seekmoe.plugins") for name, value in specs]

    def entry_points(group=None, **_):
        assert group == "seekmoe.plugins"
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_discover_has_the_builtin_plugins_without_entry_points(monkeypatch):
    _fake_entry_points(monkeypatch)
    plugins = discover()
    assert list(plugins) == ["math", "graph"]
    assert plugins["math"].run is math_plugin.run
    assert "built in" in plugins["math"].source and "built in" in plugins["graph"].source


def test_discover_skips_broken_entry_points_with_a_warning(monkeypatch):
    _fake_entry_points(monkeypatch,
                       ("math", "seekmoe.plugins.math:plugin"),  # seekmoe's own registration: no warning
                       ("echo", "tests.plugin_fixtures:ECHO"),
                       ("shout", "tests.plugin_fixtures:make_shout"),
                       ("missing", "tests.no_such_module:plugin"),
                       ("number", "tests.plugin_fixtures:NOT_A_PLUGIN"),
                       ("nothing", "tests.plugin_fixtures:make_nothing"),
                       ("fails", "tests.plugin_fixtures:make_fails"),
                       ("other_math", "tests.plugin_fixtures:OTHER_MATH"))
    with pytest.warns(UserWarning) as record:
        plugins = discover()
    assert list(plugins) == ["math", "graph", "echo", "shout"]
    assert plugins["math"].run is math_plugin.run  # a second "math" does not replace the built-in
    assert plugins["echo"].source == "?: tests.plugin_fixtures:ECHO"
    messages = [str(w.message) for w in record]
    assert len(messages) == 5
    for name, why in [("missing", "ModuleNotFoundError"), ("number", "loads to a int"),
                      ("nothing", "loads to a str"), ("fails", "factory failed"), ("other_math", "already taken")]:
        assert any(f"entry point {name!r}" in m and why in m for m in messages), (name, messages)


def test_select():
    available = {"math": math_plugin.plugin, "echo": fx.ECHO}
    assert list(select("math", available)) == ["math"]
    assert list(select(" echo , math,echo ", available)) == ["echo", "math"]
    assert list(select(["math"], available)) == ["math"]
    with pytest.raises(PluginError, match=r"unknown plugin 'serch'; installed plugins: echo, math"):
        select("math,serch", available)
    with pytest.raises(PluginError, match="unknown plugins 'a', 'b'"):
        select(["a", "b"], available)
    with pytest.raises(PluginError, match="no plugin named"):
        select(" , ", available)
    assert "math" in select("math")  # discover() when no plugins are given


# ------------------------------------------------------------------------------------------------------ call()

def test_call_math_plugin(pool):
    r = call(math_plugin.plugin, '{"operation": "solve", "expression": "x^2 - 5x + 6 = 0"}', pool=pool)
    assert r.ok, r.content
    assert json.loads(r.content)["answer"] == "x = 2, x = 3"
    r = call(math_plugin.plugin, {"operation": "evaluate", "expression": "9**9**9**9"}, pool=pool)
    assert not r.ok and r.content.startswith("error: MathError: exponent too large")


def test_call_without_a_pool_spawns_a_process_per_call():
    first, second = call(fx.PID, "{}"), call(fx.PID, "")
    assert first.ok and second.ok
    assert first.content != second.content


def test_pool_reuses_its_workers(pool):
    pool.warm(fx.PID)
    pids = {call(fx.PID, {}, pool=pool).content for _ in range(3)}
    assert len(pids) == 1
    with pytest.raises(PluginError, match="cannot start a worker for plugin 'local'"):
        pool.warm(Plugin("local", "defined in a test", {"type": "object"}, lambda: 1))


@pytest.mark.parametrize("arguments, message", [
    ("{not json", "arguments are not valid JSON"),
    ("[1, 2]", "arguments must be a JSON object, got list"),
    ('{"seconds": -1}', "at $.seconds: -1 is less than the minimum of 0"),
    ('{"seconds": "1"}', "at $.seconds: '1' is not of type 'number'"),
    ('{"minutes": 1}', "Additional properties are not allowed ('minutes' was unexpected)"),
])
def test_bad_arguments_are_error_results(arguments, message):
    r = call(fx.SLEEP, arguments)  # refused before any process starts
    assert not r.ok and r.content.startswith("error: ") and message in r.content, r.content
    assert r.seconds < 0.5


def test_math_schema_violation_names_the_path(pool):
    r = call(math_plugin.plugin, {"operation": "integral", "expression": "x"}, pool=pool)
    assert not r.ok and "at $.operation: 'integral' is not one of" in r.content


@pytest.mark.parametrize("plugin, message", [
    (fx.RAISES, "error: RuntimeError: boom"),
    (fx.EXITS, "error: SystemExit: 3"),
    (fx.NOT_SERIALISABLE, "returned a dict, which is not JSON-serialisable"),
    (fx.NAN, "returned a float, which is not JSON-serialisable"),
])
def test_plugin_failures_are_error_results(pool, plugin, message):
    r = call(plugin, {}, pool=pool)
    assert not r.ok and message in r.content, r.content
    assert call(plugin, {}, pool=pool).content == r.content  # the worker survived and answers again


def test_a_hang_is_stopped_at_the_timeout_and_the_next_call_works(pool):
    call(fx.SLEEP, {}, pool=pool)  # a warm worker, so the timing below is the plugin's alone
    start = time.perf_counter()
    r = call(fx.SLEEP, {"seconds": 3600}, timeout=1.0, pool=pool)
    assert not r.ok and "did not finish within 1 s" in r.content
    assert time.perf_counter() - start < 15  # stopped at 1 s (and killed), not left to sleep its hour
    r = call(fx.SLEEP, {"seconds": 0}, timeout=30, pool=pool)
    assert r.ok and r.content == "slept 0 s"


def test_a_dead_process_is_an_error_result_and_the_next_call_works(pool):
    r = call(fx.DIES, {}, pool=pool)
    assert not r.ok and "process died (exit code 1)" in r.content
    assert call(fx.ECHO, {"a": 1}, pool=pool).content == '{"a": 1}'
    assert "exit code 1" in call(fx.DIES, {}, pool=pool).content


def test_a_long_result_is_capped(pool):
    r = call(fx.HUGE, {}, pool=pool)
    assert r.ok and len(r.content) < MAX_RESULT_CHARS + 100
    assert r.content.endswith("[truncated: 20,000 characters in all]")


def test_a_run_function_that_cannot_be_imported_by_name_is_an_error_result():
    plugin = Plugin("local", "defined in a test", {"type": "object"}, lambda: 1)
    r = call(plugin, {})
    assert not r.ok and "cannot be sent to a worker process" in r.content and "<lambda>" in r.content
    r = call(fx.ECHO, {"a": object()})  # arguments from Python code travel as JSON too
    assert not r.ok and "arguments must be JSON data" in r.content


# ------------------------------------------------------------------------------------------ JSON from the worker

def test_a_worker_sending_a_pickle_runs_nothing_in_the_server(tmp_path):
    marker = tmp_path / "unpickled"
    r = call(fx.SENDS_PICKLE, {"marker": str(marker)})
    assert not r.ok and "sent a reply that is not JSON" in r.content and "process was stopped" in r.content, r.content
    assert not marker.exists()


@pytest.mark.parametrize("plugin, message", [
    (fx.SENDS_TOO_MUCH, "sent a reply longer than"),
    (fx.SENDS_WRONG_JSON, 'sent a reply that is not JSON of the form {"ok": bool, "content": str}'),
])
def test_a_worker_sending_anything_but_a_reply_is_stopped(pool, plugin, message):
    start = time.perf_counter()
    r = call(plugin, {}, pool=pool)
    assert not r.ok and message in r.content and "process was stopped" in r.content, r.content
    assert time.perf_counter() - start < 60  # refused, not stuck: a hang would meet the call's timeout
    assert call(plugin, {}, pool=pool).content == r.content  # a fresh worker each time
    assert call(fx.ECHO, {"a": 1}, pool=pool).content == '{"a": 1}'


# ------------------------------------------------------------------------------------------- the worker's limits

def test_a_plugin_past_its_memory_limit_is_an_error_result_and_its_worker_is_replaced(pool):
    first = json.loads(call(fx.HOG, {}, pool=pool).content)["pid"]
    r = call(fx.HOG, {"gib": 8}, pool=pool)
    assert not r.ok and "MemoryError: the plugin went past its memory limit (1 GiB more" in r.content, r.content
    r = call(fx.HOG, {"gib": 0.25}, pool=pool)  # within the limit, in a fresh worker
    assert r.ok and json.loads(r.content)["pid"] != first
    with pytest.raises(ValueError, match="memory_limit must be > 0 bytes or None, got 0"):
        WorkerPool(memory_limit=0)


def test_a_busy_loop_is_killed_at_the_timeout(pool, tmp_path):
    pid_file = tmp_path / "pid"
    r = call(fx.SPIN, {"pid_file": str(pid_file)}, timeout=1.0, pool=pool)
    assert not r.ok and "did not finish within 1 s" in r.content
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_a_worker_past_its_cpu_time_dies_by_itself(tmp_path):
    """What stops a plugin's threads together, or a worker whose server died: call() passes timeout + CPU_GRACE."""
    worker = Worker(fx.SPIN, import_name(fx.SPIN), START_TIMEOUT, MEMORY_LIMIT)
    try:
        with pytest.raises(WorkerFailed, match="killed by SIGXCPU: it used up its CPU-time limit of 1 s"):
            worker.call({"pid_file": str(tmp_path / "pid")}, timeout=30, cpu_seconds=1)
    finally:
        worker.stop()


def test_concurrent_calls_each_get_a_worker(pool):
    results = [None] * 4

    def one(i):
        results[i] = call(fx.SHOUT, {"text": f"call {i}"}, pool=pool)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.content for r in results] == [f"CALL {i}" for i in range(4)]


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be > 0"):
        call(fx.ECHO, {}, timeout=0)


# ------------------------------------------------------------------------------------------------------ the CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seekmoe")
    add_arguments(parser.add_subparsers(dest="command").add_parser("plugins"))
    return parser


def test_format_list():
    text = format_list({"math": discover()["math"], "shout": fx.SHOUT})
    assert text.startswith("math  [seekmoe: seekmoe.plugins.math:plugin (built in)]")
    assert "arguments: operation (required), expression, variable, point, equations, lower, upper" in text
    assert "shout  [?]\n  upper-cases text\n  arguments: text (required)" in text
    assert format_list([]) == "no plugins installed"


def test_plugins_list_command(capsys, monkeypatch):
    _fake_entry_points(monkeypatch, ("shout", "tests.plugin_fixtures:SHOUT"))
    args = _parser().parse_args(["plugins", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "math  [seekmoe" in out and "shout  [?: tests.plugin_fixtures:SHOUT]" in out
    args = _parser().parse_args(["plugins", "list", "--json"])
    assert run_from_args(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == ["math", "graph", "shout"]
    assert listed[0]["parameters"]["required"] == ["operation"]


def test_every_flag_has_help():
    parser = _parser()
    plugins = parser._subparsers._group_actions[0].choices["plugins"]
    for action in plugins._subparsers._group_actions[0].choices["list"]._actions:
        assert action.help, action
