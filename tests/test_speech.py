"""Speech out: seekmoe.multimodal.speech with the real espeak-ng, and
POST /v1/audio/speech through the openai package."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import threading
import time
import tracemalloc
import types
import wave

import openai
import pytest
import requests
import soundfile as sf

from seekmoe.multimodal import speech
from seekmoe.multimodal.speech import SpeechError, SpeechUnavailable, speak, synthesize, voice_of, words_per_minute
from seekmoe.server.config import ServeConfig
from seekmoe.server.schemas import SpeechRequest
from tests.conftest import running_server

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng (apt-get install espeak-ng)")

KEY = "sk-speech"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def url():
    """A server whose model never loads: speech needs none."""
    release = threading.Event()

    def load():
        release.wait()
        raise RuntimeError("no model in these tests")

    with running_server(ServeConfig(api_keys=(KEY,)), load, wait=False) as (url, _):
        yield url
        release.set()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def seconds(wav: bytes) -> float:
    audio, rate = sf.read(io.BytesIO(wav))
    assert audio.ndim == 1 and rate == 22050
    return len(audio) / rate


def say(url: str, **body) -> requests.Response:
    return requests.post(f"{url}/v1/audio/speech", headers=AUTH, json={"voice": "alloy", **body}, timeout=30)


# ---- through the openai package ------------------------------------------------------------------------------------

def test_the_openai_client_gets_a_wav(url, client):
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello", response_format="wav").content
    assert wav.startswith(b"RIFF") and seconds(wav) > 0.2
    with wave.open(io.BytesIO(wav)) as w:  # the header holds the real sizes, not espeak-ng's placeholders
        assert w.getnframes() == (len(wav) - 44) // 2
    r = say(url, input="Hello", model="anything", instructions="cheerfully")  # model and instructions: ignored
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav" and r.content == wav
    assert requests.get(f"{url}/health").status_code == 503  # no model needed


def test_chinese_is_spoken_in_mandarin(client):
    zh = client.audio.speech.create(model="tts-1", voice="nova", input="你好，世界", response_format="wav").content
    en = client.audio.speech.create(model="tts-1", voice="nova", input="Hello, world", response_format="wav").content
    assert seconds(zh) > 0.2 and zh != en
    assert zh == speak("你好，世界", "zh+nova")[0] != speak("你好，世界", "en+nova")[0]


def test_speed_and_voices(client):
    def length(**kw) -> float:
        kw = {"model": "tts-1", "voice": "onyx", "input": "The quick brown fox jumps over the lazy dog.", **kw}
        return seconds(client.audio.speech.create(response_format="wav", **kw).content)

    assert length(speed=2.0) < 0.6 * length(speed=0.5)
    assert length(speed=0.25) == length(speed=0.3)  # both below espeak-ng's 80 words per minute
    audio = {voice: client.audio.speech.create(model="tts-1", voice=voice, input="Hi there").content
             for voice in ("alloy", "onyx", "shimmer", "f3", "en", "zh+m2")}
    assert len(set(audio.values())) == len(audio)


def test_pcm_is_24_khz_16_bit(client):
    text = "Hello there, general."
    pcm = client.audio.speech.create(model="tts-1", voice="echo", input=text, response_format="pcm").content
    wav = speak(text, "echo")[0]
    assert len(pcm) % 2 == 0 and abs(len(pcm) / 2 / 24000 - seconds(wav)) < 0.01


def test_text_that_looks_like_an_option_is_spoken(url):
    for text in ("--help", "-v en-us+f1 hello", "--version"):
        r = say(url, input=text)
        assert r.status_code == 200 and seconds(r.content) > 0.2, text
    assert say(url, input="-").status_code == 200


@pytest.mark.parametrize("body, param, needles", [
    ({"input": ""}, "input", ["empty"]),
    ({"input": "   \n"}, "input", ["empty"]),
    ({"input": "x" * 4097}, "input", ["4097", "4096"]),
    ({"input": "Hello", "voice": "bob"}, "voice", ["'bob'", "alloy", "shimmer", "f3", "zh+f3"]),
    ({"input": "Hello", "voice": "zh+bob"}, "voice", ["'zh+bob'"]),
    ({"input": "Hello", "response_format": "mp3"}, "response_format", ["'mp3'", "'wav'", "'pcm'"]),
    ({"input": "Hello", "response_format": "opus"}, "response_format", ["'opus'"]),
    ({"input": "Hello", "response_format": "aac"}, "response_format", ["'aac'"]),
    ({"input": "Hello", "response_format": "flac"}, "response_format", ["'flac'"]),
    ({"input": "Hello", "speed": 0}, "speed", ["[0.25, 4.0]", "got 0"]),
    ({"input": "Hello", "speed": 5}, "speed", ["[0.25, 4.0]", "got 5"]),
    ({"input": "Hello", "speed": -1.5}, "speed", ["[0.25, 4.0]"]),
    ({}, "input", ["required"]),
    ({"input": 5}, "input", ["string"]),
    ({"input": ["Hello"]}, "input", ["string"]),
    ({"input": "Hello", "voice": 3}, "voice", ["string"]),
    ({"input": "Hello", "voice": None}, "voice", ["string"]),
    ({"input": "Hello", "speed": "fast"}, "speed", ["number"]),
    ({"input": "Hello", "speed": True}, "speed", ["number"]),
    ({"input": "Hello", "response_format": 1}, "response_format", ["string"]),
    ({"input": "Hello", "instructions": 1}, "instructions", ["string"]),
])
def test_bad_requests_are_400s_naming_the_parameter(url, body, param, needles):
    r = say(url, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert param in error["message"] and all(n in error["message"] for n in needles), error["message"]


def test_a_lone_surrogate_is_a_400(url):
    r = requests.post(f"{url}/v1/audio/speech", headers=AUTH | {"Content-Type": "application/json"},
                      data=b'{"input": "a\\ud800b", "voice": "alloy"}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_the_client_sees_bad_request_and_missing_keys(url, client):
    with pytest.raises(openai.BadRequestError, match="voice must be one of"):
        client.audio.speech.create(model="tts-1", voice="bob", input="Hello")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input="Hello")
    r = requests.post(f"{url}/v1/audio/speech", json={"input": "Hello", "voice": "alloy"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_espeak_runs_off_the_event_loop(url, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = speech.synthesize

    def slow(*args, **kwargs):  # on the event loop, this would hold up the health check below for 120 s
        entered.set()
        release.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(speech, "synthesize", slow)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(say(url, input="Hello")))
    thread.start()
    try:
        assert entered.wait(60)
        assert requests.get(f"{url}/health", timeout=30).status_code == 503  # the server answers meanwhile
        assert not answers
    finally:
        release.set()
        thread.join(60)
    assert answers[0].status_code == 200
    assert 'endpoint="/v1/audio/speech",status="200"' in requests.get(f"{url}/metrics", headers=AUTH).text


def test_without_espeak_ng_the_answer_says_so(url, monkeypatch):
    monkeypatch.setattr(speech, "shutil", types.SimpleNamespace(which=lambda name: None))
    with pytest.raises(SpeechUnavailable, match="espeak-ng is not installed"):
        synthesize("Hello")
    r = say(url, input="Hello")
    assert r.status_code == 503 and r.json()["error"]["code"] == "speech_unavailable"
    assert "espeak-ng is not installed" in r.json()["error"]["message"]


LONG_CHINESE = ("今天天气很好，我们一起去公园散步吧。春天来了，花儿都开了，小鸟在树上唱歌。" * 200)[:4096]


def test_speech_past_the_limit_is_a_400(url):
    r = say(url, input=LONG_CHINESE, speed=0.25)  # 12 KB of text: 3,100 s, a 138 MB WAV, were it spoken whole
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    # the message comes only from the cut-off while espeak-ng runs: it was stopped at the limit, not run to the end
    assert error["param"] == "input" and f"longer than {speech.MAX_SECONDS:g} s" in error["message"], error


def test_without_soxr_pcm_says_so(url, monkeypatch):
    monkeypatch.setitem(sys.modules, "soxr", None)  # import soxr raises ImportError
    r = say(url, input="Hello", response_format="pcm")
    assert r.status_code == 503 and "soxr" in r.json()["error"]["message"]
    assert say(url, input="Hello").status_code == 200  # wav needs no soxr


# ---- seekmoe.multimodal.speech ---------------------------------------------------------------------------------------

def test_synthesize(monkeypatch):
    en = synthesize("Hello world")
    assert seconds(en) > 0.2 and en == synthesize("Hello world", "en")
    assert synthesize("Hello world", variant="f3") != en
    assert seconds(synthesize("Hello world", speed=350)) < seconds(synthesize("Hello world", speed=100))
    assert synthesize("Hello world", pitch=10) != synthesize("Hello world", pitch=90)


def test_espeak_is_stopped_once_its_audio_passes_the_limit():
    tracemalloc.start()
    try:
        with pytest.raises(SpeechError, match=r"speech would be longer than 2 s, this server's limit") as e:
            synthesize(LONG_CHINESE[:300], speed=80, max_seconds=2)  # ~230 s, 10 MB, were it spoken whole
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.param == "text" and not isinstance(e.value, SpeechUnavailable)
    assert peak < 1_000_000  # 2 s of audio are 88 KB: what was read before the kill, not what espeak-ng had left
    with pytest.raises(SpeechError, match="longer than 2 s") as e:
        speak(LONG_CHINESE[:300], "nova", 0.25, max_seconds=2)
    assert e.value.param == "input"
    assert 0.2 < seconds(synthesize("Hello world", max_seconds=2)) < 2


def test_a_hanging_espeak_is_killed_at_the_timeout(monkeypatch, tmp_path):
    fake = tmp_path / "espeak-ng"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setattr(speech, "shutil", types.SimpleNamespace(which=lambda name: str(fake)))
    monkeypatch.setattr(speech, "TIMEOUT", 0.5)
    start = time.perf_counter()
    with pytest.raises(SpeechUnavailable, match=r"espeak-ng took longer than 0\.5 s"):
        synthesize("Hello")
    assert time.perf_counter() - start < 60  # killed at 0.5 s, not left to its 600 s sleep
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int((tmp_path / "pid").read_text()), 0)


def hanging_espeak(monkeypatch, tmp_path):
    """An espeak-ng that writes its pid and sleeps 150 s (the timeout raised past that): what gone() waits for, two
    and a half times over, and no worse where a failing test leaves it to end by itself."""
    fake = tmp_path / "espeak-ng"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}.tmp\nmv {tmp_path / 'pid'}.tmp {tmp_path / 'pid'}\n"
                    "exec sleep 150\n")
    fake.chmod(0o755)
    monkeypatch.setattr(speech, "shutil", types.SimpleNamespace(which=lambda name: str(fake)))
    monkeypatch.setattr(speech, "TIMEOUT", 300)
    return tmp_path / "pid"


def gone(pid_file, seconds: float = 60) -> bool:
    """Whether the process in pid_file has ended (been killed and reaped) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 0)
            except ProcessLookupError:
                return True
        time.sleep(0.05)
    return False


