"""Questions to a graph: a term's neighbours, a path between two terms, and open discovery (Swanson's ABC model).

How strongly two terms are related is their normalised pointwise mutual information over sentences,
NPMI = log(p(ab) / (p(a) p(b))) / -log p(ab), in [-1, 1]: 1 when they only ever occur together, 0 when they meet as
often as chance would have them. It is damped by count / (count + 1), because on a large corpus two terms seen once,
in the same sentence, have NPMI 1 on no evidence. Every result here ranks by this weight.

Open discovery from A: the B terms related to A, then the C terms related to those Bs that no document mentions
together with A (Swanson's "fish oil" -> blood viscosity, platelet aggregation -> "Raynaud's disease"). Cs rank by
how many Bs link them to A, as Swanson's and Arrowsmith's did: each B is an independent line of evidence, and a C
reached through one B is whatever that B happens to co-occur with. Ties go to the higher score, the sum over the
linking Bs of min(weight(A, B), weight(B, C)), since a chain is as strong as its weaker link. (Ranked by the score
alone, a rare C seen once beside one B wins: NPMI favours rare pairs.) Generic terms rarely surface as C on a real
corpus: somewhere they share a document with A, which rules them out.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import networkx as nx

from seekmoe.graph import GraphError
from seekmoe.graph.store import Graph, TermRow

MAX_LINKS = 200  # Bs followed from A in discovery, strongest first: bounds the work on a hub term
FANOUT = 40  # neighbours followed from each term when searching a path
MAX_FRONTIER = 400  # terms expanded at one depth: FANOUT ** depth would reach millions at max_hops 8


def weight(count: int, n_a: int, n_b: int, total: int) -> float:
    """Damped NPMI of a pair seen together in `count` of `total` sentences, each alone in n_a and n_b."""
    if count <= 0 or total <= 0:
        return 0.0
    p_ab, p_a, p_b = count / total, n_a / total, n_b / total
    npmi = 1.0 if p_ab >= 1.0 else math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)
    return npmi * count / (count + 1)


def _check(name: str, value: int, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise GraphError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def _related(graph: Graph, term: TermRow, min_count: int, quantities: bool = False) \
        -> list[tuple[TermRow, float, int, str]]:
    """(neighbour, weight, count, relation) of every positively related neighbour, strongest first."""
    edges = [(other, count, rel) for other, count, rel in graph.edges_of(term.id) if count >= min_count]
    rows = graph.terms_by_id(o for o, _, _ in edges)
    total = graph.sentence_count
    out = []
    for other, count, rel in edges:
        row = rows[other]
        if row.kind == "quantity" and not quantities:
            continue
        w = weight(count, term.sentences, row.sentences, total)
        if w > 0:
            out.append((row, w, count, rel))
    out.sort(key=lambda x: (-x[1], -x[2], x[0].key))
    return out


def neighbors(graph: Graph, term: str, *, limit: int = 20, min_count: int = 1, evidence: int = 2) -> list[dict]:
    """The terms most strongly related to `term`, each with the sentences that relate them."""
    _check("limit", limit, 1), _check("min_count", min_count, 1), _check("evidence", evidence, 0)
    t = graph.term(term)
    out = []
    for row, w, count, rel in _related(graph, t, min_count, quantities=True)[:limit]:
        out.append({"term": row.label, "kind": row.kind, "weight": round(w, 4), "count": count,
                    "relation": rel or "co-occurs with",
                    "evidence": [e.to_dict() for e in graph.evidence(t.id, row.id, evidence)]})
    return out


def path(graph: Graph, source: str, target: str, *, max_hops: int = 4, min_count: int = 1,
         evidence: int = 1) -> list[dict]:
    """The strongest short chain of related terms from `source` to `target` ([] when none within max_hops), as hops
    with the sentences behind each. Search grows from both ends (FANOUT strongest neighbours of each term), then
    networkx finds the path of least cost 2 - weight over what was seen: fewer hops first, stronger ones next."""
    _check("max_hops", max_hops, 1), _check("min_count", min_count, 1), _check("evidence", evidence, 0)
    a, c = graph.term(source), graph.term(target)
    if a.id == c.id:
        raise GraphError(f"{source!r} and {target!r} are the same term; give two different ones")
    g = nx.Graph()
    g.add_nodes_from((a.id, c.id))
    fronts, seen = [[a.id], [c.id]], [{a.id}, {c.id}]
    rows: dict[int, TermRow] = {a.id: a, c.id: c}
    for step in range(max_hops):
        if seen[0] & seen[1] and nx.has_path(g, a.id, c.id):
            break
        side = step % 2  # alternate ends: each side reaches about max_hops / 2 deep
        grown: dict[int, None] = {}  # in the order found: the strongest neighbours of the strongest first
        for node in fronts[side]:
            for row, w, _, _ in _related(graph, rows[node], min_count)[:FANOUT]:
                rows[row.id] = row
                g.add_edge(node, row.id, cost=2.0 - w, weight=w)
                if row.id not in seen[side]:
                    grown[row.id] = None
        seen[side] |= set(grown)
        fronts[side] = list(grown)[:MAX_FRONTIER]
    try:
        nodes = nx.shortest_path(g, a.id, c.id, weight="cost")
    except nx.NetworkXNoPath:
        return []
    if len(nodes) - 1 > max_hops:
        return []
    hops = []
    for x, y in itertools.pairwise(nodes):
        count, rel = graph.edge(x, y)
        hops.append({"from": rows[x].label, "to": rows[y].label, "weight": round(g[x][y]["weight"], 4),
                     "count": count, "relation": rel or "co-occurs with",
                     "evidence": [e.to_dict() for e in graph.evidence(x, y, evidence)]})
    return hops


def discover(graph: Graph, term: str, *, limit: int = 10, min_count: int = 1, evidence: int = 2) -> list[dict]:
    """Open discovery: terms never mentioned in a document with `term`, ranked by the terms that link them to it
    (how many, then how strongly).

    Each result: term, score, via (the linking terms, strongest first), links (each B with both weights) and
    evidence (for the strongest links, a sentence relating term to B and one relating B to C)."""
    _check("limit", limit, 1), _check("min_count", min_count, 1), _check("evidence", evidence, 0)
    a = graph.term(term)
    bs = _related(graph, a, min_count)[:MAX_LINKS]
    known = graph.terms_in_documents_of(a.id)  # A itself, and every term it was ever written beside
    scores: dict[int, float] = defaultdict(float)
    links: dict[int, list[tuple[float, TermRow, float, float]]] = defaultdict(list)
    rows: dict[int, TermRow] = {}
    for b, w_ab, _, _ in bs:
        for c, w_bc, _, _ in _related(graph, b, min_count):
            if c.id in known:
                continue
            strength = min(w_ab, w_bc)
            scores[c.id] += strength
            links[c.id].append((strength, b, w_ab, w_bc))
            rows[c.id] = c
    ranked = sorted(scores, key=lambda i: (-len(links[i]), -scores[i], rows[i].key))[:limit]
    out = []
    for c_id in ranked:
        chain = sorted(links[c_id], key=lambda x: (-x[0], x[1].key))
        proof, cited = [], set()
        for _, b, _, _ in chain[:evidence]:
            for x, y in ((a, b), (b, rows[c_id])):
                for e in graph.evidence(x.id, y.id, 1):
                    if (e.doc, e.sentence) not in cited:  # one sentence may back two links: cite it once
                        cited.add((e.doc, e.sentence))
                        proof.append(e.to_dict() | {"link": [x.label, y.label]})
        out.append({"term": rows[c_id].label, "kind": rows[c_id].kind, "score": round(scores[c_id], 4),
                    "via": [b.label for _, b, _, _ in chain],
                    "links": [{"term": b.label, "a_b": round(w_ab, 4), "b_c": round(w_bc, 4)}
                              for _, b, w_ab, w_bc in chain],
                    "evidence": proof})
    return out


__all__ = ["discover", "neighbors", "path", "weight"]
