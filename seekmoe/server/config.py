"""What `seekmoe serve` runs with: one dataclass, filled from flags and environment variables (seekmoe/cli/serve.py)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from seekmoe.errors import SeekmoeError
from seekmoe.model.config import DTYPES, KV_CACHE_DTYPES

ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s]+", re.IGNORECASE)  # as a browser sends it: no path, no slash


class ServeConfigError(SeekmoeError, ValueError):
    """A setting the server cannot start with; the message names it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


@dataclass
class ServeConfig:
    model: str | None = None  # a checkpoint folder; None: the bundled model
    adapter: str | None = None  # a LoRA adapter folder merged into the model at load
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()  # set: /metrics and /v2/expert_load (every tenant's activity) need one of these
    share_prefix_cache: bool = False  # False: each API key's prompts are cached apart (no timing across tenants)
    allow_unauthenticated: bool = False  # bind beyond loopback without keys
    served_model_name: str | None = None  # the `model` answers report and clients send; None: the folder's name
    served_model_aliases: tuple[str, ...] = ()  # more names a request's `model` may give (and /v1/models lists)
    allowed_origins: tuple[str, ...] = ()  # web pages that may call the API from a browser (CORS); "*": any
    # engine
    dtype: str = "float32"
    int8: bool = False
    max_num_seqs: int = 64  # sequences decoded together
    max_queue: int = 256  # sequences waiting for a place; past it requests get 429
    cache_tokens: int | None = None  # KV-cache budget in tokens, or
    cache_bytes: int | None = None  # in bytes (None and None: the engine's default)
    kv_cache_dtype: str = "auto"  # the cache's: "auto" (the model's), float32, bfloat16, float16 or int8
    # http
    max_body_bytes: int = 16 << 20  # images and audio come base64 inside the JSON
    # media of multimodal models, each checked before it is decoded
    max_media_bytes: int = 10 << 20  # one image or audio file
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 30.0
    max_media_items: int = 8  # media in one request
    # summaries: text refused past this before any work, threads of their own, a bounded queue for them
    max_summary_chars: int = 1_000_000
    max_waiting_summaries: int = 8
    log_prompts: bool = False
    # tools the server runs itself (plugins, by name), and how long one call may take
    tools: tuple[str, ...] = ()
    tool_timeout: float = 10.0
    # a knowledge graph (seekmoe graph build) the /v2/graph routes and the /graph page answer from
    graph: str | None = None

    def check(self) -> None:
        for name in ("port", "max_num_seqs", "max_queue", "cache_tokens", "cache_bytes", "max_body_bytes",
                     "max_summary_chars", "max_waiting_summaries"):
            value = getattr(self, name)
            low = 0 if name in ("port", "max_waiting_summaries") else 1
            if value is not None and (not isinstance(value, int) or value < low):
                raise ServeConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ServeConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.dtype not in DTYPES:
            raise ServeConfigError(f"dtype must be {', '.join(DTYPES[:-1])} or {DTYPES[-1]}, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ServeConfigError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got "
                                   f"{self.kv_cache_dtype!r}")
        try:
            self.media_limits()
        except ValueError as e:
            raise ServeConfigError(f"media limits: {e}") from None
        if not (isinstance(self.tool_timeout, (int, float)) and 0 < self.tool_timeout <= 3600):
            raise ServeConfigError(f"tool_timeout must be in (0, 3600] seconds, got {self.tool_timeout!r}")
        if self.cache_tokens is not None and self.cache_bytes is not None:
            raise ServeConfigError("give the cache budget in tokens or in bytes, not both")
        for kind, keys in (("API key", self.api_keys), ("admin key", self.admin_keys)):
            for i, key in enumerate(keys):
                if not key or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
                    raise ServeConfigError(f"{kind} {i + 1} must be printable ASCII without spaces (HTTP headers "
                                           "carry it), and not empty")
        for origin in self.allowed_origins:
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ServeConfigError(f"allowed origin {origin!r} must be * or scheme://host[:port] as a browser "
                                       "sends it in Origin, without a path or a trailing slash "
                                       "(http://localhost:3000)")
        names = [self.served_model_name, *self.served_model_aliases] if self.served_model_name is not None else []
        if self.served_model_aliases and self.served_model_name is None:
            raise ServeConfigError("served_model_aliases need a served_model_name, the name answers report")
        for name in names:
            if not isinstance(name, str) or not name.strip() or not name.isprintable():
                raise ServeConfigError(f"a served model name must be printable and not blank, got {name!r}")
        if set(self.api_keys) & set(self.admin_keys):
            raise ServeConfigError("a key is both an API key and an admin key: an admin key already works as an API "
                                   "key, give it once, as --admin-key")
        if self.admin_keys and not self.api_keys and not self.allow_unauthenticated:
            raise ServeConfigError("admin keys are set but no API key: the API would answer anyone; give API keys "
                                   "too, or --allow-unauthenticated")
        if not self.api_keys and not self.allow_unauthenticated and not is_loopback(self.host):
            raise ServeConfigError(f"host {self.host} is reachable from other machines and no API key is set: give "
                                   "keys (--api-key, --api-key-file, SEEKMOE_API_KEY), or --allow-unauthenticated "
                                   "to serve without them")

    def media_limits(self):
        from seekmoe.multimodal.media import MediaLimits

        return MediaLimits(max_image_bytes=self.max_media_bytes, max_image_pixels=self.max_image_pixels,
                           max_audio_bytes=self.max_media_bytes, max_audio_seconds=self.max_audio_seconds,
                           max_items=self.max_media_items)
