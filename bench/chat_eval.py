"""How well a chat model does on the held-out chat sets: models side by side, one table.

For each model: the validation loss (nats per assistant token) on every data/chat/*.val.jsonl set; intent accuracy
(the model, asked through the chat template, answers with exactly the right label); multi-turn recall (in 5-8-turn
support dialogues, the answer to the last turn contains the fact the customer gave in the first); arithmetic
accuracy (the final answer of a worked word problem), without tools and with the math plugin offered (the model
calls it, the plugin runs, the model answers from its result). Answers are greedy, through the engine.
Plain continuation: 16 samples (temperature 0.8, top_p 0.95) of each held-out beginning of ordinary text (data/eval/
continuation.jsonl, English and Chinese) through /v2/generate's path: the share that are at least 20 characters, in
the prompt's language (English without a single Chinese character) and not a loop (a proxy for "on topic" a program
can check); 4 samples a prompt, as before, moved the Chinese figure by 7 points from one set of seeds to the next.
The same again sampled as a request without sampling fields is (the model's generation_config.json), what `seekmoe
serve` gives the chat page. Intent is also asked with three paraphrased router instructions listing the same labels;
recall is also counted on the dialogues with at least 5 turns after the fact (by kind of fact, and split by
whether the answer's word before the fact is the customer's), and on the Chinese dialogues
(dialogues_zh.val.jsonl, when it exists); with the math tool offered, the share of chats that need no math (support
messages) in which no tool is called.
Support answers (data/chat/support.val.jsonl, held-out phrasings; the README's quick-start chat is one of them):
of the messages about an order that give its number (status, refund, address, complaint), the share of answers of
at least 20 characters, in the message's language, that name that number, greedy and sampled as a request without
sampling fields is (the model's generation_config.json, else temperature 1; --support-seeds seeds each).
Summaries: held-out 100,000-character reports, English and Chinese (bench/summary_docs.py), each stating one key
conclusion; per method of LLM.generate_summary (max_length 200), the share of summaries that keep it (its figure
and measure in one sentence) and ROUGE-L (rouge-score, words and CJK characters) against the summary we wrote.

With two or more models, a second table: each later model's difference from the first on every goal, in points,
with the 95% interval of the paired differences (the same examples asked of both; continuation paired by prompt,
its samples not being independent). Stages of the bundled model move goals by 2 to 5 points either way, about
what the held-out sets' size allows: the interval says which moves the data shows. With --pool, nothing is
scored: earlier runs' --json files, one draw of the held-out sets each (data/chat, and data/chat-confirm: README,
"When a stage is bundled"), are joined model by model and their differences printed as one larger set.

    .venv/bin/python bench/chat_eval.py [MODEL ...] [--data data/chat] [--limit N] [--json OUT.json]
        [--summary-docs 20] [--summary-methods hybrid,extractive,abstractive] [--abstractive-docs 6]
        [--support-seeds 4]
    .venv/bin/python bench/chat_eval.py --pool RUN.json RUN.json ...   # two draws of the sets as one

Without MODEL: the bundled seekmoe-tiny (before fine-tuning) and seekmoe-tiny-chat (after), when both exist.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import torch

from seekmoe.engine.sampling import SamplingParams
from seekmoe.han import HAN, IDEOGRAPHS
from seekmoe.llm import LLM
from seekmoe.model.checkpoint import load_model
from seekmoe.train.chat_data.customer_service import FINAL_ANSWERS
from seekmoe.train.config import FinetuneConfig
from seekmoe.train.loop import evaluate
from seekmoe.train.sft import SFTData, data_files, read_conversations

MODELS = Path(__file__).resolve().parents[1] / "seekmoe" / "models"
CJK_OR_WORD = re.compile(rf"[{IDEOGRAPHS}]|[^\W_{IDEOGRAPHS}]+")
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


def with_tool(llm: LLM, problems: list[dict]) -> tuple[list[bool], list[dict]]:
    """Whether each problem is answered right with the math plugin offered and run, 8 conversations at a time."""
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
    return right, examples


class RougeTokens:
    """rouge-score's own tokenizer drops every non-ASCII character, so Chinese would score nothing."""

    def tokenize(self, text: str) -> list[str]:
        return CJK_OR_WORD.findall(text.lower())


