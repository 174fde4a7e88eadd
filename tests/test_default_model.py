"""The bundled models: present, small, complete, the same in seekmoe and transformers; the chat one the default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seekmoe
from seekmoe.llm import DEFAULT_MODEL

MODELS = Path(seekmoe.__file__).parent / "models"
BUNDLED = [MODELS / "seekmoe-tiny", MODELS / "seekmoe-tiny-chat"]


def bundled(folder: Path):
    return pytest.param(folder, id=folder.name, marks=pytest.mark.skipif(
        not (folder / "config.json").exists(), reason=f"{folder.name} is not bundled"))


@pytest.mark.parametrize("folder", [bundled(f) for f in BUNDLED])
def test_bundled_model_is_small_and_complete(folder):
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 40 * 2**20


@pytest.mark.parametrize("folder", [bundled(f) for f in BUNDLED])
def test_bundled_model_matches_transformers(folder):
    transformers = pytest.importorskip("transformers")
    from seekmoe.text.tokenizer import Tokenizer

    ours = seekmoe.load_model(folder, dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([Tokenizer.from_pretrained(folder).encode("Call me Ishmael. 床前明月光，", add_bos=True)])
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_the_default_is_the_chat_model():
    assert MODELS / "seekmoe-tiny-chat" == DEFAULT_MODEL


def test_the_default_model_reads_images_and_speech():
    """The chat page's image and audio buttons work after `make serve`: the encoders ship in the bundled folder."""
    from seekmoe.llm import LLM
    from tests.test_multimodal import png, wav

    with LLM(DEFAULT_MODEL) as llm:
        assert llm.encoders is not None
        text_only = llm.chat([{"role": "user", "content": "What is this?"}], max_tokens=1).usage.prompt_tokens
        for kind, data, rows in (("image", png(0), 16), ("audio", wav(0.5), 6)):  # 0.5 s: 6
            done = llm.chat([{"role": "user", "content": [{"type": kind, "data": data},
                                                          {"type": "text", "text": "What is this?"}]}],
                            max_tokens=8, temperature=0)
            assert done.usage.completion_tokens >= 1 and done.usage.prompt_tokens >= text_only + rows, kind
