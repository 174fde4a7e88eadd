"""Speech out with Debian's espeak-ng: text in, WAV bytes out, English and Mandarin, nothing leaves the machine.

espeak-ng is a formant synthesiser: robotic, but small, fast, offline and in every distribution. It is also what
the multimodal data uses to make spoken digits (`seekmoe.multimodal.data`), so a voice the model hears in training is a
voice this module can speak.

The audio is held in memory, so its length is bounded while espeak-ng writes it, not after: espeak-ng is stopped
once its output passes `max_seconds` (MAX_SECONDS unless given), a SpeechError. MAX_CHARS of text can otherwise
be an hour of audio: 4,096 characters of Chinese at the slowest speed are 3,100 s, a 138 MB WAV.
"""

from __future__ import annotations

import io
import os
import selectors
import shutil
import struct
import subprocess
import time
import wave
from collections.abc import Callable

from seekmoe.errors import SeekmoeError
from seekmoe.han import HAN

MAX_CHARS = 4096  # OpenAI's limit for /v1/audio/speech input
# seconds of audio one request may produce: 4,096 characters of English at the slowest speed (80 words per minute)
# take 600 s, a 26 MB WAV; Chinese takes longer, ~1,700 characters at 1.0
MAX_SECONDS = 600.0
WAV_BYTES_PER_SECOND = 22_050 * 2  # espeak-ng's mono 16-bit samples at 22,050 Hz
TIMEOUT = 60.0  # seconds espeak-ng may take (600 s of audio take it about a second)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")
LANGUAGES = {"en": "en-us", "zh": "cmn"}  # our language codes -> espeak-ng voices
# OpenAI's voices -> espeak-ng variants, one each: their male voices to m*, their female ones to f*, alloy (neutral)
# to f2; onyx ("deep") gets the lowest-pitched m4, shimmer ("bright") the highest-pitched f5
VOICES = {"alloy": "f2", "ash": "m2", "ballad": "m5", "coral": "f1", "echo": "m3", "fable": "m7", "onyx": "m4",
          "nova": "f3", "sage": "f4", "shimmer": "f5", "verse": "m1"}
WPM = 175  # espeak-ng's default rate: OpenAI's speed 1.0
FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}  # response_format -> media type
PCM_RATE = 24_000  # OpenAI's pcm: raw 16-bit little-endian mono samples at 24 kHz


