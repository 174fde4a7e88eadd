"""Terms in a sentence, English and Chinese, without a model: multi-word terms, names, and numbers with units.

English has no tagger here, so a term is what is left between the words that cannot be part of one: function words,
common verbs in all their forms, adverbs in -ly, and punctuation ("Dietary fish oil reduces blood viscosity" ->
"dietary fish oil", "blood viscosity"; the verb between two terms is kept as their relation). Chinese is segmented
and tagged by jieba; runs of nouns are one term ("血液" "黏度" -> "血液黏度"), the verb between two terms their
relation. A term's key is lower case with its last word made singular, so "Platelets" and "platelet" meet.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache

from seekmoe.han import HAN

MAX_TERM_WORDS = 4  # longer runs of content words are cut into their last three (the head) and the rest
MAX_TERM_CHARS = 80

_UNITS = (
    "% ‰ °C °F K mg g kg µg μg ug mcg ng ml mL l L dl dL µl μl mmol µmol μmol nmol mol M mM µM μM nM mm cm m km "
    "µm μm nm ms s min h hr hrs hours days weeks months years mmHg Pa kPa Hz kHz MHz GHz B KB kB MB GB TB KiB MiB "
    "GiB TiB bit bits bytes V mV W kW MW kWh J kJ cal kcal IU"
)
_UNIT = "|".join(sorted((re.escape(u) for u in _UNITS.split()), key=len, reverse=True))
# one token at a time: a number with its unit, a word (letters, digits, inner hyphens and apostrophes, dotted and
# underscored identifiers such as os.path.join), or one other character (punctuation, which ends a term)
_TOKEN = re.compile(rf"(?P<quantity>\d+(?:[.,]\d+)*\s?(?:{_UNIT})(?![\w]))"
                    r"|(?P<word>[A-Za-z_][\w]*(?:[-'’.][A-Za-z0-9_]+)*)"
                    r"|(?P<number>\d+(?:[.,]\d+)*)"
                    r"|(?P<other>\S)")

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _words("""
a about above across after again against all almost along also although always am among an and another any anyone
anything are around as at away back be because been before being below between beyond both but by can cannot could
did do does doing done down during each either else enough etc even ever every few for from further had has have
having he her here hers herself him himself his how however i if in including instead into is it its itself just
least less like many may me might more most much must my myself near neither never no nor not now of off often on
once one only onto or other others otherwise our ours ourselves out over own per perhaps quite rather same several
shall she should since so some such than that the their theirs them themselves then there thereby therefore these
they this those though through thus to together too toward towards under unless until up upon us very via was we
well were what whatever when whenever where whereas whether which while who whom whose why will with within without
would yet you your yours yourself
new first second third last next many various different certain given whole less more further same usual useful
able unable possible impossible likely unlikely available respectively e.g i.e vs et al
common rare high low higher lower highest lowest great greater greatest large larger largest small smaller
smallest major minor main important significant strong stronger weak weaker normal abnormal similar related
specific general particular good better best bad worse worst little long longer short shorter recent previous
following above below full empty true false real simple easy hard own certain clear due
""")

# verbs that run between terms in scientific and technical prose, given as base forms; every inflection of each
# is a word no term contains ("reduces", "reduced", "reducing")
_VERBS = _words("""
accept access act add affect agree allow alter appear apply argue arise ask assess associate assume attach attempt
avoid base become begin behave believe belong block break bring build call carry cause change check choose claim
close combine come compare compute concern conclude conduct confirm connect consider consist contain continue
contribute control convert copy correlate create decrease define delete demonstrate depend derive describe design
detect determine develop differ diminish discuss display do don't doesn't draw drive elevate enable encode end
enhance ensure enter establish estimate evaluate examine exist expand expect explain explore express extend fail
fall find follow form gain generate get give go grow handle happen help hold identify ignore imply improve include
increase indicate induce influence inhibit initialize involve join keep know lack lead learn leave let lie limit link
list load look lower maintain make manage match mean measure mediate modify move need note observe obtain occur
offer open operate pass perform permit place play point predict prefer prepare present prevent print produce
promote protect prove provide publish put raise reach read receive reduce refer reflect regulate relate release
rely remain remove replace report represent require reset resolve restore restrict result return reveal run save
say see seem select send serve set share show signal specify start stay stimulate stop store study suggest suppress
support take talk tell tend test think treat trigger try turn understand update use vary want work write yield
accompany alleviate attenuate boost constrict contract decline dilate drop elevate exceed favour favor impair
lessen mark mitigate modulate precede protect raise relieve respond restore rise separate shift slow spread
strengthen weaken worsen accumulate activate bind compete correspond cure damage decide emerge encourage exhibit
fix focus guide harm interact intervene last lose migrate mimic moderate neutralize oppose outperform overcome
persist possess prolong provoke recover reinforce repair resist resemble seek sense stabilize sustain tolerate
transform undergo warn
""")
_IRREGULAR = _words("""
is are was were be been being am has have had having do does did done make made makes say said get got gotten give
gave given go went gone rose risen take took taken become became find found show shown know knew known lead led run
ran see saw seen seem think thought hold held keep kept leave left put set read write wrote written bring brought build
built begin began begun fall fell grow grew grown lie lay draw drew drawn drive drove driven tell told mean meant
""")


def _inflections(verb: str) -> set[str]:
    if verb.endswith("'t"):
        return {verb}
    stem = verb[:-1] if verb.endswith("e") else verb
    third = verb + "es" if verb.endswith(("s", "sh", "ch", "x", "z", "o")) else verb + "s"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        third, past = verb[:-1] + "ies", verb[:-1] + "ied"
    else:
        past = verb + "d" if verb.endswith("e") else verb + "ed"
    return {verb, third, past, stem + "ing"}


VERBS = frozenset(_IRREGULAR).union(*(_inflections(v) for v in _VERBS))
# single words too general to stand as a term on their own (they may still begin or end one: "case study")
_GENERIC = _words("""
patient patients subject subjects participant participants people person individual individuals control controls
day days week weeks month months year years hour hours minute minutes
study studies result results effect effects case cases example examples way ways number numbers part parts type types
kind kinds time times thing things method methods approach issue issues level levels value values form forms
group groups order section chapter page pages paper papers author authors use user note notes detail details
fact facts point points role amount lot end ones sort set line lines word words name names
""")
_DETERMINERS = _words("a an the this that these those each every any some no its their his her our your my")
_COPULAS = _words("is are was were be been being become becomes became remain remains remained seem seems seemed "
                  "appear appears appeared")
_KEEP_S = _words("analysis basis series species news physics mathematics statistics economics genetics diabetes "
                 "lens bus gas class process access status virus corpus thesis always perhaps less unless its this "
                 "has was does is yes axis alias")

# jieba's part-of-speech flags: nouns (n*), names of people, places, organisations (nr, ns, nt), other proper nouns
# (nz), English words (eng), idioms used as nouns (l); verbal nouns (vn) only after a noun
_ZH_NOUN = ("n", "nr", "ns", "nt", "nz", "nrt", "nrfg", "ng", "eng", "l")
_ZH_NAME = ("nr", "ns", "nt", "nz", "nrt", "nrfg")
_ZH_VERB = ("v", "vd", "vi", "vg")
_ZH_UNITS = _words("克 毫克 微克 千克 公斤 升 毫升 米 厘米 毫米 公里 千米 天 周 月 年 小时 分钟 秒 度 "
                   "倍 次 例 名 人 岁 个")
_GENERIC_ZH = _words("患者 研究 结果 方法 问题 影响 方面 情况 作用 过程 部分 时间 方式 水平 人们 事情 东西 "
                     "时候 大量 少量 人群 症状")


@dataclass(frozen=True)
class Term:
    key: str  # how it is stored and looked up: lower case, last word singular
    label: str  # as first written
    kind: str  # "term", "name" (a proper name or identifier) or "quantity" (a number with its unit)
    slot: int  # its place among the sentence's terms; a term nested in another ("fish oil" in "dietary fish
    #            oil") shares the slot of the one it is part of


@dataclass(frozen=True)
class Found:
    """A sentence's terms in order, and the words between each slot and the next (their relation, if a verb)."""
    terms: list[Term]
    between: list[str]  # between[i]: the relation words between slot i and slot i + 1, "" for none

    def relation(self, a: Term, b: Term) -> str:
        """What the sentence says relates a to b, the later one: the verb phrase between them when they are next to
        each other, else ""."""
        return self.between[a.slot] if b.slot == a.slot + 1 else ""


