"""`seekmoe graph build|neighbors|path|discover|export`: a knowledge graph from literature, and the hidden links in it.

The graph package (seekmoe/graph) knows no model; here the model extractor is handed one: the bundled model or
--model, asked with constrained decoding for JSON that follows extract.TRIPLES_SCHEMA.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from seekmoe.cli.parser import positive_int
from seekmoe.errors import CLIError
from seekmoe.graph import GraphError

DESCRIPTION = ("A knowledge graph built from literature: terms found in every sentence (English and Chinese), "
               "relations between them with the sentences they came from, stored in one SQLite file. Open "
               "discovery (Swanson's ABC model) ranks the terms never mentioned together with a term by the terms "
               "that link them.")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="graph_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="build a graph from documents, or add documents to one",
                       description="Read the documents, find terms and relations sentence by sentence, and add them "
                                   "to GRAPH (created if missing). Documents GRAPH already holds (same content) are "
                                   "skipped, so adding a folder again adds only what is new, and a stopped build is "
                                   "finished by running it again. Memory stays flat whatever the corpus size.")
    b.add_argument("docs", nargs="+", metavar="DOCS",
                   help="UTF-8 text files (each one document), JSONL files (one {\"text\": ..., \"id\": ...} "
                        "document a line), or folders searched recursively for .txt, .md, .rst and .jsonl files")
    b.add_argument("--out", required=True, metavar="GRAPH", help="the graph file to write or add to (SQLite)")
    b.add_argument("--extractor", choices=("cooccurrence", "model"), default="cooccurrence",
                   help="cooccurrence: terms by term statistics, related by sharing a sentence, weighted by NPMI "
                        "(fast; no model); model: triples asked of the model for each sentence, as JSON "
                        "constrained to a schema and then validated (slow) (default cooccurrence)")
    b.add_argument("--model", metavar="DIR",
                   help="with --extractor model: a checkpoint folder; default: the bundled seekmoe-tiny-chat")
    b.add_argument("--batch", type=positive_int, default=200, metavar="N",
                   help="documents added per transaction (default 200)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print the build's report as JSON")
    b.set_defaults(func=cmd_build)

    def query(name: str, help: str, description: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=description)
        q.add_argument("graph", metavar="GRAPH", help="a graph file written by seekmoe graph build")
        return q

    q = query("neighbors", "the terms most strongly related to a term, with their sources",
              "The terms most strongly related to TERM (by NPMI over sentences), each with the relation first seen "
              "between them and the sentences that relate them.")
    q.add_argument("term", metavar="TERM", help="the term (any case; singular or plural)")
    q.add_argument("--limit", type=positive_int, default=20, metavar="N", help="most terms to list (default 20)")
    q.add_argument("--min-count", type=positive_int, default=1, metavar="N",
                   help="leave out pairs seen together in fewer than N sentences (default 1)")
    q.add_argument("--evidence", type=_count, default=2, metavar="N",
                   help="source sentences shown for each (default 2)")
    q.add_argument("--json", action="store_true", help="print a JSON array instead of text")
    q.set_defaults(func=cmd_neighbors)

    q = query("path", "the strongest short chain of related terms between two terms",
              "The strongest short chain of related terms from A to C, each step with a sentence behind it.")
    q.add_argument("source", metavar="A", help="the term to start from")
    q.add_argument("target", metavar="C", help="the term to reach")
    q.add_argument("--max-hops", type=positive_int, default=4, metavar="N", help="most steps (default 4)")
    q.add_argument("--min-count", type=positive_int, default=1, metavar="N",
                   help="use only pairs seen together in at least N sentences (default 1)")
    q.add_argument("--json", action="store_true", help="print a JSON array of the steps instead of text")
    q.set_defaults(func=cmd_path)

    q = query("discover", "open discovery: terms never mentioned with TERM, linked to it through others",
              "Swanson's open discovery: the terms C that no document mentions together with TERM, ranked by the "
              "terms B that link them (TERM-B in some documents, B-C in others), each with the B terms and the "
              "sentences behind both links.")
    q.add_argument("term", metavar="TERM", help="the starting term A (any case; singular or plural)")
    q.add_argument("--limit", type=positive_int, default=10, metavar="N", help="most terms to list (default 10)")
    q.add_argument("--min-count", type=positive_int, default=1, metavar="N",
                   help="use only pairs seen together in at least N sentences (default 1; raise it on large "
                        "corpora to follow only repeated links)")
    q.add_argument("--evidence", type=_count, default=2, metavar="N",
                   help="linking terms whose sentences are shown for each result (default 2)")
    q.add_argument("--json", action="store_true",
                   help="print a JSON array of {term, score, via, links, evidence} instead of text")
    q.set_defaults(func=cmd_discover)

    q = query("export", "write a graph as GraphML, or as CSV files for neo4j-admin import",
              "Write GRAPH as GraphML (one file, for Gephi, Cytoscape, networkx) or as the nodes.csv and "
              "relationships.csv that `neo4j-admin database import full` reads (a folder). Written all or "
              "nothing.")
    q.add_argument("--format", choices=("graphml", "neo4j"), required=True,
                   help="graphml: one .graphml file; neo4j: a folder of nodes.csv and relationships.csv")
    q.add_argument("--out", required=True, metavar="PATH", help="the file (graphml) or folder (neo4j) to write")
    q.add_argument("--min-count", type=positive_int, default=1, metavar="N",
                   help="leave out pairs seen together in fewer than N sentences (default 1)")
    q.set_defaults(func=cmd_export)


def model_complete(model: str | None) -> Callable[[str], str]:
    """complete(prompt) for the model extractor: the model's greedy reply, constrained to TRIPLES_SCHEMA."""
    from seekmoe.cli.model_flags import open_llm
    from seekmoe.graph.extract import TRIPLES_SCHEMA

    llm = open_llm(model)
    return lambda prompt: llm.generate(prompt, json_schema=TRIPLES_SCHEMA, max_tokens=256, temperature=0).text


