"""The /v2/graph routes' logic: questions to the graph file the server was started with (seekmoe serve --graph).

The graph needs no model, so these answer while the model loads. Queries run on a thread (a discovery on a large
graph reads thousands of rows), one at a time: the SQLite connection is shared and opened read-only.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from seekmoe.graph import GraphError, TermNotFound
from seekmoe.graph import discover as queries
from seekmoe.graph.store import Graph
from seekmoe.server import schemas as s
from seekmoe.server.errors import http_error

T = TypeVar("T")


class GraphService:
    def __init__(self, path: str | Path):
        self.graph = Graph.open(path)  # GraphError for a file that is not a graph: the server does not start
        self.lock = threading.Lock()

    async def _run(self, query: Callable[[Graph], T], param: str | None = "term") -> T:
        def locked() -> T:
            with self.lock:
                return query(self.graph)

        try:
            return await asyncio.to_thread(locked)
        except GraphError as e:  # a term not in the graph (404), a bad argument (400): errors.ANSWERS says which
            raise http_error(e, param=param if isinstance(e, TermNotFound) else None) from e

    async def info(self) -> s.GraphInfo:
        return s.GraphInfo(**await self._run(Graph.stats))

    async def neighbors(self, term: str, limit: int, min_count: int, evidence: int) -> s.GraphNeighbors:
        rows = await self._run(lambda g: queries.neighbors(g, term, limit=limit, min_count=min_count,
                                                           evidence=evidence))
        return s.GraphNeighbors(term=term, data=rows)

    async def path(self, source: str, target: str, max_hops: int, min_count: int) -> s.GraphPath:
        hops = await self._run(lambda g: queries.path(g, source, target, max_hops=max_hops, min_count=min_count),
                               param=None)  # either end may be the missing one: the message names it
        return s.GraphPath(source=source, target=target, data=hops)

    async def discover(self, term: str, limit: int, min_count: int, evidence: int) -> s.GraphDiscover:
        rows = await self._run(lambda g: queries.discover(g, term, limit=limit, min_count=min_count,
                                                          evidence=evidence))
        return s.GraphDiscover(term=term, data=rows)

    def close(self) -> None:
        with self.lock:
            self.graph.close()
