"""How well a chat model does on the held-out chat sets: models side by side, one table.

For each model: the validation loss (nats per assistant token) on every data/chat/*.val.jsonl set; intent accuracy
(the model, asked through the chat template, answers with exactly the right label); multi-turn recall (in 5-8-turn
support dialogues, the answer to the last turn contains the fact the customer gave in the first); arithmetic
accuracy (the final answer of a worked word problem), without tools and with the math plugin offered (the model
calls it, the plugin runs, the model answers from its result). Answers are greedy, through the engine.

    .venv/bin/python bench/chat_eval.py [MODEL ...] [--data data/chat] [--limit N] [--json OUT.json]

Without MODEL: the bundled seekmoe-tiny (before fine-tuning) and seekmoe-tiny-chat (after), when both exist.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from seekmoe.llm import LLM
from seekmoe.model.checkpoint import load_model
from seekmoe.train.config import FinetuneConfig
from seekmoe.train.loop import evaluate
from seekmoe.train.sft import SFTData, data_files, read_conversations

MODELS = Path(__file__).resolve().parents[1] / "seekmoe" / "models"
ANSWER = re.compile(r"(?:answer is|答案是)\s*(-?\d+)")


def read_jsonl(path: Path, limit: int | None) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:limit] if limit else lines


def val_losses(model_path: Path, data: Path, seq_len: int) -> dict[str, float]:
    from seekmoe.text.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(model_path)
    model = load_model(model_path)
    cfg = FinetuneConfig(data=str(data), seq_len=seq_len, batch_size=8, eval_batches=10**9)
    out = {}
    for path in data_files(data, "val"):
        conversations = read_conversations([path], log=lambda m: None)
        val = SFTData.from_conversations(conversations, tok, seq_len, shuffle=False)
        out[path.name.removesuffix(".val.jsonl")] = evaluate(model, val, cfg)["val_loss"]
    return out


def answers(llm: LLM, examples: list[dict], max_tokens: int) -> list[str]:
    """Greedy answers to each example's conversation without its last (assistant) message, as one batch."""
    prompts = [llm.tokenizer.apply_chat_template(ex["messages"][:-1]) for ex in examples]
    done = llm.generate(prompt_token_ids=prompts, max_tokens=max_tokens, temperature=0.0)
    return [c.text.strip() for c in done]


def with_tool(llm: LLM, problems: list[dict]) -> tuple[float, list[dict]]:
    """Accuracy on the problems with the math plugin offered and run, 8 conversations at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from seekmoe.plugins import WorkerPool
    from seekmoe.plugins.math import plugin

    with WorkerPool() as pool:
        def one(ex: dict) -> tuple[str, list[dict]]:
            done, trace = llm.chat_with_tools(ex["messages"][:1], {"math": plugin}, pool=pool, max_tokens=64,
                                              temperature=0.0)
            return done.text, trace

        with ThreadPoolExecutor(8) as workers:
            outs = list(workers.map(one, problems))
    right = [(m := ANSWER.search(text)) is not None and int(m[1]) == ex["meta"]["answer"]
             for (text, _), ex in zip(outs, problems, strict=True)]
    examples = [{"asked": ex["messages"][0]["content"], "calls": trace, "said": text}
                for (text, trace), ex in list(zip(outs, problems, strict=True))[:3]]
    return sum(right) / len(problems), examples


def score(model_path: Path, data: Path, limit: int | None, seq_len: int) -> dict:
    t0 = time.perf_counter()
    result: dict = {"model": str(model_path), "val_loss": val_losses(model_path, data, seq_len)}
    llm = LLM(model_path)
    try:
        intents = read_jsonl(data / "intents.val.jsonl", limit)
        said = answers(llm, intents, 8)
        result["intent_accuracy"] = sum(a == ex["meta"]["intent"] for a, ex in zip(said, intents, strict=True)) / len(
            intents)
        result["intent_examples"] = [{"asked": ex["messages"][-2]["content"], "label": ex["meta"]["intent"],
                                      "said": a} for ex, a in list(zip(intents, said, strict=True))[:3]]
        dialogues = read_jsonl(data / "dialogues.val.jsonl", limit)
        said = answers(llm, dialogues, 32)
        result["multi_turn_recall"] = sum(ex["meta"]["fact"] in a for a, ex in zip(said, dialogues, strict=True)) / len(
            dialogues)
        result["dialogue_examples"] = [{"asked": ex["messages"][-2]["content"], "fact": ex["meta"]["fact"],
                                        "said": a} for ex, a in list(zip(dialogues, said, strict=True))[:3]]
        problems = read_jsonl(data / "arithmetic.val.jsonl", limit)
        said = answers(llm, problems, 64)
        found = [ANSWER.search(a) for a in said]
        result["arithmetic_accuracy"] = sum(m is not None and int(m[1]) == ex["meta"]["answer"]
                                            for m, ex in zip(found, problems, strict=True)) / len(problems)
        result["arithmetic_tool_accuracy"], result["tool_examples"] = with_tool(llm, problems)
        result["counts"] = {"intents": len(intents), "dialogues": len(dialogues), "arithmetic": len(problems)}
    finally:
        llm.close()
    result["seconds"] = time.perf_counter() - t0
    return result


def table(results: list[dict]) -> str:
    sets = sorted({name for r in results for name in r["val_loss"]})
    head = ["model", *(f"val loss {s}" for s in sets), "intent acc", "multi-turn recall", "arithmetic acc",
            "arithmetic acc, math tool"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [Path(r["model"]).name, *(f"{r['val_loss'].get(s, float('nan')):.3f}" for s in sets),
                 f"{r['intent_accuracy']:.1%}", f"{r['multi_turn_recall']:.1%}", f"{r['arithmetic_accuracy']:.1%}",
                 f"{r['arithmetic_tool_accuracy']:.1%}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model folders (default: bundled seekmoe-tiny and seekmoe-tiny-chat)")
    p.add_argument("--data", default="data/chat", help="folder of *.val.jsonl sets (default data/chat)")
    p.add_argument("--limit", type=int, help="at most N examples of each generation task")
    p.add_argument("--seq-len", type=int, default=1024, help="rows of the validation-loss pass (default 1024)")
    p.add_argument("--json", help="also write the results (with a few example answers) here")
    args = p.parse_args()
    models = [Path(m) for m in args.models] or [m for m in (MODELS / "seekmoe-tiny", MODELS / "seekmoe-tiny-chat")
                                                if m.is_dir()]
    torch.manual_seed(0)
    results = [score(m, Path(args.data), args.limit, args.seq_len) for m in models]
    print(table(results))
    for r in results:
        print(f"\n{Path(r['model']).name} ({r['seconds']:.0f} s): {r['counts']}")
        for ex in r["intent_examples"] + r["dialogue_examples"]:
            print(f"  {ex['asked']!r} -> {ex['said']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
