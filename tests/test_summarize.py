"""Summaries: token-bounded chunks, TextRank extraction, map-reduce over a fake model, headings, the CLI.

Bounds are checked with the bundled tokenizer's real counts on real text (the Python tutorial or the committed
corpus sample, Chinese poetry); the model is a fake that echoes the first sentence of its prompt's text.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from seekmoe.llm import LLM
from seekmoe.text.summarize import (
    MAP_PROMPTS,
    MAX_RANK_SENTENCES,
    STYLES,
    SummaryCancelled,
    SummaryError,
    approx_tokens,
    extractive_summary,
    split_sections,
    split_text,
    summarize,
)

DATA = Path(__file__).parent / "data" / "corpus_sample"
TUTORIAL = Path("/usr/share/doc/python3.11/html/_sources/tutorial")
CHAT = Path(__file__).parent.parent / "data" / "chat" / "chatterbot.train.jsonl"
MIN_CHARS = 100_000


@pytest.fixture(scope="module")
def tok():
    from seekmoe.model.checkpoint import DEFAULT_MODEL
    from seekmoe.text.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def count(tok):
    return lambda s: len(tok.encode(s))


def _at_least(parts: list[str], chars: int) -> str:
    text = "\n\n".join(parts)
    while len(text) < chars:  # the sample is small: it is read again until long enough
        text += "\n\n" + "\n\n".join(parts)
    return text


@pytest.fixture(scope="module")
def english() -> str:
    files = sorted(TUTORIAL.glob("*.rst.txt")) or [DATA / f"{n}.txt" for n in
                                                   ("python_docs", "austen", "moby_dick", "sotu", "web")]
    files = [f for f in files if f.exists()]
    if not files:
        pytest.skip("neither the Python tutorial nor tests/data/corpus_sample is here")
    return _at_least([f.read_text(encoding="utf-8") for f in files], MIN_CHARS)


@pytest.fixture(scope="module")
def chinese() -> str:
    poetry = DATA / "chinese_poetry.txt"
    if not poetry.exists():
        pytest.skip("tests/data/corpus_sample/chinese_poetry.txt is missing")
    parts = [poetry.read_text(encoding="utf-8")]
    if CHAT.exists():  # the Chinese lines of a chat set: modern prose next to the classics
        lines = []
        for row in CHAT.read_text(encoding="utf-8").splitlines():
            m = json.loads(row)
            if m.get("meta", {}).get("lang") == "zh":
                lines += [t["content"] for t in m["messages"]]
        parts.append("\n".join(lines))
    return _at_least(parts, MIN_CHARS)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def first_sentence_fake(calls: list | None = None):
    """A fake model: the first sentence of the text in its prompt."""
    def generate(prompts: list[str], max_tokens: int) -> list[str]:
        if calls is not None:
            calls.append((len(prompts), max_tokens))
        outs = []
        for p in prompts:
            body = p.split("Text:\n", 1)[1].rsplit("\n\nSummary:", 1)[0].strip()
            m = re.search(r"^.*?(?:[.!?](?=\s)|[。！？])", body, re.S)
            outs.append(m.group() if m else body.split("\n")[0])
        return outs

    return generate


def verbose_fake(calls: list):
    """A weak model: every answer is longer than its whole prompt."""
    def generate(prompts: list[str], max_tokens: int) -> list[str]:
        calls.append(len(prompts))
        return [p + " And more. " * 50 for p in prompts]

    return generate


# ---- split_text -------------------------------------------------------------------------------------------------

def _check_chunks(text: str, chunks: list[str], count, max_tokens: int) -> None:
    assert chunks and all(c.strip() for c in chunks)
    assert max(count(c) for c in chunks) <= max_tokens
    assert _squeeze("".join(chunks)) == _squeeze(text)  # nothing lost but whitespace at the cuts
    pos = 0
    for c in chunks:  # slices of the text, in order
        pos = text.index(c, pos) + len(c)


@pytest.mark.parametrize("lang", ["english", "chinese"])
@pytest.mark.parametrize("max_tokens", [16, 300])
def test_split_text_bounds_and_coverage(lang, max_tokens, count, request):
    text = request.getfixturevalue(lang)[:60_000]
    _check_chunks(text, split_text(text, count, max_tokens), count, max_tokens)


def test_split_text_cuts_a_long_sentence(count):
    english = " ".join(f"word{i}" for i in range(5000))  # no sentence end at all
    chinese = "天地玄黄宇宙洪荒日月盈昃辰宿列张" * 1000
    for text in (english, chinese, english + "\n\n" + chinese):
        chunks = split_text(text, count, 50)
        _check_chunks(text, chunks, count, 50)
    assert all(re.fullmatch(r"word\d+( word\d+)*", c) for c in split_text(english, count, 50))  # whole words


def test_split_text_prefers_paragraphs_then_sentences(count):
    paragraphs = [" ".join(f"Sentence {p}.{s} is here." for s in range(4)) for p in range(5)]
    text = "\n\n".join(paragraphs)
    biggest = max(count(p) for p in paragraphs)
    assert split_text(text, count, biggest + 1) == paragraphs
    chunks = split_text(text, count, biggest // 2 + 2)
    assert all(c.endswith("is here.") for c in chunks)  # cut at sentence ends, never inside one


def test_split_text_chinese_sentences(count):
    text = "子曰：“学而时习之，不亦说乎？”有朋自远方来，不亦乐乎。人不知而不愠，不亦君子乎！" * 20
    chunks = split_text(text, count, 40)
    _check_chunks(text, chunks, count, 40)
    assert all(c[-1] in "？”。！" for c in chunks)  # closing quotes stay with their sentence


def test_split_text_many_blank_lines(count):
    text = "\n\n\n" + "First one.\n\n\n\n" + "\n \n\t\n" * 10_000 + "Second one.\n\n\n"
    assert split_text(text, count, 100) == ["First one.", "Second one."]  # the blank run is tokens too
    assert split_text("\n\nFirst one.\n\n\n \nSecond one.\n", count, 100) == ["First one.\n\n\n \nSecond one."]
    assert split_text(text, count, count("Second one.")) == ["First one.", "Second one."]
    assert split_text("\n\n \n", count, 10) == []
    assert split_text("", count, 10) == []


def test_split_text_million_characters_is_fast(english, count):
    text = (english * (1_000_000 // len(english) + 1))[:1_000_000]
    start = time.process_time()  # this process's CPU time: other work on the machine does not count
    chunks = split_text(text, count, 500)
    assert time.process_time() - start < 15
    assert max(count(c) for c in chunks) <= 500
    assert _squeeze("".join(chunks)) == _squeeze(text)


# ---- extractive ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["english", "chinese"])
def test_extractive_summary_bounds_and_sources(lang, count, request):
    text = request.getfixturevalue(lang)
    flat = _squeeze(text)
    for max_tokens in (1, 7, 60, 400):
        for style in STYLES:
            out = extractive_summary(text, max_tokens, count, style)
            assert out and count(out) <= max_tokens, (max_tokens, style)
    for line in extractive_summary(text, 400, count, "bullets").splitlines():
        assert line.startswith("- ") and _squeeze(line[2:]) in flat  # the document's own sentences


def test_extractive_ranks_the_central_sentence_first(count):
    text = ("Cats chase mice in the barn. Dogs guard the farm house at night. "
            "Cats and dogs live on the farm with mice in the barn and the house. "
            "The weather report mentions rain tomorrow. Mice hide from cats in the barn.")
    assert summarize(text, 24, method="extractive", count_tokens=count) == \
        "- Cats and dogs live on the farm with mice in the barn and the house."


def test_million_character_document_extractive(english, chinese, count):
    text = ((english + "\n\n" + chinese) * 10)[:1_000_000]
    start = time.process_time()
    for style in STYLES:
        out = summarize(text, 200, style=style, method="extractive", count_tokens=count)
        assert 0 < count(out) <= 200
    assert time.process_time() - start < 30


# ---- adversarial inputs -----------------------------------------------------------------------------------------

# Runs of one character (or a short unit) around a sentence end, a list marker, a title underline, a heading.
RUNS = [".", "!", "?", "…", "。", '"', ")", " ", "\n", "\t", "\n ", "=", "-", "#", "1", "1.", "\n1.", "\n- ", "Mr.",
        "中", "中\n", "```\n", "T\n===\n"]
RUN_CHARS = 100_000


def test_runs_of_punctuation_take_linear_time():
    # The sentence end tried every position of a run of "." and scanned the rest of the run from each: quadratic,
    # "a" + "." * 40_000 + "x" took 38 s in the server (27 s here). At RUN_CHARS one such call took the old code about
    # 3 minutes, and this whole test well over 10; linear code does all of it in a few seconds. So a generous timeout
    # on a child process (killed wherever it is stuck) tells them apart, and nothing is timed.
    code = textwrap.dedent(f"""
        from seekmoe.text.summarize import approx_tokens, extractive_summary, split_sections, split_text
        for run in {RUNS!r}:
            body = run * ({RUN_CHARS} // len(run))
            for text in ("a." + body + "x", body + "x. y"):  # after a word, and at the start of a line
                approx_tokens(text)
                split_sections(text)
                split_text(text, approx_tokens, 64)
                for style in ("bullets", "sections"):
                    extractive_summary(text, 50, approx_tokens, style)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- summarize: cancellation ------------------------------------------------------------------------------------

def cancel_after(calls: int):
    """A cancelled() that says True from its calls-th call on, and counts them."""
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) >= calls

    return cancelled, asked


