"""A live server for the client suites (issue 21): a tiny random model behind a real uvicorn on loopback, once per
module, and a guard that fails a test whose client library tries to reach anything but loopback (a cost map, a
tokenizer's BPE file, telemetry): CI has no network."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import pytest

from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

KEY = "sk-clients"
MODEL = "tiny-moe"  # the served name: clients that route on a model name (litellm's openai/...) send it
CONTEXT = 512  # room for a tool prompt (~250 tokens) and its call; a prompt past it is cheap to send

needs_tokenizer = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled tokenizer")


@dataclass(frozen=True)
class Live:
    url: str  # http://127.0.0.1:PORT
    base_url: str  # url + /v1, what OpenAI clients take
    key: str
    model: str


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    folder = tiny_model_folder(tmp_path_factory.mktemp("clients"), max_position_embeddings=CONTEXT)
    config = ServeConfig(api_keys=(KEY,), served_model_name=MODEL)
    with running_server(config, lambda: LLM(folder)) as (url, _):
        yield Live(url, f"{url}/v1", KEY, MODEL)


def _loopback(host) -> bool:
    if host in ("localhost", "127.0.0.1", "::1") or host is None:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Refuse (and record) every connection and name lookup that is not loopback, from before a module's fixtures
    import their client to its end; the module fails if any was tried, even one the library caught and fell back
    from."""
    tried: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            tried.append(f"connect {address}")
            raise OSError(f"the client tests are offline: refused a connection to {address}")
        return connect(self, address)

    def guarded_lookup(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if not _loopback(name):
            tried.append(f"lookup {name}")
            raise socket.gaierror(f"the client tests are offline: refused to look up {name}")
        return lookup(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_lookup)
        yield tried
    assert not tried, f"a client tried to reach the network: {tried}"
