"""Checkpoints of a training run, written all or nothing and resumed exactly.

A run folder's `checkpoints/step-NNNNNNNN/` holds the model in the Hugging Face layout (or what the trainee saves:
a LoRA adapter, a multimodal model), `optimizer.safetensors` (AdamW's moments and the torch RNG state),
`trainer_state.json` (the step, the optimizer's param_groups and the TrainConfig) and `checksums.json`, written
into a hidden folder and renamed into place. checkpoint_format "sharded" (fsdp) has `shards/` (every rank's part of
the model and AdamW state, torch.distributed.checkpoint) and `rng.safetensors` instead. Nothing is pickled. The
newest keep_checkpoints steps stay; a resume takes the newest whose files match their checksums.

Under torchrun only rank 0 writes (fsdp and expert parallel first gather whole tensors on it, every rank taking
part), except the shards of a sharded checkpoint, which every rank writes; every rank reads on resume, so the run
folder must be shared.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from seekmoe.files import atomic_write, write_folder
from seekmoe.model.checkpoint import SHARDS
from seekmoe.model.model import CausalLM
from seekmoe.model.weights import save_tensors
from seekmoe.train import distributed, expert_parallel
from seekmoe.train.config import TrainConfig, TrainError
from seekmoe.train.trainee import Trainee, full_trainee

# ---- whose run ------------------------------------------------------------------------------------------------

RUN_IDENTITY = ("model", "data")  # what a run is: its checkpoints are of this model trained on this data


def _same(a: Any, b: Any) -> bool:
    """Equal settings; two spellings of one existing path ("runs/x/model", "./runs/x/model/") are equal too."""
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and bool(a and b) and Path(a).exists() and Path(b).exists() \
        and Path(a).resolve() == Path(b).resolve()


def refuse_another_run(recorded: Path, settings: dict[str, Any], folders: list[Path],
                       keys: tuple[str, ...] = RUN_IDENTITY) -> None:
    """Stop before resuming the checkpoints in `folders` when `recorded` (the run folder's config.json or
    settings.json, written when they were) says they are another run's: other `keys`. Resuming them would go on
    training the old run's weights under the new settings, and say nothing."""
    if not recorded.is_file() or not any(p.is_dir() for f in folders for p in f.glob("step-*")):
        return
    try:
        old = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return  # no record to go by: resume as before
    if not isinstance(old, dict):
        return
    settings = json.loads(json.dumps(settings))  # as recorded: tuples are lists
    differ = [k for k in keys if not _same(old.get(k), settings.get(k))]
    if differ:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={settings.get(k)!r}" for k in differ)
        raise TrainError(f"{recorded.parent} holds checkpoints of another run ({was}; this one: {now}), which it "
                         "would resume: give another --out, or move that folder aside")


# ---- writing -------------------------------------------------------------------------------------------------