@pytest.mark.parametrize("style", STYLES)
def test_extractive_stops_when_cancelled(english, count, style):
    text = english + "\n\n# More\n\n" + english
    assert len(re.findall(r"[.!?]\s", text)) > 2 * MAX_RANK_SENTENCES  # ranked in several blocks
    expected = summarize(text, 100, style, "extractive", count_tokens=count)
    assert summarize(text, 100, style, "extractive", count_tokens=count, cancelled=lambda: False) == expected
    assert extractive_summary(text, 100, count, style, cancelled=threading.Event().is_set) == expected
    for calls in (1, 2, 3):  # asked at the start, then between blocks and sections
        cancelled, asked = cancel_after(calls)
        with pytest.raises(SummaryCancelled):
            summarize(text, 100, style, "extractive", count_tokens=count, cancelled=cancelled)
        assert len(asked) == calls  # nothing asked it again: it stopped at once


@pytest.mark.parametrize("style", STYLES)
def test_abstractive_stops_between_batches_when_cancelled(english, count, style):
    calls: list = []
    event = threading.Event()

    def generate(prompts: list[str], max_tokens: int) -> list[str]:
        event.set()  # the client leaves while the first batch runs: it finishes, no other starts
        return first_sentence_fake(calls)(prompts, max_tokens)

    with pytest.raises(SummaryCancelled):
        summarize(english + "\n\n# Part two\n\n" + english, 100, style, generate=generate, count_tokens=count,
                  context_tokens=512, cancelled=event.is_set)
    assert len(calls) == 1
    assert not issubclass(SummaryCancelled, SummaryError)  # no bad argument: a server must not answer it with a 400


