"""Pretraining text that teaches copying (seekmoe.train.copy_text): every answer is in the document before it."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seekmoe.train import copy_text
from seekmoe.train.chat_data import customer_service, support_answers
from tests.conftest import assert_usage_error, phrase_runs, run_cli

ROOT = Path(__file__).resolve().parents[1]


def docs_of(kind: str, lang: str, n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [copy_text.MAKERS[kind](rng, lang, ["Filler paragraph one, long enough.", "Another filler one."])
            for _ in range(n)]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_answer_of_a_record_is_in_its_form(lang):
    answer = re.compile(r"^(?:A: |答：)(.+)$", re.M)
    for doc in docs_of("record", lang):
        form, _, rest = doc.partition("\n\n")
        answers = answer.findall(rest)
        assert answers, doc
        for a in answers:
            assert re.search(rf"(?::|：) ?{re.escape(a)}$", form, re.M), (a, doc)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_transcript_asks_back_the_fact_of_its_first_line(lang):
    for doc in docs_of("transcript", lang):
        lines = doc.splitlines()
        fact = lines[-1].split("：" if lang == "zh" else ": ", 1)[1]
        assert fact in lines[0] and all(fact not in line for line in lines[1:-1]), doc
        assert len(lines) >= 8  # at least two exchanges of small talk between the fact and the question


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_numbers_are_written_out_again_and_the_expression_is_right(lang):
    for doc in docs_of("numbers", lang):
        told, listed, expression = doc.splitlines()
        numbers = re.findall(r"\d+", listed)
        assert re.findall(r"(?:were |有)(\d+)", told) == numbers
        left, right = expression.split("：" if lang == "zh" else ": ", 1)[1].split(" = ")
        assert re.findall(r"\d+", left) == numbers
        assert int(right) == eval(left)  # digits and + - * only, written by the test's own generator


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_run_of_invented_words_comes_back_verbatim(lang):
    for doc in docs_of("repeat", lang):
        lines = doc.split("\n")
        assert lines[0] == lines[-1] and doc.count(lines[0]) >= 2


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_drill_line_is_one_run_written_three_to_five_times(lang):
    for doc in docs_of("drill", lang):
        for line in doc.splitlines():
            runs = line.split(" | ")
            assert 3 <= len(runs) <= 5 and len(set(runs)) == 1, line


ENGLISH = ["The old harbour master counted every boat that sailed past the lighthouse before dawn.",
           "Quiet gardens behind the museum hold roses, tulips and a pond full of golden carp.",
           "Engineers tested the bridge with trucks loaded with sand until the steel began to sing."]
CHINESE = ["杭州的西湖边有很多茶馆，游客喜欢在那里喝龙井。春天的时候，湖上的柳树发了新芽，船夫慢慢地划着小船。",
           "昨天下午，图书馆里来了一位戴眼镜的老教授。他借走了三本关于古代桥梁的书，说要写一篇新的论文。"]


def runs_of(doc: str) -> list[str]:
    """The runs a shuffled document writes more than once: each drill line's, or the repeated first line."""
    if "\n\n" not in doc:
        lines = [line.split(" | ") for line in doc.splitlines()]
        assert all(2 <= len(r) <= 4 and len(set(r)) == 1 for r in lines), doc
        return [r[0] for r in lines]
    lines = doc.split("\n")
    assert lines[0] == lines[-1] and doc.count(lines[0]) >= 2, doc
    return [lines[0]]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_shuffled_run_is_a_stretch_of_a_paragraph_in_another_order(lang):
    rng = random.Random(0)
    docs = [copy_text.shuffled(rng, lang, ENGLISH, CHINESE) for _ in range(200)]
    forms = {"\n\n" in d for d in docs}
    assert forms == {True, False}  # drills and repeats after a paragraph, both
    sources = [re.findall(r"[A-Za-z']+", p) for p in ENGLISH] if lang == "en" else [
        re.findall(r"[\u4e00-\u9fff]", p) for p in CHINESE]
    reordered = 0
    for run in (r for d in docs for r in runs_of(d)):
        units = run.split(" ") if lang == "en" else list(run)
        assert 4 <= len(units) <= 30, run
        # the same words as some consecutive stretch of one paragraph
        assert any(sorted(units) == sorted(s[i:i + len(units)]) for s in sources
                   for i in range(len(s) - len(units) + 1)), run
        reordered += all(units != s[i:i + len(units)] for s in sources for i in range(len(s) - len(units) + 1))
    assert reordered > 100  # mostly shuffled: only copying predicts them


