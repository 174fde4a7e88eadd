"""The long-context stage of the bundled chat model, as it ran on one H200 lent for 15 minutes (issue 26): the
model stretched from 1,024 to 16,384 positions with YaRN, then fully fine-tuned with steps that alternate a batch of
16 rows of 16,384 tokens of long documents (passkey documents and long plain text, data/passkey16 and
data/passkey16b) and a batch of 48 rows of 1,024 tokens of the chat sets packed as the chat model learned them
(runs/sft-mix5). M1: about two epochs of the long rows at lr 6e-4 -> 6e-5; M2: M1 and as many steps again as the
time left allows at 3e-4 -> 3e-5. Not part of the package: the machine gets the repository and nothing else, and
sends back at most 8 files of 16 MiB, so

    # here: the data as one archive in an ignored folder (22 MB of xz)
    mkdir -p devrun/mix && cp -L runs/long-mix16/* devrun/mix/
    cp data/passkey16b/passkey.train.jsonl devrun/mix/passkey_b.train.jsonl
    cp data/passkey16b/long_text.train.jsonl devrun/mix/long_text_b.train.jsonl
    (cd devrun && tar -cf - mix | xz -9 > data.tar.xz && rm -r mix)
    # there (device tool, carry devrun, the working tree under 64 MiB):
    PYTHONPATH=$PWD python3 scripts/long_context_gpu.py 470
    # here: each model back from its pieces
    cat m1.part* > runs/gpu2-m1/model/model.safetensors   # + config.json, the bundled tokenizer and encoders

The tokenizing runs in child processes (the long files in four, the chat files in one) while the GPU starts; the
step counts follow the time left (BUDGET_S, seconds of the whole script). `--dry` runs a handful of steps on the CPU
at 2,048 tokens, to check the script here.

usage: python scripts/long_context_gpu.py BUDGET_S [--dry]
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

T0 = time.time()
BUDGET = float(sys.argv[1])  # seconds of the whole script, from start to the last file written
DRY = "--dry" in sys.argv
OUT = Path(os.environ.get("OUT", "/tmp/devout"))
OUT.mkdir(parents=True, exist_ok=True)
LOG = open(OUT / "log.txt", "a", buffering=1)  # noqa: SIM115 (the whole run writes to it)


def say(msg: str) -> None:
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    LOG.write(line + "\n")


def left() -> float:
    return BUDGET - (time.time() - T0)


if not Path("/tmp/mix").is_dir() and "--tokenize-chat" not in sys.argv:
    subprocess.run(["tar", "-xJf", "devrun/data.tar.xz", "-C", "/tmp"], check=True)
    say("data unpacked")

import torch  # noqa: E402

from seekmoe.model.checkpoint import load_model, save_model  # noqa: E402
from seekmoe.text.tokenizer import Tokenizer  # noqa: E402
from seekmoe.train.config import FinetuneConfig  # noqa: E402
from seekmoe.train.finetune import load_data  # noqa: E402
from seekmoe.train.loop import run  # noqa: E402
from seekmoe.train.trainee import full_trainee  # noqa: E402

DEVICE = "cpu" if DRY else "cuda"
BASE = "seekmoe/models/seekmoe-tiny-chat"
SEQ = 2048 if DRY else 16384
BATCH = 1 if DRY else 16


def cfg_for(name: str, data: str, steps: int, seq: int, batch: int, lr: float, **kw) -> FinetuneConfig:
    return FinetuneConfig.from_dict({**dict(
        model=BASE, data=data, out=f"/tmp/runs/{name}", method="full", steps=steps, seq_len=seq, batch_size=batch,
        lr=lr, min_lr=lr / 10, warmup_steps=min(30, steps // 5), eval_every=max(1, steps // 4), eval_batches=4,
        save_every=steps, keep_checkpoints=1, log_every=5, bf16=True, device=DEVICE, seed=7), **kw})


def ship(model, name: str) -> None:
    """The model in bf16 as OUT/NAME.partNN (pieces < 16 MiB) + its config; the tokenizer is the bundled one."""
    folder = Path(f"/tmp/ship/{name}")
    m = copy.deepcopy(model).to("cpu", torch.bfloat16)
    save_model(m, folder)
    data = (folder / "model.safetensors").read_bytes()
    piece = 15 * 2**20
    for i in range(0, len(data), piece):
        (OUT / f"{name}.part{i // piece:02d}").write_bytes(data[i:i + piece])
    (OUT / "config.json").write_bytes((folder / "config.json").read_bytes())  # M1's and M2's are the same
    say(f"shipped {name}: {len(data):,} bytes")


def ship_metrics(cfg, name: str) -> None:
    src = Path(cfg.out) / "metrics.jsonl"
    with open(OUT / "metrics.jsonl", "a") as f:
        for line in src.read_text().splitlines():
            f.write(json.dumps({"run": name, **json.loads(line)}) + "\n")


def probe(model) -> None:
    """One small forward and backward on the device before the data is waited for: a model that does not run there
    fails here, in seconds."""
    x = torch.randint(0, model.config.vocab_size, (2, 512), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = model(x, return_routing=True)
    out.logits.float().mean().backward()
    model.zero_grad(set_to_none=True)
    say("probe ok")


tok = Tokenizer.from_pretrained(BASE)
SEQ_C, BATCH_C = (1024, 1) if DRY else (1024, 48)
CHAT = Path("/tmp/chat")


def chat_folder() -> None:
    CHAT.mkdir(exist_ok=True)
    for f in Path("/tmp/mix").glob("*.jsonl"):
        if not (f.name.startswith("passkey") or f.name.startswith("long_text")) and not (CHAT / f.name).exists():
            (CHAT / f.name).symlink_to(f)


if "--tokenize-chat" in sys.argv:  # a child: the chat rows, packed at 1k while the long parts are
    import numpy as np

    chat_folder()
    train_c, val_c = load_data(cfg_for("chat", str(CHAT), 8, SEQ_C, BATCH_C, 2e-4), tok, say)
    np.savez("/tmp/chat.npz", train_t=train_c.tokens.astype(np.uint16), train_m=train_c.masks,
             val_t=val_c.tokens.astype(np.uint16), val_m=val_c.masks)
    os.rename("/tmp/chat.npz", "/tmp/chat.ready.npz")
    raise SystemExit(0)
PARTS = 4


def part_files(i: int) -> list[Path]:
    """The long mix's training files, split into PARTS groups of about equal bytes (greedy, largest first)."""
    files = sorted((f for f in Path("/tmp/mix").glob("*.train.jsonl") if f.name.startswith(("passkey", "long_text"))),
                   key=lambda f: -f.stat().st_size)
    groups: list[list[Path]] = [[] for _ in range(PARTS)]
    sizes = [0] * PARTS
    for f in files:
        j = sizes.index(min(sizes))
        groups[j].append(f)
        sizes[j] += f.stat().st_size
    return groups[i]