# ---- summarize: bounds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["english", "chinese"])
@pytest.mark.parametrize("method", ["extractive", "abstractive", "hybrid"])
@pytest.mark.parametrize("style", STYLES)
def test_summarize_never_exceeds_max_length(lang, method, style, count, request):
    text = request.getfixturevalue(lang)
    assert len(text) >= MIN_CHARS
    for max_length in (1, 5, 50, 200):
        out = summarize(text, max_length, style=style, method=method, generate=first_sentence_fake(),
                        count_tokens=count)
        assert out.strip() and count(out) <= max_length, (max_length, out)


def test_default_count_is_an_approximation():
    assert approx_tokens("Hello, world!  子曰学而") == 6
    text = "One sentence here. " * 500
    out = summarize(text, 12, method="extractive")
    assert approx_tokens(out) <= 12


def test_empty_text_gives_empty_summary():
    for text in ("", "   \n\n\t "):
        assert summarize(text) == ""
        assert summarize(text, method="extractive") == ""
        assert extractive_summary(text, 10, approx_tokens) == ""


# ---- summarize: abstractive -------------------------------------------------------------------------------------

def test_map_reduce_uses_the_model(english, count):
    calls: list = []
    out = summarize(english, 200, style="bullets", generate=first_sentence_fake(calls), count_tokens=count,
                    context_tokens=512)
    assert count(out) <= 200 and out.startswith("- ")
    assert len(calls) > 1 and all(n <= 8 for n, _ in calls)  # batched map calls, then reduce rounds
    chunk = split_text(english, count, 300)[0]
    first = first_sentence_fake()([MAP_PROMPTS["bullets"].format(text=chunk)], 50)[0]
    assert _squeeze(first) in _squeeze(out) or count(first) > 100


