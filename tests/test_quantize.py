"""`seekmoe quantize` (model/quantize.py), int4 (model/int4.py and its kernels) and mapped loading (model/mapped.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import requests
import torch
import torch.nn.functional as F

from seekmoe.model import int4, kernels
from seekmoe.model.checkpoint import cast_model, load_model, save_model
from seekmoe.model.config import ConfigError
from seekmoe.model.int4 import (
    Int4Linear,
    Int4RoutedExperts,
    dequantize_int4,
    dequantize_int4_torch,
    int4_linear,
    quantize_int4,
)
from seekmoe.model.quant import Int8Linear, Int8RoutedExperts
from seekmoe.model.quantize import quantize_checkpoint
from seekmoe.model.weights import CheckpointError
from tests.conftest import assert_usage_error, run_cli, serve_process, tiny_model, tiny_model_folder

# every quantized matrix's input width a multiple of 32: whole int4 groups
WIDE = dict(hidden_size=64, q_lora_rank=32, v_head_dim=8, intermediate_size=64, moe_intermediate_size=32,
            kv_lora_rank=32)
needs_kernels = pytest.mark.skipif(not kernels.available(), reason="seekmoe's kernels cannot be built here")
IDS = torch.tensor([[3, 5, 7, 9, 11, 2, 40, 41]])


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def logits(model, ids=IDS) -> torch.Tensor:
    out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


def dequantized_float_model(quantized, float_model):
    """The float model with every weight replaced by what the quantized model stores, dequantized: the quantized
    model must compute the same function up to float rounding."""
    ref = tiny_model(**WIDE) if float_model is None else float_model
    sd = ref.state_dict()
    with torch.no_grad():
        for name, m in quantized.named_modules():
            if isinstance(m, Int8Linear):
                sd[f"{name}.weight"].copy_(m.weight.float() * m.weight_scale[:, None])
            elif isinstance(m, Int4Linear):
                sd[f"{name}.weight"].copy_(dequantize_int4(m.weight, m.weight_scale))
            elif isinstance(m, (Int8RoutedExperts, Int4RoutedExperts)):
                if isinstance(m, Int8RoutedExperts):
                    gu, dn = m.gate_up.float() * m.gate_up_scale[..., None], m.down_proj.float() * m.down_proj_scale[
                        ..., None]
                else:
                    gu, dn = dequantize_int4(m.gate_up, m.gate_up_scale), dequantize_int4(m.down_proj,
                                                                                          m.down_proj_scale)
                f = gu.shape[1] // 2
                sd[f"{name}.gate_proj"].copy_(gu[:, :f])
                sd[f"{name}.up_proj"].copy_(gu[:, f:])
                sd[f"{name}.down_proj"].copy_(dn)
    return ref


# ---- int4 numerics --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [32, 64])
def test_int4_rounding_error_is_bounded_per_group(group):
    w = randn(48, 256, seed=1) * 0.05
    w[3, :group] = 0  # an all-zero group stays zero
    packed, scale = quantize_int4(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (48, 128)
    assert scale.dtype == torch.float16 and scale.shape == (48, 256 // group)
    deq = dequantize_int4(packed, scale)
    assert (deq[3, :group] == 0).all()
    # the step is max|w| / 8, the extreme value -8 steps: values up to 7.5 steps on the other side are off by at
    # most half a step, those beyond (up to 8) clipped to 7, off by at most a step; the float16 rounding of the
    # scale adds 2^-11 relative, times at most 8 steps
    amax = w.view(48, -1, group).abs().amax(-1, keepdim=True)
    err = (deq - w).view(48, -1, group).abs()
    slack = amax * 2**-11 + 1e-7
    assert (err <= amax / 8 + slack).all()
    steps = (w.view(48, -1, group) / (scale.float()[..., None])).abs()  # |w| in steps
    assert (err[steps <= 7.5] <= (amax / 16 + slack).expand_as(err)[steps <= 7.5]).all()
    # the average error is what int4 promises: about step / sqrt(12) per weight
    assert (deq - w).square().mean().sqrt() < 0.6 * (amax / 8).mean()


def test_int4_rounds_as_q4_0_and_the_search_lowers_the_squared_error(monkeypatch):
    w = randn(64, 512, seed=2) * 0.02
    packed, scale = quantize_int4(w)
    extreme = w.view(-1, 32).gather(1, w.view(-1, 32).abs().argmax(1, keepdim=True))  # (groups, 1)
    torch.testing.assert_close(scale.float().view(-1, 1), (extreme / -8).half().float())  # Q4_0's step
    plain = (dequantize_int4(packed, scale) - w).square().sum()
    monkeypatch.setattr(int4, "SEARCH", int4.MSE_SEARCH)
    searched = (dequantize_int4(*quantize_int4(w)) - w).square().sum()
    assert searched < 0.95 * plain  # what it was meant to buy (perplexity said otherwise: int4.py)


def test_int4_widths_must_be_whole_groups():
    with pytest.raises(ValueError, match="multiple of the group size 32, got 48"):
        quantize_int4(randn(4, 48))
    with pytest.raises(ValueError, match="group size must be one of"):
        quantize_int4(randn(4, 96), 48)


def rounded_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., I) rounded to int8 in blocks of 32 as the int4 kernels round their activations: (xq, xd (..., I / 32))
    with x ~= xq * xd, |error| <= xd / 2."""
    xb = x.reshape(*x.shape[:-1], -1, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))  # float32, as the C code computes it
    return torch.round(xb * inv).reshape(x.shape), (amax / 127).squeeze(-1)


