"""TextStream: streamed text equals decode, never shows a broken character or part of a stop string."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekmoe.text.stream import TextStream
from seekmoe.text.tokenizer import Tokenizer, byte_alphabet

TINY = Path(__file__).resolve().parents[1] / "seekmoe" / "models" / "seekmoe-tiny"
CORPUS = Path(__file__).parent / "data" / "corpus_sample"
FFFD = "\ufffd"
RARE_HAN = "龘"  # two byte-level tokens in the bundled tokenizer: b"\xe9\xbe" + b"\x98"

# Text the strategies draw from: ASCII, Chinese (common and rare), emoji with skin tone and ZWJ, combining marks,
# U+FFFD itself, lone surrogates (encode writes them as byte tokens), anything else Unicode holds.
CHARS = st.one_of(
    st.sampled_from(list("ab xyz\n.:#你好世界说。，" + RARE_HAN + "😀👍🏽👩‍💻e\u0301\u0308ñ" + FFFD)),
    st.sampled_from(["\ud800", "\udfff"]),
    st.characters(),
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(TINY)


def stream_all(tok: Tokenizer, ids: list[int], expected: str, **kwargs) -> tuple[TextStream, list[str]]:
    """Push ids one by one; after each, the text emitted so far must be a prefix of expected. Then finish()."""
    stream = TextStream(tok, **kwargs)
    pieces = []
    for i in ids:
        pieces.append(stream.push(i))
        emitted = "".join(pieces)
        assert expected.startswith(emitted), (emitted, expected)
        assert stream.text == emitted
    pieces.append(stream.finish())
    assert "".join(pieces) == stream.text
    return stream, pieces


def visible(tok: Tokenizer, ids: list[int]) -> list[int]:
    return [i for i in ids if i not in tok.special_ids]


def byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    alphabet = byte_alphabet()
    return [tok.token_to_id(alphabet[b]) for b in data]


def test_special_ids_are_the_26_named_tokens(tok):
    assert tok.special_ids == frozenset(range(26))
    assert tok.token_bytes(tok.eos_id) == "<｜end▁of▁sentence｜>".encode()
    assert tok.token_bytes(byte_ids(tok, b"\xe9")[0]) == b"\xe9"


@settings(max_examples=150, deadline=None)
@given(st.text(CHARS, max_size=40))
def test_streamed_text_is_decode(tok, text):
    ids = tok.encode(text)
    _, pieces = stream_all(tok, ids, tok.decode(ids), skip_special_tokens=False)
    assert "".join(pieces) == tok.decode(ids) == text


@pytest.fixture(scope="module")
def utf8_prefixes() -> frozenset[bytes]:
    """Every proper prefix of a character's UTF-8 (surrogates included, as decode lets them through)."""
    out = set()
    for cp in range(0x80, 0x110000, 64):  # a proper prefix fixes all but the last 6 bits of a code point
        b = chr(cp).encode("utf-8", "surrogatepass")
        out.update(b[:n] for n in range(1, len(b)))
    return frozenset(out)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=4), st.text(CHARS, min_size=1, max_size=3).map(
    lambda s: s.encode("utf-8", "surrogatepass"))), max_size=12), st.data())
def test_any_bytes_any_cut_is_decode_and_shown_at_once(tok, utf8_prefixes, chunks, data):
    """Bytes of valid characters, broken ones and random ones, as byte tokens, cut anywhere (ends mid-character too).

    After each byte the stream shows all it can: everything but a trailing start of a character that more bytes
    could still complete.
    """
    raw = b"".join(chunks)
    assert_shown_at_once(tok, utf8_prefixes, raw[:data.draw(st.integers(0, len(raw)))])


# Leads whose second byte is narrower than 80..BF, both ways; a surrogate's start; bytes no character starts with.
@pytest.mark.parametrize("raw", [b"a\xe0\x80", b"a\xe0\xa0", b"\xf0\x8f", b"\xf0\x90\x80", b"\xf4\x8f", b"\xf4\x90",
                                 b"\xed\xa0", b"\xed\x9f\xbf", b"\xc0\x80", b"\xc1", b"\xf5\x80", b"\xff",
                                 b"\xc3\xa9\xbf"])
def test_exactly_an_unfinished_character_is_held(tok, utf8_prefixes, raw):
    assert_shown_at_once(tok, utf8_prefixes, raw)


def assert_shown_at_once(tok: Tokenizer, utf8_prefixes: frozenset[bytes], raw: bytes) -> None:
    ids = byte_ids(tok, raw)
    stream_all(tok, ids, tok.decode(ids), skip_special_tokens=False)
    stream = TextStream(tok)
    for n, i in enumerate(ids, 1):
        stream.push(i)
        held = max((t for t in (1, 2, 3) if t <= n and raw[n - t:n] in utf8_prefixes), default=0)
        assert stream.text == tok.decode(ids[:n - held]), raw[:n]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 8191), max_size=30), st.booleans())
