"""Summaries through the model: LLM.generate_summary, `seekmoe summarize` and POST /v2/summarize, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import assert_usage_error, run_cli, running_server, tiny_model_folder

SAMPLE = Path(__file__).parent / "data" / "corpus_sample"


def long_text(chars: int) -> str:
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    assert texts, "the committed corpus sample is missing"
    text = "\n\n".join(texts)
    return (text * (chars // len(text) + 1))[:chars]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("summary-model") / "model", max_position_embeddings=256)


@pytest.fixture(scope="module")
def llm(model_folder):
    from seekmoe.llm import LLM

    with LLM(model_folder) as llm:
        yield llm


@pytest.mark.parametrize("method", ["hybrid", "abstractive", "extractive"])
@pytest.mark.parametrize("style", ["bullets", "paragraph", "sections"])
def test_generate_summary_stays_within_max_length(llm, method, style):
    text = long_text(20_000)
    summary = llm.generate_summary(text, max_length=40, style=style, method=method)
    assert summary.strip()
    assert len(llm.tokenizer.encode(summary)) <= 40


@pytest.mark.parametrize("text", ["\u0080" * 300, "word " * 400 + ".", "Short one. " + "x" * 2000])
def test_generate_summary_of_sentences_longer_than_the_context(llm, text):
    # hybrid asks the model to shorten each chosen sentence: one that cannot fit the context with its answer is
    # kept as written (a fuzzed /v2/summarize once answered 500 here)
    summary = llm.generate_summary(text, max_length=40)
    assert summary.strip() and len(llm.tokenizer.encode(summary)) <= 40


def test_cli_summarize(capsys, tmp_path, model_folder):
    doc = tmp_path / "doc.txt"
    doc.write_text(long_text(30_000), encoding="utf-8")
    rc, out, err = run_cli(capsys, "summarize", str(doc), "--model", str(model_folder), "--method", "extractive",
                           "--max-length", "30")
    assert rc == 0, err
    assert out.strip().startswith("- ")
    rc, _, err = run_cli(capsys, "summarize", str(tmp_path / "missing.txt"), "--model", str(model_folder))
    assert_usage_error(rc, err, "missing.txt", "no such file")
    rc, _, err = run_cli(capsys, "summarize", str(doc), "--model", str(tmp_path / "nope"))
    assert_usage_error(rc, err, "no such model folder")


@pytest.fixture(scope="module")
def server(model_folder):
    from seekmoe.llm import LLM
    from seekmoe.server.config import ServeConfig

    with running_server(ServeConfig(model=str(model_folder)), lambda: LLM(model_folder)) as (url, _):
        yield url


def test_server_summarize(server):
    import requests

    body = {"text": long_text(20_000), "max_length": 25, "style": "paragraph", "method": "abstractive"}
    r = requests.post(f"{server}/v2/summarize", json=body, timeout=120)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["summary"] and 0 < reply["summary_tokens"] <= 25 and reply["style"] == "paragraph"



def test_the_default_method_keeps_the_conclusion_a_report_states(server, llm):
    """LLM.generate_summary and /v2/summarize default to hybrid: a random model's rewrites never keep the facts, so
    the report's own sentences come back, the stated conclusion among them."""
    import requests

    from tests.test_summarize import report

    conclusion = "In conclusion, the heat-pump retrofit lowers heating bills by 22% in the council's housing stock."
    text = report("en", conclusion)
    assert conclusion in llm.generate_summary(text, max_length=120)
    r = requests.post(f"{server}/v2/summarize", json={"text": text, "max_length": 120}, timeout=120)
    assert r.status_code == 200, r.text
    assert conclusion in r.json()["summary"]

@pytest.mark.parametrize(("body", "status"), [
    ({"text": "x", "max_length": 0}, 400),
    ({"text": "x", "style": "haiku"}, 400),
    ({"text": 5}, 400),
    ({"max_length": 5}, 400),
    ({"text": "x", "model": "another"}, 404),
])
def test_server_summarize_bad_input(server, body, status):
    import requests

    r = requests.post(f"{server}/v2/summarize", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_server_summarize_empty_text(server):
    import requests

    r = requests.post(f"{server}/v2/summarize", json={"text": "   "}, timeout=30)
    assert r.status_code == 200 and r.json()["summary"] == ""
