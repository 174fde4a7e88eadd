"""Annotated images from every surface: a reply that names regions of the image it was shown comes back with the
request's last image drawn on (/v1/chat/completions message.images and delta.images, /v2/generate's images, the
SDK's PNG bytes, the file `seekmoe chat` saves). The model is real: a tiny multimodal model overfitted in seconds to
answer QUESTION about PICTURE with ANSWER, a region; other replies are forced by /v2/generate's grammar."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import openai
import pytest
import requests

from seekmoe.client import AsyncClient, Client
from seekmoe.llm import LLM
from seekmoe.multimodal.grounding import format_region, parse_regions
from seekmoe.server.config import ServeConfig
from tests.conftest import WEATHER_TOOL, run_cli, running_server
from tests.grounded import ANSWER, PICTURE, QUESTION, check_annotated, picture

pytest_plugins = ["tests.grounded"]  # grounded_folder: the model, trained once a session

KEY = "sk-grounded"
AUTH = {"Authorization": f"Bearer {KEY}"}


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes = PICTURE) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


@pytest.fixture(scope="module")
def folder(grounded_folder):
    return grounded_folder


@pytest.fixture(scope="module")
def url(folder):
    config = ServeConfig(api_keys=(KEY,))
    with running_server(config, lambda: LLM(folder)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def chat_messages(*parts: dict, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


# ---- /v1/chat/completions ----------------------------------------------------------------------------------------

def test_a_chat_reply_naming_a_region_comes_with_the_annotated_image(oai):
    r = oai.chat.completions.create(model="grounded", messages=chat_messages(image_part()), max_tokens=80,
                                    temperature=0)
    message = r.choices[0].message
    assert message.content == ANSWER  # the text stays the model's, no image in it
    images = message.model_extra["images"]
    assert images == message.images and len(images) == 1 and images[0]["type"] == "image_url"
    head, _, data = images[0]["image_url"]["url"].partition(",")
    assert head == "data:image/png;base64"
    check_annotated(base64.b64decode(data))


def test_a_streamed_chat_reply_carries_the_image_on_its_finish_chunk(oai):
    chunks = list(oai.chat.completions.create(model="grounded", messages=chat_messages(image_part()), max_tokens=80,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    with_images = [c for c in chunks if c.choices and (c.choices[0].delta.model_extra or {}).get("images")]
    assert len(with_images) == 1 and with_images[0].choices[0].finish_reason == "stop"
    url = with_images[0].choices[0].delta.model_extra["images"][0]["image_url"]["url"]
    check_annotated(base64.b64decode(url.partition(",")[2]))


def test_no_images_without_an_image_or_a_region(oai):
    plain = oai.chat.completions.create(model="grounded", messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=20, temperature=0)
    assert "images" not in plain.choices[0].message.model_extra  # left out, not null
    other = oai.chat.completions.create(model="grounded", messages=chat_messages(image_part(), question="Hello"),
                                        max_tokens=20, temperature=0)
    assert not parse_regions(other.choices[0].message.content)
    assert "images" not in other.choices[0].message.model_extra


def test_with_tools_the_final_answer_gets_its_image_too(oai):
    ask = dict(model="grounded", messages=chat_messages(image_part()), tools=[WEATHER_TOOL], max_tokens=80,
               temperature=0)
    message = oai.chat.completions.create(**ask).choices[0].message
    assert message.content == ANSWER and not message.tool_calls
    check_annotated(base64.b64decode(message.images[0]["image_url"]["url"].partition(",")[2]))
    chunks = [c for c in oai.chat.completions.create(**ask, stream=True) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    last = chunks[-1].choices[0]
    assert last.finish_reason == "stop" and last.delta.model_extra["images"] == message.images


# ---- /v2/generate ------------------------------------------------------------------------------------------------

def generate(url: str, **body) -> dict:
    r = requests.post(f"{url}/v2/generate", json={"max_tokens": 80, "temperature": 0, **body}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def forced(text: str) -> str:
    """A Lark grammar whose only sentence is `text`."""
    return f"start: {json.dumps(text)}"


def test_v2_generate_returns_the_annotated_image_as_base64(url):
    body = generate(url, prompt=QUESTION, images=[data_url(PICTURE)])
    assert body["generated_text"] == ANSWER
    assert len(body["images"]) == 1
    check_annotated(base64.b64decode(body["images"][0]))
    with requests.post(f"{url}/v2/generate", headers=AUTH, stream=True, json={
            "prompt": QUESTION, "images": [data_url(PICTURE)], "max_tokens": 80, "temperature": 0,
            "stream": True}) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data:") and line != "data: [DONE]"]
    assert [("images" in e) for e in events] == [False] * (len(events) - 1) + [True]  # on the last chunk
    assert events[-1]["generated_text"] == ANSWER and events[-1]["images"] == body["images"]


def test_the_last_image_of_the_request_is_drawn_on(url):
    region = "the box " + format_region("B", (100, 100, 400, 900), (600, 50, 950, 300))
    blue = picture("blue")
    body = generate(url, prompt="Which?", images=[data_url(PICTURE), data_url(blue)], grammar=forced(region))
    assert body["generated_text"] == region
    check_annotated(base64.b64decode(body["images"][0]), blue, region)


@pytest.mark.parametrize("text", [
    "no region at all",
    "<|ref|>R1<|/ref|><|det|>[[650, 700, 300, 200]]<|/det|>",  # x2 < x1
    "<|ref|>R1<|/ref|><|det|>[[300, 200, 1650, 700]]<|/det|>",  # off the 0..999 grid
    "<|ref|>R1<|/ref|><|det|>[[300, 200, 650]]<|/det|>",  # three numbers
    "<|ref|>R1<|/ref|><|det|>[[300, 200, 650, 700]]",  # never closed
    "<|ref|>R1<|/ref|>",  # a label, no box
    "<|det|>[[300, 200, 650, 700], oops]<|/det|>",
])
def test_a_reply_without_a_well_formed_region_comes_back_as_text_alone(url, text):
    body = generate(url, prompt="Where?", images=[data_url(PICTURE)], grammar=forced(text))
    assert body["generated_text"] == text and "images" not in body


def test_a_region_without_an_image_to_draw_on_gives_no_image(url):
    body = generate(url, prompt="Where?", grammar=forced(ANSWER))
    assert body["generated_text"] == ANSWER and "images" not in body


# ---- the SDK -----------------------------------------------------------------------------------------------------

def test_the_sdk_returns_the_annotated_images_as_png_bytes(url):
    with Client(url, api_key=KEY, max_retries=0) as client:
        generation = client.generate(QUESTION, images=[PICTURE], max_tokens=80, temperature=0)
        assert generation.text == ANSWER and len(generation.images) == 1
        check_annotated(generation.images[0])
        streamed = list(client.generate_stream(QUESTION, images=[PICTURE], max_tokens=80, temperature=0))
        assert [c.images for c in streamed] == [[]] * (len(streamed) - 1) + [generation.images]
        reply = client.chat(chat_messages({"type": "image", "data": PICTURE}), max_tokens=80, temperature=0)
        assert reply.choices[0].message.content == ANSWER and reply.choices[0].message.images == generation.images
        chunks = list(client.chat_stream(chat_messages({"type": "image", "data": PICTURE}), max_tokens=80,
                                         temperature=0))
        assert [c.images for c in chunks if c.images] == [generation.images]
        assert chunks[-1].finish_reason == "stop" and chunks[-1].images == generation.images
        assert client.generate("Where?", max_tokens=3).images == []

    async def run():
        async with AsyncClient(url, api_key=KEY, max_retries=0) as client:
            generation = await client.generate(QUESTION, images=[PICTURE], max_tokens=80, temperature=0)
            streamed = [c async for c in client.generate_stream(QUESTION, images=[PICTURE], max_tokens=80,
                                                                temperature=0)]
            reply = await client.chat(chat_messages({"type": "image", "data": PICTURE}), max_tokens=80,
                                      temperature=0)
            chunks = [c async for c in client.chat_stream(chat_messages({"type": "image", "data": PICTURE}),
                                                          max_tokens=80, temperature=0)]
            return generation.images, streamed[-1].images, reply.choices[0].message.images, chunks[-1].images

    results = asyncio.run(run())
    assert all(images == generation.images for images in results)
    assert all(isinstance(png, bytes) for images in results for png in images)


# ---- seekmoe chat ------------------------------------------------------------------------------------------------

def test_seekmoe_chat_saves_the_annotated_image(capsys, folder, monkeypatch, tmp_path):
    (tmp_path / "pic.png").write_bytes(PICTURE)
    (tmp_path / "out" / "seekmoe-annotated-1.png").parent.mkdir()
    (tmp_path / "out" / "seekmoe-annotated-1.png").write_bytes(b"an earlier one")
    lines = [f"/image {tmp_path / 'pic.png'}", QUESTION, "/bye"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc, out, err = run_cli(capsys, "chat", str(folder), "--max-tokens", "80", "--temperature", "0",
                           "--save-images", str(tmp_path / "out"))
    assert rc == 0 and out.splitlines()[0] == ANSWER  # printed as written
    saved = tmp_path / "out" / "seekmoe-annotated-2.png"
    assert f"(annotated image: {saved})" in err.splitlines()
    assert (tmp_path / "out" / "seekmoe-annotated-1.png").read_bytes() == b"an earlier one"  # never overwritten
    check_annotated(saved.read_bytes())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seekmoe-annotated-1.png",
                                                                     "seekmoe-annotated-2.png"]
