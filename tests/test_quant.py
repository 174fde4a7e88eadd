"""int8 weights: kernels against dequantized references, the converted model against the float one, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import seekmoe.model.quant as quant
from seekmoe import CheckpointError, load_model, save_model
from seekmoe.model.model import MLA, Gate, RMSNorm, RoutedExperts
from seekmoe.model.quant import Int8Linear, Int8RoutedExperts, quantize_int8, save_quantized
from seekmoe.model.weights import INDEX_FILE, SINGLE_FILE
from tests.conftest import tiny_model

IDS = torch.randint(0, 97, (4, 9), generator=torch.Generator().manual_seed(0))
BF16_ULP = 2**-7  # relative spacing of bfloat16 numbers at the bottom of a binade
needs_kernel = pytest.mark.skipif(not quant.HAS_INT8_KERNEL, reason="torch has no _weight_int8pack_mm")


def randn(*shape: int, seed: int = 0, std: float = 1.0) -> torch.Tensor:
    return std * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def linear(i: int, o: int, seed: int = 0) -> nn.Linear:
    lin = nn.Linear(i, o, bias=False)
    with torch.no_grad():
        lin.weight.copy_(randn(o, i, seed=seed, std=0.2))
    return lin


def dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.unsqueeze(-1)


def error(fn, *parts: str) -> str:
    """Run fn, expect a CheckpointError (never a raw library error) naming every part."""
    with pytest.raises(CheckpointError) as info:
        fn()
    assert type(info.value) is CheckpointError
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    return str(info.value)


# ---- Int8Linear -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["seekmoe", "bf16", "float"])  # all 64 rows through seekmoe's kernel, torch's, or
def test_int8_linear_is_close_to_the_float_linear(monkeypatch, path):  # the float path
    if path != "seekmoe":
        monkeypatch.setitem(quant.kernels._loaded, "int8_gemv", None)
        monkeypatch.setattr(quant, "KERNEL_MAX_ROWS", 64 if path == "bf16" else 0)
    lin = linear(64, 48)
    x = randn(64, 64, seed=1)
    with torch.no_grad():
        want, got = lin(x), Int8Linear.from_linear(lin)(x)
    # error per output channel over the batch, relative to that channel's size: int8 rounding is ~0.5% of it
    rel = (got - want).norm(dim=0) / want.norm(dim=0)
    assert rel.max() < 0.02, rel.max()
    assert (got - want).norm() / want.norm() < 0.01


def test_int8_linear_equals_the_dequantized_reference_on_the_float_path(monkeypatch):
    monkeypatch.setitem(quant.kernels._loaded, "int8_gemv", None)  # seekmoe's kernel: tests/test_kernels.py
    lin = linear(64, 48)
    q = Int8Linear.from_linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
    assert torch.equal(q.weight_scale, lin.weight.detach().abs().amax(1) / 127)
    assert q.weight.abs().max() == 127
    x = randn(2, 20, 64, seed=1)  # 40 rows: past KERNEL_MAX_ROWS; any leading shape
    out = q(x)
    assert out.shape == (2, 20, 48)
    torch.testing.assert_close(out, x @ dequantized(q.weight, q.weight_scale).T, rtol=0, atol=1e-5)
    # an input width the kernel cannot take (not a multiple of 16) uses the float path for one row too
    q12 = Int8Linear.from_linear(linear(12, 8))
    x12 = randn(1, 12, seed=2)
    assert not quant.kernel_fits(x12, q12.weight)
    torch.testing.assert_close(q12(x12), x12 @ dequantized(q12.weight, q12.weight_scale).T, rtol=0, atol=1e-5)


@needs_kernel
def test_int8_linear_kernel_path_rounds_only_to_bfloat16(monkeypatch):
    monkeypatch.setitem(quant.kernels._loaded, "int8_gemv", None)  # torch's kernel, not seekmoe's (test_kernels.py)
    q = Int8Linear.from_linear(linear(64, 48))
    x = randn(3, 64, seed=1)
    assert quant.kernel_fits(x, q.weight)
    # the kernel: bf16 activations, float32 accumulation, a bf16 product, then the float32 scale
    unscaled = (x.bfloat16().float() @ q.weight.float().T).bfloat16().float()
    torch.testing.assert_close(q(x), unscaled * q.weight_scale, rtol=BF16_ULP, atol=1e-6)
    torch.testing.assert_close(q(x.bfloat16()).float(), q(x), rtol=2 * BF16_ULP, atol=1e-3)
    # a view that starts off the kernel's alignment is copied first, not read out of bounds
    xb = randn(5, 65, seed=3).bfloat16()[:, 1:]
    torch.testing.assert_close(q(xb).float(), q(xb.float()), rtol=2 * BF16_ULP, atol=1e-3)


def test_an_all_zero_row_stays_zero():
    lin = linear(32, 8)
    with torch.no_grad():
        lin.weight[3] = 0
    q = Int8Linear.from_linear(lin)
    assert q.weight_scale[3] == 0 and not q.weight[3].any()
    assert torch.isfinite(q(randn(2, 32))).all() and not q(randn(2, 32))[:, 3].any()


# ---- Int8RoutedExperts ------------------------------------------------------------------------------------------

def experts_pair(n: int = 8, dim: int = 32, inter: int = 16) -> tuple[RoutedExperts, Int8RoutedExperts, RoutedExperts]:
    """Float experts, their int8 version, and float experts holding the int8 version's dequantized weights."""
    ref = RoutedExperts(n, dim, inter)
    with torch.no_grad():
        for i, p in enumerate(ref.parameters()):
            p.copy_(randn(*p.shape, seed=10 + i, std=0.2))
    q = Int8RoutedExperts.from_experts(ref)
    deq = RoutedExperts(n, dim, inter)
    with torch.no_grad():
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(deq, name).copy_(dequantized(getattr(q, name), getattr(q, f"{name}_scale")))
    return ref, q, deq


