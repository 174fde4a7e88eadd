"""A longer context: YaRN stretching (model.extend_context, `seekmoe finetune --context`), the passkey documents that
test and teach it (seekmoe/train/passkey.py, `seekmoe data passkey`), and long prompts through the engine."""

from __future__ import annotations

import json
import random

import pytest
import torch

from seekmoe.llm import DEFAULT_MODEL
from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.model import attention_scale, rope_frequencies
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train import passkey
from seekmoe.train.config import FinetuneConfig, TrainError
from seekmoe.train.finetune import finetune
from tests.conftest import assert_usage_error, run_cli, tiny_model, tiny_model_folder
from tests.test_finetune import make_run

PROSE = ("The river ran past the mill and under the old bridge, where the children fished in summer. " * 3).strip()
VERSE = "关关雎鸠，在河之洲。窈窕淑女，君子好逑。"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture
def corpus(tmp_path):
    """A folder of .txt files with English paragraphs (numbered, so each is distinct) and Chinese lines."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "en.txt").write_text("\n\n".join(f"{PROSE} Page {i}." for i in range(60)))
    (tmp_path / "corpus" / "zh.txt").write_text("\n\n".join(f"{VERSE}第{i}章。" for i in range(60)))
    return tmp_path / "corpus"


# ---- YaRN ------------------------------------------------------------------------------------------------------

def test_extend_context_stretches_the_slow_rope_dims_and_keeps_the_fast_ones():
    model = tiny_model(max_position_embeddings=128, qk_rope_head_dim=16)
    before = model.model.rotary_emb.inv_freq.clone()
    model.extend_context(1024)
    cfg = model.config
    assert cfg.max_position_embeddings == 1024
    assert cfg.rope_scaling["factor"] == 8 and cfg.rope_scaling["original_max_position_embeddings"] == 128
    after = model.model.rotary_emb.inv_freq
    assert torch.equal(after, rope_frequencies(cfg)[0])
    assert after[0] == before[0]  # the fastest dim turns many times over 128 positions: kept
    torch.testing.assert_close(after[-1], before[-1] / 8)  # the slowest turns less than once: interpolated
    assert all(layer.self_attn.softmax_scale == attention_scale(cfg) > cfg.qk_head_dim**-0.5
               for layer in model.model.layers)  # YaRN's temperature
    x = torch.randint(0, 97, (1, 700))
    assert torch.isfinite(model(x)).all()  # positions past the old context


def test_extend_context_twice_is_once_and_survives_save_and_load(tmp_path):
    once, twice = tiny_model(), tiny_model()
    once.extend_context(512)
    twice.extend_context(256)
    twice.extend_context(512)  # stretched from the original 128 again, not from 256
    assert once.config.rope_scaling == twice.config.rope_scaling
    x = torch.randint(0, 97, (2, 300))
    torch.testing.assert_close(once(x), twice(x))
    save_model(once, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rope_scaling"]["factor"] == 4
    torch.testing.assert_close(load_model(tmp_path / "m")(x), once(x))


def test_extend_context_refuses_a_shorter_context():
    model = tiny_model()
    with pytest.raises(ValueError, match="not longer than the trained context"):
        model.extend_context(128)
    assert model.config.rope_scaling is None  # nothing changed


def test_a_stretched_model_reads_a_long_prompt_through_the_engine_as_the_model_does(tmp_path):
    """The engine's chunked prefill (Prefill kept between chunks) and decode over a long cache agree with the
    model's own forward at positions far past the original context."""
    from seekmoe.llm import LLM

    folder = tiny_model_folder(tmp_path / "m", max_position_embeddings=128)
    model = load_model(folder)
    model.extend_context(2048)
    save_model(model, folder)
    prompt = [0] + [random.Random(k).randrange(3, 500) for k in range(1500)]
    with LLM(folder, max_step_tokens=256, cache_tokens=4096) as llm:
        out = llm.generate(prompt_token_ids=prompt, max_tokens=4, temperature=0.0)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out.token_ids == ids[len(prompt):]


# ---- passkey documents -----------------------------------------------------------------------------------------

def test_a_document_hides_the_key_at_its_depth_and_fits_its_length(tok, corpus):
    pools = passkey.fillers(corpus, tok, seed=0)
    rng = random.Random(0)
    for lang in ("en", "zh"):
        for depth in (0.0, 0.5, 1.0):
            doc = passkey.document(rng, pools[lang], 600, depth, lang, "test")
            user, answer = doc["messages"][0]["content"], doc["messages"][1]["content"]
            key = doc["meta"]["key"]
            assert len(key) == 5 and user.count(key) == 2 and key in answer
            assert len(tok.encode(user)) <= 600 + 60  # filler up to 600 tokens, then needle and question
            where = user.index(key) / len(user)
            assert abs(where - depth) < 0.25, (lang, depth, where)


def test_the_test_wording_never_occurs_in_training(tok, corpus):
    pools = passkey.fillers(corpus, tok, seed=0)
    rng = random.Random(1)
    train = [passkey.document(rng, pools[la], 200, rng.random(), la, "train") for la in ["en", "zh"] * 40]
    needles = [n.split("{k}")[0] for lang in passkey.LANGS for n in passkey.TEMPLATES[("test", lang)][0]]
    questions = [q for lang in passkey.LANGS for q in passkey.TEMPLATES[("test", lang)][1]]
    for doc in train:
        text = doc["messages"][0]["content"] + doc["messages"][1]["content"]
        assert not any(n in text for n in needles + questions)


