"""Training data: `prepare` turns text into deduplicated, shuffled token shards; `TokenShards` reads them back.

A document is a paragraph block of a text file (the lines between blank lines: a poem, a Bible chapter, a
speech, a paragraph of prose) or the "text" of one JSONL record. Documents are deduplicated exactly (blake2b of
the text, trailing spaces of each line dropped), shuffled with a seed, and split into train and val by
document: the first round(val_fraction * n) documents of the shuffled order are val. Each document's tokens
are followed by the tokenizer's end-of-sentence id; a split is one flat token stream cut into shards of
`shard_tokens` tokens (a document may straddle two shards): raw little-endian uint16 (vocab_size <= 65536) or
uint32 files, described by manifest.json.

Memory stays flat whatever the corpus size, since the text is never held, only fixed-size records:
  1. scan: read the inputs line by line; for each document append a record (key, content hash, file, byte
     offset, length) to a record file on disk. The key is a hash of the content keyed by the seed, so it is a
     seeded random number, the same for every copy of a document.
  2. partition: split the records into buckets by key range (about `bucket_records` records each, as keys
     are uniform), reading the record file in chunks.
  3. dedup: one bucket at a time, sort by (key, hash, position) and keep each hash's first record; copies have
     one key, so they sit side by side in one bucket.
  4. write: bucket after bucket, in key order (so the documents come out shuffled by the seed), read each
     document back from its file at its offset, tokenise 256 KB of text at a time, and append the ids to the
     current shard file.
What is in memory at once: one bucket of records (44 bytes each), one tokeniser batch, the largest document.
Everything is built in a hidden folder inside `out` and moved into place at the end; manifest.json is written
last (temp file + rename), so a killed prepare never leaves a manifest, half or stale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seekmoe.errors import SeekmoeError
from seekmoe.files import atomic_write

FORMAT = "seekmoe-token-shards"
SPLITS = ("train", "val")
FOLDER_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")
PARTIAL = ".prepare-partial-"
SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.bin$")
# Tried in order when the tokenizer folder has no tokenizer_config.json naming its eos_token.
EOS_CANDIDATES = ("<｜end▁of▁sentence｜>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|eos|>")
BATCH_TEXT_BYTES = 1 << 18  # text per tokeniser call: its Encoding objects cost ~100x the text
RECORD = np.dtype([("key", "<u8"), ("h1", "<u8"), ("h2", "<u8"), ("offset", "<u8"), ("length", "<u8"),
                   ("file", "<u4")])


class DataError(SeekmoeError, ValueError):
    """Bad input data or arguments; the message names the file (and line) and what was expected."""


@dataclass
class _Source:
    name: str
    path: str
    license: str | None = None
    files: int = 0
    bytes: int = 0
    documents: int = 0
    empty: int = 0
    duplicates: int = 0
    tokens: int = 0
    file_list: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"name": self.name, "path": self.path, "license": self.license, "files": self.files, "bytes": self.bytes,
             "documents": self.documents, "duplicates": self.duplicates, "empty": self.empty, "tokens": self.tokens}
        return d if self.license else {k: v for k, v in d.items() if k != "license"}


# --- inputs ----------------------------------------------------------------------------------------------------

def _sources_index(folders: Sequence[Path]) -> dict[Path, dict]:
    """Resolved file path -> its SOURCES.json entry, for the SOURCES.json files in these folders."""
    index: dict[Path, dict] = {}
    for folder in folders:
        path = folder / "SOURCES.json"
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["sources"]
            for e in entries:
                for f in e["files"]:
                    index.setdefault((folder / f).resolve(), e)
        except (ValueError, KeyError, TypeError) as err:
            want = '{"sources": [{"name": ..., "license": ..., "files": [...]}, ...]}'
            raise DataError(f"{path}: expected {want} ({err})") from None
    return index


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[_Source]:
    """Expand files and folders into sources; files named in a SOURCES.json beside them take its name and license."""
    if not inputs:
        raise DataError("no inputs: give text files (.txt, .md, .rst), .jsonl files or folders")
    sources: dict[str, _Source] = {}
    seen: set[Path] = set()
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise DataError(f"{given}: no such file or directory")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in FOLDER_SUFFIXES and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise DataError(f"{given}: no {', '.join(FOLDER_SUFFIXES)} files in this folder")
            index = _sources_index([p, p.parent])
        else:
            files = [p]
            index = _sources_index([p.parent, p.parent.parent])
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            entry = index.get(f.resolve())
            name = entry["name"] if entry else str(given)
            src = sources.setdefault(name, _Source(name, str(given), entry.get("license") if entry else None))
            src.file_list.append(f)
            src.files += 1
            src.bytes += f.stat().st_size
    return list(sources.values())


def _clean(raw: bytes) -> str:
    """A paragraph block's text: UTF-8, without a byte-order mark or trailing spaces on its lines."""
    return "\n".join(line.rstrip() for line in raw.decode("utf-8").lstrip("\ufeff").splitlines())


