"""scripts/corpus_extract.py's Chinese prose extraction and scripts/sft_mix.py's text rows, on tiny inputs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROSE = "在「数据」下选择下一个条件。根据所选条件，可能会有其他选项变为可选，然后点击确定按钮完成设置。"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prose_zh_keeps_chinese_prose_of_pages_and_manuals(tmp_path):
    extract = load_script("corpus_extract")
    pages = tmp_path / "help"
    pages.mkdir()
    (pages / "a.html").write_text(
        f"<html><head><title>短</title><style>p {{color: red}}</style></head><body><p>{PROSE}</p>"
        "<p>sudo apt-get install --no-install-recommends libreoffice-help-zh-cn</p>"
        "<script>var x = '这是一段脚本里的中文，不应该被当作正文读出来，无论它有多长多长多长。';</script>"
        f"<li>{PROSE}</li><div>太短了。</div></body></html>", encoding="utf-8")
    wrapped = ("Debian 是一个自由的操作系统，由全世界的志愿者共同开发和维护，\n"
               "它包含了成千上万的软件包，用户可以方便地安装它们。")
    (tmp_path / "manual.txt.gz").write_bytes(gzip.compress(f"1. 目录\n\n{wrapped}\n\n  $ ls -la /etc/apt\n".encode()))
    out = tmp_path / "out" / "prose.txt"
    extract.prose_zh(out, [str(pages), str(tmp_path / "manual.txt.gz")])
    lines = out.read_text(encoding="utf-8").split("\n")
    # the page's paragraph once (the repeat is dropped), the manual's wrapped lines joined; nothing else
    assert [line for line in lines if line] == [PROSE, wrapped.replace("\n", "")]


def test_prose_zh_groups_paragraphs_into_blocks_and_refuses_nothing_found(tmp_path):
    extract = load_script("corpus_extract")
    page = tmp_path / "p.html"
    page.write_text("".join(f"<p>第{i}段：{PROSE}</p>" for i in range(40)), encoding="utf-8")
    out = tmp_path / "prose.txt"
    extract.prose_zh(out, [str(page)], block_chars=200)
    blocks = out.read_text(encoding="utf-8").strip().split("\n\n")
    assert len(blocks) > 5 and all(len(b) <= 200 + len(PROSE) + 6 for b in blocks)
    assert sum(len(b.split("\n")) for b in blocks) == 40
    empty = tmp_path / "e.html"
    empty.write_text("<p>only English here, nothing Chinese at all in this page.</p>", encoding="utf-8")
    with pytest.raises(SystemExit, match="no Chinese prose"):
        extract.prose_zh(tmp_path / "none.txt", [str(empty)])
    assert not (tmp_path / "none.txt").exists()


def mix(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sft_mix.py"), "--chat", str(tmp_path / "chat"),
                           "--corpus", str(tmp_path / "corpus"), "--copy", str(tmp_path / "copy.jsonl"),
                           "--out", str(tmp_path / "out"), "--copy-docs", "2", "--no-tool", "0", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tiny(tmp_path):
    chat = tmp_path / "chat"
    chat.mkdir()
    for name in ("dialogues", "chatterbot", "python_faq"):
        (chat / f"{name}.train.jsonl").write_text(json.dumps({"messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    corpus = tmp_path / "corpus"
    for source, blocks in {"poems": [f"诗{i}" + "山" * 250 for i in range(60)],
                           "prose": [f"文{i}" + "水" * 250 for i in range(3)],
                           "books": [f"Book {i} " + "word " * 60 for i in range(60)]}.items():
        (corpus / source).mkdir(parents=True)
        (corpus / source / "a.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    (tmp_path / "copy.jsonl").write_text("".join(json.dumps({"text": f"copy {i}"}) + "\n" for i in range(5)))
    return tmp_path


def rows(tmp_path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (tmp_path / "out" / "text.train.jsonl").read_text().splitlines()]


def test_sft_mix_small_source_takes_turns_with_the_large_one(tiny):
    done = mix(tiny, "--text", "20", "--zh-share", "0.5", "--sources", "poems,prose,books")
    assert done.returncode == 0, done.stderr
    text = rows(tiny)
    assert len(text) == 20 and sum(t.startswith("Book") for t in text) == 10
    # one pool of all 63 Chinese blocks: 10 drawn, the 3 of the small source mostly missed
    assert sum(t.startswith("文") for t in text) < 3
    done = mix(tiny, "--text", "20", "--zh-share", "0.5", "--sources", "poems,prose,books", "--in-turn", "prose")
    assert done.returncode == 0, done.stderr
    assert sum(t.startswith("文") for t in rows(tiny)) == 3  # in turn: every one of them


def test_sft_mix_english_sources_take_turns_and_long_blocks_are_cut(tiny):
    letters = tiny / "corpus" / "letters"
    letters.mkdir()
    (letters / "a.txt").write_text("\n\n".join(f"Letter {i} " + "ink " * 60 for i in range(3)) + "\n")
    speech = tiny / "corpus" / "speech"
    speech.mkdir()
    (speech / "a.txt").write_text("Speech. " + "We met and we agreed on the plan for the year. " * 100 + "\n")
    done = mix(tiny, "--text", "20", "--zh-share", "0", "--sources", "books,letters,speech")
    assert done.returncode == 0, done.stderr
    text = rows(tiny)
    assert sum(t.startswith("Letter") for t in text) < 3 and not any("agreed" in t for t in text)
    done = mix(tiny, "--text", "20", "--zh-share", "0", "--sources", "books,letters,speech", "--en-in-turn",
               "--cut-long")
    assert done.returncode == 0, done.stderr
    text = rows(tiny)
    # the one-line speech (4,800 characters) in four pieces of whole sentences, every letter, the rest books
    pieces = [t for t in text if "agreed" in t]
    assert len(pieces) == 4 and all(len(t) <= 1500 and t.endswith("year.") for t in pieces)
    assert sum(t.startswith("Letter") for t in text) == 3 and sum(t.startswith("Book") for t in text) == 13


@pytest.mark.parametrize(("args", "says"), [
    (["--sources", "poems,nowhere"], "--sources: nowhere"),
    (["--sources", "poems", "--in-turn", "prose"], "--in-turn: prose: not among --sources"),
    (["--sources", "poems", "--zh-share", "1.5"], "--zh-share"),
])
def test_sft_mix_refuses_bad_sources(tiny, args, says):
    done = mix(tiny, "--text", "20", *args)
    assert done.returncode != 0 and says in done.stderr
    assert not (tiny / "out").exists()