def save(folder: Path, step: int, trainee: Trainee, opt: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Checkpoint step `step` into `folder` in cfg.checkpoint_format; every rank calls it, and waits for the others."""
    if cfg.checkpoint_format == "sharded":
        save_sharded_checkpoint(folder, step, trainee, opt, cfg)
    else:
        main = distributed.is_main()
        saved, state = gathered(trainee, opt) if trainee.sharded or trainee.local or main else (trainee, None)
        if main:
            save_checkpoint(folder, step, saved, state, cfg)
    distributed.barrier()  # no rank runs ahead while the checkpoint is written and old ones deleted


def gathered(trainee: Trainee, opt: torch.optim.Optimizer) -> tuple[Trainee, dict[str, Any] | None]:
    """What save_checkpoint writes: the trainee and opt.state_dict(), or under fsdp and expert parallel (every rank
    takes part) a whole copy of the model and the optimizer state gathered on rank 0, as one process holds them;
    None elsewhere."""
    if trainee.sharded:
        model_state = distributed.full_model_state(trainee.model)
        opt_state = distributed.full_optimizer_state(trainee.model, opt)
    elif trainee.local:
        model_state = expert_parallel.full_model_state(trainee.model)
        opt_state = expert_parallel.full_optimizer_state(trainee.model, opt)
    else:
        return trainee, opt.state_dict()
    if not distributed.is_main():
        return trainee, None
    whole = CausalLM(trainee.model.config)
    whole.load_state_dict(model_state)
    return full_trainee(whole), opt_state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(folder: Path, step: int, trainee: Trainee, state: dict[str, Any], cfg: TrainConfig) -> Path:
    """Write step-N (`state` is the optimizer's state_dict) into a hidden folder, checksum every file, then rename it
    into place: all or nothing."""
    def write(tmp: Path) -> None:
        trainee.save(tmp)
        tensors = {f"state.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        save_tensors(tensors, tmp / "optimizer.safetensors")
        _finish(tmp, step, state["param_groups"], cfg)

    folder.mkdir(parents=True, exist_ok=True)
    return _keep_newest(write_folder(folder / f"step-{step:08d}", write), cfg)


def save_sharded_checkpoint(folder: Path, step: int, trainee: Trainee, opt: torch.optim.Optimizer,
                            cfg: TrainConfig) -> None:
    """checkpoint_format "sharded", on every rank: each writes its shards of the model and AdamW state
    (torch.distributed.checkpoint) into a staging folder; rank 0 then adds the configs, RNG, trainer state and
    checksums and renames the step into place, all or nothing as save_checkpoint. The folder must be shared."""
    staging = folder / f".step-{step:08d}.{SHARDS}"
    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    distributed.barrier()
    groups = distributed.save_sharded(trainee.model, opt, staging)
    distributed.barrier()
    if not distributed.is_main():
        return

    def write(tmp: Path) -> None:
        os.rename(staging, tmp / SHARDS)
        trainee.model.config.save_json(tmp / "config.json")
        save_tensors({"rng.torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        _finish(tmp, step, groups, cfg)

    _keep_newest(write_folder(folder / f"step-{step:08d}", write), cfg)


def _finish(tmp: Path, step: int, param_groups: list, cfg: TrainConfig) -> None:
    """The trainer state, then the checksum of every file (shards included) that verify_checkpoint checks."""
    trainer_state = {"step": step, "param_groups": param_groups, "config": cfg.to_dict()}
    atomic_write(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2).encode())
    sums = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    atomic_write(tmp / "checksums.json", json.dumps(sums, indent=2).encode())


def _keep_newest(final: Path, cfg: TrainConfig) -> Path:
    for p in sorted(p for p in final.parent.glob("step-*") if p.is_dir())[:-cfg.keep_checkpoints]:
        shutil.rmtree(p, ignore_errors=True)
    return final


# ---- reading -------------------------------------------------------------------------------------------------

def verify_checkpoint(path: Path) -> str | None:
    """None when every file matches checksums.json, else what is wrong."""
    try:
        sums = json.loads((path / "checksums.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"checksums.json unreadable ({e})"
    if not isinstance(sums, dict) or "trainer_state.json" not in sums or not (
            "optimizer.safetensors" in sums or any(name.startswith(f"{SHARDS}/") for name in sums)):
        return "checksums.json incomplete"
    for name, digest in sums.items():
        file = path / name
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or not file.is_file():
            return f"{name} missing"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum"
    return None


def latest_checkpoint(folder: Path, log=print) -> Path | None:
    """The newest step-N whose files verify; corrupt ones are reported and skipped."""
    for path in sorted((p for p in folder.glob("step-*") if p.is_dir()), reverse=True):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log(f"seekmoe: skipping corrupt checkpoint {path.name}: {problem}")
    return None


def resume(folder: Path, trainee: Trainee, opt: torch.optim.Optimizer, metrics: Path | None, log) -> int:
    """Restore the newest verified checkpoint in `folder` and return its step; 0 when there is none.

    `metrics` (rank 0's metrics.jsonl; None on the other ranks) loses what the killed run logged past the
    checkpoint, which will be logged again; a run that starts afresh starts it anew.
    """
    ckpt = latest_checkpoint(folder, log)
    if ckpt is None:
        if metrics is not None and metrics.exists():
            metrics.unlink()
        return 0
    step = restore(ckpt, trainee, opt)
    log(f"seekmoe: resuming from {ckpt} at step {step}")
    if metrics is not None:
        _truncate_metrics(metrics, step)
    return step


def restore(path: Path, trainee: Trainee, opt: torch.optim.Optimizer) -> int:
    """Load weights, optimizer and RNG state from a verified checkpoint; returns the step to continue from."""
    if (path / SHARDS).is_dir():
        return _restore_sharded(path, trainee, opt)
    trainee.load(path)
    try:
        tensors = load_file(str(path / "optimizer.safetensors"))
        trainer_state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, SafetensorError) as e:
        raise TrainError(f"{path}: cannot read optimizer state ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    full = {"state": state, "param_groups": trainer_state["param_groups"]}
    if trainee.sharded:
        distributed.load_full_optimizer_state(trainee.model, opt, full)
    elif trainee.local:
        opt.load_state_dict(expert_parallel.local_optimizer_state(trainee.model, opt, full))
    else:
        opt.load_state_dict(full)
    torch.set_rng_state(tensors["rng.torch"])
    return int(trainer_state["step"])


def _restore_sharded(path: Path, trainee: Trainee, opt: torch.optim.Optimizer) -> int:
    """A sharded checkpoint, on every rank: each reads its parts, whatever the number of ranks that wrote it."""
    if trainee.local:
        raise TrainError(f"{path}: a sharded checkpoint resumes under fsdp, ddp or in one process, not expert parallel")
    try:
        trainer_state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        distributed.load_sharded(trainee.model, opt, path / SHARDS, trainer_state["param_groups"])
        rng = load_file(str(path / "rng.safetensors"))["rng.torch"]
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise TrainError(f"{path}: cannot read the sharded checkpoint ({e})") from None
    torch.set_rng_state(rng)
    return int(trainer_state["step"])


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop what the killed run logged past the checkpoint: it will be logged again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line a kill cut short
        if record.get("step", 0) <= step:
            keep.append(line)
    atomic_write(path, "".join(line + "\n" for line in keep).encode())


__all__ = ["latest_checkpoint", "refuse_another_run", "restore", "resume", "save", "verify_checkpoint"]
