"""Model soups: fine-tunes of one model averaged weight by weight, their encoders too; anything else refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from seekmoe.model.average import average_folders, average_states
from seekmoe.model.checkpoint import CheckpointError, load_model
from seekmoe.model.config import ConfigError
from tests.conftest import tiny_model_folder, tiny_multimodal_folder


def test_the_mean_is_weighted_and_normalised():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([4])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([0])}
    mean = average_states([a, b], [3.0, 1.0])
    torch.testing.assert_close(mean["w"], torch.tensor([1.5, 3.0]))  # 0.75 a + 0.25 b
    torch.testing.assert_close(mean["n"], torch.tensor([3.0]))
    assert mean["w"].dtype == torch.float32 and average_states([a, b], [30, 10])["w"].tolist() == [1.5, 3.0]
    with pytest.raises(ValueError, match="tensor x is in some of the models"):
        average_states([a, {**b, "x": torch.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match=r"tensor w has shape \(3,\) in one model and \(2,\)"):
        average_states([a, {**b, "w": torch.zeros(3)}], [1, 1])


def test_the_states_are_added_one_at_a_time():
    import weakref

    seen = []

    def states():  # as average_folders loads models: each made only when the sum asks for it
        for k in range(4):
            # the sum holds the state it is adding while it asks for the next; any before that is gone
            assert all(ref() is None for ref in seen[:-1]), f"state {len(seen) - 2} still held at state {k}"
            state = {"w": torch.full((2,), float(k))}
            seen.append(weakref.ref(state["w"]))
            yield state
            del state

    torch.testing.assert_close(average_states(states(), [1, 1, 1, 1])["w"], torch.tensor([1.5, 1.5]))
    with pytest.raises(ValueError, match="nothing to average"):
        average_states(iter([]), [])


def test_a_soup_of_two_fine_tunes_is_their_mean_and_a_soup_of_one_model_is_that_model(tmp_path):
    a, b = tiny_model_folder(tmp_path / "a", seed=1), tiny_model_folder(tmp_path / "b", seed=2)
    soup = load_model(average_folders([a, b], tmp_path / "soup", weights=[3, 1]))
    ma, mb = load_model(a), load_model(b)
    for (name, x), y, z in zip(soup.state_dict().items(), ma.state_dict().values(), mb.state_dict().values(),
                               strict=True):
        torch.testing.assert_close(x, 0.75 * y + 0.25 * z, msg=name)
    assert json.loads((tmp_path / "soup/average.json").read_text()) == {"models": [str(a), str(b)],
                                                                        "weights": [0.75, 0.25]}
    assert (tmp_path / "soup/tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    same = load_model(average_folders([a, a, a], tmp_path / "same"))
    ids = torch.arange(15)[None]
    torch.testing.assert_close(same(ids), ma(ids), rtol=1e-5, atol=1e-5)


def test_the_encoders_of_multimodal_folders_are_averaged_and_a_card_is_not_copied(tmp_path):
    from seekmoe.multimodal.model import load_multimodal

    a, b = tiny_multimodal_folder(tmp_path / "a", seed=1), tiny_multimodal_folder(tmp_path / "b", seed=2)
    (a / "README.md").write_text("# the card of a alone\n")
    (b / "README.md").write_text("# the card of b alone\n")
    out = average_folders([a, b], tmp_path / "soup")
    assert not (out / "README.md").exists()
    assert (out / "multimodal.safetensors").stat().st_mode & 0o777 == 0o644  # shared like the model's own file
    ea, eb = load_multimodal(a).encoders.state_dict(), load_multimodal(b).encoders.state_dict()
    soup = load_multimodal(out)
    for name, x in soup.encoders.state_dict().items():
        torch.testing.assert_close(x, (ea[name] + eb[name]) / 2, msg=name)
    assert soup.lm.config.to_dict()["multimodal"] == load_multimodal(a).lm.config.to_dict()["multimodal"]


def nothing_left(tmp_path: Path) -> bool:
    return not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_folders_that_are_not_fine_tunes_of_one_model_are_refused_and_nothing_is_written(tmp_path):
    a = tiny_model_folder(tmp_path / "a", seed=1)
    with pytest.raises(ConfigError, match=r"differ in config\.json's 'n_routed_experts'"):
        average_folders([a, tiny_model_folder(tmp_path / "wide", n_routed_experts=16)], tmp_path / "out")
    with pytest.raises(ConfigError, match="'multimodal'"):
        average_folders([tiny_model_folder(tmp_path / "text", max_position_embeddings=256),
                         tiny_multimodal_folder(tmp_path / "mm")], tmp_path / "out")
    other = tiny_model_folder(tmp_path / "other", seed=2)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["added_tokens"][-1]["content"] = "<|something else|>"
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match=r"tokenizer\.json differs between the folders"):
        average_folders([a, other], tmp_path / "out")
    extra = tiny_model_folder(tmp_path / "extra", seed=3)
    (extra / "generation_config.json").write_text('{"temperature": 0.7}')
    with pytest.raises(ValueError, match=r"generation_config\.json is in .*extra but not in .*a$"):
        average_folders([a, extra], tmp_path / "out")
    with pytest.raises(CheckpointError):
        average_folders([a, tmp_path / "nothing"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and nothing_left(tmp_path)


@pytest.mark.parametrize("weights, match", [([1], "1 weights for 2 models"), ([1, 0], "finite number > 0"),
                                            ([1, -2], "finite number > 0"), ([1, float("nan")], "finite number"),
                                            ([1, float("inf")], "finite number"), ([True, 1], "finite number"),
                                            ([1, "2"], "finite number")])
def test_bad_weights_are_refused(tmp_path, weights, match):
    a = tiny_model_folder(tmp_path / "a")
    with pytest.raises(ValueError, match=match):
        average_folders([a, a], tmp_path / "out", weights)
    assert not (tmp_path / "out").exists()


def test_one_model_or_an_existing_folder_is_refused(tmp_path):
    a = tiny_model_folder(tmp_path / "a")
    with pytest.raises(ValueError, match="a soup needs two models or more, got 1"):
        average_folders([a], tmp_path / "out")
    with pytest.raises(FileExistsError, match="exists"):
        average_folders([a, a], a)  # never over a folder, not even one of its own
    assert load_model(a) is not None


def test_the_script_says_what_is_wrong_and_writes_nothing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("average_script",
                                                  Path(__file__).parents[1] / "scripts/average_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    a, b = tiny_model_folder(tmp_path / "a", seed=1), tiny_model_folder(tmp_path / "b", seed=2)
    for argv, said in [([str(tmp_path / "out"), str(a), str(b), "--weights", "1,x"], "could not convert"),
                       ([str(tmp_path / "out"), str(a), str(b), "--weights", "1,0"], "finite number > 0"),
                       ([str(tmp_path / "out"), str(a)], "two models or more"),
                       ([str(tmp_path / "out"), str(a), str(tmp_path / "none")], "average_models: error:")]:
        assert script.main(argv) == 2
        assert said in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert script.main([str(tmp_path / "out"), str(a), str(b), "--weights", "1,1"]) == 0
    assert "wrote" in capsys.readouterr().out and load_model(tmp_path / "out") is not None
