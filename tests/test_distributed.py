"""Data parallel under torchrun on gloo: 2 ranks log the losses and end with the routing bias of one process
given the same global batch, and a rank that exits early makes the other fail with a clear message, not hang."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seekmoe.train.loop import build_model, train
from tests.test_train import config, train_losses

BIAS = "model.layers.1.mlp.gate.e_score_correction_bias"
# A run takes 10 s alone, 30 s beside two busy processes on 2 cores. Collectives wait HANG_S for a slow rank (rank 0
# alone plots and writes checkpoints while the others wait); a whole run gets RUN_S: only a hang reaches either.
HANG_S = 120
RUN_S = 600
# Checkpoints of two runs that split the batch differently (one process, ranks, shards, experts) differ by float32
# sums taken in another order, which AdamW carries on: measured at most 3e-4 of how far training moved each tensor
# (2 threads instead of 1: 3e-4; ddp, fsdp or expert parallel against one process: 2e-4). A wrong gradient average
# moves tensors by more than that whole distance (rank-local gradients: 1.7; the sum instead of the mean: 1.2;
# experts all-reduced as if every rank held them all: 1.2). DRIFT sits 30x above the one, 100x below the other.
DRIFT = 1e-2


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
    settings = dict(steps=20, eval_every=10, save_every=10, balance=balance, dist_timeout_s=HANG_S)
    said = torchrun(config(corpus, tmp_path / "ddp", batch_size=2, **settings), tmp_path)
    assert len(said.stdout.splitlines()) == 1  # only rank 0 reports

    train(config(corpus, tmp_path / "one", batch_size=4, **settings), progress=False)
    ddp, one = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert sorted(ddp) == list(range(1, 21))
    # sums in another order move the losses by ~2e-7 (relative); a wrong gradient average by 2e-3 or more
    for step in one:
        assert ddp[step] == pytest.approx(one[step], rel=1e-5), step
    val = {r["step"]: r for r in records(tmp_path / "ddp") if r["split"] == "val"}
    val_one = {r["step"]: r for r in records(tmp_path / "one") if r["split"] == "val"}
    assert val.keys() == val_one.keys() == {10, 20}
    for step in val:
        assert val[step]["val_loss"] == pytest.approx(val_one[step]["val_loss"], rel=1e-5)
    # the global expert counts moved the bias: the same loads logged, the same bias saved. Exact: counts are
    # integers and the bias moves by rate * sign; a router choice flipped by rounding (a near tie) would also have
    # moved the losses above by far more than 1e-5, so nothing weaker is guaranteed there either
    train_one = [r for r in records(tmp_path / "one") if r["split"] == "train"]
    train_ddp = [r for r in records(tmp_path / "ddp") if r["split"] == "train"]
    assert [r["layers"][0]["load"] for r in train_ddp] == [r["layers"][0]["load"] for r in train_one]
    assert [r["tokens"] for r in train_ddp] == [r["tokens"] for r in train_one]
    final = "checkpoints/step-00000020/model.safetensors"
    bias_ddp, bias_one = load_file(str(tmp_path / "ddp" / final))[BIAS], load_file(str(tmp_path / "one" / final))[BIAS]
    assert bias_one.abs().sum() > 0 and bias_ddp.equal(bias_one)


@pytest.mark.parametrize("leaves", ["exits", "stalls"])
def test_a_rank_that_exits_or_stalls_fails_the_other_within_the_timeout(corpus, tmp_path, leaves):
    # 10 s: rank 0 joins within it too (the same timeout), so rank 1 waits for it before rank 0 starts
    cfg = config(corpus, tmp_path / "run", steps=4, dist_timeout_s=10)
    (tmp_path / "train.json").write_text(json.dumps(cfg.to_dict()))
    port = str(free_port())
    # rank 1 joins the group, then leaves (or sleeps far longer than anything here) before the first all-reduce
    script = (f"from seekmoe.train import distributed; print('ready', flush=True); distributed.init({HANG_S})"
              + (f"; import time; time.sleep(10 * {HANG_S})" if leaves == "stalls" else ""))
    rank1 = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_PORT=port))
    rank0 = None
    try:
        assert rank1.stdout.readline() == "ready\n"
        rank0 = subprocess.Popen([sys.executable, "-m", "seekmoe", "train", str(tmp_path / "train.json"),
                                  "--no-progress"], env=env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_PORT=port),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = rank0.communicate(timeout=HANG_S)  # a rank 0 that hangs fails here
        assert rank0.returncode > 0, stderr  # an error, not a signal: it did not abort on its way out either
        assert "rank 0: all_reduce across 2 ranks failed" in stderr and "Traceback" not in stderr, stderr
        if leaves == "stalls":
            assert rank1.poll() is None  # rank 0 gave up on its own, it did not wait for rank 1
    finally:
        for rank in (rank0, rank1):
            if rank is not None:
                rank.kill()
                rank.communicate()


def test_shutdown_ends_the_process_group_threads():
    # gloo's threads still running when Python exits abort the process (SIGABRT, "terminate called without an
    # active exception"), seen on a busy machine: shutdown must end them, after a clean run (rank 1) and after a
    # collective failed (rank 0, the TrainError still in flight as in train's finally). FSDP is imported after
    # the group exists, as every run's is_sharded does: that import once held the group past shutdown.
    if not Path("/proc/self/task").is_dir():
        pytest.skip("thread names are read from /proc")
    script = f"""
