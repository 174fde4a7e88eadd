"""The chat fine-tuning sets: line format, determinism, held-out phrasings, recall dialogues, arithmetic, sources."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

import seekmoe.train.chat_data as chat_data
from seekmoe.train.chat_data import (
    SETS,
    ChatDataError,
    MissingSourceError,
    add_arguments,
    arithmetic,
    build_all,
    chatterbot,
    check_example,
    customer_service,
    customer_service_zh,
    python_faq,
    recall,
    support_answers,
)
from tests.conftest import assert_usage_error, phrase_runs, run_cli

SMALL = {"arithmetic": (300, 60), "arithmetic_tools": (40, 20), "intents": (600, 300), "dialogues": (300, 120),
         "dialogues_zh": (300, 120), "support": (600, 120), "recall": (300, 120)}
FAQ_DIR = python_faq.DEFAULT_DIR
HAVE_FAQ = FAQ_DIR.is_dir()
HAVE_CHATTERBOT = importlib.util.find_spec("chatterbot_corpus") is not None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat")
    build_all(out, seed=0, sizes=SMALL, progress=False, skip_missing=True)
    return out


def load(out: Path, name: str, split: str) -> list[dict]:
    return read_jsonl(out / f"{name}.{split}.jsonl")


def test_every_line_is_a_well_formed_chat(built):
    sources = json.loads((built / "SOURCES.json").read_text(encoding="utf-8"))
    written = {s["name"]: s for s in sources["sets"]}
    assert set(written) | {s["name"] for s in sources["skipped"]} == set(SETS)
    for name, entry in written.items():
        assert entry["license"] and entry["origin"]
        for split in ("train", "val"):
            lines = load(built, name, split)
            assert len(lines) == entry["counts"][split] > 0, (name, split)
            for ex in lines:
                if name == "arithmetic_tools":
                    check_tool_example(ex)
                    continue
                assert set(ex) == {"messages", "meta"} and isinstance(ex["meta"], dict)
                roles = [m["role"] for m in ex["messages"]]
                body = roles[1:] if roles[0] == "system" else roles
                assert body and body == ["user", "assistant"] * (len(body) // 2), roles
                for m in ex["messages"]:
                    assert set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()
                # a tiny model has a 1,024-token context: a whole example must fit with room to spare
                assert sum(len(m["content"]) for m in ex["messages"]) < 2000, ex["meta"]
    for name, (n_train, n_val) in SMALL.items():
        assert written[name]["counts"] == {"train": n_train, "val": n_val}


def check_tool_example(ex: dict) -> None:
    """The problem, a call of the math tool with the problem's expression, its real result, and the answer."""
    from seekmoe.plugins.math import run
    from seekmoe.train.sft import parse_example

    chat = parse_example(ex)  # what fine-tuning reads: the format holds
    assert [t["function"]["name"] for t in chat.tools] == ["math"]
    assert [m["role"] for m in chat] == ["user", "assistant", "tool", "assistant"]
    (call,) = chat[1]["tool_calls"]
    arguments = json.loads(call["function"]["arguments"])
    answer = ex["meta"]["answer"]
    assert json.loads(chat[2]["content"]) == run(**arguments) and run(**arguments)["answer"] == str(answer)
    assert str(answer) in chat[3]["content"]


def test_arithmetic_tools_val_holds_arithmetic_val_problems(built):
    plain = [ex["messages"][0]["content"] for ex in load(built, "arithmetic", "val")]
    tools = [ex["messages"][0]["content"] for ex in load(built, "arithmetic_tools", "val")]
    assert tools == plain[:len(tools)]


