"""Fine-tuning: data formats and their errors, loss masking, truncation and packing, LoRA save/merge, the command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from seekmoe.llm import DEFAULT_MODEL
from seekmoe.model.checkpoint import load_model
from seekmoe.model.lora import AdapterError, add_adapter, apply_adapter, lora_config, save_adapter
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train.config import FinetuneConfig, TrainError
from seekmoe.train.finetune import finetune, merge_adapter
from seekmoe.train.loop import lm_loss
from seekmoe.train.sft import (
    IGNORE,
    LoadReport,
    SFTData,
    SFTError,
    Text,
    Weighted,
    fit_conversation,
    lookup_targets,
    pack,
    parse_example,
    read_conversations,
    tokenize_conversation,
)
from tests.conftest import assert_usage_error, run_cli, tiny_model, tiny_model_folder, tiny_multimodal_folder

SYSTEM = {"role": "system", "content": "You are terse."}


def chat(*turns: str, system: bool = True) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return ([SYSTEM] if system else []) + [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(DEFAULT_MODEL)


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return str(path)


# ---- formats ---------------------------------------------------------------------------------------------------

def test_alpaca_becomes_a_conversation():
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "Be exact."}
    assert parse_example(record) == [{"role": "system", "content": "Be exact."},
                                     {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                     {"role": "assistant", "content": "5"}]
    assert parse_example({"instruction": "Hi", "output": "Hello"}, "alpaca")[0] == {"role": "user", "content": "Hi"}


def test_messages_keep_extra_keys_out():
    record = {"messages": chat("hi", "hello"), "meta": {"intent": "greeting"}}
    assert parse_example(record) == chat("hi", "hello")


@pytest.mark.parametrize(("line", "needle"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "plain"}', "neither 'messages'"),
    ('{"text": ""}', "text must be a non-empty string"),
    ('{"text": 5}', "text must be a non-empty string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "role must be one of"),
    ('{"instruction": "x"}', "output is missing"),
    ('{"instruction": "", "output": "y"}', "instruction is empty"),
    ('{"instruction": "x", "input": 3, "output": "y"}', "input must be a string"),
    ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
])
def test_malformed_line_is_fatal_by_default_and_named(tmp_path, line, needle):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": chat("a", "b")}, line])
    with pytest.raises(SFTError) as e:
        read_conversations([tmp_path / "d.jsonl"])
    assert str(e.value).startswith(f"{path}:2: ")
    assert needle in str(e.value)


def test_skip_bad_lines_counts_and_keeps_the_rest(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"messages": [{"role": "user", "content": "a"}, '
                                       b'{"role": "assistant", "content": "b"}]}\n'
                                       b"\xff\xfe not utf-8\n\n{oops\n"
                                       b'{"instruction": "x", "output": "y"}\n')
    report, logged = LoadReport(), []
    got = read_conversations([tmp_path / "d.jsonl"], skip_bad=True, report=report, log=logged.append)
    assert len(got) == 2
    where = tmp_path / "d.jsonl"
    assert [s.split(": ")[0] for s in report.skipped_lines] == [f"{where}:2", f"{where}:4"]
    assert "not UTF-8" in report.skipped_lines[0] and len(logged) == 2


def test_huge_line_is_refused_without_parsing(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "' + "x" * (5 << 20) + '", "output": "y"}\n')
    with pytest.raises(SFTError, match=r"d\.jsonl:1: line is .* bytes; at most"):
        read_conversations([tmp_path / "d.jsonl"])


def test_format_forced_to_alpaca_rejects_chat_lines(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"messages": chat("a", "b")}])
    with pytest.raises(SFTError, match=r"d\.jsonl:1: instruction is empty"):
        read_conversations([tmp_path / "d.jsonl"], fmt="alpaca")


def test_plain_text_lines_are_learned_whole(tmp_path, tok):
    write_jsonl(tmp_path / "d.jsonl", [{"messages": chat("a", "b")}, {"text": "Call me Ishmael. Some years ago"}])
    conversation, text = read_conversations([tmp_path / "d.jsonl"])
    assert conversation == chat("a", "b")
    assert isinstance(text, Text) and text == "Call me Ishmael. Some years ago"
    ids, mask, truncated = fit_conversation(tok, text, 100)
    assert ids == [tok.bos_id, *tok.encode(text), tok.eos_id] and not truncated
    assert mask == [False] + [True] * (len(ids) - 1)  # every token but the begin-of-sentence is a target
    ids, mask, truncated = fit_conversation(tok, Text("word " * 300), 64)
    assert len(ids) == len(mask) == 64 and truncated and ids[-1] != tok.eos_id  # cut text does not end
    # a chat-template token written in plain text stays plain text
    ids, _, _ = fit_conversation(tok, Text(tok.eos_token), 100)
    assert ids.count(tok.eos_id) == 1
    with pytest.raises(SFTError, match="text must be"):
        write_jsonl(tmp_path / "e.jsonl", [{"messages": chat("a", "b")}])
        read_conversations([tmp_path / "e.jsonl"], fmt="text")


# ---- masking, truncation, packing ------------------------------------------------------------------------

def test_mask_covers_exactly_the_assistant_turns_and_their_eos(tok):
    messages = chat("What is 2 + 2?", "4", "And 3 + 3?", "6")
    ids, mask = tokenize_conversation(tok, messages)
    assert ids == tok.apply_chat_template(messages, add_generation_prompt=False)  # same ids as the whole text
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert learned == [*tok.encode("4"), tok.eos_id, *tok.encode("6"), tok.eos_id]
    assistant = tok.token_to_id("<｜Assistant｜>")
    assert not any(m for i, m in zip(ids, mask, strict=True) if i in (assistant, tok.bos_id))


def test_tool_results_carry_no_loss(tok):
    messages = [*chat("integrate x", "calling", system=False), {"role": "tool", "content": "x**2/2"},
                {"role": "assistant", "content": "x²/2"}]
    ids, mask = tokenize_conversation(tok, messages)
    learned = tok.decode(i for i, m in zip(ids, mask, strict=True) if m)
    assert learned == f"calling{tok.eos_token}x²/2{tok.eos_token}"


def test_truncation_drops_oldest_whole_exchanges_and_keeps_the_system_prompt(tok):
    messages = chat(*[f"question number {i} " * 4 if i % 2 == 0 else f"answer {i}" for i in range(12)])
    full, _ = tokenize_conversation(tok, messages)
    ids, _, truncated = fit_conversation(tok, messages, len(full) - 1)
    assert truncated and len(ids) < len(full)
    text = tok.decode(ids)
    assert text.startswith(tok.bos_token + "<｜System｜>You are terse.<｜User｜>question number ")
    assert "question number 0 " not in text and text.endswith("answer 11" + tok.eos_token)
    assert fit_conversation(tok, messages, len(full)) == (full, tokenize_conversation(tok, messages)[1], False)
    assert fit_conversation(tok, chat("x " * 200, "y"), 50) is None  # the last exchange alone is too long


def test_packing_fills_rows_and_pads_without_loss():
    a = ([5, 6, 7], [False, True, True])
    b = ([8, 9], [False, True])
    tokens, masks = pack([a, b, a], 6, pad_id=2)
    assert tokens.tolist() == [[5, 6, 7, 8, 9, 2], [5, 6, 7, 2, 2, 2]]
    assert masks.tolist() == [[False, True, True, False, True, False], [False, True, True, False, False, False]]
    tokens, _ = pack([a, b, a], 6, pad_id=2, packing=False)
    assert len(tokens) == 3


def test_batches_mask_targets_and_replay_exactly(tok):
    conversations = [chat(f"q{i}", f"a{i}") for i in range(40)]
    data = SFTData.from_conversations(conversations, tok, seq_len=32, seed=3)
    x, y = data.batch(5, 4, 32)
    assert x.shape == y.shape == (4, 32)
    learned = y[y != IGNORE]
    assert len(learned) and set(learned.tolist()) <= set(x.flatten().tolist()) | {tok.eos_id}
    again = SFTData.from_conversations(conversations, tok, seq_len=32, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(data.batch(5, 4, 32), again.batch(5, 4, 32), strict=True))
    epoch = -(-len(data) // 4)
    assert not torch.equal(data.batch(0, 4, 32)[0], data.batch(epoch, 4, 32)[0]) or len(data) <= 4
    with pytest.raises(SFTError, match="packed for seq_len 32"):
        data.batch(0, 4, 64)


def test_loss_counts_only_targets():
    logits = torch.randn(1, 4, 10)
    y = torch.tensor([[IGNORE, 3, IGNORE, 7]])
    expected = torch.nn.functional.cross_entropy(logits[0, [1, 3]], torch.tensor([3, 7]))
    assert torch.allclose(lm_loss(logits, y), expected)
    assert lm_loss(logits, torch.full((1, 4), IGNORE)).item() == 0.0


def test_weighted_loss_is_the_weighted_mean_over_targets():
    logits = torch.randn(1, 4, 10)
    y = torch.tensor([[IGNORE, 3, IGNORE, 7]])
    ce = torch.nn.functional.cross_entropy(logits[0, [1, 3]], torch.tensor([3, 7]), reduction="none")
    # a weight where there is no target counts for nothing
    assert torch.allclose(lm_loss(logits, Weighted(y, torch.tensor([[9.0, 1, 9, 1]]))), lm_loss(logits, y))
    assert torch.allclose(lm_loss(logits, Weighted(y, torch.tensor([[0.0, 1, 0, 4]]))), (ce[0] + 4 * ce[1]) / 5)
    assert lm_loss(logits, Weighted(torch.full((1, 4), IGNORE), torch.ones(1, 4))).item() == 0.0


# ---- lookups ---------------------------------------------------------------------------------------------------

BOS, PAD = 0, 2


def conversation(context: list[int], answer: list[int]) -> tuple[list[int], list[bool]]:
    return [BOS, *context, *answer], [False] * (1 + len(context)) + [True] * len(answer)


def test_a_lookup_starts_a_copy_whose_token_before_is_the_answers_own():
    hi, im, ken, ji, your, name, is_, based, in_, leeds, you, are = range(10, 22)
    rows = [conversation([hi, im, ken, ji], [your, name, is_, ken, ji]),  # "Kenji" found by its role
            conversation([based, in_, leeds, hi], [you, are, in_, leeds, hi]),  # "Leeds" follows "in" as it did
            conversation([hi, im, ken], [your, name, is_, ken, ji]),  # "ken ji" is not in the context: no copy
            conversation([hi, im, ken, ji], [your, name, is_, ken])]  # nothing copied after it: a lone token
    tokens, masks = pack(rows, 12, PAD, packing=False)
    found = lookup_targets(tokens, masks, BOS, predicted=2)  # template words too: the next test has them
    assert [np.flatnonzero(r).tolist() for r in found] == [[8], [7], [], []]  # "in" starts the copy "in Leeds"
    # a conversation packed after another does not read the one before it
    tokens, masks = pack([rows[0], conversation([hi], [your, name, is_, ken, ji])], 20, PAD)
    assert np.flatnonzero(lookup_targets(tokens, masks, BOS, predicted=2)[0]).tolist() == [8]
    # plain text has no context to copy from
    text = np.array([[BOS, ken, ji, hi, ken, ji]])
    assert not lookup_targets(text, np.array([[False] + [True] * 5]), BOS, predicted=2).any()


def test_what_the_answers_own_words_predict_is_no_lookup():
    welcome, maple, co, hi, is_ = range(10, 15)
    names = [(20 + 2 * i, 21 + 2 * i) for i in range(12)]
    # every answer starts "welcome maple co" after a system text with "maple co": the pair (welcome, maple) is every
    # target after "welcome", a template and no lookup; "is" precedes twelve different names
    rows = [conversation([maple, co, hi, a, b], [welcome, maple, co, is_, a, b]) for a, b in names]
    tokens, masks = pack(rows, 12, PAD, packing=False)
    found = lookup_targets(tokens, masks, BOS)
    assert [np.flatnonzero(r).tolist() for r in found] == [[10]] * 12


def test_lookup_weights_in_batches(tok):
    names = ["Amber Brook", "Basil Crane", "Cyril Dale", "Dora Ennis", "Edgar Frost", "Fiona Gale", "Gideon Hale",
             "Hazel Irwin", "Ivor Jones", "Juno Kerr", "Kenji Garcia", "Lorna Mills", "Magnus Noble", "Nora Olsen",
             "Otto Pryce", "Petra Quinn", "Rufus Stone", "Selma Tate", "Tobias Usher", "Ursula Vance"]
    conversations = [chat(f"Hi, I'm {n}.", f"Your name is {n}.") for n in names * 2]
    plain = SFTData.from_conversations(conversations, tok, seq_len=64, seed=3)
    weighted = SFTData.from_conversations(conversations, tok, seq_len=64, seed=3, lookup_weight=4)
    assert weighted.report.lookup_targets > 0 and plain.weights is None
    x, y = weighted.batch(2, 4, 64)
    assert isinstance(y, Weighted) and torch.equal(x, plain.batch(2, 4, 64)[0])
    assert torch.equal(y.targets, plain.batch(2, 4, 64)[1])
    counted = y.weights[y.targets != IGNORE]
    assert set(counted.unique().tolist()) == {1.0, 4.0} and (y.weights[y.targets == IGNORE] == 0).all()
    for bad in (0.5, float("nan"), float("inf"), -1):
        with pytest.raises(SFTError, match="lookup_weight must be a number >= 1"):
            SFTData.from_conversations(conversations, tok, seq_len=64, lookup_weight=bad)


# ---- LoRA ------------------------------------------------------------------------------------------------------

ALL_TARGETS = "attention,shared_experts,dense_mlp,routed_experts"


@pytest.mark.parametrize("targets", ["attention", "shared_experts", "routed_experts", ALL_TARGETS])
def test_adapter_save_then_merge_gives_the_same_logits(tmp_path, targets):
    base = tiny_model(topk_method="noaux_tc", scoring_func="sigmoid", n_group=2, topk_group=1)
    peft_model = add_adapter(copy.deepcopy(base), lora_config(targets, r=4, alpha=8))
    x = torch.randint(0, 97, (2, 9))
    assert torch.allclose(peft_model(x), base(x), atol=1e-6)  # a fresh adapter (B = 0) changes nothing
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
        for name, b in peft_model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.add_(torch.randn_like(b))  # loss-free balancing moved the routing bias too
    expected = peft_model(x)
    assert not torch.allclose(expected, base(x), atol=1e-3)
    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    merged = apply_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert type(merged) is type(base)
    # the merged weights round once more than the adapter's separate product: logits ~1e-6 of their size apart
    # (measured); a merge that lost or mis-scaled the adapter misses its whole effect on them (2 to 5, here)
    torch.testing.assert_close(merged(x), expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_lora_settings_errors():
    with pytest.raises(AdapterError, match="comma-separated list of attention"):
        lora_config("attention,mlp")
    with pytest.raises(AdapterError, match="dropout must be 0 when the targets include routed_experts"):
        lora_config("routed_experts", dropout=0.1)
    with pytest.raises(TrainError, match=r"lora\.r must be an integer >= 1"):
        FinetuneConfig.from_dict({"data": "x", "lora": {"r": 0}})
    with pytest.raises(TrainError, match="method must be one of full, lora"):
        FinetuneConfig.from_dict({"data": "x", "method": "qlora"})


@pytest.mark.parametrize(("setup", "needle"), [
    (lambda d: None, "no adapter_config.json"),
    (lambda d: (d / "adapter_config.json").write_text("{nope"), "not a LoRA adapter config"),
    (lambda d: (d / "adapter_config.json").write_text('{"peft_type": "IA3"}'), "peft_type must be LORA"),
])
def test_bad_adapter_folders(tmp_path, setup, needle):
    folder = tmp_path / "adapter"
    folder.mkdir()
    setup(folder)
    with pytest.raises(AdapterError, match=needle):
        apply_adapter(tiny_model(), folder)


def test_adapter_for_another_model_is_refused(tmp_path):
    peft_model = add_adapter(tiny_model(), lora_config("attention", r=2))
    save_adapter(peft_model, tmp_path / "adapter")
    with pytest.raises(AdapterError, match="does not fit this model"):
        apply_adapter(tiny_model(hidden_size=48), tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(AdapterError, match="cannot read"):
        apply_adapter(tiny_model(), tmp_path / "adapter")


# ---- the whole run ----------------------------------------------------------------------------------------------

def make_run(tmp_path, method: str, steps: int = 4, **extra) -> FinetuneConfig:
    model = tmp_path / "base"
    if not model.exists():
        tiny_model_folder(model, topk_method="noaux_tc", scoring_func="sigmoid", n_group=2, topk_group=1,
                          max_position_embeddings=256)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "chat.jsonl", [{"messages": chat(f"what is {i} plus {i}?", str(2 * i))} for i in range(30)]
                + [{"instruction": f"Repeat {i}", "output": str(i)} for i in range(10)])
    write_jsonl(data / "chat.val.jsonl", [{"messages": chat(f"what is {i} plus 1?", str(i + 1))} for i in range(6)])
    return FinetuneConfig.from_dict({
        "model": str(model), "data": str(data), "out": str(tmp_path / f"run-{method}"), "method": method,
        "steps": steps, "warmup_steps": 1, "batch_size": 2, "seq_len": 64, "eval_every": 2, "eval_batches": 2,
        "save_every": 2, "log_every": 1, "lora": {"r": 4, "targets": "attention,routed_experts"}, **extra})


def test_lora_run_writes_an_adapter_that_merges_to_what_it_trained(tmp_path):
    cfg = make_run(tmp_path, "lora")
    last = finetune(cfg, progress=False, log=lambda m: None)
    assert last["split"] == "val" and last["val_loss"] > 0
    assert cfg.balance.mode == "loss_free"  # "auto" kept the base model's balancing
    out = tmp_path / "run-lora"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "routing_bias.safetensors").is_file()
    assert (out / "loss.png").is_file() and json.loads((out / "data_report.json").read_text())["train"]["rows"] > 0
    base = load_model(tmp_path / "base")
    merged = merge_adapter(tmp_path / "base", out / "adapter", tmp_path / "merged")
    assert (merged / "tokenizer.json").is_file()
    x = torch.randint(0, 500, (1, 12))
    merged_model = load_model(merged)
    assert not torch.allclose(merged_model(x), base(x), atol=1e-4)  # the run changed something
    # the latest checkpoint holds the same adapter: resuming from it restores exactly what was trained
    from seekmoe.train.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(out / "checkpoints")
    torch.testing.assert_close(apply_adapter(load_model(tmp_path / "base"), ckpt)(x), merged_model(x))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_run_resumes_exactly(tmp_path, method):
    from safetensors.torch import load_file

    straight = make_run(tmp_path, method, steps=4)
    finetune(straight, progress=False, log=lambda m: None)
    resumed = make_run(tmp_path, method, steps=2, out=str(tmp_path / "resumed"))
    finetune(resumed, progress=False, log=lambda m: None)
    resumed.steps = 4
    finetune(resumed, progress=False, log=lambda m: None)
    result, weights = ("model", "model.safetensors") if method == "full" else ("adapter", "adapter_model.safetensors")
    a = load_file(tmp_path / f"run-{method}" / result / weights)
    b = load_file(tmp_path / "resumed" / result / weights)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if method == "full":
        assert (tmp_path / "run-full" / "model" / "tokenizer.json").is_file()


def test_a_run_folder_holding_another_runs_checkpoints_is_refused_and_kept(tmp_path):
    import shutil

    first = make_run(tmp_path, "full", steps=2)
    finetune(first, progress=False, log=lambda m: None)
    out = tmp_path / "run-full"
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    shutil.copytree(tmp_path / "base", tmp_path / "other")
    # a model folder that is not there at all: still the other run's checkpoints, said before anything is loaded
    for other in ({"model": str(tmp_path / "other")}, {"data": str(tmp_path / "data" / "chat.jsonl")},
                  {"model": str(tmp_path / "missing")}):
        with pytest.raises(TrainError, match="holds checkpoints of another run") as e:
            finetune(make_run(tmp_path, "full", steps=4, **other), progress=False, log=lambda m: None)
        assert str(out) in str(e.value) and next(iter(other)) in str(e.value)
        assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # nothing lost
    # the same model spelled another way is the same run: it resumes
    again = make_run(tmp_path, "full", steps=3, model=str(tmp_path / "data" / ".." / "base") + "/")
    logged = []
    finetune(again, progress=False, log=logged.append)
    assert any("resuming from" in m for m in logged)


def test_a_fine_tune_and_a_merge_keep_the_base_sampling_defaults(tmp_path):
    from seekmoe.train.finetune import merge_adapter

    cfg = make_run(tmp_path, "full", steps=1)
    (tmp_path / "base" / "generation_config.json").write_text('{"temperature": 0.4, "top_p": 0.9}')
    finetune(cfg, progress=False, log=lambda m: None)
    assert (tmp_path / "run-full" / "model" / "generation_config.json").read_text() == (
        '{"temperature": 0.4, "top_p": 0.9}')
    lora = make_run(tmp_path, "lora", steps=1)
    finetune(lora, progress=False, log=lambda m: None)
    merged = merge_adapter(tmp_path / "base", tmp_path / "run-lora" / "adapter", tmp_path / "merged")
    assert (merged / "generation_config.json").read_text() == '{"temperature": 0.4, "top_p": 0.9}'


def test_a_fine_tune_and_a_merge_of_a_multimodal_model_keep_its_encoders(tmp_path):
    from seekmoe.llm import LLM

    base = tiny_multimodal_folder(tmp_path / "base")
    encoders = (base / "multimodal.safetensors").read_bytes()
    finetune(make_run(tmp_path, "full", steps=1), progress=False, log=lambda m: None)
    finetune(make_run(tmp_path, "lora", steps=1), progress=False, log=lambda m: None)
    merged = merge_adapter(base, tmp_path / "run-lora" / "adapter", tmp_path / "merged")
    for folder in (tmp_path / "run-full" / "model", merged):  # text training leaves the encoders as they were
        assert (folder / "multimodal.safetensors").read_bytes() == encoders
        llm = LLM(folder)
        try:
            assert llm.encoders is not None
        finally:
            llm.close()


def test_run_reports_data_errors_as_train_errors(tmp_path):
    cfg = make_run(tmp_path, "lora")
    write_jsonl(tmp_path / "data" / "broken.jsonl", ['{"messages": "nope"}'])
    with pytest.raises(TrainError, match=r"broken.jsonl:1: messages must be a non-empty list"):
        finetune(cfg, progress=False, log=lambda m: None)
    cfg.skip_bad_lines = True
    finetune(cfg, progress=False, log=lambda m: None)


def test_seq_len_beyond_the_context_is_refused(tmp_path):
    cfg = make_run(tmp_path, "lora", seq_len=512)
    with pytest.raises(TrainError, match="longer than the model's context"):
        finetune(cfg, progress=False, log=lambda m: None)


# ---- command line ------------------------------------------------------------------------------------------

def test_cli_finetune_then_merge_then_generate(capsys, tmp_path):
    cfg = make_run(tmp_path, "lora", steps=2)
    rc, out, err = run_cli(capsys, "finetune", "--model", cfg.model, "--data", cfg.data, "--out", cfg.out,
                           "--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--seq-len", "64",
                           "--lora.r", "2", "--lookup-weight", "3", "--no-progress")
    assert rc == 0, err
    assert f"wrote {cfg.out}/adapter" in out and "lookup targets" in err and "weigh 3" in err
    rc, out, err = run_cli(capsys, "merge", cfg.model, f"{cfg.out}/adapter", str(tmp_path / "merged"))
    assert rc == 0 and "merged in" in out
    rc, out, err = run_cli(capsys, "generate", cfg.model, "hello", "--adapter", f"{cfg.out}/adapter",
                           "--max-tokens", "3", "--temperature", "0")
    assert rc == 0, err
    rc, merged_out, err = run_cli(capsys, "generate", str(tmp_path / "merged"), "hello", "--max-tokens", "3",
                                  "--temperature", "0")
    assert rc == 0 and merged_out == out


@pytest.mark.parametrize(("argv", "needles"), [
    (["finetune", "--data", "/no/such/data.jsonl"], ["/no/such/data.jsonl", "no such file or folder"]),
    (["finetune"], ["missing required training setting 'data'"]),
    (["finetune", "--data", "x", "--method", "prefix"], ["method must be one of full, lora"]),
    (["finetune", "--data", "x", "--lora.targets", "everything"], ["LoRA targets must be"]),
    (["finetune", "--data", "x", "--lookup-weight", "0.5"], ["lookup_weight must be a number >= 1"]),
    (["finetune", "--data", "x", "--lookup-weight", "inf"], ["lookup_weight must be a number >= 1"]),
    (["merge", "/no/base", "/no/adapter", "/tmp/x"], ["/no/base"]),
    (["serve", "--adapter", "/no/adapter"], ["/no/adapter", "not an adapter folder"]),
])
def test_cli_errors(capsys, tmp_path, argv, needles):
    rc, _, err = run_cli(capsys, *argv)
    assert_usage_error(rc, err, *needles)
