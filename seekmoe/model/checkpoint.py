"""Checkpoints: safetensors + config.json in the Hugging Face deepseek_v2/deepseek_v3 layout.

Loading reads every header first and checks each name, shape and dtype against config.json before allocating the
model; then it copies one tensor at a time from the mapped files into the model, converting dtype as it goes, so the
peak is the model plus one tensor. Pages of a mapped file count in our resident set until it is unmapped (they are
the kernel's page cache, not a copy), so no more than MAP_BYTES of a file is mapped at once.
Saving stages every file beside its target and renames them into place only once all are written, so a failed save
leaves the previous checkpoint as it was. Nothing here unpickles anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from seekmoe.model import weights
from seekmoe.model.config import ConfigError, ModelConfig
from seekmoe.model.mapped import LAYOUT, load_mapped
from seekmoe.model.model import CausalLM, Gate, RotaryEmbedding
from seekmoe.model.quant import load_int8
from seekmoe.model.sharded import load_sharded
from seekmoe.model.weights import DTYPES, CheckpointError

# the bundled model: what every command uses when given none
DEFAULT_MODEL = Path(__file__).parents[1] / "models" / "seekmoe-tiny-chat"
SHARDS = "shards"  # the folder of a sharded training checkpoint (torch.distributed.checkpoint, safetensors)


# ---- loading -------------------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike, dtype: str = "float32") -> CausalLM:
    """Load a Hugging Face-layout DeepSeek-V2/V3 checkpoint folder (config.json + safetensors) for inference."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    path = weights.as_path(path)
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
        if isinstance(quant, dict) and quant.get("layout") == LAYOUT:
            return load_mapped(path, cfg, dtype)  # seekmoe quantize's output, used in place
        if isinstance(quant, dict) and method == "seekmoe-int8":
            return load_int8(path, cfg, dtype)
        raise CheckpointError(f"{config_file}: quantization_config ({method}) is not supported; "
                              "convert the weights to bfloat16 first")
    if (path / SHARDS).is_dir() and not any((path / f).exists() for f in (weights.SINGLE_FILE, weights.INDEX_FILE)):
        return _load_sharded(path, cfg, dtype)
    mtp_layers = cfg.extra.get("num_nextn_predict_layers") or 0
    if not isinstance(mtp_layers, int) or isinstance(mtp_layers, bool) or mtp_layers < 0:
        raise ConfigError(f"{config_file}: num_nextn_predict_layers must be an int >= 0, got {mtp_layers!r}")
    found = weights.read_headers(path)
    weights.check_layers(found, cfg, path)

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
        for file, batch in weights.batches(names, found):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in batch:
                    weights.target(state, name).copy_(f.get_tensor(name))
    return model


def _load_sharded(path: Path, cfg: ModelConfig, dtype: torch.dtype) -> CausalLM:
    """A training checkpoint written as torch.distributed.checkpoint shards (checkpoint_format "sharded"), read
    whole into one process: `seekmoe export hf` of it is the single-file Hugging Face layout."""
    model = CausalLM(cfg)
    try:
        load_sharded(model, None, path / SHARDS, [])
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path / SHARDS}: cannot read the sharded checkpoint ({e})") from None
    return cast_model(model, weights.dtype_name(dtype)) if dtype != torch.float32 else model


def _check_tensors(found: weights.Headers, model: CausalLM, mtp_layers: int, path: Path) -> list[str]:
    """The Hugging Face names the model needs, once each is found with the right shape and a float dtype."""
    names = []
    for name, tensor in weights.hf_tensors(model):  # stops at the first problem, however many experts a config claims
        file, dtype = weights.find_tensor(found, name, tuple(tensor.shape), path)
        if dtype not in weights.FLOAT_BYTES:
            raise CheckpointError(f"{file}: tensor {name} is {dtype}; only float weights (F64, F32, F16, BF16) "
                                  "are supported")
        names.append(name)
    weights.check_unexpected(found, names, model.config, mtp_layers)
    return names



def save_model(model: CausalLM, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and safetensors (sharded past max_shard_bytes); all or nothing replaces what was there."""
    if not isinstance(model, CausalLM):
        raise CheckpointError(f"save_model needs a seekmoe CausalLM, got {type(model).__name__}")
    if not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes <= 0:
        raise CheckpointError(f"max_shard_bytes must be an int > 0, got {max_shard_bytes!r}")
    path = weights.as_path(path)
    dtype = weights.dtype_name(model.model.embed_tokens.weight.dtype)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in weights.hf_tensors(model):
        if tensor.is_meta:
            raise CheckpointError(f"tensor {name} is on the meta device: it has no values to save")
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous()
        size += nbytes
    config = ModelConfig.from_dict({**model.config.to_dict(), "torch_dtype": dtype})
    weights.write_weights(path, shards, config)


__all__ = ["SHARDS", "CheckpointError", "ConfigError", "cast_model", "load_model", "save_model"]
