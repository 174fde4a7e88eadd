"""Pretraining on the committed corpus sample with a tiny MoE: metrics, plots, checkpoints, exact resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seekmoe.train.checkpoints import latest_checkpoint
from seekmoe.train.loop import TrainConfig, TrainError, lr_at, train
from tests.conftest import TRAIN_MODEL as MODEL


def config(corpus: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(model=str(corpus / "model.json"), data=str(corpus / "data"), out=str(out), steps=8, batch_size=2,
                seq_len=32, warmup_steps=2, lr=1e-2, min_lr=1e-3, log_every=1, eval_every=4, eval_batches=2,
                save_every=2, keep_checkpoints=2)
    return TrainConfig.from_dict({**base, **overrides})


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_a_short_run_logs_plots_and_checkpoints(corpus, tmp_path):
    last = train(config(corpus, tmp_path / "run", steps=12, eval_every=6), progress=False)
    run = tmp_path / "run"
    assert last["split"] == "val" and last["val_loss"] > 0
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]  # it learns something
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    layer = records[0]["layers"][0]
    assert set(layer) >= {"max_vio", "utilisation", "entropy", "dropped", "load"}
    assert sum(layer["load"]) == pytest.approx(1.0) and len(layer["load"]) == 4
    assert (run / "loss.png").stat().st_size > 1000 and (run / "expert_load.png").stat().st_size > 1000
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]
    # the checkpoint is an ordinary model folder
    from seekmoe import load_model
    model = load_model(run / "checkpoints" / "step-00000012")
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 512)


def test_resume_gives_the_same_losses(corpus, tmp_path):
    whole = tmp_path / "whole"
    train(config(corpus, whole), progress=False)
    # a run that stops after step 4's checkpoint, as if killed, then starts again
    part = tmp_path / "part"
    train(config(corpus, part), progress=False)
    for ck in (part / "checkpoints").glob("step-0000000[68]"):
        import shutil

        shutil.rmtree(ck)
    train(config(corpus, part), progress=False)
    assert train_losses(part) == train_losses(whole)


def test_another_runs_checkpoints_are_refused_before_the_data_is_read(corpus, tmp_path):
    run = tmp_path / "run"
    train(config(corpus, run, steps=2), progress=False)
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    # shards that are not there: the refusal names the run, not the missing shards
    with pytest.raises(TrainError, match=r"holds checkpoints of another run .*data="):
        train(config(corpus, run, steps=4, data=str(tmp_path / "elsewhere")), progress=False)
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_sigkill_at_a_random_step_then_resume_is_exact(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "killed", steps=10, save_every=1, keep_checkpoints=3)
    (tmp_path / "train.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "seekmoe", "train", str(tmp_path / "train.json"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = random.Random().randint(2, 6)
    deadline = time.time() + 60
    while not (tmp_path / "killed" / "checkpoints" / f"step-{target:08d}").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    time.sleep(random.random() * 0.2)  # somewhere inside a later step, maybe mid-save
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr

    reference = tmp_path / "reference"
    train(config(corpus, reference, steps=10, save_every=1, keep_checkpoints=3), progress=False)
    assert train_losses(tmp_path / "killed") == train_losses(reference)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(corpus, tmp_path):
    run = tmp_path / "run"
    train(config(corpus, run, steps=4), progress=False)
    newest = run / "checkpoints" / "step-00000004"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-10:] = b"\x00" * 10
    (newest / "model.safetensors").write_bytes(bytes(data))
    messages = []
    assert latest_checkpoint(run / "checkpoints", messages.append) == run / "checkpoints" / "step-00000002"
    assert "step-00000004" in messages[0] and "checksum" in messages[0]
    # a half-written save (hidden temp folder) is never picked up either
    (run / "checkpoints" / ".step-00000006.tmp-1").mkdir()
    assert latest_checkpoint(run / "checkpoints", messages.append).name == "step-00000002"


def test_aux_mode_and_token_dropping_are_logged(corpus, tmp_path):
    run = tmp_path / "aux"
    train(config(corpus, run, steps=2, balance={"mode": "aux", "n_devices": 2, "capacity_factor": 0.5}),
          progress=False)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["aux_loss"] > 0
    assert 0 < record["layers"][0]["dropped"] < 1


@pytest.mark.parametrize("rule, schedule", [("sign", "constant"), ("proportional", "lr")])
def test_loss_free_moves_the_bias_by_the_logged_loads_and_saves_it(corpus, tmp_path, rule, schedule):
    run = tmp_path / "lf"
    balance = {"mode": "loss_free", "bias_update_rate": 0.01, "bias_update": rule, "bias_update_schedule": schedule}
    train(config(corpus, run, steps=4, balance=balance), progress=False)
    from safetensors.torch import load_file

    bias = load_file(str(run / "checkpoints" / "step-00000004" / "model.safetensors"))[
        "model.layers.1.mlp.gate.e_score_correction_bias"]
    # replay b += u * sign(mean load - load) (or u * (mean - load) / mean) from the loads logged at each step
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = torch.zeros(4, dtype=torch.float64)
    for r in records:
        if r["split"] == "train":
            load = torch.tensor(r["layers"][0]["load"], dtype=torch.float64)
            u = 0.01 * (r["lr"] / 1e-2 if schedule == "lr" else 1.0)
            error = load.mean() - load
            expected += u * (torch.sign(error) if rule == "sign" else error / load.mean())
    torch.testing.assert_close(bias.double(), expected, atol=1e-6, rtol=0)


def test_calibration_after_the_last_step_is_logged_and_saved(corpus, tmp_path):
    run = tmp_path / "cal"
    balance = {"mode": "loss_free", "calibrate_tokens": 3000}
    last = train(config(corpus, run, steps=3, balance=balance), progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cal = next(r for r in records if r["split"] == "calibration")
    assert cal["tokens"] >= 3000 and cal["utilisation_after"][0] > 0.95
    assert records[-1]["split"] == "val" and last["split"] == "val"  # validation sees the calibrated bias
    plain = tmp_path / "plain"
    train(config(corpus, plain, steps=3, balance={"mode": "loss_free"}), progress=False)
    from safetensors.torch import load_file

    name = "model.layers.1.mlp.gate.e_score_correction_bias"
    def bias(folder):
        return load_file(str(folder / "checkpoints" / "step-00000003" / "model.safetensors"))[name]

    assert not torch.equal(bias(run), bias(plain))


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(model="m", data="d", steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 100) == pytest.approx(1e-4)
    lrs = [lr_at(cfg, s) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"steps": 0}, "steps"), ({"lr": 2.0}, "lr"), ({"warmup_steps": 50}, "warmup_steps"),
     ({"balance": {"mode": "magic"}}, "mode"), ({"colour": "red"}, "colour"), ({"batch_size": 1.5}, "batch_size"),
     ({"balance": {"wat": 1}}, "balance.wat"), ({"balance": {"bias_update": "cubic"}}, "bias_update"),
     ({"balance": {"bias_update_schedule": "cosine"}}, "bias_update_schedule"), ({"device": "tpu"}, "device"),
     ({"device": "cuda:x"}, "device")],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises((TrainError, ValueError), match=message):
        TrainConfig.from_dict({"model": "m", "data": "d", "steps": 10, "warmup_steps": 2, **overrides})


def test_loss_free_needs_a_bias(corpus, tmp_path):
    greedy = {**MODEL, "topk_method": "greedy", "scoring_func": "softmax"}
    (tmp_path / "greedy.json").write_text(json.dumps(greedy))
    cfg = config(corpus, tmp_path / "run", model=str(tmp_path / "greedy.json"), balance={"mode": "loss_free"})
    with pytest.raises(TrainError, match="noaux_tc"):
        train(cfg, progress=False)


def test_missing_data_and_model_are_named(corpus, tmp_path):
    with pytest.raises(TrainError, match=r"manifest\.json"):
        train(config(corpus, tmp_path / "a", data=str(tmp_path / "nothing")), progress=False)
    with pytest.raises(TrainError, match="no such file"):
        train(config(corpus, tmp_path / "b", model=str(tmp_path / "none.json")), progress=False)
    small = {**MODEL, "vocab_size": 100}
    (tmp_path / "small.json").write_text(json.dumps(small))
    with pytest.raises(TrainError, match="vocab_size"):
        train(config(corpus, tmp_path / "c", model=str(tmp_path / "small.json")), progress=False)


def test_device_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_there(corpus, tmp_path, monkeypatch):
    from seekmoe.train.loop import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(config(corpus, tmp_path / "a")).type == "cpu"  # the default is auto
    with pytest.raises(TrainError, match="no GPU"):
        train(config(corpus, tmp_path / "b", device="cuda"), progress=False)
    assert not (tmp_path / "b" / "checkpoints").exists()  # refused before anything was written


def test_bf16_autocast_trains(corpus, tmp_path):
    train(config(corpus, tmp_path / "run", steps=6, bf16=True, device="cpu"), progress=False)
    losses = train_losses(tmp_path / "run")
    assert all(math.isfinite(v) for v in losses.values()) and losses[6] < losses[1]