def test_write_is_reproducible_and_holds_what_it_says(tmp_path, tok, corpus):
    a = passkey.write(tmp_path / "a", corpus, tok, n=12, texts=3, min_tokens=100, max_tokens=300, val=4, seed=5)
    b = passkey.write(tmp_path / "b", corpus, tok, n=12, texts=3, min_tokens=100, max_tokens=300, val=4, seed=5)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    rows = {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in a}
    assert len(rows["passkey.train.jsonl"]) == 12 and len(rows["passkey.val.jsonl"]) == 4
    assert len(rows["long_text.train.jsonl"]) == 3 and all(set(r) == {"text"} for r in rows["long_text.train.jsonl"])
    assert all(100 <= r["meta"]["tokens"] <= 300 for r in rows["passkey.train.jsonl"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "number of examples"), (dict(n=True), "number of examples"), (dict(texts=-1), "long texts"),
    (dict(min_tokens=500, max_tokens=100), "lengths must satisfy"), (dict(max_tokens=1 << 30), "lengths must"),
])
def test_write_refuses_bad_requests(tmp_path, tok, corpus, kwargs, message):
    args = dict(n=2, texts=0, min_tokens=50, max_tokens=100) | kwargs
    with pytest.raises(passkey.PasskeyError, match=message):
        passkey.write(tmp_path / "out", corpus, tok, **args)
    assert not (tmp_path / "out").exists()


def test_filler_without_paragraphs_is_a_clear_error(tmp_path, tok):
    (tmp_path / "empty").mkdir()
    with pytest.raises(passkey.PasskeyError, match="no filler paragraphs"):
        passkey.fillers(tmp_path / "empty", tok, 0)


def test_the_command(tmp_path, capsys, corpus):
    rc, out, _ = run_cli(capsys, "data", "passkey", "--out", str(tmp_path / "pk"), "--filler", str(corpus),
                         "--examples", "5", "--texts", "1", "--min-tokens", "64", "--max-tokens", "128")
    assert rc == 0 and "passkey.train.jsonl" in out
    assert len((tmp_path / "pk" / "passkey.train.jsonl").read_text().splitlines()) == 5
    rc, _, err = run_cli(capsys, "data", "passkey", "--out", str(tmp_path / "x"), "--filler", str(tmp_path / "no"))
    assert_usage_error(rc, err, "no such folder")
    rc, _, err = run_cli(capsys, "data", "passkey", "--out", str(tmp_path / "x"), "--filler", str(corpus),
                         "--min-tokens", "9")
    assert_usage_error(rc, err, "lengths must satisfy")


# ---- seekmoe finetune --context ----------------------------------------------------------------------------------

def test_finetune_stretches_the_context_and_trains_past_the_old_one(tmp_path):
    cfg = make_run(tmp_path, "full", steps=2, context=1024, seq_len=384)  # the base reads 256 tokens
    finetune(cfg, progress=False, log=lambda m: None)
    saved = json.loads((tmp_path / "run-full" / "model" / "config.json").read_text())
    assert saved["max_position_embeddings"] == 1024 and saved["rope_scaling"]["factor"] == 4
    assert load_model(tmp_path / "run-full" / "model").config.rope_scaling["original_max_position_embeddings"] == 256


def test_finetune_context_errors(tmp_path):
    with pytest.raises(TrainError, match="context must be an integer >= 0"):
        FinetuneConfig.from_dict({"data": "x", "context": -5})
    with pytest.raises(TrainError, match="use --method full"):
        finetune(make_run(tmp_path, "lora", context=1024), progress=False, log=lambda m: None)
    with pytest.raises(TrainError, match="not longer than the trained context"):
        finetune(make_run(tmp_path, "full", context=100), progress=False, log=lambda m: None)


def test_long_prompts_with_a_shared_prefix_under_a_tight_cache_match_the_model(tmp_path):
    """Three prompts of thousands of tokens, two sharing 2,000 of them, in a cache too small for all three at
    once: paging, the prefix cache and preemption (or waiting) give each the model's own greedy tokens."""
    from seekmoe.llm import LLM

    folder = tiny_model_folder(tmp_path / "m", max_position_embeddings=128)
    model = load_model(folder)
    model.extend_context(4096)
    save_model(model, folder)
    rng = random.Random(0)
    a = [0] + [rng.randrange(3, 500) for _ in range(2500)]
    b = a[:2000] + [rng.randrange(3, 500) for _ in range(300)]
    c = [0] + [rng.randrange(3, 500) for _ in range(1800)]
    with LLM(folder, max_step_tokens=256, cache_tokens=4096, max_num_seqs=3) as llm:
        outs = llm.generate(prompt_token_ids=[a, b, c], max_tokens=6, temperature=0.0, ignore_eos=True)
    for prompt, out in zip([a, b, c], outs, strict=True):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert out.token_ids == ids[len(prompt):]