def _text_documents(path: Path) -> Iterator[tuple[int, int, str]]:
    """(byte offset, byte length, text) of each paragraph block; blank lines separate blocks."""
    with open(path, "rb") as f:
        pos, start, first_line, lines = 0, -1, 0, []
        for lineno, line in enumerate(f, 1):
            if line.strip():
                if start < 0:
                    start, first_line, lines = pos, lineno, []
                lines.append(line)
            elif start >= 0:
                yield start, pos - start, _decode(path, first_line, lines)
                start = -1
            pos += len(line)
        if start >= 0:
            yield start, pos - start, _decode(path, first_line, lines)


def _decode(path: Path, lineno: int, lines: list[bytes]) -> str:
    try:
        return _clean(b"".join(lines))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} in the paragraph starting here)") from None


def _jsonl_text(path: Path, lineno: int, raw: bytes) -> str:
    try:
        record = json.loads(raw)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f'{path}:{lineno}: expected a JSON object with a string "text" field')
    return record["text"]


def _jsonl_documents(path: Path) -> Iterator[tuple[int, int, str]]:
    """(byte offset, byte length, text) of each record's line."""
    with open(path, "rb") as f:
        pos = 0
        for lineno, line in enumerate(f, 1):
            if line.strip():
                text = _jsonl_text(path, lineno, line)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(f'{path}:{lineno}: "text" holds a lone surrogate (a \\ud800-\\udfff escape), '
                                    "which is not Unicode text") from None
                yield pos, len(line), text
            pos += len(line)


def _documents(path: Path) -> Iterator[tuple[int, int, str]]:
    return _jsonl_documents(path) if path.suffix == ".jsonl" else _text_documents(path)


class _DocumentReader:
    """Reads documents back by (file, offset, length), keeping a few files open."""

    def __init__(self, files: Sequence[Path], max_open: int = 128):
        self.files, self.max_open, self.open = files, max_open, OrderedDict()

    def read(self, file: int, offset: int, length: int) -> str:
        f = self.open.pop(file, None) or open(self.files[file], "rb")  # noqa: SIM115 - closed in close()
        self.open[file] = f
        if len(self.open) > self.max_open:
            self.open.popitem(last=False)[1].close()
        f.seek(offset)
        raw = f.read(length)
        path = self.files[file]
        return json.loads(raw)["text"] if path.suffix == ".jsonl" else _clean(raw)

    def close(self) -> None:
        for f in self.open.values():
            f.close()


# --- tokenizer -------------------------------------------------------------------------------------------------

