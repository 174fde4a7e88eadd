"""The safetensors side of a checkpoint folder, shared by the float and the int8 formats: Hugging Face tensor
names, reading the headers (and the index of a sharded folder) without loading a tensor, copying tensors in
mapped batches, and writing the files all or nothing. Nothing here unpickles anything."""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from seekmoe.errors import SeekmoeError
from seekmoe.files import Content, fsync_dir, replace_files
from seekmoe.model import config
from seekmoe.model.config import ModelConfig
from seekmoe.model.model import CausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 2**20  # DeepSeek-V3's index is 9 MB; anything far larger is not an index
DTYPES = {name: getattr(torch, name) for name in config.DTYPES}  # the dtypes a model loads and saves in
# safetensors dtypes we convert from, and their sizes; fp8/int weights need their scales and are refused
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
# map at most this much of a file at once: unmapping drops the pages it touched from our resident set
MAP_BYTES = 256 * 2**20
# routed experts: Hugging Face stores one tensor per expert, we stack them (E, F, D)
EXPERT_KEY = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
SHARD_FILE = re.compile(r"^model-\d{5,}-of-\d{5,}\.safetensors$")
Headers = dict[str, tuple[Path, tuple[int, ...], str]]  # tensor name -> (file, shape, safetensors dtype)


class CheckpointError(SeekmoeError, ValueError):
    """A checkpoint file is missing, malformed, or does not match its config."""


# ---- reading -----------------------------------------------------------------------------------------------

def read_headers(path: Path) -> Headers:
    """Each tensor's file, shape and safetensors dtype: from model.safetensors, or the shards the index lists."""
    listed = read_index(path)
    if listed is None:
        single = path / SINGLE_FILE
        if not single.is_file():
            pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
            hint = f"; {pickles[0]} is a pickle, which we never load: convert it to safetensors" if pickles else ""
            raise CheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
        files = [single]
    else:
        files = sorted(set(listed.values()))
    found = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    if listed is None or listed.get(name) == file:
                        sl = f.get_slice(name)
                        found[name] = (file, tuple(sl.get_shape()), sl.get_dtype())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    for name, file in (listed or {}).items():
        if name not in found:
            raise CheckpointError(f"{file}: has no tensor {name}, which {INDEX_FILE} says it holds")
    return found


def read_index(path: Path) -> dict[str, Path] | None:
    """Tensor name -> shard file from model.safetensors.index.json; None when there is no index."""
    index = path / INDEX_FILE
    if not index.is_file():
        return None
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{index}: {index.stat().st_size} bytes, more than an index can be "
                              f"({MAX_INDEX_BYTES} at most)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not valid JSON ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index}: expected an object with a non-empty 'weight_map' of tensor name -> "
                              "file name")
    listed = {}
    for name, file in weight_map.items():
        # shard names are plain file names beside the index: no path may lead elsewhere
        if Path(file).name != file or file in ("", ".", ".."):
            raise CheckpointError(f"{index}: tensor {name!r} points to {file!r}, which is not a file name in "
                                  "the checkpoint folder")
        listed[name] = path / file
    for file in sorted(set(listed.values())):
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in {INDEX_FILE})")
    return listed


def find_tensor(found: Headers, name: str, shape: tuple[int, ...], path: Path) -> tuple[Path, str]:
    """The file and dtype of tensor `name`, once it is known to be there with the shape the config implies."""
    if name not in found:
        raise CheckpointError(f"{path}: missing tensor {name}, which config.json requires (the weights hold "
                              f"{len(found)} tensors)")
    file, got, dtype = found[name]
    if got != shape:
        raise CheckpointError(f"{file}: tensor {name} has shape {got}, but config.json implies {shape}: the "
                              "config does not match the weights")
    return file, dtype


