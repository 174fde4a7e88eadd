"""Documents in, sentences out: the files a graph is built from, read one document at a time, and each document
split into the sentences that relations are found in and cited from.

A document is a text file (.txt, .md, .rst or any file named on the command line) or one line of a JSONL file
({"text": ..., "id": ...}). Folders are searched recursively for .txt, .md, .rst and .jsonl files. A JSONL file is
read line by line, so memory stays flat whatever its size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seekmoe.graph import GraphError
from seekmoe.han import HAN

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".markdown")
FOLDER_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl")
MAX_SENTENCE_CHARS = 600  # longer "sentences" are tables or lists run together; cut so pairs stay few

_PARAGRAPH_BREAK = re.compile(r"\n(?:[^\S\n]*\n)+")  # blank lines; the next line keeps its indent
# a period after these ends no sentence: "Mr. Darcy", "e.g. this", "et al. found", "Fig. 2", "J. Austen"
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Prof", "vs", "al", "Fig", "fig", "Eq", "eq", "No", "cf",
                  r"e\.g", r"i\.e", "etc", "[A-Z]")
_NOT_ABBREVIATION = "".join(rf"(?<!\b{a})" for a in _ABBREVIATIONS)
# English ends need whitespace after ("3.14", "os.path" stay whole); Chinese ones do not. Possessive quantifiers:
# a run of 40,000 periods is tried once, not once per position (no backtracking)
_SENTENCE_END = re.compile(rf"(?:(?<![.!?]){_NOT_ABBREVIATION})[.!?]++[\"'’”)\]]*+(?=\s)"
                           r"|[。！？；]+[”」』）》】)\]]*+")
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_!$%&,;<>?@\\/|])\1{2,}\s*$")  # a reST/setext title's underline
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_CODE_LINE = (">>>", "... ", "$ ", ".. ", "|", "+-")  # interpreter sessions, shell, reST directives, tables


@dataclass(frozen=True)
class Document:
    name: str  # where it came from: a file's path, or "path:line" / the record's id for JSONL
    text: str
    size: int  # bytes read for it (the progress bar counts these)

    @property
    def digest(self) -> str:
        """The content hash an incremental build skips a document it has already seen by."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def find_files(paths: list[str | Path]) -> list[Path]:
    """The files named, with folders expanded (recursively, sorted, hidden entries skipped)."""
    if not paths:
        raise GraphError("no documents given: name text files, JSONL files or folders")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise GraphError(f"{p}: no .txt, .md, .rst or .jsonl files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise GraphError(f"{p}: not a regular file or folder")
        else:
            raise GraphError(f"{p}: no such file or folder")
    return files


def _decode(data: bytes, where: str) -> str:
    # NUL never occurs in text; it is the first thing a binary file (an image, a zip, a database) shows
    if b"\0" in data[:65536]:
        raise GraphError(f"{where}: a binary file (it holds NUL bytes), expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GraphError(f"{where}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def read_documents(files: list[Path], named: frozenset[Path] = frozenset()) -> Iterator[Document]:
    """The documents of the files, one at a time. A file in `named` (given by name, not found in a folder) that holds
    no text is an error; an empty file found in a folder is skipped."""
    for f in files:
        if f.suffix.lower() == ".jsonl":
            yield from _read_jsonl(f, f in named)
            continue
        try:
            data = f.read_bytes()
        except OSError as e:
            raise GraphError(f"{f}: cannot read it ({e.strerror or e})") from None
        text = _decode(data, str(f))
        if not text.strip():
            if f in named:
                raise GraphError(f"{f}: an empty file, expected text to build a graph from")
            continue
        yield Document(str(f), text, len(data))


def _read_jsonl(f: Path, named: bool) -> Iterator[Document]:
    found = False
    try:
        with open(f, "rb") as lines:
            for number, raw in enumerate(lines, 1):
                where = f"{f}:{number}"
                line = _decode(raw, where).strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    raise GraphError(f"{where}: not a JSON object ({e}); expected one {{\"text\": ...}} a line") \
                        from None
                if isinstance(record, str):
                    text, name = record, where
                elif isinstance(record, dict) and isinstance(record.get("text"), str):
                    text, name = record["text"], str(record.get("id", where))
                else:
                    raise GraphError(f"{where}: expected an object with a string \"text\" (or a JSON string), "
                                     f"got {type(record).__name__}")
                if text.strip():
                    found = True
                    yield Document(name, text, len(raw))
    except OSError as e:
        raise GraphError(f"{f}: cannot read it ({e.strerror or e})") from None
    if named and not found:
        raise GraphError(f"{f}: no documents with text in it, expected one {{\"text\": ...}} a line")


def _prose_blocks(text: str) -> Iterator[str]:
    """Paragraphs of prose: code blocks (fenced, or indented under reST's `::`), interpreter sessions, tables and
    title underlines left out, as they hold no sentences."""
    fenced = False
    for paragraph in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
        lines = []
        for line in paragraph.split("\n"):
            if _FENCE.match(line):
                fenced = not fenced
                continue
            stripped = line.strip()
            if fenced or not stripped or _ADORNMENT.match(stripped) or stripped.startswith(_CODE_LINE):
                continue
            lines.append(line)
        # an indented paragraph is code in reST and Markdown (prose is indented only inside lists and notes,
        # which rarely indent every line by four)
        if lines and not all(line.startswith(("    ", "\t")) for line in lines):
            yield _join_lines(lines)


def _join_lines(lines: list[str]) -> str:
    # a line break inside a Chinese sentence joins without a space (Chinese is not wrapped at spaces); a line
    # ending in a CJK character and the next starting with one are one line broken by an editor
    out = lines[0].strip()
    for line in lines[1:]:
        line = line.strip()
        joint = "" if out and HAN.match(out[-1]) and HAN.match(line[:1]) else " "
        out += joint + line
    return out


def _cut(sentence: str) -> Iterator[str]:
    while len(sentence) > MAX_SENTENCE_CHARS:
        cut = sentence.rfind(" ", 0, MAX_SENTENCE_CHARS)
        cut = cut if cut > MAX_SENTENCE_CHARS // 2 else MAX_SENTENCE_CHARS
        yield sentence[:cut].strip()
        sentence = sentence[cut:].strip()
    if sentence:
        yield sentence


def split_sentences(text: str) -> list[str]:
    """The sentences of a document, English and Chinese, in order; none longer than MAX_SENTENCE_CHARS."""
    out = []
    for block in _prose_blocks(text):
        start = 0
        for m in _SENTENCE_END.finditer(block):
            out.extend(_cut(block[start:m.end()].strip()))
            start = m.end()
        out.extend(_cut(block[start:].strip()))
    return [s for s in out if any(c.isalnum() for c in s)]


__all__ = ["Document", "find_files", "read_documents", "split_sentences"]
