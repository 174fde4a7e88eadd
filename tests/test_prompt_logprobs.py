"""Prompt logprobs (issue 21): the engine scores a prompt's tokens as it reads them, /v1/completions returns them with
echo (max_tokens 0: scoring only), and lm-evaluation-harness's local-completions model evaluates a task through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest
import requests
import torch

from seekmoe.engine.engine import Engine
from seekmoe.engine.sampling import SamplingError, SamplingParams
from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model, tiny_model_folder

CONTEXT = 128
PROMPT = [0, 5, 9, 33, 2, 71, 40, 12, 8, 3, 3, 60, 50, 11, 17, 90, 4]
# float32 throughout: the engine's fused projections, latent cache and chunked attention add in another order than
# the plain forward, which moves a logprob by a few float32 ulps of the logits (measured: < 1e-6)
ATOL = 1e-4

needs_tokenizer = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no bundled tokenizer")


def reference(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's own forward over the whole prompt: row i scores the token at i + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)  # (T, V)


def run(engine: Engine, params: SamplingParams, prompt: list[int] = PROMPT) -> list:
    req = engine.add_request(prompt, params)
    events = []
    while engine.has_work:
        events += [out for r, out in engine.step() if r is req]
    return events


# ---- the engine ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step_tokens", [256, 5])  # the prompt in one chunk, and in chunks of 5
def test_prompt_logprobs_equal_log_softmax_of_a_full_forward(step_tokens):
    model = tiny_model()
    ref = reference(model, PROMPT)
    events = run(Engine(model, max_step_tokens=step_tokens), SamplingParams(max_tokens=0, prompt_logprobs=3))
    assert len(events) == 1 and events[0].token_id is None and events[0].finish_reason == "length"
    scored = events[0].prompt_logprobs
    assert len(scored) == len(PROMPT) and scored[0] is None  # nothing predicts the first token
    for i, entry in enumerate(scored[1:], start=1):
        assert entry.token_id == PROMPT[i]
        assert entry.logprob == pytest.approx(ref[i - 1, PROMPT[i]].item(), abs=ATOL)
        best = ref[i - 1].topk(3)
        assert [t for t, _ in entry.top_logprobs] == best.indices.tolist()
        assert [lp for _, lp in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=ATOL)
        assert entry.top_logprobs[0][1] >= entry.logprob  # the top-1 is at least the token read


def test_generation_after_a_scored_prompt_is_unchanged_and_every_sequence_gets_the_scores():
    model = tiny_model()
    plain = run(Engine(model), SamplingParams(max_tokens=4, temperature=0, n=2))
    scored = run(Engine(model, max_step_tokens=7), SamplingParams(max_tokens=4, temperature=0, n=2,
                                                                  prompt_logprobs=0))
    assert [[o.token_id for o in scored if o.index == i] for i in (0, 1)] == [
        [o.token_id for o in plain if o.index == i] for i in (0, 1)]
    firsts = [o for o in scored if o.prompt_logprobs is not None]
    assert sorted(o.index for o in firsts) == [0, 1]  # on each sequence's first token, once
    assert all(len(o.prompt_logprobs) == len(PROMPT) and o.prompt_logprobs[1].top_logprobs == [] for o in firsts)


def test_a_cached_prefix_is_scored_all_the_same():
    model = tiny_model()
    engine = Engine(model, block_size=4)
    run(engine, SamplingParams(max_tokens=1))  # leaves the prompt's full blocks in the prefix cache
    scored = run(engine, SamplingParams(max_tokens=0, prompt_logprobs=0))[0].prompt_logprobs
    ref = reference(model, PROMPT)
    assert [e.logprob for e in scored[1:]] == pytest.approx(
        [ref[i - 1, PROMPT[i]].item() for i in range(1, len(PROMPT))], abs=ATOL)


def test_max_tokens_zero_only_scores_a_prompt():
    with pytest.raises(SamplingError, match=r"max_tokens must be an int >= 1 \(0 only with prompt_logprobs\)"):
        SamplingParams(max_tokens=0)
    with pytest.raises(SamplingError, match=r"prompt_logprobs must be None or an int in \[0, 20\], got 21"):
        SamplingParams(prompt_logprobs=21)
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).max_tokens == 0


# ---- the server ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tiny_model_folder(tmp_path_factory.mktemp("scored") / "tiny", max_position_embeddings=CONTEXT)
    seen: list[dict] = []  # the completion requests the server got, for the lm-eval test
    with running_server(ServeConfig(), lambda: LLM(folder)) as (url, app):
        serving = app.state.seekmoe.serving
        completion = serving.completion

        async def recorded(body, log):
            seen.append(body.model_dump())
            return await completion(body, log)

        serving.completion = recorded
        yield url, serving.llm, folder, seen


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/v1/completions", json=body, timeout=60)


def check_offsets(text: str, lps: dict) -> None:
    """Offsets ascend within the text, and each token that is whole text sits where its offset says."""
    offsets = lps["text_offset"]
    assert offsets == sorted(offsets) and all(0 <= o <= len(text) for o in offsets)
    for token, o in zip(lps["tokens"], offsets, strict=True):
        if "\ufffd" not in token and not token.startswith("<｜"):
            assert text[o:o + len(token)] == token, (token, o, text)


@needs_tokenizer
def test_echo_with_max_tokens_zero_returns_the_scored_prompt(server):
    url, llm, _, _ = server
    prompt = "The sea was calm, héllo"
    ids = llm.encode(prompt)
    r = post(url, {"prompt": prompt, "echo": True, "max_tokens": 0, "logprobs": 1})
    assert r.status_code == 200, r.text
    choice, usage = r.json()["choices"][0], r.json()["usage"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert usage == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    lps = choice["logprobs"]
    assert all(len(lps[k]) == len(ids) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"))
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    assert lps["tokens"] == [llm.tokenizer.decode([t]) for t in ids]
    check_offsets(choice["text"], lps)
    ref = llm.generate(prompt_token_ids=ids, max_tokens=0, prompt_logprobs=1).prompt_logprobs  # the Python API
    assert lps["token_logprobs"][1:] == pytest.approx([e.logprob for e in ref[1:]], abs=1e-6)
    for lp, top in zip(lps["token_logprobs"][1:], lps["top_logprobs"][1:], strict=True):
        assert 1 <= len(top) <= 2 and max(top.values()) >= lp  # the token read and the likeliest


@needs_tokenizer
def test_echo_with_max_tokens_continues_the_arrays_and_streams_the_same(server):
    url, llm, _, _ = server
    body = {"prompt": "Once upon", "echo": True, "max_tokens": 3, "logprobs": 2, "temperature": 0,
            "ignore_eos": True}
    choice = post(url, body).json()["choices"][0]
    plain = post(url, body | {"echo": False}).json()["choices"][0]
    n = len(llm.encode("Once upon"))
    assert choice["text"] == "Once upon" + plain["text"]
    lps = choice["logprobs"]
    assert len(lps["tokens"]) == n + 3 and lps["tokens"][n:] == plain["logprobs"]["tokens"]
    # the same tokens; their logprobs equal up to float order (the echo's prefill also scores every prompt position)
    assert lps["token_logprobs"][n:] == pytest.approx(plain["logprobs"]["token_logprobs"], abs=1e-5)
    assert lps["text_offset"][n] == len("Once upon")  # the completion's offsets start after the prompt
    check_offsets(choice["text"], lps)
    with requests.post(f"{url}/v1/completions", json=body | {"stream": True}, stream=True, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["text"].startswith("Once upon")  # the prompt comes first, as vLLM streams it
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert [x for c in chunks for x in c["choices"][0]["logprobs"]["text_offset"]] == lps["text_offset"]
    streamed = [x for c in chunks for x in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lps["token_logprobs"][1:], abs=1e-5)


@needs_tokenizer
def test_max_tokens_zero_without_echo_and_batches_of_prompts(server):
    url, llm, _, _ = server
    r = post(url, {"prompt": "Hello", "max_tokens": 0, "logprobs": 1})
    choice = r.json()["choices"][0]
    assert r.status_code == 200 and choice["text"] == "" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == [] and r.json()["usage"]["completion_tokens"] == 0
    assert post(url, {"prompt": "Hello", "max_tokens": 0, "echo": True}).json()["choices"][0] == {
        "index": 0, "text": "Hello", "logprobs": None, "finish_reason": "length"}
    ids = [llm.encode("Call me"), llm.encode("Ishmael, some years ago")]
    for prompt in (["Call me", "Ishmael, some years ago"], ids):  # texts, and token-id lists
        r = post(url, {"prompt": prompt, "echo": True, "max_tokens": 0, "logprobs": 0, "n": 2})
        choices = r.json()["choices"]
        assert [c["index"] for c in choices] == [0, 1, 2, 3]
        assert [c["text"] for c in choices] == ["Call me"] * 2 + ["Ishmael, some years ago"] * 2
        assert [len(c["logprobs"]["tokens"]) for c in choices] == [len(ids[0])] * 2 + [len(ids[1])] * 2
        assert r.json()["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])
    whole = post(url, {"prompt": list(range(2, 2 + CONTEXT)), "echo": True, "max_tokens": 0, "logprobs": 0})
    assert whole.status_code == 200, whole.text  # a prompt may fill the context when nothing is written


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"max_tokens": -1}, "max_tokens", "max_tokens must be an int >= 0, got -1"),
    ({"logprobs": 21}, "logprobs", "logprobs must be None or an int in [0, 20], got 21"),
    ({"logprobs": -1}, "logprobs", "logprobs must be None or an int in [0, 20], got -1"),
    ({"best_of": 3}, "best_of", "best_of is not supported"),
    ({"suffix": "end"}, "suffix", "suffix is not supported"),
    ({"prompt": list(range(2, 3 + CONTEXT))}, "prompt", "maximum context length is 128 tokens"),
    ({"max_tokens": 1, "prompt": list(range(2, 2 + CONTEXT))}, "prompt", "maximum context length is 128"),
])
def test_bad_echo_requests_get_a_clear_400(server, body, param, needle):
    r = post(server[0], {"prompt": "Hello", "echo": True, "max_tokens": 0, "logprobs": 1} | body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and needle in error["message"] and error["type"] == "invalid_request_error"


@needs_tokenizer
def test_the_openai_client_scores_a_prompt(server):
    url, llm, folder, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    c = client.completions.create(model=folder.name, prompt="The sea was calm", echo=True, max_tokens=0, logprobs=1)
    lps = c.choices[0].logprobs
    assert c.choices[0].text == "The sea was calm" and c.usage.completion_tokens == 0
    assert lps.token_logprobs[0] is None and len(lps.tokens) == len(llm.encode("The sea was calm"))


# ---- lm-evaluation-harness -------------------------------------------------------------------------------------

QUESTIONS = [
    {"question": "The capital of France is", "choices": ["Paris", "a fish", "blue"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "green"], "answer": 0},
    {"question": "The sky is", "choices": ["a spoon", "blue", "loud"], "answer": 1},
    {"question": "Water is", "choices": ["wet", "a year"], "answer": 0},
]
TASK = """task: seekmoe_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