def test_short_text_is_one_call(count):
    calls: list = []
    text = "The report covers sales. Sales rose in May. Costs fell too."
    out = summarize(text, 50, style="paragraph", generate=first_sentence_fake(calls), count_tokens=count)
    assert out == "The report covers sales." and len(calls) == 1 and calls[0] == (1, 50)


def test_weak_model_falls_back_to_extraction(english, count):
    calls: list = []
    out = summarize(english, 50, generate=verbose_fake(calls), count_tokens=count, context_tokens=1024)
    assert 0 < count(out) <= 50
    assert "And more." not in out  # the fallback picked the document's own sentences
    assert sum(calls) < 400  # every round shrinks or stops: no endless reduce

    calls.clear()
    text = "A short note about the garden. The roses bloomed early this year."
    out = summarize(text, 30, generate=verbose_fake(calls), count_tokens=count)
    assert count(out) <= 30 and calls == [1] and ("roses" in out or "garden" in out)


def test_progress_bar_on_stderr(english, count, capsys):
    summarize(english[:20_000], 50, generate=first_sentence_fake(), count_tokens=count, progress=True)
    assert "map" in capsys.readouterr().err
    summarize(english[:20_000], 50, generate=first_sentence_fake(), count_tokens=count)
    assert capsys.readouterr().err == ""


# ---- sections ---------------------------------------------------------------------------------------------------

MARKDOWN = """# Gardening guide

Gardens need water every week. Roses need more sun than ferns.

## Soil

Good soil holds water and air. Compost makes soil richer every year.

```python
# not a heading: a comment in code
plant()
```

## Pests

Aphids eat young leaves. Ladybirds eat aphids, so gardeners welcome them.
"""

REST = """.. _garden:

*************
Garden basics
*************

Water the garden in the morning. Evening water invites mould.

Tools
=====

A spade and a rake are enough to start. Clean tools last longer.

Seasons
-------

Plant bulbs in autumn. Prune roses in late winter.

::

   # a comment in a literal block
   Not a title
   ===========
"""


def test_split_sections_finds_markdown_and_rest_headings():
    assert [h for h, _ in split_sections(MARKDOWN)] == ["# Gardening guide", "## Soil", "## Pests"]
    assert [h for h, _ in split_sections(REST)] == [
        None, "*************\nGarden basics\n*************", "Tools\n=====", "Seasons\n-------"]
    assert split_sections("no headings here.\n\nJust text.") == [(None, "no headings here.\n\nJust text.")]


@pytest.mark.parametrize("method", ["extractive", "abstractive", "hybrid"])
@pytest.mark.parametrize("doc", [MARKDOWN, REST])
def test_sections_keep_headings_in_order(doc, method, count):
    headings = [h for h, _ in split_sections(doc) if h is not None]
    out = summarize(doc, 120, style="sections", method=method, generate=first_sentence_fake(), count_tokens=count)
    assert count(out) <= 120
    positions = [out.index(h) for h in headings]
    assert positions == sorted(positions)
    for h in headings:  # each heading followed by a sentence of its own section
        after = out.split(h, 1)[1].lstrip("\n").split("\n")[0]
        assert after and not after.startswith(("#", "*", "=", "-"))
    assert "not a heading" not in out and "Not a title" not in out


def test_sections_within_a_small_budget(count):
    out = summarize(MARKDOWN, 20, style="sections", method="extractive", count_tokens=count)
    assert count(out) <= 20 and out.startswith("#")
    assert summarize(MARKDOWN * 50, 200, style="sections", method="extractive", count_tokens=count).count("#") > 1


# ---- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "name"), [
    ({"max_length": 0}, "max_length"),
    ({"max_length": 2.5}, "max_length"),
    ({"style": "poem"}, "style"),
    ({"method": "magic"}, "method"),
    ({"context_tokens": 0}, "context_tokens"),
    ({"context_tokens": 20}, "context_tokens"),
    ({"generate": None}, "generate"),
    ({"cancelled": True}, "cancelled"),
])
def test_bad_arguments_name_the_parameter(kwargs, name):
    args = {"generate": first_sentence_fake(), **kwargs}
    with pytest.raises(SummaryError, match=name):
        summarize("Some text. " * 50, **args)


