"""The Python API on the bundled default model: generate, stream, chat, stop strings, n, logprobs, async."""

from __future__ import annotations

import asyncio

import pytest
import torch

import seekmoe
from seekmoe.engine.engine import EngineError
from seekmoe.engine.sampling import SamplingError
from seekmoe.llm import DEFAULT_MODEL, LLM

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled model")


@pytest.fixture(scope="module")
def llm():
    with LLM() as llm:
        yield llm


def test_default_is_the_bundled_model_and_greedy_matches_the_plain_model(llm):
    assert llm.path == DEFAULT_MODEL and isinstance(llm, seekmoe.LLM)
    ids = llm.encode("Call me Ishmael. Some years ago")
    c = llm.generate(prompt_token_ids=ids, max_tokens=12, temperature=0, ignore_eos=True)
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(12):
            x = torch.cat([x, llm.model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert c.token_ids == x[0, len(ids):].tolist()
    # the text leaves out special tokens (the chat model may write end-of-sentence, ignored here)
    assert c.text == llm.tokenizer.decode(i for i in c.token_ids if i not in llm.tokenizer.special_ids)
    assert c.finish_reason == "length"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (len(ids), 12, len(ids) + 12)


def test_stream_gives_the_same_text_as_generate(llm):
    kwargs = dict(max_tokens=24, temperature=0.8, seed=7, ignore_eos=True)
    pieces = list(llm.stream("床前明月光，", **kwargs))
    assert len(pieces) > 1 and "".join(pieces) == llm.generate("床前明月光，", **kwargs).text


def test_batch_of_prompts_returns_one_completion_each(llm):
    kwargs = dict(max_tokens=8, temperature=0, ignore_eos=True)
    both = llm.generate(["In the beginning", "To be, or not"], **kwargs)
    assert [c.text for c in both] == [llm.generate(p, **kwargs).text for p in ["In the beginning", "To be, or not"]]


def test_stop_strings_are_cut_and_never_streamed(llm):
    kwargs = dict(max_tokens=40, temperature=0, ignore_eos=True)
    full = llm.generate("The whale", **kwargs).text
    stop = full[10:13]
    cut = llm.generate("The whale", stop=[stop], **kwargs)
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]
    assert stop not in "".join(llm.stream("The whale", stop=[stop], **kwargs))


def test_n_samples_and_logprobs(llm):
    c = llm.generate("Moby", max_tokens=6, temperature=1.0, n=3, seed=1, logprobs=2, ignore_eos=True)
    assert len(c.choices) == 3 and c.usage.completion_tokens == 18
    assert len({tuple(ch.token_ids) for ch in c.choices}) > 1
    first = c.choices[0].logprobs[0]
    assert first.token_id == c.choices[0].token_ids[0] and len(first.top_logprobs) == 2
    assert first.top_logprobs[0].logprob >= first.top_logprobs[1].logprob and first.logprob <= 0
    assert bytes(first.bytes) == llm.tokenizer.token_bytes(first.token_id)


def test_chat_applies_the_template(llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    ids = llm.chat_ids(messages)
    assert ids[0] == llm.tokenizer.bos_id and ids[-1] == llm.tokenizer.token_to_id("<｜Assistant｜>")
    c = llm.chat(messages, max_tokens=5, temperature=0, ignore_eos=True)
    assert c.token_ids == llm.generate(prompt_token_ids=ids, max_tokens=5, temperature=0, ignore_eos=True).token_ids
    with pytest.raises(ValueError, match=r"messages\[0\].role"):
        llm.chat([{"role": "robot", "content": "x"}])


def test_async_iteration(llm):
    async def run():
        req = llm.submit(llm.encode("Call me"), llm.params(max_tokens=6, temperature=0, ignore_eos=True))
        return [d async for d in req]

    deltas = asyncio.run(run())
    assert sum(len(d.token_ids) for d in deltas) == 6 and deltas[-1].finish_reason == "length"


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(temperature=-1), SamplingError, "temperature"),
    (dict(top_p=0), SamplingError, "top_p"),
    (dict(max_tokens=0), SamplingError, "max_tokens"),
    (dict(max_tokens=5000), EngineError, "context"),
    (dict(bogus=1), TypeError, "bogus"),
])
def test_bad_arguments_are_refused_by_name(llm, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        llm.generate("x", **kwargs)


def test_bad_prompts_are_refused(llm):
    with pytest.raises(TypeError, match="exactly one"):
        llm.generate()
    with pytest.raises(EngineError, match="non-empty"):
        llm.generate(prompt_token_ids=[])
    with pytest.raises(EngineError, match="not a token id"):
        llm.generate(prompt_token_ids=[10**9])
    with pytest.raises(TypeError, match="str"):
        llm.generate([b"bytes"])


def test_int8_engine_runs_close_to_float(tmp_path):
    with LLM(quantize="int8") as q:
        assert "quantization_config" in q.model.config.extra
        c = q.generate("Call me Ishmael.", max_tokens=8, temperature=0, ignore_eos=True)
        assert len(c.token_ids) == 8


def test_an_int8_kv_cache_serves_the_bundled_model():
    """bench/kv_cache.py measures what it costs; here: it is the cache the engine uses, it answers, and a name it does
    not know is refused with those it does."""
    with LLM(kv_cache_dtype="int8") as q:
        assert q.engine.cache.dtype == torch.int8 and q.engine.cache.meta is not None
        c = q.generate("Call me Ishmael.", max_tokens=8, temperature=0, ignore_eos=True)
        assert len(c.token_ids) == 8 and c.text
    with pytest.raises(EngineError, match="kv_cache_dtype must be one of auto"):
        LLM(kv_cache_dtype="fp8")


def test_ids_past_the_tokenizer_are_never_drawn(tmp_path):
    """A checkpoint may pad its vocabulary past its tokenizer's (DeepSeek-V2: 102,400 rows, 100,015 ids): those
    rows are never drawn, greedy or sampled, even where they score highest, so every token decodes."""
    from seekmoe.model.checkpoint import load_model, save_model
    from tests.conftest import tiny_model_folder

    folder = tiny_model_folder(tmp_path / "m", vocab_size=8192 + 64)  # the bundled tokenizer has 8,192 ids
    model = load_model(folder)
    with torch.no_grad():
        model.lm_head.weight[8192:] *= 100.0  # the padding rows win every argmax unless they are masked
    save_model(model, folder)
    assert int(model(torch.tensor([[0, 5, 9]]))[0, -1].argmax()) >= 8192
    with LLM(folder) as llm:
        for temperature in (0.0, 1.0):
            out = llm.generate(prompt_token_ids=[0, 5, 9], max_tokens=8, temperature=temperature, seed=1,
                               ignore_eos=True)
            assert len(out.token_ids) == 8 and max(out.token_ids) < 8192
    with pytest.raises(EngineError, match="vocab_limit"):
        from seekmoe.engine.engine import Engine

        Engine(model, cache_tokens=64, vocab_limit=0)
