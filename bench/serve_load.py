"""Load test of `seekmoe serve`: concurrent streaming clients on loopback, bounded in count and time.

Unless --url is given it starts its own server, `seekmoe serve` in a subprocess on a free loopback port, serving
random weights with the bundled seekmoe-tiny config and tokenizer (--model serves a folder instead). Then:
one client alone for --baseline-seconds, and --clients clients together for --seconds. Each client loops on
POST /v1/completions with stream: true (max_tokens, ignore_eos, usage in the last chunk) until the time is up,
when requests still running are cut (their tokens so far count). A 429 waits its Retry-After and tries again.

Measured at the client: generated tokens/s over the window (usage of finished requests, chunks of cut ones),
time to first token, the gaps between streamed chunks (inter-token latency: one chunk is one token except where
text is held back, e.g. a character split over tokens), and errors by HTTP status.

    .venv/bin/python bench/serve_load.py [--clients 64] [--seconds 60] [--max-tokens 64] [--url URL --api-key KEY]

Prints a markdown table and whether the goals of issue 5 are met (errors other than 429: none; aggregate tokens/s
at least 5x one client's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from serve_process import start_server

PROMPT = "The old lighthouse keeper climbed the stairs and"


@dataclass
class Stats:
    tokens: int = 0
    requests: int = 0  # finished ones
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


async def one_request(client: httpx.AsyncClient, url: str, body: dict, stats: Stats) -> float:
    """Stream one completion into stats; returns seconds to wait before the next (a 429's Retry-After)."""
    start = time.perf_counter()
    last, chunks = None, 0
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                stats.errors[str(r.status_code)] += 1
                return float(r.headers.get("retry-after", 1)) if r.status_code == 429 else 0.0
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    stats.errors["stream error"] += 1
                    break
                if chunk.get("usage"):  # the last chunk: the exact count replaces the chunks counted
                    stats.tokens += chunk["usage"]["completion_tokens"] - chunks
                    stats.requests += 1
                    continue
                if not chunk["choices"] or not chunk["choices"][0]["text"]:
                    continue
                now = time.perf_counter()
                if last is None:
                    stats.ttft.append(now - start)
                else:
                    stats.itl.append(now - last)
                last, chunks = now, chunks + 1
                stats.tokens += 1
    except httpx.HTTPError as e:
        stats.errors[type(e).__name__] += 1
    return 0.0


async def client_loop(client: httpx.AsyncClient, url: str, body: dict, stats: Stats, end: float) -> None:
    while time.perf_counter() < end:
        wait = await one_request(client, url, body, stats)
        if wait:
            await asyncio.sleep(min(wait, max(end - time.perf_counter(), 0)))


async def run_phase(url: str, key: str | None, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 1.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    stats = Stats()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60.0), limits=limits) as client:
        start = time.perf_counter()
        end = start + seconds
        tasks = [asyncio.create_task(client_loop(client, url, body, stats, end)) for _ in range(clients)]
        await asyncio.wait(tasks, timeout=seconds)
        for t in tasks:  # cut what still runs: its tokens so far count, the server sees a disconnect
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - start
    return {"clients": clients, "seconds": elapsed, "requests": stats.requests, "tokens": stats.tokens,
            "tok_s": stats.tokens / elapsed, "ttft": stats.ttft, "itl": stats.itl, "errors": dict(stats.errors)}


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{1000 * values[min(int(q * len(values)), len(values) - 1)]:.0f}"


def random_model(folder: Path) -> Path:
    """Random weights with the bundled seekmoe-tiny config, and the bundled tokenizer."""
    import torch

    from seekmoe.llm import DEFAULT_MODEL
    from seekmoe.model.checkpoint import save_model
    from seekmoe.model.config import resolve_config
    from seekmoe.model.model import CausalLM
    from seekmoe.text.tokenizer import Tokenizer

    model = CausalLM(resolve_config("seekmoe-tiny"))
    model.init_weights(torch.Generator().manual_seed(0))
    save_model(model, folder)
    Tokenizer.from_pretrained(DEFAULT_MODEL).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64, help="concurrent streaming clients (default 64)")
    parser.add_argument("--seconds", type=float, default=60, help="length of the N-client run (default 60)")
    parser.add_argument("--baseline-seconds", type=float, default=10,
                        help="length of the one-client run first; 0 skips it (default 10)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--api-key", help="key for --url")
    parser.add_argument("--model", help="model folder for the server started here (default: random seekmoe-tiny)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra `seekmoe serve` argument for the server started here, e.g. --server-arg=--int8")
    a = parser.parse_args()
    if a.clients < 1 or a.seconds <= 0 or a.max_tokens < 1:
        parser.error("--clients and --max-tokens must be >= 1 and --seconds > 0")
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = a.url
        if url is None:
            model = Path(a.model) if a.model else random_model(Path(tmp) / "model")
            args = [str(model), "--max-num-seqs", str(max(a.clients, 1)), "--max-queue", str(max(4 * a.clients, 16)),
                    *a.server_arg]
            proc, url = start_server(args, Path(tmp) / "server.log", wait_s=120)
            print(f"server: {url}, model {model}", file=sys.stderr)
        try:
            name = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {a.api_key}"} if a.api_key
                             else {}).json()["data"][0]["id"]
            phases = [(1, a.baseline_seconds)] if a.baseline_seconds > 0 else []
            rows = []
            for clients, seconds in [*phases, (a.clients, a.seconds)]:
                print(f"{clients} client(s) for {seconds:g} s ...", file=sys.stderr)
                rows.append(asyncio.run(run_phase(url, a.api_key, name, clients, seconds, a.max_tokens)))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"\n`seekmoe serve` load: {name}, {a.max_tokens} tokens per request, streaming /v1/completions\n")
    print("| clients | seconds | requests done | generated tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) "
          "| errors by status |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
        print(f"| {r['clients']} | {r['seconds']:.1f} | {r['requests']} | {r['tok_s']:.1f} | {pct(r['ttft'], 0.5)} / "
              f"{pct(r['ttft'], 0.99)} | {pct(r['itl'], 0.5)} / {pct(r['itl'], 0.99)} | {errors} |")
    last = rows[-1]
    bad = {k: v for k, v in last["errors"].items() if k != "429"}
    print(f"\nerrors other than 429: {bad or 'none'} -> {'NOT met' if bad else 'met'}")
    if len(rows) == 2 and rows[0]["tok_s"] > 0:
        ratio = last["tok_s"] / rows[0]["tok_s"]
        print(f"aggregate / one client: {ratio:.1f}x (goal >= 5x) -> {'met' if ratio >= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
