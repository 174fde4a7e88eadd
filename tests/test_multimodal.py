"""Multimodal model: encoders, placeholder splicing, saving, the engine with media, and the two-stage training."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import save_file

from seekmoe.engine.cache import BlockTable
from seekmoe.engine.engine import Engine, PromptEmbeds
from seekmoe.engine.sampling import SamplingParams
from seekmoe.llm import LLM
from seekmoe.model.checkpoint import CheckpointError, load_model
from seekmoe.multimodal.media import MediaError
from seekmoe.multimodal.model import (
    AUDIO_TOKEN,
    IMAGE_TOKEN,
    WEIGHTS_FILE,
    MultimodalBatch,
    MultimodalConfig,
    MultimodalLM,
    audio_rows,
    encode,
    expand,
    load_multimodal,
    save_multimodal,
    splice,
)
from seekmoe.train.config import TrainError
from tests.conftest import MM_SMALL, tiny_model_folder, tiny_multimodal_folder

SMALL = MM_SMALL


def png(seed: int = 0, size: int = 28, mode: str = "L") -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def wav(seconds: float = 0.5, hz: float = 440.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, 0.3 * np.sin(2 * np.pi * hz * t), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mm_folder(tmp_path_factory):
    return tiny_multimodal_folder(tmp_path_factory.mktemp("mm") / "model")


@pytest.fixture(scope="module")
def llm(mm_folder):
    with LLM(mm_folder) as llm:
        yield llm


def ask(kind: str, data: bytes, text: str = "What is this?") -> list[dict]:
    return [{"role": "user", "content": [{"type": kind, "data": data}, {"type": "text", "text": text}]}]


# ---- encoders and splicing -----------------------------------------------------------------------------------

def test_encoder_shapes(llm):
    enc, cfg = llm.encoders, llm.encoders.config
    assert enc.image(torch.rand(3, 3, 14, 14)).shape == (3, cfg.image_rows, 32) and cfg.image_rows == 4
    for frames in (5, 50, 100, 1001):
        assert enc.audio(torch.randn(frames, 80)).shape == (audio_rows(frames), 32)
    assert audio_rows(100) == 12 and audio_rows(4) == 0  # 12.5 rows a second


def test_placeholders_expand_to_one_token_a_row_and_must_pair_with_the_media(llm):
    from seekmoe.multimodal.parts import split_media

    cfg = llm.encoders.config
    messages, media = split_media([*ask("image", png()), {"role": "assistant", "content": "ok"},
                                   *ask("audio", wav(1.0))], cfg)
    assert messages[0]["content"] == IMAGE_TOKEN + "\nWhat is this?" and AUDIO_TOKEN in messages[2]["content"]
    ids = [5, 18, 7, 19, 8]
    assert expand(ids, media, cfg) == [5] + [18] * 4 + [7] + [19] * 12 + [8]
    with pytest.raises(ValueError, match="do not match"):
        expand([5, 18, 8], media, cfg)  # one placeholder, two media
    with pytest.raises(ValueError, match="do not match"):
        expand([5, 19, 18], media, cfg)  # the wrong order
    # the model's own splice puts rows at the placeholders in reading order
    x = torch.tensor([[5, 18, 18, 7], [19, 8, 8, 8]])
    rows = torch.arange(3 * 32, dtype=torch.float32).view(3, 32)
    out = splice(torch.zeros(2, 4, 32), x, rows, cfg)
    assert torch.equal(out[0, 1], rows[0]) and torch.equal(out[0, 2], rows[1]) and torch.equal(out[1, 0], rows[2])
    assert out[0, 0].abs().sum() == 0
    with pytest.raises(ValueError, match="3 media placeholder tokens but the media give 2"):
        splice(torch.zeros(2, 4, 32), x, rows[:2], cfg)


def test_the_engine_answers_a_multimodal_prompt_as_the_plain_model_does(llm):
    ids, _, embeds = llm.chat_prompt(ask("image", png(1)))
    assert embeds.positions == [i for i, t in enumerate(ids) if t == 18] and len(embeds.positions) == 4
    out = llm.chat(ask("image", png(1)), max_tokens=6, temperature=0)
    model, x, want = llm.model, torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(len(out.token_ids)):
            e = model.model.embed_tokens(x)
            e[0, embeds.positions] = embeds.rows
            want.append(int(model(x, inputs_embeds=e)[0, -1].argmax()))
            x = torch.cat([x, torch.tensor([[want[-1]]])], 1)
    assert out.token_ids == want
    other = llm.chat(ask("image", png(2)), max_tokens=6, temperature=0)
    assert other.token_ids != out.token_ids  # the image is read, not only its placeholder


def test_batching_media_and_text_changes_no_sequence(llm):
    prompts = [llm.chat_prompt(ask("image", png(3))), llm.chat_prompt(ask("audio", wav(0.7))),
               llm.chat_prompt([{"role": "user", "content": "Hello there"}])]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    alone = []
    for ids, _, embeds in prompts:
        engine = Engine(llm.model, cache_tokens=2048)
        engine.add_request(ids, params, embeds=embeds)
        while engine.has_work:
            out = engine.step()
        alone.append(out[-1][0].seqs[0].tokens[len(ids):])
    engine = Engine(llm.model, cache_tokens=2048, max_step_tokens=7)  # prompts read in chunks, side by side
    reqs = [engine.add_request(ids, params, embeds=embeds) for ids, _, embeds in prompts]
    while engine.has_work:
        engine.step()
    assert [r.seqs[0].tokens[r.num_prompt:] for r in reqs] == alone


def test_the_prefix_cache_never_shares_blocks_between_different_media(llm):
    a, b = llm.chat_prompt(ask("image", png(4))), llm.chat_prompt(ask("image", png(5)))
    assert a[0] == b[0]  # the same ids: only the rows differ
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)

    def run(engine, prompt):
        req = engine.add_request(prompt[0], params, embeds=prompt[2])
        while engine.has_work:
            engine.step()
        return req.seqs[0].tokens[req.num_prompt:]

    fresh = run(Engine(llm.model, cache_tokens=512, block_size=4), b)
    engine = Engine(llm.model, cache_tokens=512, block_size=4)
    run(engine, a)
    assert run(engine, b) == fresh

    def cached(prompt) -> int:  # prompt tokens whose blocks the cache would hand a new request
        req = engine.add_request(prompt[0], params, embeds=prompt[2])
        table = BlockTable()
        n = engine.cache.match_prefix(table, req.cache_keys(req.prompt_ids))
        engine.cache.release(table)
        engine.cancel(req.id)
        return n

    first_image = a[0].index(18) // 4 * 4  # the blocks before the image are the same text
    assert cached(a) > first_image + 4 and cached(b) > first_image + 4  # each image finds its own blocks
    assert cached(llm.chat_prompt(ask("image", png(6)))) == first_image  # a new image finds only the text's


def test_bad_embeds_are_refused(llm):
    engine = Engine(llm.model, cache_tokens=256)
    for embeds, needle in ((PromptEmbeds([1], torch.zeros(2, 32), "k"), r"\(1, 32\) tensor"),
                           (PromptEmbeds([5], torch.zeros(1, 32), "k"), "positions"),
                           (PromptEmbeds([2, 1], torch.zeros(2, 32), "k"), "ascending"),
                           ("rows", "PromptEmbeds")):
        with pytest.raises(ValueError, match=needle):
            engine.add_request([3, 4, 5], SamplingParams(max_tokens=2), embeds=embeds)


# ---- media through the Python API ----------------------------------------------------------------------------

@pytest.mark.parametrize("part, needle", [
    ({"type": "image", "data": b"not an image"}, "image"),
    ({"type": "audio", "data": b"RIFF...."}, "audio"),
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "remote"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}, "format"),
    ({"type": "video", "data": b""}, "unknown content part"),
    ({"type": "image"}, "'data'"),
    ({"type": "audio", "data": wav(0.01)}, "0.05 s"),
])
def test_bad_media_get_a_clear_error(llm, part, needle):
    with pytest.raises(MediaError, match=needle):
        llm.chat([{"role": "user", "content": [part, {"type": "text", "text": "?"}]}], max_tokens=2)


def test_too_many_media_are_refused(llm):
    parts = [{"type": "image", "data": png()}] * (llm.media_limits.max_items + 1)
    with pytest.raises(MediaError, match="max_items") as e:
        llm.chat([{"role": "user", "content": parts}], max_tokens=2)
    assert e.value.status == 413


def test_a_placeholder_typed_as_text_does_not_pair_with_an_image(llm):
    messages = [{"role": "user", "content": [{"type": "text", "text": IMAGE_TOKEN}, {"type": "image", "data": png()}]}]
    with pytest.raises(ValueError, match="do not match"):
        llm.chat(messages, max_tokens=2)


def test_a_text_model_refuses_media_and_loads_as_before(tmp_path):
    folder = tiny_model_folder(tmp_path / "text")
    with LLM(folder) as llm:
        assert llm.encoders is None
        with pytest.raises(MediaError, match="text only"):
            llm.chat(ask("image", png()), max_tokens=2)
        assert llm.chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], max_tokens=2).usage


# ---- saving and loading ----------------------------------------------------------------------------------------

def test_a_multimodal_folder_loads_as_a_text_model_everywhere_and_whole_here(mm_folder):
    config = json.loads((mm_folder / "config.json").read_text())
    assert config["multimodal"]["image_token_id"] == 18
    lm = load_model(mm_folder)  # the language model alone, as every text command loads it
    mm = load_multimodal(mm_folder)
    for (n, a), (_, b) in zip(lm.state_dict().items(), mm.lm.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(mm_folder)
    x = torch.tensor([[0, 3, 5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, lm(x), rtol=1e-4, atol=1e-4)


def test_damaged_encoder_weights_are_refused(mm_folder, tmp_path):
    import shutil

    bad = shutil.copytree(mm_folder, tmp_path / "bad")
    (bad / WEIGHTS_FILE).write_bytes((bad / WEIGHTS_FILE).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        LLM(bad)
    (bad / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        LLM(bad)
    config = json.loads((mm_folder / "config.json").read_text())
    config["multimodal"]["width"] = 24
    (bad / "config.json").write_text(json.dumps(config))
    shutil.copy(mm_folder / WEIGHTS_FILE, bad / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="shape"):
        LLM(bad)
    config["multimodal"] = {"image_token_id": 18, "audio_token_id": 19, "colour": 1}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown multimodal setting 'colour'"):
        LLM(bad)


def test_a_batch_trains_the_encoders_through_the_frozen_model(mm_folder):
    mm = load_multimodal(mm_folder)
    mm.lm.requires_grad_(False)
    from seekmoe.multimodal.parts import split_media

    _, media = split_media(ask("image", png()) + ask("audio", wav(0.5)), mm.encoders.config)
    n_audio = audio_rows(media[1].data.shape[0])
    ids = torch.tensor([[3] + [18] * 4 + [3] + [19] * n_audio + [4]])
    logits = mm(MultimodalBatch(ids, media))
    logits.sum().backward()
    assert mm.encoders.image.patch.weight.grad is not None and mm.encoders.audio.conv1.weight.grad is not None
    assert all(p.grad is None for p in mm.lm.parameters())
    rows = torch.cat(encode(mm.encoders, media))
    assert rows.shape == (4 + n_audio, 32)


def test_a_batch_moves_whole_to_the_training_device_and_the_encoders_run_there(mm_folder):
    # the meta device stands in for a GPU here: a tensor left behind on the CPU meets one on meta and raises
    from seekmoe.multimodal.parts import split_media

    mm = load_multimodal(mm_folder)
    _, media = split_media(ask("image", png()) + ask("audio", wav(0.5)), mm.encoders.config)
    n_audio = audio_rows(media[1].data.shape[0])
    batch = MultimodalBatch(torch.tensor([[3] + [18] * 4 + [3] + [19] * n_audio + [4]]), media)
    x = batch.to(torch.device("meta"), non_blocking=True)  # what the training loop does off the CPU
    assert x.ids.is_meta and all(m.data.is_meta for m in x.media)
    assert [(m.kind, m.digest) for m in x.media] == [(m.kind, m.digest) for m in media]
    assert not batch.ids.is_meta and not any(m.data.is_meta for m in media)  # the data's own batch is left as it was
    rows = encode(mm.encoders.to("meta"), x.media)
    assert [r.shape for r in rows] == [(4, 32), (n_audio, 32)] and all(r.is_meta for r in rows)


def _stage_config():
    from seekmoe.train.multimodal import Settings, stage_config

    return stage_config(Settings(model="m", data="d", out="o"), 2)


def test_both_stages_train_on_the_settings_device_with_bf16_if_asked():
    from seekmoe.train.multimodal import Settings, stage_config

    s = Settings(model="m", data="d", out="o", device="cuda:1", bf16=True)
    assert {(stage_config(s, k).device, stage_config(s, k).bf16) for k in (1, 2)} == {("cuda:1", True)}
    assert _stage_config().device == "auto" and not _stage_config().bf16


# ---- two-stage training ----------------------------------------------------------------------------------------

def write_set(folder, name: str, split: str, kind: str, items: list[tuple[bytes, str]]) -> None:
    (folder / kind).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (data, answer) in enumerate(items):
        path = f"{kind}/{name}-{split}-{i}.{'png' if kind == 'images' else 'wav'}"
        (folder / path).write_bytes(data)
        part = {"type": "image" if kind == "images" else "audio", "path": path}
        lines.append({"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Which?"}]},
                                   {"role": "assistant", "content": answer}], "meta": {"answer": answer}})
    (folder / f"{name}.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_two_stage_training_freezes_then_tunes_and_resumes(tmp_path):
    from seekmoe.train.multimodal import Settings, train

    base = tiny_model_folder(tmp_path / "base", max_position_embeddings=256)
    data = tmp_path / "data"
    images = [(png(i), "It is A." if i % 2 else "It is B.") for i in range(4)]
    sounds = [(wav(0.3, hz=300 + 200 * (i % 2)), "Low." if i % 2 else "High.") for i in range(4)]
    for split in ("train", "test"):
        write_set(data, "digits", split, "images", images)
        write_set(data, "speech_digits", split, "audio", sounds)
    s = Settings(model=str(base), data=str(data), out=str(tmp_path / "run"), sets=("digits", "speech_digits"),
                 stage1_steps=4, stage2_steps=3, batch_size=4, eval_every=2, eval_batches=1, save_every=2,
                 encoder=SMALL)
    final = train(s, progress=False, log=lambda m: None)
    lm_before = load_model(base).state_dict()
    stage1 = load_multimodal(tmp_path / "run" / "stage1" / "checkpoints" / "step-00000004")
    for name, t in stage1.lm.state_dict().items():  # stage 1 leaves the language model alone, bias included
        assert torch.equal(t, lm_before[name]), name
    tuned = load_multimodal(final)
    assert any(not torch.equal(t, lm_before[n]) for n, t in tuned.lm.state_dict().items())  # stage 2 moves it
    for stage, steps in (("stage1", 4), ("stage2", 3)):
        records = [json.loads(line) for line in (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == steps and any(r["split"] == "val" for r in records)
        assert (tmp_path / "run" / stage / "loss.png").is_file()
    with LLM(final) as llm:  # the result serves: LM, encoders and tokenizer in one folder
        assert llm.chat(ask("image", png(0)), max_tokens=3).usage.completion_tokens >= 1
    # killed after stage 2's step-2 checkpoint: the rerun resumes there and ends with the same weights
    import shutil

    shutil.rmtree(tmp_path / "run" / "stage2" / "checkpoints" / "step-00000003")
    shutil.rmtree(final)
    resumed = load_multimodal(train(s, progress=False, log=lambda m: None))
    for (n, x), (_, y) in zip(resumed.state_dict().items(), tuned.state_dict().items(), strict=True):
        assert torch.equal(x, y), n
    # the same folder asked to train on other sets (or from another model) is another run: refused, not resumed
    with pytest.raises(TrainError, match="holds checkpoints of another run"):
        train(dataclasses.replace(s, sets=("digits",)), progress=False, log=lambda m: None)


def test_stage_2_mixes_text_chats_in_every_nth_step(tmp_path):
    from seekmoe.text.tokenizer import Tokenizer
    from seekmoe.train.multimodal import MixedData, MultimodalData, Settings, load_examples, train
    from seekmoe.train.repeat_drill import RepeatDrill
    from seekmoe.train.sft import SFTData

    base = tiny_model_folder(tmp_path / "base", max_position_embeddings=256)
    data = tmp_path / "data"
    for split in ("train", "test"):
        write_set(data, "digits", split, "images", [(png(i), f"It is {i}.") for i in range(5)])
    chats = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
             for w in ("alpha", "beta", "gamma", "delta")]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    tok = Tokenizer.from_pretrained(base)
    mm = load_multimodal(tiny_multimodal_folder(tmp_path / "mm"))
    media = MultimodalData(load_examples(data, "train", tok, mm.encoders.config, ("digits",), 64, False),
                           tok.vocab_size, tok.pad_id)
    text = SFTData.from_conversations([c["messages"] for c in chats], tok, 16, packing=False)
    mixed = MixedData(media, text, 3, 2)
    media_rows = []
    for step in range(9):
        batch, target = mixed.batch(step, 2, 64)
        if step % 3 == 2:  # a text batch: its own size and length, no media
            assert batch.ids.shape == (2, 16) and batch.media == []
            assert torch.equal(target, text.batch(step // 3, 2, 16)[1])
        else:
            assert len(batch.media) == 2
            media_rows.append(target)
    # the media batches are media batches 0..5 in order: none skipped, none repeated
    for i, target in enumerate(media_rows):
        assert torch.equal(target, media.batch(i, 2, 64)[1])
    # with the drill every 4th step: the rest go on as before, delayed, none skipped
    drill = RepeatDrill(tok.vocab_size, tok.special_ids | tok.added_ids, 40, seed=1, rows=3)
    drilled = MixedData(media, text, 3, 2, drill, 4)
    rest = [i for i in range(12) if i % 4 != 3]
    for step in range(12):
        batch, target = drilled.batch(step, 2, 64)
        if step % 4 == 3:
            assert batch.media == [] and torch.equal(batch.ids, drill.batch(step // 4)[0])
        else:
            assert torch.equal(target, mixed.batch(rest.index(step), 2, 64)[1])
    # the drill alone (drill_every 1): drill batches 0, 1, 2... and nothing else
    alone = MixedData(media, None, 0, 2, drill, 1)
    for step in range(4):
        batch, target = alone.batch(step, 2, 64)
        assert batch.media == [] and torch.equal(batch.ids, drill.batch(step)[0])
        assert torch.equal(target, drill.batch(step)[1])
    s = Settings(model=str(base), data=str(data), out=str(tmp_path / "run"), sets=("digits",), stage1_steps=1,
                 stage2_steps=4, batch_size=2, eval_every=4, eval_batches=1, save_every=4, encoder=SMALL,
                 text=str(tmp_path / "text.jsonl"), text_every=2, text_batch_size=2, text_seq_len=40, repeat_every=2,
                 lookup_weight=3)
    logs = []
    final = train(s, progress=False, log=logs.append)
    assert any("4 text chats" in m and "one stage 2 step in 2 of the others" in m for m in logs)
    assert any(m.startswith("seekmoe: ") and "lookup targets" in m and "weigh 3" in m for m in logs)
    assert "seekmoe: one stage 2 step in 2 a repeat drill" in logs
    # a model that sees already goes on from its own encoders: no stage 1, nothing drawn anew
    again = Settings(**{**vars(s), "model": str(final), "out": str(tmp_path / "again"), "stage2_steps": 1,
                        "lr2": 1e-9})
    logs = []
    before = load_multimodal(final).encoders.state_dict()
    after = load_multimodal(train(again, progress=False, log=logs.append)).encoders.state_dict()
    assert not (tmp_path / "again" / "stage1").exists() and not any("stage 1" in m for m in logs)
    for name, t in before.items():
        assert torch.allclose(t, after[name], atol=1e-6), name
    for change, message in (({"text_every": 1}, "text_every must be >= 2"),
                            ({"repeat_every": 1}, "the text chats would never be read"),
                            ({"repeat_every": -2}, "got -2"),
                            ({"lookup_weight": 0.0}, "lookup_weight must be a number >= 1")):
        with pytest.raises(ValueError, match=message):
            train(Settings(**{**vars(s), **change, "out": str(tmp_path / "run1")}), progress=False,
                  log=lambda m: None)
    assert not (tmp_path / "run1").exists()
    # the drill alone: every stage 2 step a drill batch, the media sets the evaluation
    drilled = Settings(**{**vars(again), "out": str(tmp_path / "drill"), "text": None, "repeat_every": 1,
                          "stage2_steps": 2, "save_every": 1})
    logs = []
    train(drilled, progress=False, log=logs.append)
    assert "seekmoe: every stage 2 step a repeat drill" in logs
    # with no text read, its batches' shape and spacing change nothing: the run resumes instead of being refused
    again_logs = []
    train(Settings(**{**vars(drilled), "text_every": 5, "text_batch_size": 3}), progress=False,
          log=again_logs.append)
    assert any(m.startswith("seekmoe: resuming from") for m in again_logs)
    # its checkpoints are of that data: resumed with the drill every other step, or text mixed in, they are refused
    for change in ({"repeat_every": 2}, {"repeat_every": 0, "text": s.text}):
        with pytest.raises(ValueError, match=r"holds checkpoints of another run .*repeat_every=1"):
            train(Settings(**{**vars(drilled), **change}), progress=False, log=lambda m: None)


@pytest.mark.parametrize("flags, message", [
    (["--sets", "cats"], "--sets: unknown set cats"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--repeat-every", "-1"], "repeat_every must be 0 (no drill), 1 (the drill alone) or more"),
    (["--text", "chats.jsonl", "--repeat-every", "1"], "the text chats would never be read"),
    (["--text", "chats.jsonl", "--text-every", "1"], "text_every must be >= 2"),
    (["--text", "chats.jsonl", "--lookup-weight", "0.5"], "lookup_weight must be a number >= 1"),
    (["--text", "chats.jsonl", "--lookup-weight", "nan"], "lookup_weight must be a number >= 1"),
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    pytest.param(["--device", "cuda"], "torch sees no GPU here", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_train_multimodal_cli_refuses_bad_flags_before_touching_anything(tmp_path, capsys, flags, message):
    from seekmoe.cli.main import main

    out = tmp_path / "run"
    assert main(["train-multimodal", "--out", str(out), "--data", str(tmp_path / "nothing"), *flags]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_eval_asks_every_test_question_and_counts_routing_by_modality(tmp_path, mm_folder, capsys):
    mm_data = pytest.importorskip("seekmoe.multimodal.data")
    from seekmoe.cli.eval_multimodal import evaluate

    try:
        mm_data.build(tmp_path / "data", sizes=mm_data.SMALL_SIZES, progress=False)
    except mm_data.MMDataError as e:
        pytest.skip(f"a source is missing: {e}")
    result = evaluate(mm_folder, tmp_path / "data", progress=False)
    asked = {}
    for name in mm_data.SETS:
        for r in mm_data.read_set(tmp_path / "data", name, "test"):
            key = f"{name}/{r['meta']['lang']}"
            asked[key] = asked.get(key, 0) + 1
    assert {k: n for k, (_, n) in result["accuracy"].items()} == asked
    assert all(0 <= ok <= n for ok, n in result["accuracy"].values())
    moe_layers, k = 2, 2  # the tiny model: 3 layers, the first dense; top-2 of 8 experts
    for modality in ("image", "audio", "text"):
        assert result["loads"][modality].shape == (moe_layers, 8)
    # 4 rows an image: this model has no larger square, so the 112x112 grounding pictures are drawn onto 28x28
    image_sets = ("digits", "mnist", "fashion_mnist", *mm_data.GROUND_SETS)
    image_tokens = 4 * sum(n for key, n in asked.items() if key.split("/")[0] in image_sets)
    assert (result["loads"]["image"].sum(1) == image_tokens * k).all()
    assert set(result["iou"]) == {key for key in asked if key.split("/")[0] in mm_data.GROUND_SETS}
    assert all(0 <= v <= 1 for v in result["iou"].values())
    assert len(result["grounded"]) == sum(n for key, n in asked.items() if key.split("/")[0] in mm_data.GROUND_SETS)
    from seekmoe.cli.main import main

    plot = tmp_path / "load.png"
    assert main(["eval-multimodal", str(mm_folder), "--data", str(tmp_path / "data"), "--plot", str(plot),
                 "--sets", "digits,speech_digits", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "| digits |" in out and "speech_digits" in out and "audio vs text" in out and plot.stat().st_size > 0
    assert main(["eval-multimodal", str(mm_folder), "--sets", "cats"]) == 2
    assert "unknown set cats" in capsys.readouterr().err
    examples = tmp_path / "examples.png"
    assert main(["eval-multimodal", str(mm_folder), "--data", str(tmp_path / "data"), "--plot", str(plot), "--json",
                 "--sets", "digit_canvas,schematics", "--limit", "2", "--examples-plot", str(examples)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert all(0 <= v["mean_iou"] <= 1 for v in scores.values()) and examples.stat().st_size > 0
    assert main(["eval-multimodal", str(mm_folder), "--data", str(tmp_path / "data"), "--plot", str(plot),
                 "--sets", "digits", "--limit", "1", "--examples-plot", str(examples)]) == 2
    assert "no grounding set asked" in capsys.readouterr().err
    (tmp_path / "data/schematics.test.jsonl").unlink()  # a folder built before the grounding sets
    assert main(["eval-multimodal", str(mm_folder), "--data", str(tmp_path / "data"), "--sets", "schematics"]) == 2
    assert "built before the grounding sets" in capsys.readouterr().err
    for name in mm_data.SETS:  # asked by default: the sets the folder has, the missing grounding ones named
        if name not in ("digits", "schematics"):
            (tmp_path / f"data/{name}.test.jsonl").unlink()
    assert main(["eval-multimodal", str(mm_folder), "--data", str(tmp_path / "data"), "--plot", str(plot),
                 "--limit", "1"]) == 0
    out, err = capsys.readouterr()
    assert "| digits |" in out and "canvas" not in out and "asking without them" in err and "schematics" in err


# ---- a second, larger image square ---------------------------------------------------------------------------

def test_config_checks_and_round_trips_max_image_size():
    base = dict(image_token_id=18, audio_token_id=19, **SMALL)
    assert "max_image_size" not in MultimodalConfig(**base).to_dict()  # older config.json sections read back as-is
    cfg = MultimodalConfig(**base, max_image_size=28)
    assert MultimodalConfig.from_dict(cfg.to_dict()) == cfg
    assert [cfg.image_side(*s) for s in ((8, 8), (14, 10), (15, 14), (300, 20))] == [14, 14, 28, 28]
    assert MultimodalConfig(**base).image_side(300, 300) == 14
    for bad, needle in ((30, "multiple of patch_size"), (14, "larger than image_size"), (0, "positive int"),
                        (True, "positive int")):
        with pytest.raises(ValueError, match=needle):
            MultimodalConfig(**base, max_image_size=bad)


def test_large_images_get_more_rows_their_own_positions_and_batch_with_small_ones(mm_folder, tmp_path):
    from seekmoe.multimodal.model import rows_of, with_large_images
    from seekmoe.multimodal.parts import split_media

    small = load_multimodal(mm_folder)
    grown = with_large_images(small.encoders, 28)
    assert with_large_images(grown, 28) is grown
    with pytest.raises(ValueError, match="cannot change"):
        with_large_images(grown, 42)
    cfg = grown.config
    # the small square's weights are kept, so small images encode exactly as before
    x = torch.rand(2, 3, 14, 14)
    assert torch.equal(grown.image(x), small.encoders.image(x))
    pos = grown.image.pos_large
    assert pos.shape == (16, 16) and torch.unique(pos.round(decimals=5), dim=0).shape[0] == 16  # all distinct
    parts = [{"type": "image", "data": png(seed, size)} for seed, size in ((1, 14), (2, 56), (3, 10))]
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "?"}]}]
    _, media = split_media(messages, cfg)
    assert [m.data.shape[-1] for m in media] == [14, 28, 14] and [rows_of(m, cfg) for m in media] == [4, 16, 4]
    assert media[1].source.size == (56, 56)  # the decoded picture, kept to draw on
    rows = encode(grown, media)
    assert [r.shape[0] for r in rows] == [4, 16, 4]
    assert torch.allclose(rows[1], grown.image(media[1].data[None])[0], atol=1e-5)  # order kept across sizes
    # saved and loaded like any multimodal model; a folder whose weights lack pos_large is refused
    model = MultimodalLM(small.lm, grown)
    model.lm.config.extra["multimodal"] = cfg.to_dict()
    folder = save_multimodal(model, tmp_path / "grown")
    back = load_multimodal(folder)
    assert back.encoders.config.max_image_size == 28 and torch.equal(back.encoders.image.pos_large, pos)
    save_file({k: v for k, v in small.encoders.state_dict().items()}, str(folder / "multimodal.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor image\.pos_large"):
        load_multimodal(folder)


def test_training_can_add_the_large_square_to_a_model_that_sees(tmp_path, mm_folder):
    from seekmoe.train.multimodal import Settings, train

    data = tmp_path / "data"
    items = [(png(i, 14 if i % 2 else 40), "It is A." if i % 2 else "It is B.") for i in range(4)]
    for split in ("train", "test"):
        write_set(data, "digits", split, "images", items)
    s = Settings(model=str(mm_folder), data=str(data), out=str(tmp_path / "run"), sets=("digits",), stage1_steps=1,
                 stage2_steps=2, batch_size=4, eval_every=2, eval_batches=1, save_every=2,
                 encoder={"max_image_size": 42})
    final = train(s, progress=False, log=lambda m: None)
    with LLM(final) as llm:
        assert llm.encoders.config.max_image_size == 42
        assert llm.chat(ask("image", png(9, 40)), max_tokens=2).usage.prompt_tokens > \
            llm.chat(ask("image", png(9, 14)), max_tokens=2).usage.prompt_tokens + 30  # 36 rows against 4
    s.encoder, s.out = {"max_image_size": 28}, str(tmp_path / "run2")
    s.model = str(final)
    with pytest.raises(TrainError, match="cannot change to 28"):
        train(s, progress=False, log=lambda m: None)
    # the grounding sets need the large square; a set missing from the folder says how to get it
    s.model, s.encoder, s.sets = str(mm_folder), {}, ("digits", "schematics")
    with pytest.raises(TrainError, match="--max-image-size 112"):
        train(s, progress=False, log=lambda m: None)
    s.encoder = {"max_image_size": 42}
    with pytest.raises(TrainError, match=r"schematics\.train\.jsonl: missing: .*--overwrite"):
        train(s, progress=False, log=lambda m: None)
    # examples longer than max_tokens are left out, and the log says how many of which set
    logs = []
    s.sets, s.max_tokens, s.out = ("digits",), 30, str(tmp_path / "run3")
    train(s, progress=False, log=logs.append)
    assert any("left out 2 of digits" in m for m in logs)  # the two 40-pixel images: 36 rows each
