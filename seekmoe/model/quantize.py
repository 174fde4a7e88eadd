"""`seekmoe quantize`: a float Hugging Face checkpoint to a mapped int8 or int4 one (model/mapped.py), streamed.

Nothing is ever whole in memory: each source tensor is read a slice of rows at a time with pread (not through a
mapping: a mapped file's pages would count in our resident set until unmapped), quantized (per row for int8, per
group of a row for int4, so slices quantize exactly as the whole would), and written at its place in the output
file, whose header is laid out before any data from the shapes alone. Peak memory: a slice and its temporaries
(SLICE_BYTES of float32, a few times over), whatever the model's size. Routed experts are written straight into
their stacked, gate-up-fused place. The output is built in a hidden folder beside OUT and renamed into place once
complete, so OUT is never half written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from seekmoe.model import weights
from seekmoe.model.config import ConfigError, ModelConfig
from seekmoe.model.int4 import GROUP_SIZES, check_group, quantize_int4
from seekmoe.model.mapped import SIZE, TORCH, ShardWriter, files_of, is_float_module, quant_config, read_header
from seekmoe.model.model import CausalLM
from seekmoe.model.quant import quantize_rows
from seekmoe.model.weights import CheckpointError

SLICE_BYTES = 16 * 2**20  # float32 bytes of source rows quantized at once
Target = tuple[str, int, str | None]  # (output tensor, first row in its flattened leading dims, scale tensor)


def quantize_checkpoint(src: str | os.PathLike, out: str | os.PathLike, bits: int, group_size: int = 32,
                        max_shard_bytes: int = 4 * 2**30, force: bool = False, progress: bool = True) -> Path:
    """Write `src` (a float checkpoint folder) quantized to `bits` (8 or 4) into the new folder `out`."""
    if bits not in (4, 8):
        raise CheckpointError(f"bits must be 8 or 4, got {bits!r}")
    if bits == 4 and group_size not in GROUP_SIZES:
        raise CheckpointError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size!r}")
    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise CheckpointError(f"max_shard_bytes must be an int > 0, got {max_shard_bytes!r}")
    src, out = weights.as_path(src), weights.as_path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise CheckpointError(f"{out}: exists and is not an empty folder (force=True, --force on the command line, "
                              "replaces it)")
    if out.resolve() == src.resolve():
        raise CheckpointError(f"{out}: is the source folder")
    cfg, found = _source(src)
    group = group_size if bits == 4 else None
    plan, specs = _plan(cfg, found, bits, group)
    shards = _shards(specs, max_shard_bytes)

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise CheckpointError(f"{out}: cannot create the output folder ({e})") from None
    try:
        _write(src, tmp, found, plan, specs, shards, bits, group, progress)
        config = {**cfg.to_dict(), "quantization_config": quant_config(bits, group, cfg.tie_word_embeddings)}
        ModelConfig.from_dict(config)  # what we write loads back
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for p in sorted(src.iterdir()):  # the tokenizer, chat template, generation config, multimodal weights
            if p.is_file() and not (p.name in ("config.json", weights.SINGLE_FILE, weights.INDEX_FILE)
                                    or weights.SHARD_FILE.match(p.name) or p.suffix in (".bin", ".pt")):
                shutil.copy2(p, tmp / p.name)
        _replace(tmp, out)
    except OSError as e:  # a full disk, a folder we may not write to
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{out}: cannot write the quantized checkpoint ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _source(src: Path) -> tuple[ModelConfig, weights.Headers]:
    """The source's config and headers, once every tensor the config implies is there, float, of its shape."""
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a checkpoint folder")
    if not (src / "config.json").is_file():
        raise ConfigError(f"{src / 'config.json'}: missing (a checkpoint folder holds config.json beside its "
                          "weights)")
    cfg = ModelConfig.from_json(src / "config.json")
    quant = cfg.extra.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise CheckpointError(f"{src / 'config.json'}: already quantized ({method}); quantize needs float weights")
    found = weights.read_headers(src)
    weights.check_layers(found, cfg, src)
    with torch.device("meta"):
        model = CausalLM(cfg)
    names = []
    for name, tensor in weights.hf_tensors(model):
        file, dtype = weights.find_tensor(found, name, tuple(tensor.shape), src)
        if dtype not in weights.FLOAT_BYTES:
            raise CheckpointError(f"{file}: tensor {name} is {dtype}; quantize reads float weights (F64, F32, F16, "
                                  "BF16)")
        names.append(name)
    weights.check_unexpected(found, names, cfg, cfg.extra.get("num_nextn_predict_layers") or 0)
    return cfg, {n: found[n] for n in names}  # multi-token-prediction layers are left out


