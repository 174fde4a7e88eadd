"""bench/chat_eval.py's continuation check (what makes a sample unreadable, each failure named) and its split of
recall by the word before the fact."""

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
