"""Supervised fine-tuning data: conversations from JSONL, tokenised through the chat template, loss on assistant tokens.

Two line formats, chosen per line when `fmt` is "auto":
- OpenAI-style chat: {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}, with
  "tools" (OpenAI's list) when the conversation offers tools and assistant messages carry "tool_calls"
- Alpaca: {"instruction": "...", "input": "..." (optional), "output": "...", "system": "..." (optional)}
- Plain text: {"text": "..."}, learned whole as in pretraining (a begin-of-sentence, the text, an end-of-sentence
  when it fits), so a chat model mixed with some keeps continuing ordinary text instead of ending it at once
Other keys (a "meta" object, ids) are ignored. A malformed line is reported as `file:line: reason`; it stops the load
unless `skip_bad` is set, in which case it is counted and logged.

Masking. Only the assistant turns are learned: the content of each assistant message and the end-of-sentence that
closes it, which is how the model learns to stop. The spans come from the template itself: the text of messages
[0, i) with the generation prompt is a prefix of the text of messages [0, i], and the difference is assistant turn
i. Each piece is tokenised on its own; the chat template puts special tokens at every boundary, and the tokenizer
splits on special tokens before anything else, so the pieces' ids joined are the ids of the whole text (checked).

Lookup weights (optional). An answer that recalls a fact copies it from the customer's turn, and the copy's first
token is the hard one: where the answer's word before it is also the customer's ("in Leeds" -> "you are in Leeds")
the token that followed that word last time is the one to write, but after a word of the answer's own ("I'm Kenji"
-> "Your name is Kenji") it must be found by its role, and a small model guesses it and copies the rest ("Shenji").
A target token that starts a copy of the non-answer text of its conversation (it and the next target token stand
side by side there) without the token before it doing so too, and which that token seldom precedes among the
targets (less than PREDICTED of the time: not a word of an answer template), is a lookup; `lookup_weight` makes
such tokens count that many times in the loss (a weighted mean).

Truncation keeps whole turns: a conversation longer than a row loses its oldest exchanges (the system prompt
stays) until it fits; one whose last exchange alone does not fit is dropped and counted. Packing puts several
short conversations into one row (each starts with its own begin-of-sentence); the rest of a row is padding that
carries no loss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from seekmoe.errors import SeekmoeError
from seekmoe.text.chat import ChatError, check_messages, check_tools, render_chat
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train.config import SFT_FORMATS, lookup_weight_error

IGNORE = -100  # the target of a token without loss (F.cross_entropy's ignore_index)
MAX_LINE_BYTES = 4 << 20  # one JSONL line; a longer one is a broken file, not a conversation
PREDICTED = 0.1  # a target that follows its token before this often (or more) in the data is no lookup


class Weighted(NamedTuple):
    """Targets (B, T), IGNORE where there is no loss, with each target's weight in the loss (B, T)."""
    targets: Any
    weights: Any


class SFTError(SeekmoeError, ValueError):
    """Bad fine-tuning data: the message names the file and line."""


class Chat(list):
    """A conversation's messages; `tools`: the tools it offers (OpenAI's list), rendered into its prompt."""

    tools: list[dict] | None = None


class Text(str):
    """A plain-text record: every token carries loss, no chat template."""


@dataclass
class LoadReport:
    """What reading and tokenising the data did, for the log and the run's metrics."""
    conversations: int = 0
    skipped_lines: list[str] = field(default_factory=list)  # "file:line: reason"
    truncated: int = 0  # conversations that lost their oldest exchanges
    dropped: int = 0  # conversations whose last exchange alone is longer than a row
    no_target: int = 0  # conversations without an assistant turn: nothing to learn
    tokens: int = 0
    target_tokens: int = 0
    lookup_targets: int = 0  # targets that weigh lookup_weight (module docstring); 0 without it

    def lookups(self, weight: float) -> str:
        share = self.lookup_targets / max(self.target_tokens, 1)
        return f"{self.lookup_targets:,} lookup targets ({share:.2%} of the targets) weigh {weight:g}"

    def summary(self) -> str:
        return (f"{self.conversations:,} conversations, {self.tokens:,} tokens ({self.target_tokens:,} with loss); "
                f"{len(self.skipped_lines)} bad lines skipped, {self.truncated} truncated, {self.dropped} too long "
                f"and dropped, {self.no_target} without an assistant turn")


