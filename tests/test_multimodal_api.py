"""Images and audio over HTTP: OpenAI content parts, /v2/generate's media lists, limits and refusals."""

from __future__ import annotations

import base64

import openai
import pytest
import requests

from seekmoe.cli.serve import load_llm
from seekmoe.llm import LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder, tiny_multimodal_folder
from tests.test_multimodal import png, wav

KEY = "sk-mm"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_multimodal_folder(tmp_path_factory.mktemp("mm-api") / "model")


@pytest.fixture(scope="module")
def url(folder):
    config = ServeConfig(model=str(folder), api_keys=(KEY,), max_image_pixels=64 * 64, max_audio_seconds=2.0,
                         max_media_items=3)
    with running_server(config, lambda: load_llm(config)) as (url, _):
        yield url


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def chat(url: str, parts: list[dict], **kw):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    return client.chat.completions.create(model="model", messages=[{"role": "user", "content": parts}],
                                          max_tokens=6, temperature=0, **kw)


def test_openai_image_and_audio_parts_reach_the_model(url, folder):
    ask = [image_part(png(1)), {"type": "text", "text": "What is this?"}]
    first = chat(url, ask)
    assert first.choices[0].message.content == chat(url, ask).choices[0].message.content  # greedy: the same
    with LLM(folder) as llm:  # the server answers as the Python API does
        want = llm.chat([{"role": "user", "content": ask}], max_tokens=6, temperature=0)
    assert first.choices[0].message.content == want.text
    assert first.usage.prompt_tokens == len(want.prompt_token_ids)  # 4 image rows counted as prompt tokens
    other = chat(url, [image_part(png(2)), {"type": "text", "text": "What is this?"}])
    assert other.choices[0].message.content != first.choices[0].message.content
    spoken = chat(url, [audio_part(wav(0.8)), {"type": "text", "text": "What was said?"}])
    assert spoken.choices[0].finish_reason in ("stop", "length")
    streamed = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY).chat.completions.create(
        model="model", messages=[{"role": "user", "content": ask}], max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want.text


def test_v2_generate_takes_images_and_audio(url, folder):
    body = {"prompt": "What is this?", "max_tokens": 6, "temperature": 0, "images": [data_url(png(1))]}
    r = requests.post(f"{url}/v2/generate", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    with LLM(folder) as llm:
        want = llm.chat([{"role": "user", "content": [image_part(png(1)), {"type": "text", "text": "What is this?"}]}],
                        max_tokens=6, temperature=0)
    assert r.json()["generated_text"] == want.text
    body = {"prompt": "Say it", "max_tokens": 3, "audio": [base64.b64encode(wav(0.5)).decode()]}
    assert requests.post(f"{url}/v2/generate", json=body, headers=AUTH).status_code == 200


@pytest.mark.parametrize("parts, status, needle", [
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], 400, "remote"),
    ([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}], 400, "remote"),
    ([image_part(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)], 400, "PNG"),
    ([image_part(png(0)[:60])], 400, "image"),
    ([image_part(png(0, size=100))], 413, "max_image_pixels"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], 400, "base64"),
    ([audio_part(wav(3.0))], 413, "max_audio_seconds"),
    ([audio_part(b"ID3\x03\0\0\0" + b"\0" * 50, "wav")], 400, "WAV"),
    ([audio_part(wav(0.5), "mp3")], 400, "format"),
    ([image_part(png(0))] * 4, 413, "max_items"),
    # typed beside an image, a placeholder would take a medium's place: refused (typed alone, it is plain text)
    ([image_part(png(0)), {"type": "text", "text": "<｜place▁holder▁no▁0｜> hi"}], 400, "placeholders"),
])
def test_bad_media_get_openai_errors(url, parts, status, needle):
    r = requests.post(f"{url}/v1/chat/completions", headers=AUTH, json={
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "?"}]}], "max_tokens": 2})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["param"] == "messages", error


def test_unknown_part_types_are_validation_errors(url):
    r = requests.post(f"{url}/v1/chat/completions", headers=AUTH, json={
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:,"}}]}]})
    assert r.status_code == 400 and "messages" in r.json()["error"]["param"]


def test_a_text_model_refuses_media_with_400(tmp_path):
    folder = tiny_model_folder(tmp_path / "text")
    config = ServeConfig(model=str(folder))
    with running_server(config, lambda: load_llm(config)) as (url, _):
        r = requests.post(f"{url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": [image_part(png(0)), {"type": "text", "text": "?"}]}]})
        assert r.status_code == 400 and "text only" in r.json()["error"]["message"]
        r = requests.post(f"{url}/v1/chat/completions", json={  # text parts alone still work
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2})
        assert r.status_code == 200