def kernel_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the kernel computes, in float64; the bound on its distance to x @ w.T): x rounded in blocks of 32,
    then exact products with the dequantized weight. Each input is off by at most half its block's step, so the
    product by at most |w| @ (step / 2)."""
    w = dequantize_int4(packed, scale).double()
    xq, xd = rounded_blocks(x)
    step = xd.double().repeat_interleave(32, -1)  # (..., I)
    return (xq.double() * step) @ w.T, w.abs() @ (step / 2).T


@needs_kernels
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16])
def test_int4_kernel_equals_the_reference_with_rounded_activations(group, rows, monkeypatch):
    packed, scale = quantize_int4(randn(200, 384, seed=3), group)
    x = randn(rows, 384, seed=4)
    x[0, :32] = 0  # an all-zero block
    same, bound = kernel_reference(x, packed, scale)
    got = kernels.int4_gemv()(x, packed, scale)
    torch.testing.assert_close(got.double(), same, rtol=1e-5, atol=1e-4)  # float32 sums of 384 products
    torch.testing.assert_close(int4_linear(x, packed, scale).double(), same, rtol=1e-5, atol=1e-4)
    exact = x.double() @ dequantize_int4(packed, scale).double().T
    assert ((got.double() - exact).abs() <= bound.T + 1e-4).all()
    # many rows: the dequantized float path, exact; a block of rows at a time past DEQUANT_BYTES
    xs = randn(kernels.MAX_ROWS + 1, 384, seed=5)
    want = xs @ dequantize_int4(packed, scale).T
    torch.testing.assert_close(int4_linear(xs, packed, scale), want, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(int4, "DEQUANT_BYTES", 384 * 4 * 7)  # 7 rows a block: 29 blocks, the last of 4 rows
    torch.testing.assert_close(int4_linear(xs, packed, scale), want, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("group", [32, 64])
def test_the_dequantizing_kernel_equals_torchs_unpacking(group):
    packed, scale = quantize_int4(randn(3, 40, 448, seed=10), group)  # a stack, as the experts are
    got = dequantize_int4(packed, scale)
    assert got.shape == (3, 40, 448)
    torch.testing.assert_close(got, dequantize_int4_torch(packed, scale), rtol=0, atol=0)  # the same products
    torch.testing.assert_close(dequantize_int4(packed[:, ::2], scale[:, ::2]),  # strided: torch's path
                               dequantize_int4_torch(packed, scale)[:, ::2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="int4_dequant needs contiguous CPU tensors"):
        kernels.int4_dequant()(packed[0], scale[0].float())


@needs_kernels
@pytest.mark.parametrize("group, width", [(32, 352), (32, 416), (64, 448)])
def test_int4_kernel_rows_whose_blocks_are_not_a_multiple_of_four(group, width):
    # the kernel takes four blocks a step, then a pair, then one alone: 11, 13 and 14 blocks take each tail
    packed, scale = quantize_int4(randn(40, width, seed=8), group)
    for rows in (1, 3):
        x = randn(rows, width, seed=9)
        got = kernels.int4_gemv()(x, packed, scale)
        torch.testing.assert_close(got.double(), kernel_reference(x, packed, scale)[0], rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("group", [32, 64])
def test_int4_experts_kernel_equals_the_reference_with_rounded_activations(group):
    e, d, f = 6, 128, 192
    gu, gus = quantize_int4(randn(e, 2 * f, d, seed=5), group)
    dn, dns = quantize_int4(randn(e, d, f, seed=6), group)
    x, idx, w = randn(d, seed=7), torch.tensor([4, 0, 5]), torch.tensor([0.5, 0.3, 0.2])
    want = torch.zeros(d, dtype=torch.float64)
    for j, k in enumerate(idx.tolist()):  # x rounded once, each expert's hidden units rounded before down
        g, u = kernel_reference(x[None], gu[k], gus[k])[0][0].chunk(2)
        h = (F.silu(g) * u).float()
        want += w[j].item() * kernel_reference(h[None], dn[k], dns[k])[0][0]
    got = kernels.int4_experts()(x, gu, gus, dn, dns, idx, w)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    with pytest.raises(ValueError, match=r"out of range 0\.\.5"):
        kernels.int4_experts()(x, gu, gus, dn, dns, torch.tensor([6]), torch.tensor([1.0]))


@needs_kernels
@pytest.mark.skipif(os.environ.get("SEEKMOE_THREADS") == "3", reason="this is the rerun")
def test_the_int4_kernels_hold_with_the_calls_split_over_three_threads():
    env = {**os.environ, "SEEKMOE_THREADS": "3"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "kernel", __file__],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


@needs_kernels
@pytest.mark.skipif(kernels.flags() == kernels.FLAGS, reason="this CPU (or this rerun) has the AVX2 build only")
def test_the_int4_kernels_hold_in_the_plain_avx2_build_too():
    # this CPU gets the AVX512-VNNI build; the AVX2 one serves the others and must compute the same
    env = {**os.environ, "SEEKMOE_KERNELS_ISA": "avx2"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "kernel", __file__],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


# ---- quantize + load: round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_cli_round_trip_computes_the_dequantized_model(tmp_path, capsys, monkeypatch, bits):
    float_model = tiny_model(**WIDE)
    save_model(float_model, tmp_path / "f", max_shard_bytes=40_000)  # a sharded source
    rc, out, err = run_cli(capsys, "quantize", str(tmp_path / "f"), str(tmp_path / "q"), f"--int{bits}",
                           "--shard-size", "0.00002", "--quiet")  # ~20 KiB output shards
    assert rc == 0, err
    assert out.strip() == f"wrote {tmp_path / 'q'}"
    assert (tmp_path / "q" / "model.safetensors.index.json").is_file()
    quant = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == f"seekmoe-int{bits}" and quant["bits"] == bits and quant["layout"] == "mapped"
    assert quant.get("group_size") == (32 if bits == 4 else None)

    q = load_model(tmp_path / "q")
    kinds = {type(m) for m in q.modules()}
    assert ({Int8Linear, Int8RoutedExperts} if bits == 8 else {Int4Linear, Int4RoutedExperts}) <= kinds
    with torch.no_grad():
        got, want = logits(q), logits(float_model)
        exact = logits(dequantized_float_model(q, tiny_model(**WIDE)))
        with monkeypatch.context() as m:  # without the int4 kernels, which round the activations too
            m.setattr(kernels, "int4_gemv", lambda: None)
            m.setattr(kernels, "int4_experts", lambda: None)
            plain = logits(q)
    # the quantized model is the float model with rounded weights, up to float32 rounding
    torch.testing.assert_close(plain, exact, rtol=1e-4, atol=1e-4)
    # the int4 kernels round the activations to int8 blocks: an error of the size int8 weights make (test_quant.py
    # bounds the int8 model's relative distance to the float one by 0.05; measured here: 0.05)
    assert (got - exact).norm() / exact.norm() < (1e-5 if bits == 8 else 0.1)
    # and close to the float model (int8: the bound test_quant.py holds in-memory int8 to): weights off by ~0.2% (int8:
    # step max|w| / 127 per row) or ~7% (int4: step
    # max|w| / 8 per group of 32) relative RMS; 3 layers of a random model amplify that a few times
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < (0.05 if bits == 8 else 0.5), rel
    print(f"int{bits}: logits off the float model's by {rel:.4f} relative")


@pytest.mark.parametrize("variant", [dict(topk_method="noaux_tc", scoring_func="sigmoid", n_group=2, topk_group=1),
                                     dict(tie_word_embeddings=True)], ids=["v3 routing", "tied head"])
def test_variants_round_trip(tmp_path, monkeypatch, variant):
    save_model(tiny_model(**WIDE, **variant), tmp_path / "f")
    quantize_checkpoint(tmp_path / "f", tmp_path / "q", 4, progress=False)
    q = load_model(tmp_path / "q")
    if variant.get("tie_word_embeddings"):  # the head is the float embedding table, as in the float model
        assert q.lm_head.weight is q.model.embed_tokens.weight
    monkeypatch.setattr(kernels, "int4_gemv", lambda: None)
    monkeypatch.setattr(kernels, "int4_experts", lambda: None)
    with torch.no_grad():
        torch.testing.assert_close(logits(q), logits(dequantized_float_model(q, tiny_model(**WIDE, **variant))),
                                   rtol=1e-4, atol=1e-4)


def test_a_bfloat16_source_quantizes_as_its_float32_values(tmp_path):
    float_model = tiny_model(**WIDE)
    save_model(cast_model(tiny_model(**WIDE), "bfloat16"), tmp_path / "bf16")
    quantize_checkpoint(tmp_path / "bf16", tmp_path / "q", 4, progress=False)
    q = load_model(tmp_path / "q")
    # routers, norms and the embedding keep the file's bfloat16 values; the quantized ones are rounded from them
    assert q.model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(q.model.embed_tokens.weight, float_model.model.embed_tokens.weight.bfloat16().float())
    w = float_model.model.layers[0].self_attn.o_proj.weight.bfloat16().float()
    packed, _ = quantize_int4(w)
    assert torch.equal(q.model.layers[0].self_attn.o_proj.weight, packed)


def test_int8_mapped_equals_in_memory_int8(tmp_path):
    from seekmoe.model.quant import quantize_int8

    float_model = tiny_model()
    save_model(float_model, tmp_path / "f")
    quantize_checkpoint(tmp_path / "f", tmp_path / "q", 8, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(logits(load_model(tmp_path / "q")), logits(quantize_int8(tiny_model())),
                                   rtol=1e-5, atol=1e-5)


def test_llm_generates_from_a_quantized_folder(tmp_path):
    from seekmoe.llm import LLM

    tiny_model_folder(tmp_path / "f", **WIDE)
    quantize_checkpoint(tmp_path / "f", tmp_path / "q", 4, progress=False)
    llm = LLM(str(tmp_path / "q"))
    outs = llm.generate(["hello", "a b c"], max_tokens=5, temperature=0, ignore_eos=True)
    assert [len(o.token_ids) for o in outs] == [5, 5]
    # greedy decode through the engine (kernels, fused projections) = the model's own forward, token by token
    one = llm.generate("hello", max_tokens=5, temperature=0, ignore_eos=True)
    assert one.token_ids == outs[0].token_ids


def test_seekmoe_serve_answers_from_a_quantized_folder(tmp_path):
    tiny_model_folder(tmp_path / "f", **WIDE)
    quantize_checkpoint(tmp_path / "f", tmp_path / "q", 4, progress=False)
    with serve_process(tmp_path / "q") as (url, proc):
        r = requests.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer k"},
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


# ---- memory: measured, in a fresh process -----------------------------------------------------------------------

BIG = dict(**WIDE) | dict(hidden_size=256, n_routed_experts=64, moe_intermediate_size=512, num_hidden_layers=2,
           first_k_dense_replace=0)  # 50M expert weights: 200 MB in float32

MEASURE = textwrap.dedent("""
    import re, sys, torch
    def status(key): return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
    from seekmoe.model import quantize
    from seekmoe.model.checkpoint import load_model
    quantize.SLICE_BYTES = 2 * 2**20
    torch.ones(1000) @ torch.ones(1000)  # torch's own first-use allocations, before the baseline: its CPU ops,
    from seekmoe.model.config import ModelConfig
    from seekmoe.model.model import CausalLM
    with torch.device("meta"):  # and building a model on the meta device (~70 MB of code loaded on first use)
        CausalLM(ModelConfig.from_json(sys.argv[2] + "/config.json"))
    before = status("VmRSS")
    if sys.argv[1] == "quantize":
        quantize.quantize_checkpoint(sys.argv[2], sys.argv[3], int(sys.argv[4]), progress=False)
        print(status("VmHWM") - before)
    else:
        model = load_model(sys.argv[2])
        print(status("VmRSS") - before)
