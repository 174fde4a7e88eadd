"""Misbehaving plugins for tests/test_plugins.py: at module level, so a spawned worker can import them."""

from __future__ import annotations

import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from seekmoe.plugins import Plugin

ANY = {"type": "object"}


def echo(**kwargs):
    return kwargs


def pid():
    return os.getpid()


def sleep(seconds: float = 0):
    time.sleep(seconds)
    return f"slept {seconds} s"


def raises():
    raise RuntimeError("boom")


def exits():
    sys.exit(3)


def dies():
    os._exit(1)


def not_serialisable():
    return {"value": object()}


def nan():
    return float("nan")


def huge():
    return "x" * 20_000


def shout(text: str):
    return text.upper()


def hog(gib: float = 0):
    """Its process id, after asking for `gib` GiB (calloc: untouched pages, so no memory is used without a limit)."""
    return {"pid": os.getpid(), "bytes": len(bytes(int(gib * (1 << 30))))}


def spin(pid_file: str):
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        pass


def _worker_connection() -> Connection:
    """The worker's pipe to the server, found in a caller's frame: what a compromised plugin would do."""
    frame = sys._getframe()
    while not isinstance(frame.f_locals.get("conn"), Connection):
        frame = frame.f_back
    return frame.f_locals["conn"]


def touch(marker: str):
    """What unpickling `Payload` runs: it leaves a file behind, and looks like a good reply."""
    Path(marker).touch()
    return {"ok": True, "content": "unpickled by the server"}


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return touch, (self.marker,)


def sends_pickle(marker: str):
    _worker_connection().send(Payload(marker))  # Connection.send pickles
    return "done"


def sends_too_much():
    _worker_connection().send_bytes(b"[" * (50 << 20))
    return "done"


def sends_wrong_json():
    _worker_connection().send_bytes(b'{"ok": "yes", "content": 1}')
    return "done"


ECHO = Plugin("echo", "returns its arguments", ANY, echo)
PID = Plugin("pid", "the worker's process id", ANY, pid)
SLEEP = Plugin("sleep", "sleeps", {"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0}},
                                   "additionalProperties": False}, sleep)
RAISES = Plugin("raises", "raises RuntimeError", ANY, raises)
EXITS = Plugin("exits", "calls sys.exit(3)", ANY, exits)
DIES = Plugin("dies", "kills its own process", ANY, dies)
NOT_SERIALISABLE = Plugin("not_serialisable", "returns an object()", ANY, not_serialisable)
NAN = Plugin("nan", "returns NaN", ANY, nan)
HUGE = Plugin("huge", "returns 20,000 characters", ANY, huge)
HOG = Plugin("hog", "allocates memory", {"type": "object", "properties": {"gib": {"type": "number"}}}, hog)
SPIN = Plugin("spin", "spins forever", {"type": "object", "properties": {"pid_file": {"type": "string"}}}, spin)
SENDS_PICKLE = Plugin("sends_pickle", "sends the server a pickle", {
    "type": "object", "properties": {"marker": {"type": "string"}}}, sends_pickle)
SENDS_TOO_MUCH = Plugin("sends_too_much", "sends the server 50 MB", ANY, sends_too_much)
SENDS_WRONG_JSON = Plugin("sends_wrong_json", "sends the server JSON of the wrong form", ANY, sends_wrong_json)
SHOUT = Plugin("shout", "upper-cases text", {"type": "object", "properties": {"text": {"type": "string"}},
                                             "required": ["text"], "additionalProperties": False}, shout)

NOT_A_PLUGIN = 42


def make_shout() -> Plugin:
    """An entry point may name a factory instead of a Plugin."""
    return SHOUT


def make_nothing():
    return "not a plugin"


def make_fails():
    raise RuntimeError("factory failed")


OTHER_MATH = Plugin("math", "a second plugin named math", ANY, echo)


def weather(city: str):
    return "sunny"  # what the tool model saw in training


def weather_hangs(city: str):
    time.sleep(60)


WEATHER = Plugin("get_weather", "The weather in a city.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, weather)
WEATHER_HANGS = Plugin("get_weather", "The weather in a city.", WEATHER.parameters, weather_hangs)
