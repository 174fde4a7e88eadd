"""A graph out to other tools: GraphML (Gephi, Cytoscape, networkx, yEd) and the CSV files neo4j-admin imports.

Neo4j: `neo4j-admin database import full --nodes=nodes.csv --relationships=relationships.csv`. Node ids are the
term ids; each node's label is its kind (Term, Name, Quantity); a relationship's type is the verb first seen
between its terms (REDUCES), or CO_OCCURS_WITH. The CSV files are written row by row from the database, so memory
stays flat; GraphML goes through networkx, which holds the graph in memory.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import networkx as nx

from seekmoe.files import atomic_write, write_folder
from seekmoe.graph import GraphError
from seekmoe.graph.discover import weight
from seekmoe.graph.store import Graph

FORMATS = ("graphml", "neo4j")
_LABELS = {"term": "Term", "name": "Name", "quantity": "Quantity"}


def relation_type(relation: str) -> str:
    """A Neo4j relationship type for a relation: 'is associated with' -> IS_ASSOCIATED_WITH."""
    words = re.findall(r"[^\W_]+", relation.upper())
    return "_".join(words)[:60] or "CO_OCCURS_WITH"


def to_networkx(graph: Graph, min_count: int = 1) -> nx.Graph:
    """The graph as networkx's: nodes by term id with label, kind and counts; edges with count, weight, relation."""
    g = nx.Graph(documents=int(graph.meta("documents") or 0), sentences=graph.sentence_count,
                 extractor=graph.meta("extractor") or "")
    n = {}
    for t in graph.iter_terms():
        n[t.id] = t.sentences
        g.add_node(str(t.id), label=t.label, kind=t.kind, sentences=t.sentences, documents=t.documents)
    total = graph.sentence_count
    for a, b, count, relation in graph.iter_edges(min_count):
        g.add_edge(str(a), str(b), count=count, weight=weight(count, n[a], n[b], total),
                   relation=relation or "co-occurs with")
    return g


def export(graph: Graph, fmt: str, out: str | Path, min_count: int = 1) -> list[Path]:
    """Write `graph` as `fmt` (graphml: one file; neo4j: a folder of nodes.csv and relationships.csv), all or
    nothing. Returns the files written."""
    if fmt not in FORMATS:
        raise GraphError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if not out.parent.is_dir():
        raise GraphError(f"{out.parent}: no such folder to export into")
    if fmt == "graphml":
        if out.is_dir():
            raise GraphError(f"{out}: is a folder, expected a .graphml file to write")
        g = to_networkx(graph, min_count)
        atomic_write(out, lambda tmp: nx.write_graphml(g, tmp))
        return [out]
    if out.exists() and not out.is_dir():
        raise GraphError(f"{out}: is a file, expected a folder for nodes.csv and relationships.csv")
    write_folder(out, lambda tmp: _write_neo4j(graph, tmp, min_count))
    return [out / "nodes.csv", out / "relationships.csv"]


def _write_neo4j(graph: Graph, folder: Path, min_count: int) -> None:
    n = {}
    with open(folder / "nodes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id:ID", "name", "kind", "sentences:int", "documents:int", ":LABEL"])
        for t in graph.iter_terms():
            n[t.id] = t.sentences
            w.writerow([t.id, t.label, t.kind, t.sentences, t.documents, _LABELS.get(t.kind, "Term")])
    total = graph.sentence_count
    with open(folder / "relationships.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([":START_ID", ":END_ID", ":TYPE", "weight:float", "count:int", "relation"])
        for a, b, count, relation in graph.iter_edges(min_count):
            w.writerow([a, b, relation_type(relation), f"{weight(count, n[a], n[b], total):.6f}", count,
                        relation or "co-occurs with"])


__all__ = ["FORMATS", "export", "relation_type", "to_networkx"]
