"""Attacks on `seekmoe serve` with one valid key (issue 17): what each one costs the server and everyone else.

Starts `seekmoe serve` (the bundled model unless --model) in a subprocess on a free loopback port with one API key
and one admin key, then sends each attack in turn while a second thread asks /health every 50 ms and a third reads
the server's resident memory (/proc/PID/status) every 20 ms. For each attack it prints the statuses it got, how
long it took, the worst /health latency during it and the server's peak memory growth over its resident size
before the attack. Every request's cost should be bounded by a setting before the work starts, so: clear 4xx,
/health under a second throughout, memory growth of megabytes, not gigabytes.

    .venv/bin/python bench/serve_abuse.py [--model DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from serve_process import start_server

KEY, ADMIN = "sk-bench-tenant", "sk-bench-admin"
CHINESE = ("今天天气很好，我们一起去公园散步吧。" * 300)[:4096]  # 12 KB: 3,100 s of audio at speed 0.25
OTHERS = [f"sk-bench-other-{i}" for i in range(5)]  # other tenants
HEADERS = {"Authorization": f"Bearer {KEY}"}
PROSE = ("The keeper climbed the stairs of the old lighthouse every evening, lit the lamp, and wrote the weather "
         "in his book. Ships passed in the night, and some of them signalled back. ")


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text)[1])


class Watch:
    """/health latency and the server's resident memory, sampled while an attack runs."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.stop = threading.Event()
        self.worst_health, self.health_errors, self.peak, self.base = 0.0, 0, 0, rss_kib(pid)

    def _health(self) -> None:
        with httpx.Client(timeout=60) as c:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    ok = c.get(f"{self.url}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst_health = max(self.worst_health, time.perf_counter() - start)
                self.health_errors += not ok
                self.stop.wait(0.05)

    def _memory(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.stop.wait(0.02)

    def __enter__(self) -> Watch:
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._health, self._memory)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)  # one more sample each after the attack's answer
        self.stop.set()
        for t in self.threads:
            t.join()


def post(url: str, path: str, body: dict, timeout: float = 300, headers: dict | None = None) -> str:
    """The status, with the error code when there is one ('400 context_length_exceeded'); 'gone' for a client that
    hung up on purpose (timeout)."""
    try:
        r = httpx.post(url + path, json=body, headers=headers or HEADERS, timeout=timeout)
    except httpx.TimeoutException:
        return "gone"
    code = ""
    if r.status_code >= 400:
        try:
            code = " " + (r.json()["error"]["code"] or r.json()["error"]["type"])
        except Exception:
            code = ""
    return f"{r.status_code}{code}"


def together(n: int, fn: Callable[[], str]) -> str:
    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(lambda _: fn(), range(n)))
    return ", ".join(f"{s} x{statuses.count(s)}" if statuses.count(s) > 1 else s for s in dict.fromkeys(statuses))


