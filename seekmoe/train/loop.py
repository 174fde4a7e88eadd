"""Pretraining: AdamW with warm-up + cosine decay, gradient accumulation and clipping, expert load balancing,
periodic validation, JSONL metrics, plots, and atomic checkpoints that resume exactly.

A run folder holds `config.json` (this TrainConfig), `metrics.jsonl`, `loss.png`, `expert_load.png` and
`checkpoints/step-NNNNNNNN/` (the model in the Hugging Face layout, `optimizer.safetensors`, `trainer_state.json`
and `checksums.json`, written into a hidden folder and renamed into place). Nothing is pickled.

Under `torchrun --nproc-per-node N -m seekmoe train CONFIG` the loop is data parallel (seekmoe/train/distributed.py):
rank r reads its own rows of each global batch of batch_size x N x grad_accum sequences, the gradients are
averaged over the ranks after backward, and the loss-free bias moves by the expert counts summed over all ranks,
so every rank holds the same weights and bias and the logged losses are those of one process with batch_size x N.
`parallel` "ddp" keeps the whole model on every rank; "fsdp" (FSDP2) shards weights, gradients and AdamW state
over the ranks and gathers whole tensors on rank 0 for checkpoints, which are those one process writes;
"expert" splits each MoE layer's routed experts over the ranks and sends tokens to them
(seekmoe/train/expert_parallel.py).
The auxiliary balance losses use the global batch's expert counts (all-reduced) with each rank's own scores, so
averaged over the ranks they are one process's. Only rank 0 writes the run folder; every rank restores from it on
resume, so it must be shared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from seekmoe.files import atomic_write, write_folder
from seekmoe.model.checkpoint import SHARDS, CheckpointError, load_model, save_model
from seekmoe.model.config import ConfigError, resolve_config
from seekmoe.model.model import CausalLM, Gate
from seekmoe.model.weights import save_tensors
from seekmoe.train import distributed, expert_parallel
from seekmoe.train.balance import balance_loss, calibrate_bias, expert_counts, load_stats, router_entropy, update_bias
from seekmoe.train.config import TrainConfig, TrainError

# ---- the schedule --------------------------------------------------------------------------------------

def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---- building ------------------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig) -> CausalLM:
    """A checkpoint folder continues from its weights; a config starts from seeded random weights."""
    source = Path(cfg.model)
    try:
        if source.is_dir() and any(source.glob("*.safetensors")):
            model = load_model(source)
        else:
            model = CausalLM(resolve_config(cfg.model))
            model.init_weights(torch.Generator().manual_seed(cfg.seed))
    except (ConfigError, CheckpointError) as e:
        raise TrainError(str(e)) from None
    mc = model.config
    if cfg.balance.n_devices > 1 and mc.is_moe and mc.n_routed_experts % cfg.balance.n_devices:
        raise TrainError(f"balance.n_devices ({cfg.balance.n_devices}) must divide n_routed_experts "
                         f"({mc.n_routed_experts})")
    return model


def resolve_balance(cfg: TrainConfig, model: CausalLM) -> None:
    """balance.mode "auto" keeps the model's own: loss_free where routing has a bias (noaux_tc), aux elsewhere."""
    if cfg.balance.mode == "auto":
        cfg.balance.mode = "loss_free" if model.config.topk_method == "noaux_tc" else "aux"
    if cfg.balance.mode == "loss_free" and model.config.topk_method != "noaux_tc":
        raise TrainError("balance.mode 'loss_free' needs a model with topk_method 'noaux_tc' (its bias is "
                         f"e_score_correction_bias), got {model.config.topk_method!r}")


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only; norms and the routing bias (a buffer) are left alone."""
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
    )


@dataclass
class Trainee:
    """What the loop trains: the model, the parameters the optimizer moves, and how a checkpoint holds them."""
    model: CausalLM  # for LoRA, with the adapter layers injected
    params: list[torch.nn.Parameter]
    save: Callable[[Path], None]  # write the weights into a checkpoint folder
    load: Callable[[Path], None]  # and read them back
    sharded: bool = False  # FSDP2: params are DTensor shards; checkpoints gather whole tensors on rank 0
    local: list[torch.nn.Parameter] = field(default_factory=list)  # expert parallel: this rank's experts only


def full_trainee(model: CausalLM) -> Trainee:
    """Every weight trains; a checkpoint holds the whole model in the Hugging Face layout."""
    sharded, names = distributed.is_sharded(model), expert_parallel.local_names(model)
    local = [p for n, p in model.named_parameters() if n in names]

    def load(path: Path) -> None:
        state = load_model(path).state_dict()
        if sharded:
            distributed.load_full_model_state(model, state)
        elif local:
            model.load_state_dict(expert_parallel.local_model_state(model, state))
        else:
            model.load_state_dict(state)

    return Trainee(model, list(model.parameters()), lambda path: save_model(model, path), load, sharded, local)


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


# ---- checkpoints -------------------------------------------------------------------------------------------

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


# ---- the loop --------------------------------------------------------------------------------------------------

def moe_gates(model: CausalLM) -> list[Gate]:
    return [m for m in model.modules() if isinstance(m, Gate)]


class LayerLoads:
    """Per-MoE-layer expert counts, entropy and drops accumulated over some forward passes."""

    def __init__(self, n_layers: int, n_experts: int):
        self.counts = torch.zeros(n_layers, n_experts)
        self.entropy = [0.0] * n_layers
        self.pairs = [0] * n_layers
        self.dropped = [0] * n_layers
        self.passes = 0

    @torch.no_grad()
    def add(self, routing) -> None:
        self.passes += 1
        for i, r in enumerate(routing):
            self.counts[i] += expert_counts(r, self.counts.shape[1])
            self.entropy[i] += router_entropy(r)
            self.pairs[i] += r.topk_idx.numel()
            self.dropped[i] += 0 if r.kept is None else int((~r.kept).sum())

    def all_reduce(self) -> None:
        """Sum over the ranks: the global batch's counts, what the loss-free bias and the logs need."""
        packed = torch.tensor([*self.entropy, *self.pairs, *self.dropped, self.passes], dtype=torch.float64)
        distributed.all_reduce_sum(self.counts)
        distributed.all_reduce_sum(packed)
        n = self.counts.shape[0]
        self.entropy = packed[:n].tolist()
        self.pairs = [int(v) for v in packed[n:2 * n]]
        self.dropped = [int(v) for v in packed[2 * n:3 * n]]
        self.passes = int(packed[-1])

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.counts.shape[0]):
            s = load_stats(self.counts[i], self.entropy[i] / max(1, self.passes),
                           self.dropped[i] / max(1, self.pairs[i]))
            out.append({"max_vio": s.max_vio, "utilisation": s.utilisation, "entropy": s.entropy,
                        "dropped": s.dropped, "load": s.fractions})
        return out


