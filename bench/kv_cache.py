"""What the int8 latent cache costs in quality: the bundled model decoding held-out text over a float32 cache and an
int8 one, token by token the way the engine decodes (issue 26).

The text is the held-out chat sets (data/chat/*.val.jsonl, never trained on), each conversation rendered with the
model's chat template, end to end in one stream of tokens. Each window of --context tokens is read as a prompt up to
its last --decode tokens (chunks of 256, the engine's prefill), then those are decoded one a step, teacher-forced:
each step's logits (the decode kernel over the cache: the int8 one rounds the rows, the queries and the softmax's
weights too) scored against the text's next token. --context past the model's trained context stretches it with
YaRN first (`CausalLM.extend_context`, no fine-tune): the numbers then compare the caches on that model, whose own
perplexity at that length is worse.

Prints one table: perplexity of the decoded tokens with each cache, their ratio, how often the two pick the same
top token, and the mean KL divergence of int8's next-token distribution from float32's.

    .venv/bin/python bench/kv_cache.py [--model DIR] [--context 1024] [--decode 64] [--windows 32]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from seekmoe.engine.cache import BlockTable, LatentCache
from seekmoe.engine.runner import ModelRunner, Segment
from seekmoe.llm import DEFAULT_MODEL
from seekmoe.model.checkpoint import load_model
from seekmoe.text.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[1] / "data" / "chat"
SETS = ("dialogues", "dialogues_zh", "support", "recall", "python_faq")
PREFILL_CHUNK = 256


def stream(tokenizer: Tokenizer) -> list[int]:
    """The held-out conversations, each rendered with the chat template, one after another."""
    ids = []
    for name in SETS:
        for line in (DATA / f"{name}.val.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids += tokenizer.apply_chat_template(json.loads(line)["messages"], add_generation_prompt=False)
    return ids


def decode_logits(model, window: list[int], decode: int, dtype: torch.dtype) -> torch.Tensor:
    """The logits (decode, vocab) that predict the window's last `decode` tokens, those tokens fed one a step."""
    cache = LatentCache(model.config, -(-len(window) // 16), block_size=16, dtype=dtype)
    runner, table, pos, out = ModelRunner(model, cache), BlockTable(), 0, []
    prompt = len(window) - decode
    steps = [min(PREFILL_CHUNK, prompt - p) for p in range(0, prompt, PREFILL_CHUNK)] + [1] * (decode - 1)
    for n in steps:
        assert cache.reserve(table, pos + n)
        seg = Segment(cache.slots(table, 0, pos + n), pos, n, True)
        out.append(runner.forward(torch.tensor(window[pos:pos + n]), torch.arange(pos, pos + n), [seg])[0])
        table.num_tokens = pos = pos + n
    return torch.stack(out[-decode:])  # the prompt's last logits predict the first decoded token


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder (default: the bundled model)")
    p.add_argument("--context", type=int, default=1024, help="tokens a window holds (default 1024)")
    p.add_argument("--decode", type=int, default=64, help="a window's last tokens decoded one a step (default 64)")
    p.add_argument("--windows", type=int, default=32, help="windows, spread over the text (default 32)")
    a = p.parse_args()
    if not 1 < a.decode < a.context:
        p.error(f"--decode must be in (1, --context), got {a.decode}")
    torch.manual_seed(0)
    model = load_model(a.model)
    trained = model.config.max_position_embeddings
    if a.context > trained:
        model.extend_context(a.context)
    ids = stream(Tokenizer.from_pretrained(a.model))
    n = min(a.windows, len(ids) // a.context)
    if n < 1:
        p.error(f"the held-out text has {len(ids):,} tokens, fewer than one window of {a.context}")
    start = time.perf_counter()
    nll = {torch.float32: 0.0, torch.int8: 0.0}
    same = kl = total = 0
    for w in range(n):
        start_w = w * (len(ids) // n)  # spread over the text: every set has windows
        window = ids[start_w:start_w + a.context]
        target = torch.tensor(window[-a.decode:])
        logp = {d: torch.log_softmax(decode_logits(model, window, a.decode, d).double(), -1) for d in nll}
        for d, lp in logp.items():
            nll[d] -= float(lp.gather(1, target[:, None]).sum())
        ref, q = logp[torch.float32], logp[torch.int8]
        same += int((ref.argmax(-1) == q.argmax(-1)).sum())
        kl += float((ref.exp() * (ref - q)).sum())
        total += a.decode
    ppl = {d: math.exp(v / total) for d, v in nll.items()}
    print(f"| context | decoded tokens | perplexity, float32 cache | int8 cache | ratio | same top token | "
          f"KL(float32 ‖ int8) |\n|---|---|---|---|---|---|---|\n| {a.context:,} | {total:,} ({n} windows) | "
          f"{ppl[torch.float32]:.3f} | {ppl[torch.int8]:.3f} | {ppl[torch.int8] / ppl[torch.float32]:.4f} | "
          f"{same / total:.1%} | {kl / total:.2e} nats |")
    stretched = f", stretched from {trained:,} with YaRN (no fine-tune)" if a.context > trained else ""
    print(f"\n`{Path(a.model).name}`{stretched}; held-out chat sets ({', '.join(SETS)}), {len(ids):,} tokens; "
          f"prompt in chunks of {PREFILL_CHUNK}, the last {a.decode} tokens of each window decoded one a step; "
          f"{time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
