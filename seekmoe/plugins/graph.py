"""The "graph" plugin: a chat model looks terms up in the knowledge graph (seekmoe graph build) and answers "what
links X and Y?" with the sentences, and the documents, behind each link.

The graph is the file `seekmoe serve --graph GRAPH` was started with, which it hands to its tool workers in the
environment variable SEEKMOE_GRAPH (a worker is a separate process that imports this module by name). Each call
opens the file read-only; the answer is plain text, short enough for a small model's context.
"""

from __future__ import annotations

import os

from seekmoe.graph import GraphError
from seekmoe.plugins import Plugin

ENV = "SEEKMOE_GRAPH"
OPERATIONS = ("neighbors", "path", "discover")
MAX_SENTENCE_CHARS = 300  # a cited sentence is cut here: ten of them must fit in a tool result


def _cite(e: dict) -> str:
    sentence = e["sentence"] if len(e["sentence"]) <= MAX_SENTENCE_CHARS else e["sentence"][:MAX_SENTENCE_CHARS] + "…"
    return f"[{e['doc']}] {sentence}"


def run(operation: str, term: str, target: str | None = None, limit: int = 5) -> str:
    # imported here: finding the installed plugins (every `seekmoe serve`) need not load networkx
    from seekmoe.graph.discover import discover, neighbors, path
    from seekmoe.graph.store import Graph

    file = os.environ.get(ENV)
    if not file:
        raise GraphError("this server has no knowledge graph (it was started without --graph)")
    # verify=False: quick_check reads the whole file, and the server checked it when it started
    with Graph.open(file, verify=False) as g:
        if operation == "neighbors":
            rows = neighbors(g, term, limit=limit, evidence=1)
            if not rows:
                return f"Nothing in the literature is related to {term!r}."
            lines = [f"Terms related to {term!r} in the literature, strongest first:"]
            lines += [f"{i}. {r['term']}: " + "; ".join(map(_cite, r["evidence"])) for i, r in enumerate(rows, 1)]
        elif operation == "path":
            if not target:
                raise GraphError("path needs a target: the second term")
            hops = path(g, term, target)
            if not hops:
                return f"No chain of related terms links {term!r} to {target!r} in the literature."
            lines = [" -> ".join([hops[0]["from"], *(h["to"] for h in hops)]), "Sources:"]
            lines += [f"- {h['from']} / {h['to']}: " + "; ".join(map(_cite, h["evidence"])) for h in hops]
        else:
            rows = discover(g, term, limit=limit, evidence=1)
            if not rows:
                return f"No hidden links from {term!r}: nothing is linked to it through another term."
            lines = [f"Terms never mentioned together with {term!r}, linked to it through others:"]
            for i, r in enumerate(rows, 1):
                lines.append(f"{i}. {r['term']} (via {', '.join(r['via'][:3])})")
                lines += [f"   {_cite(e)}" for e in r["evidence"]]
    return "\n".join(lines)


_TERM = {"type": "string", "minLength": 1, "maxLength": 200}
plugin = Plugin(
    name="graph",
    # kept short: the whole definition goes into the prompt of every request that offers the tool
    description=("Look terms up in the knowledge graph built from the literature, with source sentences: "
                 "neighbors (what a term is related to), path (what links term and target), discover (terms "
                 "never written together with term but linked through others)."),
    parameters={
        "type": "object",
        "properties": {
            "operation": {"type": "string", "enum": list(OPERATIONS)},
            "term": {**_TERM, "description": "e.g. fish oil"},
            "target": {**_TERM, "description": "path: the second term"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["operation", "term"],
        "additionalProperties": False,
    },
    run=run,
)
