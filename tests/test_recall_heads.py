"""bench/recall_heads.py: the attention it reads is the layer's own, and each probe stops where the fact begins."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from seekmoe.model.model import MLA
from seekmoe.text.tokenizer import Tokenizer
from tests.conftest import tiny_model, tiny_model_folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "chat"


def bench():
    spec = importlib.util.spec_from_file_location("recall_heads", ROOT / "bench" / "recall_heads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_attention_read_gives_back_the_layers_output():
    # weights times values, through o_proj, must be what MLA.forward returned at the last position
    model = tiny_model().float()
    seen = []

    def keep(mod, args, out):
        seen.append((mod, args, out))

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, MLA)]
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (1, 23), generator=torch.Generator().manual_seed(0)))
    for h in hooks:
        h.remove()
    assert seen
    for mod, (x, cos, sin), out in seen:
        with torch.no_grad():
            a = bench().last_attention(mod, x, cos, sin)  # (H, T)
            c_kv, _ = mod.latent(x, cos, sin)
            v = mod.kv_b_proj(c_kv).view(x.shape[1], mod.n_heads, -1)[..., mod.nope_dim:]  # (T, H, v)
            mixed = torch.einsum("ht,thd->hd", a, v).reshape(-1)
            assert torch.allclose(a.sum(-1), torch.ones(mod.n_heads), atol=1e-5)
            assert torch.allclose(mod.o_proj(mixed), out[0, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["dialogues", "dialogues_zh"])
def test_probes_stop_where_the_fact_begins(name):
    from seekmoe.llm import DEFAULT_MODEL

    tok = Tokenizer.from_pretrained(DEFAULT_MODEL)
    dialogues = [json.loads(line) for line in (DATA / f"{name}.val.jsonl").read_text(encoding="utf-8").splitlines()]
    probes = bench().probes(tok, dialogues[:60])
    assert len(probes) > 40  # a fact tokenised alike in the turn and in the answer is the rule
    by_prompt = {tuple(tok.apply_chat_template(ex["messages"][:-1])): ex for ex in dialogues[:60]}
    for probe in probes:
        prompt = max((p for p in by_prompt if tuple(probe["ids"][:len(p)]) == p), key=len)
        ex = by_prompt[prompt]
        fact, answer = ex["meta"]["fact"], ex["messages"][-1]["content"]
        said = tok.decode(probe["ids"][len(prompt):])
        assert answer.startswith(said) and answer[len(said):].lstrip().startswith(fact)
        # the position read is the fact's first token where the customer gave it
        assert probe["ids"][probe["at"]] == probe["first"]
        assert tok.decode(probe["ids"][probe["at"]:len(prompt)]).strip().startswith(fact)


def test_measure_covers_every_kind_in_both_languages(tmp_path):
    folder = tiny_model_folder(tmp_path / "m", max_position_embeddings=512)
    result = bench().measure(folder, DATA, limit=24)
    assert {k.split("/")[0] for k in result} == {"en", "zh"}
    for row in result.values():
        assert row["n"] > 0 and 0 <= row["first_token"] <= 1 and 0 <= row["p_first"] <= 1
        assert 0 < row["attention"] <= 1 and row["best_head"].startswith("L")
        # every miss is listed once, with its fact and the tokens wanted and chosen
        assert len(row["misses"]) == round((1 - row["first_token"]) * row["n"])
        assert all(fact and isinstance(want, str) and isinstance(got, str) for fact, want, got in row["misses"])


def test_bad_arguments_are_named(tmp_path):
    import subprocess
    import sys

    def run(*argv):
        return subprocess.run([sys.executable, str(ROOT / "bench" / "recall_heads.py"), *argv],
                              capture_output=True, text=True, timeout=120)

    for argv, needle in [(["--limit", "0"], "--limit must be at least 1"),
                         (["--misses", "-1"], "--misses must be 0 or more"),
                         (["--data", str(tmp_path)], "holds neither dialogues.val.jsonl"),
                         ([str(tmp_path / "nope")], "not a model folder")]:
        done = run(*argv)
        assert done.returncode == 2 and needle in done.stderr, (argv, done.stderr)


def test_by_template_splits_each_kind_and_training_phrasings_are_drawn_afresh(tmp_path):
    folder = tiny_model_folder(tmp_path / "m", max_position_embeddings=512)
    module = bench()
    whole = module.measure(folder, DATA, limit=24)
    split = module.measure(folder, DATA, limit=24, by_template=True)
    # every row is one kind under one first-turn phrasing; together they are the kind's dialogues
    for key, row in whole.items():
        parts = {k: r for k, r in split.items() if k.split(" ")[0] == key}
        assert parts and all(k.split(" ")[1].startswith(f"first/{key.split('/')[1]}/") for k in parts)
        assert sum(r["n"] for r in parts.values()) == row["n"]
    # training phrasings: both languages, none of the held-out first turns, the same draw each time
    drawn = module.training_dialogues(30)
    assert drawn == module.training_dialogues(30) and len(drawn) == 60
    assert {ex["meta"].get("lang", "en") for ex in drawn} == {"en", "zh"}
    held = {ex["meta"]["templates"][0] for ex in module.held_out_dialogues(DATA, 300)}
    assert not {ex["meta"]["templates"][0] for ex in drawn} & held
    trained = module.measure(folder, tmp_path, limit=30, phrasings="training")  # --data is not read
    assert {k.split("/")[0] for k in trained} == {"en", "zh"}
