"""The `seekmoe` command, called as main([...]) and once as `python -m seekmoe`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources

import pytest

from tests.conftest import assert_usage_error, run_cli


def bundled_dict(name: str = "deepseek-v2-lite") -> dict:
    return json.loads(resources.files("seekmoe").joinpath("configs", f"{name}.json").read_text(encoding="utf-8"))




@pytest.mark.parametrize("name, total", [("deepseek-v2-lite", "15.71B"), ("deepseek-v2", "235.74B"),
                                         ("deepseek-v3", "671.03B")])
def test_inspect_bundled(capsys, name, total):
    rc, out, err = run_cli(capsys, "inspect", name)
    assert rc == 0 and err == ""
    assert total in out and "convention:" in out and "KV cache per token" in out


def test_inspect_directory_and_json_file(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(bundled_dict()))
    rc, from_dir, _ = run_cli(capsys, "inspect", str(tmp_path))
    assert rc == 0 and "15,706,484,224" in from_dir

    path = tmp_path / "lite.json"
    path.write_text(json.dumps(bundled_dict()))
    rc, from_file, _ = run_cli(capsys, "inspect", str(path))
    assert rc == 0
    assert from_file.splitlines()[1:] == from_dir.splitlines()[1:]  # all but the header naming the source


def test_inspect_json(capsys):
    rc, out, _ = run_cli(capsys, "inspect", "deepseek-v3", "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["source"] == "deepseek-v3"
    assert report["total"] == sum(c["total"] for c in report["components"]) == 671_026_419_200
    assert report["layout"] == "layers 0-2: dense MLP; 3-60: MoE (256 routed, top-8, 1 shared)"
    assert report["kv_cache"]["bytes_per_element"] == 2


def test_missing_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "inspect", str(tmp_path / "nope.json"))
    assert_usage_error(rc, err, "nope.json", "no such file")


def test_directory_without_config_json(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "inspect", str(tmp_path))
    assert_usage_error(rc, err, str(tmp_path / "config.json"), "no such file")


def test_invalid_json(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"vocab_size": 102400,')
    rc, _, err = run_cli(capsys, "inspect", str(path))
    assert_usage_error(rc, err, str(path), "not valid JSON")


def test_invalid_field(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**bundled_dict(), "kv_lora_rank": 0}))
    rc, _, err = run_cli(capsys, "inspect", str(path))
    assert_usage_error(rc, err, str(path), "kv_lora_rank must be > 0, got 0")


def test_unknown_bundled_name(capsys):
    rc, _, err = run_cli(capsys, "inspect", "deepseek-v4")
    assert_usage_error(rc, err, "'deepseek-v4'", "deepseek-v2-lite", "deepseek-v3")


def test_no_subcommand_is_a_usage_error(capsys):
    rc, _, err = run_cli(capsys)
    assert rc == 2 and "seekmoe: error:" in err


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "seekmoe", "inspect", "deepseek-v2-lite"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "15,706,484,224" in proc.stdout and "layers 0: dense MLP; 1-26: MoE" in proc.stdout


def test_decoding_commands_ask_openmp_to_wait_passively_and_training_does_not(monkeypatch):
    from seekmoe.cli import main as cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `seekmoe` process, before a command loads it
    cli.quiet_openmp("train")
    assert "OMP_WAIT_POLICY" not in os.environ
    cli.quiet_openmp("serve")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    cli.quiet_openmp("generate")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_quiet_openmp_leaves_a_process_with_torch_loaded_alone(monkeypatch):
    import torch  # noqa: F401  (loaded: OpenMP has read its settings already)

    from seekmoe.cli import main as cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli.quiet_openmp("serve")
    assert "OMP_WAIT_POLICY" not in os.environ
