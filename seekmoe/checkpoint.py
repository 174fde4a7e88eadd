"""Checkpoints: safetensors + config.json in the Hugging Face deepseek_v2/deepseek_v3 layout.

Loading reads every header first and checks each name, shape and dtype against config.json before allocating the
model; then it copies one tensor at a time from the mapped files into the model, converting dtype as it goes, so the
peak is the model plus one tensor. Pages of a mapped file count in our resident set until it is unmapped (they are
the kernel's page cache, not a copy), so no more than MAP_BYTES of a file is mapped at once.
Saving stages every file beside its target and renames them into place only once all are written, so a failed save
leaves the previous checkpoint as it was. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from seekmoe.config import ConfigError, ModelConfig
from seekmoe.model import CausalLM, Gate, RotaryEmbedding

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARDS = "shards"  # the folder of a sharded training checkpoint (torch.distributed.checkpoint, safetensors)
MAX_INDEX_BYTES = 64 * 2**20  # DeepSeek-V3's index is 9 MB; anything far larger is not an index
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors dtypes we convert from, and their sizes; fp8/int weights need their scales and are refused
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
# map at most this much of a file at once: unmapping drops the pages it touched from our resident set
MAP_BYTES = 256 * 2**20
# routed experts: Hugging Face stores one tensor per expert, we stack them (E, F, D)
_EXPERT_KEY = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
_SHARD_FILE = re.compile(r"^model-\d{5,}-of-\d{5,}\.safetensors$")
Headers = dict[str, tuple[Path, tuple[int, ...], str]]  # tensor name -> (file, shape, safetensors dtype)


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed, or does not match its config."""


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


def _target(state: dict[str, torch.Tensor], hf_name: str) -> torch.Tensor:
    m = _EXPERT_KEY.match(hf_name)
    if m:
        return state[f"{m[1]}.{m[3]}"][int(m[2])]
    return state[hf_name]


def _as_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise CheckpointError(f"checkpoint path must be a non-empty str or os.PathLike, got {path!r}")
    return Path(path)


# ---- loading -------------------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike, dtype: str = "float32") -> CausalLM:
    """Load a Hugging Face-layout DeepSeek-V2/V3 checkpoint folder (config.json + safetensors) for inference."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    path = _as_path(path)
    try:
        model = _load(path, DTYPES[dtype])
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e})") from None
    model.config.torch_dtype = dtype
    return model.eval()


def cast_model(model: CausalLM, dtype: str) -> CausalLM:
    """The model in another dtype, the router kept in float32 as load_model keeps it."""
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    model.to(DTYPES[dtype])
    for module in model.modules():
        if isinstance(module, Gate):
            module.float()
    model.config.torch_dtype = dtype
    return model


def _load(path: Path, dtype: torch.dtype) -> CausalLM:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{config_file}: missing (a checkpoint folder holds config.json beside its weights)")
    cfg = ModelConfig.from_json(config_file)
    quant = cfg.extra.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        if isinstance(quant, dict) and method == "seekmoe-int8":
            from seekmoe.engine.quant import load_int8  # imported here: quant builds on this module

            return load_int8(path, cfg, dtype)
        raise CheckpointError(f"{config_file}: quantization_config ({method}) is not supported; "
                              "convert the weights to bfloat16 first")
    if (path / SHARDS).is_dir() and not (path / SINGLE_FILE).exists() and not (path / INDEX_FILE).exists():
        return _load_sharded(path, cfg, dtype)
    mtp_layers = cfg.extra.get("num_nextn_predict_layers") or 0
    if not isinstance(mtp_layers, int) or isinstance(mtp_layers, bool) or mtp_layers < 0:
        raise ConfigError(f"{config_file}: num_nextn_predict_layers must be an int >= 0, got {mtp_layers!r}")
    found = _read_headers(path)
    layers = {int(m[1]) for name in found if (m := _LAYER_KEY.match(name))}
    if cfg.num_hidden_layers > len(layers):  # checked before building: a huge layer count would take forever
        raise CheckpointError(f"{path}: config.json has num_hidden_layers={cfg.num_hidden_layers}, but the "
                              f"weights hold {len(layers)} layers: the config does not match the weights")

    # build on the meta device and check every name, shape and dtype before allocating anything
    with torch.device("meta"):
        model = CausalLM(cfg)
    names = _check_tensors(found, model, mtp_layers, path)

    model = model.to(dtype)
    for module in model.modules():
        if isinstance(module, Gate):
            module.float()  # the router stays float32, as Hugging Face keeps it
    model.to_empty(device="cpu")
    model.tie_weights()
    model.model.rotary_emb = RotaryEmbedding(cfg)  # a computed buffer, not in the file
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for file, batch in _batches(names, found):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in batch:
                    _target(state, name).copy_(f.get_tensor(name))
    return model


def _load_sharded(path: Path, cfg: ModelConfig, dtype: torch.dtype) -> CausalLM:
    """A training checkpoint written as torch.distributed.checkpoint shards (checkpoint_format "sharded"), read
    whole into one process: `seekmoe export hf` of it is the single-file Hugging Face layout."""
    from seekmoe import distributed  # imported here: it builds on the training config

    model = CausalLM(cfg)
    try:
        distributed.load_sharded(model, None, path / SHARDS, [])
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path / SHARDS}: cannot read the sharded checkpoint ({e})") from None
    return cast_model(model, _dtype_name(dtype)) if dtype != torch.float32 else model


def _batches(names: list[str], found: Headers) -> Iterator[tuple[Path, list[str]]]:
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


def _read_headers(path: Path) -> Headers:
    """Each tensor's file, shape and safetensors dtype: from model.safetensors, or the shards the index lists."""
    listed = _read_index(path)
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


