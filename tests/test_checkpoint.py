"""Checkpoints: round trips, dtypes, and every kind of bad folder, file, index and argument giving a clear error."""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import seekmoe.model.checkpoint as ckpt
import seekmoe.model.weights as weights
from seekmoe import CausalLM, CheckpointError, ConfigError, load_model, save_model
from seekmoe.model.weights import INDEX_FILE, SINGLE_FILE, hf_tensors
from tests.conftest import tiny_config, tiny_model

IDS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
SHARD = 20_000  # bytes: the tiny model (~250 kB) splits into a dozen shards
V3 = dict(model_type="deepseek_v3", topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
          norm_topk_prob=True)


def logits(model: CausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def saved(folder: Path, model: CausalLM | None = None, **kwargs) -> Path:
    save_model(model if model is not None else tiny_model(), folder, **kwargs)
    return folder


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


def edit_tensors(file: Path, change) -> None:
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file)


def shard_of(folder: Path, name: str) -> Path:
    return folder / json.loads((folder / INDEX_FILE).read_text())["weight_map"][name]


def error(kind: type[Exception], fn, *parts: str) -> str:
    """Run fn, expect exactly `kind` (never a raw library error), and every part in its message."""
    with pytest.raises(kind) as info:
        fn()
    assert type(info.value) is kind
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    return str(info.value)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


# ---- round trips ---------------------------------------------------------------------------------------------

def test_round_trip_single_file(tmp_path):
    model = tiny_model()
    folder = saved(tmp_path / "ck", model)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SINGLE_FILE]
    loaded = load_model(folder)
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.config.to_dict() == {**model.config.to_dict(), "torch_dtype": "float32", "dtype": "float32"}


def test_round_trip_sharded_with_a_sane_index(tmp_path):
    model = tiny_model()
    folder = saved(tmp_path / "ck", model, max_shard_bytes=SHARD)
    index = json.loads((folder / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / SINGLE_FILE).exists()
    assert shards == sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == {name for name, _ in hf_tensors(model)}
    total = 0
    for shard in shards:
        with safe_open(str(folder / shard), framework="pt") as f:
            assert {n for n, s in index["weight_map"].items() if s == shard} == set(f.keys())
            total += sum(f.get_tensor(n).nbytes for n in f.keys())  # noqa: SIM118
        assert (folder / shard).stat().st_size <= SHARD + 4096  # the data within the limit, plus the header
    assert index["metadata"]["total_size"] == total
    assert torch.equal(logits(load_model(folder)), logits(model))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_load_keeps_the_router_in_float32(tmp_path, dtype):
    model = tiny_model(**V3)
    loaded = load_model(saved(tmp_path / "ck", model), dtype=dtype)
    router = {n for n, _ in loaded.named_parameters() if n.endswith("mlp.gate.weight")}
    assert router
    for name, p in loaded.named_parameters():
        assert p.dtype == (torch.float32 if name in router else getattr(torch, dtype)), name
        if name in router:
            assert torch.equal(p, model.get_parameter(name))
    for name, b in loaded.named_buffers():
        if name.endswith("e_score_correction_bias"):
            assert b.dtype == torch.float32 and torch.equal(b, model.get_buffer(name))
    ref = logits(model)
    assert (logits(loaded).float() - ref).abs().mean() < 0.05 * ref.abs().mean()  # a rare token's expert may flip
    assert loaded.config.torch_dtype == dtype


def test_each_tensor_is_converted_from_its_own_dtype(tmp_path, monkeypatch):
    model = tiny_model()
    folder = saved(tmp_path / "ck", model)
    as_stored = {"model.embed_tokens.weight": torch.bfloat16, "model.norm.weight": torch.float64,
                 "lm_head.weight": torch.float16}
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({n: t[n].to(d) for n, d in as_stored.items()}))
    monkeypatch.setattr(weights, "MAP_BYTES", 1)  # a fresh mapping for every tensor
    loaded = load_model(folder)
    for name, dtype in as_stored.items():
        assert loaded.get_parameter(name).dtype == torch.float32
        assert torch.equal(loaded.get_parameter(name), model.get_parameter(name).to(dtype).float())


