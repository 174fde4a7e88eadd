"""Question/answer pairs from the Python FAQ, read from Debian's python3.11-doc (PSF-2.0) reST sources.

A section heading that ends with "?" is a question; the text up to the next heading is its answer. The reST is
cleaned lightly (roles, literals and links to their text, directives dropped but their indented code kept) and
long answers are cut at a paragraph boundary, since the model we teach has a 1,024-token context.
"""

from __future__ import annotations

import re
from pathlib import Path

from seekmoe.train.chat_data import ChatDataError, MissingSourceError, example

DEFAULT_DIR = Path("/usr/share/doc/python3.11/html/_sources/faq")
LICENSE = "PSF-2.0"
MAX_ANSWER_CHARS = 700

_ADORNMENT = re.compile(r"""^([=\-~^"'`#*+:.<>_])\1+\s*$""")
_OPTION = re.compile(r"^\s*:[\w-]+:(\s|$)")  # `:tocdepth: 2`, a directive's `   :noindex:`
_ROLE = re.compile(r":(?:[\w-]+:)*([\w-]+):`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>`]*>`__?")
_NAMED_REF = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_FOOTNOTE = re.compile(r"\s*\[(?:#\w*|\d+)\]_")

# a code directive's body is literal text; these directives' bodies are navigation or test scaffolding
CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "doctest", "testcode", "testoutput"}
DROPPED_DIRECTIVES = {"index", "contents", "toctree", "only", "testsetup", "testcleanup", "highlight"}
_BULLET = re.compile(r"^([*+-]|\d+[.)]|#\.)\s")


def _role_text(name: str, content: str) -> str:
    """:func:`len` -> len; :ref:`text <label>` -> text; :meth:`~str.join` -> join; :pep:`8` -> PEP 8."""
    explicit = re.match(r"(.+?)\s*<[^>]*>$", content, re.S)
    if explicit:
        return explicit.group(1)
    if name in ("pep", "rfc"):
        return f"{name.upper()} {content}"
    content = content.lstrip("!")
    return content[1:].rsplit(".", 1)[-1] if content.startswith("~") else content


def clean_inline(text: str) -> str:
    text = _ROLE.sub(lambda m: _role_text(m.group(1), m.group(2)), text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _NAMED_REF.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    return _FOOTNOTE.sub("", text)


def _reflow(lines: list[str]) -> str:
    """A prose paragraph on one line (list items one a line): the source's 80-column wrapping means nothing
    in a chat answer, and inline markup may straddle a break."""
    out = []
    for line in lines:
        text = line.strip()
        if out and not _BULLET.match(text):
            out[-1] += " " + text
        else:
            out.append(text)
    return "\n".join(re.sub(r"(?<=\S) {2,}", " ", clean_inline(line)) for line in out)


def clean_body(lines: list[str]) -> str:
    """reST body -> plain text: prose reflowed with markup reduced to text, literal blocks (after "::", a
    code directive, or a >>> session) kept as written, comments and index/contents directives dropped whole."""
    paragraphs: list[str] = []
    block: list[str] = []
    literal = False
    block_indent = 0  # where the text of the current block starts: "* item" and "1) item" indent their body
    literal_deeper_than = None  # after "::" or a code directive, blocks indented deeper than this are literal
    skip_deeper_than = None  # the indentation of a dropped directive or comment: its body is deeper

    def flush():
        if block:
            paragraphs.append("\n".join(block) if literal else _reflow(block))
            block.clear()

    for raw in lines:
        line = raw.rstrip()
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        stripped = line.strip()
        if stripped == ".." or stripped.startswith(".. "):
            flush()
            directive = re.match(r"\.\. ([\w-]+)::", stripped)
            if directive and directive.group(1) in CODE_DIRECTIVES:
                literal_deeper_than = indent
            elif not directive or directive.group(1) in DROPPED_DIRECTIVES:
                skip_deeper_than = indent
            continue
        if not line:
            flush()
            continue
        if _OPTION.match(line):
            continue
        if not block:
            literal = (literal_deeper_than is not None and indent > literal_deeper_than) or stripped.startswith(">>>")
            if not literal:
                literal_deeper_than = None
                bullet = _BULLET.match(stripped)
                block_indent = indent + (len(bullet.group(0)) if bullet else 0)
        if not literal and line.endswith("::"):  # "Example::" -> "Example:"; a lone " ::" vanishes
            line = line[:-1] if not line[:-2].endswith(" ") else line[:-2].rstrip()
            literal_deeper_than = block_indent
        if line.strip():
            block.append(line)
    flush()
    return "\n\n".join(p for p in paragraphs if p.strip())


def shorten(answer: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """Whole paragraphs up to `limit` characters; a first paragraph longer than that is cut after a sentence."""
    paragraphs = answer.split("\n\n")
    kept, size = [], 0
    for p in paragraphs:
        if size + len(p) > limit:
            break
        kept.append(p)
        size += len(p) + 2
    if not kept:
        head = paragraphs[0][:limit]
        end = max(head.rfind(". "), head.rfind(".\n"))
        return head[: end + 1] if end > 0 else head.rsplit(" ", 1)[0] + " …"
    kept[-1] = kept[-1].rstrip()
    if len(kept) > 1 and kept[-1].rstrip().endswith(":"):
        kept.pop()  # its example was cut off; an introduction to nothing reads as a broken answer
    return "\n\n".join(kept)


def headings(lines: list[str]) -> list[int]:
    """Indices of title lines: text underlined by a run of one punctuation character at least as long."""
    found = []
    for i in range(1, len(lines)):
        title, under = lines[i - 1].rstrip(), lines[i].rstrip()
        if (title and not title[0].isspace() and _ADORNMENT.match(under) and not _ADORNMENT.match(title)
                and len(under) >= len(title)):
            found.append(i - 1)
    return found


def parse_faq(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of one reST FAQ page."""
    lines = text.splitlines()
    starts = headings(lines)
    pairs = []
    for k, start in enumerate(starts):
        title = clean_inline(lines[start].strip())
        if not title.endswith("?"):
            continue
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        if end < len(lines) and end > 0 and _ADORNMENT.match(lines[end - 1]):
            end -= 1  # the next title's overline belongs to it
        answer = shorten(clean_body(lines[start + 2 : end]))
        if answer:
            pairs.append((title, answer))
    return pairs


def load(faq_dir=None) -> tuple[list[dict], dict]:
    """Every question of every FAQ page, and the SOURCES.json entry."""
    folder = Path(faq_dir) if faq_dir is not None else DEFAULT_DIR
    files = sorted(folder.glob("*.rst.txt")) if folder.is_dir() else []
    if not files:
        raise MissingSourceError(f"no Python FAQ sources (*.rst.txt) in {folder}: apt install python3.11-doc "
                                 "(or pass --skip-missing to leave the python_faq set out)")
    examples = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ChatDataError(f"{path}: not UTF-8 ({e}); reinstall python3.11-doc") from None
        for question, answer in parse_faq(text):
            examples.append(example([("user", question), ("assistant", answer)],
                                    {"source": "python-faq", "file": path.name}))
    return examples, {"origin": f"deb:python3.11-doc ({folder})", "license": LICENSE}