def summaries(llm: LLM, n_docs: int, methods: list[str], abstractive_docs: int) -> dict[str, dict]:
    """Per method: the share of held-out reports whose summary keeps the stated conclusion, mean ROUGE-L F1."""
    from rouge_score.rouge_scorer import RougeScorer
    from summary_docs import documents, keeps_conclusion

    scorer = RougeScorer(["rougeL"], tokenizer=RougeTokens())
    docs = documents(n_docs)
    out = {}
    for method in methods:
        some = docs[:abstractive_docs] if method == "abstractive" else docs  # a minute or more a document
        kept, rouge, t0, first = 0, 0.0, time.perf_counter(), ""
        for doc in some:
            summary = llm.generate_summary(doc.text, max_length=200, method=method)
            kept += keeps_conclusion(summary, doc)
            rouge += scorer.score(doc.reference, summary)["rougeL"].fmeasure
            first = first or summary
        out[method] = {"kept": kept / len(some), "rouge_l": rouge / len(some), "docs": len(some),
                       "seconds_per_doc": (time.perf_counter() - t0) / len(some), "example": first}
    return out


EVAL = Path(__file__).resolve().parents[1] / "data" / "eval"
LABELS = "order_status, refund, address_change, complaint, product_question, greeting"
ROUTER_PARAPHRASES = [  # held out: written for this benchmark, never in training
    f"Classify the customer's message. Answer with one of these labels and nothing else: {LABELS}.",
    "Which intent fits this support message best? Options: greeting, complaint, refund, order_status, "
    "product_question, address_change. Give only the label.",
    f"Route the message below to a team. Possible labels: {LABELS}. Output the label only.",
]
LATIN = re.compile(r"[A-Za-z]")


def unreadable(text: str, lang: str) -> str | None:
    """Why a continuation fails (None: it reads): under 20 characters ("short"), not in the prompt's script
    ("script"), or one phrase over and over ("loop"). English text holds no Chinese character at all (a reader
    stops at the first); Chinese prose may name Python or LibreOffice, so it need only be mostly Chinese."""
    text = text.strip()
    cjk, latin = len(HAN.findall(text)), len(LATIN.findall(text))
    units = list(text) if lang == "zh" else text.split()
    same_language = cjk > 2 * latin if lang == "zh" else latin > 0 and cjk == 0
    if len(text) < 20:
        return "short"
    return "script" if not same_language else "loop" if len(set(units)) < 0.5 * len(units) else None


def continuation(llm: LLM, samples: int = 16, defaults: bool = False
                 ) -> tuple[dict[str, float], list[dict], dict[str, dict[str, int]], dict[str, list[float]]]:
    """The share of readable samples a language, a few examples, the failures' reasons counted a language, and
    each prompt's share a language (the unit a comparison pairs: a prompt's samples are not independent)."""
    prompts = read_jsonl(EVAL / "continuation.jsonl", None)
    ok: dict[str, list[bool]] = {}
    by_prompt: dict[int, list[bool]] = {}
    why: dict[str, Counter] = {}
    examples = []
    for k in range(samples):
        # an explicit SamplingParams: the model's generation_config.json defaults (top_k, ...) do not apply, so
        # this measures the model alone, as it did before models shipped defaults; `defaults` measures those
        params = llm.params(max_tokens=48, seed=k) if defaults else SamplingParams(
            max_tokens=48, temperature=0.8, top_p=0.95, seed=k)
        done = llm.generate([p["prompt"] for p in prompts], params=params)
        for i, (p, c) in enumerate(zip(prompts, done, strict=True)):
            reason = unreadable(c.text, p["lang"])
            ok.setdefault(p["lang"], []).append(reason is None)
            by_prompt.setdefault(i, []).append(reason is None)
            if reason is not None:
                why.setdefault(p["lang"], Counter())[reason] += 1
            if k == 0 and len(examples) < 4 and p["lang"] == ("en", "zh")[len(examples) % 2]:
                examples.append({"asked": p["prompt"], "said": c.text})
    shares: dict[str, list[float]] = {}
    for i, v in by_prompt.items():
        shares.setdefault(prompts[i]["lang"], []).append(sum(v) / len(v))
    return ({lang: sum(v) / len(v) for lang, v in ok.items()}, examples,
            {lang: dict(c.most_common()) for lang, c in sorted(why.items())}, shares)