def test_random_ids_are_decode(tok, ids, skip):
    expected = tok.decode(visible(tok, ids) if skip else ids)
    _, pieces = stream_all(tok, ids, expected, skip_special_tokens=skip)
    assert "".join(pieces) == expected


@settings(max_examples=150, deadline=None)
@given(st.text(CHARS, max_size=30), st.data())
def test_one_stop_string_cuts_at_its_first_occurrence(tok, text, data):
    if text and data.draw(st.booleans()):  # a stop string from the text itself, so it does occur
        start = data.draw(st.integers(0, len(text) - 1))
        stop = text[start:data.draw(st.integers(start + 1, len(text)))]
    else:
        stop = data.draw(st.text(CHARS, min_size=1, max_size=4))
    ids = tok.encode(text)
    full = tok.decode(ids)
    expected = full[:full.find(stop)] if stop in full else full
    stream, pieces = stream_all(tok, ids, expected, stop=[stop], skip_special_tokens=False)
    assert "".join(pieces) == expected
    assert stream.stopped == (stop if stop in full else None)


def reference_emitted(text: str, stop: list[str]) -> tuple[str, str | None]:
    """What TextStream must have emitted once `text` is decoded (not finished), by brute force: cut at the earliest
    stop string, the first listed on a tie; else hold back the longest suffix that is a proper prefix of one."""
    found = [(text.find(s), j) for j, s in enumerate(stop) if s in text]
    if found:
        start, j = min(found)
        return text[:start], stop[j]
    held = max((k for k in range(1, len(text) + 1) for s in stop if len(s) > k and s.startswith(text[-k:])), default=0)
    return text[:len(text) - held], None


@settings(max_examples=200, deadline=None)
@given(st.text("ab ", max_size=40), st.lists(st.text("ab ", min_size=1, max_size=6), min_size=1, max_size=4))
def test_several_stops_held_and_cut_as_brute_force(tok, text, stop):
    # a two-letter alphabet makes stop strings overlap themselves and each other (KMP fall-backs, shared prefixes);
    # multi-character tokens complete several at once
    ids = tok.encode(text)
    stream = TextStream(tok, stop=stop)
    expected = ("", None)
    for k, i in enumerate(ids, 1):
        stream.push(i)
        if expected[1] is None:  # once stopped, nothing changes
            expected = reference_emitted(tok.decode(ids[:k]), stop)
        assert (stream.text, stream.stopped) == expected, k
    if stream.stopped is None:
        assert stream.text + stream.finish() == text


def test_long_stop_strings_take_memory_linear_in_their_length(tok):
    # A table of every prefix of every stop string took O(length**2): 2.3 MB for these four (454 MB for one of 30,000
    # characters). Now a few bytes a character; tracemalloc counts bytes, so this is no timing test.
    stop = [c * 999 + "b" for c in "fghi"]  # allocated before tracing starts; used by no other test (tables are cached)
    TextStream(tok, stop=["x"])  # first use of the tokenizer caches a few things: keep them out of the count
    tracemalloc.start()
    try:
        stream = TextStream(tok, stop=stop)
        size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = sum(map(len, stop))
    assert peak < 16 * total, (size, peak, total)
    assert stream.stopped is None


def test_adversarial_stop_string_is_held_then_released_or_cut(tok):
    # "a" * 999 + "b" against a run of "a": the held text is always a prefix of the stop string, each "a" falls back
    # one step, and the held 999 characters are released or cut exactly
    stop = "a" * 999 + "b"
    a, b, c = (tok.encode(x)[0] for x in "abc")
    stream = TextStream(tok, stop=[stop, "zz"])
    out = [stream.push(a) for _ in range(3000)]
    assert out == [""] * 999 + ["a"] * 2001
    assert (stream.push(b), stream.stopped, stream.text) == ("", stop, "a" * 2001)
    stream = TextStream(tok, stop=[stop])
    assert "".join(stream.push(a) for _ in range(1500)) == "a" * 501
    assert stream.push(c) == "a" * 999 + "c" and stream.stopped is None
    assert stream.finish() == "" and stream.text == "a" * 1500 + "c"


def test_stop_spanning_tokens_is_never_partly_emitted(tok):
    text = "The plan is ready.\nObservation: it works"
    ids = tok.encode(text)
    assert 2 <= len(tok.encode("Observation")) <= 6  # O b s erv ation: the stop string spans several tokens
    stream = TextStream(tok, stop=["Observation:"])
    emitted = [stream.push(i) for i in ids]
    assert stream.stopped == "Observation:"
    assert "".join(emitted) == stream.text == "The plan is ready.\n"
    assert all("O" not in piece for piece in emitted)  # "Obs..." was held, never shown
    assert stream.finish() == ""