def routing(n: int, k: int = 2, experts: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx_NK = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(n)])
    return idx_NK, torch.rand(n, k, generator=g)


@pytest.mark.parametrize("dropped", [False, True])
def test_int8_experts_equal_float_experts_with_dequantized_weights(monkeypatch, dropped):
    monkeypatch.setattr(quant, "KERNEL_MAX_ROWS", 0)  # the float path: exact against the reference
    _, q, deq = experts_pair()
    x_ND = randn(24, 32, seed=1)
    idx_NK, weight_NK = routing(24)
    kept_NK = (torch.rand(24, 2, generator=torch.Generator().manual_seed(3)) > 0.3) if dropped else None
    want = deq(x_ND, idx_NK, weight_NK, kept_NK)
    torch.testing.assert_close(q(x_ND, idx_NK, weight_NK, kept_NK), want, rtol=0, atol=1e-5)
    if dropped:  # a token whose pairs were all dropped gets nothing from the experts
        assert not q(x_ND, idx_NK, weight_NK, torch.zeros_like(kept_NK)).any()


def test_int8_experts_with_the_kernel_stay_within_bfloat16_rounding():
    ref, q, deq = experts_pair()
    x_ND = randn(6, 32, seed=1)
    idx_NK, weight_NK = routing(6)
    want = deq(x_ND, idx_NK, weight_NK)
    got = q(x_ND, idx_NK, weight_NK)
    assert (got - want).norm() / want.norm() < 0.01
    assert (q(x_ND, idx_NK, weight_NK) - ref(x_ND, idx_NK, weight_NK)).norm() / want.norm() < 0.03


def test_decode_never_reads_an_unused_expert():
    _, q, deq = experts_pair()
    idx_NK, weight_NK = torch.tensor([[2, 5]]), torch.tensor([[0.7, 0.3]])
    x_ND = randn(1, 32, seed=1)
    want = q(x_ND, idx_NK, weight_NK)
    with torch.no_grad():
        for e in set(range(8)) - {2, 5}:  # poison every other expert: reading one would show as nan
            for name in ("gate_proj_scale", "up_proj_scale", "down_proj_scale"):
                getattr(q, name)[e] = float("nan")
    assert torch.equal(q(x_ND, idx_NK, weight_NK), want)
    torch.testing.assert_close(want, deq(x_ND, idx_NK, weight_NK), rtol=0.02, atol=1e-3)


# ---- the whole model --------------------------------------------------------------------------------------------

def test_quantized_model_stays_close_to_the_float_model():
    float_model, model = tiny_model(), quantize_int8(tiny_model())
    with torch.no_grad():
        want, got = float_model(IDS), model(IDS)
    # int8 rounding is ~0.5% per matmul; three layers, sharp attention and a flipped routing or two grow it
    assert (got - want).norm() / want.norm() < 0.05
    assert (got - want).abs().max() < 0.6
    assert torch.equal(got[:, -1].argmax(-1), want[:, -1].argmax(-1))


def test_quantize_converts_exactly_the_listed_modules():
    float_model, model = tiny_model(), quantize_int8(tiny_model())
    attn = model.model.layers[0].self_attn
    for proj in (attn.q_a_proj, attn.q_b_proj, attn.kv_a_proj_with_mqa, attn.o_proj, model.lm_head,
                 model.model.layers[0].mlp.gate_proj, model.model.layers[1].mlp.shared_experts.down_proj):
        assert isinstance(proj, Int8Linear)
    assert isinstance(model.model.layers[1].mlp.experts, Int8RoutedExperts)
    assert isinstance(quantize_int8(tiny_model(q_lora_rank=None)).model.layers[0].self_attn.q_proj, Int8Linear)
    floats = dict(float_model.named_parameters())
    kept = dict(model.named_parameters())  # int8 weights are buffers: what is left is float
    assert kept and all(
        name.endswith(("kv_b_proj.weight", "norm.weight", "mlp.gate.weight")) or name == "model.embed_tokens.weight"
        for name in kept)
    for name, p in kept.items():
        assert p.dtype == torch.float32 and torch.equal(p, floats[name]), name
    assert sum(isinstance(m, MLA) and isinstance(m.kv_b_proj, nn.Linear) for m in model.modules()) == 3
    assert sum(isinstance(m, (Gate, RMSNorm)) for m in model.modules()) == sum(
        isinstance(m, (Gate, RMSNorm)) for m in float_model.modules())
    config = model.config.extra["quantization_config"]
    assert config["quant_method"] == "seekmoe-int8" and config["bits"] == 8
    assert "model.layers.*.self_attn.kv_b_proj" in config["modules_not_converted"]


