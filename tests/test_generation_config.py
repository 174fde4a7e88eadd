"""A model folder's generation_config.json sets its sampling defaults, as vLLM reads it: the Python API, the CLI and
the server fill what a request leaves out from it, a request's own values win, and a bad file is named."""

from __future__ import annotations

import json

import pytest
import requests

from seekmoe.engine.sampling import SamplingError, generation_defaults
from seekmoe.llm import LLM
from seekmoe.model.checkpoint import CheckpointError
from seekmoe.server.config import ServeConfig
from tests.conftest import run_cli, running_server, tiny_model_folder


def test_generation_defaults_keep_the_sampling_keys_and_check_them():
    hf = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
          "max_new_tokens": 4096, "transformers_version": "4.46.0", "min_p": None}
    assert generation_defaults(hf) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert generation_defaults({"bos_token_id": 1}) == {}
    assert generation_defaults({"repetition_penalty": 1}) == {"repetition_penalty": 1.0}
    for bad, needle in (({"top_p": 0}, "top_p"), ({"temperature": "hot"}, "temperature"),
                        ({"temperature": 9e99}, "temperature"), ({"top_k": 1.5}, "top_k"), ([1, 2], "JSON object"),
                        ("0.7", "JSON object"), (None, "JSON object")):
        with pytest.raises(SamplingError, match=needle):
            generation_defaults(bad)


@pytest.fixture(scope="module")
def greedy_folder(tmp_path_factory):
    """A tiny model whose generation_config.json makes it greedy by default."""
    folder = tiny_model_folder(tmp_path_factory.mktemp("greedy"))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "temperature": 0.0, "top_k": 5}))
    return folder


@pytest.fixture(scope="module")
def greedy_llm(greedy_folder):
    llm = LLM(greedy_folder)
    yield llm
    llm.close()


def test_python_api_fills_what_a_call_leaves_out(greedy_llm):
    assert greedy_llm.sampling_defaults == {"temperature": 0.0, "top_k": 5}
    assert greedy_llm.params().temperature == 0.0
    given = greedy_llm.params(temperature=1.0, max_tokens=3)
    assert (given.temperature, given.top_k, given.max_tokens) == (1.0, 5, 3)
    greedy = greedy_llm.generate("Hello", max_tokens=12, temperature=0).text
    by_default = {greedy_llm.generate("Hello", max_tokens=12, seed=seed).text for seed in range(4)}
    assert by_default == {greedy}
    sampled = {greedy_llm.generate("Hello", max_tokens=12, temperature=2.0, top_k=0, seed=seed).text
               for seed in range(4)}
    assert len(sampled) > 1  # the call's own values win


def test_server_fills_what_a_request_leaves_out(greedy_folder):
    with running_server(ServeConfig(model=str(greedy_folder)), lambda: LLM(greedy_folder)) as (url, _):
        def generate(**body) -> str:
            r = requests.post(f"{url}/v2/generate", json={"prompt": "Hello", "max_tokens": 12, **body}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["generated_text"]

        greedy = generate(temperature=0)
        assert {generate(seed=seed) for seed in range(3)} == {greedy}
        chat = [requests.post(f"{url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "seed": seed}).json()
            ["choices"][0]["message"]["content"] for seed in range(3)]
        assert len(set(chat)) == 1
        assert len({generate(temperature=2.0, top_k=0, seed=seed) for seed in range(4)}) > 1
        bad = requests.post(f"{url}/v2/generate", json={"prompt": "Hello", "top_p": 0}, timeout=60)
        assert bad.status_code == 400 and "top_p" in bad.text  # a request's bad value is still its own error


def test_cli_generate_uses_the_defaults_under_its_flags(greedy_folder, capsys):
    runs = {run_cli(capsys, "generate", str(greedy_folder), "Hello", "--max-tokens", "8", "--seed", str(seed),
                    "--quiet")[1] for seed in range(3)}
    assert len(runs) == 1
    rc, out, _ = run_cli(capsys, "generate", str(greedy_folder), "Hello", "--max-tokens", "8", "--temperature", "0",
                         "--quiet")
    assert rc == 0 and {out} == runs


@pytest.mark.parametrize("text, needle", [("{not json", "generation_config.json"),
                                          ('{"top_p": 0}', "top_p"), ('[0.7]', "JSON object"),
                                          ('{"temperature": -1}', "temperature"), ("\udcff", "generation_config")])
def test_a_bad_generation_config_is_named_at_load(tmp_path, capsys, text, needle):
    folder = tiny_model_folder(tmp_path / "m")
    (folder / "generation_config.json").write_text(text, errors="surrogateescape")
    with pytest.raises(CheckpointError, match=needle):
        LLM(folder)
    rc, _, err = run_cli(capsys, "generate", str(folder), "Hello", "--max-tokens", "2")
    assert rc != 0 and needle in err and "Traceback" not in err


def test_serve_says_which_defaults_the_model_sets(greedy_folder, caplog):
    from seekmoe.cli.serve import load_llm

    with caplog.at_level("INFO", logger="seekmoe"):
        llm = load_llm(ServeConfig(model=str(greedy_folder)))
    llm.close()
    assert "generation_config.json: temperature=0, top_k=5 (a request's own values win)" in caplog.text
