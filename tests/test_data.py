"""seekmoe.train.data: prepare token shards from the committed corpus sample and small files; read them back."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from seekmoe.cli.main import main
from seekmoe.train.data import DataError, TokenShards, prepare, token_dtype

SAMPLE = Path(__file__).parent / "data" / "corpus_sample"
EOS = "<|endoftext|>"


def paragraphs(text: str) -> list[str]:
    """The documents prepare makes of a text file, computed independently: blocks between blank lines."""
    blocks = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    return ["\n".join(line.rstrip() for line in b.splitlines()) for b in blocks if b.strip()]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """A 400-id byte-level BPE trained on the sample: exact decoding, English and Chinese."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(p) for p in sorted(SAMPLE.glob("*.txt"))],
              trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("bpe")
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def prepared(bpe, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    return out, prepare([SAMPLE], bpe, out, val_fraction=0.05, seed=0, shard_tokens=5000, overwrite=True)


def documents(folder: Path, split: str, tokenizer: Path) -> list[str]:
    """Decode a split back into its documents, cutting the token stream at each eos."""
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    shards = TokenShards(folder, split)
    ids = shards.tokens(0, len(shards))
    assert ids[-1] == shards.eos_id
    cuts = np.flatnonzero(ids == shards.eos_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(ids[a:b].tolist(), skip_special_tokens=False) for a, b in zip(starts, cuts, strict=True)]


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# --- prepare on the committed sample ------------------------------------------------------------------------------

def test_manifest_is_consistent(prepared):
    out, m = prepared
    assert m["dtype"] == "uint16" and m["vocab_size"] == 400 and m["eos_id"] == 0
    total = 0
    for split in ("train", "val"):
        s = m["splits"][split]
        assert s["tokens"] == sum(x["tokens"] for x in s["shards"])
        for x in s["shards"]:
            data = (out / x["file"]).read_bytes()
            assert len(data) == 2 * x["tokens"]
            assert hashlib.sha256(data).hexdigest() == x["sha256"]
        assert all(x["tokens"] == 5000 for x in s["shards"][:-1])  # full shards but the last
        stream = np.concatenate([np.fromfile(out / x["file"], dtype="<u2") for x in s["shards"]])
        assert (stream == m["eos_id"]).sum() == s["documents"]  # one eos per document
        total += s["tokens"]
    assert sum(src["tokens"] for src in m["sources"]) == total
    assert m["documents"]["unique"] == m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert m["splits"]["val"]["documents"] == round(0.05 * m["documents"]["unique"])
    committed = json.loads((SAMPLE / "SOURCES.json").read_text())["sources"]
    assert {(s["name"], s["license"]) for s in m["sources"]} == {(s["name"], s["license"]) for s in committed}
    assert {s["name"] for s in committed} >= {"sotu", "moby_dick", "web", "shakespeare", "austen", "python_docs",
                                             "chinese_poetry"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_shards_decode_to_the_sample_documents(prepared, bpe):
    out, m = prepared
    expected = {p for f in SAMPLE.glob("*.txt") for p in paragraphs(f.read_text(encoding="utf-8"))}
    train, val = documents(out, "train", bpe), documents(out, "val", bpe)
    assert len(train) + len(val) == len(set(train) | set(val)) == m["documents"]["unique"]
    assert set(train) | set(val) == expected  # every unique paragraph, once, decoded exactly
    assert any("的" in d or "之" in d for d in train + val)  # the Chinese sample came through


def test_duplicates_are_removed_and_counted(tmp_path, bpe):
    (tmp_path / "in").mkdir()
    a = write(tmp_path / "in" / "a.txt",
              "First paragraph.\nIts second line.\n\nSecond one.\n\n\nFirst paragraph.\nIts second line.\n")
    write(tmp_path / "in" / "b.md", "Second one.   \r\n\r\nThird, new.\r\n")  # a copy once trailing spaces go
    write(tmp_path / "c.jsonl", json.dumps({"text": "Third, new."}) + "\n" + json.dumps({"text": "Fourth"}) + "\n")
    m = prepare([a.parent, tmp_path / "c.jsonl"], bpe, tmp_path / "out", val_fraction=0.3)
    assert m["documents"] == {"found": 7, "empty": 0, "duplicates": 3, "unique": 4}
    by_name = {s["name"]: s for s in m["sources"]}
    assert by_name[str(a.parent)]["duplicates"] == 2 and by_name[str(tmp_path / "c.jsonl")]["duplicates"] == 1
    docs = documents(tmp_path / "out", "train", bpe) + documents(tmp_path / "out", "val", bpe)
    assert sorted(docs) == sorted(["First paragraph.\nIts second line.", "Second one.", "Third, new.", "Fourth"])


def test_same_seed_same_output_other_seed_other_order(tmp_path, bpe):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        m = prepare([SAMPLE], bpe, tmp_path / name, seed=seed, val_fraction=0.1, shard_tokens=4096)
        runs[name] = [(x["file"], x["sha256"]) for s in ("train", "val") for x in m["splits"][s]["shards"]]
    m = prepare([SAMPLE], bpe, tmp_path / "d", seed=7, val_fraction=0.1, shard_tokens=4096, bucket_records=50)
    runs["d"] = [(x["file"], x["sha256"]) for s in ("train", "val") for x in m["splits"][s]["shards"]]
    assert runs["a"] == runs["b"] == runs["d"]  # ~12 buckets of records instead of one: the same bytes
    assert runs["a"] != runs["c"]
    every = {n: sorted(documents(tmp_path / n, "train", bpe) + documents(tmp_path / n, "val", bpe)) for n in "ac"}
    assert every["a"] == every["c"]  # the same documents, in another order and split
    assert documents(tmp_path / "a", "val", bpe) != documents(tmp_path / "c", "val", bpe)


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    vocab = {EOS: 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "wide.json"))
    write(tmp_path / "t.txt", "w69999 w2 w65536\n\nw70 w7\n\nw66000\n")
    m = prepare([tmp_path / "t.txt"], tmp_path / "wide.json", tmp_path / "out", val_fraction=0.4)
    assert m["dtype"] == "uint32" and m["vocab_size"] == 70_000
    ids = [TokenShards(tmp_path / "out", s).tokens(0, m["splits"][s]["tokens"]).tolist() for s in ("train", "val")]
    assert sorted(ids[0] + ids[1]) == sorted([69999, 2, 65536, 0, 70, 7, 0, 66000, 0])


def test_jsonl_input(tmp_path, bpe):
    texts = ["Line one.\n\nStill the same record, blank line and all.", "诗云：关关雎鸠，在河之洲。", "  plain  "]
    lines = [json.dumps({"text": t, "id": i}, ensure_ascii=i != 1) for i, t in enumerate(texts)]
    write(tmp_path / "d.jsonl", "\n".join([lines[0], "", lines[1], json.dumps({"text": " \n "}), lines[2]]) + "\n")
    m = prepare([tmp_path / "d.jsonl"], bpe, tmp_path / "out", val_fraction=0.5)
    assert m["documents"] == {"found": 4, "empty": 1, "duplicates": 0, "unique": 3}
    docs = documents(tmp_path / "out", "train", bpe) + documents(tmp_path / "out", "val", bpe)
    assert sorted(docs) == sorted(texts)  # a record is one document, its text untouched


# --- reading --------------------------------------------------------------------------------------------------------

def test_batches_are_deterministic_resumable_and_split_by_rank(prepared):
    out, m = prepared
    shards = TokenShards(out, "train")
    assert len(shards) == m["splits"]["train"]["tokens"]
    x, y = shards.batch(5, batch_size=4, seq_len=32)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    run = [shards.batch(step, 4, 32) for step in range(8)]
    resumed = TokenShards(out, "train")  # a fresh reader, as after a restart, picks up at step 5
    for step in (5, 6, 7):
        assert all(torch.equal(a, b) for a, b in zip(resumed.batch(step, 4, 32), run[step], strict=True))
    # two ranks at a step read the two halves of what one rank with twice the batch reads
    whole = shards.batch(3, 8, 32)
    halves = [shards.batch(3, 4, 32, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])


def test_an_epoch_visits_every_window_once_and_crosses_shards(prepared):
    out, m = prepared
    shards = TokenShards(out, "train")
    T = 64
    n = shards.windows(T)
    x, _ = shards.batch(0, n, T)  # the whole first epoch in one batch
    starts = {tuple(row[:8].tolist()) for row in x}
    every = {tuple(shards.tokens(w * T, w * T + 8).tolist()) for w in range(n)}
    assert starts == every and len(x) == n
    assert not torch.equal(x, shards.batch(1, n, T)[0])  # the next epoch goes in another order
    raw = np.concatenate([np.fromfile(out / s["file"], dtype="<u2") for s in m["splits"]["train"]["shards"][:2]])
    assert np.array_equal(shards.tokens(4990, 5010), raw[4990:5010])  # across the first shard boundary
    val = TokenShards(out, "val", shuffle=False)
    assert torch.equal(val.batch(0, 1, 16)[0][0], torch.from_numpy(val.tokens(0, 16).astype(np.int64)))


def test_reader_errors(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(DataError, match=r"no manifest\.json"):
        TokenShards(tmp_path, "train")
    with pytest.raises(DataError, match="split must be one of train, val"):
        TokenShards(out, "test")
    with pytest.raises(DataError, match="needs at least"):
        TokenShards(out, "val").batch(0, 1, 10**7)


MEMORY_SCRIPT = r"""
import random, resource, sys
from pathlib import Path
from seekmoe.train.data import prepare

tmp, tok = Path(sys.argv[1]), sys.argv[2]
rng = random.Random(0)
words = [f"w{i}" for i in range(2000)]

def corpus(path, megabytes):
    with open(path, "w") as f:
        size = 0
        while size < megabytes * 1_000_000:
            p = " ".join(rng.choices(words, k=rng.randint(20, 300))) + "\n\n"
            size += f.write(p)

corpus(tmp / "small.txt", 2)
corpus(tmp / "big.txt", 20)
prepare([tmp / "small.txt"], tok, tmp / "small", bucket_records=4096)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepare([tmp / "big.txt"], tok, tmp / "big", bucket_records=4096)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
    """A 20 MB corpus (~3.5M tokens) peaks no higher than a 2 MB one, give or take a few MB."""
    vocab = {EOS: 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(2000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))  # word-level: fast, the test is about memory
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tok.json"))
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), str(tmp_path / "tok.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    growth_mb = int(run.stdout.strip())
    manifest = json.loads((tmp_path / "big" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] > 3_000_000
    assert growth_mb < 12, f"peak RSS grew {growth_mb} MB from a 2 MB to a 20 MB corpus"


# --- atomic output ------------------------------------------------------------------------------------------------

def test_a_failed_prepare_leaves_the_old_output_alone(tmp_path, bpe, monkeypatch):
    import seekmoe.train.data

    out = tmp_path / "out"
    first = prepare([SAMPLE], bpe, out, shard_tokens=50_000)
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(seekmoe.train.data, "_tokenise", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare([SAMPLE], bpe, out, seed=1, shard_tokens=1000, overwrite=True)
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before  # no partial folder, old data intact
    monkeypatch.undo()

    (out / ".prepare-partial-killed").mkdir()  # what a SIGKILLed run leaves: cleaned up, not counted as content
    (out / "notes.txt").write_text("mine")
    second = prepare([SAMPLE], bpe, out, seed=1, shard_tokens=1000, overwrite=True)
    names = {p.name for p in out.iterdir()}
    shard_names = {x["file"] for s in ("train", "val") for x in second["splits"][s]["shards"]}
    assert names == shard_names | {"manifest.json", "notes.txt"}  # old shards gone, unrelated file kept
    assert len(shard_names) > len(first["splits"]["train"]["shards"]) + 1


# --- errors ---------------------------------------------------------------------------------------------------------

def test_input_errors(tmp_path, bpe):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no inputs"):
        prepare([], bpe, out)
    with pytest.raises(DataError, match=r"missing\.txt: no such file or directory"):
        prepare([tmp_path / "missing.txt"], bpe, out)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"no \.txt, \.md, \.rst, \.jsonl files"):
        prepare([tmp_path / "empty_dir"], bpe, out)
    write(tmp_path / "same.txt", "Only this.\n\nOnly this.\n\n   \n")
    with pytest.raises(DataError, match="2 non-empty documents, 1 after removing duplicates; need at least 2"):
        prepare([tmp_path / "same.txt"], bpe, out)
    write(tmp_path / "blank.txt", "\n \n\t\n")
    with pytest.raises(DataError, match="0 non-empty documents"):
        prepare([tmp_path / "blank.txt"], bpe, out)
    bad = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": "unterminated\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}:3: not valid JSON"):
        prepare([bad], bpe, out)
    write(bad, '{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r'bad\.jsonl:2: expected a JSON object with a string "text" field'):
        prepare([bad], bpe, out)
    (tmp_path / "latin1.txt").write_bytes(b"fine\n\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin1\.txt:3: not UTF-8"):
        prepare([tmp_path / "latin1.txt"], bpe, out)
    assert not out.exists() or not any(out.iterdir())


def test_argument_errors(tmp_path, bpe):
    good = write(tmp_path / "t.txt", "one\n\ntwo\n")
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(DataError, match=f"val_fraction must be between 0 and 1 \\(exclusive\\), got {fraction}"):
            prepare([good], bpe, tmp_path / "out", val_fraction=fraction)
    with pytest.raises(DataError, match=r"no tokenizer\.json there"):
        prepare([good], tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="'<nope>' is not in the vocabulary"):
        prepare([good], bpe, tmp_path / "out", eos_token="<nope>")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("something")
    with pytest.raises(DataError, match="not empty; pass --overwrite"):
        prepare([good], bpe, tmp_path / "full")


def test_eos_comes_from_tokenizer_config(tmp_path, bpe):
    tok = Tokenizer.from_file(str(bpe / "tokenizer.json"))
    tok.add_special_tokens(["<eos>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<eos>"}}))
    good = write(tmp_path / "t.txt", "one\n\ntwo\n")
    m = prepare([good], tmp_path, tmp_path / "out")
    assert m["eos_id"] == tok.token_to_id("<eos>") == 400 and m["tokenizer"]["eos_token"] == "<eos>"


# --- CLI ------------------------------------------------------------------------------------------------------------

def test_cli_prepare(tmp_path, bpe, capsys):
    args = ["data", "prepare", str(SAMPLE), "--tokenizer", str(bpe), "--out", str(tmp_path / "out"),
            "--val-fraction", "0.1", "--seed", "3", "--shard-tokens", "10000"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["seed"] == 3 and m["shard_tokens"] == 10_000 and m["val_fraction"] == 0.1
    assert f"{m['documents']['unique']:,} documents" in printed and "manifest.json" in printed
    assert main(args) == 2  # the folder is not empty now
    err = capsys.readouterr().err
    assert err.startswith("seekmoe: error: ") and "--overwrite" in err and err.count("\n") == 1
    assert main([*args, "--overwrite"]) == 0
    assert main(["data", "prepare", str(tmp_path / "nope.txt"), "--tokenizer", str(bpe), "--out", "x"]) == 2
    assert "nope.txt: no such file or directory" in capsys.readouterr().err


def test_cli_flags_all_have_help():
    from seekmoe.cli.main import build_parser

    parser = build_parser()
    data = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "data")[1]
    prep = data._subparsers._group_actions[0].choices["prepare"]
    flags = {o for a in prep._actions for o in a.option_strings}
    assert {"--tokenizer", "--out", "--val-fraction", "--seed", "--shard-tokens", "--overwrite"} <= flags
    assert all(a.help for a in prep._actions)