NAMES_ORDER = ("order_status", "refund", "address_change", "complaint")  # intents whose answer names a given order


def sensible(reply: str, ex: dict) -> bool:
    """A support answer of 20 characters or more, in the message's language, naming the order number it gave."""
    chinese = HAN.search(ex["messages"][-2]["content"]) is not None
    return len(reply) >= 20 and (HAN.search(reply) is not None) == chinese and ex["meta"]["order"] in reply


def about_orders(examples: list[dict]) -> list[dict]:
    """The support messages that give an order number about it (the README's quick-start chat is one)."""
    return [ex for ex in examples if "order" in ex["meta"] and ex["meta"]["intent"] in NAMES_ORDER]


def support(llm: LLM, examples: list[dict], seeds: int) -> tuple[list[float], list[float], list[dict]]:
    """Answers to about_orders messages: whether each is sensible greedy, and its share of sensible answers sampled
    as a request without sampling fields is (the model's generation_config.json, else temperature 1), seeds 0 to
    seeds - 1 (one seed left a model's figure 5 points either way)."""
    prompts = [llm.tokenizer.apply_chat_template(ex["messages"][:-1]) for ex in examples]
    greedy = [float(sensible(a, ex)) for a, ex in zip(answers(llm, examples, 64), examples, strict=True)]
    sampled = [0.0] * len(examples)
    for seed in range(seeds):
        said = [c.text.strip() for c in llm.generate(prompt_token_ids=prompts, max_tokens=64, seed=seed)]
        sampled = [n + sensible(a, ex) / seeds for n, a, ex in zip(sampled, said, examples, strict=True)]
        if seed == 0:
            shown = [{"asked": ex["messages"][-2]["content"], "said": a} for ex, a in zip(examples, said, strict=True)]
    return greedy, sampled, shown[:2]


def no_tool_when_not_needed(llm: LLM, chats: list[list[dict]]) -> float:
    """With the math tool offered, the share of chats that need no math in which nothing is called."""
    from seekmoe.plugins import WorkerPool
    from seekmoe.plugins.math import plugin

    with WorkerPool() as pool:
        quiet = [not llm.chat_with_tools(c, {"math": plugin}, pool=pool, max_tokens=32, temperature=0.0)[1]
                 for c in chats]
    return sum(quiet) / len(chats)


