"""`seekmoe serve` in a subprocess on a free loopback port, for the serving benchmarks (not a benchmark itself)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_server(args: list[str], log: Path, wait_s: float = 180) -> tuple[subprocess.Popen, str]:
    """`seekmoe serve --port 0 ARGS`, its output in `log`; returns the process and its URL once /health says 200."""
    cmd = [sys.executable, "-m", "seekmoe", "serve", "--port", "0", *args]
    out = log.open("w")
    proc = subprocess.Popen(cmd, stderr=out, stdout=out, env={**os.environ})
    deadline = time.monotonic() + wait_s
    while True:
        found = re.search(r"http://[\d.]+:\d+", log.read_text())
        if found:
            try:
                if httpx.get(f"{found[0]}/health").status_code == 200:
                    return proc, found[0]
            except httpx.HTTPError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not come up; its log:\n{log.read_text()}")
        time.sleep(0.1)
