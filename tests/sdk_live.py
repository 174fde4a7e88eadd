"""What the Java and C++ SDK tests share (tests/test_sdk_java.py, tests/test_sdk_cpp.py): the servers their test
programs run against, how a scenario is run and judged, and the tests themselves (Scenarios).

Each test program (sdk/java/src/test/java/seekmoe/SdkTest.java, sdk/cpp/tests/sdk_test.cpp) takes scenario names and
prints "PASS name" or "FAIL name: why"; it finds the servers in the environment:
    SEEKMOE_URL, SEEKMOE_KEY   a real server on a tiny model, with a key and a 64 KiB body limit (413 is cheap)
    SEEKMOE_BUSY_URL           a real server with one place in the batch and one in the queue (429 while the test
                               holds both with long generations)
    SEEKMOE_CUT_URL            a fake that sends one event of a stream then drops the connection, answers late, or
                               answers with an image that is not base64
    SEEKMOE_DEAD_URL           a port nothing listens on
and, for the image scenarios (Scenarios.grounded):
    SEEKMOE_GROUNDED_URL       a real server on the grounded model (tests/grounded.py), the same key: it answers
                               SEEKMOE_QUESTION about the PNG file SEEKMOE_PICTURE with SEEKMOE_ANSWER, a region
    SEEKMOE_ANSWER_GRAMMAR     a grammar (/v2/generate's grammar field) whose only sentence is SEEKMOE_ANSWER
    SEEKMOE_OUT                a folder the program writes the annotated PNGs it got into, for the test to check
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from seekmoe.llm import LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder
from tests.grounded import ANSWER, PICTURE, QUESTION, check_annotated

KEY = "sk-sdk"
BODY_LIMIT = 64 << 10
HOLD_TOKENS = 8000  # what the busy server's holders write: seconds of work, far longer than a JVM takes to start
SLOW = 4  # seconds the fake takes to answer the prompt "slow": past the test programs' timeouts (1 s)
REJECTED = 'seekmoe_requests_total{endpoint="/v2/generate",status="429"}'


@dataclass(frozen=True)
class Servers:
    url: str
    busy_url: str
    cut_url: str
    dead_url: str
    cut_requests: Counter  # path -> requests the fake saw

    def env(self) -> dict[str, str]:
        return {"SEEKMOE_URL": self.url, "SEEKMOE_KEY": KEY, "SEEKMOE_BUSY_URL": self.busy_url,
                "SEEKMOE_CUT_URL": self.cut_url, "SEEKMOE_DEAD_URL": self.dead_url}


class CutStreams(BaseHTTPRequestHandler):
    """One event then a dropped connection: chunked on /v2/generate (the cut leaves a chunk unfinished), unframed on
    /v1/chat/completions (the body ends at the close, without data: [DONE]). The prompt "error" gets a whole
    stream whose event is an error, as the server sends when the engine fails mid-stream; the prompt "slow" an
    answer after SLOW seconds; the prompt "bad image" an answer whose image is not base64."""

    protocol_version = "HTTP/1.1"
    requests: Counter

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests[self.path] += 1
        if body.get("prompt") == "slow":  # an answer later than the client's timeout
            time.sleep(SLOW)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if body.get("prompt") == "bad image":  # what no seekmoe sends: the SDK must refuse it, not crash
            answer = json.dumps({"id": "gen-bad", "generated_text": "x", "finish_reason": "stop", "images": ["iVB*"],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if self.path == "/v2/generate" and body.get("prompt") == "error":
            error = {"error": {"message": "the engine stopped", "type": "server_error", "param": None,
                               "code": "engine_failed"}}
            events = f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
            self.send_header("Content-Length", str(len(events)))
            self.end_headers()
            self.wfile.write(events)
            return
        if self.path == "/v2/generate":
            event = {"id": "gen-cut", "text": "Hel", "finish_reason": None}
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = f"data: {json.dumps(event)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            event = {"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args):
        pass


@contextmanager
def servers(tmp_path_factory):
    folder = tiny_model_folder(tmp_path_factory.mktemp("sdk"), max_position_embeddings=128)
    handler = type("Cut", (CutStreams,), {"requests": Counter()})
    fake = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=fake.serve_forever, name="sdk-cut-streams", daemon=True).start()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    main = ServeConfig(api_keys=(KEY,), max_body_bytes=BODY_LIMIT)
    busy = ServeConfig(max_num_seqs=1, max_queue=1)
    long = tiny_model_folder(tmp_path_factory.mktemp("sdk-busy"), max_position_embeddings=HOLD_TOKENS + 64)
    try:
        with running_server(main, lambda: LLM(folder)) as (url, _), \
                running_server(busy, lambda: LLM(long, max_num_seqs=1, max_waiting=1)) as (busy_url, _):
            yield Servers(url, busy_url, f"http://127.0.0.1:{fake.server_port}", f"http://127.0.0.1:{dead}",
                          handler.requests)
    finally:
        fake.shutdown()
        fake.server_close()


def check(run: subprocess.CompletedProcess, name: str) -> None:
    """The scenario passed: the program said so and exited 0."""
    assert run.returncode == 0 and f"PASS {name}" in run.stdout, f"{run.stdout}\n{run.stderr}"


def run(command: list[str], name: str, servers: Servers, timeout: float = 300, env: dict[str, str] | None = None):
    check(subprocess.run([*command, name], env=servers.env() | (env or {}), capture_output=True, text=True,
                         timeout=timeout), name)


def rejected(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(REJECTED + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_busy(command: list[str], name: str, servers: Servers) -> None:
    """The scenario with both places of the busy server held, freed once the program was refused twice: once
    without retries, once by the client that retries until a place frees."""
    body = {"prompt": "x", "max_tokens": HOLD_TOKENS, "ignore_eos": True, "stream": True}
    url = servers.busy_url
    with ExitStack() as holders:
        client = holders.enter_context(httpx.Client(timeout=60))
        first = holders.enter_context(client.stream("POST", f"{url}/v2/generate", json=body))
        lines = first.iter_lines()  # kept: a line iterator collected closes its connection, and the server cancels
        next(line for line in lines if line.startswith("data: "))  # it runs: it holds the batch's place
        holders.enter_context(client.stream("POST", f"{url}/v2/generate", json=body))  # it waits in the queue
        before = rejected(url)
        program = subprocess.Popen([*command, name], env=servers.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while rejected(url) < before + 2 and program.poll() is None:
            assert time.monotonic() < deadline, "the program was not refused twice in 120 s"
            time.sleep(0.05)
    # both holders disconnected: their places free up and the retrying client gets one
    out, err = program.communicate(timeout=120)
    check(subprocess.CompletedProcess(program.args, program.returncode, out, err), name)
    assert rejected(url) >= before + 2


def camel(name: str) -> str:
    """A scenario's name as Java spells a method: stream_cut -> streamCut."""
    return re.sub(r"_([a-z])", lambda m: m[1].upper(), name)


