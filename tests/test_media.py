"""Media decoding: good files load, every bad or oversized one is a MediaError with the right status, nothing else."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from seekmoe.multimodal.media import (
    SAMPLE_RATE,
    MediaError,
    MediaLimits,
    decode_base64,
    image_tensor,
    load_audio,
    load_image,
    log_mel,
)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def wav(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    sf.write(out, x, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def sine(hz: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR declares w x h 1-bit pixels, followed by one tiny IDAT: a few dozen bytes in all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def refused(fn, *args, status: int = 400) -> str:
    with pytest.raises(MediaError) as e:
        fn(*args)
    assert e.value.status == status, str(e.value)
    return str(e.value)


RED = Image.new("RGB", (40, 30), (255, 0, 0))
PNG = encode(RED, "PNG")
JPEG = encode(Image.new("RGB", (64, 48), (200, 30, 10)), "JPEG", quality=95)
WAV = wav(sine(440, 0.5, 22050), 22050)


# images

@pytest.mark.parametrize("data, pixel", [(PNG, (255, 0, 0)), (JPEG, (200, 30, 10))])
def test_png_and_jpeg(data, pixel):
    image = load_image(data)
    assert image.mode == "RGB" and image.size in ((40, 30), (64, 48))
    assert np.abs(np.subtract(image.getpixel((5, 5)), pixel)).max() <= 3


def test_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = load_image(data)
    assert image.mode == "RGB" and image.getpixel((8, 8)) == (255, 0, 0)


def test_alpha_composited_on_white():
    rgba = Image.new("RGBA", (4, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 0))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    image = load_image(encode(rgba, "PNG"))
    assert [image.getpixel((x, 0)) for x in range(3)] == [(255, 0, 0), (255, 255, 255), (127, 127, 127)]
    la = load_image(encode(Image.new("LA", (2, 2), (0, 0)), "PNG"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_and_16_bit():
    assert load_image(encode(Image.new("L", (3, 3), 77), "PNG")).getpixel((1, 1)) == (77, 77, 77)
    deep = Image.fromarray(np.full((3, 3), 40000, dtype=np.uint16))  # I;16: convert() alone would clip to 255
    assert load_image(encode(deep, "PNG")).getpixel((1, 1)) == (156, 156, 156)
    assert load_image(encode(Image.new("1", (3, 3), 1), "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n", np.random.default_rng(0).bytes(3000), PNG[: len(PNG) // 2], JPEG[: len(JPEG) // 2],
    b"hello, this is a text file\n" * 20, encode(RED, "BMP"), encode(RED, "TIFF"), encode(RED, "WEBP"),
    encode(RED, "PDF"), WAV,
], ids=["png-magic-only", "random", "truncated-png", "truncated-jpeg", "text", "bmp", "tiff", "webp", "pdf", "wav"])
def test_bad_images_are_400(data):
    message = refused(load_image, data)
    assert "PNG, JPEG, GIF" in message or "truncated" in message


def test_image_size_checks():
    assert "empty" in refused(load_image, b"")
    assert "must be bytes" in refused(load_image, "not bytes")
    message = refused(load_image, PNG, MediaLimits(max_image_bytes=len(PNG) - 1), status=413)
    assert f"{len(PNG) - 1:,}" in message and "max_image_bytes" in message


def test_decompression_bomb_refused_from_the_header():
    # the IDAT holds far too few pixels, so decoding would be a 400: a 413 proves the check precedes decoding
    bomb = png_header_only(5000, 5000)
    assert len(bomb) < 200
    message = refused(load_image, bomb, status=413)
    assert message == "the image is 5000x5000 = 25,000,000 pixels; the limit is 16,777,216 (max_image_pixels)"
    refused(load_image, png_header_only(20000, 20000), status=413)  # past Pillow's own cap too
    assert "1,199 (max_image_pixels)" in refused(load_image, PNG, MediaLimits(max_image_pixels=1199), status=413)
    assert load_image(PNG, MediaLimits(max_image_pixels=1200)).size == (40, 30)


def test_image_tensor_pads_centred():
    wide = image_tensor(Image.new("RGB", (200, 100), (255, 0, 0)), 64)  # -> 64 x 32, 16 black rows above and below
    assert wide.shape == (3, 64, 64) and wide.dtype == torch.float32
    assert wide[:, :16].abs().max() == 0 and wide[:, 48:].abs().max() == 0
    assert torch.equal(wide[:, 16:48, :], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 32, 64))
    tall = image_tensor(Image.new("RGB", (10, 40), (0, 255, 0)), 32)  # -> 8 x 32, 12 black columns each side
    assert tall[1, :, :12].max() == 0 and tall[1, :, 20:].max() == 0 and tall[1, :, 12:20].min() == 1
    assert tall.min() >= 0 and tall.max() <= 1


# audio

def peak_hz(x: np.ndarray, rate: int) -> float:
    return np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x)


def test_wav_stereo_44k_to_mono_16k():
    left = sine(440, 2.0, 44100)
    audio = load_audio(wav(np.stack([left, left], axis=1), 44100))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 0.01 * 2 * SAMPLE_RATE
    assert abs(peak_hz(audio, SAMPLE_RATE) - 440) <= 1
    assert 0.45 < np.abs(audio).max() < 0.55  # both channels agree, so the mean keeps the amplitude


def test_flac_and_many_channels():
    audio = load_audio(wav(sine(1000, 1.0, 16000), 16000, "FLAC"))
    assert abs(len(audio) - SAMPLE_RATE) <= 160 and abs(peak_hz(audio, SAMPLE_RATE) - 1000) <= 1
    six = np.repeat(sine(300, 0.5, 48000)[:, None], 6, axis=1)
    assert abs(peak_hz(load_audio(wav(six, 48000)), SAMPLE_RATE) - 300) <= 2


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_wav_with_placeholder_header_sizes():
    from seekmoe.multimodal.speech import synthesize

    data = synthesize("seven")
    assert data[36:40] == b"data"  # a plain 44-byte header
    # espeak-ng writing to a pipe leaves its placeholders in the RIFF and data sizes; put them back if they were fixed
    streamed = b"RIFF" + struct.pack("<I", 0x7FFFF024) + data[8:40] + struct.pack("<I", 0x7FFFF000) + data[44:]
    seconds = (len(data) - 44) / 2 / 22050  # espeak-ng: 16-bit mono at 22,050 Hz
    assert 0.2 < seconds < 3
    for wav_bytes in (data, streamed):
        audio = load_audio(wav_bytes)
        assert abs(len(audio) - seconds * SAMPLE_RATE) <= 0.01 * seconds * SAMPLE_RATE
        assert np.abs(audio).max() > 0.05
        message = refused(load_audio, wav_bytes, MediaLimits(max_audio_seconds=seconds / 2), status=413)
        assert f"{seconds:.2f} seconds" in message


def test_audio_over_limits_is_413():
    message = refused(load_audio, wav(sine(440, 2.0, 16000), 16000), MediaLimits(max_audio_seconds=1.5), status=413)
    assert message == "the audio is 2.00 seconds; the limit is 1.5 (max_audio_seconds)"
    assert "max_audio_bytes" in refused(load_audio, WAV, MediaLimits(max_audio_bytes=100), status=413)


def other_audio_formats() -> list[bytes]:
    x = sine(440, 0.3, 16000)
    found = [b"OggS\0\x02" + bytes(200), b"ID3\x04\0\0\0\0\0\0" + b"\xff\xfb\x90\x64" + bytes(400)]
    for fmt, subtype in (("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III"), ("AIFF", "PCM_16"), ("AU", "PCM_16")):
        with contextlib.suppress(sf.LibsndfileError, ValueError, TypeError):  # a libsndfile that cannot write it
            found.append(wav(x, 16000, fmt, subtype))
    return found


@pytest.mark.parametrize("data", other_audio_formats())
def test_other_audio_formats_are_400(data):
    assert "WAV or FLAC" in refused(load_audio, data)


def test_bad_audio_is_400():
    refused(load_audio, b"")
    refused(load_audio, np.random.default_rng(1).bytes(2000))
    refused(load_audio, PNG)
    assert "no samples" in refused(load_audio, wav(np.zeros(0, np.float32), 16000))
    refused(load_audio, WAV[:30])  # header cut short
    nan = sine(440, 0.1, 16000)
    nan[10] = np.nan
    assert "NaN" in refused(load_audio, wav(nan, 16000, subtype="FLOAT"))
    assert "sample rate" in refused(load_audio, wav(sine(440, 0.1, 16000), 500))


def test_truncated_wav_loads_what_is_there_or_400():
    try:
        audio = load_audio(WAV[: len(WAV) // 2])
    except MediaError as e:
        assert e.status == 400
    else:
        assert 0 < len(audio) <= 0.26 * SAMPLE_RATE and np.isfinite(audio).all()


# base64

def test_decode_base64_forms():
    b64 = base64.b64encode(PNG).decode()
    assert decode_base64(b64, "image", 10**6) == PNG
    assert decode_base64(f"data:image/png;base64,{b64}", "image", 10**6) == PNG
    assert decode_base64(f"DATA:image/png;BASE64,{b64}", "image", 10**6) == PNG
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    assert decode_base64(f"  \n{wrapped}\r\n ", "image", 10**6) == PNG
    assert decode_base64(base64.b64encode(b"abc").decode(), "audio", 3) == b"abc"


@pytest.mark.parametrize("data", ["abc$", "YWJj!", "YWJ", "data:image/png,abc", "data:image/png;base64", "ÿÿÿÿ"])
def test_invalid_base64_is_400(data):
    refused(decode_base64, data, "image", 1000)


@pytest.mark.parametrize("url", ["http://example.com/a.png", "https://example.com/a.png", "file:///etc/passwd",
                                 "ftp://x/y", "gopher://x", "HTTPS://EXAMPLE.COM/A.PNG"])
def test_remote_urls_refused(url):
    message = refused(decode_base64, url, "image", 1000)
    assert "remote" in message and "data: URL or base64" in message


def test_base64_limits_and_types():
    for empty in ("", "   \n", "data:image/png;base64,"):
        assert "empty" in refused(decode_base64, empty, "image", 1000)
    for value in (None, b"YWJj", 123):
        refused(decode_base64, value, "audio", 1000)
    # invalid characters too: a 413 rather than a 400 shows the length was judged before any decoding
    assert "max_image_bytes" in refused(decode_base64, "!" * 200, "image", 100, status=413)
    assert "max_audio_bytes" in refused(decode_base64, "A" * 10**6, "audio", 100, status=413)
    refused(decode_base64, base64.b64encode(b"abcd").decode(), "audio", 3, status=413)


def test_limits_validated():
    for bad in (dict(max_image_bytes=0), dict(max_audio_seconds=-1.0), dict(max_items=True),
                dict(max_audio_seconds=float("inf")), dict(max_image_pixels="big")):
        with pytest.raises(ValueError):
            MediaLimits(**bad)


# log-mel

def reference_log_mel(x: np.ndarray, n_mels=80, rate=16000, n_fft=400, hop=160) -> np.ndarray:
    """The same formula written out plainly in float64: framed FFT, Slaney filters built one at a time."""
    def mel(f):
        return f * 3 / 200 if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)

    def hz(m):
        return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    edges = [hz(m) for m in np.linspace(0, mel(rate / 2), n_mels + 2)]
    bins = np.arange(n_fft // 2 + 1) * rate / n_fft
    filters = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, mid, hi = edges[i:i + 3]
        for j, f in enumerate(bins):
            if lo < f < hi:
                filters[i, j] = (f - lo) / (mid - lo) if f <= mid else (hi - f) / (hi - mid)
        filters[i] *= 2 / (hi - lo)
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[t * hop:t * hop + n_fft] * window for t in range(len(x) // hop)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, bins)
    log = np.log10(np.maximum(power @ filters.T, 1e-10))
    return (np.maximum(log, log.max() - 8) + 4) / 4


def test_log_mel_matches_plain_numpy():
    x = np.random.default_rng(2).standard_normal(2000).astype(np.float32) * 0.1
    ours = log_mel(x)
    assert ours.shape == (12, 80) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference_log_mel(x), atol=1e-4)
    assert torch.allclose(log_mel(torch.from_numpy(x)), ours)


def test_log_mel_one_second_tone():
    mel = log_mel(sine(1000, 1.0, SAMPLE_RATE))
    assert mel.shape == (100, 80)
    assert mel.max() - mel.min() <= 2 + 1e-6  # 8 decades of dynamic range, scaled by 1/4
    # 1 kHz is 15 on Slaney's scale; 80 filters span 0..45.25 in 81 steps, so filter 26 is centred at 15.1
    assert abs(int(mel.mean(0).argmax()) - 26) <= 1


def test_log_mel_short_and_empty():
    assert log_mel(np.ones(170, np.float32)).shape == (1, 80)  # too short for reflect padding; zero-padded instead
    refused(log_mel, np.zeros(0, np.float32))
    refused(log_mel, np.zeros(100, np.float32))
    refused(log_mel, np.zeros((2, 1000), np.float32))


def test_log_mel_matches_whisper_feature_extractor():
    transformers = pytest.importorskip("transformers")
    x = sine(440, 0.5, SAMPLE_RATE) + 0.01 * np.random.default_rng(3).standard_normal(8000).astype(np.float32)
    theirs = transformers.WhisperFeatureExtractor(feature_size=80)(
        x, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")["input_features"][0]  # (80, frames)
    np.testing.assert_allclose(log_mel(x).numpy(), theirs.T, atol=1e-4)


# hostile bytes: anything that is not a MediaError is a bug

SEEDS = [PNG, JPEG, encode(Image.new("P", (8, 8)), "GIF"), WAV, wav(sine(440, 0.05, 8000), 8000, "FLAC")]


@st.composite
def mangled(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled())
def test_hostile_bytes_raise_only_media_error(data):
    small = MediaLimits(max_image_pixels=2**20, max_audio_seconds=5.0)
    try:
        image = load_image(data, small)
        assert image.mode == "RGB" and image.width * image.height <= 2**20
    except MediaError as e:
        assert e.status in (400, 413)
    try:
        audio = load_audio(data, small)
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    except MediaError as e:
        assert e.status in (400, 413)