# ---- reading -------------------------------------------------------------------------------------------------

def data_files(source: str | os.PathLike, split: str = "train") -> list[Path]:
    """The JSONL files of a split. A file is training data ("train", "all"); in a folder, *.val.jsonl files are the
    validation split, the other *.jsonl files the training split."""
    path = Path(source)
    if path.is_file():
        return [] if split == "val" else [path]
    if not path.is_dir():
        raise SFTError(f"{path}: no such file or folder (expected JSONL fine-tuning data)")
    files = sorted(p for p in path.glob("*.jsonl")
                   if split == "all" or p.name.endswith(".val.jsonl") == (split == "val"))
    if not files and split != "val":
        raise SFTError(f"{path}: no {'training ' if split == 'train' else ''}.jsonl files in this folder")
    return files


def parse_example(record: object, fmt: str = "auto") -> Chat | Text:
    """One JSONL record as a conversation (or plain text); ValueError (ChatError) saying what is wrong."""
    if not isinstance(record, dict):
        raise ChatError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "text" or (fmt == "auto" and "text" in record and "messages" not in record):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ChatError(f"text must be a non-empty string, got {text!r:.60}")
        return Text(text)
    if fmt == "messages" or (fmt == "auto" and "messages" in record):
        messages = check_messages(record.get("messages"))
    elif fmt == "alpaca" or (fmt == "auto" and "instruction" in record):
        fields = {k: record.get(k, "") for k in ("instruction", "input", "output", "system")}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise ChatError(f"{key} must be a string, got {type(value).__name__}")
        if not fields["instruction"].strip():
            raise ChatError("instruction is empty")
        if "output" not in record:
            raise ChatError("output is missing")
        prompt = fields["instruction"] + ("\n\n" + fields["input"] if fields["input"].strip() else "")
        messages = ([{"role": "system", "content": fields["system"]}] if fields["system"] else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]}]
    else:
        raise ChatError("neither 'messages' (chat format), 'instruction' (Alpaca format) nor 'text' is present")
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatError("no assistant message: nothing to learn")
    chat = Chat(messages)
    chat.tools = check_tools(record.get("tools"))
    return chat


def read_conversations(files: Iterable[Path], fmt: str = "auto", skip_bad: bool = False,
                       report: LoadReport | None = None, log: Callable[[str], None] = print) -> list[list[dict]]:
    if fmt not in SFT_FORMATS:
        raise SFTError(f"format must be one of {', '.join(SFT_FORMATS)}, got {fmt!r}")
    report = report if report is not None else LoadReport()
    out = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SFTError(f"{path}: cannot read ({e.strerror or e})") from None
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"line is {len(raw):,} bytes; at most {MAX_LINE_BYTES:,}")
                out.append(parse_example(json.loads(raw.decode("utf-8")), fmt))
            except UnicodeDecodeError as e:
                _bad(path, number, f"not UTF-8 ({e.reason} at byte {e.start})", skip_bad, report, log)
            except json.JSONDecodeError as e:
                _bad(path, number, f"not valid JSON ({e.msg}, column {e.colno})", skip_bad, report, log)
            except RecursionError:
                _bad(path, number, "JSON nested too deeply", skip_bad, report, log)
            except ValueError as e:
                _bad(path, number, str(e) or type(e).__name__, skip_bad, report, log)
    return out


def _bad(path: Path, number: int, reason: str, skip: bool, report: LoadReport, log) -> None:
    where = f"{path}:{number}: {reason}"
    if not skip:
        raise SFTError(where + " (skip_bad_lines skips such lines)")
    report.skipped_lines.append(where)
    log(f"seekmoe: skipping {where}")


# ---- tokenising -----------------------------------------------------------------------------------------------

