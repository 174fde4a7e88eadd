"""Tiny random models: every test builds its own, on the CPU, in milliseconds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import torch

from seekmoe.model.config import ModelConfig
from seekmoe.model.model import CausalLM

TINY = dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    kv_lora_rank=16, q_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
    moe_intermediate_size=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
    first_k_dense_replace=1, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
)


def phrase_runs(text: str, n: int = 4, chinese: bool = False) -> set[tuple[str, ...]]:
    """Every n words in a row of a phrasing (n characters for Chinese), case and punctuation aside; a {fact} or {v}
    slot counts as one word. Training phrasings share none with held-out ones, so the held-out sets stay unseen."""
    text = re.sub(r"[^\w{} ]", "", text.lower().replace("{fact}", "{v}"))
    units = re.findall(r"{v}|\S", text.replace(" ", "")) if chinese else text.split()
    return {tuple(units[i:i + n]) for i in range(len(units) - n + 1)}


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig.from_dict({**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> CausalLM:
    """A random tiny model with weights large enough that greedy choices are decisive."""
    model = CausalLM(tiny_config(**overrides))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if not name.endswith("norm.weight") else 0.1
            p.copy_((1.0 if name.endswith("norm.weight") else 0.0) + scale * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model.eval()


@pytest.fixture
def model() -> CausalLM:
    return tiny_model()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`seekmoe ARGV...` in this process: (exit code, stdout, stderr)."""
    from seekmoe.cli.main import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc: int, err: str, *needles: str) -> None:
    """Exit code 2 and one `seekmoe: error: ...` line naming every needle."""
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seekmoe: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def tiny_model_folder(folder, seed: int = 0, **overrides):
    """A tiny random model saved with the bundled tokenizer: a model folder `seekmoe serve` and LLM() load."""
    from seekmoe.llm import DEFAULT_MODEL
    from seekmoe.model.checkpoint import save_model
    from seekmoe.text.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(DEFAULT_MODEL)
    save_model(tiny_model(seed, **{"vocab_size": tok.vocab_size, **overrides}), folder)
    tok.save_pretrained(folder)
    return folder


MM_SMALL = dict(image_size=14, patch_size=7, width=16, layers=1, heads=2)  # tiny encoders: 4 rows an image


def tiny_multimodal_folder(folder, seed: int = 0):
    """tiny_model_folder plus tiny random image and audio encoders: a multimodal model folder LLM() loads."""
    from seekmoe.model.checkpoint import load_model
    from seekmoe.multimodal.model import MultimodalConfig, attach, save_multimodal

    folder = tiny_model_folder(folder, seed, max_position_embeddings=256)
    model = attach(load_model(folder), MultimodalConfig(image_token_id=18, audio_token_id=19, **MM_SMALL), seed)
    with torch.no_grad():  # larger rows than the init's, so media change what a tiny model says
        for p in model.encoders.parameters():
            p.mul_(3.0)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("tokenizer")}
    return save_multimodal(model, folder, files)


@contextmanager
def running_server(config, load, wait: bool = True):
    """A real uvicorn server on 127.0.0.1 (a free port) in a thread: yields (its URL, the app)."""
    import requests

    from seekmoe.server.app import create_app, serve_in_thread

    app = create_app(config, load)
    server, thread, url = serve_in_thread(app)
    try:
        # a tiny model loads in a second; beside other busy processes it can take many (only a hang takes 120)
        deadline = time.monotonic() + 120
        while wait and requests.get(f"{url}/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the model did not load in 120 s"
            time.sleep(0.02)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def weather_chat(city: str, answer: bool = True) -> list[dict]:
    """A conversation in which the assistant calls get_weather, gets "sunny" back, and answers."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    messages = [{"role": "user", "content": f"Weather in {city}?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "sunny"}]
    return [*messages, {"role": "assistant", "content": f"It is sunny in {city}."}] if answer else messages


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory):
    """A tiny model fine-tuned (for real, in seconds) to call get_weather when asked about the weather, and to
    answer from the tool's result: real model output for the tool-call parsing tests."""
    from seekmoe.train.config import FinetuneConfig
    from seekmoe.train.finetune import finetune

    folder = tmp_path_factory.mktemp("tool-model")
    tiny_model_folder(folder / "base", max_position_embeddings=256)
    records = [{"tools": [WEATHER_TOOL], "messages": weather_chat(city)} for city in ("Paris", "Oslo", "Lima")]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records * 4))
    cfg = FinetuneConfig.from_dict({
        "model": str(folder / "base"), "data": str(folder / "data.jsonl"), "out": str(folder / "run"),
        "method": "full", "steps": 40, "warmup_steps": 2, "batch_size": 2, "seq_len": 192, "lr": 0.01,
        "min_lr": 0.002, "eval_every": 1000, "save_every": 1000, "log_every": 1000, "val_fraction": 0.1})
    finetune(cfg, progress=False, log=lambda m: None)
    return folder / "run" / "model"


SAMPLE = Path(__file__).parent / "data" / "corpus_sample"  # the committed corpus sample
TRAIN_MODEL = {  # a tiny MoE with the loss-free bias, for training runs
    "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "moe_intermediate_size": 16, "n_routed_experts": 4,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "topk_method": "noaux_tc",
    "scoring_func": "sigmoid", "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
    "max_position_embeddings": 256, "bos_token_id": 0, "eos_token_id": 1,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Token shards of the committed sample, with a small tokenizer trained on it."""
    from seekmoe.text.tokenizer import corpus_files, train_tokenizer
    from seekmoe.train.data import prepare

    root = tmp_path_factory.mktemp("corpus")
    train_tokenizer(corpus_files([SAMPLE]), root / "tok", vocab_size=512, show_progress=False)
    prepare([SAMPLE], root / "tok", root / "data", val_fraction=0.05, seed=0, progress=False)
    (root / "model.json").write_text(json.dumps(TRAIN_MODEL))
    return root


@contextmanager
def serve_process(folder, key: str = "k"):
    """`seekmoe serve FOLDER --port 0` in a child process with the API key `key`: (its address, the process) once
    /health answers 200; killed at the end if it still runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEEKMOE_API_KEY": key}
    proc = subprocess.Popen([sys.executable, "-m", "seekmoe", "serve", str(folder), "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "http://" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "exited before listening"
        url = re.search(r"http://[\d.]+:\d+", line)[0]
        deadline = time.monotonic() + 60
        while requests.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
