"""Recall chats: short support chats that give two to four facts and ask every one back, in English and Chinese.

The support dialogues (customer_service.py) ask one fact back after five to eight turns: one copied value among
some 200 answer tokens the model knows by heart. That was too little to learn copying where a language prior
competes: the bundled model copied no Chinese city, not even in dialogues of the training templates (2 of 44);
after "您说您在" its next-character distribution was the same flat guess ("南" 2%) whatever the customer had said.
Its Chinese made-up towns were rare characters, which no prior proposes; a city of common characters is the case
that teaches the copy to win over the guess.

Here each chat gives its facts in separate turns, perhaps talks about something else, then asks for all of them in
random order, so most answer tokens are copies. Chinese values come mostly from open sets (towns and given names of
common characters); English ones as in the dialogues. Only training templates are used (the held-out third of every
template list never appears), so the held-out dialogues stay unseen phrasings; the val split uses the held-out
templates and pooled facts, as the dialogue sets do.
"""

from __future__ import annotations

import random

from seekmoe.train.chat_data import example
from seekmoe.train.chat_data.customer_service import (
    ENGLISH,
    FACT_KINDS,
    Phrasebook,
    pick,
    pick_train_or_extra,
)
from seekmoe.train.chat_data.customer_service_zh import CHINESE, EMAIL_SYLLABLES, SURNAMES

# common characters of Chinese prose and place names, the chat pools' own among them: a town made of them is one
# the next-character prior also proposes, so only copying gets it right
COMMON_ZH = ("安白北宝滨昌长城春大德东都丰福港光广贵海汉和河湖华淮江金京开康兰乐丽连林临龙明南宁平浦齐青庆泉"
             "荣瑞山上盛石顺松台太泰天通吴武西溪仙新兴阳扬宜义永玉源远云正中州珠庄子文建红美秀志伟秋月星"
             "花雨雪风田木水火土心思家国民生学工业方向高原岛桥门口园湾峰岭洲坪塘沙泽")
SURNAMES_ZH = list(SURNAMES) + list("郑梁谢宋唐许韩冯邓曹彭曾萧田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪"
                                    "范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严")
TOWN_SUFFIXES_ZH = ["市", "县", "镇", "", "", ""]
FACTS = (2, 4)  # facts given and asked back, at least and at most
MIDDLE = (0, 2)  # unrelated questions between the facts and the first question back
# the share of Chinese training chats whose facts come from the open sets above rather than from the phrasebook's
# make_fact. English has none: with English words and syllables as names (runs/mm-chat31) held-out names came back
# made up ("Maria Patel" as "Istore"), 8 of 59 against 28 before
OPEN_SHARE = 0.7


def open_fact_zh(rng: random.Random, kind: str) -> str:
    if kind == "city":
        return "".join(rng.sample(COMMON_ZH, 2)) + rng.choice(TOWN_SUFFIXES_ZH)
    if kind == "name":
        return rng.choice(SURNAMES_ZH) + "".join(rng.choices(COMMON_ZH, k=rng.randint(1, 2)))
    if kind == "email":
        local = ".".join("".join(rng.choices(EMAIL_SYLLABLES, k=rng.randint(1, 2))) for _ in range(2))
        return f"{local}@example.{rng.choice(['com', 'org', 'net'])}"
    return str(rng.randint(10000, 99999))


def recall_chat(rng: random.Random, held_out: bool, book: Phrasebook) -> dict:
    """Facts given one a turn, maybe an unrelated question or two, then every fact asked back in random order."""
    kinds = rng.sample(FACT_KINDS, rng.randint(*FACTS))
    use_open = book is CHINESE and not held_out and rng.random() < OPEN_SHARE
    facts = {k: open_fact_zh(rng, k) if use_open else book.make_fact(rng, k, held_out) for k in kinds}
    shop = {slot: rng.choice(choices) for slot, choices in book.shop.items()}
    turns = [] if not held_out and rng.random() < 0.3 else [("system", book.support_prompt)]
    for kind in kinds:
        _, said = pick_train_or_extra(rng, book.first_turns[kind], book.extra_first_turns[kind], held_out)
        turns += [("user", said.format(fact=facts[kind])), ("assistant", rng.choice(book.acknowledgements))]
    for topic in rng.sample(sorted(set(book.middle_topics) - {"thanks"}), rng.randint(*MIDDLE)):
        questions, replies = book.middle_topics[topic]
        _, question = pick(rng, questions, held_out)
        turns += [("user", question), ("assistant", rng.choice(replies).format(**shop))]
    for kind in rng.sample(kinds, len(kinds)):
        _, question = pick_train_or_extra(rng, book.final_questions[kind], book.extra_final_questions[kind],
                                          held_out)
        turns += [("user", question), ("assistant", rng.choice(book.final_answers[kind]).format(fact=facts[kind]))]
    return example(turns, {"task": "recall", "facts": facts, "lang": book.lang or "en"})


def recall_chats(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    """n chats, English and Chinese alternating by draw."""
    return [recall_chat(rng, held_out, CHINESE if rng.random() < 0.5 else ENGLISH) for _ in range(n)]
