"""Misbehaving plugins for tests/test_plugins.py: at module level, so a spawned worker can import them."""

from __future__ import annotations

import os
import sys
import time

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
