"""The C++ SDK (sdk/cpp, issue 24) against live servers: sdk/cpp/tests/sdk_test.cpp, one scenario per test, built
once with CMake (g++, libcurl, nlohmann-json). The servers: tests/sdk_live.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests import sdk_live

pytest_plugins = ["tests.grounded"]  # grounded_folder, for the image scenarios: trained once a session

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


class TestCpp(sdk_live.Scenarios):
    """sdk_test.cpp's scenarios go by the names Scenarios gives them."""