def cmd_build(args: argparse.Namespace, complete: Callable[[str | None], Callable[[str], str]] = model_complete) \
        -> int:
    """complete(--model): the model behind --extractor model (a test hands in its own)."""
    from seekmoe.graph.build import build
    from seekmoe.graph.extract import CooccurrenceExtractor, ModelExtractor

    if args.model is not None and args.extractor != "model":
        raise CLIError("--model is used only with --extractor model")
    extractor = ModelExtractor(complete(args.model)) if args.extractor == "model" else CooccurrenceExtractor()
    try:
        report = build(args.docs, args.out, extractor, batch=args.batch, progress=not args.quiet)
    except GraphError as e:
        raise CLIError(str(e)) from None
    rejected = getattr(extractor, "reasons", {})
    if args.json:
        print(json.dumps({"documents": report.documents, "added": report.added, "skipped": report.skipped,
                          "sentences": report.sentences, "bytes": report.bytes, "seconds": round(report.seconds, 3),
                          "rejected": rejected, "graph": report.graph}, ensure_ascii=False, indent=2))
        return 0
    g = report.graph
    print(f"{report.added:,} document(s) added, {report.skipped:,} already in the graph; {report.sentences:,} "
          f"sentences in {report.seconds:.1f} s")
    print(f"{args.out}: {g['documents']:,} documents, {g['sentences']:,} sentences, {g['terms']:,} terms, "
          f"{g['edges']:,} edges ({g['extractor']})")
    if rejected:
        print("model replies refused: " + ", ".join(f"{n} {why}" for why, n in sorted(rejected.items())))
    return 0


def _open(path: str):
    from seekmoe.graph.store import Graph

    try:
        return Graph.open(path)
    except GraphError as e:
        raise CLIError(str(e)) from None


def _run(args: argparse.Namespace, query: Callable) -> list[dict]:
    with _open(args.graph) as graph:
        try:
            return query(graph)
        except GraphError as e:
            raise CLIError(str(e)) from None


def _print_json(rows: list[dict]) -> None:
    print(json.dumps(rows, ensure_ascii=False, indent=2))


def _cite(e: dict, indent: str = "    ") -> str:
    return f"{indent}[{e['doc']}] {e['sentence']}"  # the sentence says which way the relation goes


def cmd_neighbors(args: argparse.Namespace) -> int:
    from seekmoe.graph.discover import neighbors

    rows = _run(args, lambda g: neighbors(g, args.term, limit=args.limit, min_count=args.min_count,
                                          evidence=args.evidence))
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no terms related to {args.term!r}", file=sys.stderr)
    for r in rows:
        print(f"{r['weight']:7.3f}  {r['term']}  ({r['count']} sentence(s))")
        for e in r["evidence"]:
            print(_cite(e))
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    from seekmoe.graph.discover import path

    hops = _run(args, lambda g: path(g, args.source, args.target, max_hops=args.max_hops,
                                     min_count=args.min_count))
    if args.json:
        _print_json(hops)
    elif hops:
        print(" -> ".join([hops[0]["from"], *(h["to"] for h in hops)]))
        for h in hops:
            print(f"  {h['from']} -- {h['to']}  (weight {h['weight']:.3f})")
            for e in h["evidence"]:
                print(_cite(e))
    if not hops:
        print(f"no path from {args.source!r} to {args.target!r} within {args.max_hops} steps", file=sys.stderr)
        return 1
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from seekmoe.graph.discover import discover

    rows = _run(args, lambda g: discover(g, args.term, limit=args.limit, min_count=args.min_count,
                                         evidence=args.evidence))
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"nothing to discover from {args.term!r}: no term is linked to it through another", file=sys.stderr)
    for i, r in enumerate(rows, 1):
        links = len(r["via"])
        print(f"{i:>2}. {r['term']}  ({links} linking term{'s' if links > 1 else ''}, score {r['score']:.3f}: "
              f"{', '.join(r['via'][:5])}{', ...' if links > 5 else ''})")
        for e in r["evidence"]:
            print(_cite(e, "      "))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from seekmoe.graph.export import export

    with _open(args.graph) as graph:
        try:
            files = export(graph, args.format, args.out, min_count=args.min_count)
        except GraphError as e:
            raise CLIError(str(e)) from None
    print("wrote " + ", ".join(map(str, files)))
    return 0


__all__ = ["DESCRIPTION", "add_arguments"]