def test_same_seed_writes_byte_identical_files(tmp_path, built):
    build_all(tmp_path / "again", seed=0, sizes=SMALL, progress=False, skip_missing=True)
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (built / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name

    build_all(tmp_path / "other", seed=1, sizes=SMALL, progress=False, skip_missing=True)
    for name in ("arithmetic", "intents", "dialogues", "dialogues_zh"):
        assert (built / f"{name}.train.jsonl").read_bytes() != (tmp_path / "other" / f"{name}.train.jsonl").read_bytes()


def test_val_sets_do_not_change_when_the_train_sets_grow(tmp_path, built):
    # the held-out sets are what bench/chat_eval.py compares models on: more training data must leave them alone
    bigger = {name: (2 * train, val) for name, (train, val) in SMALL.items()}
    build_all(tmp_path, seed=0, sizes=bigger, progress=False, skip_missing=True)
    for name in SMALL:
        assert (built / f"{name}.val.jsonl").read_bytes() == (tmp_path / f"{name}.val.jsonl").read_bytes(), name


def test_extra_phrasings_and_router_wordings_share_nothing_with_the_held_out_ones():
    held = [t for templates in customer_service.INTENT_TEMPLATES.values()
            for t in (templates[i] for i in customer_service.split_ids(len(templates), held_out=True))]
    extra = [t for templates in customer_service.EXTRA_TRAIN_TEMPLATES.values() for t in templates]
    assert set(customer_service.EXTRA_TRAIN_TEMPLATES) == set(customer_service.INTENTS)
    assert not set(extra) & set(held)
    held_runs = set().union(*(phrase_runs(t, 4, chinese=False) for t in held))  # nor four words in a row
    assert [t for t in extra if phrase_runs(t, 4, chinese=False) & held_runs] == []
    assert customer_service.INTENT_PROMPT not in customer_service.ROUTER_INSTRUCTIONS_TRAIN
    for wording in customer_service.ROUTER_INSTRUCTIONS_TRAIN:
        assert wording.count("{labels}") == 1, wording


def test_training_intents_share_openings_endings_and_hashes_across_intents(built):
    # no intent may own "Can you ...", "Thanks!" or "#N": each is in the training messages of every other intent.
    # 3,000 messages, not the fixture's 600: few product questions carry an order number to put a '#' before
    train = customer_service.intent_examples(3000, random.Random(0), held_out=False)
    val = load(built, "intents", "val")
    for intent in set(customer_service.INTENTS) - {"greeting"}:
        said = [ex["messages"][1]["content"] for ex in train if ex["meta"]["intent"] == intent]
        assert any(m.startswith(tuple(customer_service.NEUTRAL_OPENINGS)) for m in said), intent
        assert any(m.endswith(tuple(customer_service.NEUTRAL_ENDINGS)) for m in said), intent
        if intent != "greeting":
            assert any(re.search(r"#\d{5}", m) for m in said), intent
    for ex in val:  # the held-out messages are as they were: only their templates' own '#'
        message = ex["messages"][1]["content"]
        assert not message.startswith(tuple(customer_service.NEUTRAL_OPENINGS))
        assert "#" not in message or "#{order}" in customer_service.INTENT_TEMPLATES[ex["meta"]["intent"]][
            int(ex["meta"]["template"].split("/")[1])]


def test_intent_val_uses_only_held_out_templates(built):
    train, val = load(built, "intents", "train"), load(built, "intents", "val")
    train_ids = {ex["meta"]["template"] for ex in train}
    val_ids = {ex["meta"]["template"] for ex in val}
    assert not train_ids & val_ids
    for ex in val:  # the held-out set asks with the documented instruction only
        assert ex["messages"][0] == {"role": "system", "content": customer_service.INTENT_PROMPT}
    instructions = [ex["messages"][0]["content"] for ex in train]
    assert 0.3 < instructions.count(customer_service.INTENT_PROMPT) / len(train) < 0.7
    for text in instructions:  # every other wording still lists all six labels
        assert all(label in text for label in customer_service.INTENTS), text
    assert sum(ex["meta"]["template"].split("/")[1].startswith("extra") for ex in train) > len(train) / 4
    for ex in train + val:
        assert ex["meta"]["task"] == "intent"
        assert ex["messages"][0]["role"] == "system"
        assert ex["messages"][-1]["content"] == ex["meta"]["intent"] in customer_service.INTENTS
        assert ex["meta"]["template"].startswith(ex["meta"]["intent"] + "/")
    for split in (train, val):
        assert {ex["meta"]["intent"] for ex in split} == set(customer_service.INTENTS)
    for intent, templates in customer_service.INTENT_TEMPLATES.items():
        assert len(templates) >= 12, intent
        assert len(set(templates)) == len(templates), intent
        held_out = customer_service.split_ids(len(templates), held_out=True)
        assert round(len(templates) / 3) == len(held_out), intent


def test_support_answers_name_what_the_message_gave_in_its_language(built):
    train, val = load(built, "support", "train"), load(built, "support", "val")
    cjk = re.compile("[\u4e00-\u9fff]")
    replies = {intent: set(support_answers.ANSWERS[intent]) | set(support_answers.ANSWERS_ZH[intent])
               for intent in customer_service.INTENTS}
    for ex in train + val:
        message, reply = ex["messages"][-2]["content"], ex["messages"][-1]["content"]
        meta = ex["meta"]
        assert meta["task"] == "support" and ex["messages"][-2]["role"] == "user"
        if "order" in meta and meta["intent"] not in ("product_question", "greeting"):  # a given order is named
            assert meta["order"] in message and meta["order"] in reply, (message, reply)
        assert bool(cjk.search(reply)) == bool(cjk.search(message)) or "product" in meta, (message, reply)
        assert reply.endswith((".", "?", "!", "。", "？", "！")), reply
        assert any(re.fullmatch(re.sub(r"\\{\w+\\}", ".+", re.escape(r)), reply) for r in replies[meta["intent"]])
    asking = [ex for ex in train if "order" not in ex["meta"] and ex["meta"]["intent"] == "order_status"]
    assert asking and all("order number" in ex["messages"][-1]["content"] or "订单号" in ex["messages"][-1]["content"]
                          or ex["meta"].get("product") for ex in asking)
    systems = [ex["messages"][0]["role"] == "system" for ex in train]
    assert 0.3 < sum(systems) / len(train) < 0.7  # the README's quick start sends no system prompt
    # the intent set's split: held-out phrasings only in val, the training extras never there
    train_ids, val_ids = {ex["meta"]["template"] for ex in train}, {ex["meta"]["template"] for ex in val}
    assert not train_ids & val_ids and not any("extra" in t for t in val_ids)
    for ex in val:
        intent, i = ex["meta"]["template"].split("/")
        assert int(i) in customer_service.split_ids(len(customer_service.INTENT_TEMPLATES[intent]), held_out=True)


def test_support_answers_use_only_slots_they_are_given():
    rng = random.Random(0)
    filled = {"order": "12345", "product": "desk lamp", "city": "Lyon", "address": "3 Mill Lane, Lyon",
              "name": "Anna Jones", "date": "May 2"}
    for _ in range(50):
        # the address holds the city: never asked for again
        assert support_answers.answer(rng, "address_change", "Send it to 3 Mill Lane, Lyon.", filled) == (
            "Thanks, I've noted 3 Mill Lane, Lyon as your new delivery address. Which order should go there?")
        both = support_answers.answer(rng, "address_change", "Order 12345 must go to 3 Mill Lane, Lyon.", filled)
        assert both.startswith("Done: I've asked our warehouse to send order 12345 to 3 Mill Lane, Lyon.")
        assert "order number" in support_answers.answer(rng, "order_status", "Where is my parcel?", filled)
        assert "12345" in support_answers.answer(rng, "refund", "我要退款，订单号12345。", filled)


BOOKS = {"dialogues": customer_service.ENGLISH, "dialogues_zh": customer_service_zh.CHINESE}


@pytest.mark.parametrize("name", BOOKS)
def test_dialogue_ends_by_recalling_the_fact_from_the_first_turn(built, name):
    book = BOOKS[name]
    for split in ("train", "val"):
        for ex in load(built, name, split):
            meta, messages = ex["meta"], ex["messages"]
            fact = meta["fact"]
            assert meta["task"] == "dialogue" and meta["fact_kind"] in customer_service.FACT_KINDS
            assert meta.get("lang") == book.lang
            if split == "val" or messages[0]["role"] == "system":
                assert messages[0] == {"role": "system", "content": book.support_prompt}
            user = [m["content"] for m in messages if m["role"] == "user"]
            assistant = [m["content"] for m in messages if m["role"] == "assistant"]
            assert 5 <= len(user) == meta["turns"] <= 8
            assert fact in user[0]
            assert fact in assistant[-1]
            # only the first turn and the final answer hold it: the model has to reach back, not copy
            assert not any(fact in text for text in user[1:] + assistant[:-1])


def pooled_en(meta: dict, train_only: bool = False) -> bool:
    """The fact is from the held-out pools (or, with train_only, from the training-only ones)."""
    cs, fact, kind = customer_service, meta["fact"], meta["fact_kind"]
    firsts, lasts, cities = ((cs.TRAIN_FIRST_NAMES, cs.TRAIN_LAST_NAMES, cs.TRAIN_CITIES) if train_only
                             else (cs.FIRST_NAMES, cs.LAST_NAMES, cs.CITIES))
    if kind == "order_number":
        return not train_only
    if kind == "city":
        return fact in cities
    first, last = (fact.split("@")[0].split(".") if kind == "email" else fact.split(" "))
    return first.capitalize() in firsts and last.capitalize() in lasts


def pooled_zh(meta: dict, train_only: bool = False) -> bool:
    zh, fact, kind = customer_service_zh, meta["fact"], meta["fact_kind"]
    cities, given_names = (zh.TRAIN_CITIES_ZH, zh.TRAIN_GIVEN_NAMES) if train_only else (zh.CITIES_ZH, zh.GIVEN_NAMES)
    if kind == "order_number":
        return not train_only
    if kind == "city":
        return fact in cities
    if kind == "name":
        return fact[0] in zh.SURNAMES and fact[1:] in given_names
    surname, given = fact.split("@")[0].split(".")
    return surname in zh.SURNAMES.values() and given in given_names.values()


@pytest.mark.parametrize(("name", "pooled"), [("dialogues", pooled_en), ("dialogues_zh", pooled_zh)])
def test_training_dialogues_also_recall_facts_the_held_out_ones_never(built, name, pooled):
    # a fact from a pool of twenty can be guessed; a made-up one, or a real one from the training-only pools, has to
    # be copied from the first turn
    val = [ex["meta"] for ex in load(built, name, "val")]
    assert all(pooled(meta) and not pooled(meta, train_only=True) for meta in val)
    train = [ex["meta"] for ex in load(built, name, "train") if ex["meta"]["fact_kind"] != "order_number"]
    held_out_pool = sum(pooled(meta) for meta in train) / len(train)
    train_pool = sum(pooled(meta, train_only=True) for meta in train) / len(train)
    cs = customer_service
    assert abs(held_out_pool - (1 - cs.INVENTED_SHARE - cs.TRAIN_POOL_SHARE)) < 0.1
    # an English name is never made up: its draw for a made-up fact takes a training-only name instead
    falls_back = [name == "dialogues" and meta["fact_kind"] not in cs.INVENTED_KINDS for meta in train]
    expected = sum(cs.TRAIN_POOL_SHARE + cs.INVENTED_SHARE * f for f in falls_back) / len(train)
    assert abs(train_pool - expected) < 0.1
    assert len({meta["fact"] for meta in train}) > 0.6 * len(train)


def test_english_training_names_are_never_made_up(built):
    # syllable names taught the model that a name is syllables: held-out names came back made up
    metas = [ex["meta"] for ex in load(built, "dialogues", "train")]
    metas += [{"fact": fact, "fact_kind": kind} for ex in load(built, "recall", "train") if ex["meta"]["lang"] == "en"
              for kind, fact in ex["meta"]["facts"].items()]
    names = [meta for meta in metas if meta["fact_kind"] == "name"]
    assert len(names) > 50 and all(pooled_en(meta) or pooled_en(meta, train_only=True) for meta in names)
    # e-mails and towns still are, in about the share the constant says
    others = [meta for meta in metas if meta["fact_kind"] in ("city", "email")]
    made_up = sum(not (pooled_en(meta) or pooled_en(meta, train_only=True)) for meta in others) / len(others)
    assert abs(made_up - customer_service.INVENTED_SHARE) < 0.1


def test_training_only_names_and_towns_never_hold_a_held_out_one():
    # an answer naming a training-only fact must not pass for a held-out one (bench/chat_eval.py looks for the
    # held-out fact inside the answer)
    cs, zh = customer_service, customer_service_zh
    for train_only, held_out in [(cs.TRAIN_FIRST_NAMES + cs.TRAIN_LAST_NAMES, cs.FIRST_NAMES + cs.LAST_NAMES),
                                 (cs.TRAIN_CITIES, cs.CITIES), (zh.TRAIN_CITIES_ZH, zh.CITIES_ZH),
                                 (list(zh.TRAIN_GIVEN_NAMES), list(zh.GIVEN_NAMES))]:
        assert len(set(train_only)) == len(train_only)
        assert not [(a, b) for a in train_only for b in held_out if b.lower() in a.lower() or a.lower() in b.lower()]
    assert not set(zh.TRAIN_GIVEN_NAMES.values()) & set(zh.GIVEN_NAMES.values())


def test_chinese_phrasebook_matches_the_english_one():
    en, zh = customer_service.ENGLISH, customer_service_zh.CHINESE
    assert list(zh.middle_topics) == list(en.middle_topics) and zh.shop.keys() == en.shop.keys()
    for table in ("first_turns", "final_questions", "final_answers"):
        assert getattr(zh, table).keys() == set(customer_service.FACT_KINDS), table
    for templates in [*zh.first_turns.values(), *zh.final_questions.values(),
                      *(questions for questions, _ in zh.middle_topics.values())]:
        assert len(templates) >= 6 and len(set(templates)) == len(templates), templates
    for (_, en_replies), (_, zh_replies) in zip(en.middle_topics.values(), zh.middle_topics.values(), strict=True):
        # the same shop figures in the same replies
        assert [sorted(re.findall(r"{(\w+)}", r)) for r in zh_replies] == [
            sorted(re.findall(r"{(\w+)}", r)) for r in en_replies]
    # a made-up name or town shares no character with the pools, so it is never a pooled one by chance
    zh_mod = customer_service_zh
    assert not set(zh_mod.GIVEN_CHARS) & set("".join(zh_mod.GIVEN_NAMES))
    assert not set(zh_mod.TOWN_CHARS) & set("".join(zh_mod.CITIES_ZH))
    pooled_syllables = {*zh_mod.SURNAMES.values(), *zh_mod.GIVEN_NAMES.values()}
    assert not set(zh_mod.EMAIL_SYLLABLES) & pooled_syllables


@pytest.mark.parametrize("name", BOOKS)
def test_some_training_dialogues_have_no_system_prompt(built, name):
    train = load(built, name, "train")
    share = sum(ex["messages"][0]["role"] == "user" for ex in train) / len(train)
    assert abs(share - customer_service.NO_SYSTEM_SHARE) < 0.1
    assert all(ex["messages"][0]["role"] == "system" for ex in load(built, name, "val"))


@pytest.mark.parametrize("name", BOOKS)
def test_dialogue_val_phrasings_never_appear_in_train(built, name):
    def ids(split):
        return {t for ex in load(built, name, split) for t in ex["meta"]["templates"]}

    train, val = ids("train"), ids("val")
    assert not train & val
    assert any(t.startswith("final/") for t in val) and any(t.startswith("middle/") for t in val)
    finals = {ex["messages"][-2]["content"] for ex in load(built, name, "val")}
    assert not finals & {ex["messages"][-2]["content"] for ex in load(built, name, "train")}


@pytest.mark.parametrize("name", BOOKS)
def test_extra_dialogue_phrasings_train_only_and_unlike_the_held_out_ones(built, name):
    book = BOOKS[name]
    chinese, n = (True, 6) if book.lang == "zh" else (False, 4)
    for held_table, extra_table in ((book.first_turns, book.extra_first_turns),
                                    (book.final_questions, book.extra_final_questions)):
        assert extra_table.keys() == held_table.keys()
        held = [t for ts in held_table.values() for t in (ts[i] for i in customer_service.split_ids(len(ts), True))]
        held_runs = set().union(*(phrase_runs(t, n, chinese) for t in held))
        for extras in extra_table.values():
            assert len(set(extras)) == len(extras) >= 6
            assert [t for t in extras if t.count("{fact}") != (extra_table is book.extra_first_turns)] == []
            assert [t for t in extras if phrase_runs(t, n, chinese) & held_runs] == []

    def used(split, stage):
        return [t for ex in load(built, name, split) for t in ex["meta"]["templates"] if t.startswith(stage + "/")]

    for stage in ("first", "final"):
        train = used("train", stage)
        assert 0.3 < sum("/extra" in t for t in train) / len(train) < 0.7, stage
        assert not any("/extra" in t for t in used("val", stage))


def template_pattern(template: str) -> re.Pattern:
    """A template as a regex: the fact (or a shop figure) is any text."""
    return re.compile("".join(".+" if part.startswith("{") else re.escape(part)
                              for part in re.split(r"({\w+})", template) if part) + "$")


def test_recall_chats_ask_every_fact_back_after_all_are_given(built):
    for split in ("train", "val"):
        for ex in load(built, "recall", split):
            meta, messages = ex["meta"], ex["messages"]
            book = customer_service_zh.CHINESE if meta["lang"] == "zh" else customer_service.ENGLISH
            assert meta["task"] == "recall" and 2 <= len(meta["facts"]) <= 4
            assert set(meta["facts"]) <= set(customer_service.FACT_KINDS)
            if split == "val":
                assert messages[0] == {"role": "system", "content": book.support_prompt}
            body = messages[1:] if messages[0]["role"] == "system" else messages
            users, answers = [m["content"] for m in body[::2]], [m["content"] for m in body[1::2]]
            n = len(meta["facts"])
            # the facts, one a turn, in the order meta lists them; the last n answers name them all, each once
            assert [fact in said for fact, said in zip(meta["facts"].values(), users, strict=False)] == [True] * n
            last = answers[-n:]
            assert sorted(sum(fact in a for a in last) for fact in meta["facts"].values()) == [1] * n
            assert all(any(fact in a for fact in meta["facts"].values()) for a in last)
            assert not any(fact in a for fact in meta["facts"].values() for a in answers[:-n])


def test_recall_val_phrasings_are_the_held_out_ones_and_train_never_uses_them(built):
    held_out = []
    for book in (customer_service.ENGLISH, customer_service_zh.CHINESE):
        for templates in [*book.first_turns.values(), *book.final_questions.values(),
                          *(questions for questions, _ in book.middle_topics.values())]:
            held_out += [template_pattern(templates[i]) for i in customer_service.split_ids(len(templates), True)]
    for ex in load(built, "recall", "val"):
        for m in ex["messages"][1::2]:
            assert any(p.match(m["content"]) for p in held_out), m
    train = [m["content"] for ex in load(built, "recall", "train") for m in ex["messages"] if m["role"] == "user"]
    assert not [said for said in train if any(p.match(said) for p in held_out)]


def test_recall_training_facts_come_mostly_from_open_sets(built):
    # a Chinese town of common characters is the case the next-character prior also proposes: only copying wins
    train = [ex["meta"] for ex in load(built, "recall", "train")]
    towns = [m["facts"]["city"] for m in train if m["lang"] == "zh" and "city" in m["facts"]]
    pools = set(customer_service_zh.CITIES_ZH) | set(customer_service_zh.TRAIN_CITIES_ZH)
    open_towns = [t for t in towns if t not in pools and set(t.rstrip("市县镇")) <= set(recall.COMMON_ZH)]
    assert abs(len(open_towns) / len(towns) - recall.OPEN_SHARE) < 0.2
    assert len(set(open_towns)) > 0.8 * len(open_towns)
    for pool in (recall.COMMON_ZH, recall.SURNAMES_ZH):
        assert len(set(pool)) == len(pool)
    assert {m["lang"] for m in train} == {"en", "zh"}


STEP_EN = re.compile(r"Step (\d+): (\d+) ([+×-]) (\d+) = (\d+)\.")
STEP_ZH = re.compile(r"第([一二三])步：(\d+) ([+×-]) (\d+) = (\d+)。")


def test_arithmetic_answers_recompute_from_meta(built):
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "×": lambda x, y: x * y}
    examples = load(built, "arithmetic", "train") + load(built, "arithmetic", "val")
    assert {ex["meta"]["lang"] for ex in examples} == {"en", "zh"}
    assert {ex["meta"]["kind"] for ex in examples} == set(arithmetic.KINDS)
    for ex in examples:
        meta, question, answer = ex["meta"], ex["messages"][0]["content"], ex["messages"][1]["content"]
        value = meta["numbers"][0]
        for op, y in zip(meta["ops"], meta["numbers"][1:], strict=True):
            value = apply[op](value, y)
        assert value == meta["answer"] >= 0, meta
        for n in meta["numbers"]:
            assert str(n) in question, (n, question)
        steps = (STEP_EN if meta["lang"] == "en" else STEP_ZH).findall(answer)
        assert len(steps) == len(meta["ops"]), answer
        for _, x, op, y, result in steps:
            assert apply[op](int(x), int(y)) == int(result), answer
        assert int(steps[-1][4]) == meta["answer"]
        ending = f"The answer is {value}." if meta["lang"] == "en" else f"答案是 {value}。"
        assert answer.endswith(ending), answer


