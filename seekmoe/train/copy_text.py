"""Pretraining text that can only be predicted by copying from earlier in the same document, in English and Chinese.

Remembering a customer's order number, putting a word problem's numbers into a tool call and quoting a report's
conclusion all need one skill: find an earlier span and copy it. A small model trained on a few million tokens of
novels and poetry never learns it (a chat fine-tune on recall drills left recall at 1%), because ordinary text
rarely rewards it. These documents reward nothing else: each states values (names, numbers, e-mail addresses,
places, invented words) the model cannot have memorised, since they are drawn from syllables and digits, then
asks for them back after unrelated text.

Kinds (one JSONL record each, {"text": ...}, for `seekmoe data prepare`):
- record: a form of fields, filler text, then questions about fields in other words and their answers;
- transcript: a support conversation as plain text whose customer states a fact early and asks for it late;
- numbers: sentences with numbers, then the numbers (or the expression they form) written out again;
- repeat: a run of invented words, then, once to three times, filler and the run again (the plain induction
  pattern);
- drill: short runs, each written three to five times in a row, so half the tokens are copies: the densest
  signal for the attention heads that find "what followed this last time" (they form late and suddenly, and
  sooner the more often copying pays);
- shuffled: runs of real words (or Chinese characters) taken from the corpus and shuffled, written again in a row
  or after a paragraph. The kinds above draw their values from a few dozen syllables and characters, and a model
  trained on them copies those and little else: it learns "which of these few was it", not "what followed this
  last time" (seekmoe-tiny-chat recalled every Chinese surname, a closed set, and no Chinese city). Here any word
  may come next, so only the general copy pays.

The phrasings here are our own and share no template with the held-out chat evaluation sets
(seekmoe/train/chat_data keeps its val templates apart; bench/chat_eval.py reads only those).
"""

from __future__ import annotations

import json
import random
import re
from functools import partial
from pathlib import Path

from seekmoe.errors import SeekmoeError
from seekmoe.han import HAN
from seekmoe.train.chat_data import write_text

KINDS = ("record", "transcript", "numbers", "repeat", "drill", "shuffled")
SYLLABLES = ["ka", "lo", "mi", "ren", "ta", "vo", "sel", "du", "ni", "bar", "ek", "sha", "tor", "li", "an", "mo",
             "qui", "ber", "za", "fen", "ol", "ri", "gan", "te", "wu", "is", "pol", "ca", "der", "yu"]
HANZI = list("安北长成大德东方丰福光海和华佳江金景康乐林龙明宁平庆荣瑞山盛顺泰天文祥新兴阳永玉云泽志中")
SURNAMES_ZH = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾")
DOMAINS = ["example.com", "example.org", "example.net", "mail.example", "post.example"]
FILLER_EN = [
    "The weather stayed grey all morning.", "Nobody in the office had read the new guidelines yet.",
    "A delivery van stopped outside and left again.", "The meeting was moved to the afternoon.",
    "Prices in the shop have not changed since spring.", "Someone had left the window open overnight.",
    "The train was ten minutes late, as usual.", "Two new colleagues started work this week.",
    "The printer on the second floor is broken again.", "Lunch was soup and bread in the canteen.",
]
FILLER_ZH = ["上午一直是阴天。", "办公室里还没有人看过新的规定。", "一辆货车停在门口，又开走了。", "会议改到了下午。",
             "店里的价格从春天起就没有变过。", "有人把窗户开了一整夜。", "火车像往常一样晚了十分钟。",
             "这周来了两位新同事。", "二楼的打印机又坏了。", "食堂的午饭是汤和面包。"]