class SpeechError(SeekmoeError, ValueError):
    """Text, voice or settings espeak-ng cannot speak; `param` names the setting at fault (OpenAI's name)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class SpeechCancelled(SeekmoeError):
    """The caller stopped wanting the speech (a server's client left): espeak-ng was stopped."""


class SpeechUnavailable(SpeechError):
    """espeak-ng (or soxr, for pcm) is not installed, or espeak-ng failed: the machine's fault, not the request's."""


def language_of(text: str) -> str:
    """'zh' when the text holds Chinese characters, else 'en'."""
    return "zh" if HAN.search(text) else "en"


def synthesize(text: str, language: str | None = None, variant: str | None = None, speed: int = 175,
               pitch: int = 50, max_seconds: float = MAX_SECONDS, cancelled: Callable[[], bool] | None = None) -> bytes:
    """A WAV file (mono, 16-bit, espeak-ng's 22,050 Hz) of `text` spoken.

    language: 'en' or 'zh' (None: from the text); variant: one of VARIANTS (male m*, female f*); speed in words per
    minute (80..450); pitch 0..99; max_seconds: longer audio is a SpeechError (param 'text'), espeak-ng stopped as
    soon as its output passes it; cancelled: asked every tenth of a second while espeak-ng runs, True stops it
    (SpeechCancelled).
    """
    data = _utf8(text, "text")
    language = language or language_of(text)
    if language not in LANGUAGES:
        raise SpeechError(f"language must be one of {sorted(LANGUAGES)}, got {language!r}", "language")
    if variant is not None and variant not in VARIANTS:
        raise SpeechError(f"variant must be one of {list(VARIANTS)}, got {variant!r}", "variant")
    if not isinstance(speed, int) or isinstance(speed, bool) or not 80 <= speed <= 450:
        raise SpeechError(f"speed must be an int in [80, 450] words per minute, got {speed!r}", "speed")
    if not isinstance(pitch, int) or isinstance(pitch, bool) or not 0 <= pitch <= 99:
        raise SpeechError(f"pitch must be an int in [0, 99], got {pitch!r}", "pitch")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechUnavailable("espeak-ng is not installed on this machine (Debian/Ubuntu: apt-get install espeak-ng)")
    voice = LANGUAGES[language] + (f"+{variant}" if variant else "")
    # the text goes on stdin, never argv: a text starting with '-' is not an option
    code, wav, err = _run_capped([exe, "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)], data,
                                 44 + int(max_seconds * WAV_BYTES_PER_SECOND), cancelled)
    if code is None:
        raise SpeechError(f"the speech would be longer than {max_seconds:g} s, this server's limit: give less text "
                          f"or a higher speed", "text")
    if code != 0 or not wav.startswith(b"RIFF") or len(wav) < 44:
        raise SpeechUnavailable(f"espeak-ng failed: {err.decode(errors='replace').strip()[:200]}")
    return _with_sizes(wav)


def _run_capped(command: list[str], data: bytes, max_bytes: int,
                cancelled: Callable[[], bool] | None = None) -> tuple[int | None, bytes, bytes]:
    """(exit status, stdout, the start of stderr) of `command` fed `data`; status None when stdout passed
    `max_bytes`, the process then killed at once. SpeechUnavailable past TIMEOUT, SpeechCancelled once `cancelled`
    says so. The process is always reaped."""
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + TIMEOUT
    with (subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc,
          selectors.DefaultSelector() as selector):
        try:  # one loop over the three pipes, so none fills up while another is waited on
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE)
            selector.register(proc.stdout, selectors.EVENT_READ)
            selector.register(proc.stderr, selectors.EVENT_READ)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SpeechUnavailable(f"espeak-ng took longer than {TIMEOUT:g} s")
                if cancelled is not None and cancelled():
                    raise SpeechCancelled("the speech was cancelled")
                for key, _ in selector.select(min(left, 0.1)):
                    if key.fileobj is proc.stdin:
                        try:
                            data = data[os.write(key.fd, data[:65536]):]
                        except BrokenPipeError:  # it exited without reading everything: its status says why
                            data = b""
                        if not data:
                            selector.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is proc.stdout:
                        out += chunk
                        if len(out) > max_bytes:
                            return None, b"", bytes(err)
                    elif len(err) < 4096:  # enough for the message; the rest is read and dropped
                        err += chunk
            return proc.wait(max(deadline - time.monotonic(), 0.1)), bytes(out), bytes(err)
        except subprocess.TimeoutExpired:
            raise SpeechUnavailable(f"espeak-ng took longer than {TIMEOUT:g} s") from None
        finally:
            proc.kill()  # a no-op once it has exited; Popen's exit then closes the pipes and reaps it


def _utf8(text: object, param: str) -> bytes:
    """`text` as espeak-ng reads it on stdin, or a SpeechError naming `param`."""
    if not isinstance(text, str) or not text.strip():
        raise SpeechError(f"{param} is empty: give the text to speak", param)
    if len(text) > MAX_CHARS:
        raise SpeechError(f"{param} is {len(text)} characters; the limit is {MAX_CHARS}", param)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, which JSON's \ud800 escapes can carry
        raise SpeechError(f"{param} holds a character that is not valid Unicode at position {e.start}", param) from None


def _with_sizes(wav: bytes) -> bytes:
    """espeak-ng writing to a pipe cannot go back to fill in the RIFF and data sizes (it leaves 0x7ffff000 there);
    put the real ones in its 44-byte header, or readers take the file for hours long."""
    return (wav[:4] + struct.pack("<I", len(wav) - 8) + wav[8:40] + struct.pack("<I", len(wav) - 44) + wav[44:]
            if wav[36:40] == b"data" else wav)


# ---- OpenAI's /v1/audio/speech -----------------------------------------------------------------------------------

def voice_of(voice: str) -> tuple[str | None, str | None]:
    """(language, variant) for a voice: OpenAI's ('alloy'), an espeak-ng variant ('f3'), a language ('zh': espeak-ng's
    own voice for it) or a language and a voice ('zh+f3', 'en+onyx'). Language None: from the text."""
    if isinstance(voice, str):
        language, plus, name = voice.rpartition("+")  # 'zh+f3' -> ('zh', '+', 'f3'); 'f3' -> ('', '', 'f3')
        if not plus and name in LANGUAGES:
            return name, None
        variant = VOICES.get(name, name)
        if (language in LANGUAGES or not plus) and variant in VARIANTS:
            return language or None, variant
    raise SpeechError(f"voice must be one of OpenAI's ({', '.join(VOICES)}), an espeak-ng variant "
                      f"({', '.join(VARIANTS)}), a language ({', '.join(LANGUAGES)}) or a language+voice such as "
                      f"'zh+f3'; got {voice!r}", "voice")


def words_per_minute(speed: float) -> int:
    """OpenAI's speed (0.25..4.0, 1.0 normal) as espeak-ng's rate, clamped to what espeak-ng can do (80..450)."""
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0.25 <= speed <= 4.0:
        raise SpeechError(f"speed must be a number in [0.25, 4.0] (1.0: {WPM} words per minute), got {speed!r}",
                          "speed")
    return min(max(round(WPM * speed), 80), 450)


def to_pcm(wav: bytes, rate: int = PCM_RATE) -> bytes:
    """A mono 16-bit WAV's samples resampled to `rate`, as raw little-endian 16-bit PCM (OpenAI's pcm)."""
    import numpy as np

    try:
        import soxr
    except ImportError:
        raise SpeechUnavailable("pcm needs the soxr package on the server (pip install soxr)") from None
    with wave.open(io.BytesIO(wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        source = w.getframerate()
    return soxr.resample(samples, source, rate).astype("<i2").tobytes()


def speak(text: str, voice: str, speed: float = 1.0, response_format: str = "wav",
          max_seconds: float = MAX_SECONDS, cancelled: Callable[[], bool] | None = None) -> tuple[bytes, str]:
    """OpenAI's /v1/audio/speech: (the audio, its media type). The language comes from the text; a SpeechError's
    param names the field at fault (audio longer than `max_seconds`: 'input'); SpeechUnavailable is the machine's
    fault."""
    _utf8(text, "input")
    language, variant = voice_of(voice)
    wpm = words_per_minute(speed)
    if response_format not in FORMATS:
        raise SpeechError(f"response_format {response_format!r} is not supported: this server writes only "
                          f"{' and '.join(map(repr, FORMATS))}", "response_format")
    try:
        wav = synthesize(text, language, variant, wpm, max_seconds=max_seconds, cancelled=cancelled)
    except SpeechError as e:
        if e.param == "text":  # synthesize's name for OpenAI's input
            raise SpeechError(str(e), "input") from None
        raise
    return (wav if response_format == "wav" else to_pcm(wav)), FORMATS[response_format]
