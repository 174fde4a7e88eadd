"""Summaries of documents longer than any context: hybrid (the sentences that state the point, shortened by a
model where the facts survive), map-reduce over a model, or extractive (TextRank), no model.

Everything here works on text and a `count_tokens(str) -> int`; a model is reached only through
`generate(prompts, max_tokens) -> texts`, a batch call. So the module is free of torch, and the bound every
summary keeps (at most max_length tokens) is checked with whatever tokenizer the caller counts with.

Long inputs stay linear: a piece of text is counted once and chunk sizes are sums of piece counts (a chunk is
recounted once, to catch tokens merging across a join); sentence similarity is never computed over more than
MAX_RANK_SENTENCES sentences at a time; no regular expression here backtracks over a run of one character.
A caller that may lose interest (a server whose client left) passes `cancelled`, asked between model batches,
map-reduce rounds, sections and ranking blocks.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from seekmoe.errors import SeekmoeError
from seekmoe.han import IDEOGRAPHS

CountTokens = Callable[[str], int]
Generate = Callable[[list[str], int], list[str]]
Cancelled = Callable[[], bool]  # True once the summary is no longer wanted

STYLES = ("bullets", "paragraph", "sections")
METHODS = ("hybrid", "abstractive", "extractive")

# similarity is an (n, n) matrix: sentences are ranked in blocks of this many, winners ranked again
MAX_RANK_SENTENCES = 400
SHARED_COLUMNS = 4096  # words multiplied at a time for the shared-word counts: memory n * this, whatever the text
BLOCK_WINNERS = 100  # kept per full block for the next level: each level is 4x smaller, so few levels
DAMPING = 0.85  # PageRank's
MIN_FEATURES = 3  # distinct words (or Chinese bigrams) a sentence needs to be ranked
MAX_ROUNDS = 8  # map-reduce rounds before the extractive fallback; a model that shrinks text needs ~log(n)
MAP_BATCH = 8  # prompts per generate() call
TEMPLATE_MARGIN = 16  # tokens a chat template wraps around each prompt; count_tokens does not see them
SECTION_FLOOR = 24  # tokens asked of the model for a short section, so it can write one sentence

_TEXT = "Text:\n{text}\n\nSummary:"  # the document comes last, after this marker
MAP_PROMPTS = {
    "bullets": "Summarize the main points of the text below as a short list of bullet points, one per line, "
               "each starting with \"- \".\n\n" + _TEXT,
    "paragraph": "Summarize the text below in one short paragraph of plain sentences.\n\n" + _TEXT,
}
REDUCE_PROMPTS = {
    "bullets": "The text below holds summaries of consecutive parts of one document. Merge them into one short "
               "list of bullet points, one per line, each starting with \"- \"; drop repetition, keep the main "
               "points.\n\n" + _TEXT,
    "paragraph": "The text below holds summaries of consecutive parts of one document. Merge them into one short "
                 "paragraph; drop repetition, keep the main points.\n\n" + _TEXT,
}

_CJK = IDEOGRAPHS + "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\uff00-\uffef"  # with kana and CJK punctuation
_CJK_EDGE = re.compile(f"[{_CJK}“”‘’]")  # sentences that meet at these are joined without a space
_APPROX_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")  # a blank line and all whitespace after it
# "Mr. Darcy", "e.g. this", "J. Austen": a period after these ends no sentence
_NOT_ABBREVIATION = "".join(rf"(?<!\b{a})" for a in ("Mr", "Mrs", "Ms", "Dr", "St", "Prof", "vs", r"e\.g", r"i\.e",
                                                     "[A-Z]"))
# English ends need whitespace after ("3.14", "e.g.x" stay whole); Chinese ones do not. Closing quotes and
# brackets stay with their sentence. Chinese is not wrapped, so a line break after a CJK character ends a
# sentence too (a poem's title, its author, each line), and so does the line before a list item.
# Linear on runs of punctuation: a search tries every position, so an English end is tried only where a run of
# [.!?] starts (or one further on, when an abbreviation stops it there, "Mr.. Next"), and the possessive *+ / ++
# never give back what they took (giving back could not help: a shorter run is followed by [.!?], not space).
# Each position of a run trying its rest made "a" + "." * 40_000 + "x" take 38 s.
_SENTENCE_END = re.compile(rf"(?:(?<![.!?]){_NOT_ABBREVIATION}|(?<=(?<![.!?])[.!?]))[.!?]++[\"'’”)\]»]*+(?=\s|$)"
                           rf"|[。！？；…]+[\"'’”」』）》】)\]]*|(?<=[{_CJK}])(?=\n)"
                           r"|(?=\n[ \t]*(?:[-*+•·]|\d{1,3}[.)])[ \t])")
_WORDS = re.compile(rf"[{IDEOGRAPHS}]+|[^\W_{IDEOGRAPHS}]+")
_CJK_WORD = re.compile(rf"[{IDEOGRAPHS}]")
_BULLET = re.compile(r"^\s*(?:[-*+•·]|\d{1,3}[.)])\s+")
_ATX_HEADING = re.compile(r"^#{1,6}(?:[ \t]+\S|$)")  # not indented: "   # note" in a reST code block
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_!$%&,;<>?@\\/|])\1{2,}\s*$")  # a reST/setext title's underline
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_LETTER = re.compile(r"[^\W\d_]")
_NOT_PROSE = (">>>", "...", ".. ", "$ ", "|", "+-", "::")  # prompts, reST directives, tables
_STOPWORDS = (
    "a an and are as at be been but by can do does for from has have he her his how i if in into is it its "
    "me my no not of on or our she so that the their them then there these they this to was we were what "
    "when which who will with would you your")
STOPWORDS = frozenset(_STOPWORDS.split())


class SummaryError(SeekmoeError, ValueError):
    """A bad argument to split_text, extractive_summary or summarize."""


class SummaryCancelled(SeekmoeError):
    """summarize() or extractive_summary() stopped early because `cancelled()` said True.

    Not a SummaryError: nothing was wrong with the arguments (a server must not answer it with a 400)."""


def _check_cancelled(cancelled: Cancelled | None) -> None:
    if cancelled is not None and cancelled():
        raise SummaryCancelled("the summary was cancelled")


def approx_tokens(text: str) -> int:
    """A tokenizer-free count: one per CJK character, one per run of other non-space characters."""
    return len(_APPROX_TOKEN.findall(text))


# ---- checks ----------------------------------------------------------------------------------------------------

def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise SummaryError(f"text must be a str, got {type(text).__name__}")
    return text


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SummaryError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SummaryError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_cancel_hook(cancelled: object) -> Cancelled | None:
    if cancelled is not None and not callable(cancelled):
        raise SummaryError(f"cancelled must be None or a callable () -> bool, got {type(cancelled).__name__}")
    return cancelled  # type: ignore[return-value]


# ---- spans: paragraphs, sentences, token-bounded prefixes -------------------------------------------------------

def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_strip_span(text, start, m.start()))
        start = m.end()
    spans.append(_strip_span(text, start, len(text)))
    return [(s, e) for s, e in spans if s < e]


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    for m in _SENTENCE_END.finditer(text, start, end):
        spans.append(_strip_span(text, start, m.end()))
        start = m.end()
    spans.append(_strip_span(text, start, end))
    return [(s, e) for s, e in spans if s < e]


def _longest_fitting(n: int, fits: Callable[[int], bool], guess: int) -> int:
    """Largest i in [0, n] with fits(i), fits(0) assumed; a window grown from `guess`, then a binary search.

    Token counts of prefixes grow with the prefix (give or take a merge), so this costs O(log) counts of text
    about as long as the answer, not of the whole text.
    """
    lo, hi = 0, min(n, max(guess, 1))
    while fits(hi):
        lo = hi
        if hi == n:
            return n
        hi = min(n, hi * 2)
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _word_boundary(text: str, start: int, cut: int) -> int:
    """Move a cut inside a word back to the whitespace before it, unless that throws away over half the piece."""
    if cut <= start or cut >= len(text) or text[cut].isspace() or text[cut - 1].isspace():
        return cut
    space = max(text.rfind(" ", start, cut), text.rfind("\n", start, cut), text.rfind("\t", start, cut))
    return space if space > start + (cut - start) // 2 else cut


def _fitting_prefix(text: str, start: int, end: int, max_tokens: int, count: CountTokens,
                    render: Callable[[str], str] = str) -> int:
    """Largest cut in [start, end] with render(text[start:cut].rstrip()) within max_tokens, moved back to a word
    boundary where that still fits; start when nothing fits. Each candidate is counted, so the answer is exact."""
    def fits(i: int) -> bool:
        return count(render(text[start:start + i].rstrip())) <= max_tokens

    cut = _longest_fitting(end - start, fits, 4 * max_tokens + 16)
    word_cut = _word_boundary(text, start, start + cut) - start
    return start + (word_cut if word_cut != cut and fits(word_cut) else cut)


def _hard_pieces(text: str, start: int, end: int, count: CountTokens,
                 max_tokens: int) -> list[tuple[int, int, int]]:
    """A sentence longer than max_tokens cut into (start, end, tokens) pieces at whitespace, else characters."""
    pieces = []
    while start < end:  # start is never whitespace here
        cut = _fitting_prefix(text, start, end, max_tokens, count)
        if cut == start:
            raise SummaryError(f"max_tokens={max_tokens} is too small: the character {text[start]!r} alone is "
                               f"{count(text[start])} tokens")
        s, e = _strip_span(text, start, cut)
        pieces.append((s, e, count(text[s:e])))
        start, _ = _strip_span(text, cut, end)
    return pieces


def split_text(text: str, count_tokens: CountTokens, max_tokens: int) -> list[str]:
    """Chunks of at most max_tokens tokens, cut at blank lines, else sentence ends, else whitespace/characters.

    The chunks are slices of `text` in order: joined back they hold all of it but the whitespace at the cuts.
    """
    text = _check_text(text)
    _check_positive("max_tokens", max_tokens)
    units: list[tuple[int, int, int]] = []  # (start, end, tokens), each counted once
    for ps, pe in _paragraph_spans(text):
        n = count_tokens(text[ps:pe])
        if n <= max_tokens:
            units.append((ps, pe, n))
            continue
        for ss, se in _sentence_spans(text, ps, pe):
            n = count_tokens(text[ss:se])
            if n <= max_tokens:
                units.append((ss, se, n))
            else:
                units.extend(_hard_pieces(text, ss, se, count_tokens, max_tokens))

    groups, group, used = [], [], 0
    for unit in units:
        cost = unit[2] + (1 if group else 0)  # +1: the whitespace between pieces may be a token of its own
        if group and used + cost > max_tokens:
            groups.append(group)
            group, used = [], 0
            cost = unit[2]
        group.append(unit)
        used += cost
    if group:
        groups.append(group)

    chunks: list[str] = []

    def emit(group: list[tuple[int, int, int]]) -> None:
        # the sum of counts is an estimate (tokens can merge across a join): one recount per chunk decides
        chunk = text[group[0][0]:group[-1][1]]
        if len(group) == 1 or count_tokens(chunk) <= max_tokens:
            chunks.append(chunk)
        else:
            emit(group[:len(group) // 2])
            emit(group[len(group) // 2:])

    for group in groups:
        emit(group)
    return chunks


# ---- sentences and rendering -------------------------------------------------------------------------------------

def _clean(sentence: str) -> str:
    """One line: wrapped lines joined with a space, none between two CJK characters."""
    line = _BULLET.sub("", " ".join(sentence.split()))  # a list item's marker: the output adds its own
    return re.sub(rf"(?<=[{_CJK}]) (?=[{_CJK}])", "", line)


def _sentences(text: str) -> list[str]:
    out = []
    for ps, pe in _paragraph_spans(text):
        out.extend(_clean(text[s:e]) for s, e in _sentence_spans(text, ps, pe))
    return out


def _prose_sentences(text: str) -> list[str]:
    """Sentences of the paragraphs that read as prose: no code (fenced, indented, `>>>`), no directives."""
    out, fenced = [], False
    for ps, pe in _paragraph_spans(text):
        para = text[ps:pe]
        fences = sum(1 for line in para.split("\n") if _FENCE.match(line))
        indented = ps > text.rfind("\n", 0, ps) + 1
        letters = len(_LETTER.findall(para))
        if not (fenced or fences or indented or para.startswith(_NOT_PROSE) or 2 * letters < len(para.split())):
            out.extend(_clean(text[s:e]) for s, e in _sentence_spans(text, ps, pe))
        fenced ^= fences % 2 == 1
    return out


def _join_sentences(sentences: list[str]) -> str:
    out, last = [], ""  # last: the last character written so far
    for s in sentences:
        piece = s if not last or (_CJK_EDGE.match(last) and _CJK_EDGE.match(s)) else " " + s
        out.append(piece)
        last = piece[-1:] or last
    return "".join(out)


Part = tuple[str, str]  # ("heading" | "sentence", text): the units a summary is built from and trimmed by


def _render(style: str, parts: list[Part]) -> str:
    if style == "bullets":
        return "\n".join(f"- {t}" for _, t in parts)
    if style == "paragraph":
        return _join_sentences([t for _, t in parts])
    blocks, sentences = [], []  # sections: each heading as written, its sentences as one paragraph below it
    for kind, t in parts:
        if kind == "heading":
            if sentences:
                blocks.append(_join_sentences(sentences))
                sentences = []
            blocks.append(t)
        else:
            sentences.append(t)
    if sentences:
        blocks.append(_join_sentences(sentences))
    return "\n\n".join(blocks)


def _fit(style: str, parts: list[Part], max_tokens: int, count: CountTokens) -> str:
    """The rendered summary, cut to max_tokens: whole parts dropped from the end, else the first part cut short."""
    text = _render(style, parts)
    if count(text) <= max_tokens:
        return text
    keep = _longest_fitting(len(parts), lambda k: count(_render(style, parts[:k])) <= max_tokens, len(parts) // 2)
    while keep > 1 and parts[keep - 1][0] == "heading":  # a heading without its summary says nothing
        keep -= 1
    if keep:
        return _render(style, parts[:keep])
    kind, first = parts[0]
    for render in (lambda t: _render(style, [(kind, t)]), str):  # with the "- " marker, else bare
        cut = _fitting_prefix(first, 0, len(first), max_tokens, count, render)
        if first[:cut].strip():
            return render(first[:cut].rstrip())
    return ""  # not even one character fits


def _parse_summary(text: str) -> list[Part]:
    """A model's summary as sentences: a bullet marker or a blank line starts an item, other lines continue it
    (wrapped text); items are split at sentence ends."""
    items: list[list[str]] = [[]]
    for line in text.splitlines():
        if _BULLET.match(line) or not line.strip():
            items.append([])
        if line.strip():
            items[-1].append(_BULLET.sub("", line))
    return [("sentence", s) for item in items if item for s in _sentences("\n".join(item))]


# ---- extractive: TextRank ----------------------------------------------------------------------------------------

def _features(sentence: str) -> set[str]:
    """Words for English and the like (no stop words), character bigrams for Chinese."""
    out = set()
    for w in _WORDS.findall(sentence.lower()):
        if _CJK_WORD.match(w):
            out.update(w[i:i + 2] for i in range(max(len(w) - 1, 1)))
        elif len(w) > 1 and w not in STOPWORDS:
            out.add(w)
    return out


def _shared_words(features: list[set[str]]) -> np.ndarray:
    """(n, n) float32: how many words (features) each two sentences share, the diagonal their own counts.

    Only words in two or more sentences can be shared; their (n, V) incidence goes through the product
    SHARED_COLUMNS words at a time, so a block of long sentences of rare words never makes an (n, V) matrix of
    hundreds of MB. The sums are small integers, exact in float32 in any order.
    """
    n = len(features)
    seen: dict[str, int] = {}
    for f in features:
        for w in f:
            seen[w] = seen.get(w, 0) + 1
    vocab = {w: j for j, w in enumerate(w for w, k in seen.items() if k > 1)}
    rows, cols = [], []
    for i, f in enumerate(features):
        for w in f:
            j = vocab.get(w)
            if j is not None:
                rows.append(i)
                cols.append(j)
    order = np.argsort(np.asarray(cols, np.int64), kind="stable")  # by column: a block of columns is a slice
    rows, cols = np.asarray(rows, np.int64)[order], np.asarray(cols, np.int64)[order]
    shared = np.zeros((n, n), np.float32)
    for c in range(0, len(vocab), SHARED_COLUMNS):
        lo, hi = np.searchsorted(cols, [c, c + SHARED_COLUMNS])
        incidence = np.zeros((n, min(SHARED_COLUMNS, len(vocab) - c)), np.float32)  # (n, C)
        incidence[rows[lo:hi], cols[lo:hi] - c] = 1.0
        shared += incidence @ incidence.T  # (n, n)
    shared[np.diag_indices(n)] = [len(f) for f in features]
    return shared


def _textrank(features: list[set[str]]) -> np.ndarray:
    """PageRank scores over sentences, edges weighted by shared words / (log|a| + log|b|) as in TextRank."""
    n = len(features)
    shared = _shared_words(features)  # (n, n)
    logs = np.log1p(np.diagonal(shared))  # log1p: a one-word sentence still has a nonzero denominator
    sim = shared / (logs[:, None] + logs[None, :] + 1e-9)
    np.fill_diagonal(sim, 0.0)
    out_weight = sim.sum(1, keepdims=True)
    trans = np.divide(sim, out_weight, out=np.zeros_like(sim), where=out_weight > 0)  # row-stochastic
    score = np.full(n, 1.0 / n)
    for _ in range(100):
        new = (1 - DAMPING) / n + DAMPING * (trans.T @ score)
        if np.abs(new - score).sum() < 1e-7:
            return new
        score = new
    return score


def _ranked(sentences: list[str], cancelled: Cancelled | None = None) -> list[int]:
    """Indices of at most MAX_RANK_SENTENCES sentences, best first; blockwise, then the winners again."""
    features = [_features(s) for s in sentences]
    _check_cancelled(cancelled)
    # too few words to share ("(正旦唱)。", underlines, stray code) would rank high on the log-length norm
    idx = [i for i, f in enumerate(features) if len(f) >= MIN_FEATURES] or [i for i, f in enumerate(features) if f]
    if not idx:
        return list(range(min(len(sentences), MAX_RANK_SENTENCES)))
    while len(idx) > MAX_RANK_SENTENCES:
        winners = []
        for b in range(0, len(idx), MAX_RANK_SENTENCES):
            _check_cancelled(cancelled)
            block = idx[b:b + MAX_RANK_SENTENCES]
            scores = _textrank([features[i] for i in block])
            keep = max(1, len(block) * BLOCK_WINNERS // MAX_RANK_SENTENCES)  # a short last block, fewer winners
            winners.extend(block[j] for j in sorted(np.argsort(-scores, kind="stable")[:keep]))
        idx = winners
    scores = _textrank([features[i] for i in idx])
    return [idx[j] for j in np.argsort(-scores, kind="stable")]


def _extract(text: str, count: CountTokens, prose_only: bool = False,
             cancelled: Cancelled | None = None) -> list[tuple[int, str, int]]:
    """(position, sentence, tokens) of the ranked candidates, best first (the caller picks within its budget).

    Code and directives are left out while the text has prose; prose_only: always (a section's body)."""
    seen: set[str] = set()
    # repeated sentences (boilerplate, refrains) would rank high and fill the summary with copies
    sentences = _prose_sentences(text) or ([] if prose_only else _sentences(text))
    sentences = [t for t in sentences if not (t in seen or seen.add(t))]
    return [(i, sentences[i], count(sentences[i])) for i in _ranked(sentences, cancelled)]


def _pick(candidates: list[tuple[int, str, int]], budget: int, overhead: int = 1) -> list[Part]:
    """Best candidates that fit the budget (each with `overhead` tokens of join or marker), in document order."""
    chosen, used = [], 0
    for pos, s, n in candidates:
        if used + n + overhead <= budget:
            chosen.append((pos, s))
            used += n + overhead
    if not chosen and candidates:  # none fits: the best one, for _fit to cut
        chosen = [candidates[0][:2]]
    return [("sentence", s) for _, s in sorted(chosen)]


def _overhead(style: str) -> int:
    return 2 if style == "bullets" else 1  # "- " and the newline, or the space between sentences


def extractive_summary(text: str, max_tokens: int, count_tokens: CountTokens, style: str = "bullets",
                       cancelled: Cancelled | None = None) -> str:
    """The document's own highest-ranked sentences (TextRank), in document order, within max_tokens tokens.

    cancelled: asked between sections and ranking blocks; once it says True, SummaryCancelled is raised."""
    text = _check_text(text)
    _check_positive("max_tokens", max_tokens)
    _check_choice("style", style, STYLES)
    cancelled = _check_cancel_hook(cancelled)
    if not text.strip():
        return ""
    if style == "sections":
        return _sections_summary(text, max_tokens, count_tokens,
                                 lambda body, budget: _extract(body, count_tokens, True, cancelled), cancelled)
    parts = _pick(_extract(text, count_tokens, cancelled=cancelled), max_tokens, _overhead(style))
    return _fit(style, parts, max_tokens, count_tokens)


# ---- hybrid: what the writer marks as the point, the lead, the centre; the model only where facts survive ----------

# Phrases writers state their conclusions with (Edmundson's cue words), English and Chinese. A sentence that has one
# is what a reader of the summary most needs, and TextRank alone ranks it low: it shares few words with the rest.
_CUES = re.compile(
    r"\b(?:in conclusion|to conclude|in summary|to sum up|in short|overall|we conclude|"
    r"we (?:find|found|show|showed) that|(?:key|main|central|principal|chief) (?:conclusion|finding|result|takeaway)s?|"
    r"(?:this|the) (?:report|study|paper|analysis|review) (?:shows|finds|concludes|demonstrates)|"
    r"(?:the )?results? (?:show|shows|suggest|suggests|indicate|indicates))\b"
    r"|结论|综上|总之|总而言之|总的来说|研究表明|结果表明|我们发现|主要发现", re.IGNORECASE)
_CLOSING_HEADING = re.compile(r"conclusion|summary|findings|takeaway|outlook|结论|总结|小结|结语", re.IGNORECASE)
_FIGURE = re.compile(r"\d+(?:[.,]\d+)*%?")
MAX_CUE_SENTENCES = 3  # a document that says "we find that" everywhere does not fill the summary with it
REDUNDANT = 0.5  # a sentence whose words overlap one already chosen by more than this (Jaccard) adds nothing
COMPRESS_PROMPT = ("Shorten the sentence below. Keep every number, name and fact; drop only words that carry "
                   "none.\n\n" + _TEXT)


def _hybrid_candidates(text: str, count: CountTokens, cancelled: Cancelled | None = None
                       ) -> list[tuple[int, str, int]]:
    """(position, sentence, tokens), best first: the sentences that state a conclusion (those of a closing
    section, then later ones, first), the document's opening sentence, the last sentence of its closing section,
    then TextRank's order; a sentence that repeats one already in says nothing new and is left out."""
    sentences: list[str] = []
    closing: set[int] = set()  # sentences of a "Conclusion"-like section, or of the last one
    seen: set[str] = set()
    sections = split_sections(text)
    for k, (heading, body) in enumerate(sections):
        is_closing = k == len(sections) - 1 or bool(heading and _CLOSING_HEADING.search(heading))
        for s in _prose_sentences(body):
            if s not in seen:
                seen.add(s)
                if is_closing:
                    closing.add(len(sentences))
                sentences.append(s)
    if not sentences:
        return _extract(text, count, cancelled=cancelled)
    cues = [i for i, s in enumerate(sentences) if _CUES.search(s)]
    cues.sort(key=lambda i: (i not in closing, -i))
    order = [*cues[:MAX_CUE_SENTENCES], 0, *sorted(closing, reverse=True)[:1], *_ranked(sentences, cancelled)]
    chosen: list[int] = []
    kept: list[set[str]] = []
    for i in order:
        if i in chosen:
            continue
        words = _features(sentences[i])
        if any(len(words & w) > REDUNDANT * max(len(words | w), 1) for w in kept):
            continue
        chosen.append(i)
        kept.append(words)
    return [(i, sentences[i], count(sentences[i])) for i in chosen]


def _facts_survive(original: str, short: str) -> bool:
    """Every figure of the original is in the short version, and at least half its words (or bigrams)."""
    words, kept = _features(original), _features(short)
    return (all(f in short for f in _FIGURE.findall(original))
            and len(words & kept) * 2 >= len(words) and bool(short.strip()))


def _compress(parts: list[Part], generate: Generate, count: CountTokens, context_tokens: int, progress: bool,
              cancelled: Cancelled | None = None) -> list[Part]:
    """Each sentence as the model shortens it, where the result is shorter and keeps the facts; else as it was.
    A sentence whose prompt and answer would not fit in context_tokens is kept as written, not sent."""
    prompt_cost = count(COMPRESS_PROMPT.format(text="")) + TEMPLATE_MARGIN
    fits = [kind == "sentence" and prompt_cost + 2 * count(s) <= context_tokens for kind, s in parts]
    sentences = [s for (_, s), ok in zip(parts, fits, strict=True) if ok]
    if not sentences:
        return parts
    outs = iter(_batched(generate, [COMPRESS_PROMPT.format(text=s) for s in sentences],
                         max(count(s) for s in sentences), progress, "compress", cancelled))
    out: list[Part] = []
    for (kind, s), ok in zip(parts, fits, strict=True):
        if ok:
            short = " ".join(next(outs).split())
            if count(short) < count(s) and _facts_survive(s, short):
                s = short
        out.append((kind, s))
    return out


# ---- sections ----------------------------------------------------------------------------------------------------

def split_sections(text: str) -> list[tuple[str | None, str]]:
    """(heading as written or None before the first one, body): Markdown `#` headings, underlined titles."""
    lines = text.split("\n")
    sections: list[tuple[str | None, str]] = []
    heading: str | None = None
    body: list[str] = []
    fenced = False
    i = 0

    def title(j: int) -> bool:  # a non-indented text line, not itself an adornment
        return 0 <= j < len(lines) and bool(lines[j].strip()) and not lines[j][0].isspace() \
            and not _ADORNMENT.match(lines[j])

    while i < len(lines):
        line, found, width = lines[i], None, 1
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            if _ATX_HEADING.match(line):
                found = line.strip()
            elif (title(i) and i + 1 < len(lines) and _ADORNMENT.match(lines[i + 1])
                  and len(lines[i + 1].strip()) >= len(line.strip()) and (i == 0 or not lines[i - 1].strip())):
                found, width = line.rstrip() + "\n" + lines[i + 1].rstrip(), 2
            elif (_ADORNMENT.match(line) and title(i + 1) and i + 2 < len(lines)
                  and lines[i + 2].strip() == line.strip()):
                found, width = "\n".join(s.rstrip() for s in lines[i:i + 3]), 3  # an overlined title
        if found is None:
            body.append(line)
            i += 1
            continue
        if heading is not None or "\n".join(body).strip():
            sections.append((heading, "\n".join(body)))
        heading, body = found, []
        i += width
    sections.append((heading, "\n".join(body)))
    return sections


Summarizer = Callable[[str, int], list[tuple[int, str, int]]]  # (body, budget) -> (position, sentence, tokens)


def _sections_summary(text: str, max_tokens: int, count: CountTokens, summarize_body: Summarizer,
                      cancelled: Cancelled | None = None) -> str:
    """Each heading, then its section's summary, in document order; headings count against the budget.

    Sections enter largest first, each with its heading and its best sentence, while the budget allows: a long
    document's many small sections give way to its big ones. What is left is split among them by length.
    """
    sections = split_sections(text)
    if all(h is None for h, _ in sections):  # no headings: one section, a plain paragraph
        return _fit("paragraph", _pick(summarize_body(text, max_tokens), max_tokens), max_tokens, count)
    heading_cost = [count(h) + 1 if h is not None else 0 for h, _ in sections]  # +1: the blank line after it
    body_cost = [count(b) if b.strip() else 0 for _, b in sections]
    total_body = max(sum(body_cost), 1)
    candidates: list[list[tuple[int, str, int]]] = [[] for _ in sections]
    chosen: list[list[tuple[int, str]]] = [[] for _ in sections]
    spent = [0] * len(sections)
    entered: set[int] = set()
    used = 0
    for k in sorted(range(len(sections)), key=lambda k: -body_cost[k]):
        if not body_cost[k] or used + heading_cost[k] + 2 > max_tokens:
            continue  # summarize_body may be a model call: only for sections that can still enter
        _check_cancelled(cancelled)
        ask = min(max_tokens, max(max_tokens * body_cost[k] // total_body, SECTION_FLOOR))
        candidates[k] = summarize_body(sections[k][1], ask)
        if not candidates[k]:  # all code or directives: a heading without a summary says nothing
            continue
        cost = heading_cost[k] + candidates[k][0][2] + 1
        if used + cost <= max_tokens:
            chosen[k] = [candidates[k][0][:2]]
            spent[k] = cost
            used += cost
            entered.add(k)
    for k in range(len(sections) - 2, -1, -1):  # a title right above an entered section: its parent
        if not body_cost[k] and k + 1 in entered and used + heading_cost[k] <= max_tokens:
            used += heading_cost[k]
            entered.add(k)

    left, entered_body = max_tokens - used, max(sum(body_cost[k] for k in entered), 1)
    for k in sorted(entered):
        allowance = spent[k] + left * body_cost[k] // entered_body
        for pos, s, n in candidates[k][1:]:
            if spent[k] + n + 1 <= allowance and used + n + 1 <= max_tokens:
                chosen[k].append((pos, s))
                spent[k] += n + 1
                used += n + 1
    parts: list[Part] = []
    for k in sorted(entered):
        if sections[k][0] is not None:
            parts.append(("heading", sections[k][0]))
        parts.extend(("sentence", s) for _, s in sorted(chosen[k]))
    if not parts:  # not even one heading with a sentence fits: the first heading, cut by _fit
        parts = [("heading", next(h for h, _ in sections if h is not None))]
    return _fit("sections", parts, max_tokens, count)


# ---- abstractive: map-reduce -------------------------------------------------------------------------------------

def _batched(generate: Generate, prompts: list[str], max_tokens: int, progress: bool, desc: str,
             cancelled: Cancelled | None = None) -> list[str]:
    from tqdm import tqdm

    outs: list[str] = []
    with tqdm(total=len(prompts), unit="chunk", desc=desc, disable=not progress, file=sys.stderr) as bar:
        for b in range(0, len(prompts), MAP_BATCH):
            _check_cancelled(cancelled)
            batch = prompts[b:b + MAP_BATCH]
            answers = list(generate(batch, max_tokens))
            if len(answers) != len(batch):
                raise SummaryError(f"generate must return one text per prompt: got {len(answers)} for "
                                   f"{len(batch)} prompts")
            outs.extend(answers)
            bar.update(len(batch))
    return outs


def _truncate(text: str, max_tokens: int, count: CountTokens) -> str:
    """Text cut to max_tokens, in case generate wrote more than it was asked for."""
    text = text.strip()
    if count(text) <= max_tokens:
        return text
    return text[:_fitting_prefix(text, 0, len(text), max_tokens, count)].rstrip()


def _map_reduce(text: str, budget: int, style: str, generate: Generate, count: CountTokens, context_tokens: int,
                progress: bool, cancelled: Cancelled | None = None) -> list[Part]:
    """Summaries of chunks, then of the joined summaries, until they fit `budget`; extractive when one shrinks
    nothing (a weak model) or the rounds run out."""
    current = text
    for rounds in range(MAX_ROUNDS):
        _check_cancelled(cancelled)
        n = count(current)
        if rounds and n <= budget:
            return _parse_summary(current)
        prompt = (MAP_PROMPTS if rounds == 0 else REDUCE_PROMPTS)[style]
        room = context_tokens - count(prompt.format(text="")) - TEMPLATE_MARGIN  # for the text and the answer
        if room < 8:
            raise SummaryError(f"context_tokens={context_tokens} is too small: the {style} prompt alone needs "
                               f"{context_tokens - room} tokens and a chunk at least 8 more")
        if n + budget <= room:  # one call: the answer is the summary
            outs = _batched(generate, [prompt.format(text=current)], budget, progress, "summarize", cancelled)
        else:
            answer = room // 4
            chunks = split_text(current, count, room - answer)
            outs = _batched(generate, [prompt.format(text=c) for c in chunks], answer, progress,
                            "map" if rounds == 0 else f"reduce {rounds}", cancelled)
            # an answer no shorter than its chunk is a model that failed at it: extract from the chunk instead
            outs = [_truncate(o, answer, count) if count(o) < count(c)
                    else extractive_summary(c, answer, count, cancelled=cancelled)
                    for o, c in zip(outs, chunks, strict=True)]
        joined = "\n".join(o.strip() for o in outs if o.strip())
        if not joined or count(joined) >= n:
            break
        current = joined
    else:
        if count(current) <= budget:
            return _parse_summary(current)
    return _pick(_extract(current, count, cancelled=cancelled), budget, _overhead(style))


def _abstract_candidates(text: str, budget: int, generate: Generate, count: CountTokens, context_tokens: int,
                         progress: bool, cancelled: Cancelled | None = None) -> list[tuple[int, str, int]]:
    """A section's model summary as candidates, in the model's order (its first sentence is kept first)."""
    parts = _map_reduce(text, budget, "paragraph", generate, count, context_tokens, progress, cancelled)
    return [(i, s, count(s)) for i, (_, s) in enumerate(parts)]


def summarize(text: str, max_length: int = 200, style: str = "bullets", method: str = "abstractive",
              generate: Generate | None = None, count_tokens: CountTokens | None = None,
              context_tokens: int = 1024, progress: bool = False, cancelled: Cancelled | None = None) -> str:
    """A summary of at most max_length tokens (by count_tokens) of a text of any length.

    style: "bullets" ("- " lines), "paragraph", or "sections" (the document's headings, each with a summary of
    its section). method: "hybrid" (the sentences that state a conclusion, by the phrases writers use for one and
    by sitting in a closing section, the opening sentence, then TextRank's central ones without repeats; each
    shortened by generate where given and only where its figures and most words survive), "abstractive"
    (map-reduce with generate(prompts, max_tokens) -> texts, falling back to extraction where the model does not
    shrink the text) or "extractive" (TextRank, no model). Measured on held-out reports (bench/chat_eval.py),
    hybrid keeps the stated conclusion where the other two lose it: LLM.generate_summary, the server and the CLI
    default to it.
    count_tokens None: approx_tokens, a whitespace/CJK-character estimate.
    cancelled: a () -> bool asked before each generate() batch, map-reduce round, section and ranking block (e.g. a
    threading.Event's is_set); once it says True, SummaryCancelled is raised. A generate() call in flight is not
    interrupted: it is the caller's to cancel.
    """
    text = _check_text(text)
    _check_positive("max_length", max_length)
    _check_choice("style", style, STYLES)
    _check_choice("method", method, METHODS)
    _check_positive("context_tokens", context_tokens)
    cancelled = _check_cancel_hook(cancelled)
    if not text.strip():
        return ""
    if method == "abstractive" and generate is None:
        raise SummaryError("generate is needed for method='abstractive' (or use method='extractive')")
    _check_cancelled(cancelled)
    count = count_tokens if count_tokens is not None else approx_tokens
    if method == "extractive":
        return extractive_summary(text, max_length, count, style, cancelled)
    if method == "hybrid":
        if style == "sections":
            return _sections_summary(text, max_length, count,
                                     lambda body, budget: _hybrid_candidates(body, count, cancelled), cancelled)
        parts = _pick(_hybrid_candidates(text, count, cancelled), max_length, _overhead(style))
        if generate is not None:
            parts = _compress(parts, generate, count, context_tokens, progress, cancelled)
        return _fit(style, parts, max_length, count)
    if style == "sections":
        return _sections_summary(text, max_length, count, lambda body, budget: _abstract_candidates(
            body, budget, generate, count, context_tokens, progress, cancelled), cancelled)
    parts = _map_reduce(text, max_length, style, generate, count, context_tokens, progress, cancelled)
    return _fit(style, parts, max_length, count)


def chat_generate(llm: Any, context: int) -> Generate:
    """generate(prompts, max_tokens) for summarize() from an LLM (anything with .tokenizer and .generate): each
    prompt a user message in the chat template, answered greedily within `context` tokens."""
    def generate(prompts: list[str], max_tokens: int) -> list[str]:
        ids = [llm.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        # summarize() leaves TEMPLATE_MARGIN tokens for the template; should one need more, the answer gives way,
        # and a prompt with no room left at all gets an empty answer, which summarize() treats as no shorter
        fit = [i for i, p in enumerate(ids) if len(p) < context]
        if not fit:
            return [""] * len(prompts)
        room = context - max(len(ids[i]) for i in fit)
        outs = llm.generate(prompt_token_ids=[ids[i] for i in fit], max_tokens=min(max_tokens, room),
                            temperature=0.0)
        answers = [""] * len(prompts)
        for i, o in zip(fit, outs, strict=True):
            answers[i] = o.text
        return answers

    return generate


