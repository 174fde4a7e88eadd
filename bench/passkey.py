"""Passkey retrieval at long context, and perplexity at short context: what stretching a model with YaRN keeps.

For each model and each context length: TRIALS chat prompts of about that many tokens of corpus prose with a
five-digit pass key hidden at depths spread from the start to the end (English and Chinese alternating, the test
wording of seekmoe/train/passkey.py, which its training split never uses), asked for at the end; greedy answers
through the engine; a trial passes when the answer holds the key. Then perplexity on windows of a held-out text
(--text, {"text"} JSON lines) at the model's original context. A model too short for a length shows "-".

Models: folders, or FOLDER@yarn=N for the folder stretched to N tokens with YaRN and no training (what YaRN alone
gives; model.extend_context, written to a temporary folder).

    .venv/bin/python bench/passkey.py --model seekmoe/models/seekmoe-tiny-chat \\
        --model seekmoe/models/seekmoe-tiny-chat@yarn=16384 --model runs/long1/model \\
        [--lengths 1024,4096,8192,16384] [--trials 20] [--filler data/corpus] [--text runs/sft-mix5/text.val.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from seekmoe.llm import LLM
from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train import passkey
from seekmoe.train.loop import perplexity

SEED = 1234  # the training data's seeds are small; the test documents come from a shuffle of their own


def stretched(folder: Path, tokens: int, into: Path) -> Path:
    """folder's model with its context stretched to `tokens` by YaRN, untrained, written into `into`."""
    model = load_model(folder)
    model.extend_context(tokens)
    save_model(model, into)
    for f in folder.iterdir():  # tokenizer, encoders, card: all but the language model's weights and config
        if f.is_file() and not f.name.startswith("model") and f.name != "config.json":
            shutil.copy(f, into / f.name)
    return into


@torch.inference_mode()
def text_perplexity(folder: Path, text: Path, windows: int, length: int) -> float:
    model = load_model(folder)
    tok = Tokenizer.from_pretrained(folder)
    ids = [i for line in text.read_text(encoding="utf-8").splitlines() if line.strip()
           for i in tok.encode(json.loads(line)["text"], add_bos=True)]
    n = min(windows, (len(ids) - 1) // length)
    return perplexity(model, torch.tensor(ids[:n * length + 1]).unfold(0, length + 1, length)[:n], batch=1)


def retrieval(folder: Path, lengths: list[int], trials: int, filler: Path) -> dict[int, float | None]:
    llm = LLM(folder)
    try:
        context = llm.model.config.max_position_embeddings
        pools = passkey.fillers(filler, llm.tokenizer, SEED)
        out = {}
        for length in lengths:
            rng = random.Random(f"{SEED}/{length}")
            # the filler leaves room for the needle, the question and the chat template: prompts of about `length`
            docs = [passkey.document(rng, pools[lang], length - 96, (k + 0.5) / trials, lang, "test")
                    for k, lang in ((k, "en" if k % 2 == 0 else "zh") for k in range(trials))]
            prompts = [llm.tokenizer.apply_chat_template(d["messages"][:1]) for d in docs]
            if max(len(p) for p in prompts) + 16 > context:
                out[length] = None
                continue
            done = llm.generate(prompt_token_ids=prompts, max_tokens=16, temperature=0.0)
            said = [d.text for d in done]
            out[length] = sum(d["meta"]["key"] in s for d, s in zip(docs, said, strict=True)) / trials
            tokens = sum(len(p) for p in prompts) / trials
            print(f"  {folder.name}: {length} -> {out[length]:.0%} (prompts {tokens:,.0f} tokens on average; "
                  f"first answers {said[:2]})", flush=True)
        return out
    finally:
        llm.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="a model folder, or FOLDER@yarn=N (repeatable)")
    p.add_argument("--lengths", default="1024,4096,8192,16384", help="context lengths in tokens, comma-separated")
    p.add_argument("--trials", type=int, default=20, help="documents per length, depths spread evenly")
    p.add_argument("--filler", type=Path, default=Path("data/corpus"), help="folder of .txt files: the prose")
    p.add_argument("--text", type=Path, help="held-out text for perplexity ({\"text\"} JSON lines)")
    p.add_argument("--ppl-windows", type=int, default=32, help="perplexity windows")
    p.add_argument("--ppl-length", type=int, default=1024, help="perplexity window length in tokens")
    a = p.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, spec in enumerate(a.model):
            start = time.perf_counter()
            folder, _, yarn = spec.partition("@yarn=")
            path = Path(folder)
            if yarn:
                (Path(tmp) / str(k)).mkdir()
                path = stretched(path, int(yarn), Path(tmp) / str(k))
            found = retrieval(path, lengths, a.trials, a.filler)
            ppl = text_perplexity(path, a.text, a.ppl_windows, a.ppl_length) if a.text else None
            rows.append((spec, found, ppl))
            print(f"{spec}: {time.perf_counter() - start:.0f} s", flush=True)
    head = "| model | " + " | ".join(f"passkey {n:,}" for n in lengths) + " | perplexity |"
    print("\n" + head + "\n|---|" + "---|" * (len(lengths) + 1))
    base = rows[0][2]
    for spec, found, ppl in rows:
        cells = ["-" if found[n] is None else f"{found[n]:.0%}" for n in lengths]
        change = "" if ppl is None or base is None or spec == rows[0][0] else f" ({ppl / base - 1:+.1%})"
        print(f"| {spec} | " + " | ".join(cells) + f" | {'-' if ppl is None else f'{ppl:.2f}'}{change} |")
    print(f"\n{a.trials} documents per length (depths {0.5 / a.trials:.0%} to {1 - 0.5 / a.trials:.0%}, English and "
          f"Chinese alternating), greedy; perplexity: {a.ppl_windows} windows of {a.ppl_length} tokens of "
          f"{a.text}.")


if __name__ == "__main__":
    main()