# field -> (English label, Chinese label, English questions, Chinese questions); {v} is never in a question
FIELDS = {
    "name": ("Name", "姓名", ["Whose record is this?", "Who is the customer?", "What is the person called?"],
             ["这是谁的记录？", "客户叫什么名字？", "这个人叫什么？"]),
    "number": ("Order", "订单号", ["Which order is it about?", "What is the order number?", "Quote the order."],
               ["订单号是多少？", "说的是哪个订单？", "请报一下订单号。"]),
    "place": ("City", "城市", ["Where does the customer live?", "Which town is on the record?",
                             "What place was given?"], ["客户住在哪里？", "记录上是哪个城市？", "给的地址是哪里？"]),
    "email": ("E-mail", "邮箱", ["Where should replies go?", "What is the contact address?",
                                "Which e-mail is on file?"],
              ["回复发到哪个邮箱？", "联系邮箱是什么？", "登记的邮箱是哪个？"]),
    "code": ("Code", "代码", ["What is the reference code?", "Which code was issued?", "Repeat the code."],
             ["参考代码是什么？", "发的是哪个代码？", "请重复代码。"]),
}
STATE = {  # how a customer states a fact in a transcript, and asks for it back later
    "name": (["My name is {v}.", "This is {v} writing.", "I'm {v}, by the way."],
             ["Sorry, what did I say my name was?", "Whose name was on my message?"],
             ["我叫{v}。", "我是{v}。"], ["我刚才说我叫什么？", "你还记得我的名字吗？"]),
    "number": (["I'm asking about order {v}.", "The order is {v}.", "It's about order number {v}."],
               ["Which order number did I give?", "What order was I asking about?"],
               ["我想问订单{v}。", "订单号是{v}。"], ["我说的是哪个订单？", "我给你的订单号是多少？"]),
    "place": (["I live in {v}.", "I'm writing from {v}.", "Please ship it to {v}."],
              ["Which town did I name?", "What destination was that again?"],
              ["我住在{v}。", "请寄到{v}。"], ["我说我住在哪里？", "我让你寄到哪里？"]),
    "email": (["Contact: {v}.", "My address is {v}.", "Write to {v}, please."],
              ["Which address should you write to?", "What contact did I leave?"],
              ["我的邮箱是{v}。", "请发到{v}。"], ["我留的邮箱是哪个？", "你应该发到哪个邮箱？"]),
}
SMALL_TALK = [("Do you sell gift cards?", "Yes, from 10 to 100 euros."),
              ("Is the shop open on Sunday?", "No, only Monday to Saturday."),
              ("Can I change the colour later?", "Yes, until the parcel is packed."),
              ("How heavy is the parcel?", "About two kilos."), ("Thanks for the help.", "You're welcome."),
              ("Do you have a newsletter?", "Yes, once a month."), ("Is there a phone line?", "Yes, on weekdays.")]
SMALL_TALK_ZH = [("你们卖礼品卡吗？", "卖，面值从10到100元。"), ("周日营业吗？", "不营业，只在周一到周六。"),
                 ("以后还能换颜色吗？", "可以，在打包之前都能换。"), ("包裹有多重？", "大约两公斤。"),
                 ("谢谢你的帮助。", "不客气。"), ("你们有电话吗？", "有，工作日可以打。")]


def word(rng: random.Random, parts: tuple[int, int] = (2, 3)) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*parts)))


def value(rng: random.Random, field: str, lang: str) -> str:
    """A value the model cannot have memorised: invented names and places, random digits."""
    if field == "number":
        return str(rng.randint(10 ** (rng.randint(3, 5)), 10 ** 6 - 1))
    if field == "code":
        return f"{word(rng, (1, 2)).upper()}-{rng.randint(100, 9999)}"
    if lang == "zh" and field == "name":
        return rng.choice(SURNAMES_ZH) + "".join(rng.choices(HANZI, k=rng.randint(1, 2)))
    if lang == "zh" and field == "place":
        return "".join(rng.choices(HANZI, k=2)) + rng.choice(["市", "县", "镇"])
    if field == "name":
        return f"{word(rng).capitalize()} {word(rng).capitalize()}"
    if field == "place":
        return word(rng).capitalize() + rng.choice(["", "burg", "ton", " Bay", "ville"])
    return f"{word(rng)}.{word(rng)}@{rng.choice(DOMAINS)}"


def filler(rng: random.Random, lang: str, paragraphs: list[str], n: int) -> str:
    if paragraphs and lang == "en" and rng.random() < 0.5:  # the corpus paragraphs are English
        return "\n".join(rng.sample(paragraphs, min(n, len(paragraphs))))
    pool = FILLER_ZH if lang == "zh" else FILLER_EN
    return ("" if lang == "zh" else " ").join(rng.choice(pool) for _ in range(2 * n))