@pytest.mark.parametrize("dtype", ["int8", "fp32", "", "float64", torch.bfloat16, None, ["float32"]])
def test_other_dtypes_are_refused(tmp_path, dtype):
    error(CheckpointError, lambda: load_model(saved(tmp_path / "ck"), dtype=dtype), "dtype must be one of",
          "bfloat16", repr(dtype))


def test_tied_embeddings_save_without_the_head_and_load_tied(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    folder = saved(tmp_path / "ck", model)
    with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118
    loaded = load_model(folder, dtype="bfloat16")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    loaded = load_model(folder)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded), logits(model))


def test_v3_multi_token_prediction_layers_are_ignored(tmp_path):
    model = tiny_model(**V3)  # 3 layers: the MTP module is layer 3
    folder = saved(tmp_path / "ck", model)
    mtp = {"model.layers.3.eh_proj.weight": torch.randn(32, 64), "model.layers.3.enorm.weight": torch.ones(32),
           "model.layers.3.self_attn.kv_a_proj_with_mqa.weight": torch.randn(20, 32)}
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update(mtp))
    error(CheckpointError, lambda: load_model(folder), "unexpected tensor model.layers.3.", "(and 2 more)")
    edit_config(folder, num_nextn_predict_layers=1)
    assert torch.equal(logits(load_model(folder)), logits(model))
    edit_config(folder, num_nextn_predict_layers="1")
    error(ConfigError, lambda: load_model(folder), "num_nextn_predict_layers must be an int >= 0, got '1'")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickled something")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    load_model(folder)
    for p in folder.glob("model*"):
        p.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    error(CheckpointError, lambda: load_model(folder), "no model.safetensors", "pytorch_model.bin is a pickle")


# ---- bad folders and configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", None, 123, b"bytes", "x" * 5000, "nul\0byte"])
def test_bad_paths_are_refused(path):
    error(CheckpointError, lambda: load_model(path))


def test_folder_errors_name_the_folder_or_file(tmp_path):
    error(CheckpointError, lambda: load_model(tmp_path / "nope"), "nope: not a checkpoint folder")
    (tmp_path / "file").write_text("{}")
    error(CheckpointError, lambda: load_model(tmp_path / "file"), "file: not a checkpoint folder")
    folder = saved(tmp_path / "ck")
    (folder / SINGLE_FILE).unlink()
    error(CheckpointError, lambda: load_model(folder), str(folder), f"no {SINGLE_FILE} or {INDEX_FILE}")
    (folder / SINGLE_FILE).mkdir()  # a folder where the file should be
    error(CheckpointError, lambda: load_model(folder), f"no {SINGLE_FILE}")
    (folder / "config.json").unlink()
    error(ConfigError, lambda: load_model(folder), "config.json: missing")


@pytest.mark.parametrize("text, parts", [
    ("{not json", ["config.json: not valid JSON"]),
    ("[1, 2]", ["config.json", "must be a JSON object, got list"]),
    ('"a string"', ["config.json", "must be a JSON object, got str"]),
    ("", ["config.json: not valid JSON"]),
    ("\xff\xfe", ["config.json"]),
])
def test_config_that_is_not_a_json_object(tmp_path, text, parts):
    folder = saved(tmp_path / "ck")
    (folder / "config.json").write_text(text, encoding="latin-1")
    error(ConfigError, lambda: load_model(folder), *parts)