import os, torch
from seekmoe.train import distributed
from seekmoe.train.config import TrainError

def threads():
    return sorted(open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task"))

def leave(step):
    try:
        step()
    finally:  # as in train: the error, if any, still in flight
        distributed.shutdown()
        print("after shutdown", threads())

distributed.init({HANG_S})
distributed.is_sharded(torch.nn.Linear(1, 1))
distributed.all_reduce_sum(torch.ones(1))
print("running", threads())
if distributed.rank() == 1:
    leave(lambda: None)
else:
    try:
        leave(lambda: distributed.all_reduce_sum(torch.ones(1)))  # rank 1 has left: TrainError
    except TrainError:
        pass
"""
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env(RANK=str(r), WORLD_SIZE="2", MASTER_PORT=port)) for r in (1, 0)]
    try:
        said = [rank.communicate(timeout=HANG_S) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
            rank.communicate()
    for rank, (out, err) in zip(ranks, said, strict=True):
        assert rank.returncode == 0, err
        running, after = out.splitlines()
        assert "gloo" in running  # the threads it looks for exist while the group does
        assert "gloo" not in after, after


def torchrun(cfg, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "train.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "seekmoe", "train", str(tmp_path / "train.json"), "--no-progress"]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=RUN_S)
    assert done.returncode == 0, done.stderr
    return done


def drift(a: Path, b: Path, step: int, name: str, start: dict[str, torch.Tensor]) -> float:
    """The largest difference between two runs' checkpoint files, each tensor's as a fraction of how far run b
    moved it from `start` (the initial weights; AdamW's moments start at zero). Compare with DRIFT."""
    ckpt = f"checkpoints/step-{step:08d}/{name}.safetensors"
    ours, theirs = load_file(str(a / ckpt)), load_file(str(b / ckpt))
    assert ours.keys() == theirs.keys(), name
    worst = 0.0
    for k in theirs.keys() - {"rng.torch"}:
        moved = (theirs[k].double() - start[k].double() if k in start else theirs[k].double()).abs().max().item()
        diff = (ours[k].double() - theirs[k].double()).abs().max().item()
        worst = max(worst, diff / moved if moved else 0.0 if diff == 0 else math.inf)
    return worst


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    return build_model(cfg).state_dict()


def resume_from(src: Path, step: int, dst: Path) -> None:
    shutil.copytree(src / f"checkpoints/step-{step:08d}", dst / f"checkpoints/step-{step:08d}")


def assert_resumed_like(runs: list[Path], reference: dict[int, float], steps: list[int]) -> None:
    """Each resumed run logged exactly `steps`, with the reference run's losses."""
    for run in runs:
        resumed = train_losses(run)
        assert sorted(resumed) == steps, run
        for step in resumed:
            assert resumed[step] == pytest.approx(reference[step], rel=1e-5), (run, step)


def test_fsdp_matches_ddp_and_one_process_and_checkpoints_move_between_them(corpus, tmp_path):
    # FSDP2 shards weights, gradients and AdamW state over the 2 ranks; rank 0 gathers whole tensors to save
    balance = {"mode": "loss_free", "bias_update_rate": 0.01}
    settings = dict(steps=20, eval_every=10, save_every=10, balance=balance, dist_timeout_s=HANG_S)
    torchrun(config(corpus, tmp_path / "fsdp", batch_size=2, parallel="fsdp", **settings), tmp_path)
    torchrun(config(corpus, tmp_path / "ddp", batch_size=2, **settings), tmp_path)
    train(config(corpus, tmp_path / "one", batch_size=4, **settings), progress=False)
    fsdp, one = train_losses(tmp_path / "fsdp"), train_losses(tmp_path / "one")
    assert sorted(fsdp) == list(range(1, 21))
    for step in one:
        assert fsdp[step] == pytest.approx(one[step], rel=1e-5), step
    # the mean gradient, not the sum over the ranks (AdamW alone would hide a factor of 2, the norm does not):
    # sums in another order move the norm, a sum of squares over every weight, by up to 1e-4; the sum by 1.0
    norms = [[r["grad_norm"] for r in records(tmp_path / run) if r["split"] == "train"] for run in ("fsdp", "one")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-2)
    start = initial_weights(config(corpus, tmp_path / "one", **settings))
    for step in (10, 20):
        for name in ("model", "optimizer"):  # the same Hugging Face checkpoint and AdamW state, up to DRIFT
            # (fsdp and ddp reduce the gradient by other collectives: bit-equal on one CPU, 5e-5 apart on another)
            assert drift(tmp_path / "fsdp", tmp_path / "ddp", step, name, start) <= DRIFT, (step, name)
            assert drift(tmp_path / "fsdp", tmp_path / "one", step, name, start) <= DRIFT, (step, name)
    assert load_file(str(tmp_path / "fsdp/checkpoints/step-00000020/model.safetensors"))[BIAS].abs().sum() > 0

    # fsdp's step-10 checkpoint resumes in one process, and one process's under fsdp: the same steps 11-20
    resume_from(tmp_path / "fsdp", 10, tmp_path / "fsdp_to_one")
    train(config(corpus, tmp_path / "fsdp_to_one", batch_size=4, **settings), progress=False)
    resume_from(tmp_path / "one", 10, tmp_path / "one_to_fsdp")
    torchrun(config(corpus, tmp_path / "one_to_fsdp", batch_size=2, parallel="fsdp", **settings), tmp_path)
    assert_resumed_like([tmp_path / "fsdp_to_one", tmp_path / "one_to_fsdp"], one, list(range(11, 21)))


def test_expert_parallel_matches_ddp_and_one_process_and_checkpoints_move_between_them(corpus, tmp_path):
    # each of the 2 ranks holds 2 of the 4 experts per layer; tokens go to them and back by all_to_all. The aux
    # losses (expert- and device-level, experts in 2 device groups) use the global counts: one process's values
    balance = {"mode": "aux", "n_devices": 2, "expert_alpha": 0.1, "device_alpha": 0.1, "sequence_alpha": 0.0}
    settings = dict(steps=20, eval_every=10, save_every=10, balance=balance, dist_timeout_s=HANG_S)
    said = torchrun(config(corpus, tmp_path / "ep", batch_size=2, parallel="expert", **settings), tmp_path).stderr
    assert "each of 2 ranks holds 2 routed experts per MoE layer" in said
    torchrun(config(corpus, tmp_path / "ddp", batch_size=2, **settings), tmp_path)
    train(config(corpus, tmp_path / "one", batch_size=4, **settings), progress=False)
    logs = {run: [r for r in records(tmp_path / run) if r["split"] == "train"] for run in ("ep", "ddp", "one")}
    assert [r["step"] for r in logs["ep"]] == list(range(1, 21))
    # float32 sums in another order: losses agree to 1e-5 over the 20 steps (measured: 2e-7; experts all-reduced
    # as if replicated: 8e-4); the gradient norm, a sum of squares over every weight, drifts by up to 1e-4 (a
    # factor of 2 from a sum instead of a mean would show as 1.0)
    for key, rel in (("loss", 1e-5), ("aux_loss", 1e-5), ("grad_norm", 1e-2)):
        for run in ("ep", "ddp"):
            assert [r[key] for r in logs[run]] == pytest.approx([r[key] for r in logs["one"]], rel=rel), (run, key)
    assert logs["one"][0]["aux_loss"] > 0
    assert [r["layers"][0]["load"] for r in logs["ep"]] == [r["layers"][0]["load"] for r in logs["one"]]
    val = [r["val_loss"] for r in records(tmp_path / "ep") if r["split"] == "val"]
    assert val == pytest.approx([r["val_loss"] for r in records(tmp_path / "one") if r["split"] == "val"], rel=1e-5)
    start = initial_weights(config(corpus, tmp_path / "one", **settings))
    for step in (10, 20):
        for name in ("model", "optimizer"):  # whole experts and their AdamW moments, gathered from both ranks
            assert drift(tmp_path / "ep", tmp_path / "ddp", step, name, start) <= DRIFT, (step, name)
            assert drift(tmp_path / "ep", tmp_path / "one", step, name, start) <= DRIFT, (step, name)

    # expert parallel's step-10 checkpoint resumes in one process, and one process's under expert parallel
    resume_from(tmp_path / "ep", 10, tmp_path / "ep_to_one")
    train(config(corpus, tmp_path / "ep_to_one", batch_size=4, **settings), progress=False)
    resume_from(tmp_path / "one", 10, tmp_path / "one_to_ep")
    torchrun(config(corpus, tmp_path / "one_to_ep", batch_size=2, parallel="expert", **settings), tmp_path)
    assert_resumed_like([tmp_path / "ep_to_one", tmp_path / "one_to_ep"], train_losses(tmp_path / "one"),
                        list(range(11, 21)))


def test_expert_parallel_refuses_what_it_cannot_split(corpus):
    from seekmoe.model.config import ModelConfig
    from seekmoe.model.model import CausalLM
    from seekmoe.train.config import TrainError
    from seekmoe.train.expert_parallel import split

    cfg = json.loads((corpus / "model.json").read_text())
    with pytest.raises(TrainError, match=r"n_routed_experts \(4\) must be divisible by the number of ranks \(3\)"):
        split(CausalLM(ModelConfig.from_dict(cfg)), 1, 3)
    dense = ModelConfig.from_dict({**cfg, "n_routed_experts": None, "first_k_dense_replace": 0})
    with pytest.raises(TrainError, match="needs a MoE model"):
        split(CausalLM(dense), 0, 2)


def test_sharded_checkpoints_each_rank_writes_its_own_and_they_resume_anywhere(corpus, tmp_path):
    # checkpoint_format "sharded": torch.distributed.checkpoint, one safetensors file of FSDP shards per rank
    balance = {"mode": "loss_free", "bias_update_rate": 0.01}
    settings = dict(steps=8, eval_every=4, save_every=4, balance=balance, dist_timeout_s=HANG_S, parallel="fsdp")
    torchrun(config(corpus, tmp_path / "sharded", batch_size=2, checkpoint_format="sharded", **settings), tmp_path)
    torchrun(config(corpus, tmp_path / "whole", batch_size=2, **settings), tmp_path)
    assert train_losses(tmp_path / "sharded") == train_losses(tmp_path / "whole")
    step8 = tmp_path / "sharded/checkpoints/step-00000008"
    shards = sorted(p.name for p in (step8 / "shards").iterdir())
    assert len(shards) == 2 and all(name.endswith(".safetensors") for name in shards), shards
    assert not list(step8.glob("*.safetensors")) or sorted(p.name for p in step8.glob("*.safetensors")) == [
        "rng.safetensors"]
    assert not list((tmp_path / "sharded/checkpoints").glob(".*"))  # no staging folder left behind
    # read whole in one process: the same weights as the whole checkpoint rank 0 gathered. Exact: the two runs
    # computed the same steps by the same code on the same machine, and only wrote their checkpoints differently
    from seekmoe.model.checkpoint import load_model

    ours = load_model(step8).state_dict()
    theirs = load_model(tmp_path / "whole/checkpoints/step-00000008").state_dict()
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=0, rtol=0)
    # the step-4 shards resume in one process (2 ranks -> 1) with the whole batch: the same steps 5-8
    resume_from(tmp_path / "sharded", 4, tmp_path / "to_one")
    one = {k: v for k, v in settings.items() if k != "parallel"}
    train(config(corpus, tmp_path / "to_one", batch_size=4, **one), progress=False)
    # and on 2 ranks again, each reading its own parts
    resume_from(tmp_path / "sharded", 4, tmp_path / "to_two")
    torchrun(config(corpus, tmp_path / "to_two", batch_size=2, checkpoint_format="sharded", **settings), tmp_path)
    assert_resumed_like([tmp_path / "to_one", tmp_path / "to_two"], train_losses(tmp_path / "sharded"), [5, 6, 7, 8])
    # a shard that does not match its checksum: that step is skipped, the one before used
    victim = sorted((step8 / "shards").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-8] + b"garbage!")
    from seekmoe.train.checkpoints import latest_checkpoint

    said = []
    assert latest_checkpoint(tmp_path / "sharded/checkpoints", said.append).name == "step-00000004"
    assert "does not match its checksum" in said[0]


def test_sharded_checkpoints_need_fsdp(corpus, tmp_path):
    from seekmoe.train.config import TrainError

    with pytest.raises(TrainError, match="checkpoint_format 'sharded' needs parallel 'fsdp'"):
        config(corpus, tmp_path / "x", checkpoint_format="sharded")
    with pytest.raises(TrainError, match="checkpoint_format must be 'whole' or 'sharded'"):
        config(corpus, tmp_path / "x", checkpoint_format="pickle")