if "--part" in sys.argv:  # a child: one group of the long mix's rows, packed at 16k
    import numpy as np

    from seekmoe.train.sft import SFTData, SFTError

    i = int(sys.argv[sys.argv.index("--part") + 1])
    try:
        d = SFTData.from_files(part_files(i), tok, SEQ, seed=7, log=say)
        t, m = d.tokens.astype(np.uint16), d.masks
        say(f"part {i}: {d.report.summary()} -> {len(d)} rows")
    except SFTError as e:  # every document of the part longer than SEQ (--dry)
        t, m = np.zeros((0, SEQ + 1), np.uint16), np.zeros((0, SEQ + 1), bool)
        say(f"part {i}: {e}")
    np.savez(f"/tmp/a{i}.npz", t=t, m=m)
    os.rename(f"/tmp/a{i}.npz", f"/tmp/a{i}.ready.npz")
    raise SystemExit(0)
flags = ["--dry"] if DRY else []
child = subprocess.Popen([sys.executable, __file__, str(BUDGET), "--tokenize-chat", *flags])
parts = [subprocess.Popen([sys.executable, __file__, str(BUDGET), "--part", str(i), *flags]) for i in range(PARTS)]
# ---- long rows (16k: passkey, long text) and chat rows (1k, packed as the chat model learned) in turn ---------
import numpy as np  # noqa: E402