def test_shuffled_runs_take_an_open_vocabulary():
    """The other kinds' values come from a few dozen syllables and characters; a shuffled run from whatever the
    corpus holds, which is the point of the kind."""
    words = [f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(600)]
    paragraphs = [" ".join(words[i:i + 40]) for i in range(0, 600, 40)]
    rng = random.Random(1)
    seen = {u for _ in range(300) for r in runs_of(copy_text.shuffled(rng, "en", paragraphs)) for u in r.split()}
    assert len(seen) > 400
    chinese = ["".join(chr(0x4e00 + i) for i in range(k, k + 50)) for k in range(0, 1000, 50)]
    seen = {c for _ in range(300) for r in runs_of(copy_text.shuffled(rng, "zh", [], chinese)) for c in r}
    assert len(seen) > 600


def test_shuffled_without_a_corpus_uses_the_built_in_sentences():
    rng = random.Random(2)
    for lang, pool in (("en", copy_text.FILLER_EN), ("zh", copy_text.FILLER_ZH)):
        for _ in range(50):
            for run in runs_of(copy_text.shuffled(rng, lang, [])):
                units = run.split(" ") if lang == "en" else list(run)
                assert all(any(u in s for s in pool) for u in units), run


def test_a_source_without_a_single_word_falls_back_rather_than_looping():
    rng = random.Random(3)
    for lang in ("en", "zh"):
        for run in runs_of(copy_text.shuffled(rng, lang, ["--- *** ---", "...!"], ["---", "123 !!"])):
            assert run


def test_write_takes_the_chinese_of_shuffled_runs_from_the_filler_folder(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "en.txt").write_text("\n\n".join(ENGLISH), encoding="utf-8")
    (tmp_path / "corpus" / "zh.txt").write_text("\n\n".join(CHINESE), encoding="utf-8")
    path = copy_text.write(tmp_path / "out", 300, seed=0, filler_folder=tmp_path / "corpus", kinds=("shuffled",))
    docs = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    han = {c for d in docs for r in runs_of(d) for c in r if "\u4e00" <= c <= "\u9fff"}
    assert han and han <= set("".join(CHINESE)) and "茶" in han


def test_documents_of_chosen_kinds_only():
    docs = copy_text.documents(20, seed=0, paragraphs=[], kinds=("drill",))
    assert all(" | " in d and "\n\n" not in d for d in docs)


@given(st.lists(st.integers(0, 999), min_size=1, max_size=6), st.data())
def test_eval_int_agrees_with_python(numbers, data):
    ops = [data.draw(st.sampled_from("+-*")) for _ in numbers[1:]]
    expression = " ".join(x for pair in zip(map(str, numbers), [*ops, ""], strict=True) for x in pair).strip()
    assert copy_text.eval_int(expression) == eval(expression)


def test_documents_are_seeded_and_mix_kinds_and_languages():
    docs = copy_text.documents(400, seed=3, paragraphs=[])
    assert docs == copy_text.documents(400, seed=3, paragraphs=[])
    assert docs != copy_text.documents(400, seed=4, paragraphs=[])
    chinese = sum(bool(re.search(r"[\u4e00-\u9fff]", d)) for d in docs)
    assert 0.2 < chinese / len(docs) < 0.4
    assert len(set(docs)) == len(docs)


def held_out_sentences() -> list[str]:
    """The phrasings bench/chat_eval.py measures on: customer_service's held-out templates, chat_eval's own."""
    held = []
    for table in (customer_service.INTENT_TEMPLATES, customer_service.FIRST_TURNS, customer_service.FINAL_QUESTIONS):
        for templates in table.values():
            held += [templates[i] for i in customer_service.split_ids(len(templates), held_out=True)]
    for questions, _ in customer_service.MIDDLE_TOPICS.values():
        held += [questions[i] for i in customer_service.split_ids(len(questions), held_out=True)]
    spec = importlib.util.spec_from_file_location("chat_eval", ROOT / "bench" / "chat_eval.py")
    chat_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat_eval)
    return held + chat_eval.ROUTER_PARAPHRASES