FAQ_RST = """\
===========
Example FAQ
===========

.. only:: html

   .. contents::

General
=======

.. _faq-len:

How do I get the length of a list?
----------------------------------

Use :func:`len`, or see `the tutorial <https://docs.python.org/3/tutorial/>`_.
The value of ``len([])`` is 0, and
:meth:`~list.append` adds one.

.. index:: single: length

Example::

   >>> len([1, 2])
   2

.. code-block:: python

   n = len(items)



Done.

This heading is not a question
------------------------------

Some text.

Why is **this** answer long?
~~~~~~~~~~~~~~~~~~~~~~~~~~~~

{long}

{long}
"""


def test_faq_parser_cleans_rest():
    long = " ".join(["A sentence of filler words."] * 20)  # ~560 characters: two of them exceed the limit
    pairs = python_faq.parse_faq(FAQ_RST.replace("{long}", long))
    assert [q for q, _ in pairs] == ["How do I get the length of a list?", "Why is this answer long?"]
    answer = pairs[0][1]
    assert answer == ("Use len, or see the tutorial. The value of len([]) is 0, and append adds one.\n\n"
                      "Example:\n\n"
                      "   >>> len([1, 2])\n   2\n\n"
                      "   n = len(items)\n\n"
                      "Done.")
    assert pairs[1][1] == long and len(pairs[1][1]) <= python_faq.MAX_ANSWER_CHARS