def test_config_missing_a_required_field(tmp_path):
    folder = saved(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["hidden_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    error(ConfigError, lambda: load_model(folder), "config.json", "missing required field 'hidden_size'")


@pytest.mark.parametrize("change, tensor", [
    (dict(hidden_size=48), "model.embed_tokens.weight"),
    (dict(vocab_size=98), "model.embed_tokens.weight"),
    (dict(moe_intermediate_size=24), "model.layers.1.mlp.experts.0.gate_proj.weight"),
    (dict(n_routed_experts=4, num_experts_per_tok=2), "model.layers.1.mlp.gate.weight"),
    (dict(n_routed_experts=10**9), "model.layers.1.mlp.gate.weight"),  # huge: found at once, nothing allocated
])
def test_config_that_does_not_match_the_weights(tmp_path, change, tensor):
    folder = saved(tmp_path / "ck")
    edit_config(folder, **change)
    error(CheckpointError, lambda: load_model(folder), f"tensor {tensor} has shape", "config does not match")


@pytest.mark.parametrize("layers", [4, 10**9])
def test_config_with_more_layers_than_the_weights(tmp_path, layers):
    folder = saved(tmp_path / "ck")
    edit_config(folder, num_hidden_layers=layers)
    error(CheckpointError, lambda: load_model(folder), f"num_hidden_layers={layers}", "hold 3 layers")


def test_config_with_fewer_layers_than_the_weights(tmp_path):
    folder = saved(tmp_path / "ck")
    edit_config(folder, num_hidden_layers=2)
    error(CheckpointError, lambda: load_model(folder), "unexpected tensor model.layers.2.", "config does not match")


def test_fp8_quantized_checkpoint_is_refused(tmp_path):
    folder = saved(tmp_path / "ck")
    edit_config(folder, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]})
    error(CheckpointError, lambda: load_model(folder), "quantization_config (fp8) is not supported")


# ---- bad weight files --------------------------------------------------------------------------------------------

def test_missing_tensor_is_named(tmp_path):
    folder = saved(tmp_path / "ck")
    edit_tensors(folder / SINGLE_FILE, lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"))
    error(CheckpointError, lambda: load_model(folder), "missing tensor model.layers.1.mlp.experts.3.up_proj.weight")


def test_unexpected_tensor_is_named(tmp_path):
    folder = saved(tmp_path / "ck")
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.zeros(2)}))
    error(CheckpointError, lambda: load_model(folder), SINGLE_FILE, "unexpected tensor model.layers.0.mlp.extra.weight")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool, torch.float8_e4m3fn])
def test_non_float_tensor_is_refused(tmp_path, dtype):
    folder = saved(tmp_path / "ck")
    edit_tensors(folder / SINGLE_FILE, lambda t: t.update({"model.norm.weight": torch.ones(32).to(dtype)}))
    error(CheckpointError, lambda: load_model(folder), "tensor model.norm.weight is", "only float weights")