def _plan(cfg: ModelConfig, found: weights.Headers, bits: int, group: int | None
          ) -> tuple[dict[str, Target], dict[str, tuple[str, tuple[int, ...]]]]:
    """Where each source tensor goes (output tensor, first row, scale tensor or None for a float copy), and the
    output tensors' (dtype, shape)."""
    plan, specs = {}, {}
    qdtype, sdtype = ("I8", "F32") if bits == 8 else ("U8", "F16")

    def qshape(o: tuple[int, ...], i: int, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if bits == 8:
            return (*o, i), o
        try:
            check_group(i, group, f"the input width of {name}")
        except ValueError as e:
            raise CheckpointError(f"{e}; every quantized matrix needs whole groups (try --int8)") from None
        return (*o, i // 2), (*o, i // group)

    for name, (_, shape, dtype) in found.items():
        m = weights.EXPERT_KEY.match(name)
        if m:
            prefix, e, proj = m[1], int(m[2]), m[3]
            f, d = cfg.moe_intermediate_size, cfg.hidden_size
            n = cfg.n_routed_experts
            if proj == "down_proj":
                q, s = qshape((n, d), f, name)
                plan[name] = (f"{prefix}.down_proj", e * d, f"{prefix}.down_proj_scale")
                specs[f"{prefix}.down_proj"], specs[f"{prefix}.down_proj_scale"] = (qdtype, q), (sdtype, s)
            else:
                q, s = qshape((n, 2 * f), d, name)
                plan[name] = (f"{prefix}.gate_up", e * 2 * f + (f if proj == "up_proj" else 0),
                              f"{prefix}.gate_up_scale")
                specs[f"{prefix}.gate_up"], specs[f"{prefix}.gate_up_scale"] = (qdtype, q), (sdtype, s)
        elif (len(shape) == 2 and name.endswith(".weight")
              and not is_float_module(name[:-len(".weight")], cfg.tie_word_embeddings)):
            q, s = qshape(shape[:1], shape[1], name)
            plan[name] = (name, 0, f"{name}_scale")
            specs[name], specs[f"{name}_scale"] = (qdtype, q), (sdtype, s)
        else:
            plan[name] = (name, 0, None)
            specs[name] = (dtype, shape)
    return plan, specs


def _shards(specs: dict[str, tuple[str, tuple[int, ...]]], max_bytes: int) -> list[list[str]]:
    """Output tensors cut into files of at most max_bytes (one bigger tensor alone), in model order."""
    shards, size = [[]], 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * SIZE[dtype]
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write(src: Path, tmp: Path, found: weights.Headers, plan: dict[str, Target],
           specs: dict[str, tuple[str, tuple[int, ...]]], shards: list[list[str]], bits: int, group: int | None,
           progress: bool) -> None:
    names = [weights.SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    writers, where = [], {}
    try:
        for file, shard in zip(names, shards, strict=True):
            writers.append(ShardWriter(tmp / file, {n: specs[n] for n in shard}))
            where.update({n: writers[-1] for n in shard})
        quant: Callable = quantize_rows if bits == 8 else (lambda w: quantize_int4(w, group))
        total = sum(math.prod(shape) * SIZE[dtype] for _, shape, dtype in found.values())
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"int{bits}", disable=not progress) as bar:
            for file in files_of(src):
                start, tensors = read_header(file)
                mine = sorted((n for n in found if found[n][0] == file), key=lambda n: tensors[n][2])
                with open(file, "rb") as f:
                    for name in mine:  # in file order: the disk reads sequentially
                        dtype, shape, begin, _ = tensors[name]
                        target, row0, scale = plan[name]
                        row_elems = math.prod(shape[1:])
                        step = max(1, SLICE_BYTES // (4 * row_elems))
                        for r in range(0, shape[0] if shape else 1, step):
                            rows = min(step, shape[0] - r) if shape else 1
                            chunk = _read(f.fileno(), start + begin + r * row_elems * SIZE[dtype], rows,
                                          shape[1:], dtype)  # (rows, ...)
                            if scale is None:
                                where[target].write(target, chunk, row0 + r)
                            else:
                                q, s = quant(chunk)
                                where[target].write(target, q, row0 + r)
                                where[scale].write(scale, s, row0 + r)
                            bar.update(chunk.numel() * SIZE[dtype])
    finally:
        errors = []
        for w in writers:
            try:
                w.close()
            except CheckpointError as e:
                errors.append(e)
    if errors:
        raise errors[0]
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(math.prod(s) * SIZE[d] for d, s in specs.values())},
                 "weight_map": {n: file for file, shard in zip(names, shards, strict=True) for n in shard}}
        (tmp / weights.INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _read(fd: int, offset: int, rows: int, row_shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """rows x row_shape elements of `dtype` at `offset` of an open file, read (not mapped) into a new tensor."""
    buf = bytearray(rows * math.prod(row_shape) * SIZE[dtype])
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise CheckpointError(f"a source file ended early, at byte {offset + got}")
        got += n
    return torch.frombuffer(buf, dtype=TORCH[dtype]).view(rows, *row_shape)


def _replace(tmp: Path, out: Path) -> None:
    """tmp renamed to out; an existing out (empty, or replaced with force) moved aside first, removed after."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


__all__ = ["quantize_checkpoint"]