def record(rng: random.Random, lang: str, paragraphs: list[str]) -> str:
    fields = rng.sample(list(FIELDS), rng.randint(2, 5))
    values = {f: value(rng, f, lang) for f in fields}
    zh = lang == "zh"
    head = "\n".join(f"{FIELDS[f][1 if zh else 0]}{'：' if zh else ': '}{values[f]}" for f in fields)
    asked = rng.sample(fields, rng.randint(1, len(fields)))
    qa = "\n".join(f"{'问：' if zh else 'Q: '}{rng.choice(FIELDS[f][3 if zh else 2])}\n"
                   f"{'答：' if zh else 'A: '}{values[f]}" for f in asked)
    return f"{head}\n\n{filler(rng, lang, paragraphs, rng.randint(1, 4))}\n\n{qa}"


def transcript(rng: random.Random, lang: str, paragraphs: list[str]) -> str:
    field = rng.choice(list(STATE))
    v = value(rng, field, lang)
    states, asks, states_zh, asks_zh = STATE[field]
    zh = lang == "zh"
    you, agent = ("顾客：", "客服：") if zh else ("Customer: ", "Agent: ")
    lines = [f"{you}{rng.choice(states_zh if zh else states).format(v=v)}", f"{agent}{'好的。' if zh else 'Noted.'}"]
    for q, a in rng.sample(SMALL_TALK_ZH if zh else SMALL_TALK, rng.randint(2, 5)):
        lines += [f"{you}{q}", f"{agent}{a}"]
    lines += [f"{you}{rng.choice(asks_zh if zh else asks)}", f"{agent}{v}"]
    return "\n".join(lines)


def numbers(rng: random.Random, lang: str, paragraphs: list[str]) -> str:
    ns = [rng.randint(1, 999) for _ in range(rng.randint(2, 4))]
    ops = [rng.choice("+-*") for _ in ns[1:]]
    expression = " ".join(x for pair in zip(map(str, ns), [*ops, ""], strict=True) for x in pair).strip()
    thing = word(rng)
    if lang == "zh":
        told = "，".join(f"第{i + 1}天有{n}个{thing}" for i, n in enumerate(ns))
        return f"{told}。\n数字依次是：{'、'.join(map(str, ns))}\n算式：{expression} = {eval_int(expression)}"
    told = ", ".join(f"on day {i + 1} there were {n} {thing}s" for i, n in enumerate(ns))
    return (f"{told[0].upper()}{told[1:]}.\nThe numbers in order: {', '.join(map(str, ns))}\n"
            f"Expression: {expression} = {eval_int(expression)}")


def eval_int(expression: str) -> int:
    """The value of 'a op b op c' with * before + and -, as Python reads it (digits and + - * only)."""
    terms = expression.split()
    total, product, sign = 0, int(terms[0]), 1
    for op, n in zip(terms[1::2], terms[2::2], strict=True):
        if op == "*":
            product *= int(n)
        else:
            total += sign * product
            product, sign = int(n), 1 if op == "+" else -1
    return total + sign * product


def repeat(rng: random.Random, lang: str, paragraphs: list[str]) -> str:
    run = (" " if lang == "en" else "").join(
        (word(rng, (1, 3)) if lang == "en" else "".join(rng.choices(HANZI, k=2))) for _ in range(rng.randint(5, 30)))
    again = "Once more:" if lang == "en" else "再说一遍："
    doc = run
    for _ in range(rng.randint(1, 3)):  # each repeat after the first is another chance to learn the copy
        doc += f"\n\n{filler(rng, lang, paragraphs, rng.randint(0, 2))}\n\n{again}\n{run}"
    return doc


