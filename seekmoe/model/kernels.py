"""Hand-written CPU kernels, built on first use with the system C compiler and called through ctypes.

In C under csrc/ (kernels.h says which file holds what), for inference (decode steps; a prompt chunk's routed
experts):
- `int8_gemv`, the product of a few float32 rows with an int8 weight. torch's int8 kernel (`_weight_int8pack_mm`)
  is compute-bound on AVX2 for one row: 5-7 GB/s of int8 weight on one core here, where this one streams 11-15
  GB/s (bench/decode.py's `small` shapes); from four rows on the two are even.
- `experts`, one token through its chosen SwiGLU experts in one call, int8 or float32 weights: a decode step's
  routed experts otherwise cost a handful of PyTorch calls per expert. Dense MLPs and shared experts go through it
  as a single expert.
- `f32_gemv`, a few float32 rows times a float32 weight. Streaming rows with four independent accumulators, it
  reads 18-22 GB/s on one core here for one row, where torch's (MKL) matrix-vector products read 12-17 GB/s for
  the same shapes; a few rows share each read of the weight.
- `experts_grouped`, a step's (token, expert) pairs sorted by expert through their SwiGLUs in one call: each used
  expert's weights read once for all its rows (decoding several sequences, or a prompt chunk), where torch runs a
  handful of small products per expert on one thread, or one small GEMM after another.
- `mla_attend`, the absorbed attention of a decode step: each sequence's latent cache rows read where they sit,
  once for all heads, instead of gathered into a padded copy first; each run of consecutive rows in tiles. Over an
  int8 cache (engine/cache.py) in int8 products, twice float32's rate on AVX2.
- `decode_layer`, a decode step's new tokens (one per sequence) through a whole layer in one call (the calls above,
  chained in C): the PyTorch calls around a decode step's products (about fifty a layer) cost more than `tiny`'s
  products themselves, and a fifth of a V2-Lite int4 step.
- `stream_sum`, every thread reading one buffer: the memory bandwidth the benchmarks' floors divide by.

Products of several rows (`f32_gemv`, `int8_gemv`, `experts_grouped`, `mla_attend`'s heads) run in tiles: four
rows of x against four weight rows, sixteen accumulators, so a load serves four multiply-adds where a row at a time
needs one per multiply-add, and the next four weight rows are prefetched into L2 while a tile is multiplied. 16
rows of `small`'s float32 matrices, weights from memory, two threads, the two builds alternating: 55-65 -> 135-165
GFLOP/s (stored transposed: 29-31 -> 140-156); its 256-token prompt 480 -> 700-790 tokens/s.

Each call is cut into parts (rows, experts, sequences) that a pool of threads started with the library and kept for
the process claims one by one, the caller among them (one core streams about half of what this machine's memory
gives; llama.cpp decodes twice as fast on two threads as on one): SEEKMOE_THREADS threads, else OMP_NUM_THREADS,
else one per core this process may run on. The workers spin for 2 ms after a call, then sleep, so an idle process
costs nothing; a worker the OS has not run yet holds nobody up (the caller takes its parts); a call that finds the
pool busy (another thread) runs alone, and a forked child runs every call alone.

The library is compiled once per source version and flags into the user's cache folder
(`$XDG_CACHE_HOME/seekmoe/kernels` or ~/.cache/seekmoe/kernels; SEEKMOE_CACHE overrides the part before
`kernels`), written to a temporary name and renamed into place, with the sha256 of its bytes beside it
(`NAME.so.sha256`). Native code runs with the server's rights, so what is loaded is checked: the folder is made
private (0o700), and one that is not a folder owned by this user, or is writable by others, is not used (the
library is then compiled into a private temporary folder for this process, with a warning). A cached library whose
bytes do not match their sha256 is rebuilt, not loaded, and the bytes verified are the bytes loaded: they are
copied to a fresh private file, loaded from there, and that file removed. Without a compiler, on a CPU without AVX2
and FMA, or with SEEKMOE_KERNELS=0, each accessor returns None and callers use torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)
# the float32 and int4 products take up to this many rows (decode steps of up to 16 sequences): each weight row read
# from memory serves them all, on every thread of the pool, where torch's GEMMs for steps this small run on one;
# past it torch's float32 GEMMs are as fast (and the int4 weights are dequantized for them). The int8 product takes
# any count: it is faster than torch's int8 and float32 GEMMs for a prompt too (quant.py)
MAX_ROWS = 16
SOURCE_DIR = Path(__file__).with_name("csrc")  # every .c file in it, compiled together, and their kernels.h
# hidden: only the functions the C marks API (seekmoe_*) are exported, so no helper of ours can bind to, or be bound
# by, a same-named symbol of another library in the process
FLAGS = ["-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-fvisibility=hidden"]
# on CPUs that have them (AMD Zen 4, Intel since Ice Lake): dpbusd for the int4 products and the int8 cache's, F16C
# for the int4 scales; the library built with them is cached under its own name, and SEEKMOE_KERNELS_ISA=avx2 keeps
# the plain AVX2 build
VNNI_CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c"}
VNNI_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c"]
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


def _private_folder(folder: Path) -> str | None:
    """Why `folder` (created 0o700 if missing) must not hold code we load, or None when it may."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as e:
        return f"cannot create it: {e}"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder (a symlink?)"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it belongs to user id {st.st_uid}, not to this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return (f"others may write to it (mode {stat.S_IMODE(st.st_mode):o}; expected no write bits for group and "
                f"others, e.g. 700)")
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def flags() -> list[str]:
    """The compiler flags for this CPU: AVX2 + FMA, with AVX512-VNNI and F16C where all of them are there."""
    isa = os.environ.get("SEEKMOE_KERNELS_ISA", "").strip().lower()
    if isa not in ("", "auto", "avx2"):
        raise ValueError(f"SEEKMOE_KERNELS_ISA must be auto or avx2, got {isa!r}")
    return FLAGS + VNNI_FLAGS if isa != "avx2" and cpu_flags() >= VNNI_CPU_FLAGS else FLAGS


