"""The Python SDK's images, audio and speech against a real server on tiny models; its client-side refusals."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import socket

import numpy as np
import pytest
import soundfile
from PIL import Image

from seekmoe import APIError, AsyncClient, Client
from seekmoe.client import audio, image
from seekmoe.llm import LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder, tiny_multimodal_folder
from tests.test_multimodal import png, wav

KEY = "sk-media"
GREEDY = dict(max_tokens=6, temperature=0)
espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_multimodal_folder(tmp_path_factory.mktemp("client-mm") / "model")


@pytest.fixture(scope="module")
def url(folder):
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(folder)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def llm(folder):
    with LLM(folder) as llm:
        yield llm


@pytest.fixture
def files(tmp_path):
    (tmp_path / "cat.png").write_bytes(png(1))
    (tmp_path / "tone.wav").write_bytes(wav(0.5))
    return tmp_path


def want(llm: LLM, *parts: dict, text: str = "What is this?") -> str:
    """The Python API's greedy answer to one user turn of these OpenAI parts and a question."""
    return llm.chat([{"role": "user", "content": [*parts, {"type": "text", "text": text}]}], **GREEDY).text


def image_url(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def input_audio(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def encoded(data: bytes | np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if isinstance(data, np.ndarray):
        soundfile.write(buf, data, 16000, format=fmt)
    else:
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, fmt)
    return buf.getvalue()


def test_helpers_make_openai_parts_with_the_type_from_the_magic_bytes(files):
    assert image(files / "cat.png") == image(png(1)) == image_url(png(1))
    assert image(str(files / "cat.png")) == image_url(png(1))
    assert image(encoded(png(1), "JPEG"))["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert image(bytearray(encoded(png(1), "GIF")))["image_url"]["url"].startswith("data:image/gif;base64,")
    assert audio(files / "tone.wav") == audio(wav(0.5)) == input_audio(wav(0.5))
    flac = encoded(np.zeros(800), "FLAC")
    assert audio(flac) == input_audio(flac, "flac")


def test_image_and_audio_by_path_and_bytes_reach_the_model(url, llm, files):
    flac = encoded(0.3 * np.sin(np.arange(8000) / 5), "FLAC")
    cases = [  # what the SDK is given -> the OpenAI parts LLM.chat reads
        ([image(files / "cat.png"), "What is this?"], [image_url(png(1))]),
        ([{"type": "image", "path": str(files / "cat.png")}, {"type": "text", "text": "What is this?"}],
         [image_url(png(1))]),
        ([{"type": "image", "data": png(2)}, "What is this?"], [image_url(png(2))]),
        ([audio(files / "tone.wav"), "What is this?"], [input_audio(wav(0.5))]),
        ([{"type": "audio", "data": flac}, "What is this?"], [input_audio(flac, "flac")]),
        ([image_url(png(1)), {"type": "audio", "path": files / "tone.wav"}, "What is this?"],  # OpenAI's pass
         [image_url(png(1)), input_audio(wav(0.5))]),
    ]
    with Client(url, api_key=KEY) as client:
        answers = []
        for content, parts in cases:
            got = client.chat([{"role": "user", "content": content}], **GREEDY)
            expected = llm.chat([{"role": "user", "content": [*parts, {"type": "text", "text": "What is this?"}]}],
                                **GREEDY)
            assert got.choices[0].message.content == expected.text, content
            assert got.usage.prompt_tokens == len(expected.prompt_token_ids)  # the media rows counted
            answers.append(expected.text)
            streamed = client.chat_stream([{"role": "user", "content": content}], **GREEDY)
            assert "".join(c.text for c in streamed) == answers[-1]
        assert answers[0] != answers[2]  # the image is read: another one changes the answer


def test_generate_sends_images_and_audio(url, llm, files):
    with Client(url, api_key=KEY) as client:
        g = client.generate("What is this?", images=[files / "cat.png"], audio=[wav(0.5)], **GREEDY)
        assert g.text == want(llm, image_url(png(1)), input_audio(wav(0.5)))
        streamed = client.generate_stream("What is this?", images=[png(1)], audio=[files / "tone.wav"], **GREEDY)
        assert "".join(c.text for c in streamed) == g.text
        assert client.generate("What is this?", images=[png(1)], **GREEDY).text == want(llm, image_url(png(1)))


def test_async_client_sends_media_and_speaks(url, llm, files):
    async def main():
        async with AsyncClient(url, api_key=KEY) as client:
            g = await client.generate("What is this?", images=[files / "cat.png"], **GREEDY)
            streamed = "".join([c.text async for c in client.generate_stream("What is this?", images=[png(1)],
                                                                              **GREEDY)])
            chat = await client.chat([{"role": "user", "content": [audio(files / "tone.wav"), "What is this?"]}],
                                     **GREEDY)
            return g.text, streamed, chat.choices[0].message.content

    g, streamed, chat = asyncio.run(main())
    assert g == streamed == want(llm, image_url(png(1)))
    assert chat == want(llm, input_audio(wav(0.5)))


@espeak
def test_speech_returns_audio(url):
    with Client(url, api_key=KEY) as client:
        spoken = client.speech("Hello there")
        assert spoken[:4] == b"RIFF" and spoken[8:12] == b"WAVE"
        pcm = client.speech("Hello there", voice="nova", response_format="pcm", speed=1.5)
        assert pcm[:4] != b"RIFF" and len(pcm) % 2 == 0 and len(pcm) > 1000
        with pytest.raises(APIError) as e:
            client.speech("Hello", voice="bob")
        assert e.value.status == 400 and "bob" in e.value.message

    async def main():
        async with AsyncClient(url, api_key=KEY) as client:
            return await client.speech("Hello there", model="tts-1")

    assert asyncio.run(main())[:4] == b"RIFF"


# ---- refusals before anything is sent --------------------------------------------------------------------------

@pytest.fixture
def offline():
    """A client of a port nothing listens on: a request that went out would raise APIConnectionError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", max_retries=0, max_media_bytes=20_000) as client:
        yield client


def test_bad_files_are_refused_before_sending(offline, files):
    (files / "notes.txt").write_text("not an image")
    (files / "big.png").write_bytes(png(1) + b"\0" * 20_000)
    (files / "empty.png").write_bytes(b"")
    cases = [
        (files / "nope.png", "image", ["image file", "nope.png", "does not exist"]),
        (files, "image", [str(files), "is a directory"]),
        (files / "notes.txt", "image", ["notes.txt", "not a PNG, JPEG or GIF image"]),
        (files / "notes.txt", "audio", ["notes.txt", "not a WAV or FLAC recording"]),
        (files / "big.png", "image", ["big.png", "20,000-byte limit"]),
        (files / "empty.png", "image", ["empty.png", "is empty"]),
        (files / "tone.wav", "image", ["tone.wav", "is audio", "audio()"]),
        (files / "cat.png", "audio", ["cat.png", "is an image", "image()"]),
        (b"GIF88a" + b"\0" * 20, "image", ["image data", "not a PNG"]),
        (png(1) + b"\0" * 20_000, "image", ["image data", "bytes; the limit is 20,000"]),
    ]
    for source, kind, needles in cases:
        part = {"type": kind, "path" if not isinstance(source, bytes) else "data": source}
        with pytest.raises(ValueError) as chat:
            offline.chat([{"role": "user", "content": [part, "?"]}])
        with pytest.raises(ValueError) as generate:
            offline.generate("?", **{"images" if kind == "image" else "audio": [source]})
        assert str(chat.value) == str(generate.value)
        assert all(n in str(chat.value) for n in needles), (str(chat.value), needles)


def test_bad_arguments_are_refused(offline, files):
    with pytest.raises(ValueError, match="exactly one of 'path' and 'data'"):
        offline.chat([{"role": "user", "content": [{"type": "image", "path": "x.png", "data": b"x"}]}])
    with pytest.raises(ValueError, match="exactly one"):
        offline.chat([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(TypeError, match=r"images=\[...\]"):
        offline.generate("?", images=files / "cat.png")
    with pytest.raises(TypeError, match="content part must be a dict or a str"):
        offline.chat([{"role": "user", "content": [3]}])
    with pytest.raises(TypeError, match="file path or bytes"):
        image(3)
    with pytest.raises(ValueError, match="max_media_bytes"):
        Client(max_media_bytes=0)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_file_is_read_no_further_than_the_limit():
    with pytest.raises(ValueError, match="1,000-byte limit"):  # an endless file: refused after 1,001 bytes
        image("/dev/zero", max_bytes=1000)


def test_a_text_model_refusal_surfaces_as_api_error(tmp_path):
    folder = tiny_model_folder(tmp_path / "text")
    with running_server(ServeConfig(), lambda: LLM(folder)) as (url, _), Client(url, max_retries=0) as client:
        with pytest.raises(APIError) as chat:
            client.chat([{"role": "user", "content": [image(png(0)), "?"]}], max_tokens=2)
        with pytest.raises(APIError) as generate:
            client.generate("?", audio=[wav(0.5)], max_tokens=2)
        for e in (chat, generate):
            assert e.value.status == 400 and "reads text only" in e.value.message, e.value
        assert client.chat([{"role": "user", "content": ["hi"]}], max_tokens=2).usage.completion_tokens <= 2