def _read_index(path: Path) -> dict[str, Path] | None:
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


def _check_tensors(found: Headers, model: CausalLM, mtp_layers: int, path: Path) -> list[str]:
    """The Hugging Face names the model needs, once each is found with the right shape and a float dtype."""
    names = []
    for name, tensor in hf_tensors(model):  # stops at the first problem, however many experts a config claims
        file, dtype = find_tensor(found, name, tuple(tensor.shape), path)
        if dtype not in FLOAT_BYTES:
            raise CheckpointError(f"{file}: tensor {name} is {dtype}; only float weights (F64, F32, F16, BF16) "
                                  "are supported")
        names.append(name)
    unexpected = sorted(set(found) - set(names) - {n for n in found if _ignorable(n, model.config, mtp_layers)})
    if unexpected:
        raise CheckpointError(f"{found[unexpected[0]][0]}: unexpected tensor {unexpected[0]}" + (
            f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + ": the config does not match "
            "the weights")
    return names


def _ignorable(name: str, cfg: ModelConfig, mtp_layers: int) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True  # older checkpoints saved the computed rope table
    if cfg.tie_word_embeddings and name == "lm_head.weight":
        return True
    m = _LAYER_KEY.match(name)
    # DeepSeek-V3's multi-token-prediction modules sit after the last layer; we do not run them
    return bool(m) and cfg.num_hidden_layers <= int(m[1]) < cfg.num_hidden_layers + mtp_layers


# ---- saving ------------------------------------------------------------------------------------------------

def save_model(model: CausalLM, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and safetensors (sharded past max_shard_bytes); all or nothing replaces what was there."""
    if not isinstance(model, CausalLM):
        raise CheckpointError(f"save_model needs a seekmoe CausalLM, got {type(model).__name__}")
    if not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes <= 0:
        raise CheckpointError(f"max_shard_bytes must be an int > 0, got {max_shard_bytes!r}")
    path = _as_path(path)
    dtype = _dtype_name(model.model.embed_tokens.weight.dtype)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in hf_tensors(model):
        if tensor.is_meta:
            raise CheckpointError(f"tensor {name} is on the meta device: it has no values to save")
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous()
        size += nbytes
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    config = ModelConfig.from_dict({**model.config.to_dict(), "torch_dtype": dtype})
    files: dict[str, bytes | dict[str, torch.Tensor]] = dict(zip(names, shards, strict=True))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())},
                 "weight_map": {t: n for s, n in zip(shards, names, strict=True) for t in s}}
        files[INDEX_FILE] = (json.dumps(index, indent=2) + "\n").encode()
    files["config.json"] = (json.dumps(config.to_dict(), indent=2) + "\n").encode()
    try:
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        _replace_all(path, files)
        # what the new files do not overwrite: the old index (a single file now), shards past the new count
        stale = [p for p in path.iterdir() if p.name not in names and (
            p.name == SINGLE_FILE or _SHARD_FILE.match(p.name) or (p.name == INDEX_FILE and len(shards) == 1))]
        for p in sorted(stale, key=lambda p: p.name != INDEX_FILE):  # the index first: it decides what loads
            p.unlink()
        fsync_dir(path)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot save the checkpoint ({e})") from None


def _replace_all(folder: Path, files: dict[str, bytes | dict[str, torch.Tensor]]) -> None:
    """Write every file to a hidden temporary beside its target, fsync it, then rename them all into place.

    A failure while writing (full disk, an exception) leaves the old files untouched and no temporaries behind.
    Only a crash during the final renames, which take microseconds, could mix old files with new ones.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for name, content in files.items():
            tmp = folder / f".{name}.{uuid.uuid4().hex[:12]}.tmp"
            staged.append((tmp, folder / name))
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                save_tensors(content, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' writer creates files 0600; a model folder is meant to be shared like any other file."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace one file atomically (temporary file, fsync, rename)."""
    _replace_all(path.parent, {path.name: data})
    fsync_dir(path.parent)


def write_folder(final: Path, write: Callable[[Path], None]) -> Path:
    """A folder replaced all or nothing: `write(tmp)` fills a hidden sibling, which then takes the place of `final`
    (an old `final` is removed after). A failure leaves `final` as it was and no temporary behind."""
    final = Path(final)
    tag = uuid.uuid4().hex[:12]
    tmp, old = final.with_name(f".{final.name}.{tag}.tmp"), final.with_name(f".{final.name}.{tag}.old")
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        moved = final.exists()
        if moved:
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if moved:
                os.rename(old, final)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)
    return final


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise CheckpointError(f"cannot save tensors of dtype {dtype}; convert the model to one of {list(DTYPES)}")


__all__ = ["CheckpointError", "ConfigError", "hf_tensors", "load_model", "save_model"]
