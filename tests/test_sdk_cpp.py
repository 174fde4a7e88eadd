"""The C++ SDK (sdk/cpp, issue 24) against live servers: sdk/cpp/tests/sdk_test.cpp, one scenario per test, built
once with CMake (g++, libcurl, nlohmann-json). The servers: tests/sdk_live.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests import sdk_live

CPP = Path(__file__).parents[1] / "sdk" / "cpp"
BUILD = CPP / "build"
MISSING = {"CURL": "libcurl4-openssl-dev", "nlohmann_json": "nlohmann-json3-dev"}  # CMake's name -> Debian's

pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake on PATH: apt-get install cmake"),
    pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) on PATH: apt-get install g++"),
]


@pytest.fixture(scope="module")
def program() -> list[str]:
    configure = subprocess.run(["cmake", "-S", str(CPP), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"],
                               capture_output=True, text=True, timeout=300)
    if configure.returncode != 0:
        # FindCURL says "Could NOT find CURL"; a missing config package is named in quotes, wherever CMake wraps
        missing = [debian for name, debian in MISSING.items()
                   if f"Could NOT find {name}" in configure.stderr or f'"{name}"' in configure.stderr]
        if missing:
            pytest.skip(f"the C++ SDK's libraries are missing: apt-get install {' '.join(missing)}")
        pytest.fail(configure.stdout + configure.stderr)
    build = subprocess.run(["cmake", "--build", str(BUILD), "-j", "2"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    return [str(BUILD / "sdk_test")]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with sdk_live.servers(tmp_path_factory) as s:
        yield s


@pytest.mark.parametrize("name", ["generate", "generate_stream", "chat_and_stream", "leave_stream_early",
                                  "summarize_and_expert_load", "wrong_key", "bad_request", "too_large",
                                  "connection_refused", "bad_options"])
def test_scenario(program, servers, name):
    sdk_live.run(program, name, servers)


def test_a_full_queue_is_refused_then_retried_until_a_place_frees(program, servers):
    sdk_live.run_busy(program, "busy_retry", servers)


def test_a_stream_cut_midway_raises_after_its_text_and_is_not_retried(program, servers):
    before = servers.cut_requests.copy()
    sdk_live.run(program, "stream_cut", servers)
    seen = servers.cut_requests - before
    assert seen == {"/v2/generate": 2, "/v1/chat/completions": 1}, seen  # the cut and the error event, each once


def test_a_timeout_raises_and_is_not_retried(program, servers):
    before = servers.cut_requests.copy()
    sdk_live.run(program, "timeout", servers)
    assert servers.cut_requests - before == {"/v2/generate": 1}
