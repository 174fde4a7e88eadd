"""Text out of a stream of generated token ids: whole characters only, stop strings held back until they resolve.

This sits at the edge, where ids become text (serving, the chat CLI); the engine hands it ids and reads `stopped`.
"""

from __future__ import annotations

import functools
import operator
from array import array
from collections.abc import Sequence

from seekmoe.text.tokenizer import Tokenizer, utf8_to_str

# Second-byte range of a multi-byte UTF-8 lead byte, where it is narrower than 80..BF (Unicode's table of well-formed
# sequences). ED is not here: decode lets surrogates (ED A0..BF xx) through, so ED takes all of 80..BF.
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _incomplete_tail(data: bytes) -> int:
    """How many trailing bytes start a UTF-8 character that more bytes could still complete (0 to 3).

    Cutting there is safe: the held bytes begin with a lead byte, which no character or error run before it takes
    in, so decoding the rest now and the held bytes later gives what decoding all of it at once gives.
    """
    for k in range(1, min(len(data), 3) + 1):
        lead = data[-k]
        if 0x80 <= lead < 0xC0:  # a continuation byte: the lead is further back
            continue
        if not 0xC2 <= lead <= 0xF4:  # ASCII, or a byte no character starts with
            return 0
        if k >= (2 if lead < 0xE0 else 3 if lead < 0xF0 else 4):  # complete, or too long: decoding sorts it out
            return 0
        lo, hi = _SECOND_BYTE.get(lead, (0x80, 0xBF))
        return k if k == 1 or lo <= data[-k + 1] <= hi else 0
    return 0


@functools.lru_cache(maxsize=128)  # a request's n streams share one table (16 of 16 x 1,000 chars: 0.4 s to build)
def _failure(s: str) -> memoryview:
    """KMP failure function of s, read-only: entry i is the length of the longest proper prefix of s[:i + 1] that is
    also a suffix of it.

    4 bytes a character, built in O(len(s)); with it a stop string is followed through the text one character at a
    time in amortised O(1), where a table of all its prefixes would cost O(len(s)**2) memory.
    """
    fail = array("I", bytes(4 * len(s)))
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return memoryview(fail.tobytes()).cast("I")