def tokenize_conversation(tok: Tokenizer, messages: list[dict], tools: list[dict] | None = None,
                          ) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation, and for each id whether it is an assistant token (carries loss)."""
    def render(msgs, generation):
        return render_chat(msgs, tok.chat_template, tok.bos_token, tok.eos_token, generation, tools) if msgs else ""

    ids: list[int] = []
    mask: list[bool] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, turn = render(messages[:i], True), render(messages[:i + 1], False)
        if not (prompt.startswith(done) and turn.startswith(prompt)):
            raise SFTError("the chat template does not render conversations prefix by prefix; loss masking needs "
                           "it to (each turn's text must extend the previous turns' text)")
        before = tok.encode(prompt[len(done):])
        answer = tok.encode(turn[len(prompt):])
        ids += before + answer
        mask += [False] * len(before) + [True] * len(answer)
        done = turn
    rest = tok.encode(render(messages, False)[len(done):])
    ids += rest
    mask += [False] * len(rest)
    return ids, mask


def fit_conversation(tok: Tokenizer, messages: list[dict] | Text, limit: int):
    """(ids, mask, truncated) for the longest suffix of whole exchanges that fits in `limit` tokens, the system
    prompt (and the tools) kept; None when even the last exchange does not fit. Plain text is cut to `limit`
    tokens from its start, and ends with end-of-sentence only where it ends within the limit."""
    if isinstance(messages, Text):
        ids = [*tok.encode(messages, add_bos=True, special=False), tok.eos_id]
        kept = ids[:limit]
        return kept, [False] + [True] * (len(kept) - 1), len(kept) < len(ids)  # bos is never a target
    tools = getattr(messages, "tools", None)
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    # exchanges start at user messages: dropping one drops a question together with its answers and tool results
    starts = [i for i, m in enumerate(turns) if m["role"] == "user"] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    for k, start in enumerate(starts):
        kept = system + turns[start:]
        if not any(m["role"] == "assistant" for m in kept):
            return None
        ids, mask = tokenize_conversation(tok, kept, tools)
        if len(ids) <= limit:
            return ids, mask, k > 0
    return None


def tokenize_all(tok: Tokenizer, conversations: list[list[dict]], row_tokens: int,
                 report: LoadReport) -> list[tuple[list[int], list[bool]]]:
    out = []
    for messages in conversations:
        fitted = fit_conversation(tok, messages, row_tokens)
        if fitted is None:
            report.dropped += 1
            continue
        ids, mask, truncated = fitted
        report.truncated += truncated
        if not any(mask):
            report.no_target += 1
            continue
        report.conversations += 1
        report.tokens += len(ids)
        report.target_tokens += sum(mask)
        out.append((ids, mask))
    return out


def pack(examples: list[tuple[list[int], list[bool]]], row_tokens: int, pad_id: int,
         packing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows of row_tokens ids and loss masks: conversations in order, the next one starting a new row when it does
    not fit in the current one (or always, without packing); padding has no loss."""
    rows: list[tuple[list[int], list[bool]]] = []
    ids_row: list[int] = []
    mask_row: list[bool] = []
    for ids, mask in examples:
        if ids_row and (not packing or len(ids_row) + len(ids) > row_tokens):
            rows.append((ids_row, mask_row))
            ids_row, mask_row = [], []
        ids_row, mask_row = ids_row + ids, mask_row + mask
    if ids_row:
        rows.append((ids_row, mask_row))
    tokens = np.full((len(rows), row_tokens), pad_id, dtype=np.int64)
    masks = np.zeros((len(rows), row_tokens), dtype=bool)
    for r, (ids, mask) in enumerate(rows):
        tokens[r, :len(ids)] = ids
        masks[r, :len(mask)] = mask
    return tokens, masks


def lookup_targets(tokens: np.ndarray, masks: np.ndarray, bos_id: int, predicted: float = PREDICTED) -> np.ndarray:
    """(rows, T) bool: the targets that are lookups (module docstring) in packed rows whose conversations each start
    with a begin-of-sentence; above 1, `predicted` keeps the template words too."""
    out = np.zeros_like(masks)
    for r in range(len(tokens)):
        row, mask = tokens[r].tolist(), masks[r].tolist()
        if all(mask[1:]):  # plain text: no context to copy from
            continue
        said: set[int] = set()  # the non-target tokens so far, and the pairs they stand in
        pairs: set[tuple[int, int]] = set()
        for j, (t, target) in enumerate(zip(row, mask, strict=True)):
            if t == bos_id:
                said, pairs = set(), set()
            if not target:
                said.add(t)
                if j:
                    pairs.add((row[j - 1], t))
            elif (t in said and (row[j - 1], t) not in pairs
                  and j + 1 < len(row) and mask[j + 1] and (t, row[j + 1]) in pairs):
                out[r, j] = True
    # what the answer's own words predict is no lookup ("欢迎光临" -> "Maple", the shop the system prompt names)
    vocab = int(tokens.max()) + 1
    target = masks[:, 1:]
    pair = tokens[:, :-1].astype(np.int64) * vocab + tokens[:, 1:]
    kinds, counts = np.unique(pair[target], return_counts=True)
    before = np.bincount(tokens[:, :-1][target], minlength=vocab)
    rows, cols = np.nonzero(out[:, 1:])
    share = counts[np.searchsorted(kinds, pair[rows, cols])] / before[tokens[rows, cols]]
    out[rows[share >= predicted], cols[share >= predicted] + 1] = False
    return out


