"""A knowledge graph built from literature, and the hidden links it reveals (literature-based discovery).

Documents are split into sentences (sentences.py), terms are found in them (terms.py) and related by an extractor
(extract.py: co-occurrence statistics, or triples asked of a model); the graph lives in SQLite with its provenance
(store.py, filled by build.py), is queried by discover.py (neighbours, paths, Swanson's ABC open discovery) and
exported by export.py. Nothing here imports the model or the engine: a model extractor is handed a `complete`
callable by whoever owns the model (the CLI).
"""

from __future__ import annotations

from seekmoe.errors import SeekmoeError


class GraphError(SeekmoeError, ValueError):
    """Bad input to the graph: a file that is no text or no graph, a term not in it, a bad argument."""


class TermNotFound(GraphError):
    """A term the graph does not hold; the message names the closest ones it does."""


__all__ = ["GraphError", "TermNotFound"]