def load_tokenizer(path: str | os.PathLike, eos_token: str | None = None):
    """(tokenizers.Tokenizer, eos id, eos token, tokenizer.json path) from a folder or a tokenizer.json file."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no tokenizer.json there" if path.is_dir() else f"{path}: no such file or directory")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception for any parse error
        raise DataError(f"{file}: not a tokenizers JSON file ({e})") from None
    if eos_token is None:
        config = file.parent / "tokenizer_config.json"
        if config.is_file():
            try:
                eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
            except (ValueError, AttributeError) as e:
                raise DataError(f"{config}: expected a JSON object ({e})") from None
            eos_token = eos.get("content") if isinstance(eos, dict) else eos
    candidates = [eos_token] if eos_token else list(EOS_CANDIDATES)
    for name in candidates:
        if (eos_id := tok.token_to_id(name)) is not None:
            return tok, eos_id, name, file
    if eos_token:
        raise DataError(f"{file}: the end-of-sentence token {eos_token!r} is not in the vocabulary")
    raise DataError(f"{file}: no end-of-sentence token found (no tokenizer_config.json eos_token, none of "
                    f"{', '.join(EOS_CANDIDATES)}); name one with --eos-token")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# --- writing ---------------------------------------------------------------------------------------------------

class _ShardWriter:
    """Appends one split's tokens to shard files of exactly `shard_tokens` tokens (the last one fewer)."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None:
                name = f"{self.split}-{len(self.shards):05d}.bin"
                self.file = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _finish()
                self.sha, self.count, self.name = hashlib.sha256(), 0, name
            take = min(len(ids), self.shard_tokens - self.count)
            data = ids[:take].astype(self.dtype, copy=False).tobytes()
            self.file.write(data)
            self.sha.update(data)
            self.count += take
            ids = ids[take:]
            if self.count == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        self.file.close()
        self.shards.append({"file": self.name, "tokens": self.count, "sha256": self.sha.hexdigest()})
        self.file = None

    def close(self) -> list[dict]:
        if self.file is not None:
            self._finish()
        return self.shards


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir():
        for stale in out.glob(PARTIAL + "*"):  # left by a killed prepare
            shutil.rmtree(stale, ignore_errors=True)
        if any(out.iterdir()) and not overwrite:
            raise DataError(f"{out}: folder is not empty; pass --overwrite to replace the shards and manifest in it")


def _scan(sources: list[_Source], files: list[Path], seed: int, records_path: Path, bar) -> int:
    """Pass 1: a record per non-empty document, in input order; returns the number of records."""
    key = hashlib.blake2b(str(seed).encode(), digest_size=32).digest()
    buffer, n = [], 0
    with open(records_path, "wb") as out:
        file_id = 0
        for src in sources:
            for path in src.file_list:
                done = 0
                for offset, length, text in _documents(path):
                    if not text.strip():
                        src.empty += 1
                        continue
                    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                    k = hashlib.blake2b(digest, digest_size=8, key=key).digest()
                    buffer.append((int.from_bytes(k, "little"), int.from_bytes(digest[:8], "little"),
                                   int.from_bytes(digest[8:], "little"), offset, length, file_id))
                    src.documents += 1
                    if len(buffer) == 1 << 14:
                        np.array(buffer, dtype=RECORD).tofile(out)
                        n, buffer = n + len(buffer), []
                    bar.update(offset + length - done)
                    done = offset + length
                bar.update(path.stat().st_size - done)
                file_id += 1
        np.array(buffer, dtype=RECORD).tofile(out)
    return n + len(buffer)


def _partition(records_path: Path, n: int, bucket_records: int, folder: Path) -> list[Path]:
    """Pass 2: bucket files by key range, bucket i holding smaller keys than bucket i+1."""
    n_buckets = max(1, math.ceil(n / bucket_records))
    if n_buckets == 1:
        return [records_path]
    paths = [folder / f"bucket-{i:05d}.rec" for i in range(n_buckets)]
    handles = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    try:
        with open(records_path, "rb") as f:
            while len(chunk := np.fromfile(f, dtype=RECORD, count=1 << 18)):
                bucket = ((chunk["key"] >> np.uint64(32)) * np.uint64(n_buckets)) >> np.uint64(32)
                order = np.argsort(bucket, kind="stable")
                chunk, bucket = chunk[order], bucket[order]
                edges = np.searchsorted(bucket, np.arange(n_buckets + 1))
                for i in np.flatnonzero(np.diff(edges)):
                    chunk[edges[i]:edges[i + 1]].tofile(handles[i])
    finally:
        for h in handles:
            h.close()
    records_path.unlink()
    return paths