class TextStream:
    """Turns one sequence's generated token ids into text pieces as they arrive.

    - Never emits a broken character: the bytes of an incomplete UTF-8 character are held until it is complete
      (a token can end in the middle of a multi-byte character, e.g. Chinese or emoji split over byte tokens).
    - Never emits part of a stop string: text that could be the start of one is held back until it either completes
      it (then `stopped` is set; the stop string and everything after it is never emitted) or can no longer match
      (then it is released at once).
    - The pieces returned by push() and finish(), joined, equal the text of the whole output cut at the first stop
      string (exclusive); without stop strings, exactly `tokenizer.decode(ids)` (U+FFFD rules included, e.g. when
      generation ends mid-character), where ids leave out the special tokens if skip_special_tokens.

    Which stop string wins: generation stops at the first token after which the text holds any stop string; text is
    never held waiting for a longer or earlier-starting one to complete later. If that token completed several,
    the one that starts earliest in the text wins (the text is cut there), ties going to the one listed first in
    `stop`. After a stop, push() returns '' and the stream stays stopped (the ids are still checked); push() after
    finish() raises RuntimeError.

    Cost: memory O(total length of the stop strings), built once in linear time; each stop string is followed with a
    KMP automaton, so a push costs the new token's characters times the number of stop strings, amortised over the
    stream (one push can fall back at most the longest stop string), plus one copy of the held text (shorter than the
    longest stop string). The output is never decoded again from the start.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), skip_special_tokens: bool = True,
                 keep: Sequence[str] = (), block: tuple[str, str] | None = None, in_block: bool = False):
        """keep: special tokens written out even when skip_special_tokens (the tool-call markers). block: the
        (opening, closing) special tokens, both kept, of output that stop strings do not apply to (a tool-call block:
        parsed into calls, never shown as content), written out as it comes: stop strings are looked for only outside
        it. in_block: the output starts inside one (the prompt ends in a forced call's opening)."""
        if isinstance(stop, str):
            raise ValueError(f"stop must be a sequence of non-empty strings, got a str {stop!r} (write [{stop!r}])")
        if not isinstance(stop, Sequence):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {type(stop).__name__}")
        bad = [s for s in stop if not isinstance(s, str) or not s]
        if bad:
            raise ValueError(f"stop must be a sequence of non-empty strings, got {bad[0]!r} in {list(stop)!r}")
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._fail = [_failure(s) for s in self._stop]
        # per stop string: length of the longest suffix of the text so far that is a prefix of it (< its length)
        self._matched = [0] * len(self._stop)
        kept = {tokenizer.token_to_id(t) for t in keep}
        self._skip = tokenizer.special_ids - kept if skip_special_tokens else frozenset()
        self._open, self._close = (tokenizer.token_to_id(t) for t in block) if block else (None, None)
        self._in_block = in_block
        self._pending = b""  # bytes of a character not yet complete
        self._held = ""  # decoded text that could be the start of a stop string
        self._pieces: list[str] = []  # everything emitted
        self._stopped: str | None = None
        self._finished = False

    def push(self, token_id: int) -> str:
        """Take the next generated id; return the new text safe to show now ('' if none yet)."""
        token_id = operator.index(token_id)  # a numpy or 0-d torch integer too (a tensor would miss the special set)
        data = self._tokenizer.token_bytes(token_id)  # raises ValueError for an id outside the vocabulary
        if self._stopped is not None:
            return ""
        if self._finished:
            raise RuntimeError("push() after finish(): this TextStream's generation has ended")
        if token_id in self._skip:
            return ""
        data = self._pending + data
        cut = len(data) - _incomplete_tail(data)
        self._pending = data[cut:]
        new = utf8_to_str(data[:cut]) if cut else ""
        if token_id == self._open and not self._in_block:
            # content ends here: what it held can no longer complete a stop string
            self._in_block, new, self._held = True, self._held + new, ""
            self._matched = [0] * len(self._stop)
        elif token_id == self._close and self._in_block:
            self._in_block = False
            return self._emit(new)  # stop strings are looked for from the next token on
        return self._emit(new) if self._in_block else self._release(new, final=False)

    def finish(self) -> str:
        """Generation ended (length, eos, cancel): return what was held; incomplete bytes become U+FFFD as in decode."""
        if self._stopped is not None or self._finished:
            return ""
        self._finished = True
        tail, self._pending = utf8_to_str(self._pending), b""
        return self._emit(tail) if self._in_block else self._release(tail, final=True)

    @property
    def stopped(self) -> str | None:
        """The stop string that matched, or None."""
        return self._stopped

    @property
    def text(self) -> str:
        """All text emitted so far (the pieces returned by push() and finish(), joined)."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]  # join once; later calls only join what is new
        return self._pieces[0] if self._pieces else ""

    def _release(self, new: str, final: bool) -> str:
        """Add newly decoded text; return the part that can no longer be the start of a stop string."""
        text = self._held + new
        if not text:
            return ""
        match = self._find_stop(new, len(self._held))
        if match is not None:
            start, self._stopped = match
            out, self._held, self._pending = text[:start], "", b""
        else:
            # every match still to come starts inside the longest matched suffix: one starting further back would
            # make a longer one
            keep = 0 if final else max(self._matched, default=0)
            out, self._held = text[:len(text) - keep], text[len(text) - keep:]
        return self._emit(out)

    def _emit(self, out: str) -> str:
        if out:
            self._pieces.append(out)
        return out

    def _find_stop(self, new: str, offset: int) -> tuple[int, str] | None:
        """Feed new to each stop string's automaton; (start in held + new, stop string) of the earliest-starting stop
        string now complete, the first listed on a tie, or None.

        A stop string's first completion is its earliest start; none can start before the held text (see _release).
        """
        best = None
        for j, (s, fail) in enumerate(zip(self._stop, self._fail, strict=True)):
            k = self._matched[j]
            for i, c in enumerate(new):
                while k and s[k] != c:
                    k = fail[k - 1]
                if s[k] == c:
                    k += 1
                if k == len(s):
                    start = offset + i + 1 - k
                    if best is None or start < best[0]:
                        best = (start, s)
                    break
            self._matched[j] = k
        return best
