"""Quantized checkpoints used in place: safetensors files written tensor by tensor, and read by mapping them.

The format (`quantization_config.layout` = "mapped", written by `seekmoe quantize`, model/quantize.py):
- config.json's quantization_config: {"quant_method": "seekmoe-int8" | "seekmoe-int4", "bits": 8 | 4,
  "group_size": G (int4), "layout": "mapped", ...};
- Hugging Face names for every tensor but the routed experts: a quantized linear's `<module>.weight` (int8 (O, I), or
  int4 (O, I / 2) uint8 as model/int4.py packs it) and `<module>.weight_scale` (float32 (O,), or float16 (O, I / G));
  float tensors (embedding, norms, routers, kv_b_proj) in the source's dtype;
- routed experts stacked per layer, gate and up fused, the layout the decode kernels read:
  `model.layers.{i}.mlp.experts.gate_up` (E, 2F, D) int8 or (E, 2F, D / 2) uint8 (expert e's F gate rows, then its
  F up rows), `.gate_up_scale` (E, 2F) or (E, 2F, D / G), `.down_proj` (E, D, F) or (E, D, F / 2),
  `.down_proj_scale` (E, D) or (E, D, F / G). Stacked, each is one tensor the kernel indexes by expert; per-expert
  tensors would need a table of pointers in every kernel, and a fused copy at load (the second copy this avoids).

Loading maps each file (torch.from_file, a private mapping, read only when touched) and uses the routed experts (93%
of DeepSeek-V2-Lite's quantized weights) as views of it: resident memory is the experts decoding has touched, pages
the kernel may drop again under memory pressure since the file backs them. The other quantized matrices (attention,
dense and shared MLPs, lm_head), which every token reads and the engine fuses into copies, and the float tensors
(embedding, norms, routers, kv_b_proj), converted to the model's dtype, are read into memory instead: through the
mapping, their pages would stay resident beside the copies. Mapped tensors must start aligned to their element size,
as model/quantize.py writes them. Headers are parsed here, not by safetensors, because the views need each tensor's
byte offset; every offset is checked against the file's size first, so a truncated or corrupt file is a
CheckpointError, never a crash when a page past the end is touched.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from fnmatch import fnmatch
from pathlib import Path

import torch
from torch import nn

from seekmoe.model import weights
from seekmoe.model.config import ModelConfig
from seekmoe.model.int4 import GROUP_SIZES, Int4Linear, Int4RoutedExperts, check_group
from seekmoe.model.model import CausalLM, Gate, RotaryEmbedding, RoutedExperts
from seekmoe.model.quant import FLOAT_MODULES, Int8Linear, Int8RoutedExperts
from seekmoe.model.weights import CheckpointError

LAYOUT = "mapped"
METHODS = {"seekmoe-int8": 8, "seekmoe-int4": 4}
# safetensors dtypes: torch dtype and bytes per element
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "I8": torch.int8, "U8": torch.uint8}
SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}
MAX_HEADER = 100 * 2**20  # safetensors' own limit
EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up|gate_up_scale|down_proj|down_proj_scale)$")
Spec = tuple[str, tuple[int, ...]]  # (safetensors dtype, shape)


# ---- the file format ----------------------------------------------------------------------------------------

def st_dtype(dtype: torch.dtype) -> str:
    for name, d in TORCH.items():
        if d == dtype:
            return name
    raise CheckpointError(f"no safetensors dtype for {dtype}")


def layout_header(specs: dict[str, Spec]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The header bytes of a safetensors file holding `specs`, and each tensor's [begin, end) in its data. Wider
    dtypes first, so every tensor starts aligned to its element size (a view of the mapping needs it), as
    safetensors' own writer orders them; within a dtype in the order given (tensors written one after another lie
    one after another: bench/full_size.py views a layer's per-expert tensors as one stack). The header is padded to
    a multiple of 8 bytes."""
    offsets, pos, header = {}, 0, {"__metadata__": {"format": "pt"}}
    for name in sorted(specs, key=lambda n: -SIZE[specs[n][0]]):  # stable: the given order within a dtype
        dtype, shape = specs[name]
        size = math.prod(shape) * SIZE[dtype]
        offsets[name] = (pos, pos + size)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + size]}
        pos += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets


