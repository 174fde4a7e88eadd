"""Data parallel under torchrun on gloo: 2 ranks log the losses and end with the routing bias of one process
given the same global batch, and a rank that exits early makes the other fail with a clear message, not hang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from seekmoe.train import train
from tests.test_train import MODEL, SAMPLE, config, train_losses

BIAS = "model.layers.1.mlp.gate.e_score_correction_bias"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from seekmoe.data import prepare
    from seekmoe.tokenizer import corpus_files, train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    train_tokenizer(corpus_files([SAMPLE]), root / "tok", vocab_size=512, show_progress=False)
    prepare([SAMPLE], root / "tok", root / "data", val_fraction=0.05, seed=0, progress=False)
    (root / "model.json").write_text(json.dumps(MODEL))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **extra}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_match_one_process_with_the_whole_batch(corpus, tmp_path):
    # rank r reads rows [r*b, (r+1)*b) of the global batch of 2b that one process reads (TokenShards.batch)
    balance = {"mode": "loss_free", "bias_update_rate": 0.01}
    settings = dict(steps=12, eval_every=6, save_every=6, balance=balance, dist_timeout_s=60)
    cfg = config(corpus, tmp_path / "ddp", batch_size=2, **settings)
    (tmp_path / "train.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "seekmoe.train", str(tmp_path / "train.json"), "--no-progress"]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1  # only rank 0 reports

    train(config(corpus, tmp_path / "one", batch_size=4, **settings), progress=False)
    ddp, one = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert sorted(ddp) == list(range(1, 13))
    for step in one:
        assert ddp[step] == pytest.approx(one[step], rel=1e-5), step
    val = {r["step"]: r for r in records(tmp_path / "ddp") if r["split"] == "val"}
    val_one = {r["step"]: r for r in records(tmp_path / "one") if r["split"] == "val"}
    assert val.keys() == val_one.keys() == {6, 12}
    for step in val:
        assert val[step]["val_loss"] == pytest.approx(val_one[step]["val_loss"], rel=1e-5)
    # the global expert counts moved the bias: the same loads logged, the same bias saved
    train_one = [r for r in records(tmp_path / "one") if r["split"] == "train"]
    train_ddp = [r for r in records(tmp_path / "ddp") if r["split"] == "train"]
    assert [r["layers"][0]["load"] for r in train_ddp] == [r["layers"][0]["load"] for r in train_one]
    assert [r["tokens"] for r in train_ddp] == [r["tokens"] for r in train_one]
    final = "checkpoints/step-00000012/model.safetensors"
    bias_ddp, bias_one = load_file(str(tmp_path / "ddp" / final))[BIAS], load_file(str(tmp_path / "one" / final))[BIAS]
    assert bias_one.abs().sum() > 0 and bias_ddp.equal(bias_one)


@pytest.mark.parametrize("leaves", ["exits", "stalls"])
def test_a_rank_that_exits_or_stalls_fails_the_other_within_the_timeout(corpus, tmp_path, leaves):
    cfg = config(corpus, tmp_path / "run", steps=4, dist_timeout_s=4)
    (tmp_path / "train.json").write_text(json.dumps(cfg.to_dict()))
    port = str(free_port())
    rank0 = subprocess.Popen([sys.executable, "-m", "seekmoe.train", str(tmp_path / "train.json"), "--no-progress"],
                             env=env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_PORT=port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # rank 1 joins the group, then leaves (or sleeps) before the first step's all-reduce
    script = "from seekmoe import distributed; distributed.init(4)" + ("; import time; time.sleep(60)"
                                                                        if leaves == "stalls" else "")
    rank1 = subprocess.Popen([sys.executable, "-c", script],
                             env=env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_PORT=port))
    try:
        _, stderr = rank0.communicate(timeout=45)
        assert rank0.returncode != 0
        assert "rank 0: all_reduce across 2 ranks failed" in stderr and "Traceback" not in stderr, stderr
        if leaves == "stalls":
            assert rank1.poll() is None  # rank 0 gave up on its own, it did not wait for rank 1
    finally:
        rank1.kill()
        rank1.wait()