def drill(rng: random.Random, lang: str, paragraphs: list[str]) -> str:
    lines = []
    for _ in range(rng.randint(2, 5)):
        if lang == "zh":
            run = "".join(rng.choices(HANZI, k=rng.randint(3, 10)))
        elif rng.random() < 0.3:
            run = " ".join(str(rng.randint(0, 9999)) for _ in range(rng.randint(2, 6)))
        else:
            run = " ".join(word(rng, (1, 2)) for _ in range(rng.randint(2, 8)))
        lines.append(" | ".join([run] * rng.randint(3, 5)))
    return "\n".join(lines)


_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+")


def shuffled(rng: random.Random, lang: str, paragraphs: list[str], zh_paragraphs: list[str] = ()) -> str:
    """A run of 4 to 30 consecutive words of an English paragraph (Han characters of a Chinese one) in random
    order, then either drilled (2 to 4 times in a row, several runs) or repeated after a paragraph of its language.
    Without paragraphs, the built-in filler sentences are the source."""
    built_in = FILLER_ZH if lang == "zh" else FILLER_EN
    source = (zh_paragraphs if lang == "zh" else paragraphs) or built_in
    units = HAN.findall if lang == "zh" else _WORD.findall
    sep = "" if lang == "zh" else " "

    def run() -> str:
        for _ in range(100):  # a paragraph of symbols alone has no words; a source of nothing else gives way
            words = units(rng.choice(source))
            if words:
                break
        else:
            words = units(rng.choice(built_in))
        k = rng.randint(min(4, len(words)), min(30, len(words)))
        start = rng.randint(0, len(words) - k)
        picked = words[start:start + k]
        rng.shuffle(picked)
        return sep.join(picked)

    if rng.random() < 0.5:
        return "\n".join(" | ".join([r] * rng.randint(2, 4)) for r in (run() for _ in range(rng.randint(2, 5))))
    r = run()
    again = "Once more:" if lang == "en" else "再说一遍："
    doc = r
    for _ in range(rng.randint(1, 3)):
        doc += f"\n\n{rng.choice(source)[:300]}\n\n{again}\n{r}"
    return doc


MAKERS = {"record": record, "transcript": transcript, "numbers": numbers, "repeat": repeat, "drill": drill,
          "shuffled": shuffled}


def documents(n: int, seed: int, paragraphs: list[str], zh_share: float = 0.3,
              kinds: tuple[str, ...] = KINDS, zh_paragraphs: list[str] = ()) -> list[str]:
    """n documents, the kinds in turn, a zh_share of them in Chinese. paragraphs are English (filler, and the words
    of shuffled runs); zh_paragraphs give the Chinese shuffled runs their characters."""
    rng = random.Random(seed)
    makers = {**MAKERS, "shuffled": partial(shuffled, zh_paragraphs=zh_paragraphs)}
    return [makers[kinds[k % len(kinds)]](rng, "zh" if rng.random() < zh_share else "en", paragraphs)
            for k in range(n)]


def corpus_paragraphs(folder: Path, min_chars: int, max_chars: int, english: bool,
                      cut_long: bool = False) -> list[str]:
    """The blank-line-separated blocks of the .txt files under folder, stripped, of min_chars to max_chars
    characters: the ASCII ones (english) or the others.

    With cut_long, a longer block is cut at sentence ends into pieces of up to max_chars, rather than left out
    (the State of the Union speeches are one line each, the Bible's chapters have no blank line), and a block is
    English when it holds no Chinese character (curly quotes and dashes are English too)."""
    blocks = (b.strip() for f in sorted(folder.rglob("*.txt"))
              for b in f.read_text(encoding="utf-8", errors="replace").split("\n\n"))
    if not cut_long:
        return [p for p in blocks if min_chars <= len(p) <= max_chars and p.isascii() == english]
    pieces = (piece for b in blocks for piece in _cut(b, max_chars))
    return [p for p in pieces if min_chars <= len(p) and (HAN.search(p) is None) == english]


# where a sentence ends: the space after . ! or ? (a closing quote between them), or right after 。！？ (Chinese
# puts no space there); an apostrophe or a quote alone ends nothing ("the boys' bikes")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’])\s+|(?<=[。！？])\s*")