class ShardWriter:
    """One safetensors file written in any order, a slice of rows at a time: the header first (every tensor's
    place is known from its shape), then each slice at its offset, so no tensor is ever whole in memory."""

    def __init__(self, path: Path, specs: dict[str, Spec]):
        self.path, self.specs = path, specs
        head, self.offsets = layout_header(specs)
        self.start = len(head)
        self.left = {name: end - begin for name, (begin, end) in self.offsets.items()}
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, head, 0)
        os.ftruncate(self.fd, self.start + max((e for _, e in self.offsets.values()), default=0))

    def write(self, name: str, tensor: torch.Tensor, row: int = 0) -> None:
        """`tensor` as rows `row`.. of `name` (rows along dim 0 of its stored shape, or of its flattened leading
        dims for a stacked tensor's `row` counted in its last-but-one dim's units)."""
        dtype, shape = self.specs[name]
        if st_dtype(tensor.dtype) != dtype or tuple(tensor.shape[1:]) != tuple(shape[len(shape) - tensor.dim() + 1:]):
            raise CheckpointError(f"{self.path}: writing {name}: got {tuple(tensor.shape)} {tensor.dtype}, the file "
                                  f"holds {shape} {dtype}")
        row_bytes = math.prod(tensor.shape[1:]) * SIZE[dtype]
        data = tensor.contiguous().view(torch.uint8).numpy()
        begin = self.offsets[name][0] + row * row_bytes
        if begin + data.nbytes > self.offsets[name][1]:
            raise CheckpointError(f"{self.path}: writing {name} past its end")
        os.pwrite(self.fd, memoryview(data).cast("B"), self.start + begin)
        self.left[name] -= data.nbytes

    def close(self) -> None:
        """Check every byte of every tensor was written, then flush the file to disk."""
        try:
            missing = [n for n, left in self.left.items() if left]
            if missing:
                raise CheckpointError(f"{self.path}: {len(missing)} tensors not fully written ({missing[0]} ...)")
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


def read_header(file: Path) -> tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]]:
    """(data start, {name: (dtype, shape, begin, end)}) of a safetensors file, every offset checked against the
    file's size: a truncated or corrupt file is a CheckpointError here, not a fault when a page is touched."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= min(MAX_HEADER, size - 8):
                raise CheckpointError(f"{file}: not a safetensors file (header length {n}, file {size} bytes)")
            meta = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: the safetensors header is not a JSON object")
    start, out, spans = 8 + n, {}, []
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = dtype in SIZE and all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= begin <= end
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or end - begin != math.prod(shape) * SIZE[dtype]:
            raise CheckpointError(f"{file}: tensor {name}: a malformed header entry {info!r}")
        out[name] = (dtype, shape, begin, end)
        spans.append((begin, end))
    end = max((e for _, e in spans), default=0)
    if start + end != size:
        raise CheckpointError(f"{file}: {size} bytes, but its header describes {start + end}: the file is "
                              f"{'truncated' if start + end > size else 'longer than its tensors'} (an interrupted "
                              "copy or download?)")
    return start, out


def files_of(path: Path) -> list[Path]:
    listed = weights.read_index(path)
    if listed is not None:
        return sorted(set(listed.values()))
    if not (path / weights.SINGLE_FILE).is_file():
        raise CheckpointError(f"{path}: no {weights.SINGLE_FILE} or {weights.INDEX_FILE}")
    return [path / weights.SINGLE_FILE]


# ---- which tensors a model holds ----------------------------------------------------------------------------

def is_float_module(module: str, tied: bool) -> bool:
    return any(fnmatch(module, p) for p in FLOAT_MODULES) or (tied and module == "lm_head")


def quant_config(bits: int, group_size: int | None, tied: bool) -> dict:
    return {"quant_method": f"seekmoe-int{bits}", "bits": bits, **({"group_size": group_size} if bits == 4 else {}),
            "scheme": "weight-only, symmetric, " + ("per output channel" if bits == 8 else
                                                   f"groups of {group_size} inputs, float16 scales"),
            "layout": LAYOUT,
            "routed_experts": "stacked per layer: model.layers.{i}.mlp.experts.gate_up (E, 2F, D) [int4: D / 2 "
                              "bytes], gate rows then up rows per expert; .down_proj (E, D, F); with .gate_up_scale, "
                              ".down_proj_scale",
            "modules_not_converted": FLOAT_MODULES + (["lm_head"] if tied else [])}


def read_quant(path: Path, cfg: ModelConfig) -> tuple[int, int | None]:
    """(bits, group size) of a mapped checkpoint's quantization_config, checked."""
    quant = cfg.extra["quantization_config"]
    where = f"{path / 'config.json'}: quantization_config"
    method, bits = quant.get("quant_method"), quant.get("bits")
    if method not in METHODS or bits != METHODS[method]:
        raise CheckpointError(f"{where}: quant_method {method!r} with bits={bits!r}; expected seekmoe-int8 with "
                              "bits=8 or seekmoe-int4 with bits=4")
    group = quant.get("group_size") if bits == 4 else None
    if bits == 4 and group not in GROUP_SIZES:
        raise CheckpointError(f"{where}: group_size must be one of {GROUP_SIZES} for int4, got {group!r}")
    return bits, group


