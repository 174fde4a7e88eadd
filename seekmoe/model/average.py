"""Model soups: fine-tunes of one model averaged weight by weight (Wortsman et al., 2022, "Model soups").

Fine-tunes that start from the same weights stay close enough that their weighted mean is a model too: stages of
the bundled chat model trade goals (one keeps the support answers, another gains Chinese continuation), and their
mean may keep what they share (README: their soups recalled more, and each carried one stage's cost). Only
fine-tunes of one model make a soup, so the folders must share the config (dtype aside), the tokenizer and every
tensor's name and shape; the mean of two unrelated models of one shape passes these checks and is noise, so a soup
is judged like any stage, by bench/chat_eval.py.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from seekmoe.files import write_folder
from seekmoe.model.checkpoint import CheckpointError, load_model, save_model
from seekmoe.model.config import ConfigError, ModelConfig
from seekmoe.model.upcycle import LM_FILES
from seekmoe.model.weights import save_tensors

RECORD = "average.json"  # which folders a soup was made of, and their weights
CARD = "README.md"  # a model card describes the folder it came with, not the soup: never copied


def average_states(states: Iterable[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts with the same names and shapes, summed in float32 (weights normalised).
    States are added one at a time, so a generator that loads each model in turn holds one model beside the sum."""
    total = float(sum(weights))
    shares, states = [w / total for w in weights], iter(states)
    first = next(states, None)
    if first is None or not shares:
        raise ValueError("nothing to average: give one state dict and one weight or more")
    mean = {name: t.float() * shares[0] for name, t in first.items()}
    del first  # held here, the first model would stay in memory to the end
    for share, state in zip(shares[1:], states, strict=True):
        if state.keys() != mean.keys():
            name = sorted(state.keys() ^ mean.keys())[0]
            raise ValueError(f"tensor {name} is in some of the models and not in others: not fine-tunes of one model")
        for name, t in state.items():
            if t.shape != mean[name].shape:
                raise ValueError(f"tensor {name} has shape {tuple(t.shape)} in one model and "
                                 f"{tuple(mean[name].shape)} in another")
            mean[name].add_(t.float(), alpha=share)
    return mean


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    """Each folder's share, summing to 1."""
    if n < 2:
        raise ValueError(f"a soup needs two models or more, got {n}")
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} models")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"each weight must be a finite number > 0, got {w!r}")
    return [w / sum(weights) for w in weights]


def _same_files(srcs: list[Path]) -> list[str]:
    """The names of the files every folder must hold alike (tokenizer and other safetensors aside from the LM's)."""
    names = [{f.name for f in src.iterdir() if f.is_file() and f.name not in (CARD, RECORD)
              and not LM_FILES.fullmatch(f.name)} for src in srcs]
    for src, have in zip(srcs[1:], names[1:], strict=True):
        if have != names[0]:
            name = sorted(have ^ names[0])[0]
            raise ValueError(f"{name} is in {srcs[0] if name in names[0] else src} but not in "
                             f"{src if name in names[0] else srcs[0]}")
    for name in sorted(names[0]):
        if name.startswith("tokenizer") and any((src / name).read_bytes() != (srcs[0] / name).read_bytes()
                                                for src in srcs[1:]):
            raise ValueError(f"{name} differs between the folders: a soup needs one tokenizer")
    return sorted(names[0])


def _comparable(src: Path) -> dict:
    """A folder's config.json as fine-tunes of one model share it: the dtype they were saved in aside."""
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a checkpoint folder")
    config = ModelConfig.from_pretrained(src).to_dict()
    return {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def average_folders(srcs: Sequence[str | Path], dst: str | Path, weights: Sequence[float] | None = None) -> Path:
    """The model folders srcs averaged into dst (all or nothing), in float32: the language model, every other
    safetensors file they all hold (the media encoders), and the first folder's other files; RECORD says what it
    was made of. weights: each folder's share (normalised; default equal)."""
    srcs, dst = [Path(s) for s in srcs], Path(dst)
    shares = _weights(len(srcs), weights)
    if dst.exists():
        raise FileExistsError(f"{dst} exists: averaging writes a new model folder")
    configs = [_comparable(src) for src in srcs]  # read before any weights: a mismatch costs no loading
    for src, config in zip(srcs[1:], configs[1:], strict=True):
        if config != configs[0]:
            key = sorted(k for k in config.keys() | configs[0].keys() if config.get(k) != configs[0].get(k))[0]
            raise ConfigError(f"{srcs[0]} and {src} differ in config.json's {key!r}: not fine-tunes of one model")
    others = _same_files(srcs)
    soup = load_model(srcs[0])
    # one model loaded at a time beside the soup and the float32 sum; named buffers too (the balancing bias of
    # aux-loss-free routing): each fine-tune moved it
    rest = (load_model(src).state_dict() for src in srcs[1:])
    soup.load_state_dict(average_states(itertools.chain([soup.state_dict()], rest), shares))

    def write(tmp: Path) -> None:
        save_model(soup, tmp)
        for name in others:
            if name.endswith(".safetensors"):
                save_tensors(average_states((_read_safetensors(src / name) for src in srcs), shares), tmp / name)
            else:
                shutil.copy(srcs[0] / name, tmp / name)
        record = {"models": [str(s) for s in srcs], "weights": shares}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    return write_folder(dst, write)