def _compile(folder: Path, cflags: list[str]) -> bytes:
    """The library's bytes, compiled in `folder` (a temporary file, removed)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
    os.close(fd)
    try:
        res = subprocess.run([cc, *cflags, *map(str, sorted(SOURCE_DIR.glob("*.c"))), "-o", tmp, "-lm"],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise OSError(f"{cc} failed: {res.stderr.strip()[-500:]}")
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def _write(path: Path, data: bytes) -> None:
    """`data` into `path` whole or not at all: written to a temporary name and renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # another process may have built it meanwhile: the same bytes either way
    except BaseException:
        os.unlink(tmp)
        raise


def _cached(path: Path) -> bytes | None:
    """The cached library's bytes when they match the sha256 recorded beside them; None (rebuild) otherwise."""
    try:
        data = path.read_bytes()
        want = path.with_name(path.name + ".sha256").read_text().strip()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() != want:
        log.warning("the cached seekmoe kernels %s do not match the sha256 recorded beside them: rebuilding", path)
        return None
    return data


def _load(folder: Path, data: bytes) -> ctypes.CDLL:
    """Load `data` from a fresh file of our own in `folder`, then remove it: what was checked is what runs (the
    cached file could change between a check and dlopen reading it by name)."""
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return ctypes.CDLL(tmp)  # mapped now: the file can go
    finally:
        os.unlink(tmp)


def _open() -> ctypes.CDLL:
    """The library for this source and this CPU's flags (the plain AVX2 build where a compiler cannot make the other):
    from the cache when its bytes check out, compiled otherwise."""
    cflags = flags()
    try:
        return _open_built(cflags)
    except (OSError, subprocess.SubprocessError) as e:
        if cflags == FLAGS:
            raise
        log.warning("the seekmoe kernels did not build with %s (%s): using the AVX2 build", " ".join(VNNI_FLAGS), e)
        return _open_built(FLAGS)


def _open_built(cflags: list[str]) -> ctypes.CDLL:
    sources = b"".join(f.name.encode() + b"\0" + f.read_bytes()
                       for f in sorted(SOURCE_DIR.iterdir()) if f.suffix in (".c", ".h"))
    digest = hashlib.sha256(sources + " ".join(cflags).encode()).hexdigest()[:16]
    folder = cache_dir()
    why = _private_folder(folder)
    if why is not None:
        log.warning("not using %s for the seekmoe kernels (%s): compiling them into a private temporary folder",
                    folder, why)
        with tempfile.TemporaryDirectory(prefix="seekmoe-kernels-") as tmp:  # created 0o700
            return _load(Path(tmp), _compile(Path(tmp), cflags))
    target = folder / f"seekmoe-kernels-{digest}.so"
    data = _cached(target)
    if data is None:
        data = _compile(folder, cflags)
        _write(target, data)
        _write(target.with_name(target.name + ".sha256"), hashlib.sha256(data).hexdigest().encode() + b"\n")
    return _load(folder, data)