def test_held_text_is_released_as_soon_as_it_cannot_match(tok):
    stream = TextStream(tok, stop=["Observation:"])
    out = "".join(stream.push(i) for i in tok.encode("Observe the sky"))
    assert out == "Observe the sky"  # "Observ" was held, then released by "e"
    assert stream.finish() == "" and stream.stopped is None


def test_stop_that_never_completes_is_released_at_finish(tok):
    stream = TextStream(tok, stop=["Observation:"])
    out = "".join(stream.push(i) for i in tok.encode("It said: Observati"))
    assert out == "It said: "
    assert stream.finish() == "Observati"
    assert stream.text == "It said: Observati" and stream.stopped is None


def test_stop_at_the_very_start(tok):
    stream = TextStream(tok, stop=["###"])
    assert [stream.push(i) for i in tok.encode("### Heading")] == [""] * len(tok.encode("### Heading"))
    assert stream.stopped == "###" and stream.text == "" and stream.finish() == ""


def test_several_stop_strings(tok):
    there = tok.encode(" there")
    assert len(there) == 1, there  # one token completes all the stop strings below at once
    # Completed by the same token: the earliest-starting wins, wherever it is listed.
    for stop in (["ere", "the"], ["the", "ere"], ["he", "the", "ere"]):
        stream = TextStream(tok, stop=stop)
        assert (stream.push(there[0]), stream.stopped) == (" ", "the")
    # Same start, completed together: the first listed wins; the text is cut at the same place either way.
    for stop in (["the", "ther"], ["ther", "the"]):
        stream = TextStream(tok, stop=stop)
        assert (stream.push(there[0]), stream.stopped) == (" ", stop[0])
    # Completed by different tokens: the first to complete stops generation; nothing waits for a longer one.
    stream = TextStream(tok, stop=["\n\nUser:", "Us"])
    out = "".join(stream.push(i) for i in byte_ids(tok, b"Hi\n\nUser: more"))
    assert (out, stream.stopped) == ("Hi\n\n", "Us")
    stream = TextStream(tok, stop=["\n\nUser:", "Assistant:"])
    out = "".join(stream.push(i) for i in tok.encode("Assistant: hi\n\nUser: bye"))
    assert (out, stream.stopped) == ("", "Assistant:")


def test_chinese_stop_string_split_across_byte_tokens(tok):
    ids = tok.encode(f"你好{RARE_HAN}世界")
    assert [tok.token_bytes(i) for i in tok.encode(RARE_HAN)] == [b"\xe9\xbe", b"\x98"]
    stream = TextStream(tok, stop=[f"好{RARE_HAN}"])
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == stream.text == "你"
    assert not any(FFFD in p or "好" in p for p in pieces)
    assert stream.stopped == f"好{RARE_HAN}"


def test_chinese_stop_string_that_only_shares_a_lead_byte(tok):
    # 龘 (E9 BE 98) and 龍 (E9 BE 8D) share the token E9 BE: no stop, and no character is shown half-made.
    stream, pieces = stream_all(tok, tok.encode(f"大{RARE_HAN}"), f"大{RARE_HAN}", stop=["大龍"])
    assert stream.stopped is None and "".join(pieces) == f"大{RARE_HAN}"


def test_ending_mid_character_gives_fffd_like_decode(tok):
    ids = tok.encode(f"ab{RARE_HAN}")[:-1]  # stop after b"\xe9\xbe"
    stream = TextStream(tok)
    assert "".join(stream.push(i) for i in ids) == "ab"
    assert stream.finish() == FFFD
    assert stream.text == tok.decode(ids) == f"ab{FFFD}"
    emoji = tok.encode("😀")[:3]  # 3 of its 4 bytes: one U+FFFD, as decode gives
    stream, pieces = stream_all(tok, emoji, tok.decode(emoji))
    assert pieces == ["", "", "", FFFD] and tok.decode(emoji) == FFFD


def test_skip_special_tokens(tok):
    ids = [tok.bos_id, *tok.encode("Hi"), tok.token_to_id("<｜User｜>"), *tok.encode("!"), tok.eos_id]
    stream, _ = stream_all(tok, ids, "Hi!")
    assert stream.text == "Hi!"
    stream, _ = stream_all(tok, ids, tok.decode(ids), skip_special_tokens=False)
    assert stream.text == tok.decode(ids) == "<｜begin▁of▁sentence｜>Hi<｜User｜>!<｜end▁of▁sentence｜>"


