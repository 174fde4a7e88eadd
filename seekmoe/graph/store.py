"""The graph on disk: one SQLite file holding documents, sentences, terms, the edges between terms, and for each edge
the sentences it was read from (its provenance).

Edges are undirected pairs of term ids (a < b) with the number of sentences that relate them; `evidence` keeps
which sentences, which way the sentence put them (subject first or second) and the verb between them. Counts are
kept, not weights: how strong a pair is depends on the whole corpus (NPMI, discover.py), which grows with every
incremental build. Each batch of documents is added in one transaction, so a build stopped at any point leaves a
graph of the documents added before it, and a rerun skips those by their content hash.
"""

from __future__ import annotations

import difflib
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from seekmoe.graph import GraphError, TermNotFound
from seekmoe.graph.extract import Facts
from seekmoe.graph.sentences import Document
from seekmoe.graph.terms import term_key

FORMAT = "seekmoe-graph"
VERSION = "1"
_CHUNK = 500  # parameters per IN (...) query, well under SQLite's limit of 32,766
MAX_CACHED_TERMS = 200_000  # term rows kept between queries (~40 MB)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE documents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
                        sentences INTEGER NOT NULL);
CREATE TABLE sentences (id INTEGER PRIMARY KEY, doc INTEGER NOT NULL REFERENCES documents(id), pos INTEGER NOT NULL,
                        text TEXT NOT NULL);
CREATE TABLE terms (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, label TEXT NOT NULL, kind TEXT NOT NULL,
                    sentences INTEGER NOT NULL DEFAULT 0, documents INTEGER NOT NULL DEFAULT 0);
-- which sentences (and so documents) mention a term; by document, for "never mentioned together" (discovery)
CREATE TABLE mentions (term INTEGER NOT NULL, sentence INTEGER NOT NULL, doc INTEGER NOT NULL,
                       PRIMARY KEY (term, sentence)) WITHOUT ROWID;
