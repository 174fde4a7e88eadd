"""Chat messages with media parts -> text messages with placeholder tokens, and the decoded media in order.

Content may be a string, or a list of parts in OpenAI's shapes or our file-friendly ones:
    {"type": "text", "text": "..."}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}    (OpenAI; no remote URLs)
    {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}} (OpenAI)
    {"type": "image", "path": "x.png"} / {"type": "image", "data": b"..."}        (Python API, training data)
    {"type": "audio", "path": "x.wav"} / {"type": "audio", "data": b"..."}
A medium becomes its placeholder token and a newline, then the text parts follow as written: the one rendering
used in training and in serving.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from seekmoe.multimodal import media as m
from seekmoe.multimodal.model import Media, MultimodalConfig, audio_rows

AUDIO_FORMATS = ("wav", "flac")


def _bytes_of(part: dict, kind: str, limits: m.MediaLimits, base: Path | None) -> bytes:
    max_bytes = limits.max_image_bytes if kind == "image" else limits.max_audio_bytes
    if part["type"] == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return m.decode_base64(url, "image", max_bytes)
    if part["type"] == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise m.MediaError("an input_audio part needs {\"data\": base64, \"format\": \"wav\"}")
        fmt = audio.get("format", "wav")
        if fmt not in AUDIO_FORMATS:
            raise m.MediaError(f"input_audio.format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}")
        return m.decode_base64(audio.get("data"), "audio", max_bytes)
    if "data" in part:
        data = part["data"]
        if not isinstance(data, (bytes, bytearray)):
            raise m.MediaError(f"an {kind} part's data must be bytes, got {type(data).__name__}")
        return bytes(data)
    if "path" in part:
        path = Path(part["path"])
        path = base / path if base is not None and not path.is_absolute() else path
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)  # never more: a larger file is refused unread
        except OSError as e:
            raise m.MediaError(f"cannot read {path}: {e.strerror}") from None
        if len(data) > max_bytes:
            raise m.MediaTooLarge(f"{path} is over the limit of {max_bytes:,} bytes")
        return data
    raise m.MediaError(f"an {kind} part needs 'data' (bytes) or 'path'")


def decode(kind: str, data: bytes, cfg: MultimodalConfig, limits: m.MediaLimits) -> Media:
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if kind == "image":
        image = m.load_image(data, limits)
        return Media("image", m.image_tensor(image, cfg.image_side(*image.size)), digest, source=image)
    mel = m.log_mel(m.load_audio(data, limits), n_mels=cfg.n_mels)
    if audio_rows(mel.shape[0]) < 1:
        raise m.MediaError(f"the audio is {mel.shape[0] / 100:.2f} s long; the encoder needs at least 0.05 s")
    return Media("audio", mel, digest)


KINDS = {"image_url": "image", "image": "image", "input_audio": "audio", "audio": "audio"}


def split_media(messages: list[dict], cfg: MultimodalConfig | None, limits: m.MediaLimits | None = None,
                base: Path | None = None) -> tuple[list[dict], list[Media]]:
    """Text-only messages (parts joined, media as placeholder tokens) and the media, decoded, in reading order.
    cfg None (a text-only model): media parts are refused. MediaError for bad media or parts."""
    limits = limits or m.MediaLimits()
    out, media = [], []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            out.append(msg)
            continue
        text = []
        for part in content:
            kind = KINDS.get(part.get("type")) if isinstance(part, dict) else None
            if isinstance(part, dict) and part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise m.MediaError("a text part needs \"text\": a string")
                text.append(part["text"])
                continue
            if kind is None:
                raise m.MediaError(f"unknown content part {part.get('type') if isinstance(part, dict) else part!r}"
                                        "; known: text, image_url, input_audio, image, audio")
            if cfg is None:
                raise m.MediaError(f"this model reads text only: it has no {kind} encoder")
            if len(media) >= limits.max_items:
                raise m.MediaTooLarge(f"more than {limits.max_items} media in one request (max_items)")
            media.append(decode(kind, _bytes_of(part, kind, limits, base), cfg, limits))
            text.append(media[-1].token + "\n")
        out.append({**msg, "content": "".join(text)})
    return out, media