def score(model_path: Path, data: Path, limit: int | None, seq_len: int, summary_args: tuple,
          support_seeds: int) -> dict:
    t0 = time.perf_counter()
    result: dict = {"model": str(model_path), "val_loss": val_losses(model_path, data, seq_len)}
    # each goal's score per independent unit (held-out example, or continuation prompt), for paired comparisons
    units: dict[str, list[float]] = {}
    result["units"] = units
    llm = LLM(model_path)
    try:
        intents = read_jsonl(data / "intents.val.jsonl", limit)
        said = answers(llm, intents, 8)
        units["intent"] = [float(a == ex["meta"]["intent"]) for a, ex in zip(said, intents, strict=True)]
        result["intent_accuracy"] = sum(units["intent"]) / len(intents)
        paraphrased_units = [0.0] * len(intents)
        for k, instruction in enumerate(ROUTER_PARAPHRASES):
            asked = [{**ex, "messages": [{"role": "system", "content": instruction}, *ex["messages"][1:]]}
                     for ex in intents]
            right = [a == ex["meta"]["intent"] for a, ex in zip(answers(llm, asked, 8), intents, strict=True)]
            result[f"intent_accuracy_paraphrase_{k}"] = sum(right) / len(intents)
            paraphrased_units = [u + r / len(ROUTER_PARAPHRASES) for u, r in zip(paraphrased_units, right, strict=True)]
        units["intent, paraphrased instruction"] = paraphrased_units
        result["intent_examples"] = [{"asked": ex["messages"][-2]["content"], "label": ex["meta"]["intent"],
                                      "said": a} for ex, a in list(zip(intents, said, strict=True))[:3]]
        result["intent_misses"] = intent_misses(intents, said)
        dialogues = read_jsonl(data / "dialogues.val.jsonl", limit)
        said = answers(llm, dialogues, 32)
        result["multi_turn_recall"], result["recall_after_5_turns"], result["recall_by_fact"] = recall(
            said, dialogues)
        units["recall after >= 5 turns"] = [float(ok) for ok, _ in late_recall(said, dialogues)]
        result["recall_by_anchor"] = recall_by_anchor(said, dialogues)
        result["dialogue_examples"] = [{"asked": ex["messages"][-2]["content"], "fact": ex["meta"]["fact"],
                                        "said": a} for ex, a in list(zip(dialogues, said, strict=True))[:3]]
        zh_path = data / "dialogues_zh.val.jsonl"
        dialogues_zh = read_jsonl(zh_path, limit) if zh_path.exists() else []
        if dialogues_zh:
            said = answers(llm, dialogues_zh, 32)
            (result["multi_turn_recall_zh"], result["recall_after_5_turns_zh"],
             result["recall_by_fact_zh"]) = recall(said, dialogues_zh)
            units["recall after >= 5 turns zh"] = [float(ok) for ok, _ in late_recall(said, dialogues_zh)]
            result["dialogue_examples"] += [{"asked": ex["messages"][-2]["content"], "fact": ex["meta"]["fact"],
                                             "said": a} for ex, a in list(zip(dialogues_zh, said, strict=True))[:2]]
        problems = read_jsonl(data / "arithmetic.val.jsonl", limit)
        said = answers(llm, problems, 64)
        found = [ANSWER.search(a) for a in said]
        result["arithmetic_accuracy"] = sum(m is not None and int(m[1]) == ex["meta"]["answer"]
                                            for m, ex in zip(found, problems, strict=True)) / len(problems)
        right, result["tool_examples"] = with_tool(llm, problems)
        units["math tool"] = [float(r) for r in right]
        result["arithmetic_tool_accuracy"] = sum(right) / len(problems)
        chats = [ex["messages"][1:2] for ex in intents[:25]] + [ex["messages"][:2] for ex in dialogues[:25]]
        result["no_tool_without_math"] = no_tool_when_not_needed(llm, chats)
        (result["continuation"], result["continuation_examples"], result["continuation_failures"],
         shares) = continuation(llm)
        units |= {f"continuation {lang}": v for lang, v in shares.items()}
        result["continuation_defaults"], *_, shares = continuation(llm, defaults=True)
        units |= {f"continuation at the defaults {lang}": v for lang, v in shares.items()}
        support_path = data / "support.val.jsonl"
        orders = about_orders(read_jsonl(support_path, limit)) if support_path.exists() else []
        if orders:
            greedy, sampled, result["support_examples"] = support(llm, orders, support_seeds)
            units["support, greedy"], units["support, sampled"] = greedy, sampled
            result["support_greedy"], result["support_sampled"] = sum(greedy) / len(orders), sum(sampled) / len(orders)
        result["reads_media"] = llm.encoders is not None
        result["counts"] = {"support": len(orders), "intents": len(intents), "dialogues": len(dialogues),
                            "dialogues_zh": len(dialogues_zh), "arithmetic": len(problems)}
        result["summaries"] = summaries(llm, *summary_args) if summary_args[0] else {}
    finally:
        llm.close()
    result["data"] = str(data.resolve())  # which draw of the held-out sets: --pool joins only different ones
    result["seconds"] = time.perf_counter() - t0
    return result


