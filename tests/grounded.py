"""A tiny multimodal model that answers QUESTION about PICTURE with ANSWER, a region of it: trained once a session
(the `grounded_folder` fixture) for every test of annotated images — tests/test_grounding_api.py and the Java and
C++ SDKs' (tests/sdk_live.py) — and check_annotated, what such a test expects back.

A test module takes the fixture with `pytest_plugins = ["tests.grounded"]`: a plugin's fixture is one for the
whole session, where a fixture imported into two modules would be trained twice. The modules import this one
before pytest registers it, too late to rewrite its asserts (PYTEST_DONT_REWRITE): they say what failed themselves.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image, ImageChops, ImageDraw

from seekmoe.llm import LLM
from seekmoe.multimodal.grounding import MIN_SIDE, annotate, format_region, parse_regions
from seekmoe.multimodal.model import MultimodalBatch, load_multimodal, save_multimodal
from tests.conftest import WEATHER_TOOL, tiny_multimodal_folder

QUESTION = "Where is the red part?"
ANSWER = "It is here: " + format_region("R1", (300, 200, 650, 700))


def png_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def picture(colour: str = "red") -> bytes:
    """64 x 48: a coloured block on white."""
    image = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(image).rectangle((20, 10, 40, 30), fill=colour)
    return png_of(image)


PICTURE = picture()


def ask(image: bytes = PICTURE, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "data": image}, {"type": "text", "text": question}]}]


def grounded_model(tmp, steps: int = 120, tools: list[dict] | None = None):
    """A tiny multimodal model folder that answers QUESTION about PICTURE with ANSWER (greedily): its random weights
    trained on that one exchange, as the server renders its prompt, until it knows it by heart; with tools, also
    on the exchange with these tools offered."""
    base = tiny_multimodal_folder(tmp / "random")
    with LLM(base) as llm:
        prompts = [llm.chat_inputs(ask(), offered) for offered in ([None, tools] if tools else [None])]
        answer = [*llm.tokenizer.encode(ANSWER), llm.engine.eos_token_id]
    model = load_multimodal(base).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = 0.0
        for ids, _, _, media in prompts:
            seq = torch.tensor([ids + answer])  # (1, T)
            out = model(MultimodalBatch(seq[:, :-1], media))
            logits = out[0] if isinstance(out, tuple) else out
            loss = loss + torch.nn.functional.cross_entropy(logits[0, len(ids) - 1:].float(), seq[0, len(ids):])
        opt.zero_grad()
        loss.backward()
        opt.step()
    files = {p.name: p.read_bytes() for p in base.iterdir() if p.name.startswith("tokenizer")}
    return save_multimodal(model.eval(), tmp / "grounded", files)


def drawn(image: bytes, text: str) -> Image.Image:
    """What the server should send: the image with the text's regions drawn, as grounding.annotate draws them."""
    return annotate(Image.open(io.BytesIO(image)), parse_regions(text))


def same(png: bytes, want: Image.Image) -> bool:
    got = Image.open(io.BytesIO(png))
    assert got.format == "PNG", f"not a PNG but {got.format}"
    return got.size == want.size and ImageChops.difference(got.convert("RGB"), want).getbbox() is None


def check_annotated(png: bytes, image: bytes = PICTURE, text: str = ANSWER) -> None:
    """A PNG of the image, enlarged to MIN_SIDE, with the regions drawn: not the plain picture."""
    got, want = Image.open(io.BytesIO(png)), drawn(image, text)
    shown = Image.open(io.BytesIO(image)).size
    assert max(got.size) >= MIN_SIDE and got.size[0] * shown[1] == got.size[1] * shown[0], \
        f"{got.size}: not the picture's {shown} enlarged to {MIN_SIDE}"
    assert same(png, want), f"{got.size} differs from what the server should draw, {want.size}"
    assert not same(png, annotate(Image.open(io.BytesIO(image)), [])), "nothing was drawn on the picture"


@pytest.fixture(scope="session")
def grounded_folder(tmp_path_factory):
    """The grounded model, also asked with WEATHER_TOOL offered: trained once, shared by every module."""
    return grounded_model(tmp_path_factory.mktemp("grounded"), tools=[WEATHER_TOOL])