""")


def _measure(*argv: str) -> int:
    res = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return int(res.stdout.split()[-1])


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big") / "f"
    save_model(tiny_model(**BIG), folder)
    return folder


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizing_holds_a_slice_never_the_model(big_folder, tmp_path, bits):
    source = (big_folder / "model.safetensors").stat().st_size
    grown = _measure("quantize", str(big_folder), str(tmp_path / "q"), str(bits))
    # 2 MiB float32 slices and their temporaries: a few tens of MB at most, against a 200 MB source
    assert grown < source / 8, (grown, source)


def test_loading_maps_the_weights_without_copying_them(big_folder, tmp_path):
    quantize_checkpoint(big_folder, tmp_path / "q", 8, progress=False)
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    grown = _measure("load", str(tmp_path / "q"))
    # the quantized experts (50 MB) are views of the mapping, not read yet; the float parts are tiny
    assert grown < size / 5, (grown, size)


# ---- errors --------------------------------------------------------------------------------------------------

@pytest.fixture
def quantized(tmp_path):
    save_model(tiny_model(**WIDE), tmp_path / "f")
    quantize_checkpoint(tmp_path / "f", tmp_path / "q", 4, progress=False)
    return tmp_path / "q"


def test_a_truncated_file_is_named(quantized):
    file = quantized / "model.safetensors"
    os.truncate(file, file.stat().st_size - 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .* the file is truncated"):
        load_model(quantized)


def test_a_corrupt_header_is_named(quantized):
    file = quantized / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:12] = b"\xff\xfe{["
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(quantized)
    file.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(quantized)


@pytest.mark.parametrize("change, message", [
    ({"bits": 3}, "quant_method 'seekmoe-int4' with bits=3"),
    ({"group_size": 48}, "group_size must be one of"),
    ({"group_size": 64}, r"config\.json: int4 needs the input width to be a multiple of the group size 64, got 32"),
    ({"quant_method": "gptq"}, "quant_method 'gptq'"),
])
def test_a_wrong_quantization_config_is_named(quantized, change, message):
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"].update(change)
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(quantized)


def test_a_missing_config_is_named(quantized):
    (quantized / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config\.json: missing"):
        load_model(quantized)


def test_quantize_refuses_bad_sources_and_targets(tmp_path, quantized):
    with pytest.raises(CheckpointError, match="already quantized"):
        quantize_checkpoint(quantized, tmp_path / "again", 8, progress=False)
    save_model(tiny_model(), tmp_path / "narrow")  # widths 16 and 24: not whole groups of 32
    with pytest.raises(CheckpointError, match="multiple of the group size 32"):
        quantize_checkpoint(tmp_path / "narrow", tmp_path / "n4", 4, progress=False)
    with pytest.raises(CheckpointError, match="exists and is not an empty folder"):
        quantize_checkpoint(tmp_path / "f", quantized, 8, progress=False)
    quantize_checkpoint(tmp_path / "f", quantized, 8, force=True, progress=False)  # replaced, whole
    assert json.loads((quantized / "config.json").read_text())["quantization_config"]["bits"] == 8
    file = tmp_path / "f" / "model.safetensors"
    os.truncate(file, file.stat().st_size - 8)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        quantize_checkpoint(tmp_path / "f", tmp_path / "t", 8, progress=False)
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".t.partial-*"))  # nothing left behind


def test_quantize_flags(capsys, tmp_path):
    def usage_error(*argv: str) -> str:  # argparse's: the usage, then "seekmoe quantize: error: ..."
        rc, _, err = run_cli(capsys, "quantize", *argv)
        assert rc == 2
        return err.strip().splitlines()[-1]

    assert "one of the arguments --int8 --int4 is required" in usage_error("a", "b")
    assert "not allowed with" in usage_error("a", "b", "--int8", "--int4")
    rc, _, err = run_cli(capsys, "quantize", "a", "b", "--int4", "--group-size", "48")
    assert_usage_error(rc, err, "group size must be one of (32, 64), got 48")
    rc, _, err = run_cli(capsys, "quantize", "a", "b", "--int8", "--group-size", "64")
    assert_usage_error(rc, err, "--group-size applies to --int4 only")
    rc, _, err = run_cli(capsys, "quantize", str(tmp_path / "none"), str(tmp_path / "b"), "--int8")
    assert_usage_error(rc, err, "not a checkpoint folder")
