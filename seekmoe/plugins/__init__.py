"""Plugins: tools a served model may call (`seekmoe serve --tools math`), found through entry points.

A plugin is a name, a description, a JSON Schema for its arguments and a `run` function. Other packages add
plugins under the entry-point group `seekmoe.plugins`; the built-in symbolic math plugin is always there.

`call()` is the one way the server runs a plugin: it checks the model's arguments against the schema, then runs
the plugin in a separate process (spawned, never forked: the server has threads), so that a hang is killed at the
timeout and a crash cannot take the server down. Every way a plugin can misbehave comes back as
`ToolResult(ok=False, content="error: ...")`, text the model can read, never as an exception. A `WorkerPool` keeps
warm processes per plugin, so a call costs a pipe round trip instead of a process start.

Everything between the server and a worker is JSON, both ways: the worker imports the plugin's run function by
its name (module:qualname), and the server never unpickles what a worker sends, so a compromised worker cannot run
code in the server through its replies. On Linux a worker runs under resource limits set once its plugin is
imported: MEMORY_LIMIT bytes of address space past what it then holds (a MemoryError is an error result and the
worker is replaced), CPU time a little past each call's timeout (a worker whose server died does not spin on),
no core files, files of at most MAX_FILE_BYTES and at most MAX_OPEN_FILES descriptors.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata

from seekmoe.errors import SeekmoeError

ENTRY_POINT_GROUP = "seekmoe.plugins"
MAX_RESULT_CHARS = 8_000  # a tool result goes back into the model's context; more would crowd out the conversation
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")  # OpenAI's rule for function names
START_TIMEOUT = 60.0  # seconds for a worker to start and import its plugin; not part of a call's timeout
# a reply is at most ~MAX_RESULT_CHARS characters, each JSON-escaped to at most 12 bytes (an astral \\uXXXX pair)
MAX_REPLY_BYTES = 12 * MAX_RESULT_CHARS + 4096
MEMORY_LIMIT = 1 << 30  # bytes of address space a worker may add to what it holds once its plugin is imported
# CPU seconds a call may use past its timeout: the wall clock stops a single thread first; this stops a plugin's
# threads together, and a worker left spinning by a server that died
CPU_GRACE = 2.0
MAX_FILE_BYTES = 64 << 20  # the largest file a plugin may write
MAX_OPEN_FILES = 256
DESCRIPTION = ("Plugins are tools a served model may call (seekmoe serve --tools NAME,...). They come from "
               "installed packages (entry-point group 'seekmoe.plugins'); 'math', symbolic math on sympy, and "
               "'graph', look-ups in the knowledge graph of seekmoe serve --graph, are built in.")


class PluginError(SeekmoeError, ValueError):
    """A plugin that is malformed, unknown, or given arguments it cannot take."""


@dataclass(frozen=True)
class Plugin:
    """A tool: `run(**arguments)` returns a str or JSON-serialisable data for the model to read."""

    name: str
    description: str
    parameters: dict  # a JSON Schema with "type": "object"; its properties are `run`'s keyword arguments
    run: Callable[..., object]  # must be importable by name (a module-level function): a worker imports it
    source: str = field(default="", compare=False)  # where discover() found it, for `seekmoe plugins list`

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise PluginError(f"plugin name must be 1-64 letters, digits, '_' or '-', not starting with a digit "
                              f"or '-', got {self.name!r}")
        if not isinstance(self.description, str):
            raise PluginError(f"plugin {self.name!r}: description must be a str, got {type(self.description).__name__}")
        if not isinstance(self.parameters, dict) or self.parameters.get("type") != "object":
            raise PluginError(f"plugin {self.name!r}: parameters must be a JSON Schema dict with \"type\": "
                              f"\"object\", got {self.parameters!r:.200}")
        import jsonschema  # here, not at the top: `seekmoe --help` imports this module

        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise PluginError(f"plugin {self.name!r}: parameters is not a valid JSON Schema: {e.message}") from None
        if not callable(self.run):
            raise PluginError(f"plugin {self.name!r}: run must be callable, got {type(self.run).__name__}")


@dataclass(frozen=True)
class ToolResult:
    """What call() hands back to the model, failures included."""

    ok: bool
    content: str  # the plugin's result (a str, or JSON text), or "error: ..." when ok is False
    seconds: float


# Keywords that only bound a call's arguments. call() checks them against the plugin's own schema when it runs; in
# the prompt they would tell the model nothing it needs, at a cost on every request that offers the tool (the math
# plugin's schema: 403 tokens with them, 295 without).
BOUNDS = frozenset({"maxLength", "minLength", "maxItems", "minItems", "maxProperties", "minProperties",
                    "additionalProperties"})


def _without_bounds(schema: object) -> object:
    if isinstance(schema, list):
        return [_without_bounds(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: ({name: _without_bounds(s) for name, s in v.items()} if k == "properties" and isinstance(v, dict)
                else _without_bounds(v)) for k, v in schema.items() if k not in BOUNDS}


def openai_tool(plugin: Plugin) -> dict:
    """The plugin as an entry of OpenAI's `tools` list, the form the model reads: its schema without BOUNDS."""
    return {"type": "function", "function": {"name": plugin.name, "description": plugin.description,
                                             "parameters": _without_bounds(plugin.parameters)}}