def test_cancelled_speech_stops_espeak(monkeypatch, tmp_path):
    pid = hanging_espeak(monkeypatch, tmp_path)
    asked = []
    with pytest.raises(speech.SpeechCancelled):
        speak("Hello", "alloy", cancelled=lambda: asked.append(1) or (len(asked) > 3 and pid.exists()))
    assert len(asked) > 3 and gone(pid)  # asked while espeak-ng ran, which is killed and reaped


def test_speech_stops_when_its_client_leaves(url, monkeypatch, tmp_path):
    pid = hanging_espeak(monkeypatch, tmp_path)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{url}/v1/audio/speech", headers=AUTH, json={"input": "Hello", "voice": "alloy"}, timeout=1)
    assert gone(pid), "espeak-ng ran on after its client left"  # else it sleeps on for 150 s


@pytest.mark.parametrize("kwargs, param, needle", [
    ({"text": ""}, "text", "empty"),
    ({"text": " \t"}, "text", "empty"),
    ({"text": None}, "text", "empty"),
    ({"text": "x" * 4097}, "text", "4097 characters"),
    ({"text": "a\ud800"}, "text", "not valid Unicode"),
    ({"language": "fr"}, "language", "'fr'"),
    ({"variant": "m6x"}, "variant", "'m6x'"),
    ({"variant": "alloy"}, "variant", "'alloy'"),  # OpenAI's names are for speak()
    ({"speed": 79}, "speed", "[80, 450]"),
    ({"speed": 451}, "speed", "[80, 450]"),
    ({"speed": 175.0}, "speed", "int"),
    ({"speed": True}, "speed", "int"),
    ({"pitch": -1}, "pitch", "[0, 99]"),
    ({"pitch": 100}, "pitch", "[0, 99]"),
])
def test_synthesize_refuses(kwargs, param, needle):
    with pytest.raises(SpeechError, match=needle) as e:
        synthesize(**{"text": "Hello", **kwargs})
    assert e.value.param == param and not isinstance(e.value, SpeechUnavailable)