def test_bad_text_and_allowed_values_in_message(count):
    with pytest.raises(SummaryError, match="text must be a str, got bytes"):
        summarize(b"bytes", method="extractive")
    with pytest.raises(SummaryError, match="'bullets', 'paragraph', 'sections'"):
        summarize("x", style="list", method="extractive")
    with pytest.raises(SummaryError, match="max_tokens"):
        split_text("x", count, 0)
    with pytest.raises(SummaryError, match="max_tokens"):
        extractive_summary("x", -1, count)
    with pytest.raises(SummaryError, match="style"):
        extractive_summary("x", 5, count, style="tweet")
    assert issubclass(SummaryError, ValueError)


# ---- the CLI ----------------------------------------------------------------------------------------------------

class FakeLLM:
    """The bundled tokenizer and a generate() that echoes the first sentence of each prompt's text, under the real
    LLM.generate_summary (the CLI's way to summarise, as the API's and the server's)."""

    generate_summary = LLM.generate_summary
    engine = argparse.Namespace(max_model_len=1024)  # the bundled model's context

    def __init__(self, tok):
        self.tokenizer, self.calls = tok, []

    def generate(self, prompt_token_ids, max_tokens, temperature):
        assert temperature == 0.0 and max_tokens >= 1
        self.calls.append(len(prompt_token_ids))
        texts = first_sentence_fake()([self.tokenizer.decode(ids) for ids in prompt_token_ids], max_tokens)
        return [argparse.Namespace(text=t) for t in texts]


def _cli(argv: list[str], tok, opened: list | None = None):
    from seekmoe.cli.summarize import add_arguments, run_from_args

    parser = argparse.ArgumentParser(prog="seekmoe summarize")
    add_arguments(parser)
    llm = FakeLLM(tok)

    def open_llm(path):
        if opened is not None:
            opened.append(path)
        return llm

    return run_from_args(parser.parse_args(argv), open_llm), llm


def test_cli_every_flag_has_help():
    from seekmoe.cli.summarize import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert all(a.help for a in parser._actions)


def test_cli_file(tmp_path, tok, count, english, capsys):
    path = tmp_path / "doc.txt"
    path.write_text(english[:30_000], encoding="utf-8")
    opened: list = []
    rc, llm = _cli([str(path), "--max-length", "40", "--model", "some/dir"], tok, opened)
    out = capsys.readouterr().out
    assert rc == 0 and opened == ["some/dir"] and llm.calls
    assert out.startswith("- ") and count(out.rstrip("\n")) <= 40

    rc, llm = _cli([str(path), "--method", "extractive", "--style", "paragraph", "--max-length", "30"], tok)
    out = capsys.readouterr().out.rstrip("\n")
    assert rc == 0 and llm.calls == [] and 0 < count(out) <= 30


def test_cli_stdin(monkeypatch, tok, count, capsys):
    data = "\ufeff天下大事，必作于细。天下难事，必作于易。\n\nSmall steps make long roads.".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="latin-1"))
    rc, _ = _cli(["-", "--method", "extractive", "--max-length", "12"], tok)
    out = capsys.readouterr().out.rstrip("\n")
    assert rc == 0 and 0 < count(out) <= 12 and "\ufeff" not in out and "Ã" not in out  # read as UTF-8 bytes


def test_cli_errors(tmp_path, tok, monkeypatch):
    from seekmoe.errors import CLIError

    with pytest.raises(CLIError, match=r"missing\.txt: no such file"):
        _cli([str(tmp_path / "missing.txt")], tok)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CLIError, match=r"latin1\.txt is not valid UTF-8 \(byte 3"):
        _cli([str(bad)], tok)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe"), encoding="latin-1"))
    with pytest.raises(CLIError, match="standard input is not valid UTF-8"):
        _cli(["-"], tok)
    with pytest.raises(CLIError, match="--max-length must be >= 1, got 0"):
        _cli([str(bad), "--max-length", "0"], tok)
    with pytest.raises(CLIError, match="is a directory"):
        _cli([str(tmp_path)], tok)


# ---- hybrid: the stated conclusion, the opening, the centre without repeats ----------------------------------------

FILLER_EN = ["The team recorded {} every week and kept the raw logs for later checks.",
             "During week {}, overtime moved a little while staffing stayed the same.",
             "Weather, holidays and a short strike in month {} all affected the figures.",
             "Interviews with {} staff members gave a mixed picture of the change."]