class Exploit:
    """Unpickling this would create a file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def corrupt(kind: str, data: bytes, tmp_path: Path) -> bytes:
    return {
        "truncated": lambda: data[:-100],
        "header cut": lambda: data[:20],
        "empty": lambda: b"",
        "random bytes": lambda: os.urandom(4096),
        "pickle": lambda: pickle.dumps({"weights": Exploit(tmp_path / "pwned")}),
        "torch.save": lambda: _torch_save_bytes(tmp_path),
        "huge header length": lambda: struct.pack("<Q", 2**62) + data[8:],
        "header past the end": lambda: struct.pack("<Q", len(data)) + data[8:],
        "header not json": lambda: struct.pack("<Q", 8) + b"not json" + data[16:],
        "header a list": lambda: struct.pack("<Q", 8) + b"[1,2,3] " + data[16:],
        "offsets past the end": lambda: _bad_offsets(data),
    }[kind]()


def _torch_save_bytes(tmp_path: Path) -> bytes:
    torch.save({"model.norm.weight": torch.ones(3)}, tmp_path / "t.pt")
    return (tmp_path / "t.pt").read_bytes()


def _bad_offsets(data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**12
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


@pytest.mark.parametrize("kind", ["truncated", "header cut", "empty", "random bytes", "pickle", "torch.save",
                                  "huge header length", "header past the end", "header not json", "header a list",
                                  "offsets past the end"])
def test_a_file_that_is_not_safetensors_is_refused(tmp_path, kind):
    folder = saved(tmp_path / "ck")
    file = folder / SINGLE_FILE
    file.write_bytes(corrupt(kind, file.read_bytes(), tmp_path))
    error(CheckpointError, lambda: load_model(folder), f"{file}: not a readable safetensors file")
    assert not (tmp_path / "pwned").exists()


def test_a_file_without_tensors_is_refused(tmp_path):
    folder = saved(tmp_path / "ck")
    save_file({}, folder / SINGLE_FILE)
    error(CheckpointError, lambda: load_model(folder), "num_hidden_layers=3, but the weights hold 0 layers")


# ---- bad indexes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{oops", "", "[]", '{"metadata": {}}', '{"weight_map": []}', '{"weight_map": {}}',
                                  '{"weight_map": {"model.norm.weight": 3}}'])
def test_index_that_is_not_an_index(tmp_path, text):
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    (folder / INDEX_FILE).write_text(text)
    error(CheckpointError, lambda: load_model(folder), f"{folder / INDEX_FILE}: ")


def test_huge_index_is_refused_unread(tmp_path):
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    with open(folder / INDEX_FILE, "r+b") as f:
        f.truncate(weights.MAX_INDEX_BYTES + 1)  # sparse: costs no disk
    error(CheckpointError, lambda: load_model(folder), INDEX_FILE, "more than an index can be")


@pytest.mark.parametrize("where", ["../outside.safetensors", "ABSOLUTE", "sub/model.safetensors", "..", ".", ""])
def test_index_pointing_outside_the_folder_is_refused(tmp_path, where):
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    outside = saved(tmp_path / "elsewhere") / SINGLE_FILE  # a complete, valid file: following the path would load
    (tmp_path / "outside.safetensors").write_bytes(outside.read_bytes())
    (folder / "sub").mkdir()
    (folder / "sub" / SINGLE_FILE).write_bytes(outside.read_bytes())
    where = str(outside) if where == "ABSOLUTE" else where
    index = json.loads((folder / INDEX_FILE).read_text())
    index["weight_map"] = dict.fromkeys(index["weight_map"], where)
    (folder / INDEX_FILE).write_text(json.dumps(index))
    error(CheckpointError, lambda: load_model(folder), f"points to {where!r}", "not a file name in the checkpoint")


def test_index_listing_a_missing_shard(tmp_path):
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    shard = shard_of(folder, "model.norm.weight")
    shard.unlink()
    error(CheckpointError, lambda: load_model(folder), f"{shard}: missing (listed in {INDEX_FILE})")


def test_index_listing_a_tensor_its_shard_lacks(tmp_path):
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    index = json.loads((folder / INDEX_FILE).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.norm.weight"] = first
    (folder / INDEX_FILE).write_text(json.dumps(index))
    error(CheckpointError, lambda: load_model(folder), f"{first}: has no tensor model.norm.weight")


def test_index_with_a_broken_shard(tmp_path):
    folder = saved(tmp_path / "ck", max_shard_bytes=SHARD)
    shard = shard_of(folder, "model.norm.weight")
    shard.write_bytes(shard.read_bytes()[:-7])
    error(CheckpointError, lambda: load_model(folder), f"{shard}: not a readable safetensors file")


# ---- saving --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shard", [None, SHARD])
@pytest.mark.parametrize("fail_at", ["first weights", "last weights", "config.json"])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, shard, fail_at):
    kwargs = {} if shard is None else {"max_shard_bytes": shard}
    old = tiny_model(seed=0)
    folder = saved(tmp_path / "ck", old, **kwargs)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    n_weights = len(list(folder.glob("*.safetensors")))
    writes, syncs, real_fsync = [], [], os.fsync

    def disk_full(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) == (1 if fail_at == "first weights" else n_weights):
            Path(filename).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        save_file(tensors, filename, metadata=metadata)

    def failing_fsync(fd):
        syncs.append(fd)
        if len(syncs) == len(before):  # one per staged file; config.json is staged last
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    if fail_at == "config.json":
        monkeypatch.setattr(ckpt.os, "fsync", failing_fsync)
    else:
        monkeypatch.setattr(weights, "save_file", disk_full)
    new = tiny_model(seed=1)
    error(CheckpointError, lambda: save_model(new, folder, **kwargs), str(folder), "cannot save the checkpoint")
    assert len(syncs) == (len(before) if fail_at == "config.json" else 0)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing renamed, nothing left over
    assert torch.equal(logits(load_model(folder)), logits(old))
    saved(folder, new, **kwargs)  # and the next save succeeds
    assert torch.equal(logits(load_model(folder)), logits(new))


@pytest.mark.parametrize("first, second", [(SHARD, None), (None, SHARD), (SHARD // 2, SHARD)])
def test_resaving_replaces_the_old_layout(tmp_path, first, second):
    folder = tmp_path / "ck"
    saved(folder, tiny_model(seed=0), **({} if first is None else {"max_shard_bytes": first}))
    (folder / "README.md").write_text("mine")
    new = tiny_model(seed=1)
    saved(folder, new, **({} if second is None else {"max_shard_bytes": second}))
    names = sorted(p.name for p in folder.iterdir())
    if second is None:
        assert names == ["README.md", "config.json", SINGLE_FILE]
    else:
        listed = set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values())
        assert names == sorted({"README.md", "config.json", INDEX_FILE, *listed})
    assert leftovers(folder) == []
    assert torch.equal(logits(load_model(folder)), logits(new))


def test_save_creates_parent_folders_and_leaves_no_temporaries(tmp_path):
    folder = saved(tmp_path / "a" / "b" / "ck", max_shard_bytes=SHARD)
    assert leftovers(folder) == []
    assert load_model(folder) is not None


def test_a_huge_shard_size_means_one_file(tmp_path):
    folder = saved(tmp_path / "ck", max_shard_bytes=2**80)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SINGLE_FILE]


@pytest.mark.parametrize("size", [0, -1, "1GB", 1.5, True, None])
def test_save_refuses_a_bad_shard_size(tmp_path, size):
    error(CheckpointError, lambda: save_model(tiny_model(), tmp_path / "ck", max_shard_bytes=size),
          "max_shard_bytes must be an int > 0")
    assert not (tmp_path / "ck").exists()


def test_save_refuses_what_is_not_a_model(tmp_path):
    error(CheckpointError, lambda: save_model(tiny_model().state_dict(), tmp_path / "ck"), "needs a seekmoe CausalLM")
    error(CheckpointError, lambda: save_model(None, tmp_path / "ck"), "got NoneType")
    with torch.device("meta"):
        meta = CausalLM(tiny_config())
    error(CheckpointError, lambda: save_model(meta, tmp_path / "ck"), "meta device")
    error(CheckpointError, lambda: save_model(tiny_model().double(), tmp_path / "ck"), "dtype torch.float64")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("path", ["", None, 7])
def test_save_refuses_a_bad_path(path):
    error(CheckpointError, lambda: save_model(tiny_model(), path), "checkpoint path must be")


def test_save_onto_a_file_keeps_the_file(tmp_path):
    (tmp_path / "precious").write_text("keep me")
    error(CheckpointError, lambda: save_model(tiny_model(), tmp_path / "precious"), "exists and is not a folder")
    assert (tmp_path / "precious").read_text() == "keep me"
    error(CheckpointError, lambda: save_model(tiny_model(), tmp_path / "precious" / "ck"), "cannot save")


def test_saved_files_are_readable_by_others(tmp_path):
    save_model(tiny_model(), tmp_path / "ck")
    for f in (tmp_path / "ck").iterdir():
        assert f.stat().st_mode & 0o044 == 0o044, f.name


def test_write_folder_is_all_or_nothing(tmp_path):
    from seekmoe.files import write_folder

    final = tmp_path / "out"
    write_folder(final, lambda tmp: (tmp / "a.txt").write_text("old"))
    assert (final / "a.txt").read_text() == "old"

    def fails(tmp):
        (tmp / "a.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder(final, fails)
    assert (final / "a.txt").read_text() == "old"  # the old folder is untouched
    write_folder(final, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries, no old copy left
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced whole, not merged


@pytest.mark.parametrize("spelling", ["as saved", "null"])
def test_transformers_v3_checkpoint_without_routing_fields_loads(tmp_path, spelling):
    """transformers' DeepseekV3 config has no topk_method / scoring_func (its model always routes sigmoid + noaux_tc
    with e_score_correction_bias): its config.json leaves them out, or null. They mean V3 routing here too."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.DeepseekV3Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=12, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=4, topk_group=2, first_k_dense_replace=1, max_position_embeddings=128)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    hf.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written.get("topk_method") is None and written.get("scoring_func") is None
    if spelling == "null":
        edit_config(tmp_path, topk_method=None, scoring_func=None)

    ours = load_model(tmp_path)
    assert (ours.config.topk_method, ours.config.scoring_func) == ("noaux_tc", "sigmoid")
    with torch.no_grad():
        assert (ours(IDS) - hf(IDS).logits).abs().max().item() <= 1e-4