def test_voices_and_speeds():
    assert voice_of("alloy") == (None, "f2") and voice_of("f3") == (None, "f3")
    assert voice_of("zh") == ("zh", None) and voice_of("en+onyx") == ("en", "m4") and voice_of("zh+f1") == ("zh", "f1")
    assert len(set(speech.VOICES.values())) == len(speech.VOICES)  # one variant each
    bad = ("bob", "+f3", "en+", "fr+f3", "zh+zh", "en+zh+f3", "ALLOY", "alloy ", "m6")
    for voice in (*bad, 3, None):
        with pytest.raises(SpeechError, match="voice must be one of"):
            voice_of(voice)
    pattern = re.compile(SpeechRequest.model_json_schema()["properties"]["voice"]["pattern"])  # what clients see
    good = [*speech.VOICES, *speech.VARIANTS, "en", "zh", "zh+f3", "en+onyx", "zh+alloy"]
    assert all(voice_of(v) for v in good) and all(pattern.fullmatch(v) for v in good)
    assert not any(pattern.fullmatch(v) for v in bad)
    assert [words_per_minute(s) for s in (0.25, 0.5, 1, 2.0, 4.0)] == [80, 88, 175, 350, 450]
    for bad in (0.2, 4.01, float("nan"), float("inf"), "1", True):
        with pytest.raises(SpeechError, match="speed must be"):
            words_per_minute(bad)