def attacks(url: str) -> dict[str, tuple[str, Callable[[], str]]]:
    long_doc = PROSE * 600  # ~100k characters, as the README's headline example
    punct = "a" + "." * 40_000 + "x"

    def summaries_abandoned() -> str:
        body = {"text": long_doc, "max_length": 200, "method": "abstractive"}  # the long one: it uses the model
        got = together(6, lambda: post(url, "/v2/summarize", body, timeout=2))
        start = time.perf_counter()  # what an unrelated chat then waits
        chat = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello!"}],
                                                 "max_tokens": 8}, timeout=300)
        return f"{got}; then a chat: {chat} in {time.perf_counter() - start:.1f} s"

    def prefix_timing() -> str:
        """Tenant one sends a long prompt; then each other key, once, the same prompt with a new ending (a hit in a
        shared cache) and one that differs from its first token (a miss anywhere); tenant one too, for the hit."""
        system = PROSE * 6

        def ms(key: str, prompt: str) -> float:
            start = time.perf_counter()
            post(url, "/v1/completions", {"prompt": prompt, "max_tokens": 1},
                 headers={"Authorization": f"Bearer {key}"})
            return 1000 * (time.perf_counter() - start)

        ms(KEY, system + "Q0")
        own = sorted(ms(KEY, system + f"Q{i}") for i in range(1, 6))
        seen = sorted(ms(k, system + "Q9") for k in OTHERS)
        unseen = sorted(ms(k, f"{i}" + system[1:] + "Q9") for i, k in enumerate(OTHERS))
        return (f"200; median ms: own key, its prompt {own[2]:.0f}; {len(OTHERS)} other keys, that prompt "
                f"{seen[len(seen) // 2]:.0f}, a new one {unseen[len(unseen) // 2]:.0f}")

    return {
        "stop": ("30,000-char stop string, n 4, /v1/completions",
                 lambda: post(url, "/v1/completions", {"prompt": "Hi", "stop": ["x" * 30_000], "n": 4,
                                                       "max_tokens": 16})),
        "summary-punct": ("/v2/summarize extractive, 'a' + 40,000 '.' + 'x'",
                          lambda: post(url, "/v2/summarize", {"text": punct, "method": "extractive"})),
        "summary-punct-abs": ("/v2/summarize abstractive, the same text",
                              lambda: post(url, "/v2/summarize", {"text": punct, "max_length": 50})),
        "summary-huge": ("/v2/summarize, 12 MB of text",
                         lambda: post(url, "/v2/summarize", {"text": PROSE * 60_000, "method": "extractive"})),
        "prompt-8m": ("/v2/generate, prompt '1' x 8,000,000",
                      lambda: post(url, "/v2/generate", {"prompt": "1" * 8_000_000, "max_tokens": 1})),
        "prompts-300k": ("/v1/completions, 300,000 prompts",
                         lambda: post(url, "/v1/completions", {"prompt": ["a"] * 300_000, "max_tokens": 1})),
        "chat-huge": ("/v1/chat/completions, a 10 MB message",
                      lambda: post(url, "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": "y" * 10_000_000}]})),
        "summaries-abandoned": ("6 summaries of 100k chars, clients gone after 2 s",
                                summaries_abandoned),
        "speech": ("/v1/audio/speech, 6 at once, 4,096 Chinese characters at speed 0.25",
                   lambda: together(6, lambda: post(url, "/v1/audio/speech", {
                       "model": "tts-1", "voice": "alloy", "input": CHINESE,
                       "speed": 0.25}))),
        "speech-ok": ("/v1/audio/speech, 6 at once, 4,096 chars of '9,' (just under the limit)",
                      lambda: together(6, lambda: post(url, "/v1/audio/speech", {
                          "model": "tts-1", "voice": "alloy", "input": "9," * 2048}))),
        "log": ("GET /x%0a<forged line> (no key)",
                lambda: str(httpx.get(f"{url}/x%0a127.0.0.1%20%22GET%20/admin%22%20200").status_code)),
        "metrics": ("GET /metrics with a tenant's key",
                    lambda: str(httpx.get(f"{url}/metrics", headers=HEADERS).status_code)),
        "prefix": ("prefix cache timing across keys", prefix_timing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder to serve (default: the bundled model)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these attacks")
    a = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        keys = ["--api-key", KEY, *(f"--api-key={k}" for k in OTHERS), "--admin-key", ADMIN]
        proc, url = start_server([*([a.model] if a.model else []), *keys], log)
        try:
            for name, (what, attack) in attacks(url).items():
                if a.only and name not in a.only:
                    continue
                print(f"{name} ...", file=sys.stderr)
                with Watch(url, proc.pid) as w:
                    start = time.perf_counter()
                    status = attack()
                    took = time.perf_counter() - start
                rows.append((name, what, status, took, w.worst_health, w.health_errors, (w.peak - w.base) / 1024))
            forged = [line for line in log.read_text().splitlines() if line.startswith('127.0.0.1 "GET /admin"')]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("\n`seekmoe serve` under attack, one valid key\n")
    print("| attack | what | status | time (s) | /health worst (s) | /health failures | memory growth (MiB) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, what, status, took, health, errors, grew in rows:
        print(f"| {name} | {what} | {status} | {took:.2f} | {health:.3f} | {errors} | {grew:+.0f} |")
    worst = max((r[4] for r in rows), default=0.0)
    verdict = "met" if worst < 1 else "NOT met"
    print(f"\n/health worst latency over all attacks: {worst:.3f} s (goal < 1 s) -> {verdict}")
    print(f"forged lines in the server log: {len(forged)}")


if __name__ == "__main__":
    main()