def test_special_token_inside_a_character(tok):
    ids = [*tok.encode(RARE_HAN)[:1], tok.eos_id, *tok.encode(RARE_HAN)[1:]]
    assert stream_all(tok, ids, RARE_HAN)[0].text == RARE_HAN  # skipped: the bytes join, as decode of the rest
    expected = tok.decode(ids)  # kept: the broken bytes on either side become U+FFFD
    assert expected == f"{FFFD}<｜end▁of▁sentence｜>{FFFD}"
    assert stream_all(tok, ids, expected, skip_special_tokens=False)[0].text == expected


def test_stop_on_a_special_token_text_when_kept(tok):
    ids = [*tok.encode("Sure."), tok.token_to_id("<｜User｜>"), *tok.encode("next")]
    stream = TextStream(tok, stop=["<｜User｜>"], skip_special_tokens=False)
    assert "".join(stream.push(i) for i in ids) == "Sure." and stream.stopped == "<｜User｜>"


def test_ids_as_tensors(tok):
    import torch

    ids = torch.tensor([tok.bos_id, *tok.encode("你好"), tok.eos_id])
    stream = TextStream(tok)
    assert "".join(stream.push(i) for i in ids) + stream.finish() == "你好"  # 0-d tensors; specials still skipped
    with pytest.raises(TypeError):
        stream.push(1.0)


def test_push_after_stop_returns_nothing_and_stays_stopped(tok):
    stream = TextStream(tok, stop=["."])
    assert "".join(stream.push(i) for i in tok.encode("One. Two. Three.")) == "One"
    assert stream.push(tok.encode("more")[0]) == "" and stream.finish() == ""
    assert stream.stopped == "." and stream.text == "One"
    with pytest.raises(ValueError, match="token id 8192"):  # ids are still checked
        stream.push(8192)


def test_push_after_finish_raises(tok):
    stream = TextStream(tok)
    stream.push(tok.encode("a")[0])
    assert stream.finish() == "" and stream.finish() == ""
    with pytest.raises(RuntimeError, match="after finish"):
        stream.push(tok.encode("b")[0])


@pytest.mark.parametrize("stop", ["###", [""], ["ok", 3], iter(["a"]), None])
def test_bad_stop_is_rejected(tok, stop):
    with pytest.raises(ValueError, match="stop must be a sequence of non-empty strings"):
        TextStream(tok, stop=stop)


@pytest.mark.parametrize("token_id", [-1, 8192, 10**9])
def test_token_id_out_of_range(tok, token_id):
    with pytest.raises(ValueError, match=rf"token id {token_id} is not in the vocabulary \(0\.\.8191\)"):
        TextStream(tok).push(token_id)


def test_long_output_is_not_decoded_again(tok, monkeypatch):
    text = (CORPUS / "chinese_poetry.txt").read_text(encoding="utf-8")[:3000]
    text += (CORPUS / "moby_dick.txt").read_text(encoding="utf-8")[:3000]
    ids = tok.encode(text)
    expected = tok.decode(ids)
    monkeypatch.setattr(tok, "decode", lambda ids: pytest.fail("TextStream must not call decode"))
    stream = TextStream(tok, stop=["THE END OF IT ALL", "终于"])
    out = "".join(stream.push(i) for i in ids) + stream.finish()
    assert out == (expected[:expected.find("终于")] if "终于" in expected else expected)


def test_stop_strings_are_not_looked_for_inside_a_block(tok):
    """A tool-call block (its markers kept) is written out whole; stop strings apply before and after it."""
    from seekmoe.text.tool_calls import CALLS_BEGIN, CALLS_END, MARKERS

    def ids(text: str) -> list[int]:
        return tok.encode(text, special=False)

    call = [tok.token_to_id(CALLS_BEGIN), *ids('go{"o": 1}'), tok.token_to_id(CALLS_END)]
    stream, _ = stream_all(tok, [*ids("Yes"), *call, *ids(" ok")], f'Yes{CALLS_BEGIN}go{{"o": 1}}{CALLS_END} ',
                                stop=["o"], keep=MARKERS, block=(CALLS_BEGIN, CALLS_END))
    assert stream.stopped == "o" and stream.text == f'Yes{CALLS_BEGIN}go{{"o": 1}}{CALLS_END} '
    # content held as a possible stop string goes out when the block opens; a forced call starts inside one
    stream = TextStream(tok, stop=["Yes!"], keep=MARKERS, block=(CALLS_BEGIN, CALLS_END))
    assert "".join(stream.push(i) for i in ids("Yes")) == "" and stream.push(call[0]) == "Yes" + CALLS_BEGIN
    forced = TextStream(tok, stop=["o"], keep=MARKERS, block=(CALLS_BEGIN, CALLS_END), in_block=True)
    assert "".join(forced.push(i) for i in call[1:]) + forced.finish() == f'go{{"o": 1}}{CALLS_END}'
    assert forced.stopped is None
