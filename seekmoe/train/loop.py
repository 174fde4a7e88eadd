"""Pretraining: AdamW with warm-up + cosine decay, gradient accumulation and clipping, expert load balancing,
periodic validation, JSONL metrics, plots, and atomic checkpoints that resume exactly (seekmoe/train/checkpoints.py).

A run folder holds `config.json` (this TrainConfig), `metrics.jsonl`, `loss.png`, `expert_load.png` and
`checkpoints/step-NNNNNNNN/`.

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

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seekmoe.files import atomic_write
from seekmoe.model.checkpoint import CheckpointError, load_model
from seekmoe.model.config import ConfigError, resolve_config
from seekmoe.model.model import CausalLM, Gate
from seekmoe.train import checkpoints, distributed, expert_parallel
from seekmoe.train.balance import balance_loss, calibrate_bias, expert_counts, load_stats, router_entropy, update_bias
from seekmoe.train.config import TrainConfig, TrainError
from seekmoe.train.sft import Weighted
from seekmoe.train.trainee import Trainee, full_trainee

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


def load_token_data(cfg: TrainConfig):
    """The train split of cfg.data (`seekmoe data prepare`), its windows reshuffled each epoch, and the val split."""
    from seekmoe.train.data import DataError, TokenShards

    try:
        return TokenShards(cfg.data, "train"), TokenShards(cfg.data, "val", shuffle=False)
    except DataError as e:
        raise TrainError(str(e)) from None


def parallelize(model: CausalLM, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Under torchrun, parallel "fsdp" shards the model over the ranks and "expert" splits each MoE layer's routed
    experts over them; "ddp" (and one process) keeps it whole."""
    world = distributed.world()
    if cfg.parallel == "fsdp" and world > 1:
        distributed.shard(model, list(model.model.layers))
    elif cfg.parallel == "expert" and world > 1:
        expert_parallel.split(model, distributed.rank(), world)
        if distributed.is_main():
            log(f"seekmoe: expert parallel: each of {world} ranks holds "
                f"{model.config.n_routed_experts // world} routed experts per MoE layer")