from seekmoe.train.sft import SFTData  # noqa: E402

if not DRY:
    torch.backends.cuda.matmul.allow_tf32 = True
    say(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")


class Alternate:
    """Even steps: a batch of long rows; odd steps: a batch of chat rows (each its own batch size and length)."""

    def __init__(self, long, chat):
        self.long, self.chat = long, chat
        self.vocab_size = long.vocab_size

    def batch(self, step: int, batch_size: int, seq_len: int):
        k, r = divmod(step, 2)
        return self.long.batch(k, BATCH, SEQ) if r == 0 else self.chat.batch(k, BATCH_C, SEQ_C)


class Fixed:
    """Validation on the chat rows whatever the loop asks for."""

    def __init__(self, d):
        self.d = d

    def batch(self, step: int, batch_size: int, seq_len: int):
        return self.d.batch(step, BATCH_C, SEQ_C)

    def eval_steps(self, batch_size: int) -> int:
        return self.d.eval_steps(BATCH_C)


if any(p.wait() for p in parts) or child.wait():
    raise SystemExit("a tokenizing part failed")
loaded = [np.load(f"/tmp/a{i}.ready.npz") for i in range(PARTS)]
long_rows = SFTData(np.concatenate([a["t"] for a in loaded]).astype(np.int64),
                    np.concatenate([a["m"] for a in loaded]), tok.vocab_size, seed=7)
arrays = np.load("/tmp/chat.ready.npz")
chat_rows = SFTData(arrays["train_t"].astype(np.int64), arrays["train_m"], tok.vocab_size, seed=8)
chat_val = SFTData(arrays["val_t"].astype(np.int64), arrays["val_m"], tok.vocab_size, shuffle=False)
say(f"{len(long_rows)} long rows of {SEQ}, {len(chat_rows)} chat rows of {SEQ_C}, {len(chat_val)} chat val rows")
train_data, val_data = Alternate(long_rows, chat_rows), Fixed(chat_val)
model = load_model(BASE)
model.extend_context(16384)
model.to(DEVICE)
probe(model)
PAIR_S = 0.40  # a long step (16 x 16,384: 0.30 s on an H200, run 1) and a chat step (48 x 1,024)
long_epoch = len(long_rows) / BATCH
steps = 2 * int(2 * long_epoch)  # two epochs of the long rows
steps = 6 if DRY else min(steps, 2 * int((left() - 60) / 2 / PAIR_S))
say(f"M1: {steps} steps ({steps / 2 / long_epoch:.2f} epochs of long rows, "
    f"{steps / 2 * BATCH_C / len(chat_rows):.2f} of chat rows), {left():.0f} s left")
cfg = cfg_for("m1", "/tmp/mix", steps, SEQ, BATCH, 6e-4, context=16384)
model.train()
last = run(cfg, full_trainee(model), train_data, val_data, progress=False, log=say)
say(f"M1 done: {json.dumps({k: v for k, v in last.items() if k != 'layers'})}")
ship(model, "m1")
ship_metrics(cfg, "m1")

# ---- M2: M1 and as many steps again at half the learning rate ----------------------------------------------------
steps2 = steps if DRY else min(steps, 2 * int((left() - 30) / 2 / PAIR_S))
if steps2 < 40 and not DRY:
    say(f"M2 skipped: {left():.0f} s left")
    raise SystemExit(0)
say(f"M2: {steps2} more steps, {left():.0f} s left")
cfg = cfg_for("m2", "/tmp/mix", steps2, SEQ, BATCH, 3e-4, seed=9)
last = run(cfg, full_trainee(model), train_data, val_data, progress=False, log=say)
say(f"M2 done: {json.dumps({k: v for k, v in last.items() if k != 'layers'})}")
ship(model, "m2")
ship_metrics(cfg, "m2")
say("all done")