def _forward(model: CausalLM, x: torch.Tensor, bf16: bool, capacity_factor: float | None):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x, return_routing=True, capacity_factor=capacity_factor)


def _batch(data, i: int, cfg: TrainConfig, rank: int, world: int):
    """This rank's rows of global batch i; fine-tuning data (one process only) takes no rank."""
    if world == 1:
        return data.batch(i, cfg.batch_size, cfg.seq_len)
    return data.batch(i, cfg.batch_size, cfg.seq_len, rank, world)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that carry loss (fine-tuning marks the others -100); 0 if none does."""
    flat = logits.float().view(-1, logits.shape[-1])
    counted = (y != -100).sum()
    return F.cross_entropy(flat, y.reshape(-1), reduction="sum") / counted.clamp(min=1)


@torch.no_grad()
def evaluate(model: CausalLM, data, cfg: TrainConfig) -> dict[str, Any]:
    """Validation loss averaged over target tokens: eval_batches batches, or one pass when the data is smaller.

    Under torchrun a batch is a global one, as in training: each rank evaluates its rows and the sums are added up.
    """
    model.eval()
    n_layers = len(moe_gates(model))
    loads = LayerLoads(n_layers, model.config.n_routed_experts or 0)
    rank, world = distributed.rank(), distributed.world()
    steps = min(cfg.eval_batches, data.eval_steps(cfg.batch_size * world)) if hasattr(data, "eval_steps") \
        else cfg.eval_batches
    total = counted = 0.0
    for i in range(steps):
        x, y = _batch(data, i, cfg, rank, world)
        out = _forward(model, x, cfg.bf16, None)
        n = int((y != -100).sum())
        total += _lm_loss(out.logits, y).item() * n
        counted += n
        loads.add(out.routing)
    model.train()
    total, counted = distributed.all_reduce_sum(torch.tensor([total, counted], dtype=torch.float64)).tolist()
    loads.all_reduce()
    loss = total / max(counted, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "layers": loads.stats()}


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


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


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _quiet(msg: str) -> None:
    pass


def train(cfg: TrainConfig, progress: bool = True, log=None) -> dict[str, Any]:
    """Pretrain (or resume) on token shards to cfg.steps; returns the last logged metrics."""
    from seekmoe.train.data import DataError, TokenShards

    torch.manual_seed(cfg.seed)
    try:
        train_data = TokenShards(cfg.data, "train")
        val_data = TokenShards(cfg.data, "val", shuffle=False)
    except DataError as e:
        raise TrainError(str(e)) from None
    model = build_model(cfg).train()  # every rank builds the same seeded weights
    distributed.init(cfg.dist_timeout_s)
    if cfg.parallel == "fsdp" and distributed.world() > 1:
        distributed.shard(model, list(model.model.layers))
    elif cfg.parallel == "expert" and distributed.world() > 1:
        expert_parallel.split(model, distributed.rank(), distributed.world())
        if distributed.is_main():
            (log or _stderr)(f"seekmoe: expert parallel: each of {distributed.world()} ranks holds "
                             f"{model.config.n_routed_experts // distributed.world()} routed experts per MoE layer")
    trainee = full_trainee(model)
    del model
    try:
        return run(cfg, trainee, train_data, val_data, progress, log or _stderr)
    finally:
        del trainee  # a sharded model holds the process group through its device mesh: let it go first
        distributed.shutdown()


def run(cfg: TrainConfig, trainee: Trainee, train_data, val_data, progress: bool = True,
        log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """The loop, shared by pretraining and fine-tuning: data objects give batch(i, batch_size, seq_len), and
    batch(i, batch_size, seq_len, rank, world) when it runs under torchrun."""
    model = trainee.model
    resolve_balance(cfg, model)
    rank, world, main = distributed.rank(), distributed.world(), distributed.is_main()
    if not main:
        log = _quiet  # rank 0 speaks for the run; errors still raise on every rank
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
    if train_data.vocab_size > model.config.vocab_size:
        raise TrainError(f"the data's tokenizer has {train_data.vocab_size} ids but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    opt = build_optimizer(trainee.params, cfg)
    metrics = out / "metrics.jsonl"
    start = 0
    ckpt = latest_checkpoint(out / "checkpoints", log)
    if ckpt is not None:
        start = restore(ckpt, trainee, opt)
        log(f"seekmoe: resuming from {ckpt} at step {start}")
        if main:
            _truncate_metrics(metrics, start)
    elif main and metrics.exists():
        metrics.unlink()

    gates = moe_gates(model)
    tokens_per_step = cfg.batch_size * world * cfg.seq_len * cfg.grad_accum
    bar = _progress(cfg.steps, start, progress and main)
    last: dict[str, Any] = {}
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loads = LayerLoads(len(gates), model.config.n_routed_experts or 0)
        lm_sum = aux_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = _batch(train_data, step * cfg.grad_accum + micro, cfg, rank, world)
            out_ = _forward(model, x, cfg.bf16, cfg.balance.capacity_factor)
            lm = _lm_loss(out_.logits, y)
            aux = balance_loss(out_.routing, cfg.balance, cfg.batch_size)
            total = lm if aux is None else lm + aux
            (total / cfg.grad_accum).backward()
            lm_sum += lm.item()
            aux_sum += 0.0 if aux is None else aux.item()
            loads.add(out_.routing)
        # the mean over the ranks, which every rank then checks: all stop together on a bad loss
        lm_sum, aux_sum = (distributed.all_reduce_sum(torch.tensor([lm_sum, aux_sum], dtype=torch.float64)) / world
                           ).tolist()
        loads.all_reduce()
        if not trainee.sharded:  # FSDP2 reduce-scattered the mean in backward
            distributed.average_gradients(trainee.params, trainee.local)
        if not math.isfinite(lm_sum):
            raise TrainError(f"loss became {lm_sum} at step {step}; lower lr (now {lr:.2e}) or check the data")
        if trainee.sharded:  # the norm is a DTensor under fsdp
            grad_norm = torch.nn.utils.clip_grad_norm_(trainee.params, cfg.grad_clip).full_tensor().item()
        else:
            grad_norm = distributed.clip_grad_norm(trainee.params, cfg.grad_clip, trainee.local)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cfg.balance.mode == "loss_free":
            for gate, counts in zip(gates, loads.counts, strict=True):
                rate = cfg.balance.bias_update_rate
                if cfg.balance.bias_update_schedule == "lr":
                    rate *= lr / cfg.lr  # the bias follows the router: fast while it moves, fine at the end
                update_bias(gate.e_score_correction_bias, counts, rate, cfg.balance.bias_update)
        done = step + 1
        if done == cfg.steps and cfg.balance.mode == "loss_free" and cfg.balance.calibrate_tokens:
            _calibrate(model, train_data, cfg, rank, world, metrics if main else None, log)
        elapsed = time.perf_counter() - t0
        tps = tokens_per_step * (done - start) / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{lm_sum / cfg.grad_accum:.3f}", tok_s=f"{tps:,.0f}")
        if main and (done % cfg.log_every == 0 or done == cfg.steps):
            last = {"step": done, "split": "train", "loss": lm_sum / cfg.grad_accum,
                    "aux_loss": aux_sum / cfg.grad_accum, "lr": lr, "grad_norm": grad_norm,
                    "tokens": done * tokens_per_step, "tokens_per_s": tps, "layers": loads.stats()}
            _append_metrics(metrics, last)
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = {"step": done, "split": "val", **evaluate(model, val_data, cfg)}
            if main:
                _append_metrics(metrics, last)
                _plot(out, log)
        if done % cfg.save_every == 0 or done == cfg.steps:
            if cfg.checkpoint_format == "sharded":
                save_sharded_checkpoint(out / "checkpoints", done, trainee, opt, cfg)
            else:
                saved, state = gathered(trainee, opt) if trainee.sharded or trainee.local or main else (trainee, None)
                if main:
                    save_checkpoint(out / "checkpoints", done, saved, state, cfg)
            distributed.barrier()  # no rank runs ahead while the checkpoint is written and old ones deleted
    bar.close()
    return last if main else {}  # rank 0 reports the run


def _calibrate(model: CausalLM, data, cfg: TrainConfig, rank: int, world: int, metrics: Path | None, log) -> None:
    """balance.calibrate_tokens: the bias solved over that many training tokens past the run's own."""
    per_batch = cfg.batch_size * world * cfg.seq_len
    n = -(-cfg.balance.calibrate_tokens // per_batch)
    first = cfg.steps * cfg.grad_accum  # the batches the run would have read next
    result = calibrate_bias(model, lambda: (_batch(data, first + i, cfg, rank, world)[0] for i in range(n)))
    log("seekmoe: bias calibrated on {:,} tokens; utilisation per MoE layer {}".format(
        n * per_batch, ", ".join(f"{a:.1%} -> {b:.1%}" for a, b in result)))
    if metrics is not None:
        _append_metrics(metrics, {"step": cfg.steps, "split": "calibration", "tokens": n * per_batch,
                                  "utilisation_before": [a for a, _ in result],
                                  "utilisation_after": [b for _, b in result]})


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr)


def _plot(out: Path, log) -> None:
    try:
        from seekmoe.train.plots import plot_run
    except ImportError as e:  # matplotlib missing: metrics are still in metrics.jsonl
        log(f"seekmoe: no plots ({e})")
        return
    plot_run(out)


def run_from_args(args) -> int:
    cfg = TrainConfig.from_args(args)
    last = train(cfg, progress=not args.no_progress)
    if last:
        print(json.dumps({k: v for k, v in last.items() if k != "layers"}))
    return 0


__all__ = ["TrainConfig", "TrainError", "latest_checkpoint", "lr_at", "train"]