def intent_misses(intents: list[dict], said: list[str], most: int = 5) -> list[dict]:
    """The held-out phrasings (templates) missed most often, with the wrong answer they got: misses come in whole
    phrasings, and which ones tells what the training phrasings lack."""
    asked = Counter(ex["meta"]["template"] for ex in intents)
    missed = Counter((ex["meta"]["template"], a) for ex, a in zip(intents, said, strict=True)
                     if a != ex["meta"]["intent"])
    return [{"template": t, "said": a, "missed": n, "asked": asked[t]} for (t, a), n in missed.most_common(most)]


def late_recall(said: list[str], dialogues: list[dict]) -> list[tuple[bool, str]]:
    """For each dialogue of 6 or more turns: whether the answer holds its fact, and the kind of fact."""
    return [(ex["meta"]["fact"] in a, ex["meta"]["fact_kind"]) for a, ex in zip(said, dialogues, strict=True)
            if ex["meta"]["turns"] >= 6]


def recall(said: list[str], dialogues: list[dict]) -> tuple[float, float, dict[str, float]]:
    """The share of answers holding the dialogue's fact: over all dialogues, over those of 6 or more turns, and
    the latter by the kind of fact (a kind that fails whole, as Chinese cities do, hides in the mean)."""
    right = [ex["meta"]["fact"] in a for a, ex in zip(said, dialogues, strict=True)]
    late = late_recall(said, dialogues)
    kinds = sorted({kind for _, kind in late})
    by_kind = {k: sum(ok for ok, kind in late if kind == k) / sum(kind == k for _, kind in late) for k in kinds}
    return sum(right) / len(dialogues), sum(ok for ok, _ in late) / max(len(late), 1), by_kind


def recall_by_anchor(said: list[str], dialogues: list[dict]) -> dict[str, list[int]]:
    """English names, e-mails and towns asked back after >= 5 turns: [recalled, asked] where the answer's word before
    the fact (of the answer template it starts with) is the customer's word before it ("in Leeds" -> "you are in
    Leeds"), where it is another ("I'm Kenji Garcia" -> "Your name is ..."), and where no template starts it. The
    model copies a value by matching the token before it, so the first split tells copying from recalling."""
    starts = sorted({t.split("{fact}")[0] for ts in FINAL_ANSWERS.values() for t in ts}, key=len, reverse=True)
    out = {"the customer's": [0, 0], "another": [0, 0], "no answer template": [0, 0]}
    for a, ex in zip(said, dialogues, strict=True):
        meta, first = ex["meta"], ex["messages"][1]["content"]
        if meta["turns"] < 6 or meta["fact_kind"] == "order_number" or meta["fact"] not in first:
            continue
        word = first[:first.index(meta["fact"])].split()[-1:]
        start = next((t for t in starts if a.startswith(t)), None)
        key = ("no answer template" if start is None
               else "the customer's" if start.split()[-1:] == word else "another")
        out[key][0] += meta["fact"] in a
        out[key][1] += 1
    return out


def paraphrased(r: dict) -> float:
    return sum(r[f"intent_accuracy_paraphrase_{k}"] for k in range(len(ROUTER_PARAPHRASES))) / len(ROUTER_PARAPHRASES)


