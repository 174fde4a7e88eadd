"""openai-node against a live server (issue 21): tests/clients/node/openai_node.test.mjs, under node's test runner,
drives chat (whole and streamed), a required tool, json_schema, completions, embeddings, the model list and the
error classes. `npm ci --prefix tests/clients/node` (scripts/setup.sh test) installs the pinned package."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import needs_tokenizer

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "openai_node.test.mjs"

pytestmark = [
    needs_tokenizer,
    pytest.mark.skipif(shutil.which("node") is None, reason="no node on PATH"),
    pytest.mark.skipif(not (NODE_DIR / "node_modules" / "openai").is_dir(),
                       reason="openai-node is not installed: npm ci --prefix tests/clients/node"),
]


def test_openai_node_suite(live):
    env = {**os.environ, "SEEKMOE_BASE_URL": live.base_url, "SEEKMOE_API_KEY": live.key, "SEEKMOE_MODEL": live.model}
    run = subprocess.run(["node", "--test", "--test-reporter=spec", SCRIPT.name], cwd=NODE_DIR, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ℹ fail 0" in run.stdout and "ℹ pass 8" in run.stdout, run.stdout