def _dedup(buckets: list[Path], file_source: np.ndarray, sources: list[_Source]) -> int:
    """Pass 3: sort each bucket by (key, hash, file, offset) and keep each hash's first record."""
    unique = 0
    for path in buckets:
        recs = np.fromfile(path, dtype=RECORD)
        recs = recs[np.lexsort((recs["offset"], recs["file"], recs["h2"], recs["h1"], recs["key"]))]
        dup = np.zeros(len(recs), dtype=bool)
        dup[1:] = (recs["h1"][1:] == recs["h1"][:-1]) & (recs["h2"][1:] == recs["h2"][:-1])
        for s, count in enumerate(np.bincount(file_source[recs["file"][dup]], minlength=len(sources))):
            sources[s].duplicates += int(count)
        recs[~dup].tofile(path)
        unique += int((~dup).sum())
    return unique


def _tokenise(buckets: list[Path], n_val: int, files: list[Path], file_source: np.ndarray, tok, eos_id: int,
              writers: dict[str, _ShardWriter], tokens_of: np.ndarray, bar) -> None:
    """Pass 4: documents in key order, the first n_val to val; a batch of ~BATCH_TEXT_BYTES per tokeniser call."""
    texts: list[str] = []
    src: list[int] = []

    def flush(split: str) -> None:
        ids: list[int] = []
        lengths = []
        for e in tok.encode_batch_fast(texts, add_special_tokens=False):
            doc = e.ids
            ids += doc
            ids.append(eos_id)
            lengths.append(len(doc) + 1)
        writers[split].write(np.array(ids, dtype=np.int64))
        np.add.at(tokens_of, np.array(src, dtype=np.int64), lengths)
        texts.clear()
        src.clear()

    reader = _DocumentReader(files)
    try:
        split, size, done = "val", 0, 0
        for path in buckets:
            for rec in np.fromfile(path, dtype=RECORD):
                doc_split = "val" if done < n_val else "train"
                if texts and (doc_split != split or size >= BATCH_TEXT_BYTES):
                    flush(split)
                    size = 0
                split = doc_split
                texts.append(reader.read(int(rec["file"]), int(rec["offset"]), int(rec["length"])))
                src.append(int(file_source[rec["file"]]))
                size += int(rec["length"])
                done += 1
                bar.update()
        if texts:
            flush(split)
    finally:
        reader.close()


