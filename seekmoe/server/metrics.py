"""Prometheus metrics of one server: its own registry (no process-global state), engine gauges read at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from seekmoe.llm import LLM

# seconds; a CPU decode step of a small model is milliseconds, a queued request may wait for seconds
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EngineCollector:
    """Queue depth, running sequences, cache blocks and per-layer expert load, read from the engine when scraped."""

    def __init__(self, llm: Callable[[], LLM | None]):
        self._llm = llm

    def collect(self) -> Iterator[Metric]:
        llm = self._llm()
        if llm is None:  # still loading
            return
        stats = llm.stats()  # read without the engine's lock: at worst a step old
        yield GaugeMetricFamily("seekmoe_queue_depth", "sequences waiting for a place in the batch",
                                value=stats.waiting)
        yield GaugeMetricFamily("seekmoe_running_sequences", "sequences in the running batch", value=stats.running)
        yield GaugeMetricFamily("seekmoe_cache_blocks", "KV-cache blocks in total", value=stats.cache_blocks)
        yield GaugeMetricFamily("seekmoe_cache_free_blocks", "KV-cache blocks free now",
                                value=stats.free_cache_blocks)
        experts = CounterMetricFamily("seekmoe_expert_tokens", "tokens routed to each expert since start",
                                      labels=["layer", "expert"])
        for layer, counts in stats.expert_counts.items():
            for expert, n in enumerate(counts):
                experts.add_metric([str(layer), str(expert)], n)
        yield experts


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("seekmoe_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("seekmoe_prompt_tokens", "prompt tokens of accepted requests", registry=r)
        self.generation_tokens = Counter("seekmoe_generation_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("seekmoe_time_to_first_token_seconds", "from the request's arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("seekmoe_inter_token_latency_seconds", "between two tokens of one sequence",
                             buckets=ITL_BUCKETS, registry=r)
        self.llm: LLM | None = None  # set once the model has loaded
        r.register(EngineCollector(lambda: self.llm))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