def quantized_model(cfg: ModelConfig, bits: int, group: int | None, dtype: torch.dtype) -> CausalLM:
    """The model on the meta device with its quantized modules in place: the shapes a checkpoint must hold."""
    tied = cfg.tie_word_embeddings
    try:
        with torch.device("meta"):
            model = CausalLM(cfg).to(dtype)
            for parent_name, parent in list(model.named_modules()):
                for name, child in list(parent.named_children()):
                    full = f"{parent_name}.{name}" if parent_name else name
                    if isinstance(child, RoutedExperts):
                        e, f, d = child.gate_proj.shape
                        experts = Int8RoutedExperts(e, d, f) if bits == 8 else Int4RoutedExperts(e, d, f, group)
                        experts.fuse_gate_up()  # int8: the stacked gate_up the file holds (int4 always has it)
                        setattr(parent, name, experts)
                    elif isinstance(child, nn.Linear) and not is_float_module(full, tied):
                        setattr(parent, name, Int8Linear(child.in_features, child.out_features) if bits == 8 else
                                Int4Linear(child.in_features, child.out_features, group))
                    elif isinstance(child, Gate):
                        child.float()  # the router stays float32
    except ValueError as e:  # a width that is not whole int4 groups
        raise CheckpointError(f"config.json: {e}: the config does not match the quantization") from None
    return model


