"""ModelConfig: published configs round-trip, invalid values name the field, both rope spellings read."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from seekmoe import ConfigError, ModelConfig
from tests.conftest import TINY

PUBLISHED = ["deepseek-v2-lite", "deepseek-v2", "deepseek-v3"]


def published(name: str) -> dict:
    return json.loads(resources.files("seekmoe").joinpath("configs", f"{name}.json").read_text())


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_config_round_trips(name, tmp_path):
    raw = published(name)
    cfg = ModelConfig.from_dict(raw)
    cfg.save_json(tmp_path / "config.json")
    again = ModelConfig.from_pretrained(tmp_path)
    assert again == cfg
    written = json.loads((tmp_path / "config.json").read_text())
    # every published key is written back with its value (rope_scaling gains only the explicit "type")
    for key, value in raw.items():
        assert written[key] == value, key
    assert written["rope_parameters"]["rope_type"] == "yarn"
    assert written["rope_parameters"]["rope_theta"] == raw["rope_theta"]


def test_published_values_are_read_into_fields():
    v3 = ModelConfig.from_dict(published("deepseek-v3"))
    assert (v3.topk_method, v3.scoring_func, v3.n_group, v3.topk_group) == ("noaux_tc", "sigmoid", 8, 4)
    assert v3.rope_scaling["factor"] == 40 and v3.rope_interleave is True
    assert v3.extra["num_nextn_predict_layers"] == 1  # unknown keys are kept
    lite = ModelConfig.from_dict(published("deepseek-v2-lite"))
    assert lite.q_lora_rank is None and lite.is_moe_layer(1) and not lite.is_moe_layer(0)


def test_transformers5_rope_parameters_are_read():
    raw = published("deepseek-v2-lite")
    yarn = raw.pop("rope_scaling")
    theta = raw.pop("rope_theta")
    raw["rope_parameters"] = {**{k: v for k, v in yarn.items() if k != "type"}, "rope_type": "yarn",
                              "rope_theta": theta}
    assert ModelConfig.from_dict(raw) == ModelConfig.from_dict(published("deepseek-v2-lite"))
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 50000.0}
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_scaling is None and cfg.rope_theta == 50000.0


def test_disagreeing_rope_spellings_are_refused():
    raw = published("deepseek-v2")
    raw["rope_parameters"] = {**raw["rope_scaling"], "factor": 8, "rope_type": "yarn"}
    with pytest.raises(ConfigError, match="disagree"):
        ModelConfig.from_dict(raw)


def test_dtype_key_of_transformers5_is_read():
    cfg = ModelConfig.from_dict({**TINY, "dtype": "bfloat16"})
    assert cfg.torch_dtype == "bfloat16"


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"kv_lora_rank": 0}, "kv_lora_rank", "> 0"),
        ({"kv_lora_rank": -3}, "kv_lora_rank", "> 0"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok", "<= n_routed_experts"),
        ({"n_group": 3}, "n_routed_experts", "divisible by n_group"),
        ({"n_group": 2, "topk_group": 3}, "topk_group", "<= n_group"),
        ({"topk_method": "best"}, "topk_method", "one of"),
        ({"scoring_func": "relu"}, "scoring_func", "one of"),
        ({"topk_method": "group_limited_greedy", "n_group": 8, "topk_group": 1, "num_experts_per_tok": 2},
         "topk_group", "num_experts_per_tok"),
        ({"hidden_size": "32"}, "hidden_size", "int"),
        ({"hidden_size": True}, "hidden_size", "int"),
        ({"hidden_size": 0}, "hidden_size", "> 0"),
        ({"num_experts_per_tok": 10**12}, "num_experts_per_tok", "<= n_routed_experts"),
        ({"qk_rope_head_dim": 3}, "qk_rope_head_dim", "even"),
        ({"q_lora_rank": 0}, "q_lora_rank", "> 0"),
        ({"first_k_dense_replace": 9}, "first_k_dense_replace", "num_hidden_layers"),
        ({"rope_scaling": {"type": "linear", "factor": 2}}, "rope_scaling.type", "yarn"),
        ({"rope_scaling": {"type": "yarn"}}, "rope_scaling.factor", ">= 1"),
        ({"rope_scaling": "yarn"}, "rope_scaling", "object"),
        ({"hidden_act": "gelu"}, "hidden_act", "silu"),
        ({"eos_token_id": 500}, "eos_token_id", "vocab_size"),
        ({"torch_dtype": "float8"}, "torch_dtype", "one of"),
        ({"model_type": "llama"}, "model_type", "one of"),
        ({"routed_scaling_factor": float("nan")}, "routed_scaling_factor", "finite"),
        ({"moe_intermediate_size": None}, "moe_intermediate_size", "MoE"),
    ],
)
def test_invalid_values_name_the_field(change, field, expected):
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({**TINY, **change})
    assert field in str(err.value) and expected in str(err.value)


def test_missing_required_field_is_named():
    raw = dict(TINY)
    del raw["kv_lora_rank"]
    with pytest.raises(ConfigError, match="missing required field 'kv_lora_rank'"):
        ModelConfig.from_dict(raw)


@pytest.mark.parametrize("bad", [[], "config", 3, None])
def test_non_object_config_is_refused(bad):
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_dict(bad)


def test_unknown_keys_are_kept_not_fatal(tmp_path):
    cfg = ModelConfig.from_dict({**TINY, "my_team_note": {"a": [1, 2]}, "aux_loss_alpha": 0.003})
    assert cfg.extra == {"my_team_note": {"a": [1, 2]}, "aux_loss_alpha": 0.003}
    cfg.save_json(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["my_team_note"] == {"a": [1, 2]}


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]"])
def test_unreadable_config_file_names_the_file(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"config\.json"):
        ModelConfig.from_pretrained(tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ModelConfig.from_pretrained(tmp_path / "nowhere")


def test_dense_model_needs_no_moe_fields():
    cfg = ModelConfig.from_dict({k: v for k, v in TINY.items()
                                 if k not in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")})
    assert not cfg.is_moe and not any(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))


def test_model_type_follows_routing_when_absent():
    assert ModelConfig.from_dict({**TINY, "topk_method": "noaux_tc", "scoring_func": "sigmoid"}).model_type == (
        "deepseek_v3")
    assert ModelConfig.from_dict(TINY).model_type == "deepseek_v2"


# transformers' DeepseekV3 always routes sigmoid + noaux_tc and has no such fields: it saves V3 configs without them
# (transformers 5.24) or with null (earlier 5.x). Either way they are the V3 routing, not our V2 defaults.
@pytest.mark.parametrize("spelling", ["null", "absent"])
def test_v3_routing_fields_left_null_or_out_take_the_v3_defaults(spelling):
    raw = {**TINY, "model_type": "deepseek_v3", "n_group": 2, "topk_group": 1, "topk_method": None,
           "scoring_func": None}
    if spelling == "absent":
        del raw["topk_method"], raw["scoring_func"]
    cfg = ModelConfig.from_dict(raw)
    assert (cfg.topk_method, cfg.scoring_func) == ("noaux_tc", "sigmoid")
    assert cfg.to_dict()["topk_method"] == "noaux_tc" and cfg.to_dict()["scoring_func"] == "sigmoid"


def test_v2_null_fields_take_the_v2_defaults():
    nulls = {"topk_method": None, "scoring_func": None, "norm_topk_prob": None, "routed_scaling_factor": None,
             "first_k_dense_replace": None, "moe_layer_freq": None, "rope_theta": None, "rope_interleave": None,
             "max_position_embeddings": None, "rms_norm_eps": None, "tie_word_embeddings": None,
             "hidden_act": None, "attention_bias": None, "initializer_range": None}
    cfg = ModelConfig.from_dict({**TINY, "model_type": "deepseek_v2", **nulls})
    absent = ModelConfig.from_dict({k: v for k, v in TINY.items() if k not in nulls} | {"model_type": "deepseek_v2"})
    assert cfg == absent
    assert (cfg.topk_method, cfg.scoring_func, cfg.norm_topk_prob, cfg.routed_scaling_factor) == (
        "greedy", "softmax", False, 1.0)
    # a null model_type is left out too: the routing decides it, as when absent
    assert ModelConfig.from_dict({**TINY, "model_type": None, "topk_method": "noaux_tc"}).model_type == "deepseek_v3"


def test_null_keeps_its_meaning_where_the_field_allows_null():
    cfg = ModelConfig.from_dict({**TINY, "q_lora_rank": None, "n_group": None, "n_shared_experts": None})
    assert (cfg.q_lora_rank, cfg.n_group, cfg.n_shared_experts) == (None, None, None)  # full-rank q, one group
    dense = ModelConfig.from_dict({**TINY, "n_routed_experts": None})
    assert not dense.is_moe