CREATE INDEX mentions_by_doc ON mentions (doc, term);
CREATE TABLE edges (a INTEGER NOT NULL, b INTEGER NOT NULL, count INTEGER NOT NULL, relation TEXT NOT NULL,
                    PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE INDEX edges_by_b ON edges (b, a);
-- forward: 1 when the sentence names a first (a is the subject), 0 when b
CREATE TABLE evidence (a INTEGER NOT NULL, b INTEGER NOT NULL, sentence INTEGER NOT NULL, forward INTEGER NOT NULL,
                       relation TEXT NOT NULL, PRIMARY KEY (a, b, sentence)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class TermRow:
    id: int
    key: str
    label: str
    kind: str
    sentences: int  # sentences it is in
    documents: int


@dataclass(frozen=True)
class Evidence:
    doc: str
    sentence: str
    subject: str  # the pair's labels in the order the sentence gives them
    relation: str
    object: str

    def to_dict(self) -> dict:
        return {"doc": self.doc, "sentence": self.sentence, "subject": self.subject, "relation": self.relation,
                "object": self.object}


def _chunks(items: list, n: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Graph:
    """An open graph file. Graph.open reads one; Graph.create_or_open is what a build writes through."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path
        self._terms: dict[int, TermRow] = {}  # rows read, by id: a query reads the same few over and over

    # ---- opening -------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Graph:
        """A graph to read. GraphError for a file that is missing or is not a graph seekmoe wrote; verify: also
        check every page (SQLite's quick_check, which reads the whole file) for one that is damaged."""
        path = Path(path)
        if not path.is_file():
            raise GraphError(f"{path}: no such graph file" if not path.exists() else
                             f"{path}: not a file, expected a graph file (seekmoe graph build --out)")
        # read-only by URI: a plain connect would create an empty database for a path that vanished meanwhile
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False)
        graph = cls(db, path)
        graph._check(verify)
        return graph

    @classmethod
    def create_or_open(cls, path: str | Path, extractor: str) -> Graph:
        """A graph to add documents to: a new file, or one an earlier build wrote with the same extractor."""
        path = Path(path)
        if path.is_dir():
            raise GraphError(f"{path}: is a folder, expected a graph file to write")
        if not path.parent.is_dir():
            raise GraphError(f"{path.parent}: no such folder to write the graph into")
        existed = path.exists() and path.stat().st_size > 0
        try:
            db = sqlite3.connect(path, check_same_thread=False)
        except sqlite3.Error as e:
            raise GraphError(f"{path}: cannot open it as a graph ({e})") from None
        graph = cls(db, path)
        if existed:
            graph._check(verify=False)  # an incremental build: a damaged page fails its first write
            built_with = graph.meta("extractor")
            if built_with != extractor:
                graph.close()
                raise GraphError(f"{path} was built with the {built_with} extractor, not {extractor}: add to it "
                                 f"with --extractor {built_with}, or build a new graph")
        else:
            with db:
                db.executescript(SCHEMA)
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("version", VERSION), ("extractor", extractor), ("documents", "0"),
                    ("sentences", "0")])
        db.execute("PRAGMA synchronous = NORMAL")  # a crash loses at most the last batch, never consistency
        return graph

    def _check(self, verify: bool = True) -> None:
        try:
            rows = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('format', 'version')"))
        except sqlite3.DatabaseError as e:  # "file is not a database", "no such table: meta", a torn file
            self.close()
            what = "an SQLite database but no seekmoe graph" if "no such table" in str(e) else "no SQLite database"
            raise GraphError(f"{self.path}: not a seekmoe graph ({what}: {e}); expected a file written by "
                             "seekmoe graph build") from None
        if rows.get("format") != FORMAT:
            self.close()
            raise GraphError(f"{self.path}: not a seekmoe graph (an SQLite database without its format mark)")
        if rows.get("version") != VERSION:
            self.close()
            raise GraphError(f"{self.path}: a seekmoe graph of format version {rows.get('version')}, this seekmoe "
                             f"reads version {VERSION}; build it again")
        try:
            if verify and self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check found damaged pages")
            for table in ("documents", "sentences", "terms", "mentions", "edges", "evidence"):
                self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            self.close()
            raise GraphError(f"{self.path}: a damaged seekmoe graph ({e}); build it again") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ---- adding --------------------------------------------------------------------------------------------------

    def has_document(self, digest: str) -> bool:
        return self.db.execute("SELECT 1 FROM documents WHERE hash = ?", (digest,)).fetchone() is not None

    def add(self, batch: Iterable[tuple[Document, list[str], list[Facts]]]) -> tuple[int, int]:
        """Add documents (each with its sentences and what was found in each) in one transaction; those whose
        content the graph already holds are skipped. Returns (documents added, sentences added)."""
        with self.db:
            return self._add(batch)

    def _add(self, batch: Iterable[tuple[Document, list[str], list[Facts]]]) -> tuple[int, int]:
        db = self.db
        next_sentence = (db.execute("SELECT max(id) FROM sentences").fetchone()[0] or 0) + 1
        sentence_rows, labels = [], {}
        mentions: list[tuple[str, int, int]] = []  # (term key, sentence id, doc id)
        pairs: dict[tuple[str, str], list] = {}  # (key, key) -> [count, relation, [(sentence, forward, rel)]]
        added = 0
        for doc, sentences, facts in batch:
            digest = doc.digest
            if db.execute("SELECT 1 FROM documents WHERE hash = ?", (digest,)).fetchone():
                continue
            doc_id = db.execute("INSERT INTO documents (name, hash, sentences) VALUES (?, ?, ?)",
                                (doc.name, digest, len(sentences))).lastrowid
            added += 1
            for pos, (text, found) in enumerate(zip(sentences, facts, strict=True)):
                sid = next_sentence
                next_sentence += 1
                sentence_rows.append((sid, doc_id, pos, text))
                for t in found.terms:
                    labels.setdefault(t.key, (t.label, t.kind))
                    mentions.append((t.key, sid, doc_id))
                for tr in found.triples:
                    s, o = tr.subject.key, tr.object.key
                    if s == o:
                        continue
                    labels.setdefault(s, (tr.subject.label, tr.subject.kind))
                    labels.setdefault(o, (tr.object.label, tr.object.kind))
                    key, forward = ((s, o), 1) if s < o else ((o, s), 0)
                    entry = pairs.setdefault(key, [0, "", {}])
                    if sid not in entry[2]:  # a pair counts once a sentence
                        entry[0] += 1
                        entry[2][sid] = (forward, tr.relation)
                    entry[1] = entry[1] or tr.relation
                    mentions.append((s, sid, doc_id))
                    mentions.append((o, sid, doc_id))
        if not added:
            return 0, 0
        db.executemany("INSERT INTO sentences (id, doc, pos, text) VALUES (?, ?, ?, ?)", sentence_rows)
        db.executemany("INSERT OR IGNORE INTO terms (key, label, kind) VALUES (?, ?, ?)",
                       [(k, label, kind) for k, (label, kind) in labels.items()])
        ids = self._ids(list(labels))
        mention_rows = {(ids[k], sid, doc) for k, sid, doc in mentions}
        db.executemany("INSERT OR IGNORE INTO mentions (term, sentence, doc) VALUES (?, ?, ?)", mention_rows)
        in_sentences = Counter(t for t, _, _ in mention_rows)
        in_documents = Counter(t for t, _ in {(t, doc) for t, _, doc in mention_rows})
        db.executemany("UPDATE terms SET sentences = sentences + ?, documents = documents + ? WHERE id = ?",
                       [(n, in_documents[t], t) for t, n in in_sentences.items()])
        edge_rows, evidence_rows = [], []
        for (k1, k2), (count, relation, where) in pairs.items():
            a, b = ids[k1], ids[k2]
            if a > b:  # ids, not keys, order the stored pair; flip which side the sentence named first
                a, b = b, a
                where = {sid: (1 - fw, rel) for sid, (fw, rel) in where.items()}
            edge_rows.append((a, b, count, relation))
            evidence_rows.extend((a, b, sid, fw, rel) for sid, (fw, rel) in where.items())
        db.executemany("INSERT INTO edges (a, b, count, relation) VALUES (?, ?, ?, ?) ON CONFLICT (a, b) DO UPDATE "
                       "SET count = count + excluded.count, relation = CASE WHEN relation = '' "
                       "THEN excluded.relation ELSE relation END", edge_rows)
        db.executemany("INSERT OR IGNORE INTO evidence VALUES (?, ?, ?, ?, ?)", evidence_rows)
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'documents'", (added,))
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'sentences'",
                   (len(sentence_rows),))
        self._terms.clear()  # their counts changed
        return added, len(sentence_rows)

    def _ids(self, keys: list[str]) -> dict[str, int]:
        ids = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            ids.update((k, i) for i, k in self.db.execute(f"SELECT id, key FROM terms WHERE key IN ({marks})", chunk))
        return ids

    # ---- reading -------------------------------------------------------------------------------------------------

    @property
    def sentence_count(self) -> int:
        return int(self.meta("sentences") or 0)

    def stats(self) -> dict:
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {"documents": int(self.meta("documents") or 0), "sentences": self.sentence_count,
                "terms": one("SELECT count(*) FROM terms"), "edges": one("SELECT count(*) FROM edges"),
                "extractor": self.meta("extractor")}

    def term(self, name: str) -> TermRow:
        """The term a user named (any case, singular or plural). TermNotFound naming the closest terms if none."""
        if not isinstance(name, str) or not name.strip():
            raise GraphError("a term is needed, got an empty one")
        key = term_key(name)
        row = self.db.execute("SELECT id, key, label, kind, sentences, documents FROM terms WHERE key = ?",
                              (key,)).fetchone()
        if row is None:
            hint = self.closest(key)
            raise TermNotFound(f"no term {name!r} in {self.path.name}" + (
                f" (did you mean {', '.join(map(repr, hint))}?)" if hint else ""))
        return TermRow(*row)

    def closest(self, key: str, n: int = 3) -> list[str]:
        """Labels of terms like `key`: those sharing one of its words (or its first half), ranked by spelling; bounded
        work on any size of graph."""
        words = [w for w in key.split() if len(w) >= 3] or [key]
        probes = {p for w in words for p in (w, w[: max(3, len(w) // 2)])}  # a typo in one word: another finds it
        candidates: dict[str, str] = {}
        for probe in probes:
            pattern = "%" + probe.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            candidates.update(self.db.execute("SELECT key, label FROM terms WHERE key LIKE ? ESCAPE '\\' "
                                              "ORDER BY sentences DESC LIMIT 300", (pattern,)).fetchall())
        return [candidates[k] for k in difflib.get_close_matches(key, list(candidates), n=n, cutoff=0.5)]

    def terms_by_id(self, ids: Iterable[int]) -> dict[int, TermRow]:
        ids = set(ids)
        if len(self._terms) + len(ids) > MAX_CACHED_TERMS:  # a server answering for days reads every term in time
            self._terms.clear()
        missing = [i for i in ids if i not in self._terms]
        for chunk in _chunks(missing):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute("SELECT id, key, label, kind, sentences, documents FROM terms "
                                       f"WHERE id IN ({marks})", chunk):
                self._terms[row[0]] = TermRow(*row)
        return self._terms

    def edges_of(self, term_id: int) -> list[tuple[int, int, str]]:
        """(the other term's id, sentences together, relation) for every edge of a term."""
        return self.db.execute("SELECT b, count, relation FROM edges WHERE a = ? UNION ALL "
                               "SELECT a, count, relation FROM edges WHERE b = ?", (term_id, term_id)).fetchall()

    def edge(self, x: int, y: int) -> tuple[int, str] | None:
        a, b = min(x, y), max(x, y)
        return self.db.execute("SELECT count, relation FROM edges WHERE a = ? AND b = ?", (a, b)).fetchone()

    def evidence(self, x: int, y: int, limit: int = 3) -> list[Evidence]:
        """Sentences relating two terms, earliest first, with the document each is in."""
        a, b = min(x, y), max(x, y)
        rows = self.db.execute(
            "SELECT d.name, s.text, e.forward, e.relation FROM evidence e JOIN sentences s ON s.id = e.sentence "
            "JOIN documents d ON d.id = s.doc WHERE e.a = ? AND e.b = ? ORDER BY e.sentence LIMIT ?",
            (a, b, limit)).fetchall()
        t = self.terms_by_id((a, b))
        out = []
        for doc, text, forward, relation in rows:
            s, o = (t[a], t[b]) if forward else (t[b], t[a])
            out.append(Evidence(doc, text, s.label, relation or "co-occurs with", o.label))
        return out

    def terms_in_documents_of(self, term_id: int) -> set[int]:
        """Every term mentioned in a document that mentions this one."""
        return {t for (t,) in self.db.execute(
            "SELECT DISTINCT m.term FROM mentions m WHERE m.doc IN (SELECT doc FROM mentions WHERE term = ?)",
            (term_id,))}

    def iter_terms(self) -> Iterator[TermRow]:
        for row in self.db.execute("SELECT id, key, label, kind, sentences, documents FROM terms ORDER BY id"):
            yield TermRow(*row)

    def iter_edges(self, min_count: int = 1) -> Iterator[tuple[int, int, int, str]]:
        yield from self.db.execute("SELECT a, b, count, relation FROM edges WHERE count >= ? ORDER BY a, b",
                                   (min_count,))


__all__ = ["FORMAT", "Evidence", "Graph", "TermRow"]