@needs_tokenizer
def test_lm_eval_local_completions_runs_a_task_against_the_server(server, tmp_path):
    pytest.importorskip("lm_eval")
    url, llm, folder, seen = server
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "seekmoe_tiny_mc.yaml").write_text(TASK.format(data=data))
    seen.clear()
    # the served model folder holds a tokenizer.json transformers reads: lm-eval tokenizes context and choices
    # itself and sends token ids, so its lengths match the server's
    model_args = (f"model={folder.name},base_url={url}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={folder},tokenized_requests=True,max_length={CONTEXT},max_retries=1")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": "none", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args",
                           model_args, "--tasks", "seekmoe_tiny_mc", "--include_path", str(tmp_path / "tasks"),
                           "--output_path", str(tmp_path / "out"), "--log_samples", "--batch_size", "4"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    acc = results["results"]["seekmoe_tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    # every request was a prompt to score: echo, logprobs, greedy, max_tokens as this lm-eval version sends it
    # (1: it drops the last entry of the arrays, the written token)
    assert seen and all(b["echo"] and b["logprobs"] == 1 and b["max_tokens"] in (0, 1) for b in seen)
    # and the loglikelihoods lm-eval computed are the engine's own scores of each choice's tokens
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_*.jsonl")).open()]
    assert len(samples) == len(QUESTIONS)
    for sample in samples:
        q = sample["doc"]
        context = llm.tokenizer.encode(q["question"])
        for choice, resp in zip(q["choices"], sample["resps"], strict=True):
            # lm-eval's pair: the context's ids, then the whole text's past them (its choice follows a space)
            ids = context + llm.tokenizer.encode(f"{q['question']} {choice}")[len(context):]
            scored = llm.generate(prompt_token_ids=ids, max_tokens=0, prompt_logprobs=0).prompt_logprobs
            assert float(resp[0][0]) == pytest.approx(sum(e.logprob for e in scored[len(context):]), abs=1e-4)