def expected(model: CausalLM) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    """Name -> (safetensors dtype, or None for any float dtype; shape) of every tensor the file must hold."""
    out = {}
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(module, (Int8RoutedExperts, Int4RoutedExperts)):
            for name in ("gate_up", "gate_up_scale", "down_proj", "down_proj_scale"):  # fused (quantized_model)
                t = getattr(module, name)
                out[prefix + name] = (st_dtype(t.dtype), tuple(t.shape))
            continue
        if isinstance(module, (Int8Linear, Int4Linear)):
            for name, t in (("weight", module.weight), ("weight_scale", module.weight_scale)):
                out[prefix + name] = (st_dtype(t.dtype), tuple(t.shape))
            continue
        for name, t in list(module.named_parameters(recurse=False)) + [
                (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]:
            out[prefix + name] = (None, tuple(t.shape))
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


# ---- loading ------------------------------------------------------------------------------------------------

def load_mapped(path: Path, cfg: ModelConfig, dtype: torch.dtype) -> CausalLM:
    """A mapped quantized checkpoint: quantized tensors are views of the mapped files, float ones copied out."""
    bits, group = read_quant(path, cfg)
    headers = {}
    found: weights.Headers = {}
    for file in files_of(path):
        start, tensors = read_header(file)
        headers[file] = (start, tensors)
        for name, (st, shape, _, _) in tensors.items():
            found[name] = (file, shape, st)
    listed = weights.read_index(path)
    if listed is not None:
        found = {n: v for n, v in found.items() if listed.get(n) == v[0]}
        for name, file in listed.items():
            if name not in found:
                raise CheckpointError(f"{file}: has no tensor {name}, which {weights.INDEX_FILE} says it holds")
    weights.check_layers(found, cfg, path)
    try:
        model = quantized_model(cfg, bits, group, dtype)
    except CheckpointError as e:
        raise CheckpointError(f"{path}/{e}") from None
    want = expected(model)
    for name, (st, shape) in want.items():
        file, got = weights.find_tensor(found, name, shape, path)
        if (st is None and got not in weights.FLOAT_BYTES) or (st is not None and got != st):
            raise CheckpointError(f"{file}: tensor {name} is {got}; seekmoe-int{bits} expects "
                                  f"{st or 'a float dtype (F64, F32, F16, BF16)'}")
    weights.check_unexpected(found, list(want), cfg, 0)

    maps = {file: torch.from_file(str(file), shared=False, size=file.stat().st_size, dtype=torch.uint8)
            for file in {found[n][0] for n in want}}  # not read until touched; views keep each mapping alive

    def view(name: str) -> torch.Tensor:
        """A tensor as a view of the mapping."""
        file, shape, st = found[name]
        start, tensors = headers[file]
        _, _, begin, end = tensors[name]
        if (start + begin) % SIZE[st]:
            raise CheckpointError(f"{file}: tensor {name} starts at byte {start + begin}, not aligned to its "
                                  f"{SIZE[st]}-byte elements: rewrite the checkpoint with seekmoe quantize")
        return maps[file][start + begin:start + end].view(TORCH[st]).view(shape)

    def read(name: str) -> torch.Tensor:
        """A tensor read into memory, not through the mapping."""
        file, shape, st = found[name]
        start, tensors = headers[file]
        _, _, begin, end = tensors[name]
        buf = bytearray(end - begin)
        with open(file, "rb") as f:
            f.seek(start + begin)
            if f.readinto(memoryview(buf)) != len(buf):  # read_header checked the size: the file changed since
                raise CheckpointError(f"{file}: ended inside tensor {name}")
        # (..., ) in the file's dtype; an empty tensor has no buffer to view
        return torch.frombuffer(buf, dtype=TORCH[st]).view(shape) if buf else torch.empty(shape, dtype=TORCH[st])

    quantized = {n for n, (st, _) in want.items() if st is not None}
    with torch.no_grad():
        for name in want:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if name in quantized and EXPERTS.match(name):
                module._buffers[attr] = view(name)  # used in place: no copy
            elif name in quantized:
                # every token reads these, and the engine fuses most into copies (engine/layout.py): mapped, their
                # pages would stay resident beside the copies
                module._buffers[attr] = read(name)
            else:
                current = getattr(module, attr)
                value = read(name).to(current.dtype)
                if isinstance(current, nn.Parameter):
                    module._parameters[attr] = nn.Parameter(value, requires_grad=False)
                else:
                    module._buffers[attr] = value
        for module in model.modules():
            if isinstance(module, Int8RoutedExperts):  # gate and up: views of the stacked tensor, as fuse_gate_up
                f = module.gate_up.shape[1] // 2
                module.gate_proj, module.up_proj = module.gate_up[:, :f], module.gate_up[:, f:]
                module.gate_proj_scale, module.up_proj_scale = module.gate_up_scale[:, :f], module.gate_up_scale[:, f:]
    model.tie_weights()
    model.model.rotary_emb = RotaryEmbedding(cfg)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: no values for {left[0]} (and {len(left) - 1} more) after loading")
    return model


__all__ = ["LAYOUT", "METHODS", "ShardWriter", "check_group", "expected", "files_of", "is_float_module",
           "layout_header", "load_mapped", "quant_config", "quantized_model", "read_header", "read_quant", "st_dtype"]