FILLER_ZH = ["团队每周记录一次第{}组的加班时长，原始日志全部保留。", "第{}周，排队长度有所变化，而人员配置没有调整。",
             "天气、节假日以及第{}个月的短暂停工都影响了数据。", "对{}名员工的访谈显示，大家的感受不一。"]


def report(lang: str, conclusion: str, early: bool = False) -> str:
    """A long report whose point is stated once, among many sentences that are central but say little."""
    filler = FILLER_EN if lang == "en" else FILLER_ZH
    join = " " if lang == "en" else ""
    intro = ("This report describes a year-long study of heat pumps in council housing." if lang == "en"
             else "本报告介绍了在市政住房为期一年的热泵改造研究。")
    body = [join.join(filler[(i + j) % 4].format(i * 7 + j) for j in range(5)) for i in range(120)]
    closing = ("## Conclusion" if lang == "en" else "## 结论")
    return "\n\n".join(["# Heat pumps", intro + (join + conclusion if early else ""), *body, closing,
                        ("The figures come with caveats." if lang == "en" else "以上数据附有注意事项。")
                        + ("" if early else join + conclusion)])


@pytest.mark.parametrize(("lang", "conclusion"), [
    ("en", "In conclusion, the heat-pump retrofit lowers heating bills by 22% in the council's housing stock."),
    ("en", "Our central result: the retrofit lowers heating bills by 22%."),  # no cue phrase: the closing section
    ("zh", "关键结论：热泵改造可使市政住房的供暖费用降低22%。"),
    ("zh", "总之，热泵改造让供暖费用降低了22%。"),
])
@pytest.mark.parametrize("early", [False, True])
def test_hybrid_keeps_the_stated_conclusion_that_textrank_loses(lang, conclusion, early, count):
    if early and "central result" in conclusion:
        pytest.skip("without a cue phrase, only the closing section marks the conclusion")
    text = report(lang, conclusion, early)
    assert len(text) > 10_000
    hybrid = summarize(text, 120, method="hybrid", count_tokens=count)
    assert conclusion in hybrid and count(hybrid) <= 120
    assert hybrid.splitlines()[0].startswith(("- This report", "- 本报告"))  # the opening says what it is about
    assert conclusion not in summarize(text, 120, method="extractive", count_tokens=count)


def test_hybrid_leaves_out_sentences_that_repeat_one_already_in(count):
    text = report("en", "In conclusion, it works.")
    lines = [line[2:] for line in summarize(text, 200, method="hybrid", count_tokens=count).splitlines()]
    templates = [next(i for i, f in enumerate(FILLER_EN) if f.split("{}")[0] in line) for line in lines
                 if not line.startswith(("This report", "In conclusion", "The figures"))]
    assert len(templates) == len(set(templates)) >= 2  # each filler template at most once
    extractive = summarize(text, 200, method="extractive", count_tokens=count).splitlines()
    assert len(extractive) > len({line.split(" ")[1] for line in extractive})  # TextRank alone repeats them


def test_hybrid_takes_the_models_shorter_sentence_only_where_the_facts_survive(count):
    conclusion = "In conclusion, the heat-pump retrofit lowers heating bills by 22% in the council's housing stock."
    text = report("en", conclusion)
    short = "In conclusion, the heat-pump retrofit lowers heating bills by 22% in council housing."
    prompts: list[str] = []

    def faithful(batch: list[str], max_tokens: int) -> list[str]:
        prompts.extend(batch)
        return [short if conclusion in p else p.rsplit("Text:\n", 1)[1].split("\n\nSummary:")[0] for p in batch]

    out = summarize(text, 120, method="hybrid", generate=faithful, count_tokens=count)
    assert short in out and conclusion not in out and len(prompts) == len(out.splitlines())

    def drops_the_figure(batch: list[str], max_tokens: int) -> list[str]:
        return ["The retrofit lowers heating bills." for _ in batch]

    def writes_nothing_shorter(batch: list[str], max_tokens: int) -> list[str]:
        return [p + " and more" for p in batch]

    for model in (drops_the_figure, writes_nothing_shorter):
        assert summarize(text, 120, method="hybrid", generate=model, count_tokens=count) == summarize(
            text, 120, method="hybrid", count_tokens=count)
