"""Arithmetic word problems with step-by-step answers, in English and Chinese.

The numbers are drawn first and every step is computed from them, so an answer can never disagree with its
question; meta keeps the numbers and operators so a test (or an evaluation) can recompute the answer.
Operands stay small (results under ~100): a tiny model should learn the format of a worked answer,
not long multiplication.
"""

from __future__ import annotations

import operator
import random

from seekmoe.train.chat_data import example

# a kind is the operators applied left to right: "mul_sub" is (a × b) - c
KINDS = {"add": ("+",), "sub": ("-",), "mul": ("×",), "add_sub": ("+", "-"), "sub_add": ("-", "+"),
         "mul_add": ("×", "+"), "mul_sub": ("×", "-")}
OPS = {"+": operator.add, "-": operator.sub, "×": operator.mul}

NAMES_EN = ["Tom", "Anna", "Lily", "Ben", "Mia", "Sam", "Noah", "Emma", "Leo", "Zoe", "Max", "Ella"]
OBJECTS_EN = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells", "cards",
              "eggs", "balloons", "crayons"]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "李华", "王芳", "张伟", "刘洋", "陈静", "小军", "小芳", "赵磊"]
# Chinese counts need the object's measure word: 3 个苹果, 3 支铅笔
OBJECTS_ZH = [("苹果", "个"), ("铅笔", "支"), ("贴纸", "张"), ("弹珠", "颗"), ("饼干", "块"), ("书", "本"),
              ("邮票", "张"), ("贝壳", "个"), ("卡片", "张"), ("鸡蛋", "个"), ("气球", "个"), ("蜡笔", "支")]

# {n} name, {o} object, {m} Chinese measure word, {a} {b} {c} the numbers in order
TEMPLATES = {
    "en": {
        "add": ["{n} has {a} {o}. {n} buys {b} more. How many {o} does {n} have now?",
                "There are {a} {o} in a basket and {n} puts in {b} more. How many {o} are in the basket?",
                "{n} got {a} {o} in the morning and {b} in the afternoon. How many {o} did {n} get in all?"],
        "sub": ["{n} has {a} {o} and gives {b} to a friend. How many {o} are left?",
                "There were {a} {o} on the table. {n} took {b}. How many {o} are still on the table?",
                "{n} had {a} {o} and lost {b} of them. How many {o} does {n} have now?"],
        "mul": ["{n} has {a} bags with {b} {o} in each bag. How many {o} does {n} have?",
                "A box holds {a} rows of {o}, with {b} in each row. How many {o} are in the box?",
                "{n} buys {a} packs of {o}. Each pack holds {b}. How many {o} does {n} buy?"],
        "add_sub": ["{n} has {a} {o} and buys {b} more, then gives {c} away. How many {o} does {n} have now?",
                    "There are {a} {o} in a jar. {n} adds {b}, then takes out {c}. How many {o} are in the jar?"],
        "sub_add": ["{n} has {a} {o}, gives {b} to a friend, then gets {c} more. How many {o} does {n} have?",
                    "A shop had {a} {o}. It sold {b} and then got {c} new ones. How many {o} does it have now?"],
        "mul_add": ["{n} buys {a} boxes of {b} {o} and already has {c}. How many {o} does {n} have in total?",
                    "There are {a} bags with {b} {o} each, and {c} loose {o}. How many {o} are there?"],
        "mul_sub": ["{n} has {a} bags of {b} {o} and gives {c} away. How many {o} are left?",
                    "A class gets {a} packs of {b} {o} and uses {c}. How many {o} are left?"],
    },
    "zh": {
        "add": ["{n}有{a}{m}{o}，又买了{b}{m}。{n}现在有多少{m}{o}？",
                "篮子里有{a}{m}{o}，{n}又放进去{b}{m}。篮子里一共有多少{m}{o}？",
                "{n}上午得到{a}{m}{o}，下午又得到{b}{m}。{n}一共得到多少{m}{o}？"],
        "sub": ["{n}有{a}{m}{o}，送给朋友{b}{m}。还剩多少{m}{o}？",
                "桌子上有{a}{m}{o}，{n}拿走了{b}{m}。桌子上还剩多少{m}{o}？",
                "{n}有{a}{m}{o}，弄丢了{b}{m}。{n}现在有多少{m}{o}？"],
        "mul": ["{n}有{a}个袋子，每个袋子里有{b}{m}{o}。{n}一共有多少{m}{o}？",
                "一个盒子里有{a}排{o}，每排{b}{m}。盒子里一共有多少{m}{o}？",
                "{n}买了{a}包{o}，每包{b}{m}。{n}一共买了多少{m}{o}？"],
        "add_sub": ["{n}有{a}{m}{o}，又买了{b}{m}，然后送出{c}{m}。{n}现在有多少{m}{o}？",
                    "罐子里有{a}{m}{o}，{n}放进去{b}{m}，又拿出{c}{m}。罐子里有多少{m}{o}？"],
        "sub_add": ["{n}有{a}{m}{o}，送给朋友{b}{m}，后来又得到{c}{m}。{n}现在有多少{m}{o}？",
                    "商店有{a}{m}{o}，卖掉{b}{m}，又进了{c}{m}。商店现在有多少{m}{o}？"],
        "mul_add": ["{n}买了{a}盒{o}，每盒{b}{m}，原来还有{c}{m}。{n}一共有多少{m}{o}？",
                    "有{a}袋{o}，每袋{b}{m}，另外还有{c}{m}。一共有多少{m}{o}？"],
        "mul_sub": ["{n}有{a}袋{o}，每袋{b}{m}，送出了{c}{m}。还剩多少{m}{o}？",
                    "班里收到{a}包{o}，每包{b}{m}，用掉了{c}{m}。还剩多少{m}{o}？"],
    },
}
STEP = {"en": "Step {i}: {x} {op} {y} = {r}.", "zh": "第{i}步：{x} {op} {y} = {r}。"}
ANSWER = {"en": "The answer is {r}.", "zh": "答案是 {r}。"}
STEP_NUMERALS_ZH = "一二三"