def pool_size() -> int:
    """The threads the kernels' calls are split over: SEEKMOE_THREADS, else OMP_NUM_THREADS, else the cores this
    process may run on."""
    for var in ("SEEKMOE_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{var} must be a whole number of threads, got {value!r}") from None
            if n < 1:
                raise ValueError(f"{var} must be at least 1, got {n}")
            return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _library() -> ctypes.CDLL | None:
    """The compiled library, loaded once; None where it cannot be built or used (the reason is logged once)."""
    if "lib" not in _loaded:
        with _lock:
            if "lib" not in _loaded:
                why = _usable()
                lib = None
                if why is None:
                    try:
                        lib = _open()
                        lib.seekmoe_pool_start.restype = ctypes.c_int
                        lib.seekmoe_pool_start.argtypes = [ctypes.c_int]
                        lib.seekmoe_pool_start(pool_size())
                    except (OSError, subprocess.SubprocessError) as e:
                        why = str(e)
                if lib is None:
                    log.info("int8 decode uses torch's kernel: the seekmoe kernels are not available (%s)", why)
                _loaded["lib"] = lib
    return _loaded["lib"]


def _bound(name: str, bind: Callable[[ctypes.CDLL], Callable]) -> Callable | None:
    """The Python wrapper `bind` makes around the library, made once; None without the library."""
    if name not in _loaded:
        lib = _library()
        _loaded[name] = None if lib is None else bind(lib)
    return _loaded[name]


def int8_gemv() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`f(x (M, I) float32, q (O, I) int8, scale (O,) float32) -> (M, O) float32`, all contiguous, or None when
    the kernels cannot be built or used here."""
    return _bound("int8_gemv", _int8_gemv)


def _int8_gemv(lib: ctypes.CDLL) -> Callable:
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


def int8_gemv_heads() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`f(x (H, M, I) float32, q (H, O, I) int8, scale (H, O) float32) -> (H, M, O) float32`: a product per head
    (x[h] @ (q[h] * scale[h]).T) in one call, all contiguous; None when the kernels cannot be built or used here."""
    return _bound("int8_gemv_heads", _int8_gemv_heads)


def _int8_gemv_heads(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_int8_gemv_heads
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4

    def gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        (h, m, i), o = (x.shape, q.shape[1]) if x.dim() == 3 and q.dim() == 3 else ((0, 0, 0), -1)
        if not (x.dim() == 3 and x.dtype == torch.float32 and q.dtype == torch.int8 and scale.dtype == torch.float32
                and q.shape == (h, o, i) and scale.shape == (h, o) and x.is_contiguous() and q.is_contiguous()
                and scale.is_contiguous() and x.device.type == q.device.type == scale.device.type == "cpu"):
            raise ValueError("int8_gemv_heads needs contiguous CPU tensors: x (H, M, I) float32, q (H, O, I) int8, "
                             f"scale (H, O) float32; got {tuple(x.shape)} {x.dtype}, {tuple(q.shape)} {q.dtype}, "
                             f"{tuple(scale.shape)} {scale.dtype}")
        y = torch.empty(h, m, o, dtype=torch.float32)
        fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), y.data_ptr(), h, m, i, o)
        return y

    return gemv