def _cut(block: str, max_chars: int) -> list[str]:
    """The block in pieces of whole sentences of up to max_chars each (a longer sentence is left out)."""
    if len(block) <= max_chars:
        return [block]
    pieces, piece = [], ""
    for sentence in filter(None, _SENTENCE_END.split(block)):
        joint = "" if piece.endswith(("。", "！", "？")) else " "
        if len(piece) + len(joint) + len(sentence) <= max_chars:
            piece = piece + joint + sentence if piece else sentence
            continue
        if piece:
            pieces.append(piece)
        piece = sentence if len(sentence) <= max_chars else ""
    return [*pieces, piece] if piece else pieces


def filler_paragraphs(folder: Path | None, limit: int = 20_000, seed: int = 0) -> list[str]:
    """Up to `limit` short ASCII paragraphs (a few lines) of the .txt files under folder, for English filler."""
    if folder is None:
        return []
    paragraphs = corpus_paragraphs(folder, 40, 400, english=True)
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:limit]


DESCRIPTION = ("Write pretraining documents that are predictable only by copying from earlier in the same document "
               "(forms and questions about them, support transcripts that ask a fact back, numbers written out "
               "again, repeated runs of invented words, shuffled runs of the corpus's words), English and Chinese, "
               "as copy.jsonl ({\"text\": ...} lines for `seekmoe data prepare`) and SOURCES.json.")
MAX_DOCS = 10_000_000


class CopyTextError(SeekmoeError, ValueError):
    """A request this generator cannot meet; the message says what to change."""


def write(out: str | Path, n: int, seed: int = 0, filler_folder: str | Path | None = None,
          kinds: tuple[str, ...] = KINDS) -> Path:
    """OUT/copy.jsonl with n documents and OUT/SOURCES.json, each written atomically."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DOCS:
        raise CopyTextError(f"the number of documents must be between 1 and {MAX_DOCS:,}, got {n!r}")
    unknown = [k for k in kinds if k not in MAKERS]
    if unknown or not kinds:
        raise CopyTextError(f"kinds must be some of {', '.join(KINDS)}, got {', '.join(kinds) or 'none'}")
    folder = None if filler_folder is None else Path(filler_folder)
    if folder is not None and not folder.is_dir():
        raise CopyTextError(f"{folder}: no such folder (--filler takes a folder of .txt files, e.g. data/corpus)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zh = corpus_paragraphs(folder, 40, 1500, english=False, cut_long=True) if folder and "shuffled" in kinds else []
    docs = documents(n, seed, filler_paragraphs(folder, seed=seed), kinds=tuple(kinds), zh_paragraphs=zh)
    path = out / "copy.jsonl"
    write_text(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    sources = {"sources": [{"name": "copy", "language": "en+zh", "package": "generated by seekmoe/train/copy_text.py",
                            "version": f"seed {seed}, kinds {','.join(kinds)}", "license": "Apache-2.0",
                            "license_note": "filler paragraphs drawn from the corpus keep their own licenses"
                                            + (f" ({folder})" if folder else " (none used)"),
                            "files": ["copy.jsonl"], "documents": n}]}
    write_text(out / "SOURCES.json", json.dumps(sources, indent=2) + "\n")
    return path


def add_arguments(parser) -> None:
    """`seekmoe data copy --out DIR [--docs N] [--seed N] [--filler DIR]`."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--docs", type=int, default=60_000, metavar="N",
                        help="documents to write, the kinds in turn, 30%% in Chinese (default 60,000, "
                             "about 6M tokens)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="the same seed writes byte-identical files (default 0)")
    parser.add_argument("--kinds", default=",".join(KINDS), metavar="K,K",
                        help=f"document kinds, comma-separated (default all: {','.join(KINDS)})")
    parser.add_argument("--filler", metavar="DIR",
                        help="folder of .txt files (e.g. data/corpus) whose short English paragraphs stand between "
                             "a fact and its question in half the English documents, and whose words and Chinese "
                             "characters the shuffled runs take; default: built-in sentences")


def run_from_args(args) -> int:
    from seekmoe.errors import CLIError

    try:
        path = write(args.out, args.docs, args.seed, args.filler, tuple(k for k in args.kinds.split(",") if k))
    except (CopyTextError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {args.docs:,} documents to {path}")
    return 0