def singular(word: str) -> str:
    """'viscosities' -> 'viscosity', 'cells' -> 'cell'; words that only look plural stay ('analysis', 'series')."""
    w = word.lower()
    if len(w) <= 3 or w in _KEEP_S or w.endswith(("ss", "us", "is", "'s", "’s")) or not w.endswith("s"):
        return word
    if w.endswith("ies") and len(w) > 4:
        return word[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


def term_key(label: str) -> str:
    """The key a term (or a query for one) is stored and looked up by."""
    words = " ".join(label.replace("’", "'").split()).lower().split(" ")
    if words[-1] and not HAN.search(words[-1]) and not words[-1][:1].isdigit():
        words[-1] = singular(words[-1])
    return " ".join(words)


def find_terms(sentence: str) -> Found:
    """The terms of one sentence, Chinese through jieba when it has Chinese characters."""
    return _find_chinese(sentence) if HAN.search(sentence) else _find_english(sentence)


def _content(word: str) -> bool:
    w = word.lower().replace("’", "'")
    return w not in _STOPWORDS and w not in VERBS and not (w.endswith("ly") and len(w) > 4)


def _relation(gap: list[str]) -> str:
    """The words between two terms as their relation: a short phrase with a verb and no punctuation ("is associated
    with"), else "" (they only co-occur)."""
    if len(gap) <= 5 and any(w in VERBS for w in gap) and all(w[:1].isalpha() for w in gap):
        return " ".join(gap)
    return ""


class _Sequence:
    """Terms as a sentence yields them, with the words between one slot and the next."""

    def __init__(self) -> None:
        self.terms: list[Term] = []
        self.between: list[str] = []
        self.gap: list[str] = []  # words since the last slot
        self.slot = -1

    def add(self, terms: list[tuple[str, str, str]], relation: str) -> None:
        """One slot: a term and those nested in it, as (key, label, kind)."""
        if not terms:
            return
        if self.slot >= 0:
            self.between.append(relation)
        self.slot += 1
        self.terms.extend(Term(key, label, kind, self.slot) for key, label, kind in terms)
        self.gap = []

    def found(self) -> Found:
        return Found(self.terms, self.between)


def _english_term(words: list[str], sentence_start: bool) -> tuple[str, str, str] | None:
    label = " ".join(words)
    if len(label) > MAX_TERM_CHARS:
        return None
    if len(words) == 1:
        w = words[0]
        if len(w) < 3 or w.lower() in _GENERIC or w.replace("_", "").isdigit():
            return None
    # a run of Capitalised words is a name, unless it is only the first word of the sentence; an identifier
    # (os.path, sys_argv) is a name too
    capitals = all(w[:1].isupper() for w in words) and not (sentence_start and len(words) == 1)
    identifier = any(("." in w or "_" in w) for w in words)
    return term_key(label), label, "name" if capitals or identifier else "term"


def _find_english(sentence: str) -> Found:
    seq = _Sequence()
    run: list[str] = []
    run_at_start = at_start = True
    after_copula = run_after_copula = False

    def close() -> None:
        nonlocal run
        # a past participle leading a run modifies the term, it is no part of it: "blunted vascular reactivity"
        while len(run) > 1 and run[0].islower() and run[0].endswith("ed") and len(run[0]) > 5:
            seq.gap.append(run.pop(0))
        while run:
            # a run longer than a term: its last three words (the head of a noun phrase) are one term, the rest
            # is looked at again
            piece, run = (run, []) if len(run) <= MAX_TERM_WORDS else (run[-3:], run[:-3])
            outer = _english_term(piece, run_at_start and not run)
            if outer and len(piece) == 1 and run_after_copula and piece[0].islower():
                outer = None  # "the receptor is overactive in ...": a predicate adjective, no term
            # the head of a longer term is a term too, so "dietary fish oil" is found by "fish oil"
            inner = _english_term(piece[-2:], False) if len(piece) > 2 else None
            if inner and (outer is None or outer[2] != "term" or inner[2] != "term"):
                inner = None  # "Python Software Foundation" holds no name "Software Foundation"
            if outer is None:  # a word too general to be a term still reads in the relation: "in patients with"
                seq.gap.extend(w.lower() for w in piece)
            seq.add([t for t in (outer, inner) if t], _relation(seq.gap))
        run = []

    after_determiner = False
    for m in _TOKEN.finditer(sentence):
        kind, text = m.lastgroup, m.group()
        # a verb's form right after a determiner is a noun: "the list", "a set of", "its return value"
        noun = after_determiner and text.lower() in VERBS and not text.lower().endswith(("ed", "ing"))
        # a word in -ed after a noun is a verb the list lacks, in the past tense: "rainfall peaked in April"
        past = kind == "word" and run and text.islower() and len(text) > 4 and text.endswith("ed") \
            and not text.endswith("eed") and not noun
        if kind == "word" and not past and (noun or _content(text)):
            if not run:
                run_at_start, run_after_copula = at_start, after_copula
            run.append(text.rstrip("."))
        else:
            close()
            if kind == "quantity":
                seq.add([(" ".join(text.split()), text, "quantity")], _relation(seq.gap))
            elif kind == "word":
                seq.gap.append(text.lower())
            elif text not in "-'’":
                seq.gap.append(text)  # punctuation: no relation across it ("X, which Y")
        at_start = False
        after_copula = kind == "word" and text.lower() in _COPULAS
        after_determiner = kind == "word" and text.lower() in _DETERMINERS
    close()
    return seq.found()


@cache
def _jieba():
    """jieba's tagger, loaded once (its dictionary takes about half a second)."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)  # it logs "Building prefix dict..." at INFO on first use
    return jieba.posseg


def _find_chinese(sentence: str) -> Found:
    seq = _Sequence()
    run: list[tuple[str, str]] = []
    verbs: list[str] = []

    def close() -> None:
        nonlocal run
        while run:
            piece, run = (run, []) if len(run) <= 3 else (run[-3:], run[:-3])
            found = []
            whole = [w for w, _ in piece]
            # a name inside a longer term is a term too (雷诺病 in 雷诺病患者), and so is a term before a general
            # noun (关节炎 in 关节炎患者)
            inner = [[w] for w, f in piece if len(piece) > 1 and f in _ZH_NAME]
            if len(whole) > 1 and whole[-1] in _GENERIC_ZH:
                inner.append(whole[:-1])
            for words in (whole, *inner):
                label = " ".join("".join(w if HAN.match(w) else f" {w} " for w in words).split())
                if 2 <= len(label) <= MAX_TERM_CHARS and not (len(words) == 1 and label.lower() in _GENERIC_ZH):
                    names = any(f in _ZH_NAME for w, f in piece if w in words)
                    found.append((term_key(label), label, "name" if names else "term"))
            seq.add(found, "".join(verbs))
            verbs.clear()
        run = []

    tokens = [(t.word, t.flag) for t in _jieba().cut(sentence) if t.word.strip()]
    for i, (word, flag) in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        before = tokens[i - 1] if i > 0 else ("", "")
        m = _TOKEN.fullmatch(word) if flag in ("m", "eng") else None
        if flag == "m" and after[0] in _ZH_UNITS:  # 3 克, 五 毫克: the unit comes next (jieba tags 克 a name)
            close()
            seq.add([(word + after[0], word + after[0], "quantity")], "".join(verbs))
            verbs.clear()
        elif before[1] == "m" and word in _ZH_UNITS:
            continue
        elif m and m.lastgroup == "quantity":
            close()
            seq.add([(" ".join(word.split()), word, "quantity")], "".join(verbs))
            verbs.clear()
        elif (flag in _ZH_NOUN and (flag != "eng" or _content(word))) or (
                flag == "vn" and run and run[-1][1] == "n" and after[1] in _ZH_NOUN):
            # a verbal noun between nouns is part of a term (血管 反应 性); not after a name (北京大学 研究), nor
            # last (失眠症 有关: "is related to")
            run.append((word, flag))
        else:
            close()
            if flag in _ZH_VERB:
                verbs.append(word)
            elif flag == "x":  # punctuation: what was said before it does not relate the next terms
                verbs.clear()
    close()
    return seq.found()


__all__ = ["VERBS", "Found", "Term", "find_terms", "singular", "term_key"]