def _expert_weights_fit(gate_up: torch.Tensor, gate_up_scale: torch.Tensor | None, down: torch.Tensor,
                        down_scale: torch.Tensor | None) -> bool:
    """Whether stacked SwiGLU weights are what the experts kernels read, as contiguous CPU tensors: gate_up
    (E, 2F, D) and down (E, D, F) int8 with float32 scales (E, 2F) and (E, D), or float32 with down stored
    transposed and no scales."""
    e, f2, d = gate_up.shape
    if f2 % 2 or down.shape != (e, d, f2 // 2):
        return False
    if gate_up.dtype == torch.int8:
        if gate_up_scale is None or down_scale is None:
            return False
        stored = [gate_up, down, gate_up_scale, down_scale]
        ok = (down.dtype == torch.int8 and gate_up_scale.shape == (e, f2) and down_scale.shape == (e, d)
              and gate_up_scale.dtype == down_scale.dtype == torch.float32)
    else:
        stored = [gate_up, down.transpose(1, 2)]  # the order the kernel reads
        ok = gate_up.dtype == down.dtype == torch.float32 and gate_up_scale is None and down_scale is None
    return ok and all(t.is_contiguous() and t.device.type == "cpu" for t in stored)


def experts_grouped() -> Callable[..., torch.Tensor] | None:
    """`f(x (P, D), gate_up (E, 2F, D), gate_up_scale, down (E, D, F), down_scale, used (U,) int64, start (U + 1,)
    int64, weight (P,)) -> (P, D)`: (token, expert) pairs sorted by expert, expert used[u] owning rows
    start[u]..start[u + 1] - 1, each row through its expert's SwiGLU times its weight. Weights as for `experts`
    (int8 with scales, or float32 with the down projection stored transposed). None without the kernels."""
    return _bound("experts_grouped", _experts_grouped)


def _experts_grouped(lib: ctypes.CDLL) -> Callable:
    i8, f32 = lib.seekmoe_int8_experts_grouped, lib.seekmoe_f32_experts_grouped
    i8.restype = f32.restype = ctypes.c_int
    sizes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    rows = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    i8.argtypes = sizes + [ctypes.c_void_p] * 4 + rows
    f32.argtypes = sizes + [ctypes.c_void_p] * 2 + rows

    def run(x: torch.Tensor, gate_up: torch.Tensor, gate_up_scale: torch.Tensor | None, down: torch.Tensor,
            down_scale: torch.Tensor | None, used: torch.Tensor, start: torch.Tensor,
            weight: torch.Tensor) -> torch.Tensor:
        e, f2, d = gate_up.shape
        f, p, u = f2 // 2, x.shape[0], used.shape[0]
        int8 = gate_up.dtype == torch.int8
        ok = (x.dim() == 2 and x.shape[1] == d and weight.shape == (p,) and start.shape == (u + 1,)
              and used.dtype == start.dtype == torch.int64 and x.dtype == weight.dtype == torch.float32
              and all(t.is_contiguous() and t.device.type == "cpu" for t in (x, used, start, weight))
              and _expert_weights_fit(gate_up, gate_up_scale, down, down_scale))
        if ok:
            ok = u > 0 and int(start[-1]) == p
        if not ok:
            raise ValueError("kernels.experts_grouped needs contiguous CPU tensors: x (P, D) float32, weights as "
                             "kernels.experts takes them, used (U,) and start (U + 1,) int64 with start[-1] = P, "
                             "weight (P,) float32; got " + ", ".join(
                                 "None" if t is None else f"{tuple(t.shape)} {t.dtype}" for t in
                                 (x, gate_up, gate_up_scale, down, down_scale, used, start, weight)))
        out = torch.empty(p, d, dtype=torch.float32)
        if int8:
            status = i8(x.data_ptr(), d, f, e, gate_up.data_ptr(), gate_up_scale.data_ptr(), down.data_ptr(),
                        down_scale.data_ptr(), used.data_ptr(), start.data_ptr(), u, weight.data_ptr(), out.data_ptr())
        else:
            status = f32(x.data_ptr(), d, f, e, gate_up.data_ptr(), down.data_ptr(), used.data_ptr(), start.data_ptr(),
                         u, weight.data_ptr(), out.data_ptr())
        if status == -2:
            raise MemoryError(f"kernels.experts_grouped: no memory for the hidden units of {p} rows")
        if status:
            raise ValueError(f"kernels.experts_grouped: an expert index out of range 0..{e - 1} or rows out of order: "
                             f"used {used.tolist()}, start {start.tolist()}")
        return out

    return run


def _cache_meta_fits(kv: torch.Tensor, meta: torch.Tensor | None) -> bool:
    """An int8 cache comes with its meta (S, 4) float32 (engine/cache.py); a float32 one without."""
    if kv.dtype != torch.int8:
        return meta is None
    return meta is not None and meta.shape == (kv.shape[0], 4) and meta.dtype == torch.float32 and meta.is_contiguous()


def mla_attend() -> Callable[..., torch.Tensor] | None:
    """`f(q (B, H, W), kv (S, W), slots (N,) int64, offsets (B + 1,) int64, lat, scale, meta=None) -> (B, H, L)`: each
    of B sequences' absorbed queries attending over its cached rows kv[slots[offsets[b]:offsets[b + 1]]] (keys the
    whole row, values its first L = W - R columns: pass L as `lat`). kv float32, or the int8 cache (engine/cache.py)
    with its meta (S, 4). None without the kernels."""
    return _bound("mla_attend", _mla_attend)


def _mla_attend(lib: ctypes.CDLL) -> Callable:
    fn, fn8 = lib.seekmoe_mla_attend, lib.seekmoe_mla_attend_int8
    tail = [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_float, ctypes.c_void_p]
    fn.restype = fn8.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 2 + tail
    fn8.argtypes = [ctypes.c_void_p] * 3 + tail

    def run(q: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor, offsets: torch.Tensor, lat: int,
            scale: float, meta: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w = q.shape
        int8 = kv.dtype == torch.int8
        ok = (kv.dim() == 2 and kv.shape[1] == w and 0 < lat <= w and offsets.shape == (b + 1,)
              and slots.dim() == 1 and q.dtype == torch.float32 and kv.dtype in (torch.float32, torch.int8)
              and slots.dtype == offsets.dtype == torch.int64
              and all(t.is_contiguous() and t.device.type == "cpu" for t in (q, kv, slots, offsets))
              and _cache_meta_fits(kv, meta))
        if ok:
            ok = int(offsets[-1]) == slots.shape[0]
        if not ok:
            raise ValueError("kernels.mla_attend needs contiguous CPU tensors: q (B, H, W) float32, kv (S, W) float32 "
                             "(or int8 with meta (S, 4) float32), slots (N,) and offsets (B + 1,) int64 with "
                             "offsets[-1] = N, 0 < lat <= W; got "
                             + ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in (q, kv, slots, offsets))
                             + f", lat {lat}, meta {None if meta is None else (tuple(meta.shape), meta.dtype)}")
        out = torch.empty(b, h, lat, dtype=torch.float32)
        cache = (kv.data_ptr(), meta.data_ptr()) if int8 else (kv.data_ptr(),)
        status = (fn8 if int8 else fn)(q.data_ptr(), *cache, kv.shape[0], w, lat, h, slots.data_ptr(),
                                       offsets.data_ptr(), b, scale, out.data_ptr())
        if status == -2:
            raise MemoryError(f"kernels.mla_attend: no memory for the scores of {slots.shape[0]} cached rows")
        if status:
            raise ValueError(f"kernels.mla_attend: a slot outside the cache's {kv.shape[0]} rows, or offsets out of "
                             f"order: {offsets.tolist()}")
        return out

    return run


def threads() -> int:
    """The threads each kernel call is split over (1 without the kernels)."""
    lib = _library()
    return 1 if lib is None else lib.seekmoe_pool_start(1)  # a started pool is left as it is: returns its size


def stream_sum() -> Callable[[torch.Tensor], float] | None:
    """`f(buf) -> float`: the sum of a contiguous float32 CPU tensor, read by every thread of the pool (how fast
    memory streams with all cores: bench/decode.py's floor). None without the kernels."""
    return _bound("stream_sum", _stream_sum)


def _stream_sum(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_stream_sum
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64]

    def run(buf: torch.Tensor) -> float:
        if not (buf.dtype == torch.float32 and buf.is_contiguous() and buf.device.type == "cpu"):
            raise ValueError(f"stream_sum needs a contiguous CPU float32 tensor, got {buf.dtype} on {buf.device}")
        return fn(buf.data_ptr(), buf.numel())

    return run


def available() -> bool:
    """Whether the kernels can be used here (built on the first call)."""
    return _library() is not None


def f32_gemv() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`f(x (M, I) float32, w (O, I) float32) -> (M, O)`: a few rows times a weight stored either row by row or
    transposed (`w.t()` contiguous), streamed once in its own order. None when the kernels cannot be used here."""
    return _bound("f32_gemv", _f32_gemv)


def _f32_gemv(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_f32_gemv
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]

    def gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        o, i = w.shape
        rows = w.is_contiguous()
        if not (x.dim() == 2 and x.shape[1] == i and x.dtype == w.dtype == torch.float32 and x.is_contiguous()
                and (rows or w.t().is_contiguous()) and x.device.type == w.device.type == "cpu"):
            raise ValueError("f32_gemv needs CPU float32 tensors: x (M, I) contiguous, w (O, I) stored row by row "
                             f"or transposed; got {tuple(x.shape)} {x.dtype}, {tuple(w.shape)} {w.dtype} strides "
                             f"{w.stride()}")
        y = torch.empty(x.shape[0], o, dtype=torch.float32)
        fn(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.shape[0], i, o, 0 if rows else 1)
        return y

    return gemv


def experts() -> Callable[..., torch.Tensor] | None:
    """`f(x (D,), gate_up (E, 2F, D), gate_up_scale, down (E, D, F), down_scale, idx (K,) int64, weight (K,))
    -> (D,)`: one float32 token's output of its K chosen SwiGLU experts, weighted and summed. Either int8 weights
    with float32 scales (E, 2F) and (E, D), or float32 weights and no scales (None), the down projection then stored
    transposed (`down.transpose(1, 2)` contiguous, as layout.py lays it out). None when the kernels cannot be built
    or used here."""
    return _bound("experts", _experts)


def _experts(lib: ctypes.CDLL) -> Callable:
    i8, f32 = lib.seekmoe_int8_experts, lib.seekmoe_f32_experts
    i8.restype = f32.restype = ctypes.c_int
    sizes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    i8.argtypes = sizes + [ctypes.c_void_p] * 6 + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    f32.argtypes = sizes + [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]

    def run(x: torch.Tensor, gate_up: torch.Tensor, gate_up_scale: torch.Tensor | None, down: torch.Tensor,
            down_scale: torch.Tensor | None, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        e, f2, d = gate_up.shape
        f, k = f2 // 2, idx.shape[0]
        int8 = gate_up.dtype == torch.int8
        ok = (x.shape == (d,) and idx.shape == weight.shape == (k,) and idx.dtype == torch.int64
              and x.dtype == weight.dtype == torch.float32
              and all(t.is_contiguous() and t.device.type == "cpu" for t in (x, idx, weight))
              and _expert_weights_fit(gate_up, gate_up_scale, down, down_scale))
        if not ok:
            raise ValueError("kernels.experts needs contiguous CPU tensors: x (D,) float32, gate_up (E, 2F, D) and "
                             "down (E, D, F) int8 with float32 scales (E, 2F), (E, D), or float32 with down stored "
                             "transposed and no scales, idx (K,) int64, weight (K,) float32; got "
                             + ", ".join("None" if t is None else f"{tuple(t.shape)} {t.dtype}" for t in
                                         (x, gate_up, gate_up_scale, down, down_scale, idx, weight)))
        # scratch: the float32 kernel's hidden units of one expert, the int8 one's of all K
        y, h = torch.zeros(d, dtype=torch.float32), torch.empty(k * f if int8 else f, dtype=torch.float32)
        if int8:
            status = i8(x.data_ptr(), d, f, e, gate_up.data_ptr(), gate_up_scale.data_ptr(), down.data_ptr(),
                        down_scale.data_ptr(), idx.data_ptr(), weight.data_ptr(), k, y.data_ptr(), h.data_ptr())
        else:
            status = f32(x.data_ptr(), d, f, e, gate_up.data_ptr(), down.data_ptr(), idx.data_ptr(),
                         weight.data_ptr(), k, y.data_ptr(), h.data_ptr())
        if status:
            raise ValueError(f"kernels.experts: an expert index is out of range 0..{e - 1}: {idx.tolist()}")
        return y

    return run


# ---- int4 (model/int4.py): the same calls for group-wise int4 weights --------------------------------------------

def int4_gemv() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`f(x (M, I) float32, packed (O, I / 2) uint8, scale (O, I / G) float16) -> (M, O) float32`, all contiguous
    (model/int4.py's layout; G 32 or 64), x rounded to int8 in blocks of 32 first (csrc/int4.c), or None when the
    kernels cannot be built or used here."""
    return _bound("int4_gemv", _int4_gemv)


def _int4_gemv(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_int4_gemv
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4

    def gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        (m, i), o = x.shape, q.shape[0]
        groups = scale.shape[-1] if scale.dim() == 2 else 0
        ok = (x.dtype == torch.float32 and q.dtype == torch.uint8 and scale.dtype == torch.float16
              and q.shape == (o, i // 2) and groups > 0 and scale.shape == (o, groups) and i % groups == 0
              and i // groups in (32, 64) and all(t.is_contiguous() and t.device.type == "cpu" for t in (x, q, scale)))
        if not ok:
            raise ValueError("int4_gemv needs contiguous CPU tensors: x (M, I) float32, packed (O, I / 2) uint8, "
                             f"scale (O, I / G) float16 with G 32 or 64; got {tuple(x.shape)} {x.dtype}, "
                             f"{tuple(q.shape)} {q.dtype}, {tuple(scale.shape)} {scale.dtype}")
        y = torch.empty(m, o, dtype=torch.float32)
        if fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), y.data_ptr(), m, i, o, i // groups):
            raise MemoryError(f"kernels.int4_gemv: no memory for {m} rows of {i} rounded activations")
        return y

    return gemv


def int4_dequant() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`f(packed (R, I / 2) uint8, scale (R, I / G) float16) -> w (R, I) float32`, the weights the int4 products
    multiply by, in one pass (the many-rows path's float matmul reads them); None without the kernels."""
    return _bound("int4_dequant", _int4_dequant)


def _int4_dequant(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_int4_dequant
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3

    def dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        rows, p = q.shape if q.dim() == 2 else (0, 0)
        groups = scale.shape[-1] if scale.dim() == 2 else 0
        ok = (q.dim() == 2 and q.dtype == torch.uint8 and scale.dtype == torch.float16 and groups > 0
              and scale.shape == (rows, groups) and (2 * p) % groups == 0 and 2 * p // groups in (32, 64)
              and all(t.is_contiguous() and t.device.type == "cpu" for t in (q, scale)))
        if not ok:
            raise ValueError("int4_dequant needs contiguous CPU tensors: packed (R, I / 2) uint8, scale (R, I / G) "
                             f"float16 with G 32 or 64; got {tuple(q.shape)} {q.dtype}, {tuple(scale.shape)} "
                             f"{scale.dtype}")
        w = torch.empty(rows, 2 * p, dtype=torch.float32)
        fn(q.data_ptr(), scale.data_ptr(), w.data_ptr(), rows, 2 * p, 2 * p // groups)
        return w

    return dequant


def int4_experts() -> Callable[..., torch.Tensor] | None:
    """`f(x (D,), gate_up (E, 2F, D / 2) uint8, gate_up_scale (E, 2F, D / G) float16, down (E, D, F / 2),
    down_scale (E, D, F / G), idx (K,) int64, weight (K,)) -> (D,)`: as `experts`, for model/int4.py's layout.
    None when the kernels cannot be built or used here."""
    return _bound("int4_experts", _int4_experts)


def _int4_experts(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_int4_experts
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 4
                   + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                      ctypes.c_void_p])

    def run(x: torch.Tensor, gate_up: torch.Tensor, gate_up_scale: torch.Tensor, down: torch.Tensor,
            down_scale: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        e, f2, half_d = gate_up.shape
        d, f, k = 2 * half_d, f2 // 2, idx.shape[0]
        groups = gate_up_scale.shape[-1] if gate_up_scale.dim() == 3 else 0
        g = d // groups if groups else 0
        ok = (g in (32, 64) and d % g == 0 and f % g == 0 and x.shape == (d,)
              and gate_up.dtype == down.dtype == torch.uint8
              and gate_up_scale.dtype == down_scale.dtype == torch.float16
              and gate_up_scale.shape == (e, f2, d // g) and down.shape == (e, d, f // 2)
              and down_scale.shape == (e, d, f // g) and idx.shape == weight.shape == (k,)
              and idx.dtype == torch.int64 and x.dtype == weight.dtype == torch.float32
              and all(t.is_contiguous() and t.device.type == "cpu"
                      for t in (x, gate_up, gate_up_scale, down, down_scale, idx, weight)))
        if not ok:
            raise ValueError("kernels.int4_experts needs contiguous CPU tensors: x (D,) float32, gate_up "
                             "(E, 2F, D / 2) and down (E, D, F / 2) uint8 with float16 scales (E, 2F, D / G) and "
                             "(E, D, F / G), G 32 or 64 dividing D and F, idx (K,) int64, weight (K,) float32; "
                             + "got " + ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in
                                         (x, gate_up, gate_up_scale, down, down_scale, idx, weight)))
        y, h = torch.zeros(d, dtype=torch.float32), torch.empty(k * f, dtype=torch.float32)  # h: K experts' units
        status = fn(x.data_ptr(), d, f, e, gate_up.data_ptr(), gate_up_scale.data_ptr(), down.data_ptr(),
                    down_scale.data_ptr(), g, idx.data_ptr(), weight.data_ptr(), k, y.data_ptr(), h.data_ptr())
        if status == -2:
            raise MemoryError("kernels.int4_experts: no memory for the rounded activations")
        if status:
            raise ValueError(f"kernels.int4_experts: an expert index is out of range 0..{e - 1}: {idx.tolist()}")
        return y

    return run


# ---- one decode layer in one call (csrc/layer.c: seekmoe_decode_layer; the structs mirror its own) -----------------

PROJ_F32, PROJ_F32_T, PROJ_INT8, PROJ_INT4 = 0, 1, 2, 3  # weight kinds: float32 (O, I), float32 stored (I, O), ...


class ProjDesc(ctypes.Structure):
    """A projection y (O) = W x (I): `kind` PROJ_*, int4's `group`, the weight and its scales (int8 (O,) float32,
    int4 (O, I / G) float16)."""

    _fields_ = [("kind", ctypes.c_int32), ("group", ctypes.c_int32), ("n_out", ctypes.c_int64),
                ("n_in", ctypes.c_int64), ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p)]


class ExpertsDesc(ctypes.Structure):
    """SwiGLU experts as `experts` / `int4_experts` take them (float32: down stored transposed); n_experts 0: none."""

    _fields_ = [("kind", ctypes.c_int32), ("group", ctypes.c_int32), ("n_experts", ctypes.c_int64),
                ("f", ctypes.c_int64), ("gate_up", ctypes.c_void_p), ("gate_up_scale", ctypes.c_void_p),
                ("down", ctypes.c_void_p), ("down_scale", ctypes.c_void_p)]


class LayerDesc(ctypes.Structure):
    """One layer's weights and shapes for `decode_layer` (engine/fused.py fills it in). It holds raw pointers: whoever
    makes one keeps the tensors alive."""

    _fields_ = [("d", ctypes.c_int64), ("heads", ctypes.c_int64), ("nope", ctypes.c_int64), ("rope", ctypes.c_int64),
                ("v", ctypes.c_int64), ("lat", ctypes.c_int64), ("eps", ctypes.c_float), ("kv_eps", ctypes.c_float),
                ("softmax_scale", ctypes.c_float), ("routed_scale", ctypes.c_float), ("interleave", ctypes.c_int32),
                ("int8_heads", ctypes.c_int32), ("input_norm", ctypes.c_void_p), ("kv_norm", ctypes.c_void_p),
                ("post_norm", ctypes.c_void_p), ("attn_in", ProjDesc), ("o_proj", ProjDesc),
                ("uk", ctypes.c_void_p), ("uk_scale", ctypes.c_void_p), ("uv", ctypes.c_void_p),
                ("uv_scale", ctypes.c_void_p), ("gate", ctypes.c_void_p), ("gate_bias", ctypes.c_void_p),
                ("top_k", ctypes.c_int64), ("sigmoid", ctypes.c_int32), ("norm_topk", ctypes.c_int32),
                ("routed", ExpertsDesc), ("shared", ExpertsDesc), ("q_lora", ctypes.c_int64),
                ("q_eps", ctypes.c_float), ("q_norm", ctypes.c_void_p), ("q_b", ProjDesc), ("n_group", ctypes.c_int64),
                ("topk_group", ctypes.c_int64), ("group_top2", ctypes.c_int32)]


def decode_layer() -> Callable[..., None] | None:
    """`f(desc: LayerDesc, x (B, D), kv (S, L + R), cos, sin (B, R / 2), slots (N,) int64, offsets (B + 1,) int64,
    counts (E,) int64 | None, meta=None)`: x, B sequences' new tokens (float32), through the layer `desc` describes,
    in place. Sequence i's cache rows are slots[offsets[i]:offsets[i + 1]] of the layer's cache kv (float32, or the
    int8 cache with its meta (S, 4)), in order; its new token's row, the last of them, is written, and attention
    reads them all; cos and sin are the tokens' positions' rope; counts, where given, gains one for each expert
    chosen. One sequence may also be given as x (D,), cos and sin (R / 2,) and no offsets. None without the
    kernels."""
    return _bound("decode_layer", _decode_layer)


def _decode_layer(lib: ctypes.CDLL) -> Callable:
    fn = lib.seekmoe_decode_layer
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(LayerDesc), ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3 + \
        [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 2

    def run(desc: LayerDesc, x: torch.Tensor, kv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            slots: torch.Tensor, counts: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
            meta: torch.Tensor | None = None) -> None:
        b = x.shape[0] if x.dim() == 2 else 1
        if offsets is None and x.dim() == 1:
            offsets = torch.tensor([0, slots.shape[0]]) if slots.dim() == 1 else None
        rows = (b, desc.d) if x.dim() == 2 else (desc.d,)
        half = (b, desc.rope // 2) if x.dim() == 2 else (desc.rope // 2,)
        int8 = kv.dtype == torch.int8
        ok = (x.shape == rows and kv.dim() == 2 and kv.shape[1] == desc.lat + desc.rope
              and cos.shape == sin.shape == half and slots.dim() == 1
              and offsets is not None and offsets.shape == (b + 1,) and offsets.dtype == torch.int64
              and x.dtype == cos.dtype == sin.dtype == torch.float32 and slots.dtype == torch.int64
              and kv.dtype in (torch.float32, torch.int8) and _cache_meta_fits(kv, meta)
              and (counts is None or (counts.shape == (desc.routed.n_experts,) and counts.dtype == torch.int64
                                      and counts.is_contiguous()))
              and all(t.is_contiguous() for t in (x, kv, cos, sin, slots, offsets)))
        if not ok:
            raise ValueError("kernels.decode_layer needs contiguous CPU tensors: x (B, D), kv (S, L + R) float32 (or "
                             "int8 with meta (S, 4) float32), cos and sin (B, R / 2) float32 (or x (D,), cos and sin "
                             "(R / 2,) for one sequence), slots (N,) int64, offsets (B + 1,) int64, counts (E,) int64 "
                             "or None; got "
                             + ", ".join("None" if t is None else f"{tuple(t.shape)} {t.dtype}"
                                         for t in (x, kv, cos, sin, slots, offsets, counts, meta)))
        # the values (slots in the cache, offsets from 0 to N, rising: one non-empty run per sequence) are checked
        # in C, before anything is written: each check here is a few microseconds, and `tiny` has 4 layers a token
        cache = (None, kv.data_ptr(), meta.data_ptr()) if int8 else (kv.data_ptr(), None, None)
        status = fn(ctypes.byref(desc), x.data_ptr(), b, *cache, kv.shape[0], cos.data_ptr(), sin.data_ptr(),
                    slots.data_ptr(), slots.shape[0], offsets.data_ptr(), None if counts is None else counts.data_ptr())
        if status == -2:
            raise MemoryError(f"kernels.decode_layer: no memory for a step over {slots.shape[0]} cached rows")
        if status:
            raise ValueError(f"kernels.decode_layer: a slot outside the cache's {kv.shape[0]} rows, offsets that do "
                             "not cut the slots into one rising run per sequence, or a descriptor whose shapes do not "
                             "agree")

    return run
