"""Decode user-uploaded images and audio for the multimodal model, refusing anything unsafe with a clear message.

It guards against remote URLs (the server fetches nothing), base64 strings too long to decode, formats outside a short
list (each image/audio parser is attack surface), decompression bombs (pixel count and duration are checked from the
header before any pixel or sample is decoded), channel counts and sample rates that would blow up memory or the
resampler, and corrupt or truncated files. Every failure is a `MediaError`; one over a limit is a `MediaTooLarge`.
Which HTTP status each gets is the server's choice (seekmoe/server/errors.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass, fields

import numpy as np
import soundfile as sf
import soxr
import torch
from PIL import Image

from seekmoe.errors import SeekmoeError

SAMPLE_RATE = 16000
IMAGE_FORMATS = ("PNG", "JPEG", "GIF")
AUDIO_FORMATS = ("WAV", "FLAC")
_RATES = (1000, 384_000)  # Hz; far above this soxr takes seconds per second of audio
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # base64 never holds ':', so a match is a URL


class MediaError(SeekmoeError, ValueError):
    """Media refused: not a file of an accepted format, corrupt or truncated, a remote URL, a malformed part."""

    status = 400  # what the HTTP API answers (server/errors.py maps the class; this says it to Python callers)


class MediaTooLarge(MediaError):
    """Media over one of the MediaLimits: bytes, pixels, seconds, or items in one request."""

    status = 413


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_audio_bytes: int = 25 * 2**20
    max_audio_seconds: float = 30.0
    max_items: int = 8  # media per request

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
                raise ValueError(f"{f.name} must be a positive number, got {value!r}")


def _too_large(what: str, size: str, limit: float, setting: str) -> MediaTooLarge:
    return MediaTooLarge(f"the {what} is {size}; the limit is {limit:,} ({setting})")


def _check_bytes(data: bytes, kind: str, limit: int) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MediaError(f"the {kind} must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise MediaError(f"the {kind} is empty")
    if len(data) > limit:
        raise _too_large(kind, f"{len(data):,} bytes", limit, f"max_{kind}_bytes")


def decode_base64(data: str, kind: str, max_bytes: int) -> bytes:
    """The bytes of plain base64 or a `data:<mime>;base64,<payload>` URL; `kind` is 'image' or 'audio'."""
    if kind not in ("image", "audio"):
        raise ValueError(f"kind must be 'image' or 'audio', got {kind!r}")
    if not isinstance(data, str):
        raise MediaError(f"the {kind} must be a base64 string or a data: URL, got {type(data).__name__}")
    limit = 4 * -(-max_bytes // 3)  # base64 length of max_bytes bytes
    setting = f"max_{kind}_bytes"
    # a cheap bound before any copy; the slack is for a data: header and line breaks, the exact check follows
    if len(data) > 2 * limit + 256:
        raise _too_large(kind, f"{len(data):,} base64 characters", max_bytes, setting)
    data = data.strip()
    if data[:5].lower() == "data:":
        header, comma, payload = data.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise MediaError(f"the {kind} data: URL must be base64-encoded: data:<mime>;base64,<payload>")
    elif _SCHEME.match(data):
        scheme = data.partition(":")[0].lower()
        raise MediaError(f"remote URLs are refused (got a {scheme}: URL): the server fetches nothing; "
                         f"send the {kind} inline as a data: URL or base64")
    else:
        payload = data
    payload = "".join(payload.split())  # MIME-style line breaks
    if not payload:
        raise MediaError(f"the {kind} is empty")
    if len(payload) > limit:
        raise _too_large(kind, f"about {len(payload) * 3 // 4:,} bytes", max_bytes, setting)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"the {kind} is not valid base64: {e}") from None
    if not raw:
        raise MediaError(f"the {kind} is empty")
    if len(raw) > max_bytes:
        raise _too_large(kind, f"{len(raw):,} bytes", max_bytes, setting)
    return raw


def load_image(data: bytes, limits: MediaLimits = MediaLimits()) -> Image.Image:
    """An RGB image from PNG, JPEG or GIF bytes (a GIF's first frame; transparency composited on white)."""
    _check_bytes(data, "image", limits.max_image_bytes)
    try:  # reads the header only; formats= keeps Pillow's other parsers away from untrusted bytes
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own cap, only reached when max_image_pixels is above it
        raise MediaTooLarge(f"the image has too many pixels; the limit is {limits.max_image_pixels:,} "
                            "(max_image_pixels)") from None
    except Exception:  # Pillow raises many types on hostile input: OSError, SyntaxError, struct.error, ...
        raise MediaError(f"the image must be a {', '.join(IMAGE_FORMATS)} file; could not read it as one") from None
    with image:
        w, h = image.size
        if w * h > limits.max_image_pixels:
            raise _too_large("image", f"{w}x{h} = {w * h:,} pixels", limits.max_image_pixels, "max_image_pixels")
        try:
            return _rgb(image)
        except Exception:
            raise MediaError(f"the {image.format} image is truncated or corrupt") from None


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit grey PNG: convert() would clip at 255, so keep the high byte
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent regions are usually background
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_audio(data: bytes, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """Mono float32 samples at SAMPLE_RATE from WAV or FLAC bytes."""
    _check_bytes(data, "audio", limits.max_audio_bytes)
    not_ours = MediaError(f"the audio must be a {' or '.join(AUDIO_FORMATS)} file; could not read it as one "
                          "(wrong type, truncated or corrupt)")
    # magic bytes first: libsndfile would otherwise probe two dozen parsers (attack surface) on untrusted bytes
    if not ((data[:4] in (b"RIFF", b"RIFX") and data[8:12] == b"WAVE") or data[:4] == b"fLaC"):
        raise not_ours
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames = f.samplerate, f.frames  # frames come from the real data length when a header lies
            if not _RATES[0] <= rate <= _RATES[1]:
                raise MediaError(f"the audio's sample rate must be {_RATES[0]:,}..{_RATES[1]:,} Hz, got {rate:,}")
            if frames / rate > limits.max_audio_seconds:
                raise _too_large("audio", f"{frames / rate:.2f} seconds", limits.max_audio_seconds,
                                 "max_audio_seconds")
            # downmix block by block: memory follows the mono output, whatever channel count the header claims
            blocks = [b.mean(axis=1) for b in f.blocks(2**16, dtype="float32", always_2d=True, frames=frames)]
    except MediaError:
        raise
    except Exception:  # libsndfile errors, and anything else hostile bytes shake loose
        raise not_ours from None
    mono = np.concatenate([np.zeros(0, np.float32), *blocks])  # (frames,)
    if mono.size == 0:
        raise MediaError("the audio holds no samples")
    if not np.isfinite(mono).all():  # float WAVs can carry NaN/inf, which would poison every mel frame
        raise MediaError("the audio holds NaN or infinite samples")
    return soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32, copy=False)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear to 1 kHz, logarithmic above."""
    mel = hz / (200 / 3)
    return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1e-10) / 1000) / (np.log(6.4) / 27), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15, 1000 * np.exp(np.log(6.4) / 27 * (mel - 15)), mel * (200 / 3))


def _mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular filters on Slaney's mel scale with area ("slaney") normalisation: librosa.filters.mel's defaults,
    which Whisper's mel_filters.npz was made with. (n_mels, n_fft // 2 + 1)"""
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(0)), _hz_to_mel(np.float64(sample_rate / 2)), n_mels + 2))
    rising = (fft_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]  # (n_mels, bins)
    falling = (edges[2:, None] - fft_hz[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(audio: np.ndarray | torch.Tensor, n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = 400,
            hop: int = 160) -> torch.Tensor:
    """Whisper's log-mel spectrogram of 1-D audio: (frames, n_mels) float32, frames = len(audio) // hop."""
    x = audio.float() if isinstance(audio, torch.Tensor) else torch.from_numpy(np.array(audio, dtype=np.float32))
    if x.ndim != 1:
        raise MediaError(f"the audio must be 1-D samples, got shape {tuple(x.shape)}")
    if x.numel() < hop:
        raise MediaError(f"the audio is {x.numel()} samples; a mel frame needs at least {hop}")
    frames = x.numel() // hop
    if x.numel() <= n_fft // 2:  # reflect padding needs more samples than it pads; Whisper pads with zeros anyway
        x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="reflect",
                      return_complex=True)  # (n_fft // 2 + 1, frames + 1)
    power = spec[:, :frames].abs() ** 2  # Whisper drops the last frame
    log = (_mel_filters(sample_rate, n_fft, n_mels) @ power).clamp(min=1e-10).log10()  # (n_mels, frames)
    log = torch.maximum(log, log.max() - 8.0)  # keep 80 dB below the loudest bin
    return ((log + 4) / 4).T.contiguous()  # (frames, n_mels)


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: longer side resized to `size` (bicubic), shorter padded black, centred."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    w, h = image.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    square = Image.new("RGB", (size, size))
    square.paste(image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC),
                 ((size - new_w) // 2, (size - new_h) // 2))
    return torch.from_numpy(np.array(square)).permute(2, 0, 1).float() / 255  # (3, size, size)
