"""Building a graph: documents streamed from files, split, extracted, and added in batches.

Memory holds one batch of documents (and what was found in them) at a time, whatever the corpus size; the graph
itself grows on disk. Adding to an existing graph skips the documents it already holds (by content hash), so a
build that was stopped is finished by running it again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seekmoe.graph import GraphError
from seekmoe.graph.extract import Extractor
from seekmoe.graph.sentences import find_files, read_documents, split_sentences
from seekmoe.graph.store import Graph

BATCH_DOCUMENTS = 200
# a batch ends at this many sentences too: what a sentence yields (terms, up to ~100 pairs) is held until the batch
# is written, and one long document has thousands
BATCH_SENTENCES = 2000


@dataclass
class BuildReport:
    documents: int = 0  # read from the inputs
    added: int = 0  # new to the graph
    skipped: int = 0  # already in it (same content)
    sentences: int = 0  # added
    bytes: int = 0  # read
    seconds: float = 0.0
    graph: dict = field(default_factory=dict)  # Graph.stats() after the build


def build(paths: list[str | Path], out: str | Path, extractor: Extractor, *, batch: int = BATCH_DOCUMENTS,
          progress: bool = False) -> BuildReport:
    """Add the documents under `paths` to the graph file `out` (created if missing) with `extractor`."""
    if batch < 1:
        raise GraphError(f"batch must be >= 1, got {batch}")
    start = time.perf_counter()
    files = find_files(paths)  # errors about the inputs before the graph file is touched
    named = frozenset(Path(p) for p in paths if Path(p).is_file())
    report = BuildReport()
    total = sum(f.stat().st_size for f in files)
    new = not Path(out).exists()
    try:
        _build(files, named, Path(out), extractor, batch, progress, total, report)
        if not report.documents:
            raise GraphError(f"no documents with text in {', '.join(map(str, paths))}")
    except BaseException:
        if new and not report.added:  # a failed first build leaves no empty graph behind
            Path(out).unlink(missing_ok=True)
        raise
    report.seconds = time.perf_counter() - start
    return report


def _build(files: list[Path], named: frozenset[Path], out: Path, extractor: Extractor, batch: int, progress: bool,
           total: int, report: BuildReport) -> None:
    from tqdm import tqdm

    with Graph.create_or_open(out, extractor.name) as graph, \
            tqdm(total=total, unit="B", unit_scale=True, desc="graph build", file=sys.stderr,
                 disable=not progress, dynamic_ncols=True) as bar:
        pending = []
        held = 0  # sentences in pending

        def flush() -> None:
            added, sentences = graph.add(pending)
            report.added += added
            report.sentences += sentences
            report.skipped += len(pending) - added
            pending.clear()
            bar.set_postfix(docs=report.documents, sentences=report.sentences, refresh=False)

        for doc in read_documents(files, named):
            report.documents += 1
            report.bytes += doc.size
            bar.update(doc.size)
            if graph.has_document(doc.digest):  # skipped before the (costly) extraction
                report.skipped += 1
                continue
            sentences = split_sentences(doc.text)
            pending.append((doc, sentences, [extractor.extract(s) for s in sentences]))
            held += len(sentences)
            if len(pending) >= batch or held >= BATCH_SENTENCES:
                flush()
                held = 0
        if pending:
            flush()
        report.graph = graph.stats()


__all__ = ["BuildReport", "build"]
