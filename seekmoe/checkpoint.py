"""Checkpoints: safetensors + config.json in the Hugging Face deepseek_v2/deepseek_v3 layout.

Loading maps the files and copies one tensor at a time into the model, converting dtype as it goes, so the peak
is the model plus one tensor. Saving writes each file atomically. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from seekmoe.config import ConfigError, ModelConfig
from seekmoe.model import CausalLM, Gate, RotaryEmbedding

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors dtypes we convert from; fp8/int weights need their scales and are refused
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# routed experts: Hugging Face stores one tensor per expert, we stack them (E, F, D)
_EXPERT_KEY = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed, or does not match its config."""


# ---- names: ours <-> Hugging Face -------------------------------------------------------------------------

def hf_tensors(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors under their Hugging Face names; stacked experts are split, one view per expert."""
    tied = model.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # Hugging Face omits the tied head
        if name.endswith(".mlp.experts.gate_proj") or name.endswith(".mlp.experts.up_proj") or name.endswith(
            ".mlp.experts.down_proj"
        ):
            prefix, proj = name.rsplit(".", 1)
            for e in range(tensor.shape[0]):
                yield f"{prefix}.{e}.{proj}.weight", tensor[e]
        else:
            yield name, tensor


def _expected(model: CausalLM) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in hf_tensors(model)}


def _target(state: dict[str, torch.Tensor], hf_name: str) -> torch.Tensor:
    m = _EXPERT_KEY.match(hf_name)
    if m:
        return state[f"{m[1]}.{m[3]}"][int(m[2])]
    return state[hf_name]


# ---- loading -------------------------------------------------------------------------------------------------

def weight_files(path: Path) -> dict[str, Path]:
    """Map each tensor name to the file holding it (one file, or shards listed in the index)."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not valid JSON ({e})") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(f"{index}: expected an object with a 'weight_map' of tensor name -> file name")
        files = {}
        for name, file in weight_map.items():
            # shard names are plain file names beside the index: no path may lead elsewhere
            if Path(file).name != file or file in (".", ".."):
                raise CheckpointError(f"{index}: tensor {name!r} points to {file!r}, which is not a file name "
                                      "in the checkpoint folder")
            files[name] = path / file
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise CheckpointError(f"{file}: missing (listed in {INDEX_FILE})")
        return files
    single = path / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
    return {}  # filled from the file's own header


def _open(file: Path, stack: ExitStack):
    try:
        return stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def load_model(path: str | os.PathLike, dtype: str = "float32") -> CausalLM:
    """Load a Hugging Face-layout DeepSeek-V2/V3 checkpoint folder (config.json + safetensors) for inference."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    cfg = ModelConfig.from_pretrained(path)
    quant = cfg.extra.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise CheckpointError(f"{path / 'config.json'}: quantization_config ({method}) is not supported; "
                              "convert the weights to bfloat16 first")
    files = weight_files(path)
    with ExitStack() as stack:
        handles = {file: _open(file, stack) for file in sorted(set(files.values()) or {path / SINGLE_FILE})}
        if not files:
            (file, handle), = handles.items()
            files = dict.fromkeys(handle.keys(), file)

        # build on the meta device and check every name and shape before allocating anything
        with torch.device("meta"):
            model = CausalLM(cfg)
        expected = _expected(model)
        _check_names(files, expected, cfg, path)
        for name, shape in expected.items():
            try:
                sl = handles[files[name]].get_slice(name)
            except (SafetensorError, KeyError) as e:
                raise CheckpointError(f"{files[name]}: tensor {name} listed in {INDEX_FILE} is not there "
                                      f"({e})") from None
            got = tuple(sl.get_shape())
            if got != shape:
                raise CheckpointError(f"{files[name]}: tensor {name} has shape {got}, but config.json implies "
                                      f"{shape}: the config does not match the weights")
            if sl.get_dtype() not in FLOAT_DTYPES:
                raise CheckpointError(f"{files[name]}: tensor {name} is {sl.get_dtype()}; only float32, bfloat16 "
                                      "and float16 weights are supported")

        model = model.to(DTYPES[dtype])
        for module in model.modules():
            if isinstance(module, Gate):
                module.float()  # the router stays float32, as Hugging Face keeps it
        model.to_empty(device="cpu")
        model.tie_weights()
        model.model.rotary_emb = RotaryEmbedding(cfg)  # a computed buffer, not in the file
        state = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in expected:
                _target(state, name).copy_(handles[files[name]].get_tensor(name))
    model.config.torch_dtype = dtype
    return model.eval()


def _check_names(files: dict[str, Path], expected: dict[str, tuple[int, ...]], cfg: ModelConfig, path: Path) -> None:
    missing = [n for n in expected if n not in files]
    extra_layers = cfg.extra.get("num_nextn_predict_layers") or 0
    unexpected = [n for n in files if n not in expected and not _ignorable(n, cfg, extra_layers)]
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]}" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + " that config.json requires")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]} in {files[unexpected[0]].name}" + (
            f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + ": the config does not match "
            "the weights")


def _ignorable(name: str, cfg: ModelConfig, extra_layers: int) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True  # older checkpoints saved the computed rope table
    if cfg.tie_word_embeddings and name == "lm_head.weight":
        return True
    m = re.match(r"^model\.layers\.(\d+)\.", name)
    # DeepSeek-V3's multi-token-prediction modules sit after the last layer; we do not run them
    return bool(m) and cfg.num_hidden_layers <= int(m[1]) < cfg.num_hidden_layers + extra_layers


# ---- saving ------------------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: CausalLM, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and safetensors (sharded past max_shard_bytes), each file atomically."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in hf_tensors(model):
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous()
        size += nbytes
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, name in zip(shards, names, strict=True):
        _atomic_save_tensors(shard, path / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())},
                 "weight_map": {t: n for s, n in zip(shards, names, strict=True) for t in s}}
        atomic_write_bytes(path / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode())
    else:
        (path / INDEX_FILE).unlink(missing_ok=True)
    for stale in path.glob("model*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    dtype = _dtype_name(model.model.embed_tokens.weight.dtype)
    out = ModelConfig.from_dict({**model.config.to_dict(), "torch_dtype": dtype})
    out.save_json(path / "config.json")
    _fsync_dir(path)


def _dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise CheckpointError(f"cannot save tensors of dtype {dtype}")


__all__ = ["CheckpointError", "ConfigError", "hf_tensors", "load_model", "save_model"]
