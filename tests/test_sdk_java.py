"""The Java SDK (sdk/java, issue 24) against live servers: sdk/java/src/test/java/seekmoe/SdkTest.java, one
scenario per test, built once with `make -C sdk java-tests` (javac, Debian's gson). The servers: tests/sdk_live.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests import sdk_live

SDK = Path(__file__).parents[1] / "sdk"
GSON = Path("/usr/share/java/gson.jar")

pytestmark = [
    pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                       reason="no JDK (javac, java) on PATH: apt-get install default-jdk-headless"),
    pytest.mark.skipif(not GSON.exists(), reason=f"no {GSON}: apt-get install libgoogle-gson-java"),
    pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH"),
]


@pytest.fixture(scope="module")
def program() -> list[str]:
    build = subprocess.run(["make", "-C", str(SDK), "java-tests"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    jb = SDK / "java" / "build"
    return ["java", "-cp", f"{jb / 'seekmoe.jar'}:{GSON}:{jb / 'test-classes'}", "seekmoe.SdkTest"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with sdk_live.servers(tmp_path_factory) as s:
        yield s


@pytest.mark.parametrize("name", ["generate", "generateStream", "chatAndStream", "leaveStreamEarly",
                                  "summarizeAndExpertLoad", "wrongKey", "badRequest", "tooLarge",
                                  "connectionRefused", "badOptions"])
def test_scenario(program, servers, name):
    sdk_live.run(program, name, servers)


def test_a_full_queue_is_refused_then_retried_until_a_place_frees(program, servers):
    sdk_live.run_busy(program, "busyRetry", servers)


def test_a_stream_cut_midway_raises_after_its_text_and_is_not_retried(program, servers):
    before = servers.cut_requests.copy()
    sdk_live.run(program, "streamCut", servers)
    seen = servers.cut_requests - before
    assert seen == {"/v2/generate": 2, "/v1/chat/completions": 1}, seen  # the cut and the error event, each once


def test_a_timeout_raises_and_is_not_retried(program, servers):
    before = servers.cut_requests.copy()
    sdk_live.run(program, "timeout", servers)
    assert servers.cut_requests - before == {"/v2/generate": 1}
