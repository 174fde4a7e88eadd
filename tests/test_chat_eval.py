"""bench/chat_eval.py's continuation check (what makes a sample unreadable, each failure named), its split of
recall by the word before the fact, and its paired comparison of models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chat_eval():
    spec = importlib.util.spec_from_file_location("chat_eval", ROOT / "bench" / "chat_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("text", "lang", "reason"), [
    (", and the ship rolled on through the long grey swell of the morning.", "en", None),
    ("  the end.  ", "en", "short"),  # 8 characters once stripped
    (", and the ship rolled on through the 海 of the morning.", "en", "script"),  # one Chinese character is enough
    ("12345 67890 12345 67890 !!!", "en", "script"),  # no Latin letter at all
    ("the ship the ship the ship the ship the ship the ship", "en", "loop"),
    ("一个小村庄，村里住着一位老木匠，他每天都在院子里做椅子。", "zh", None),
    # a product name may stand in Chinese prose
    ("打开 LibreOffice 的工具菜单，然后在弹出的对话框里选择选项，再点确定按钮保存设置。", "zh", None),
    ("The quick brown fox jumps over the lazy dog 的.", "zh", "script"),
    ("好好好好好好好好好好好好好好好好好好好好好好", "zh", "loop"),
])
def test_each_unreadable_continuation_names_its_reason(chat_eval, text, lang, reason):
    assert chat_eval.unreadable(text, lang) == reason


def dialogue(first: str, fact: str, kind: str, turns: int = 6) -> dict:
    return {"messages": [{"role": "system", "content": "shop"}, {"role": "user", "content": first}],
            "meta": {"fact": fact, "fact_kind": kind, "turns": turns}}


def test_recall_is_split_by_whether_the_answer_ends_on_the_customers_word(chat_eval):
    dialogues = [dialogue("I'm based in Leeds and have a few questions.", "Leeds", "city"),
                 dialogue("Hi, I'm Kenji Garcia and I have some questions.", "Kenji Garcia", "name"),
                 dialogue("Hi, I'm Kenji Garcia and I have some questions.", "Kenji Garcia", "name"),
                 dialogue("You can reach me at emma.kim@example.com.", "emma.kim@example.com", "email"),
                 dialogue("Hi, my order number is 12345.", "12345", "order_number"),  # numbers are not counted
                 dialogue("Good morning, I'm in Lyon.", "Lyon", "city", turns=5)]  # nor short dialogues
    said = ["You said you are in Leeds.", "Your name is Shenji Garcia.", "Your name is Kenji Garcia.",
            "Hello! Got it. What can I do for you?", "Your order number is 12345.", "You told me Lyon."]
    assert chat_eval.recall_by_anchor(said, dialogues) == {
        "the customer's": [1, 1], "another": [1, 2], "no answer template": [0, 1]}


def test_paired_difference_is_the_mean_change_with_its_interval(chat_eval):
    before, after = [0.0] * 10, [1.0] * 5 + [0.0] * 5
    mean, half = chat_eval.paired(before, after)
    # differences: five 1s, five 0s; sample variance 10 * 0.25 / 9
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.96 * (10 * 0.25 / 9 / 10) ** 0.5)
    assert chat_eval.paired(after, before) == pytest.approx((-0.5, half))
    # the same change on units that all move alike is certain: no spread, no interval
    assert chat_eval.paired([0.0, 1.0, 0.5], [0.5, 1.5, 1.0]) == pytest.approx((0.5, 0.0))


@pytest.mark.parametrize(("before", "after"), [([1.0, 0.0], [1.0]), ([1.0], [0.0]), ([], [])])
def test_paired_difference_refuses_units_that_do_not_pair(chat_eval, before, after):
    with pytest.raises(ValueError, match="same units"):
        chat_eval.paired(before, after)


def test_differences_mark_only_what_the_interval_shows(chat_eval):
    units = {"intent": [1.0] * 50 + [0.0] * 50, "support, greedy": [0.0, 1.0] * 50}
    first = {"model": "models/before", "units": units}
    # intent: 30 examples more right and none less (+30 points); support: 2 more and 1 less of 100 (+1 point)
    support = [1.0, 0.0, 1.0, *units["support, greedy"][3:]]  # units 0 and 2 now right, unit 1 now wrong
    better = {"intent": [1.0] * 80 + [0.0] * 20, "support, greedy": support}
    # a goal the first model has with other units (another --limit) is left out, not paired wrongly
    later = {"model": "runs/after/model", "units": better | {"recall after >= 5 turns": [1.0]}}
    first["units"]["recall after >= 5 turns"] = [1.0, 0.0]
    rows = chat_eval.differences([first, later]).splitlines()
    assert rows[0] == "| goal | units | after/model |"
    intent, = (r for r in rows if r.startswith("| intent |"))
    support_row, = (r for r in rows if r.startswith("| support, greedy |"))
    assert intent.startswith("| intent | 100 | +30.0 ± ") and intent.endswith(" * |")
    assert support_row.startswith("| support, greedy | 100 | +1.0 ± ") and not support_row.endswith(" * |")
    assert not any("recall" in r for r in rows)


def run_of(data: str, **units_by_model: dict) -> list[dict]:
    return [{"model": m, "data": data, "units": u} for m, u in units_by_model.items()]


def test_pooled_joins_each_models_units_over_the_draws_in_order(chat_eval):
    first = run_of("data/chat", a={"intent": [1.0, 0.0], "support, greedy": [1.0], "continuation en": [0.5]},
                   b={"intent": [1.0, 1.0], "support, greedy": [0.0], "continuation en": [1.0]})
    # the second draw lists the models the other way round: they are matched by name, not place
    second = run_of("data/chat-confirm", b={"intent": [0.0, 1.0, 1.0], "support, greedy": [1.0, 1.0],
                                            "continuation en": [1.0]},
                    a={"intent": [0.0, 0.0, 1.0], "support, greedy": [1.0], "continuation en": [0.5]})
    a, b = chat_eval.pooled([first, second])
    assert (a["model"], b["model"]) == ("a", "b")
    # support left out (b has other units in draw 2), continuation too (the same prompts in every run)
    assert a["units"] == {"intent": [1.0, 0.0, 0.0, 0.0, 1.0]}
    assert b["units"] == {"intent": [1.0, 1.0, 0.0, 1.0, 1.0]}
    # the joined units pair as one set: intent +40 points over five units
    assert chat_eval.paired(a["units"]["intent"], b["units"]["intent"])[0] == pytest.approx(0.4)


@pytest.mark.parametrize(("runs", "message"), [
    ([run_of("d", a={"intent": [1.0, 0.0]})], "two runs or more"),
    ([run_of("d", a={"intent": [1.0]}, b={"intent": [1.0]}), run_of("e", a={"intent": [1.0]})], "no result for b"),
    ([run_of("d", a={"intent": [1.0]}), run_of("e", a={"intent": [1.0]}) + run_of("f", b={"intent": [0.0]})],
     "different data"),
    ([run_of("d", a={"intent": [1.0]}), run_of("e", a={"intent": [1.0]}), run_of("d", a={"intent": [0.0]})],
     "two runs scored d"),
])
def test_pooled_refuses_runs_that_do_not_line_up(chat_eval, runs, message):
    with pytest.raises(ValueError, match=message):
        chat_eval.pooled(runs)


def test_pool_option_prints_the_joined_differences_and_refuses_bad_files(tmp_path):
    import json
    import subprocess
    import sys

    draws = [run_of(d, **{"seekmoe-tiny-chat": {"intent": [0.0] * 30}, "runs/x/model": {"intent": [1.0] * 30}})
             for d in ("data/chat", "data/chat-confirm")]
    files = []
    for i, run in enumerate(draws):
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps(run))
    script = str(ROOT / "bench" / "chat_eval.py")
    done = subprocess.run([sys.executable, script, "--pool", *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| intent | 60 | +100.0 ± 0.0 * |" in done.stdout
    (tmp_path / "bad.json").write_text("{not json")
    for extra in (["--pool", str(tmp_path / "bad.json"), str(files[0])], ["--pool", str(files[0])],
                  ["runs/x/model", "--pool", str(files[0]), str(files[1])]):
        done = subprocess.run([sys.executable, script, *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "--pool" in done.stderr, (extra, done.stderr)
