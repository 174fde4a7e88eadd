"""seekmoe's own kernels: equal to the (dequantized) products in float32 however many threads split them, refused
inputs, torch's kernel whenever they cannot be built or used, and a cache that loads only what it checked."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import stat
import subprocess
import sys
import threading

import pytest
import torch

from seekmoe.model import kernels
from seekmoe.model.quant import int8_linear, quantize_rows

gemv = kernels.int8_gemv()
needs_gemv = pytest.mark.skipif(gemv is None, reason="the kernel cannot be built here (no C compiler or no AVX2)")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@needs_gemv
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16, 150])  # 150 rows of 1,024: blocks of 64 rows, and a tail
@pytest.mark.parametrize("shape", [(48, 64), (7, 45), (130, 1024)])  # (O, I): tails of both loops
def test_the_kernel_equals_the_dequantized_product(shape, rows):
    q, scale = quantize_rows(randn(*shape, seed=1))
    x = randn(rows, shape[1], seed=2)
    want = x.double() @ (q.double() * scale.double()[:, None]).T
    # float32 sums of up to 1,024 unit-sized products: a few 1e-5 of rounding (1.7e-5 measured), whatever the order
    torch.testing.assert_close(gemv(x, q, scale), want.float(), rtol=1e-5, atol=1e-4)


@needs_gemv
def test_int8_linear_takes_the_kernel_for_float32_rows_only(monkeypatch):
    q, scale = quantize_rows(randn(48, 64, seed=1))
    calls = []
    monkeypatch.setattr(kernels, "_loaded", {"int8_gemv": lambda *a: calls.append(a[0].shape) or gemv(*a)})
    x = randn(2, 150, 64, seed=2)  # any leading shape
    out = int8_linear(x[:, :1], q, scale)  # 2 rows
    assert calls == [(2, 64)] and out.shape == (2, 1, 48)
    torch.testing.assert_close(out, x[:, :1] @ (q.float() * scale[:, None]).T, rtol=1e-5, atol=1e-5)
    out = int8_linear(x, q, scale)  # 300 rows: a prompt chunk
    assert calls == [(2, 64), (300, 64)]
    torch.testing.assert_close(out, x @ (q.float() * scale[:, None]).T, rtol=1e-5, atol=1e-5)
    int8_linear(x[0, :1].bfloat16(), q, scale)  # bfloat16 rows
    assert len(calls) == 2


@needs_gemv
@pytest.mark.parametrize("bad", ["x float64", "q float", "x strided", "scale short"])
def test_the_kernel_refuses_what_it_cannot_read(bad):
    q, scale = quantize_rows(randn(8, 32, seed=1))
    x = randn(2, 32, seed=2)
    args = {"x float64": (x.double(), q, scale), "q float": (x, q.float(), scale),
            "x strided": (randn(2, 64)[:, ::2], q, scale), "scale short": (x, q, scale[:4])}[bad]
    with pytest.raises(ValueError, match="int8_gemv needs"):
        gemv(*args)


@pytest.mark.parametrize("how", ["no compiler", "compiler fails", "turned off"])
def test_without_the_kernel_int8_falls_back_to_torch(how, monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SEEKMOE_CACHE", str(tmp_path))  # nothing cached: it must build
    if how == "no compiler":
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.delenv("CC", raising=False)
    elif how == "compiler fails":
        monkeypatch.setenv("CC", "false")
    else:
        monkeypatch.setenv("SEEKMOE_KERNELS", "0")
    assert kernels.int8_gemv() is None
    assert not list(tmp_path.rglob("*.tmp"))  # a failed build leaves nothing behind
    q, scale = quantize_rows(randn(48, 64, seed=1))
    x = randn(1, 64, seed=2)
    out = int8_linear(x, q, scale)  # torch's kernel (bfloat16 rounding) or the dequantized product
    torch.testing.assert_close(out, x @ (q.float() * scale[:, None]).T, rtol=0.02, atol=0.02)


@needs_gemv
def test_the_library_is_built_once_into_a_private_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SEEKMOE_CACHE", str(tmp_path))
    assert kernels.int8_gemv() is not None
    folder = tmp_path / "kernels"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    so, digest = sorted(folder.iterdir())  # the library and its sha256, nothing else (the loaded copy is gone)
    assert so.suffix == ".so" and digest.name == so.name + ".sha256"
    assert digest.read_text().strip() == hashlib.sha256(so.read_bytes()).hexdigest()
    stamp = so.stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("CC", "false")  # a second process finds it built: no compiler needed
    assert kernels.int8_gemv() is not None
    assert so.stat().st_mtime_ns == stamp


def test_the_build_flags_follow_the_cpu_and_the_environment(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"avx2", "fma", *kernels.VNNI_CPU_FLAGS})
    monkeypatch.delenv("SEEKMOE_KERNELS_ISA", raising=False)
    assert kernels.flags() == kernels.FLAGS + kernels.VNNI_FLAGS
    monkeypatch.setenv("SEEKMOE_KERNELS_ISA", "avx2")
    assert kernels.flags() == kernels.FLAGS
    monkeypatch.setenv("SEEKMOE_KERNELS_ISA", "sse2")
    with pytest.raises(ValueError, match="SEEKMOE_KERNELS_ISA must be auto or avx2, got 'sse2'"):
        kernels.flags()
    monkeypatch.setenv("SEEKMOE_KERNELS_ISA", "auto")
    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "f16c"})
    assert kernels.flags() == kernels.FLAGS  # no avx512_vnni


@needs_gemv
@pytest.mark.parametrize("heads, rows", [(1, 1), (3, 1), (4, 5), (2, 16)])
def test_the_per_head_kernel_equals_each_heads_product(heads, rows):
    q, scale = quantize_rows(randn(heads, 40, 64, seed=1))  # (H, O, I), (H, O)
    x = randn(heads, rows, 64, seed=2)
    want = torch.stack([x[h] @ (q[h].float() * scale[h, :, None]).T for h in range(heads)])
    torch.testing.assert_close(kernels.int8_gemv_heads()(x, q, scale), want, rtol=1e-5, atol=1e-5)


@needs_gemv
@pytest.mark.parametrize("bad", ["2-d x", "heads differ", "float weights", "strided x"])
def test_the_per_head_kernel_refuses_what_it_cannot_read(bad):
    q, scale = quantize_rows(randn(2, 8, 32, seed=1))
    x = randn(2, 3, 32, seed=2)
    if bad == "2-d x":
        x = x[0]
    elif bad == "heads differ":
        x = randn(3, 3, 32, seed=2)
    elif bad == "float weights":
        q = q.float()
    else:
        x = randn(2, 3, 64, seed=2)[..., ::2]
    with pytest.raises(ValueError, match="int8_gemv_heads needs contiguous CPU tensors"):
        kernels.int8_gemv_heads()(x, q, scale)


@needs_gemv
def test_a_compiler_that_cannot_build_for_vnni_gets_the_avx2_build(monkeypatch, tmp_path, caplog):
    # an older compiler: it refuses -mavx512vnni and builds everything else
    old_cc = tmp_path / "old-cc"
    old_cc.write_text('#!/bin/sh\nfor a in "$@"; do\n  [ "$a" = -mavx512vnni ] && '
                      '{ echo "cc: error: unrecognized command-line option \'-mavx512vnni\'" >&2; exit 1; }\n'
                      'done\nexec cc "$@"\n')
    old_cc.chmod(0o755)
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SEEKMOE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(old_cc))
    monkeypatch.setattr(kernels, "flags", lambda: kernels.FLAGS + kernels.VNNI_FLAGS)
    with caplog.at_level(logging.WARNING, logger="seekmoe.model.kernels"):
        check_gemv()
    assert "did not build with" in caplog.text and "unrecognized command-line option" in caplog.text


STUB = """void seekmoe_int8_gemv(void) {}
void seekmoe_f32_gemv(void) {}
int seekmoe_int8_experts(void) { return 0; }
int seekmoe_f32_experts(void) { return 0; }
"""


def check_gemv() -> None:
    q, scale = quantize_rows(randn(48, 64, seed=1))
    x = randn(2, 64, seed=2)
    torch.testing.assert_close(kernels.int8_gemv()(x, q, scale), x @ (q.float() * scale[:, None]).T, rtol=1e-5,
                               atol=1e-5)


@needs_gemv
@pytest.mark.parametrize("tampered", ["junk", "another library"])
def test_a_tampered_cached_library_is_rebuilt_not_loaded(tampered, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SEEKMOE_CACHE", str(tmp_path))
    assert kernels.int8_gemv() is not None
    so = next((tmp_path / "kernels").glob("*.so"))
    good = so.read_bytes()
    if tampered == "junk":
        so.write_bytes(b"\x7fELF" + b"\0" * 100)
    else:  # a library with the kernels' names that computes nothing
        (tmp_path / "stub.c").write_text(STUB)
        subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "stub.c"), "-o", str(so)], check=True)
    monkeypatch.setattr(kernels, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        check_gemv()
    assert "do not match the sha256 recorded beside them: rebuilding" in caplog.text
    assert so.read_bytes() == good


@needs_gemv
@pytest.mark.parametrize("how", ["world-writable", "group-writable", "another user's", "a symlink"])
def test_a_cache_folder_others_control_is_not_used(how, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SEEKMOE_CACHE", str(tmp_path))
    folder = tmp_path / "kernels"
    if how == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.mkdir()
        folder.chmod({"world-writable": 0o777, "group-writable": 0o770, "another user's": 0o700}[how])
    if how == "another user's":
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(folder, 12345, 12345)
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        check_gemv()  # compiled into a private temporary folder instead
    assert "not using" in caplog.text and "compiling them into a private temporary folder" in caplog.text
    assert not list(folder.iterdir())


def int8_expert_weights(e: int = 5, d: int = 40, f: int = 12):
    gate_up, gate_up_scale = quantize_rows(randn(e, 2 * f, d, seed=3) * 0.3)
    down, down_scale = quantize_rows(randn(e, d, f, seed=4) * 0.3)
    return gate_up, gate_up_scale, down, down_scale


# (D, F): small enough to run on one thread; large enough to be split, with a tail in every loop
EXPERT_SHAPES = [(40, 12), (260, 100), (130, 36)]  # (D, F): 130 leaves a weight row and columns past whole tiles


@needs_gemv
@pytest.mark.parametrize("d,f", EXPERT_SHAPES)
def test_one_token_through_int8_experts_equals_the_dequantized_swiglus(d, f):
    gate_up, gus, down, ds = int8_expert_weights(d=d, f=f)
    x = randn(d, seed=5)
    idx, weight = torch.tensor([3, 0, 4]), torch.tensor([0.5, 0.3, 0.2])
    want = torch.zeros(d, dtype=torch.float64)
    for e, w in zip(idx.tolist(), weight.tolist(), strict=True):
        g, u = (gate_up[e].double() * gus[e].double()[:, None] @ x.double()).chunk(2)
        want += w * (down[e].double() * ds[e].double()[:, None]) @ (torch.nn.functional.silu(g) * u)
    got = kernels.experts()(x, gate_up, gus, down, ds, idx, weight)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)  # float32 sums of a few hundred products


@needs_gemv
@pytest.mark.parametrize("bad", ["index past the end", "negative index", "int32 indices", "strided x", "wrong width"])
def test_int8_experts_refuses_what_it_cannot_read(bad):
    gate_up, gus, down, ds = int8_expert_weights()
    x, idx, weight = randn(40, seed=5), torch.tensor([1, 2]), torch.tensor([0.5, 0.5])
    args = {"index past the end": (x, idx + 4), "negative index": (x, idx - 2), "int32 indices": (x, idx.int()),
            "strided x": (randn(80)[::2], idx), "wrong width": (randn(41), idx)}[bad]
    with pytest.raises(ValueError, match=r"kernels\.experts"):
        kernels.experts()(args[0], gate_up, gus, down, ds, args[1], weight)


@needs_gemv
@pytest.mark.parametrize("d,f", EXPERT_SHAPES)
def test_one_token_through_float32_experts_equals_the_swiglus(d, f):
    gate_up, down = randn(5, 2 * f, d, seed=3) * 0.3, randn(5, d, f, seed=4) * 0.3
    down_t = down.transpose(1, 2).contiguous().transpose(1, 2)  # stored transposed, as layout.py stores it
    x = randn(d, seed=5)
    idx, weight = torch.tensor([3, 0, 4]), torch.tensor([0.5, 0.3, 0.2])
    want = torch.zeros(d, dtype=torch.float64)
    for e, w in zip(idx.tolist(), weight.tolist(), strict=True):
        g, u = (gate_up[e].double() @ x.double()).chunk(2)
        want += w * down[e].double() @ (torch.nn.functional.silu(g) * u)
    got = kernels.experts()(x, gate_up, None, down_t, None, idx, weight)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)  # float32 sums of a few hundred products
    with pytest.raises(ValueError, match=r"kernels\.experts"):  # stored row by row: not what the kernel reads
        kernels.experts()(x, gate_up, None, down, None, idx, weight)


@pytest.mark.parametrize("tokens", [1, 3, 9, 40])  # token by token, or grouped by expert (40: a prompt)
def test_decode_tokens_through_laid_out_experts_equal_the_model(tokens):
    from seekmoe.engine import layout
    from seekmoe.model.model import few_tokens
    from tests.conftest import tiny_model

    moe = tiny_model().model.layers[1].mlp
    x = randn(tokens, 32, seed=6)
    with torch.no_grad():
        r = moe.gate(x)
        want = moe.experts(x, r.topk_idx, r.topk_weight)
        layout.relayout_experts(moe.experts)
        assert moe.experts.one_token(x[0], r.topk_idx[0], r.topk_weight[0]) is not None or gemv is None
        torch.testing.assert_close(few_tokens(moe.experts, x, r.topk_idx, r.topk_weight), want, rtol=1e-5,
                                   atol=1e-5)


@needs_gemv
@pytest.mark.parametrize("stored", ["rows", "transposed"])
@pytest.mark.parametrize("rows", [1, 2, 4, 5, 11, 16])
@pytest.mark.parametrize("shape", [(48, 64), (7, 45), (33, 1030)])  # (O, I): tails of every loop
def test_the_float32_kernel_equals_the_product(shape, rows, stored):
    w = randn(*shape, seed=1)
    w = w if stored == "rows" else w.t().contiguous().t()
    x = randn(rows, shape[1], seed=2)
    want = (x.double() @ w.double().T).float()
    # float32 sums of up to 1,030 unit-sized products: a few 1e-5 of rounding, whatever the order
    torch.testing.assert_close(kernels.f32_gemv()(x, w), want, rtol=1e-5, atol=1e-4)


@needs_gemv
def test_the_float32_kernel_refuses_what_it_cannot_read():
    w, x = randn(8, 16, seed=1), randn(2, 16, seed=2)
    for bad in ((x.double(), w), (x, w[:, ::2]), (randn(2, 32)[:, ::2], w), (x[:, :15], w)):
        with pytest.raises(ValueError, match="f32_gemv needs"):
            kernels.f32_gemv()(*bad)


@needs_gemv
def test_the_memory_read_by_all_threads_sums_the_buffer():
    buf = randn(100_003, seed=7)  # not a whole count of any thread's share
    assert kernels.stream_sum()(buf) == pytest.approx(buf.double().sum().item(), abs=1e-2)
    with pytest.raises(ValueError, match="stream_sum needs"):
        kernels.stream_sum()(buf.double())


@needs_gemv
def test_the_pool_has_the_threads_the_environment_asks_for():
    assert kernels.threads() == kernels.pool_size()


@pytest.mark.parametrize("value", ["two", "0", "-3"])
def test_a_thread_count_that_is_not_one_is_refused_by_name(value, monkeypatch):
    monkeypatch.setenv("SEEKMOE_THREADS", value)
    with pytest.raises(ValueError, match="SEEKMOE_THREADS must be"):
        kernels.pool_size()


@needs_gemv
@pytest.mark.skipif(os.environ.get("SEEKMOE_THREADS") == "3", reason="this is the rerun")
def test_every_kernel_test_holds_with_the_calls_split_over_three_threads():
    # the suite runs with OMP_NUM_THREADS=1 (a pool of one): rerun this file with three threads, an odd split
    env = {**os.environ, "SEEKMOE_THREADS": "3"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


@needs_gemv
def test_threads_calling_at_once_each_get_their_own_product():
    # a call finding the pool busy runs alone on its caller's thread: no waiting, no mixing of results
    w = randn(512, 1024, seed=8)
    xs = [randn(1, 1024, seed=10 + i) for i in range(4)]
    want = [(x.double() @ w.double().T).float() for x in xs]
    bad = []

    def call(i: int) -> None:
        for _ in range(50):
            if not torch.allclose(kernels.f32_gemv()(xs[i], w), want[i], rtol=1e-5, atol=1e-4):
                bad.append(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not bad and not any(t.is_alive() for t in threads)


@needs_gemv
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_runs_the_kernels_alone():
    w, x = randn(512, 1024, seed=8), randn(1, 1024, seed=9)
    want = kernels.f32_gemv()(x, w)  # the pool started in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its pool's workers were not copied
        try:
            ok = torch.allclose(kernels.f32_gemv()(x, w), want, rtol=1e-5, atol=1e-4) and kernels.threads() == 1
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0


def grouped_case(d: int, f: int):
    """Pairs sorted by expert: experts 1, 3, 4, 0 with 6, 3, 1 and 9 rows (tiles of four rows and each tail)."""
    used, counts = torch.tensor([1, 3, 4, 0]), torch.tensor([6, 3, 1, 9])
    start = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    x, weight = randn(19, d, seed=5), torch.rand(19, generator=torch.Generator().manual_seed(6))
    return x, used, start, weight


def grouped_reference(x, used, start, weight, swiglu):
    out = torch.zeros(x.shape, dtype=torch.float64)
    for u, e in enumerate(used.tolist()):
        rows = slice(int(start[u]), int(start[u + 1]))
        out[rows] = swiglu(e, x[rows].double()) * weight[rows, None].double()
    return out.float()


@needs_gemv
@pytest.mark.parametrize("d,f", EXPERT_SHAPES)
def test_rows_grouped_by_expert_equal_each_experts_swiglu(d, f):
    silu = torch.nn.functional.silu
    x, used, start, weight = grouped_case(d, f)
    gate_up, down = randn(5, 2 * f, d, seed=3) * 0.3, randn(5, d, f, seed=4) * 0.3
    down_t = down.transpose(1, 2).contiguous().transpose(1, 2)  # stored transposed, as layout.py stores it

    def swiglu(e, rows):
        g, u = (rows @ gate_up[e].double().T).chunk(2, dim=-1)
        return (silu(g) * u) @ down[e].double().T

    got = kernels.experts_grouped()(x, gate_up, None, down_t, None, used, start, weight)
    torch.testing.assert_close(got, grouped_reference(x, used, start, weight, swiglu), rtol=1e-4, atol=1e-4)
    q_gate_up, gus, q_down, ds = int8_expert_weights(d=d, f=f)

    def swiglu8(e, rows):
        g, u = (rows @ (q_gate_up[e].double() * gus[e].double()[:, None]).T).chunk(2, dim=-1)
        return (silu(g) * u) @ (q_down[e].double() * ds[e].double()[:, None]).T

    got = kernels.experts_grouped()(x, q_gate_up, gus, q_down, ds, used, start, weight)
    torch.testing.assert_close(got, grouped_reference(x, used, start, weight, swiglu8), rtol=1e-4, atol=1e-4)


@needs_gemv
@pytest.mark.parametrize("bad", ["expert past the end", "negative expert", "rows out of order", "start short",
                                 "start not ending at the rows", "int32 experts", "weight short"])
def test_grouped_experts_refuse_what_they_cannot_read(bad):
    x, used, start, weight = grouped_case(40, 12)
    gate_up, gus, down, ds = int8_expert_weights()
    args = {"expert past the end": (used + 2, start, weight), "negative expert": (used - 2, start, weight),
            "rows out of order": (used, torch.tensor([0, 7, 6, 10]), weight), "start short": (used, start[:3], weight),
            "start not ending at the rows": (used, torch.tensor([0, 6, 9, 11]), weight),
            "int32 experts": (used.int(), start, weight), "weight short": (used, start, weight[:9])}[bad]
    with pytest.raises(ValueError, match=r"kernels\.experts_grouped"):
        kernels.experts_grouped()(x, gate_up, gus, down, ds, *args)


def paged_slots(rows: int, page: int, pages: int, seed: int) -> torch.Tensor:
    """`rows` slots on pages of `page` consecutive rows, the pages in a random order, as the cache hands them out."""
    order = torch.randperm(pages, generator=torch.Generator().manual_seed(seed))
    return (order[:, None] * page + torch.arange(page)).flatten()[:rows]


@needs_gemv
@pytest.mark.parametrize("heads,width,lat", [(4, 80, 64), (3, 37, 30), (8, 288, 256)])  # tails of every loop
@pytest.mark.parametrize("where", ["anywhere", "pages"])  # runs of one row, or of 16 (read as one product)
def test_attention_over_cached_rows_equals_softmax_of_the_gathered_rows(heads, width, lat, where):
    kv = randn(50, width, seed=1)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(2)) if where == "anywhere" else \
        paged_slots(48, 16, 3, seed=2)
    slots, offsets = order[:21], torch.tensor([0, 1, 14, 21])  # three sequences of 1, 13 and 7 rows
    q = randn(3, heads, width, seed=3)
    got = kernels.mla_attend()(q, kv, slots, offsets, lat, 0.3)
    for b in range(3):
        ctx = kv[slots[offsets[b]:offsets[b + 1]]].double()  # (T, W)
        p = (q[b].double() @ ctx.T * 0.3).softmax(-1)  # (H, T)
        torch.testing.assert_close(got[b], (p @ ctx[:, :lat]).float(), rtol=1e-5, atol=1e-5)


@needs_gemv
def test_attention_over_a_long_context_merges_its_chunks():
    """Sequences longer than a chunk (512 rows) are cut, each chunk with its own softmax, and merged: the same
    answer, a short sequence beside them and an empty one included."""
    heads, width, lat = 3, 40, 32
    kv = randn(3000, width, seed=4) * 3  # spread scores: each chunk's max differs
    lengths = [1300, 5, 0, 1024, 513]
    order = paged_slots(2992, 16, 187, seed=5)  # pages of 16 rows
    slots, offsets = order[:sum(lengths)], torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    q = randn(len(lengths), heads, width, seed=6)
    got = kernels.mla_attend()(q, kv, slots, offsets, lat, 0.2)
    assert got[2].abs().max() == 0  # no rows: nothing to attend to
    for b in (0, 1, 3, 4):
        ctx = kv[slots[offsets[b]:offsets[b + 1]]].double()  # (T, W)
        p = (q[b].double() @ ctx.T * 0.2).softmax(-1)  # (H, T)
        torch.testing.assert_close(got[b], (p @ ctx[:, :lat]).float(), rtol=1e-5, atol=1e-5)


def int8_attention(q: torch.Tensor, q8: torch.Tensor, meta: torch.Tensor, lat: int, scale: float,
                   chunk: int = 512) -> torch.Tensor:
    """What kernels.mla_attend computes over an int8 cache, in float64 with the kernel's roundings: one sequence's
    queries q (H, W) over its rows q8 (T, W) int8, meta (T, 4): each part of a query to 7 bits at its largest, each
    chunk's weights times the rows' latent scales to 7 bits at their largest, the chunks merged by max and sum."""
    k, meta = q8.double(), meta.double()
    score = torch.zeros(q.shape[0], len(k), dtype=torch.float64)
    for part, cols in enumerate((slice(0, lat), slice(lat, None))):
        x = q[:, cols].double()
        top = x.abs().amax(-1, keepdim=True)  # (H, 1)
        u = torch.round(x * torch.where(top > 0, 63 / top, 0))  # the kernel offsets it by 64, then takes 64 sums out
        score += (top / 63) * meta[:, part] * (u @ k[:, cols].T)
    score *= scale
    outs, tops, sums = [], [], []
    for c in range(0, len(k), chunk):
        s = score[:, c:c + chunk]
        top = s.amax(-1, keepdim=True)
        e = (s - top).exp()
        w = e * meta[c:c + chunk, 0]  # (H, n): the weights times each row's latent scale
        most = w.amax(-1, keepdim=True)
        outs.append(most / 127 * (torch.round(w * 127 / most) @ k[c:c + chunk, :lat]))
        tops.append(top)
        sums.append(e.sum(-1, keepdim=True))
    top = torch.stack(tops).amax(0)
    total = sum(z * (t - top).exp() for z, t in zip(sums, tops, strict=True))
    return sum(o * (t - top).exp() for o, t in zip(outs, tops, strict=True)) / total


@needs_gemv
@pytest.mark.parametrize("heads,width,lat", [(4, 80, 64), (3, 37, 30), (8, 288, 256), (5, 104, 72)])
def test_attention_over_an_int8_cache_is_its_roundings_done_in_torch(heads, width, lat):
    """Every loop's tails (heads past a multiple of four, widths past 32, an odd last row), sequences shorter and
    longer than a chunk (whose merge the int8 weights' scale per chunk goes through), an empty one; and within a
    few percent of the float attention over the same rows."""
    from seekmoe.engine.cache import quantize_latent

    kv = randn(1400, width, seed=7)
    kv[:, lat:] *= 8  # the rope part far larger than the latent part: its own scale
    q8, meta = quantize_latent(kv, lat)
    lengths = [1, 13, 0, 700, 515]
    order = paged_slots(1392, 16, 87, seed=8)
    slots, offsets = order[:sum(lengths)], torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    q = randn(len(lengths), heads, width, seed=9)
    got = kernels.mla_attend()(q, q8, slots, offsets, lat, 0.15, meta)
    assert got[2].abs().max() == 0
    rows = kernels.mla_attend()(q, q8.float() * torch.where(torch.arange(width) < lat, meta[:, :1], meta[:, 1:2]),
                                slots, offsets, lat, 0.15)  # the float attention over the rows int8 holds
    for b in (0, 1, 3, 4):
        sl = slots[offsets[b]:offsets[b + 1]]
        want = int8_attention(q[b], q8[sl], meta[sl], lat, 0.15)
        torch.testing.assert_close(got[b], want.float(), rtol=1e-4, atol=1e-5)
        assert (got[b] - rows[b]).norm() <= 0.05 * rows[b].norm()


def int8_attentions() -> dict[str, torch.Tensor]:
    """The int8 cache's attention on a few shapes (heads past multiples of four, widths past 32, chunks merged)."""
    from seekmoe.engine.cache import quantize_latent

    out = {}
    for i, (rows, heads, width, lat) in enumerate([(4096, 8, 288, 256), (1000, 5, 80, 64), (37, 16, 576, 512),
                                                    (700, 3, 48, 40)]):
        kv = randn(rows, width, seed=20 + i) * torch.rand(rows, 1, generator=torch.Generator().manual_seed(i)) * 3
        q8, meta = quantize_latent(kv, lat)
        slots = torch.randperm(rows, generator=torch.Generator().manual_seed(30 + i))
        out[f"shape{i}"] = kernels.mla_attend()(randn(2, heads, width, seed=40 + i), q8, slots,
                                                torch.tensor([0, rows // 3, rows]), lat, 0.1, meta)
    return out


@needs_gemv
@pytest.mark.skipif(kernels.flags() == kernels.FLAGS, reason="this CPU (or SEEKMOE_KERNELS_ISA) gets the AVX2 build")
def test_the_int8_cache_reads_the_same_in_the_vnni_and_the_avx2_build(tmp_path):
    # dpbusd sums four products in 32 bits where vpmaddubsw + vpmaddwd sum pairs in 16 bits first: the same for the
    # operands the kernel passes (7-bit query and weights), so a cache gives the same answers on either kind of CPU
    from safetensors.torch import load_file

    code = ("import sys; from safetensors.torch import save_file; from tests.test_kernels import int8_attentions; "
            "save_file(int8_attentions(), sys.argv[1])")
    env = {**os.environ, "SEEKMOE_KERNELS_ISA": "avx2", "SEEKMOE_CACHE": str(tmp_path)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "avx2.safetensors")], env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    avx2, here = load_file(tmp_path / "avx2.safetensors"), int8_attentions()
    assert avx2.keys() == here.keys()
    for name, want in avx2.items():
        assert torch.equal(here[name], want), name


@needs_gemv
def test_the_library_exports_its_entry_points_only(tmp_path):
    # built with -fvisibility=hidden: a helper named like another library's function (attend, route, proj) can
    # neither be called by that library nor call it
    so = tmp_path / "kernels.so"
    subprocess.run([os.environ.get("CC", "cc"), *kernels.FLAGS, *map(str, sorted(kernels.SOURCE_DIR.glob("*.c"))),
                    "-o", str(so), "-lm"], check=True, timeout=600)
    lib = ctypes.CDLL(str(so))
    assert hasattr(lib, "seekmoe_mla_attend") and hasattr(lib, "seekmoe_decode_layer")
    for helper in ("pool_run", "attend", "tiles_f32", "route", "proj", "share"):
        assert not hasattr(lib, helper), helper


@needs_gemv
@pytest.mark.parametrize("bad", ["slot past the cache", "negative slot", "offsets out of order", "offsets short",
                                 "float64 cache", "lat too wide", "int8 without meta", "meta short", "meta with int8"])
def test_attention_over_cached_rows_refuses_what_it_cannot_read(bad):
    kv, q = randn(10, 16, seed=1), randn(2, 2, 16, seed=2)
    slots, offsets, lat = torch.tensor([0, 3, 4, 9]), torch.tensor([0, 1, 4]), 12
    kv8, meta = kv.to(torch.int8), torch.ones(10, 4)
    if bad in ("int8 without meta", "meta short", "meta with int8"):
        meta = {"int8 without meta": None, "meta short": meta[:9], "meta with int8": meta.to(torch.int8)}[bad]
        with pytest.raises(ValueError, match=r"kernels\.mla_attend"):
            kernels.mla_attend()(q, kv8, slots, offsets, lat, 0.5, meta)
        return
    args = {"slot past the cache": (q, kv, slots + 1, offsets, lat), "negative slot": (q, kv, slots - 1, offsets, lat),
            "offsets out of order": (q, kv, slots, torch.tensor([0, 3, 2]), lat),
            "offsets short": (q, kv, slots, offsets[:2], lat), "float64 cache": (q, kv.double(), slots, offsets, lat),
            "lat too wide": (q, kv, slots, offsets, 17)}[bad]
    with pytest.raises(ValueError, match=r"kernels\.mla_attend"):
        kernels.mla_attend()(*args, 0.5)
