"""Hand-written CPU kernels, built on first use with the system C compiler and called through ctypes.

One so far: `int8_gemv` (int8_gemv.c), the int8 weight-only product for a few float32 rows. torch's int8 kernel
(`_weight_int8pack_mm`) is compute-bound on AVX2 for one row: 5-7 GB/s of int8 weight on one core here, where
this kernel streams 11-15 GB/s (bench/decode.py's `small` shapes); from four rows on the two are even.

The library is compiled once per source version into the user's cache folder (`$XDG_CACHE_HOME/seekmoe` or
~/.cache/seekmoe; SEEKMOE_CACHE overrides), written to a temporary name and renamed into place. Without a compiler,
on a CPU without AVX2 and FMA, or with SEEKMOE_KERNELS=0, `int8_gemv()` returns None and callers use torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("int8_gemv.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-shared", "-fPIC"]
_lock = threading.Lock()
_loaded: dict[str, Callable | None] = {}


def cache_dir() -> Path:
    if os.environ.get("SEEKMOE_CACHE"):
        return Path(os.environ["SEEKMOE_CACHE"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seekmoe" / "kernels"


def _usable() -> str | None:
    """Why the kernel cannot be used here, or None."""
    if os.environ.get("SEEKMOE_KERNELS", "1") == "0":
        return "SEEKMOE_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the CPU has no AVX2"
    return None


def _build() -> Path:
    """The compiled library for this source and these flags, compiling it if the cache does not hold it."""
    text = SOURCE.read_bytes()
    digest = hashlib.sha256(text + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"int8_gemv-{digest}.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        res = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise OSError(f"{cc} failed: {res.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # another process may have built it meanwhile: the same bytes either way
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def int8_gemv() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`f(x (M, I) float32, q (O, I) int8, scale (O,) float32) -> (M, O) float32`, all contiguous, or None when
    the kernel cannot be built or used here (the reason is logged once)."""
    if "int8_gemv" in _loaded:
        return _loaded["int8_gemv"]
    with _lock:
        if "int8_gemv" not in _loaded:
            _loaded["int8_gemv"] = _load()
    return _loaded["int8_gemv"]


def _load() -> Callable | None:
    why = _usable()
    if why is None:
        try:
            lib = ctypes.CDLL(str(_build()))
        except (OSError, subprocess.SubprocessError) as e:
            why = str(e)
    if why is not None:
        log.info("int8 decode uses torch's kernel: the seekmoe kernel is not available (%s)", why)
        return None
    fn = lib.seekmoe_int8_gemv
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3

    def gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        (m, i), o = x.shape, q.shape[0]
        if not (x.dtype == torch.float32 and q.dtype == torch.int8 and scale.dtype == torch.float32
                and q.shape == (o, i) and scale.shape == (o,) and x.is_contiguous() and q.is_contiguous()
                and scale.is_contiguous() and x.device.type == q.device.type == scale.device.type == "cpu"):
            raise ValueError("int8_gemv needs contiguous CPU tensors: x (M, I) float32, q (O, I) int8, scale (O,) "
                             f"float32; got {tuple(x.shape)} {x.dtype}, {tuple(q.shape)} {q.dtype}, "
                             f"{tuple(scale.shape)} {scale.dtype}")
        y = torch.empty(m, o, dtype=torch.float32)
        fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), y.data_ptr(), m, i, o)  # ctypes drops the GIL meanwhile
        return y

    return gemv