class EpochOrder:
    """Row of the g-th draw (g = 0, 1, 2, ... over all epochs) from a set of n: every row once an epoch, in an order
    drawn from (seed, epoch), or in order without shuffle. A pure function of g, so a resumed run reads on exactly."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __call__(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if not self.shuffle:
            return i
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][i])


class SFTData:
    """Packed rows of seq_len + 1 tokens; batch(i) is a pure function of i (exact resume), reshuffled each epoch."""

    def __init__(self, tokens: np.ndarray, masks: np.ndarray, vocab_size: int, *, shuffle: bool = True,
                 seed: int = 0, report: LoadReport | None = None, weights: np.ndarray | None = None):
        if len(tokens) == 0:
            raise SFTError("no conversation left to train on (all lines skipped, dropped or without an assistant "
                           "turn)")
        self.tokens, self.masks = tokens, masks
        self.weights = weights  # (rows, T+1) float32 loss weights; None: every target counts once
        self.vocab_size = vocab_size
        self.shuffle, self.seed = shuffle, seed
        self.report = report or LoadReport()
        self._row = EpochOrder(len(tokens), shuffle, seed)

    @classmethod
    def from_files(cls, files: list[Path], tok: Tokenizer, seq_len: int, *, fmt: str = "auto",
                   skip_bad: bool = False, packing: bool = True, shuffle: bool = True, seed: int = 0,
                   lookup_weight: float = 1.0, log: Callable[[str], None] = print) -> SFTData:
        report = LoadReport()
        conversations = read_conversations(files, fmt, skip_bad, report, log)
        return cls.from_conversations(conversations, tok, seq_len, packing=packing, shuffle=shuffle, seed=seed,
                                      report=report, lookup_weight=lookup_weight)

    @classmethod
    def from_conversations(cls, conversations: list[list[dict]], tok: Tokenizer, seq_len: int, *,
                           packing: bool = True, shuffle: bool = True, seed: int = 0,
                           report: LoadReport | None = None, lookup_weight: float = 1.0) -> SFTData:
        if (bad := lookup_weight_error(lookup_weight)) is not None:
            raise SFTError(bad)
        report = report or LoadReport()
        examples = tokenize_all(tok, conversations, seq_len + 1, report)
        tokens, masks = pack(examples, seq_len + 1, tok.pad_id, packing) if examples else (
            np.zeros((0, seq_len + 1), np.int64), np.zeros((0, seq_len + 1), bool))
        weights = None
        if lookup_weight != 1 and len(tokens):
            lookups = lookup_targets(tokens, masks, tok.bos_id)
            report.lookup_targets = int(lookups.sum())
            weights = np.where(lookups, np.float32(lookup_weight), masks.astype(np.float32))
        return cls(tokens, masks, tok.vocab_size, shuffle=shuffle, seed=seed, report=report, weights=weights)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1] - 1

    def batch(self, step: int, batch_size: int, seq_len: int):
        """(input, target) int64 tensors (batch_size, seq_len); targets without loss are IGNORE."""
        import torch

        if seq_len != self.seq_len:
            raise SFTError(f"the data was packed for seq_len {self.seq_len}, asked for {seq_len}")
        first = step * batch_size
        if not self.shuffle and first < len(self) < first + batch_size:
            batch_size = len(self) - first  # the last evaluation batch: every row once, none twice
        rows = [self._row(first + j) for j in range(batch_size)]
        tokens, masks = self.tokens[rows], self.masks[rows]  # (B, T+1)
        ids, target = torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(np.where(masks[:, 1:], tokens[:, 1:],
                                                                                          IGNORE))
        if self.weights is None:
            return ids, target
        return ids, Weighted(target, torch.from_numpy(self.weights[rows][:, 1:].copy()))

    def eval_steps(self, batch_size: int) -> int:
        """Batches that visit every row once."""
        return -(-len(self) // batch_size)