def evaluate(numbers: list[int], ops: list[str]) -> int:
    """The answer of a problem: its operators applied left to right (no precedence: the story sets the order)."""
    value = numbers[0]
    for op, y in zip(ops, numbers[1:], strict=True):
        value = OPS[op](value, y)
    return value


def draw_numbers(kind: str, rng: random.Random) -> list[int]:
    """Operands for `kind` such that no intermediate result is negative and results stay under ~100."""
    ops = KINDS[kind]
    a = rng.randint(2, 9) if ops[0] == "×" else rng.randint(5, 40)
    if ops[0] == "+":
        b = rng.randint(2, 20)
    elif ops[0] == "-":
        b = rng.randint(1, a - 1)
    else:
        b = rng.randint(2, 9)
    numbers = [a, b]
    if len(ops) == 2:
        first = evaluate(numbers, list(ops[:1]))
        c = rng.randint(1, max(1, first - 1)) if ops[1] == "-" else rng.randint(2, 20)
        numbers.append(c)
    return numbers


def worked_answer(numbers: list[int], ops: list[str], lang: str) -> str:
    """'Step 1: 12 + 7 = 19. Step 2: 19 - 5 = 14. The answer is 14.', each step computed."""
    steps, value = [], numbers[0]
    for i, (op, y) in enumerate(zip(ops, numbers[1:], strict=True), start=1):
        result = OPS[op](value, y)
        label = STEP_NUMERALS_ZH[i - 1] if lang == "zh" else i
        steps.append(STEP[lang].format(i=label, x=value, op=op, y=y, r=result))
        value = result
    sep = "" if lang == "zh" else " "
    return sep.join([*steps, ANSWER[lang].format(r=value)])


def make_problem(rng: random.Random, lang: str) -> dict:
    kind = rng.choice(list(KINDS))
    ops = list(KINDS[kind])
    numbers = draw_numbers(kind, rng)
    t = rng.randrange(len(TEMPLATES[lang][kind]))
    slots = dict(zip("abc", numbers, strict=False))
    if lang == "en":
        slots |= {"n": rng.choice(NAMES_EN), "o": rng.choice(OBJECTS_EN)}
    else:
        obj, measure = rng.choice(OBJECTS_ZH)
        slots |= {"n": rng.choice(NAMES_ZH), "o": obj, "m": measure}
    question = TEMPLATES[lang][kind][t].format(**slots)
    meta = {"task": "arithmetic", "lang": lang, "kind": kind, "template": f"{lang}/{kind}/{t}",
            "numbers": numbers, "ops": ops, "answer": evaluate(numbers, ops)}
    return example([("user", question), ("assistant", worked_answer(numbers, ops, lang))], meta)


def generate(n: int, rng: random.Random) -> list[dict]:
    """n problems, English and Chinese alternating."""
    return [make_problem(rng, "en" if i % 2 == 0 else "zh") for i in range(n)]


# ---- the same problems, solved by calling the math tool ---------------------------------------------------

PYTHON_OPS = {"+": "+", "-": "-", "×": "*"}
TOOL_ANSWER = {"en": "The answer is {r}.", "zh": "答案是 {r}。"}


def expression(numbers: list[int], ops: list[str]) -> str:
    """'12 + 7 - 5': left to right is also the usual precedence here, since × only ever comes first."""
    parts = [str(numbers[0])]
    for op, y in zip(ops, numbers[1:], strict=True):
        parts += [PYTHON_OPS[op], str(y)]
    return " ".join(parts)


def with_tool(problem: dict) -> dict:
    """A problem as a tool conversation: the math tool is offered, the assistant calls it with the problem's
    expression, gets the tool's real answer, and states it."""
    import json

    from seekmoe.plugins import openai_tool
    from seekmoe.plugins.math import plugin

    meta = problem["meta"]
    question = problem["messages"][0]["content"]
    arguments = {"operation": "evaluate", "expression": expression(meta["numbers"], meta["ops"])}
    # the tool's own output, as the server would hand it to the model
    result = json.dumps(plugin.run(**arguments), ensure_ascii=False, allow_nan=False)
    call = {"type": "function", "function": {"name": "math", "arguments": json.dumps(arguments)}}
    out = example([("user", question)], {**meta, "task": "arithmetic_tool", "tool_arguments": arguments})
    out["messages"] += [{"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": result},
                        {"role": "assistant", "content": TOOL_ANSWER[meta["lang"]].format(r=meta["answer"])}]
    out["tools"] = [openai_tool(plugin)]
    return out