def test_faq_shorten_cuts_at_paragraph_or_sentence():
    para = "One two three. " * 30  # ~450 characters
    assert python_faq.shorten(f"{para.strip()}\n\n{para.strip()}") == para.strip()
    cut = python_faq.shorten("Word. " * 200)
    assert len(cut) <= python_faq.MAX_ANSWER_CHARS and cut.endswith(".")
    assert python_faq.shorten(f"{para.strip()}\n\nFor example:\n\n   {'x = 1; ' * 40}") == para.strip()


@pytest.mark.skipif(not HAVE_FAQ, reason=f"{FAQ_DIR} missing (apt install python3.11-doc)")
def test_faq_real_folder():
    examples, source = python_faq.load()
    assert len(examples) > 100 and source["license"] == "PSF-2.0"
    for ex in examples:
        question, answer = ex["messages"][0]["content"], ex["messages"][1]["content"]
        assert question.endswith("?") and "``" not in question
        assert 0 < len(answer) <= python_faq.MAX_ANSWER_CHARS
        assert not re.search(r":\w+:`|``|`_|^\.\. ", answer, re.M), answer
        assert ex["meta"] == {"source": "python-faq", "file": ex["meta"]["file"]}


CHATTERBOT_YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there!
- - "  How are you?  "
  - I am fine.
  - Good to hear.