class Scenarios:
    """The scenarios both SDKs' test programs pass, as tests. A subclass per language runs them: the module
    gives the `program` fixture (its test program's command) and the class `spell` (a scenario's name as that
    program spells it)."""

    @staticmethod
    def spell(name: str) -> str:
        return name

    @pytest.fixture(scope="class")
    @staticmethod
    def live(tmp_path_factory):
        with servers(tmp_path_factory) as s:
            yield s

    @pytest.mark.parametrize("name", ["generate", "generate_stream", "chat_and_stream", "leave_stream_early",
                                      "summarize_and_expert_load", "wrong_key", "bad_request", "too_large",
                                      "connection_refused", "bad_options"])
    def test_scenario(self, program, live, name):
        run(program, self.spell(name), live)

    @pytest.fixture(scope="class")
    @staticmethod
    def grounded(grounded_folder, tmp_path_factory):
        """The image scenarios' environment: a server on the grounded model, the picture as a file."""
        picture = tmp_path_factory.mktemp("sdk-images") / "picture.png"
        picture.write_bytes(PICTURE)
        with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(grounded_folder)) as (url, _):
            yield {"SEEKMOE_GROUNDED_URL": url, "SEEKMOE_PICTURE": str(picture), "SEEKMOE_QUESTION": QUESTION,
                   "SEEKMOE_ANSWER": ANSWER, "SEEKMOE_ANSWER_GRAMMAR": f"start: {json.dumps(ANSWER)}"}

    @pytest.mark.parametrize("name", ["image_in", "no_images", "image_errors"])
    def test_image_scenario(self, program, live, grounded, name):
        run(program, self.spell(name), live, env=grounded)

    @pytest.mark.parametrize("name, files", [
        ("annotated_images", ["chat.png", "generate.png"]),  # /v2/generate's images, the chat message's
        ("stream_images", ["chat-stream.png", "generate-stream.png"]),  # on the chunk that finishes each stream
    ])
    def test_annotated_images_are_the_png_the_server_drew(self, program, live, grounded, name, files, tmp_path):
        run(program, self.spell(name), live, env=grounded | {"SEEKMOE_OUT": str(tmp_path)})
        assert sorted(p.name for p in tmp_path.iterdir()) == files
        for file in files:
            check_annotated((tmp_path / file).read_bytes())  # the picture's size, enlarged, the region drawn

    def test_a_full_queue_is_refused_then_retried_until_a_place_frees(self, program, live):
        run_busy(program, self.spell("busy_retry"), live)

    def test_a_stream_cut_midway_raises_after_its_text_and_is_not_retried(self, program, live):
        before = live.cut_requests.copy()
        run(program, self.spell("stream_cut"), live)
        seen = live.cut_requests - before
        assert seen == {"/v2/generate": 2, "/v1/chat/completions": 1}, seen  # the cut and the error event, each once

    def test_a_timeout_raises_and_is_not_retried(self, program, live):
        before = live.cut_requests.copy()
        run(program, self.spell("timeout"), live)
        assert live.cut_requests - before == {"/v2/generate": 1}