# ---------------------------------------------------------------------------------------------------- discovery

def _builtins() -> dict[str, Plugin]:
    from seekmoe.plugins.graph import plugin as graph
    from seekmoe.plugins.math import plugin as math

    return {p.name: replace(p, source=f"seekmoe: seekmoe.plugins.{p.name}:plugin (built in)") for p in (math, graph)}


def _load(ep) -> Plugin:
    obj = ep.load()
    if not isinstance(obj, Plugin) and callable(obj):
        obj = obj()  # a factory, for plugins that build their schema at load time
    if not isinstance(obj, Plugin):
        raise PluginError(f"it loads to a {type(obj).__name__}, expected a seekmoe.plugins.Plugin or a function "
                          f"returning one")
    return obj


def discover() -> dict[str, Plugin]:
    """Installed plugins by name: the built-in math and graph plugins, then each loadable `seekmoe.plugins` entry
    point."""
    found = _builtins()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        source = f"{dist.name if dist is not None else '?'}: {ep.value}"
        try:
            plugin = _load(ep)
        except (Exception, SystemExit) as e:  # one broken package must not stop the server from starting
            warnings.warn(f"skipping plugin entry point {ep.name!r} ({source}): {type(e).__name__}: {e}",
                          stacklevel=2)
            continue
        taken = found.get(plugin.name)
        if taken is not None and taken.run is plugin.run:
            continue  # the built-in, registered by seekmoe's own entry point
        if taken is not None:
            warnings.warn(f"skipping plugin entry point {ep.name!r} ({source}): the name {plugin.name!r} is "
                          f"already taken by {taken.source}", stacklevel=2)
            continue
        found[plugin.name] = replace(plugin, source=source)
    return found