def test_quantizing_twice_is_refused():
    model = quantize_int8(tiny_model())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(model)


def test_a_tied_head_stays_tied_and_float(tmp_path):
    model = quantize_int8(tiny_model(tie_word_embeddings=True))
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head" in model.config.extra["quantization_config"]["modules_not_converted"]
    save_quantized(model, tmp_path / "q")
    loaded = load_model(tmp_path / "q")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded(IDS), model(IDS))


# ---- checkpoints ------------------------------------------------------------------------------------------------

def saved(folder: Path) -> tuple[Path, torch.nn.Module]:
    model = quantize_int8(tiny_model())
    save_quantized(model, folder)
    return folder, model


def edit_tensors(file: Path, change) -> None:
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file)


def test_save_and_load_round_trip(tmp_path):
    folder, model = saved(tmp_path / "q")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SINGLE_FILE]
    with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118
    assert dtypes["model.layers.0.self_attn.q_a_proj.weight"] == "I8"
    assert dtypes["model.layers.0.self_attn.q_a_proj.weight_scale"] == "F32"
    assert dtypes["model.layers.1.mlp.experts.7.down_proj.weight"] == "I8"
    assert dtypes["model.layers.1.mlp.experts.7.down_proj.weight_scale"] == "F32"
    assert dtypes["model.layers.1.self_attn.kv_b_proj.weight"] == "F32"
    assert "model.layers.1.self_attn.kv_b_proj.weight_scale" not in dtypes
    loaded = load_model(folder)
    assert torch.equal(loaded(IDS), model(IDS))
    assert loaded.config.extra["quantization_config"] == model.config.extra["quantization_config"]
    assert loaded.model.layers[1].mlp.gate.weight.dtype == torch.float32
    # float parts follow the requested dtype; int8 weights and their scales do not
    half = load_model(folder, dtype="bfloat16")
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert half.model.layers[0].self_attn.o_proj.weight_scale.dtype == torch.float32
    assert torch.isfinite(half(IDS)).all()


def test_saving_over_a_sharded_checkpoint_replaces_it(tmp_path):
    save_model(tiny_model(), tmp_path / "q", max_shard_bytes=20_000)
    assert (tmp_path / "q" / INDEX_FILE).exists()
    _, model = saved(tmp_path / "q")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["config.json", SINGLE_FILE]
    assert torch.equal(load_model(tmp_path / "q")(IDS), model(IDS))


def test_save_quantized_needs_a_quantized_model(tmp_path):
    error(lambda: save_quantized(tiny_model(), tmp_path / "q"), "quantize_int8")
    assert not (tmp_path / "q").exists()


def test_a_missing_scale_is_named(tmp_path):
    folder, _ = saved(tmp_path / "q")
    edit_tensors(folder / SINGLE_FILE, lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight_scale"))
    error(lambda: load_model(folder), "missing tensor model.layers.1.mlp.experts.3.up_proj.weight_scale")


def test_an_int8_weight_stored_as_float_is_named(tmp_path):
    folder, _ = saved(tmp_path / "q")
    name = "model.layers.0.self_attn.o_proj.weight"
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({name: t[name].float()}))
    error(lambda: load_model(folder), f"tensor {name} is F32", "I8")


def test_a_scale_of_the_wrong_shape_or_dtype_is_named(tmp_path):
    folder, _ = saved(tmp_path / "q")
    name = "model.layers.2.mlp.shared_experts.gate_proj.weight_scale"
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({name: t[name][:-1].clone()}))
    error(lambda: load_model(folder), f"tensor {name} has shape (15,)", "(16,)")
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({name: torch.ones(16, dtype=torch.float16)}))
    error(lambda: load_model(folder), f"tensor {name} is F16", "F32")


def test_a_quantized_kv_b_proj_is_refused(tmp_path):
    folder, _ = saved(tmp_path / "q")
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({name: t[name].to(torch.int8)}))
    error(lambda: load_model(folder), f"tensor {name} is I8")


def test_a_truncated_file_is_named(tmp_path):
    folder, _ = saved(tmp_path / "q")
    file = folder / SINGLE_FILE
    file.write_bytes(file.read_bytes()[:-100])
    error(lambda: load_model(folder), str(file))


def test_other_bit_widths_and_methods_are_refused(tmp_path):
    folder, _ = saved(tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["bits"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    error(lambda: load_model(folder), "bits=4")
    config["quantization_config"] = {"quant_method": "awq", "bits": 8}
    (folder / "config.json").write_text(json.dumps(config))
    error(lambda: load_model(folder), "quantization_config (awq) is not supported")
