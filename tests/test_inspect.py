"""seekmoe.model.inspect: parameter counts, layout and KV-cache bytes from a config alone."""

from __future__ import annotations

import ast
import dataclasses
import json
from importlib import resources
from pathlib import Path

import pytest

import seekmoe.model.inspect as inspect_mod
from seekmoe.model.config import ModelConfig
from seekmoe.model.inspect import binary_bytes, format_report, human, inspect_config, layer_layout
from tests.conftest import run_cli

# Published (total, active) parameter counts: DeepSeek-V2 paper (V2, V2-Lite), DeepSeek-V3 report.
PUBLISHED = {
    "deepseek-v2-lite": (15.7e9, 2.4e9),
    "deepseek-v2": (236e9, 21e9),
    "deepseek-v3": (671e9, 37e9),
}

# Small enough to count by hand: layer 0 dense (first_k_dense_replace), then MoE every 2nd layer.
TINY = {
    "vocab_size": 97, "hidden_size": 16, "intermediate_size": 40, "num_hidden_layers": 5,
    "num_attention_heads": 3, "kv_lora_rank": 8, "q_lora_rank": 12, "qk_nope_head_dim": 6, "qk_rope_head_dim": 4,
    "v_head_dim": 5, "moe_intermediate_size": 7, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "first_k_dense_replace": 1, "moe_layer_freq": 2, "topk_method": "noaux_tc",
    "scoring_func": "sigmoid", "n_group": 2, "topk_group": 1, "model_type": "deepseek_v3", "torch_dtype": "float32",
}


def bundled(name: str) -> ModelConfig:
    text = resources.files("seekmoe").joinpath("configs", f"{name}.json").read_text(encoding="utf-8")
    return ModelConfig.from_dict(json.loads(text))


def tiny(**overrides) -> ModelConfig:
    return ModelConfig.from_dict({**TINY, **overrides})


def reference_counts(c: dict) -> tuple[int, int]:
    """(total, active) from a flat list of every weight the model holds, written out from the shapes."""
    d, h, qk = c["hidden_size"], c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    weights: list[tuple[str, tuple[int, ...]]] = [("embed_tokens", (c["vocab_size"], d)), ("norm", (d,))]
    if not c.get("tie_word_embeddings"):
        weights.append(("lm_head", (c["vocab_size"], d)))
    for i in range(c["num_hidden_layers"]):
        if c.get("q_lora_rank") is None:
            weights.append(("q_proj", (h * qk, d)))
        else:
            r = c["q_lora_rank"]
            weights += [("q_a_proj", (r, d)), ("q_a_layernorm", (r,)), ("q_b_proj", (h * qk, r))]
        kv = c["kv_lora_rank"]
        weights += [
            ("kv_a_proj_with_mqa", (kv + c["qk_rope_head_dim"], d)),
            ("kv_a_layernorm", (kv,)),
            ("kv_b_proj", (h * (c["qk_nope_head_dim"] + c["v_head_dim"]), kv)),
            ("o_proj", (d, h * c["v_head_dim"])),
            ("input_layernorm", (d,)),
            ("post_attention_layernorm", (d,)),
        ]
        moe = i >= c["first_k_dense_replace"] and i % c["moe_layer_freq"] == 0
        f = c["moe_intermediate_size"] if moe else c["intermediate_size"]
        experts = (c["n_shared_experts"] + c["n_routed_experts"]) if moe else 1
        for _ in range(experts):
            weights += [("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))]
        if moe:
            weights.append(("gate", (c["n_routed_experts"], d)))
            if c["topk_method"] == "noaux_tc":
                weights.append(("e_score_correction_bias", (c["n_routed_experts"],)))
    total = sum(_numel(s) for _, s in weights)
    n_moe = sum(i >= c["first_k_dense_replace"] and i % c["moe_layer_freq"] == 0 for i in range(c["num_hidden_layers"]))
    idle_experts = n_moe * (c["n_routed_experts"] - c["num_experts_per_tok"]) * 3 * d * c["moe_intermediate_size"]
    lm_head = c["vocab_size"] * d  # always computed; with tied embeddings it is the table itself
    active = total - c["vocab_size"] * d - idle_experts + (lm_head if c.get("tie_word_embeddings") else 0)
    return total, active


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_figures_within_3_percent(name):
    report = inspect_config(bundled(name))
    total, active = PUBLISHED[name]
    assert report.total == pytest.approx(total, rel=0.03)
    assert report.active == pytest.approx(active, rel=0.03)


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None}, {"tie_word_embeddings": True},
                                       {"topk_method": "greedy", "scoring_func": "softmax", "n_group": None,
                                        "topk_group": None, "n_shared_experts": 0, "moe_layer_freq": 1}])
def test_tiny_counts_match_per_module_sum(overrides):
    report = inspect_config(tiny(**overrides))
    assert (report.total, report.active) == reference_counts({**TINY, **overrides})


