"""Constrained decoding's cost: the engine's decode rate with and without a JSON Schema grammar, on random weights.

For each config (bench/decode.py's tiny and small, with the vocabulary of a real tokenizer: the bundled 8,192-id one
for tiny, a 32,000-id byte-level BPE trained here on data/corpus in ~10 s for small), B sequences decode together
with no grammar, every one under the grammar, and (B > 1) half of them under it. A constrained sequence that
completes its JSON is replaced by a fresh one; only steps where every sequence decodes are timed, and the rate is
the batch over the median step time (the machine may be busy with other work: a mean would measure that). Also the
mask's own cost: llguidance computing the allowed tokens and taking the token, per token of JSON documents that
follow the schema (teacher-forced, so every state of the grammar is visited, not only the inside of the long strings
a random model writes).

    .venv/bin/python bench/constrained.py [--configs tiny,small] [--batches 1,4] [--steps 32] [--repeats 8]

Prints one markdown table and whether the goal of issue 21 is met: a grammar costs at most 10% of the decode rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from seekmoe.engine.engine import Engine
from seekmoe.engine.sampling import SamplingParams
from seekmoe.model.checkpoint import DEFAULT_MODEL
from seekmoe.model.config import ModelConfig
from seekmoe.model.model import CausalLM, RotaryEmbedding
from seekmoe.text.grammar import Grammars
from seekmoe.text.tokenizer import Tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(model_type="deepseek_v2", topk_method="greedy", scoring_func="softmax", q_lora_rank=None,
              first_k_dense_replace=1, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1)
CONFIGS = {  # bench/decode.py's, the vocabulary left to the tokenizer
    "tiny": dict(COMMON, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=96,
                 n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4),
    "small": dict(COMMON, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                  kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, moe_intermediate_size=352,
                  n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6),
}
VOCAB = {"tiny": 8192, "small": 32000}
CORPUS = ["python_docs", "austen", "shakespeare", "sotu", "web", "moby_dick"]  # under data/corpus
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "address", "kind"],
          "properties": {
              "name": {"type": "string"}, "age": {"type": "integer"},
              "tags": {"type": "array", "items": {"type": "string"}},
              "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                          "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
              "kind": {"enum": ["person", "company", "other"]}}}
PROMPT = 32  # prompt tokens of each sequence


def tokenizer_for(name: str, folder: Path) -> tuple[Tokenizer, str]:
    if VOCAB[name] == 8192:
        return Tokenizer.from_pretrained(DEFAULT_MODEL), "bundled"
    corpus = [ROOT / "data" / "corpus" / c for c in CORPUS if (ROOT / "data" / "corpus" / c).is_dir()]
    if not corpus:  # no corpus here: the bundled ids, the rest of the vocabulary never allowed
        return Tokenizer.from_pretrained(DEFAULT_MODEL), "bundled (no data/corpus to train 32k on)"
    return train_tokenizer(corpus, folder, vocab_size=VOCAB[name], show_progress=False), "trained on data/corpus"


def documents(tok: Tokenizer) -> list[list[int]]:
    """JSON documents that follow SCHEMA, as the grammar writes them (json.dumps' separators), then eos."""
    docs = []
    for k in range(1, 5):
        doc = {"name": "Ada Lovelace" * k, "age": 36 * k, "tags": ["math", "poetry and science", "x"] * k,
               "address": {"city": "London", "zip": f"W1 {k}"}, "kind": ["person", "company", "other"][k % 3]}
        docs.append([*tok.encode(json.dumps(doc, ensure_ascii=False)), tok.eos_id])
    return docs


def mask_cost(grammars: Grammars, tok: Tokenizer, vocab: int, repeats: int) -> float:
    """Microseconds per token to compute the allowed tokens and take the token (llguidance alone)."""
    grammar = grammars.json(SCHEMA)
    out_W = torch.empty((vocab + 31) // 32, dtype=torch.int32)
    times = []
    for _ in range(repeats):
        for doc in documents(tok):
            m = grammar.matcher()
            for t in doc:
                start = time.perf_counter()
                m.fill_bitmask(out_W)
                m.advance(t)
                times.append(time.perf_counter() - start)
            assert m.done, "the documents must follow the schema"
    return 1e6 * statistics.mean(times)


def decode_steps(engine: Engine, grammars: Grammars, vocab: int, batch: int, constrained: int, steps: int,
                 seed: int) -> list[float]:
    """Seconds of each of `steps` decode steps of `batch` sequences, the first `constrained` of them under SCHEMA."""
    g = torch.Generator().manual_seed(seed)
    grammar = grammars.json(SCHEMA)
    params = SamplingParams(max_tokens=4 * steps, temperature=1.0, seed=seed, ignore_eos=True)
    live = {}

    def add(slot: int) -> None:
        prompt = torch.randint(2, vocab, (PROMPT,), generator=g).tolist()
        live[slot] = engine.add_request(prompt, params, constraint=grammar.matcher() if slot < constrained else None)

    for slot in range(batch):
        add(slot)
    times = []
    while len(times) < steps:
        decoding = not engine.waiting and len(engine.running) == batch and all(
            len(s.tokens) - s.table.num_tokens == 1 for s in engine.running)  # no prompt chunk in this step
        start = time.perf_counter()
        engine.step()
        if decoding:
            times.append(time.perf_counter() - start)
        for slot, req in list(live.items()):
            if req.finished:
                add(slot)
    for req in live.values():
        engine.cancel(req.id)
    return times


def build(name: str, vocab: int) -> CausalLM:
    cfg = ModelConfig.from_dict(dict(CONFIGS[name], vocab_size=vocab))
    with torch.device("meta"):
        model = CausalLM(cfg)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    model.model.rotary_emb = RotaryEmbedding(model.config)  # a computed buffer: to_empty left it uninitialised
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--batches", default="1,4", help="concurrent sequences")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps per measurement")
    parser.add_argument("--repeats", type=int, default=8, help="measurements of each mode, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    rows, goals = [], []
    with tempfile.TemporaryDirectory(prefix="seekmoe-constrained-") as tmp:
        for name in a.configs.split(","):
            if name not in CONFIGS:
                parser.error(f"unknown config {name!r}; expected one of {', '.join(CONFIGS)}")
            start = time.perf_counter()
            tok, source = tokenizer_for(name, Path(tmp) / name)
            vocab = max(VOCAB[name], tok.vocab_size)
            grammars = Grammars(tok, vocab, tok.eos_id)
            model = build(name, vocab)
            engine = Engine(model, cache_tokens=max(batches) * (PROMPT + 8 * a.steps) + 256,
                            max_num_seqs=max(batches))
            cost = mask_cost(grammars, tok, vocab, a.repeats)
            for b in batches:
                modes = {"none": 0, "all": b, **({"half": b // 2} if b > 1 else {})}
                times = {m: [] for m in modes}
                decode_steps(engine, grammars, vocab, b, b, 8, seed=0)  # warm-up, both paths
                decode_steps(engine, grammars, vocab, b, 0, 8, seed=0)
                for r in range(a.repeats):  # interleaved, so a busy spell of the machine hits every mode
                    for mode, constrained in modes.items():
                        times[mode] += decode_steps(engine, grammars, vocab, b, constrained, a.steps, seed=r)
                med = {m: b / statistics.median(v) for m, v in times.items()}  # the median step: robust to spikes
                ratio = med["all"] / med["none"]
                half = f"{med['half']:,.1f} ({med['half'] / med['none']:.2f})" if "half" in med else "-"
                rows.append(f"| {name} | {vocab:,} ({source}) | {b} | {med['none']:,.1f} | {med['all']:,.1f} | "
                            f"{ratio:.2f} | {half} | {cost:.1f} |")
                goals.append((f"{name} b={b}: decode with a grammar >= 90% of without", f"{ratio:.2f}",
                              ratio >= 0.9))
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    lines = [f"torch {torch.__version__}, llguidance {version('llguidance')}, {a.threads} thread(s), float32; "
             f"{a.steps} timed decode steps x {a.repeats} repeats; tok/s = batch / median step time; temperature 1", "",
             "| config | vocab (tokenizer) | batch | tok/s no grammar | tok/s JSON Schema | ratio | "
             "tok/s half constrained (ratio) | mask µs/token |", "|---" * 8 + "|", *rows, "",
             "| goal | measured | met |", "|---|---|---|",
             *[f"| {g} | {m} | {'yes' if ok else 'NO'} |" for g, m, ok in goals]]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