- - Only one
- - yes
  - A bare yes is a bool in YAML
- - Ask
  - key: value
- - Hello
  - Hi there!
"""


def test_chatterbot_reader_on_small_yaml(tmp_path):
    for folder in ("english", "chinese"):
        (tmp_path / folder).mkdir()
    (tmp_path / "english" / "greetings.yml").write_text(CHATTERBOT_YAML, encoding="utf-8")
    (tmp_path / "chinese" / "greetings.yml").write_text("conversations:\n- - 你好\n  - 嗨\n", encoding="utf-8")
    examples, source = chatterbot.load(tmp_path)
    assert [[(m["role"], m["content"]) for m in ex["messages"]] for ex in examples] == [
        [("user", "Hello"), ("assistant", "Hi there!")],  # its repeat at the end is dropped
        [("user", "How are you?"), ("assistant", "I am fine.")],  # the odd third utterance would end on the user
        [("user", "你好"), ("assistant", "嗨")],
    ]
    assert examples[0]["meta"] == {"source": "chatterbot", "lang": "en", "category": "greetings"}
    assert examples[2]["meta"]["lang"] == "zh" and source["license"] == "BSD-3-Clause"

    (tmp_path / "english" / "broken.yml").write_text("conversations: [unclosed\n", encoding="utf-8")
    with pytest.raises(ChatDataError, match=r"broken\.yml"):
        chatterbot.load(tmp_path)
    (tmp_path / "english" / "broken.yml").write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(ChatDataError, match=r"broken\.yml.*conversations"):
        chatterbot.load(tmp_path)


@pytest.mark.skipif(not HAVE_CHATTERBOT, reason="chatterbot-corpus not installed")
def test_chatterbot_real_package():
    examples, source = chatterbot.load()
    langs = {ex["meta"]["lang"] for ex in examples}
    assert langs == {"en", "zh"} and len(examples) > 1000
    assert source["origin"].startswith("pypi:chatterbot-corpus")
    for ex in examples:
        check_example(ex, "chatterbot")


def test_missing_sources_say_what_to_install(tmp_path, monkeypatch):
    with pytest.raises(MissingSourceError, match=r"apt install python3\.11-doc"):
        python_faq.load(tmp_path / "nope")
    with pytest.raises(MissingSourceError, match="pip install chatterbot-corpus"):
        chatterbot.load(tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "chatterbot_corpus" else real_find_spec(name, *a))
    with pytest.raises(MissingSourceError, match="pip install chatterbot-corpus"):
        chatterbot.load()


def test_build_fails_on_a_missing_source_unless_skipped(tmp_path, capsys):
    with pytest.raises(MissingSourceError, match=r"python3\.11-doc"):
        build_all(tmp_path / "a", sizes=SMALL, progress=False, faq_dir=tmp_path / "nope")
    report = build_all(tmp_path / "b", sizes=SMALL, progress=False, skip_missing=True,
                       faq_dir=tmp_path / "nope", chatterbot_dir=tmp_path / "nope")
    assert [s["name"] for s in report["skipped"]] == ["chatterbot", "python_faq"]
    assert [s["name"] for s in report["sets"]] == ["arithmetic", "arithmetic_tools", "intents", "dialogues",
                                                   "dialogues_zh", "support", "recall"]
    assert not (tmp_path / "b" / "python_faq.train.jsonl").exists()
    err = capsys.readouterr().err
    assert "skipping chatterbot" in err and "skipping python_faq" in err


def test_bad_sizes_and_bad_examples_are_named():
    with pytest.raises(ChatDataError, match="unknown generated set 'poems'"):
        build_all("/nonexistent", sizes={"poems": (1, 1)})
    with pytest.raises(ChatDataError, match=r"sizes\['intents'\]"):
        build_all("/nonexistent", sizes={"intents": (10, -1)})
    with pytest.raises(ChatDataError, match="end on an assistant answer"):
        check_example({"messages": [{"role": "user", "content": "hi"}]}, "x")
    with pytest.raises(ChatDataError, match="tool calls: assistant, tool"):
        check_example({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}, "x")
    with pytest.raises(ChatDataError, match="non-empty text"):
        check_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}, "x")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seekmoe data chat")
    add_arguments(p)
    return p


def test_cli_builds_and_reports(tmp_path, capsys, monkeypatch):
    p = parser()
    assert p.description
    assert all(a.help for a in p._actions)
    # both real sources missing, whatever this machine has installed
    monkeypatch.setattr(chatterbot, "package_data_dir", lambda: tmp_path / "no-corpus")
    monkeypatch.setattr(python_faq, "DEFAULT_DIR", tmp_path / "no-faq")
    for name, size in SMALL.items():
        monkeypatch.setitem(chat_data.SIZES, name, size)

    rc, _, err = run_cli(capsys, "data", "chat", "--out", str(tmp_path / "out"))
    assert_usage_error(rc, err, "pip install chatterbot-corpus")

    rc, out, err = run_cli(capsys, "data", "chat", "--out", str(tmp_path / "out"), "--seed", "3", "--skip-missing")
    assert rc == 0
    assert "chatterbot  skipped" in out and "python_faq  skipped" in out and "dialogues" in out
    assert "pip install chatterbot-corpus" in err and "apt install python3.11-doc" in err
    assert json.loads((tmp_path / "out" / "SOURCES.json").read_text())["seed"] == 3
    assert len(read_jsonl(tmp_path / "out" / "intents.val.jsonl")) == SMALL["intents"][1]

    rc, _, _ = run_cli(capsys, "data", "chat", "--out", str(tmp_path / "more"), "--skip-missing", "--seed", "3",
                       "--train-size", "dialogues=7", "--train-size", "intents=0")
    assert rc == 0
    assert len(read_jsonl(tmp_path / "more" / "dialogues.train.jsonl")) == 7
    assert (tmp_path / "more" / "intents.train.jsonl").read_text() == ""
    for name in ("dialogues.val.jsonl", "intents.val.jsonl", "arithmetic.train.jsonl"):  # only the sizes asked
        assert (tmp_path / "more" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
    for bad, needle in (("dialogues", "SET=N"), ("dialogues=-1", "SET=N"), ("dialogues=x", "SET=N"),
                        ("chatterbot=5", "unknown generated set 'chatterbot'")):
        rc, _, err = run_cli(capsys, "data", "chat", "--out", str(tmp_path / "bad"), "--train-size", bad)
        assert_usage_error(rc, err, needle)

    with pytest.raises(SystemExit):
        p.parse_args([])  # --out is required


def test_the_shipped_chat_sets_are_every_set_the_generator_writes():
    # data/chat is what `seekmoe data chat --out data/chat` writes: a set added to the generator is shipped too
    shipped = Path(__file__).parent.parent / "data" / "chat"
    sources = json.loads((shipped / "SOURCES.json").read_text(encoding="utf-8"))
    assert {s["name"] for s in sources["sets"]} == set(SETS)
    for name in SETS:
        for split in ("train", "val"):
            lines = read_jsonl(shipped / f"{name}.{split}.jsonl")
            assert lines, (name, split)
            for i, x in enumerate(lines[:50]):
                check_example(x, f"{name}.{split}.jsonl:{i + 1}")
