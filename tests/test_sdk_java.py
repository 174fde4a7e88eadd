"""The Java SDK (sdk/java, issue 24) against live servers: sdk/java/src/test/java/seekmoe/SdkTest.java, one
scenario per test, built once with `make -C sdk java-tests` (javac, Debian's gson). The servers: tests/sdk_live.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests import sdk_live

pytest_plugins = ["tests.grounded"]  # grounded_folder, for the image scenarios: trained once a session

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


class TestJava(sdk_live.Scenarios):
    spell = staticmethod(sdk_live.camel)  # SdkTest.java's methods
