"""The bundled default model: present, small, and the same in seekmoe and transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seekmoe

FOLDER = Path(seekmoe.__file__).parent / "models" / "seekmoe-tiny"
pytestmark = pytest.mark.skipif(not (FOLDER / "config.json").exists(),
                                reason="seekmoe-tiny is not bundled yet (issue 3: train and ship it)")


def test_bundled_model_is_small_and_complete():
    names = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) <= 40 * 2**20


def test_bundled_model_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from seekmoe.tokenizer import Tokenizer

    ours = seekmoe.load_model(FOLDER, dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    ids = torch.tensor([Tokenizer.from_pretrained(FOLDER).encode("Call me Ishmael. 床前明月光，", add_bos=True)])
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4
