"""Sparse upcycling: twice the routed experts, the same function, the twins told apart by noise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from seekmoe.model.checkpoint import CheckpointError, load_model
from seekmoe.model.config import ConfigError
from seekmoe.model.upcycle import upcycle, upcycle_folder, upcycled_config
from tests.conftest import tiny_model, tiny_model_folder, tiny_multimodal_folder

ROUTINGS = {  # the bundled model's routing, DeepSeek-V2's and a plain one, with and without normalised weights
    "v3 noaux_tc sigmoid, 4 groups": dict(scoring_func="sigmoid", topk_method="noaux_tc", n_group=4, topk_group=2,
                                          norm_topk_prob=True, n_routed_experts=16, num_experts_per_tok=4),
    "v3, weights not normalised": dict(scoring_func="sigmoid", topk_method="noaux_tc", n_group=2, topk_group=1,
                                       norm_topk_prob=False, routed_scaling_factor=2.5),
    "v2 group_limited_greedy softmax": dict(scoring_func="softmax", topk_method="group_limited_greedy", n_group=4,
                                            topk_group=2, norm_topk_prob=False),
    "greedy softmax, one group": dict(scoring_func="softmax", topk_method="greedy", n_group=1, topk_group=1),
}


def old_index(new_idx: torch.Tensor, e: int, groups: int) -> torch.Tensor:
    """The expert a new expert is (the twin of): new layout (G, 2, E/G)."""
    per = e // groups
    return (new_idx // (2 * per)) * per + new_idx % per


@pytest.mark.parametrize("routing", ROUTINGS.values(), ids=ROUTINGS.keys())
def test_the_grown_model_computes_the_same_function_with_each_choice_doubled(routing):
    old = tiny_model(seed=3, **routing)
    new = upcycle(old)
    cfg, grown = old.config, new.config
    assert (grown.n_routed_experts, grown.num_experts_per_tok) == (2 * cfg.n_routed_experts,
                                                                    2 * cfg.num_experts_per_tok)
    ids = torch.randint(0, cfg.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    a, b = old(ids, return_routing=True), new(ids, return_routing=True)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-5)
    for r_old, r_new in zip(a.routing, b.routing, strict=True):
        chosen = old_index(r_new.topk_idx, cfg.n_routed_experts, cfg.n_group or 1).sort(dim=-1).values
        assert torch.equal(chosen, r_old.topk_idx.repeat_interleave(2, dim=-1).sort(dim=-1).values)
    assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in old.parameters())
    assert all(torch.equal(p, q) for p, q in zip(old.state_dict().values(), tiny_model(seed=3, **routing)
                                                  .state_dict().values(), strict=True))  # the old one untouched


@torch.no_grad()
def test_noise_tells_the_twins_apart_and_leaves_the_experts_as_they_were():
    old = tiny_model(seed=1, **ROUTINGS["v3 noaux_tc sigmoid, 4 groups"])
    new = upcycle(old, noise=0.01, seed=5)
    layer_old, layer_new = old.model.layers[1].mlp, new.model.layers[1].mlp
    w_old = layer_old.experts.up_proj.reshape(4, 4, *layer_old.experts.up_proj.shape[1:])  # (G, E/G, F, D)
    w_new = layer_new.experts.up_proj.reshape(4, 2, 4, *layer_old.experts.up_proj.shape[1:])  # (G, 2, E/G, F, D)
    assert torch.equal(w_new[:, 0], w_old)  # the experts themselves are kept
    gap = (w_new[:, 1] - w_old).std() / w_old.std()
    assert 0.005 < gap < 0.02  # the twins moved by about 1% of the weights' spread
    g_old, g_new = layer_old.gate.weight.reshape(4, 4, -1), layer_new.gate.weight.reshape(4, 2, 4, -1)
    assert torch.equal(g_new[:, 0], g_old) and 0.005 < float((g_new[:, 1] - g_old).std() / g_old.std()) < 0.02
    bias = layer_new.gate.e_score_correction_bias.reshape(4, 2, 4)
    assert torch.equal(bias[:, 0], bias[:, 1])  # balancing state: each twin as loaded as its expert
    again = upcycle(old, noise=0.01, seed=5)  # seeded: the same twins again
    assert torch.equal(again.model.layers[1].mlp.experts.up_proj, layer_new.experts.up_proj)
    ids = torch.arange(20)[None]
    a, b = old(ids), new(ids)  # no longer the very same function (a token near a tie may take one twin alone)...
    assert not torch.equal(a, b)
    assert (b - a).abs().mean() < 0.05 * a.abs().mean() and torch.equal(b.argmax(-1), a.argmax(-1))  # ...but close


@pytest.mark.parametrize("noise", [-0.1, 1.0, float("nan"), "0.1"])
def test_bad_noise_is_refused(noise):
    with pytest.raises(ValueError, match="noise must be a number in"):
        upcycle(tiny_model(), noise=noise)


def test_a_dense_model_has_nothing_to_upcycle():
    with pytest.raises(ConfigError, match="a dense model has no routed experts"):
        upcycled_config(tiny_model(n_routed_experts=None).config)


def test_a_multimodal_folder_keeps_its_encoders_and_tokenizer(tmp_path):
    from seekmoe.multimodal.model import load_multimodal

    src = tiny_multimodal_folder(tmp_path / "src")
    dst = upcycle_folder(src, tmp_path / "dst")
    kept = {f.name for f in src.iterdir()} - {"config.json", "model.safetensors"}
    assert kept and all((dst / name).read_bytes() == (src / name).read_bytes() for name in kept)
    assert {f.name for f in dst.iterdir()} == {*kept, "config.json", "model.safetensors", "upcycle.json"}
    assert json.loads((dst / "upcycle.json").read_text()) == {"model": str(src), "noise": 0.0, "seed": 0,
                                                               "n_routed_experts": [8, 16]}
    config = json.loads((dst / "config.json").read_text())
    assert config["n_routed_experts"] == 2 * json.loads((src / "config.json").read_text())["n_routed_experts"]
    assert config["multimodal"] == json.loads((src / "config.json").read_text())["multimodal"]
    a, b = load_multimodal(src), load_multimodal(dst)
    ids = torch.arange(12)[None]
    torch.testing.assert_close(b.lm(ids), a.lm(ids), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(a.encoders.state_dict().values(), b.encoders.state_dict().values(),
                                                  strict=True))
    with pytest.raises(FileExistsError, match="exists"):  # never over a folder
        upcycle_folder(src, dst)
    with pytest.raises(CheckpointError):
        upcycle_folder(tmp_path / "nothing", tmp_path / "dst2")
    assert not (tmp_path / "dst2").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_script_says_what_is_wrong_and_writes_nothing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("upcycle_script", Path(__file__).parents[1] / "scripts/upcycle.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    src = tiny_model_folder(tmp_path / "src")
    assert script.main([str(src), str(tmp_path / "out"), "--noise", "2"]) == 2
    assert "noise must be a number in [0, 1)" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert script.main([str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "upcycle: error:" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert script.main([str(src), str(tmp_path / "out")]) == 0
    assert load_model(tmp_path / "out").config.n_routed_experts == 2 * load_model(src).config.n_routed_experts