def select(names: str | list[str], available: Mapping[str, Plugin] | None = None) -> dict[str, Plugin]:
    """The plugins named, in order: `names` is a list or a comma-separated string such as "math,search"."""
    if isinstance(names, str):
        names = names.split(",")
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    available = discover() if available is None else available
    installed = ", ".join(sorted(available)) or "none"
    if not wanted:
        raise PluginError(f"no plugin named; installed plugins: {installed}")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise PluginError(f"unknown plugin{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"installed plugins: {installed}")
    return {n: available[n] for n in wanted}


# ---------------------------------------------------------------------------------------------------- arguments

def parse_arguments(plugin: Plugin, arguments: str | dict) -> dict:
    """The model's arguments (JSON text or a dict) as a dict that satisfies the plugin's schema, or PluginError."""
    if isinstance(arguments, str):
        if not arguments.strip():
            arguments = "{}"  # models send "" for a tool without arguments
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise PluginError(f"arguments are not valid JSON: {e}") from None
    if not isinstance(arguments, dict):
        raise PluginError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    try:
        json.dumps(arguments)  # a dict from Python code goes to the worker as JSON
    except (TypeError, ValueError, RecursionError) as e:
        raise PluginError(f"arguments must be JSON data: {e}") from None
    import jsonschema

    validator = jsonschema.Draft202012Validator(plugin.parameters)
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        raise PluginError(f"arguments do not match the schema of {plugin.name!r}: at {error.json_path}: "
                          f"{error.message}")
    return arguments


# ------------------------------------------------------------------------------------------------------ workers

def _cap(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"... [truncated: {len(text):,} characters in all]"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB"


def import_name(plugin: Plugin) -> str:
    """The name "module:qualname" a worker imports the plugin's run function by; PluginError if it has none."""
    run = plugin.run
    module, qualname = getattr(run, "__module__", None), getattr(run, "__qualname__", None)
    try:
        found = _resolve(f"{module}:{qualname}") if module and qualname and "<" not in qualname else None
    except (ImportError, AttributeError):
        found = None
    if found is not run:
        raise PluginError(f"plugin {plugin.name!r} cannot be sent to a worker process: its run function must be "
                          f"importable by name, e.g. defined at module level; {module}:{qualname} is not it")
    return f"{module}:{qualname}"


def _resolve(name: str) -> object:
    module, _, qualname = name.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _limit_process(memory_limit: int | None) -> None:
    """The worker's own limits, set once its plugin is imported (Linux; elsewhere only the timeout holds)."""
    try:
        import resource
    except ImportError:  # Windows
        return
    limits = [(resource.RLIMIT_CORE, 0),  # SIGXCPU would dump a core
              (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),  # past it a write fails with EFBIG
              (resource.RLIMIT_NOFILE, MAX_OPEN_FILES)]
    if memory_limit is not None:
        try:
            with open("/proc/self/statm") as f:  # the address space held now: the interpreter, the imports
                limits.append((resource.RLIMIT_AS, int(f.read().split()[0]) * resource.getpagesize() + memory_limit))
        except OSError:  # no /proc (macOS)
            pass
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        with contextlib.suppress(OSError, ValueError):  # a limit the system refuses
            resource.setrlimit(which, (value, value))


def _limit_cpu(seconds: float) -> None:
    """Raise SIGXCPU (which kills) once this call has used `seconds` of CPU time; reset before each call."""
    try:
        import resource
    except ImportError:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 1  # whole seconds, rounded up
    with contextlib.suppress(OSError, ValueError):  # the soft limit only: a hard one could not be raised again
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _run_one(run: Callable[..., object], kwargs: dict, memory_limit: int | None) -> tuple[bool, str, bool]:
    """(ok, content, retire): retire when the worker ran out of memory and should not be trusted with more calls."""
    try:
        result = run(**kwargs)
        if isinstance(result, str):
            return True, result, False
        try:
            return True, json.dumps(result, ensure_ascii=False, allow_nan=False), False
        except (TypeError, ValueError, RecursionError) as e:
            return False, (f"the plugin returned a {type(result).__name__}, which is not JSON-serialisable "
                           f"({e})"), False
    except MemoryError:
        limit = (f"went past its memory limit ({_gib(memory_limit)} more than its process held at start)"
                 if memory_limit else "ran out of memory")
        return False, f"MemoryError: the plugin {limit}; its process was replaced", True
    except BaseException as e:  # SystemExit too: a plugin calling sys.exit() is an error, not a dead worker
        return False, f"{type(e).__name__}: {e}", False


def _send(conn, ok: bool, content: str, retire: bool = False) -> None:
    """A reply to the server, capped (error messages too)."""
    conn.send_bytes(json.dumps({"ok": ok, "content": _cap(content), "retire": retire}).encode())


def _worker_main(conn) -> None:
    """A worker process: import the plugin's run function, limit the process, then run one call per message until
    EOF. Messages both ways are JSON."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the caller stops us
    sys.stdout = sys.stderr  # a plugin's print() must not mix into the caller's stdout (`seekmoe chat`)
    try:
        start = json.loads(conn.recv_bytes())
        run, memory_limit = _resolve(start["run"]), start["memory_limit"]
    except BaseException as e:
        _send(conn, False, f"cannot load the plugin in its process: {type(e).__name__}: {e}")
        return
    _limit_process(memory_limit)
    _send(conn, True, "ready")
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the caller closed the pipe, or died
            return
        _limit_cpu(message["cpu_seconds"])
        ok, content, retire = _run_one(run, message["arguments"], memory_limit)
        _send(conn, ok, content, retire)
        if retire:
            return


class WorkerFailed(Exception):
    """The worker could not start, died or sent something other than a reply; the message is for the model."""


def _exit_reason(process, cpu_seconds: float | None = None) -> str:
    process.join(timeout=1.0)
    code = process.exitcode
    if code is None:
        return "did not exit"
    if code == -signal.SIGXCPU:
        limit = f" of {cpu_seconds:g} s" if cpu_seconds is not None else ""
        return f"killed by SIGXCPU: it used up its CPU-time limit{limit}"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Worker:
    """One spawned process bound to one plugin; used by one call at a time."""

    def __init__(self, plugin: Plugin, name: str, start_timeout: float, memory_limit: int | None):
        self.name, self.run = plugin.name, plugin.run
        self.retired = False  # it ran out of memory: stop it rather than reuse it
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # daemon: the interpreter's exit kills forgotten workers instead of waiting for them
        self.process = ctx.Process(target=_worker_main, args=(child,), name=f"seekmoe-plugin-{plugin.name}",
                                   daemon=True)
        self.process.start()
        child.close()
        try:
            self.conn.send_bytes(json.dumps({"run": name, "memory_limit": memory_limit}).encode())
            if not self.conn.poll(start_timeout):
                raise WorkerFailed(f"plugin {self.name!r} did not start within {start_timeout:g} s")
        except (EOFError, OSError):
            self.stop()
            raise WorkerFailed(f"plugin {self.name!r} process died while starting "
                                f"({_exit_reason(self.process)})") from None
        except WorkerFailed:
            self.stop()
            raise
        ok, message = self._reply(" while starting")
        if not ok:
            self.stop()
            raise WorkerFailed(message)

    def alive(self) -> bool:
        return self.process.is_alive() and not self.conn.closed

    def call(self, kwargs: dict, timeout: float, cpu_seconds: float) -> tuple[bool, str]:
        """Run once; WorkerFailed (after stopping the process) on a timeout, a dead process or a bad reply."""
        try:
            self.conn.send_bytes(json.dumps({"arguments": kwargs, "cpu_seconds": cpu_seconds}).encode())
            if not self.conn.poll(timeout):
                self.stop()
                raise WorkerFailed(f"plugin {self.name!r} did not finish within {timeout:g} s; its process was "
                                    f"stopped")
        except (EOFError, OSError):
            self.stop()
            raise WorkerFailed(f"plugin {self.name!r} process died "
                                f"({_exit_reason(self.process, cpu_seconds)})") from None
        return self._reply("", cpu_seconds)

    def _reply(self, when: str, cpu_seconds: float | None = None) -> tuple[bool, str]:
        """The worker's next message, read as JSON and never unpickled: whoever runs in the worker cannot run code
        here. WorkerFailed (after stopping the process) when it died or sent anything but a reply."""
        try:
            data = self.conn.recv_bytes(MAX_REPLY_BYTES)
        except (EOFError, OSError) as e:
            self.stop()
            if str(e) == "bad message length":  # what recv_bytes says of a message past maxlength
                raise WorkerFailed(f"plugin {self.name!r} process sent a reply longer than {MAX_REPLY_BYTES:,} "
                                    f"bytes{when}; its process was stopped") from None
            raise WorkerFailed(f"plugin {self.name!r} process died{when} "
                                f"({_exit_reason(self.process, cpu_seconds)})") from None
        try:
            reply = json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            reply = None
        if not (isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
                and isinstance(reply.get("content"), str)):
            self.stop()
            raise WorkerFailed(f"plugin {self.name!r} process sent a reply that is not JSON of the form "
                                f"{{\"ok\": bool, \"content\": str}}{when}; its process was stopped")
        self.retired = reply.get("retire") is True
        content = reply["content"]  # capped by the worker, but trust nothing from it
        return reply["ok"], content if len(content) <= MAX_RESULT_CHARS + 100 else _cap(content)

    def stop(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5.0)


class WorkerPool:
    """Warm worker processes per plugin: a call then costs a pipe round trip, not a process start (~0.3 s).

    Each call takes an idle worker of its plugin or starts one, and gives it back afterwards unless it timed out
    or died (then the next call starts a fresh one). Thread-safe; close() stops every worker. memory_limit: bytes
    of address space each worker may add to what it holds once its plugin is imported (None: no limit).
    """

    def __init__(self, idle_per_plugin: int = 2, start_timeout: float = START_TIMEOUT,
                 memory_limit: int | None = MEMORY_LIMIT):
        if idle_per_plugin < 0:
            raise ValueError(f"idle_per_plugin must be >= 0, got {idle_per_plugin}")
        if memory_limit is not None and not memory_limit > 0:
            raise ValueError(f"memory_limit must be > 0 bytes or None, got {memory_limit}")
        self.idle_per_plugin, self.start_timeout, self.memory_limit = idle_per_plugin, start_timeout, memory_limit
        self._idle: dict[tuple[str, int], list[Worker]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _take(self, plugin: Plugin, name: str) -> Worker:
        with self._lock:
            idle = self._idle.get((plugin.name, id(plugin.run)), [])
            while idle:
                worker = idle.pop()
                if worker.alive() and worker.run is plugin.run:
                    return worker
                worker.stop()
        return Worker(plugin, name, self.start_timeout, self.memory_limit)

    def _give_back(self, plugin: Plugin, worker: Worker) -> None:
        with self._lock:
            idle = self._idle.setdefault((plugin.name, id(plugin.run)), [])
            if not self._closed and not worker.retired and len(idle) < self.idle_per_plugin:
                idle.append(worker)
                return
        worker.stop()

    def warm(self, plugin: Plugin) -> None:
        """Start a worker now, so the first call does not wait for a process start and the plugin's imports."""
        try:
            worker = Worker(plugin, import_name(plugin), self.start_timeout, self.memory_limit)
        except (WorkerFailed, PluginError) as e:
            raise PluginError(f"cannot start a worker for plugin {plugin.name!r}: {e}") from None
        self._give_back(plugin, worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = [w for idle in self._idle.values() for w in idle]
            self._idle.clear()
        for w in workers:
            w.stop()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call(plugin: Plugin, arguments: str | dict, timeout: float = 10.0, pool: WorkerPool | None = None) -> ToolResult:
    """Run the plugin on the model's arguments in a separate process; never raises for plugin misbehaviour.

    Without a pool each call spawns a process, with MEMORY_LIMIT, and stops it afterwards (about 0.3 s plus the
    plugin's imports). The call may use `timeout + CPU_GRACE` seconds of CPU time.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    start = time.perf_counter()

    def result(ok: bool, content: str) -> ToolResult:
        return ToolResult(ok, content if ok else f"error: {content}", time.perf_counter() - start)

    try:
        kwargs = parse_arguments(plugin, arguments)
    except PluginError as e:
        return result(False, str(e))
    try:
        name = import_name(plugin)
    except PluginError as e:
        return result(False, str(e))
    try:
        worker = (pool._take(plugin, name) if pool is not None
                  else Worker(plugin, name, START_TIMEOUT, MEMORY_LIMIT))
        ok, content = worker.call(kwargs, timeout, timeout + CPU_GRACE)
    except WorkerFailed as e:
        return result(False, str(e))
    if pool is not None:
        pool._give_back(plugin, worker)
    else:
        worker.stop()
    return result(ok, content)


# -------------------------------------------------------------------------------------------------------- the CLI

def _argument_names(plugin: Plugin) -> list[str]:
    required = set(plugin.parameters.get("required", []))
    return [f"{n} (required)" if n in required else n for n in plugin.parameters.get("properties", {})]


def format_list(plugins: Mapping[str, Plugin] | Iterable[Plugin]) -> str:
    """`seekmoe plugins list`: one block per plugin, its name, source, description and arguments."""
    plugins = list(plugins.values()) if isinstance(plugins, Mapping) else list(plugins)
    if not plugins:
        return "no plugins installed"
    blocks = []
    for p in plugins:
        args = ", ".join(_argument_names(p)) or "none"
        blocks.append(f"{p.name}  [{p.source or '?'}]\n  {p.description}\n  arguments: {args}")
    return "\n\n".join(blocks)


def add_arguments(parser) -> None:
    """`seekmoe plugins list [--json]`, under the `plugins` parser."""
    if parser.description is None:
        parser.description = DESCRIPTION
    actions = parser.add_subparsers(dest="plugins_command", required=True, metavar="ACTION")
    p = actions.add_parser("list", help="list the installed plugins with their arguments",
                           description="List the installed plugins: name, the package and entry point that provide "
                                       "it, description and arguments (required ones marked). A broken entry point "
                                       "is skipped with a warning on stderr.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {name, source, description, parameters}, parameters being the JSON "
                        "Schema of the arguments")
    p.set_defaults(func=run_from_args)


def run_from_args(args) -> int:
    plugins = discover()
    if args.json:
        print(json.dumps([{"name": p.name, "source": p.source, "description": p.description,
                           "parameters": p.parameters} for p in plugins.values()], indent=2, ensure_ascii=False))
    else:
        print(format_list(plugins))
    return 0