def prepare(inputs: Sequence[str | os.PathLike], tokenizer: str | os.PathLike, out: str | os.PathLike, *,
            val_fraction: float = 0.01, seed: int = 0, shard_tokens: int = 50_000_000, overwrite: bool = False,
            eos_token: str | None = None, progress: bool = False, bucket_records: int = 1 << 20) -> dict:
    """Tokenise `inputs` into train/val shards and manifest.json in `out`; returns the manifest."""
    from tqdm import tqdm

    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    sources = collect_inputs(inputs)
    tok, eos_id, eos_name, tok_file = load_tokenizer(tokenizer, eos_token)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    out = Path(out)
    _check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=out))
    try:
        files = [f for s in sources for f in s.file_list]
        file_source = np.repeat(np.arange(len(sources)), [len(s.file_list) for s in sources])
        with tqdm(total=sum(s.bytes for s in sources), unit="B", unit_scale=True, desc="scan",
                  disable=not progress) as bar:
            n = _scan(sources, files, seed, work / "records.rec", bar)
        buckets = _partition(work / "records.rec", n, bucket_records, work)
        unique = _dedup(buckets, file_source, sources)
        if unique < 2:
            raise DataError(f"nothing to split into train and val: the inputs hold {n} non-empty documents, "
                            f"{unique} after removing duplicates; need at least 2")
        n_val = min(max(1, round(val_fraction * unique)), unique - 1)

        writers = {s: _ShardWriter(work, s, dtype, shard_tokens) for s in SPLITS}
        tokens_of = np.zeros(len(sources), dtype=np.int64)
        with tqdm(total=unique, unit="doc", desc="tokenise", disable=not progress) as bar:
            _tokenise(buckets, n_val, files, file_source, tok, eos_id, writers, tokens_of, bar)
        shards = {s: w.close() for s, w in writers.items()}
        for s, t in zip(sources, tokens_of, strict=True):
            s.tokens = int(t)

        empty = sum(s.empty for s in sources)
        manifest = {
            "format": FORMAT,
            "version": 1,
            "document": "a paragraph block of a text file (lines between blank lines) or one JSONL record's text",
            "tokenizer": {"path": str(tok_file), "sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
                          "eos_token": eos_name},
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_id": eos_id,
            "seed": seed,
            "val_fraction": val_fraction,
            "shard_tokens": shard_tokens,
            "documents": {"found": n + empty, "empty": empty, "duplicates": n - unique, "unique": unique},
            "splits": {s: {"documents": n_val if s == "val" else unique - n_val,
                           "tokens": sum(x["tokens"] for x in shards[s]), "shards": shards[s]} for s in SPLITS},
            "sources": [s.to_dict() for s in sources],
        }
        # The folder is replaced from here: the old manifest goes first, so that no manifest ever describes a mix
        # of old and new shards, and the new one comes last.
        (out / "manifest.json").unlink(missing_ok=True)
        for old in out.iterdir():
            if SHARD_NAME.match(old.name):
                old.unlink()
        for s in SPLITS:
            for shard in shards[s]:
                os.replace(work / shard["file"], out / shard["file"])
        atomic_write(out / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- reading ---------------------------------------------------------------------------------------------------

def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{folder}: no manifest.json (not a `seekmoe data prepare` folder, or it did not finish)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class TokenShards:
    """One split's tokens as a single stream over its memory-mapped shards, cut into training windows.

    Window w holds tokens [w*T, w*T + T + 1): input and target of one row. Sample g of the run (g counts rows over
    all steps and ranks) is window perm_e(g mod W) of epoch e = g // W, where perm_e is an affine permutation
    i -> (a*i + b) mod W drawn from (seed, e): O(1) memory, and any step can be computed directly, so resuming at
    step s is `batch(s, ...)`. The documents were shuffled by prepare; this only varies the windows per epoch.
    """

    def __init__(self, folder: str | os.PathLike, split: str = "train", *, shuffle: bool = True,
                 seed: int | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        if split not in self.manifest["splits"]:
            raise DataError(f"split must be one of {', '.join(self.manifest['splits'])}, got {split!r}")
        self.split, self.shuffle = split, shuffle
        self.seed = self.manifest["seed"] if seed is None else seed
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.eos_id, self.vocab_size = self.manifest["eos_id"], self.manifest["vocab_size"]
        self.shards = []
        for s in self.manifest["splits"][split]["shards"]:
            path = self.folder / s["file"]
            if not path.is_file() or path.stat().st_size != s["tokens"] * self.dtype.itemsize:
                raise DataError(f"{path}: expected {s['tokens']} {self.dtype.name} tokens as manifest.json says")
            self.shards.append(np.memmap(path, dtype=self.dtype, mode="r"))
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])  # start of each shard in the stream

    def __len__(self) -> int:
        return int(self.starts[-1])

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split's stream, across shard boundaries."""
        parts, i = [], int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            take = min(stop, int(self.starts[i + 1])) - start
            local = start - int(self.starts[i])
            parts.append(self.shards[i][local:local + take])
            start, i = start + take, i + 1
        return np.concatenate(parts) if len(parts) != 1 else np.asarray(parts[0])

    def windows(self, seq_len: int) -> int:
        return (len(self) - 1) // seq_len

    def _window(self, g: int, n: int) -> int:
        epoch, i = divmod(g, n)
        if not self.shuffle:
            return i
        rng = np.random.default_rng([self.seed, epoch])
        a = int(rng.integers(1, n)) if n > 1 else 1
        while math.gcd(a, n) != 1:
            a = int(rng.integers(1, n))
        return (a * i + int(rng.integers(n))) % n

    def batch(self, step: int, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        """(input, target) int64 tensors of shape (batch_size, seq_len) for this rank at this step."""
        import torch

        if not 0 <= rank < world:
            raise DataError(f"rank must be in [0, world={world}), got {rank}")
        n = self.windows(seq_len)
        if n < 1:
            raise DataError(f"the {self.split} split has {len(self)} tokens; seq_len {seq_len} needs at least "
                            f"{seq_len + 1}")
        first = (step * world + rank) * batch_size
        rows = []
        for g in range(first, first + batch_size):
            w = self._window(g, n)
            rows.append(self.tokens(w * seq_len, w * seq_len + seq_len + 1))
        xy = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
        return xy[:, :-1], xy[:, 1:]
