"""How readily a model writes Chinese inside English: models side by side, one table.

On held-out English text (the English reports of bench/summary_docs.py, written for evaluation and never trained on),
read token by token as a prompt is, the probability at --temperature that the next token holds a Chinese character,
averaged over every position; beside it what that makes of a sampled continuation of --tokens tokens, were the
positions independent (a free-running sample, once off course, leaks more). A model that keeps the two languages
apart puts almost nothing there; the chat stages of the bundled model once put 3.2% there (runs/mm-chat16, whose
English continuations failed bench/chat_eval.py's check in nine samples of ten).

    .venv/bin/python bench/script_mix.py MODEL [MODEL ...] [--docs 4] [--windows 10] [--temperature 0.7]
        [--top-k K] [--top-p P] [--min-p P] [--tokens 40]

The chance is taken after the engine's own filters (seekmoe.engine.sampling.filter_logits), so --top-k, --top-p and
--min-p show what truncating the tail does; with --model-defaults each model is read at the sampling defaults of
its generation_config.json instead, what `seekmoe serve` gives a request that sets none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from summary_docs import documents

from seekmoe.engine.sampling import SamplingParams, filter_logits, read_generation_defaults
from seekmoe.han import HAN  # what chat_eval's continuation check counts as Chinese
from seekmoe.model.checkpoint import load_model
from seekmoe.text.tokenizer import Tokenizer

WINDOW = 256  # tokens a forward pass reads: the reports are long, the models' context short


def chinese_mass(model_dir: str, texts: list[str], windows: int, params: SamplingParams) -> float:
    """Mean probability, over every position of `windows` windows of each text, that the next token drawn with
    `params` (temperature and the top_k / top_p / min_p filters; penalties left out) is Chinese."""
    model = load_model(model_dir).eval()
    tok = Tokenizer.from_pretrained(model_dir)
    chinese = torch.tensor([i for i in range(tok.vocab_size) if HAN.search(tok.decode([i]))])
    total, positions = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text)
            for w in range(windows):
                window = ids[w * WINDOW:(w + 1) * WINDOW]
                if len(window) < 2:
                    break
                logits = model(torch.tensor([window]))  # (1, T, V)
                x = filter_logits(logits[0].float(), [params] * len(window))  # (T, V), dropped tokens -inf
                p = torch.softmax(x, dim=-1)
                total += p[:, chinese].sum().item()
                positions += len(window)
    return total / positions


def settings(params: SamplingParams) -> str:
    off = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}  # the filter does nothing
    return ", ".join([f"T={params.temperature:g}"]
                     + [f"{k}={getattr(params, k):g}" for k, v in off.items() if getattr(params, k) != v])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders")
    p.add_argument("--docs", type=int, default=4, help="English reports read")
    p.add_argument("--windows", type=int, default=10, help=f"windows of {WINDOW} tokens read from each")
    p.add_argument("--temperature", type=float, default=0.7, help="the sampling temperature the chance is taken at")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="keep the likeliest tokens holding this mass")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens under min_p x the likeliest's probability")
    p.add_argument("--model-defaults", action="store_true",
                   help="each model's generation_config.json defaults instead of the four flags above")
    p.add_argument("--tokens", type=int, default=40, help="the sample length the last column is for")
    args = p.parse_args()
    try:
        flags = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
        if flags.greedy:
            raise ValueError("--temperature must be > 0")
        per_model = {m: SamplingParams(**(read_generation_defaults(Path(m)) or {})) if args.model_defaults
                     else flags for m in args.models}
    except ValueError as e:
        raise SystemExit(f"script_mix: error: {e}") from None
    english = [d.text for d in documents(2 * args.docs) if d.lang == "en"][:args.docs]
    print(f"| model | sampling | next token Chinese | a Chinese character in {args.tokens} sampled tokens |")
    print("|---|---|---:|---:|")
    for m, params in per_model.items():
        mass = chinese_mass(m, english, args.windows, params)
        print(f"| {m} | {settings(params)} | {mass:.2%} | {1 - (1 - mass) ** args.tokens:.0%} |", flush=True)


if __name__ == "__main__":
    main()