def test_tied_embeddings_counted_once():
    untied, tied = inspect_config(tiny()), inspect_config(tiny(tie_word_embeddings=True))
    table = TINY["vocab_size"] * TINY["hidden_size"]
    assert untied.total - tied.total == table
    assert tied.active == untied.active  # the lm_head matmul happens either way


def test_q_lora_rank_changes_attention_as_the_shapes_say():
    c = TINY
    h, d, qk, r = c["num_attention_heads"], c["hidden_size"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"], 12
    low_rank = {x.name: x for x in inspect_config(tiny(q_lora_rank=r)).components}["attention"]
    full = {x.name: x for x in inspect_config(tiny(q_lora_rank=None)).components}["attention"]
    per_layer = (r * d + r + h * qk * r) - h * qk * d  # q_a_proj + q_a_layernorm + q_b_proj - q_proj
    assert low_rank.total - full.total == c["num_hidden_layers"] * per_layer
    assert low_rank.active == low_rank.total and full.active == full.total


def test_counts_match_the_model():
    """The real model's stored tensors, so the shapes above are the model's and not only ours."""
    from seekmoe.model.model import CausalLM

    for overrides in ({}, {"q_lora_rank": None, "tie_word_embeddings": True}):
        cfg = tiny(**overrides)
        model = CausalLM(cfg)  # tiny: a CPU build is faster than the first meta-device one
        stored = sum(p.numel() for p in model.parameters())
        stored += sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
        assert inspect_config(cfg).total == stored


def test_mtp_layers_not_counted():
    cfg = bundled("deepseek-v3")
    report = inspect_config(cfg)
    assert "num_nextn_predict_layers" in report.not_counted
    without = dataclasses.replace(cfg, extra={k: v for k, v in cfg.extra.items() if k != "num_nextn_predict_layers"})
    assert inspect_config(without).total == report.total and inspect_config(without).not_counted == ""


def test_layout_compact_ranges():
    assert layer_layout(bundled("deepseek-v2-lite")) == "layers 0: dense MLP; 1-26: MoE (64 routed, top-6, 2 shared)"
    assert layer_layout(bundled("deepseek-v3")) == "layers 0-2: dense MLP; 3-60: MoE (256 routed, top-8, 1 shared)"
    assert layer_layout(tiny(n_shared_experts=0)) == "layers 0-1, 3: dense MLP; 2, 4: MoE (4 routed, top-2)"
    assert layer_layout(tiny(n_routed_experts=None)) == "layers 0-4: dense MLP"


def test_dense_model_has_no_expert_params():
    report = inspect_config(tiny(n_routed_experts=None))
    parts = {c.name: c for c in report.components}
    assert parts["routed experts"].total == parts["shared experts"].total == parts["router"].total == 0
    assert parts["dense MLP"].total == TINY["num_hidden_layers"] * 3 * TINY["hidden_size"] * TINY["intermediate_size"]


def test_kv_cache_bytes():
    kv = inspect_config(bundled("deepseek-v2")).kv_cache
    assert (kv.dtype, kv.bytes_per_element) == ("bfloat16", 2)
    assert kv.mla_bytes_per_token == 60 * (512 + 64) * 2
    assert kv.mha_bytes_per_token == 60 * 128 * ((128 + 64) + 128) * 2  # K has qk_head_dim, V has v_head_dim
    assert kv.ratio == pytest.approx(kv.mha_bytes_per_token / kv.mla_bytes_per_token)

    kv = inspect_config(tiny()).kv_cache  # float32
    assert kv.bytes_per_element == 4
    assert kv.mla_bytes_per_token == 5 * (8 + 4) * 4
    assert kv.mha_bytes_per_token == 5 * 3 * (10 + 5) * 4
    assert inspect_config(tiny(torch_dtype=None)).kv_cache.bytes_per_element == 2  # bfloat16 by default


def test_format_report():
    report = inspect_config(bundled("deepseek-v2-lite"))
    text = format_report(report)
    assert f"{report.total:,}" in text and "15.71B" in text
    assert f"{report.active:,}" in text and "2.45B" in text
    assert "convention:" in text and "input embedding table" in text
    assert report.layout in text
    assert "31,104 B" in text and "bfloat16 (2 bytes/element)" in text
    assert human(15_706_484_224) == "15.71B" and human(112_640) == "112.64K" and human(0) == "0"


def test_report_json_round_trips():
    report = inspect_config(bundled("deepseek-v3"))
    d = json.loads(report.to_json())
    assert d["total"] == report.total and d["active"] == report.active
    assert sum(c["total"] for c in d["components"]) == d["total"]
    assert d["kv_cache"]["mla_bytes_per_token"] == 61 * 576 * 2


def test_inspect_does_not_import_torch():
    tree = ast.parse(Path(inspect_mod.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in imported


# ---- memory ------------------------------------------------------------------------------------------------
# TINY by hand: layers 2 and 4 are MoE, 0, 1 and 3 dense. Per layer, attention is q_a 192 + q_a_layernorm 12 +
# q_b 360 + kv_a 192 + kv_a_layernorm 8 + kv_b 264 + o 240 = 1,268. One expert is 3 * 16 * 7 = 336.
TINY_TOTAL = (2 * 97 * 16 + 16  # embedding table, lm_head, final norm
              + 5 * (1268 + 2 * 16)  # attention and the two norms of each layer
              + 3 * 3 * 16 * 40  # dense MLPs
              + 2 * (336 + 4 * 336 + 4 * 16 + 4))  # MoE layers: shared, routed, router and its bias
TINY_ROUTED = 2 * 4 * 336
TINY_INT8 = 5 * (192 + 360 + 192 + 240) + 3 * 3 * 16 * 40 + 2 * 5 * 336 + 97 * 16  # projections, experts, lm_head


def test_memory_tiny_by_hand():
    assert TINY_TOTAL == inspect_config(tiny()).total == 18_876
    m = inspect_config(tiny(), ranks=2, context=10).memory
    expert = 16 * (TINY_ROUTED // 2 + 18_876 - TINY_ROUTED)  # half the routed experts, all the rest
    assert m.train_per_rank == {"ddp": 16 * 18_876, "fsdp": 8 * 18_876, "expert": expert}
    assert expert == 280_512 and m.expert_note == ""
    assert m.bf16 == 2 * 18_876
    assert m.int8 == TINY_INT8 + 2 * (18_876 - TINY_INT8) == 22_160  # embedding, routers, norms, kv_b_proj in bf16
    assert (m.kv_mla, m.kv_mha) == (10 * 5 * (8 + 4) * 4, 10 * 5 * 3 * (10 + 5) * 4)  # float32 config
    d = m.to_dict()
    assert d["serving"]["bfloat16"]["per_rank"] == 18_876 and d["serving"]["int8"]["per_rank"] == 11_080


def test_memory_one_rank_is_the_whole_model():
    m = inspect_config(tiny(), ranks=1, context=1).memory
    assert m.train_per_rank == dict.fromkeys(("ddp", "fsdp", "expert"), 16 * TINY_TOTAL)


def test_memory_expert_layout_needs_divisible_experts():
    m = inspect_config(tiny(), ranks=5).memory  # 4 routed experts
    assert m.train_per_rank["expert"] is None
    assert m.expert_note == "n_routed_experts (4) not divisible by 5"
    assert m.train_per_rank["fsdp"] == -(-16 * TINY_TOTAL // 5)  # a shard is rounded up, not down
    assert "expert  n_routed_experts (4) not divisible by 5" in format_report(inspect_config(tiny(), ranks=5))
    dense = inspect_config(tiny(n_routed_experts=None), ranks=2).memory
    assert dense.train_per_rank["expert"] is None and dense.expert_note == "no routed experts"
    with pytest.raises(ValueError, match="ranks and context must be >= 1"):
        inspect_config(tiny(), ranks=0)


def test_memory_text_follows_the_kv_section():
    report = inspect_config(bundled("deepseek-v2-lite"))
    text = format_report(report)
    assert text.index("MHA / MLA: 8.9x") < text.index("Memory over 8 ranks (--ranks)")
    assert text.splitlines()[-1].split() == ["MHA", "with", "the", "same", "heads", "1.05", "GiB"]  # 4096 tokens
    for b in (*report.memory.train_per_rank.values(), report.memory.bf16, report.memory.int8, 4096 * 31_104):
        assert binary_bytes(b) in text
    assert binary_bytes(2**40 * 3 // 2) == "1.50 TiB" and binary_bytes(1000) == "1000 B"


def test_cli_ranks_and_context(capsys):
    rc, out, err = run_cli(capsys, "inspect", "deepseek-v2-lite", "--ranks", "4", "--context", "100", "--json")
    assert rc == 0 and err == ""
    m = json.loads(out)["memory"]
    assert (m["ranks"], m["context"], m["train_bytes_per_param"]) == (4, 100, 16)
    assert m["train_per_rank"]["fsdp"] == 4 * 15_706_484_224  # 16 bytes over 4 ranks
    assert m["kv_cache"] == {"tokens": 100, "mla": 100 * 31_104, "mha": 100 * 276_480}

    rc, out, _ = run_cli(capsys, "inspect", "deepseek-v2-lite", "--ranks", "3")
    assert rc == 0 and "Memory over 3 ranks" in out and "n_routed_experts (64) not divisible by 3" in out


@pytest.mark.parametrize("flag, value", [("--ranks", "0"), ("--ranks", "abc"), ("--context", "-1"),
                                         ("--context", "2.5")])
def test_cli_rejects_bad_ranks_and_context(capsys, flag, value):
    rc, out, err = run_cli(capsys, "inspect", "deepseek-v2-lite", flag, value)
    assert rc == 2 and out == ""
    assert f"error: argument {flag}: must be a positive integer, got {value!r}" in err