def test_no_phrasing_shares_four_words_in_a_row_with_a_held_out_one():
    held = set().union(*map(phrase_runs, held_out_sentences()))
    ours = [q for field in copy_text.FIELDS.values() for q in field[2]]
    for states, asks, _, _ in copy_text.STATE.values():
        ours += states + asks
    ours += [q for q, _ in copy_text.SMALL_TALK]
    ours += [t for ts in customer_service.EXTRA_TRAIN_TEMPLATES.values() for t in ts]
    ours += customer_service.ROUTER_INSTRUCTIONS_TRAIN
    ours += customer_service.NEUTRAL_OPENINGS + customer_service.NEUTRAL_ENDINGS
    ours += [a for answers in support_answers.ANSWERS.values() for a in answers]
    assert [t for t in ours if phrase_runs(t) & held] == []


def test_cli_writes_documents_and_sources(capsys, tmp_path):
    filler = tmp_path / "corpus"
    filler.mkdir()
    (filler / "a.txt").write_text("A paragraph of ordinary English prose for filler.\n\n短\n", encoding="utf-8")
    rc, out, err = run_cli(capsys, "data", "copy", "--out", str(tmp_path / "out"), "--docs", "40",
                           "--filler", str(filler))
    assert rc == 0, err
    assert "wrote 40 documents" in out
    lines = (tmp_path / "out" / "copy.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 and all(json.loads(line)["text"].strip() for line in lines)
    sources = json.loads((tmp_path / "out" / "SOURCES.json").read_text())
    assert sources["sources"][0]["files"] == ["copy.jsonl"] and sources["sources"][0]["documents"] == 40


@pytest.mark.parametrize("args, message", [
    (["--docs", "0"], "between 1 and"),
    (["--docs", "99999999999"], "between 1 and"),
    (["--docs", "-5"], "between 1 and"),
    (["--filler", "/no/such/folder"], "no such folder"),
    (["--kinds", "drill,nonsense"], "kinds must be some of"),
    (["--kinds", ","], "kinds must be some of"),
])
def test_cli_bad_input(capsys, tmp_path, args, message):
    rc, _, err = run_cli(capsys, "data", "copy", "--out", str(tmp_path / "out"), *args)
    assert_usage_error(rc, err, message)
    assert not (tmp_path / "out" / "copy.jsonl").exists()


def test_out_that_is_a_file_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(capsys, "data", "copy", "--out", str(tmp_path / "file"), "--docs", "3")
    assert_usage_error(rc, err, "file")


def test_corpus_paragraphs_cut_long_blocks_at_sentence_ends(tmp_path):
    sentence = "The committee met again and agreed on the budget for the coming year. "
    speech = "Address to Congress\n" + sentence * 40  # a speech written as one line, no blank line in it
    quoted = "“Let there be light,” God said — and there was light. " * 5  # curly quotes and a dash
    chinese = "这是一段中文的现代散文。" * 20
    (tmp_path / "a.txt").write_text(f"{speech}\n\n{quoted}\n\n{chinese}", encoding="utf-8")
    # as before: the long block left out, curly quotes not English
    assert copy_text.corpus_paragraphs(tmp_path, 200, 1500, english=True) == []
    english = copy_text.corpus_paragraphs(tmp_path, 200, 1500, english=True, cut_long=True)
    assert quoted.strip() in english and len(english) >= 3
    for piece in english:
        assert 200 <= len(piece) <= 1500 and piece.endswith((".", "”")) and "中" not in piece
    # nothing of the speech is lost but the spaces between pieces
    assert re.sub(r"\s", "", "".join(english[:-1])) == re.sub(r"\s", "", speech)
    assert copy_text.corpus_paragraphs(tmp_path, 200, 1500, english=False, cut_long=True) == [chinese]
    # Chinese puts no space after 。, and an apostrophe ends no sentence
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "a.txt").write_text(chinese * 2, encoding="utf-8")
    assert copy_text.corpus_paragraphs(tmp_path / "zh", 50, 100, english=False, cut_long=True) == [chinese[:96]] * 5
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "a.txt").write_text("The boys' bikes were new. " * 8, encoding="utf-8")
    two = "The boys' bikes were new. The boys' bikes were new."
    assert copy_text.corpus_paragraphs(tmp_path / "en", 20, 60, english=True, cut_long=True) == [two] * 4