def table(results: list[dict]) -> str:
    sets = sorted({name for r in results for name in r["val_loss"]})
    head = ["model", *(f"val loss {s}" for s in sets), "intent acc", "intent acc, paraphrased instruction",
            "multi-turn recall", "recall after >= 5 turns", "multi-turn recall zh", "recall after >= 5 turns zh",
            "arithmetic acc", "arithmetic acc, math tool",
            "no tool call without math", "continuation en / zh", "continuation at the model's defaults en / zh",
            "support answers name the order, greedy / sampled",
            "reads images and speech"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [Path(r["model"]).name, *(f"{r['val_loss'].get(s, float('nan')):.3f}" for s in sets),
                 f"{r['intent_accuracy']:.1%}",
                 f"{paraphrased(r):.1%}",
                 f"{r['multi_turn_recall']:.1%}", f"{r['recall_after_5_turns']:.1%}",
                 *(f"{r[k]:.1%}" if k in r else "—" for k in ("multi_turn_recall_zh", "recall_after_5_turns_zh")),
                 f"{r['arithmetic_accuracy']:.1%}", f"{r['arithmetic_tool_accuracy']:.1%}",
                 f"{r['no_tool_without_math']:.1%}",
                 f"{r['continuation'].get('en', 0):.1%} / {r['continuation'].get('zh', 0):.1%}",
                 (f"{r['continuation_defaults'].get('en', 0):.1%} / {r['continuation_defaults'].get('zh', 0):.1%}"
                  if "continuation_defaults" in r else "—"),
                 f"{r['support_greedy']:.1%} / {r['support_sampled']:.1%}" if "support_greedy" in r else "—",
                 "yes" if r["reads_media"] else "no"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired(before: list[float], after: list[float]) -> tuple[float, float]:
    """The mean of after - before over units scored for both, and the half-width of its 95% interval (normal
    approximation over the per-unit differences): both models answer the same examples, so the examples' own
    difficulty cancels and a difference the interval excludes 0 from is one the data shows."""
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"paired scores need the same units, two or more: got {len(before)} and {len(after)}")
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, 1.96 * math.sqrt(variance / len(diffs))


def differences(results: list[dict]) -> str:
    """Each later model's difference from the first on every goal scored on the same units (points, 95%
    interval; * where the interval leaves out 0)."""
    first, rest = results[0], results[1:]
    goals = [g for g in first.get("units", {}) if all(len(r.get("units", {}).get(g, ())) == len(first["units"][g])
                                                      for r in rest)]
    rows = ["| goal | units | " + " | ".join(f"{Path(r['model']).parent.name}/{Path(r['model']).name}"
                                             for r in rest) + " |", "|---|---|" + "---|" * len(rest)]
    for goal in goals:
        cells = []
        for r in rest:
            mean, half = paired(first["units"][goal], r["units"][goal])
            cells.append(f"{100 * mean:+.1f} ± {100 * half:.1f}{' *' if abs(mean) > half else ''}")
        rows.append(f"| {goal} | {len(first['units'][goal])} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pooled(runs: list[list[dict]]) -> list[dict]:
    """Each model's per-unit scores over several runs (--json files, one draw of the held-out sets each) joined in
    the order given, so that two draws compare as one larger set: the first run's first model comes first. A model
    must be in every run and every run must hold one draw (data folder); a goal is kept where each model has the
    same units in each run as the first model, continuation never (its prompts are the same in every run)."""
    if len(runs) < 2:
        raise ValueError(f"pooling needs two runs or more, got {len(runs)}")
    names = list(dict.fromkeys(r["model"] for r in runs[0]))
    by_run, seen = [], set()
    for i, run in enumerate(runs):
        models = {r["model"]: r for r in run}
        missing = [n for n in names if n not in models]
        if missing:
            raise ValueError(f"run {i + 1} has no result for {missing[0]}: every run must score the same models")
        draws = {r.get("data") for r in run}
        if len(draws) > 1:
            raise ValueError(f"run {i + 1} scored its models on different data ({', '.join(sorted(map(str, draws)))})")
        data = draws.pop()
        if data is not None and data in seen:
            raise ValueError(f"two runs scored {data}: pooling joins different draws of the held-out sets")
        seen.add(data)
        by_run.append(models)
    # continuation asks data/eval's prompts whatever --data says: a second run repeats them, not a new draw
    goals = [g for g in runs[0][0].get("units", {}) if not g.startswith("continuation")
             and all(len(run[n].get("units", {}).get(g, ())) == len(run[names[0]]["units"].get(g, ()))
                    for run in by_run for n in names)]
    return [{"model": n, "units": {g: [u for run in by_run for u in run[n]["units"][g]] for g in goals}}
            for n in names]


def summary_table(results: list[dict]) -> str:
    rows = ["| model | method | reports | conclusion kept | ROUGE-L F1 | s / report |", "|---|---|---|---|---|---|"]
    for r in results:
        for method, s in r["summaries"].items():
            rows.append(f"| {Path(r['model']).name} | {method} | {s['docs']} | {s['kept']:.0%} | {s['rouge_l']:.3f} "
                        f"| {s['seconds_per_doc']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model folders (default: bundled seekmoe-tiny and seekmoe-tiny-chat)")
    p.add_argument("--data", default="data/chat", help="folder of *.val.jsonl sets (default data/chat)")
    p.add_argument("--limit", type=int, help="at most N examples of each generation task")
    p.add_argument("--seq-len", type=int, default=1024, help="rows of the validation-loss pass (default 1024)")
    p.add_argument("--json", help="also write the results (with a few example answers) here")
    p.add_argument("--summary-docs", type=int, default=20, help="held-out reports to summarise (0: none)")
    p.add_argument("--summary-methods", default="hybrid,extractive,abstractive",
                   help="methods of LLM.generate_summary to compare (comma-separated)")
    p.add_argument("--abstractive-docs", type=int, default=6,
                   help="of those reports, how many the abstractive method summarises (a minute or more each)")
    p.add_argument("--support-seeds", type=int, default=4,
                   help="seeds of the sampled support answers (default 4)")
    p.add_argument("--pool", nargs="+", metavar="JSON",
                   help="score nothing: print the differences of the models in these --json files, their units "
                        "joined (one draw of the held-out sets a file, e.g. data/chat and data/chat-confirm)")
    args = p.parse_args()
    if args.pool:
        if args.models:
            p.error("--pool compares earlier runs: give no models with it")
        try:
            results = pooled([json.loads(Path(f).read_text(encoding="utf-8")) for f in args.pool])
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--pool: {e}")
        print(f"Differences from {Path(results[0]['model']).name} over {len(args.pool)} runs joined (points, 95% "
              "interval of the paired differences; * where it leaves out 0):\n")
        print(differences(results))
        return
    if args.support_seeds < 1:
        p.error(f"--support-seeds must be 1 or more, got {args.support_seeds}")
    models = [Path(m) for m in args.models] or [m for m in (MODELS / "seekmoe-tiny", MODELS / "seekmoe-tiny-chat")
                                                if m.is_dir()]
    torch.manual_seed(0)
    summary_args = (args.summary_docs, args.summary_methods.split(","), args.abstractive_docs)
    results = [score(m, Path(args.data), args.limit, args.seq_len, summary_args, args.support_seeds)
               for m in models]
    print(table(results))
    if len(results) > 1:
        print(f"\nDifferences from {Path(results[0]['model']).name} on the same held-out units (points, 95% "
              "interval of the paired differences; * where it leaves out 0):\n")
        print(differences(results))
    if args.summary_docs:
        print("\nSummaries of held-out 100,000-character reports (bench/summary_docs.py), max_length 200:\n")
        print(summary_table(results))
    for r in results:
        print(f"\n{Path(r['model']).name} ({r['seconds']:.0f} s): {r['counts']}")
        for ex in (r["intent_examples"] + r["dialogue_examples"] + r["continuation_examples"]
                   + r.get("support_examples", [])):
            print(f"  {ex['asked']!r} -> {ex['said']!r}")
        for m in r.get("intent_misses", []):
            print(f"  intent template {m['template']} read as {m['said']!r}: {m['missed']} of {m['asked']}")
        for lang, reasons in r.get("continuation_failures", {}).items():
            print(f"  continuation failures, {lang}: " + ", ".join(f"{why} {n}" for why, n in reasons.items()))
        for key, lang in (("recall_by_fact", "en"), ("recall_by_fact_zh", "zh")):
            if key in r:
                print(f"  recall after >= 5 turns by fact, {lang}: "
                      + ", ".join(f"{kind} {share:.0%}" for kind, share in r[key].items()))
        if "recall_by_anchor" in r:
            print("  recall after >= 5 turns (names, e-mails, towns, en) by the answer's word before the fact: "
                  + ", ".join(f"{k} {ok} of {n}" for k, (ok, n) in r["recall_by_anchor"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