def open_run(cfg: TrainConfig, model: CausalLM, train_data, main: bool) -> Path:
    """The run folder, with this config.json (balance.mode resolved) written by rank 0; the data's ids must fit the
    model's vocabulary, and checkpoints already there must be this run's."""
    out = Path(cfg.out)
    checkpoints.refuse_another_run(out / "config.json", cfg.to_dict(), [out / "checkpoints"])
    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
    if train_data.vocab_size > model.config.vocab_size:
        raise TrainError(f"the data's tokenizer has {train_data.vocab_size} ids but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    return out


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
            self.counts[i] += expert_counts(r, self.counts.shape[1]).cpu()
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


def resolve_device(cfg: TrainConfig) -> torch.device:
    """cfg.device as a torch device: "auto" is the GPU when torch sees one and the run is one process (the
    collectives of a torchrun launch exchange CPU tensors), else the CPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and distributed.world() == 1 else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"device {cfg.device!r}: torch sees no GPU here (use --device cpu or auto)")
        if distributed.world() > 1:
            raise TrainError("device cuda runs in one process: under torchrun the ranks train on the CPU")
        if (device.index or 0) >= torch.cuda.device_count():
            raise TrainError(f"device {cfg.device!r}: there are {torch.cuda.device_count()} GPUs")
    return device


def _forward(model: CausalLM, x, bf16: bool, capacity_factor: float | None):
    """x: token ids (B, T), or what the model takes in their place (a multimodal batch)."""
    with torch.autocast(_device(model).type, dtype=torch.bfloat16, enabled=bf16):
        return model(x, return_routing=True, capacity_factor=capacity_factor)


def _batch(data, i: int, cfg: TrainConfig, rank: int, world: int, device: torch.device):
    """This rank's rows of global batch i on `device` (where the model is); fine-tuning data (one process only)
    takes no rank. On the CPU the batch stays as the data gave it."""
    x, y = data.batch(i, cfg.batch_size, cfg.seq_len) if world == 1 else \
        data.batch(i, cfg.batch_size, cfg.seq_len, rank, world)
    if device.type == "cpu":
        return x, y
    if isinstance(y, Weighted):
        return x.to(device, non_blocking=True), Weighted(*(t.to(device, non_blocking=True) for t in y))
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def lm_loss(logits: torch.Tensor, y: torch.Tensor | Weighted) -> torch.Tensor:
    """Mean cross-entropy over the targets that carry loss (fine-tuning marks the others -100); 0 if none does.
    Weighted targets (fine-tuning's lookup weights) give the weighted mean."""
    flat = logits.float().view(-1, logits.shape[-1])
    if isinstance(y, Weighted):
        weights = y.weights.reshape(-1).float() * (y.targets.reshape(-1) != -100)
        per_token = F.cross_entropy(flat, y.targets.reshape(-1), reduction="none")
        return (per_token * weights).sum() / weights.sum().clamp(min=1e-12)
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
    device = _device(model)
    for i in range(steps):
        x, y = _batch(data, i, cfg, rank, world, device)
        out = _forward(model, x, cfg.bf16, None)
        n = int((y != -100).sum())
        total += lm_loss(out.logits, y).item() * n
        counted += n
        loads.add(out.routing)
    model.train()
    total, counted = distributed.all_reduce_sum(torch.tensor([total, counted], dtype=torch.float64)).tolist()
    loads.all_reduce()
    loss = total / max(counted, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "layers": loads.stats()}


@torch.no_grad()
def perplexity(model: CausalLM, rows: torch.Tensor, batch: int = 8) -> float:
    """exp of the mean next-token loss over rows of token ids (N, T + 1), every position a target: the held-out
    text measure the benches compare models and quantizations by."""
    total = 0.0
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        total += lm_loss(model(chunk[:, :-1]), chunk[:, 1:]).item() * chunk[:, 1:].numel()
    return math.exp(total / rows[:, 1:].numel())


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _quiet(msg: str) -> None:
    pass


# ---- one step --------------------------------------------------------------------------------------------------

def forward_backward(cfg: TrainConfig, model: CausalLM, data, step: int, n_layers: int
                     ) -> tuple[float, float, LayerLoads]:
    """Forward and backward over step `step`'s grad_accum micro-batches; returns the LM and balance losses (means
    over the micro-batches and the ranks) and the global batch's expert loads."""
    rank, world = distributed.rank(), distributed.world()
    loads = LayerLoads(n_layers, model.config.n_routed_experts or 0)
    lm_sum = aux_sum = 0.0
    device = _device(model)
    for micro in range(cfg.grad_accum):
        x, y = _batch(data, step * cfg.grad_accum + micro, cfg, rank, world, device)
        out = _forward(model, x, cfg.bf16, cfg.balance.capacity_factor)
        lm = lm_loss(out.logits, y)
        aux = balance_loss(out.routing, cfg.balance, cfg.batch_size)
        total = lm if aux is None else lm + aux
        (total / cfg.grad_accum).backward()
        lm_sum += lm.item()
        aux_sum += 0.0 if aux is None else aux.item()
        loads.add(out.routing)
    # the mean over the ranks, which every rank then checks: all stop together on a bad loss
    lm_sum, aux_sum = (distributed.all_reduce_sum(torch.tensor([lm_sum, aux_sum], dtype=torch.float64)) / world
                       ).tolist()
    loads.all_reduce()
    return lm_sum / cfg.grad_accum, aux_sum / cfg.grad_accum, loads


def optimizer_step(cfg: TrainConfig, trainee: Trainee, opt: torch.optim.Optimizer, loss: float, step: int,
                   lr: float) -> float:
    """Average the gradients over the ranks, stop on a loss that is not finite, clip and step; returns the gradient
    norm before clipping."""
    if not trainee.sharded:  # FSDP2 reduce-scattered the mean in backward
        distributed.average_gradients(trainee.params, trainee.local)
    if not math.isfinite(loss):
        raise TrainError(f"loss became {loss} at step {step}; lower lr (now {lr:.2e}) or check the data")
    if trainee.sharded:  # the norm is a DTensor under fsdp
        grad_norm = torch.nn.utils.clip_grad_norm_(trainee.params, cfg.grad_clip).full_tensor().item()
    else:
        grad_norm = distributed.clip_grad_norm(trainee.params, cfg.grad_clip, trainee.local)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return grad_norm


def move_bias(cfg: TrainConfig, gates: list[Gate], loads: LayerLoads, lr: float) -> None:
    """balance.mode "loss_free": each layer's routing bias moves by the global batch's expert counts."""
    for gate, counts in zip(gates, loads.counts, strict=True):
        rate = cfg.balance.bias_update_rate
        if cfg.balance.bias_update_schedule == "lr":
            rate *= lr / cfg.lr  # the bias follows the router: fast while it moves, fine at the end
        bias = gate.e_score_correction_bias
        update_bias(bias, counts.to(bias.device), rate, cfg.balance.bias_update)


def _due(done: int, every: int, cfg: TrainConfig) -> bool:
    """Every `every` steps, and after the last."""
    return done % every == 0 or done == cfg.steps


# ---- the loop --------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, progress: bool = True, log=None) -> dict[str, Any]:
    """Pretrain (or resume) on token shards to cfg.steps; returns the last logged metrics."""
    log = log or _stderr
    # before loading anything: another run's checkpoints are refused at once
    checkpoints.refuse_another_run(Path(cfg.out) / "config.json", cfg.to_dict(), [Path(cfg.out) / "checkpoints"])
    torch.manual_seed(cfg.seed)
    train_data, val_data = load_token_data(cfg)
    model = build_model(cfg).train()  # every rank builds the same seeded weights
    distributed.init(cfg.dist_timeout_s)
    parallelize(model, cfg, log)
    trainee = full_trainee(model)
    del model
    try:
        return run(cfg, trainee, train_data, val_data, progress, log)
    finally:
        del trainee  # a sharded model holds the process group through its device mesh: let it go first
        distributed.shutdown()


def run(cfg: TrainConfig, trainee: Trainee, train_data, val_data, progress: bool = True,
        log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """The loop, shared by pretraining and fine-tuning: data objects give batch(i, batch_size, seq_len), and
    batch(i, batch_size, seq_len, rank, world) when it runs under torchrun."""
    model, main = trainee.model, distributed.is_main()
    device = resolve_device(cfg)
    if device != _device(model):
        model.to(device)  # in place: the trainee's parameters are the same objects, now on the device
        model.tie_weights()
        log(f"seekmoe: training on {device}")
    resolve_balance(cfg, model)
    if not main:
        log = _quiet  # rank 0 speaks for the run; errors still raise on every rank
    out = open_run(cfg, model, train_data, main)
    opt = build_optimizer(trainee.params, cfg)
    metrics = out / "metrics.jsonl"
    start = checkpoints.resume(out / "checkpoints", trainee, opt, metrics if main else None, log)
    gates = moe_gates(model)
    tokens_per_step = cfg.batch_size * distributed.world() * cfg.seq_len * cfg.grad_accum
    bar = _progress(cfg.steps, start, progress and main)
    last: dict[str, Any] = {}
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, aux_loss, loads = forward_backward(cfg, model, train_data, step, len(gates))
        grad_norm = optimizer_step(cfg, trainee, opt, loss, step, lr)
        if cfg.balance.mode == "loss_free":
            move_bias(cfg, gates, loads, lr)
        done = step + 1
        if done == cfg.steps and cfg.balance.mode == "loss_free" and cfg.balance.calibrate_tokens:
            _calibrate(model, train_data, cfg, metrics if main else None, log)
        tps = tokens_per_step * (done - start) / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        if main and _due(done, cfg.log_every, cfg):
            last = {"step": done, "split": "train", "loss": loss, "aux_loss": aux_loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens": done * tokens_per_step, "tokens_per_s": tps,
                    "layers": loads.stats()}
            _append_metrics(metrics, last)
        if _due(done, cfg.eval_every, cfg):
            last = {"step": done, "split": "val", **evaluate(model, val_data, cfg)}
            if main:
                _append_metrics(metrics, last)
                _plot(out, log)
        if _due(done, cfg.save_every, cfg):
            checkpoints.save(out / "checkpoints", done, trainee, opt, cfg)
    bar.close()
    return last if main else {}  # rank 0 reports the run


def _calibrate(model: CausalLM, data, cfg: TrainConfig, metrics: Path | None, log) -> None:
    """balance.calibrate_tokens: the bias solved over that many training tokens past the run's own."""
    rank, world = distributed.rank(), distributed.world()
    per_batch = cfg.batch_size * world * cfg.seq_len
    n = -(-cfg.balance.calibrate_tokens // per_batch)
    first = cfg.steps * cfg.grad_accum  # the batches the run would have read next
    device = _device(model)
    result = calibrate_bias(model, lambda: (_batch(data, first + i, cfg, rank, world, device)[0]
                                            for i in range(n)))
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


__all__ = ["TrainConfig", "TrainError", "lr_at", "train"]