def check_unexpected(found: Headers, names: list[str], cfg: ModelConfig, mtp_layers: int) -> None:
    """Every tensor in the files is one the model takes (or one a loader may ignore): else the config is wrong."""
    unexpected = sorted(set(found) - set(names) - {n for n in found if ignorable(n, cfg, mtp_layers)})
    if unexpected:
        raise CheckpointError(f"{found[unexpected[0]][0]}: unexpected tensor {unexpected[0]}" + (
            f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + ": the config does not match "
            "the weights")


def check_layers(found: Headers, cfg: ModelConfig, path: Path) -> None:
    """Checked before building: a huge layer count in a wrong config.json would take forever to build."""
    layers = {int(m[1]) for name in found if (m := LAYER_KEY.match(name))}
    if cfg.num_hidden_layers > len(layers):
        raise CheckpointError(f"{path}: config.json has num_hidden_layers={cfg.num_hidden_layers}, but the "
                              f"weights hold {len(layers)} layers: the config does not match the weights")


def ignorable(name: str, cfg: ModelConfig, mtp_layers: int) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True  # older checkpoints saved the computed rope table
    if cfg.tie_word_embeddings and name == "lm_head.weight":
        return True
    m = LAYER_KEY.match(name)
    # DeepSeek-V3's multi-token-prediction modules sit after the last layer; we do not run them
    return bool(m) and cfg.num_hidden_layers <= int(m[1]) < cfg.num_hidden_layers + mtp_layers


def batches(names: list[str], found: Headers) -> Iterator[tuple[Path, list[str]]]:
    """Tensors to copy under one mapping: all from one file, MAP_BYTES together (or one bigger tensor alone)."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(found[name][0], []).append(name)
    for file, file_names in by_file.items():
        batch, size = [], 0
        for name in file_names:
            _, shape, dtype = found[name]
            nbytes = math.prod(shape) * FLOAT_BYTES[dtype]
            if batch and size + nbytes > MAP_BYTES:
                yield file, batch
                batch, size = [], 0
            batch.append(name)
            size += nbytes
        yield file, batch


# ---- names: ours <-> Hugging Face -------------------------------------------------------------------------

def hf_tensors(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors under their Hugging Face names; stacked experts are split, one view per expert."""
    tied = model.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # Hugging Face omits the tied head
        if name.endswith((".mlp.experts.gate_proj", ".mlp.experts.up_proj", ".mlp.experts.down_proj")):
            prefix, proj = name.rsplit(".", 1)
            for e in range(tensor.shape[0]):
                yield f"{prefix}.{e}.{proj}.weight", tensor[e]
        else:
            yield name, tensor


def target(state: dict[str, torch.Tensor], hf_name: str) -> torch.Tensor:
    m = EXPERT_KEY.match(hf_name)
    if m:
        return state[f"{m[1]}.{m[3]}"][int(m[2])]
    return state[hf_name]


def as_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise CheckpointError(f"checkpoint path must be a non-empty str or os.PathLike, got {path!r}")
    return Path(path)


# ---- writing ------------------------------------------------------------------------------------------------

def write_weights(path: Path, shards: list[dict[str, torch.Tensor]], config: ModelConfig) -> None:
    """config.json and the tensors (one model.safetensors, or numbered shards and their index) replace what the
    folder held, all or nothing; files of an older layout that the new ones do not overwrite are removed."""
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    files: dict[str, Content] = {n: functools.partial(save_tensors, s) for n, s in zip(names, shards, strict=True)}
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())},
                 "weight_map": {t: n for s, n in zip(shards, names, strict=True) for t in s}}
        files[INDEX_FILE] = (json.dumps(index, indent=2) + "\n").encode()
    files["config.json"] = (json.dumps(config.to_dict(), indent=2) + "\n").encode()
    try:
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        replace_files(path, files)
        # what the new files do not overwrite: the old index (a single file now), shards past the new count
        stale = [p for p in path.iterdir() if p.name not in names and (
            p.name == SINGLE_FILE or SHARD_FILE.match(p.name) or (p.name == INDEX_FILE and len(shards) == 1))]
        for p in sorted(stale, key=lambda p: p.name != INDEX_FILE):  # the index first: it decides what loads
            p.unlink()
        fsync_dir(path)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot save the checkpoint ({e})") from None


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' writer creates files 0600; a model folder is meant to be shared like any other file."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)


def dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise CheckpointError(f"cannot save tensors of dtype {dtype}; convert the model to one of {list(DTYPES)}")


__all__ = ["CheckpointError", "Headers", "as_path", "batches", "check_layers", "check_unexpected", "dtype_name",
           "find_tensor", "hf_tensors", "read_headers", "save_tensors", "target", "write_weights"]
