"""Bundle a fine-tuned chat model: RUN/model in bfloat16 (router float32), its tokenizer, and a model card written
from the run's own records and bench/chat_eval.py's before/after results.

    .venv/bin/python scripts/bundle_chat_model.py RUN EVAL_JSON OUT [--name seekmoe-tiny-chat] \
        [--chat-data data/chat2] [--media-eval AFTER.json [--media-before BEFORE.json]] [--previous-card CARD.md]
        [--note TEXT]

RUN is a `seekmoe finetune --method full` run folder (config.json, metrics.jsonl, data_report.json, model/) or a
`seekmoe train-multimodal` one (settings.json, stage1/, stage2/, model/ with its encoders); when its base model is
itself a run's model/ folder (a fine-tune, or a `seekmoe train` continued pretraining), that run is described as the
stage before. EVAL_JSON is `bench/chat_eval.py BEFORE RUN/model --json EVAL_JSON`: the model compared against first
(the chat model bundled before), this one last; the card shows issue 19's goals for both. --media-eval is
`seekmoe eval-multimodal RUN/model --json` (and --media-before the same for the model to compare with): the card
shows the held-out media accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from seekmoe.model import average
from seekmoe.model.checkpoint import load_model, save_model
from seekmoe.model.inspect import inspect_config
from seekmoe.model.upcycle import RECORD
from seekmoe.train.plots import read_metrics


def _pct(x: float) -> str:
    return f"{x:.1%}"


def stages(run: Path) -> list[Path]:
    """The run and the runs its base model came from, oldest first (a soup's: each of its runs' in turn)."""
    if is_soup(run):
        chain: list[Path] = []
        for folder in map(Path, soup_record(run)["models"]):
            if folder.name == "model":  # a run's model; a bundled folder's stages are the previous card's
                chain += [r for r in stages(folder.parent) if r not in chain]
        return [*chain, run]
    chain = [run]
    while True:
        base = Path(run_config(chain[0])["model"])
        if is_upcycled(base):  # a model folder grown from another by scripts/upcycle.py: a stage of its own
            chain.insert(0, base)
            continue
        if base.name == "model":
            parent = base.parent
        elif base.parent.name == "checkpoints":  # a pretraining run continued from another's checkpoint
            parent = base.parent.parent
        else:
            return chain
        if not ((parent / "config.json").is_file() or is_multimodal(parent)):
            return chain
        chain.insert(0, parent)


def is_pretraining(run: Path) -> bool:
    return "method" not in run_config(run)  # `seekmoe train`, not `seekmoe finetune`


def is_multimodal(run: Path) -> bool:
    return (run / "settings.json").is_file() and (run / "stage2" / "config.json").is_file()


def is_upcycled(run: Path) -> bool:
    return (run / RECORD).is_file()


def is_soup(run: Path) -> bool:
    """A run folder whose model/ scripts/average_models.py made from other runs' models."""
    return (run / "model" / average.RECORD).is_file()


def soup_record(run: Path) -> dict:
    return json.loads((run / "model" / average.RECORD).read_text())


def run_config(run: Path) -> dict:
    if is_upcycled(run):
        return json.loads((run / RECORD).read_text())
    return json.loads((run / ("settings.json" if is_multimodal(run) else "config.json")).read_text())


def command(run: Path) -> str:
    """The command that made a run."""
    if is_soup(run):
        record = soup_record(run)
        made = f".venv/bin/python scripts/average_models.py {run}/model {' '.join(record['models'])}"
        if len(set(record["weights"])) > 1:
            made += " --weights " + ",".join(f"{w:g}" for w in record["weights"])
        bundled = [(commit, m) for m in record["models"] if (commit := bundled_at(m))]
        return "".join(f"git checkout {commit} -- {m}\n" for commit, m in bundled) + made
    if is_upcycled(run):
        cfg = run_config(run)
        return f".venv/bin/python scripts/upcycle.py {cfg['model']} {run} --noise {cfg['noise']} --seed {cfg['seed']}"
    if not is_multimodal(run):
        cfg = run_config(run)
        made = f".venv/bin/seekmoe {'train' if is_pretraining(run) else 'finetune'} recipes/{run.name}.json"
        if cfg.get("method") == "lora":  # the adapter folded into its base: the model/ the next stage reads
            made += f"\n.venv/bin/seekmoe merge {cfg['model']} {run}/adapter {run}/model"
        return made
    from seekmoe.train.config import MultimodalSettings

    s, default = run_config(run), MultimodalSettings()
    keys = ("stage1_steps", "stage2_steps", "lr1", "lr2", "text", "text_every", "text_batch_size", "text_seq_len",
            "repeat_every", "lookup_weight", "device", "seed")
    flags = [f"--{k.replace('_', '-')} {s[k]}" for k in keys
             if s.get(k) is not None and s[k] != getattr(default, k)]
    if s.get("bf16"):
        flags.append("--bf16")
    if s.get("sets") and tuple(s["sets"]) != default.sets:  # a run made before the grounding sets existed too
        flags.append("--sets " + ",".join(s["sets"]))
    if s.get("encoder", {}).get("max_image_size"):
        flags.append(f"--max-image-size {s['encoder']['max_image_size']}")
    made = f".venv/bin/seekmoe train-multimodal --model {s['model']} --data {s['data']} --out {run} " + " ".join(flags)
    if commit := bundled_at(s["model"]):  # a bundled folder is overwritten by each bundle: take the one it read
        made = f"git checkout {commit} -- {s['model']}\n{made}"
    return made


def bundled_at(folder: str) -> str | None:
    """The commit that last changed a bundled model folder (tracked by git; the bundle being written is not yet
    committed), or None for a run's model folder."""
    if Path(folder).parent.name != "models" or not (Path(folder) / "model.safetensors").is_file():
        return None
    done = subprocess.run(["git", "log", "-1", "--format=%h", "--", folder], capture_output=True, text=True)
    return done.stdout.strip() or None


def multimodal_text(run: Path) -> str:
    s = run_config(run)

    def val(stage: int) -> str:
        losses = [r["val_loss"] for r in read_metrics(run / f"stage{stage}" / "metrics.jsonl") if r["split"] == "val"]
        return f"{losses[0]:.3f} → {losses[-1]:.3f}"

    text = ""
    if s.get("text"):
        text = (f"; one step in {s['text_every']} is instead {s['text_batch_size']} rows of {s['text_seq_len']} "
                f"tokens of `{s['text']}` ({', '.join(sorted(p.name for p in Path(s['text']).glob('*.train.jsonl')))}"
                f"), so the chat skills stay")
    stage1 = (f"Stage 1: {s['stage1_steps']} steps at lr {s['lr1']}, the language model frozen (validation loss on "
              f"held-out media {val(1)})." if (run / "stage1").is_dir() else "Its encoders went on learning (no "
              "stage 1).")
    # what the run's records cannot say (a schedule changed by hand, say), written beside them in note.md
    note = f" {(run / 'note.md').read_text(encoding='utf-8').strip()}" if (run / "note.md").is_file() else ""
    if s.get("repeat_every"):
        every = "every step is" if s["repeat_every"] == 1 else f"one step in {s['repeat_every']} is"
        text += (f"; {every} instead a drill of random token runs written twice, which only copying from earlier in "
                 "the context predicts")
    base = f"`{s['model']}` as commit {commit} bundled it" if (commit := bundled_at(s["model"])) else f"`{s['model']}`"
    return (f"- `{run}` (`seekmoe train-multimodal` from {base}): image and audio encoders on "
            f"`{s['data']}` ({', '.join(s['sets'])}). {stage1} Stage 2: {s['stage2_steps']} steps at lr {s['lr2']}, "
            f"everything trained, batches of {s['batch_size']} media questions{text} (validation loss on held-out "
            f"media {val(2)}).{note}")


def media_table(after: dict, before: dict | None) -> str:
    def pct(r: dict | None, key: str) -> str:
        return f"{r[key]['correct'] / r[key]['asked']:.1%}" if r and key in r else "–"

    head = "| set | language | before | after |\n|---|---|---:|---:|" if before else \
        "| set | language | accuracy |\n|---|---|---:|"
    rows = [f"| {k.split('/')[0]} | {k.split('/')[1]} | " + (f"{pct(before, k)} | " if before else "")
            + f"{pct(after, k)} ({after[k]['correct']} / {after[k]['asked']}) |" for k in after]
    return "\n".join([head, *rows])


def stage_text(run: Path) -> str:
    if is_soup(run):
        record = soup_record(run)
        equal = len(set(record["weights"])) == 1
        parts = ", ".join(f"`{m}`" + ("" if equal else f" ({w:.2g})")
                          for m, w in zip(record["models"], record["weights"], strict=True))
        mean = "mean" if equal else "weighted mean"
        return (f"- `{run}` (`scripts/average_models.py`): a model soup, no training: the {mean} of {parts}, weight "
                "by weight, the media encoders too.")
    if is_upcycled(run):
        cfg = run_config(run)
        before, after = cfg["n_routed_experts"]
        return (f"- `{run}` (`scripts/upcycle.py` from `{cfg['model']}`): sparse upcycling. Every routed expert and "
                f"its router row copied ({before} → {after} routed experts per MoE layer, twice the experts chosen "
                f"per token, the expert groups doubled alike), so the model computed what it did; the copies "
                f"perturbed by {cfg['noise']} of each weight's spread (seed {cfg['seed']}), so that training tells "
                "them apart.")
    if is_multimodal(run):
        return multimodal_text(run)
    cfg = run_config(run)
    metrics = read_metrics(run / "metrics.jsonl")
    val = [r for r in metrics if r["split"] == "val"]
    train = [r for r in metrics if r["split"] == "train"]
    step = train[-1]["step"]
    tokens = step * cfg["batch_size"] * cfg["seq_len"] * cfg["grad_accum"]
    util = ", ".join(f"{x['utilisation']:.0%}" for x in (val[-1]["layers"] if val else []))
    schedule = (f"AdamW lr {cfg['lr']} → {cfg['min_lr']} (cosine, {cfg['warmup_steps']} warm-up steps), seed "
                f"{cfg['seed']}. Balancing: `{cfg['balance']['mode']}` (bias update rate "
                f"{cfg['balance']['bias_update_rate']}); expert utilisation on validation per MoE layer: {util}. "
                f"Validation loss {val[-1]['val_loss']:.3f}, last training loss {train[-1]['loss']:.3f}.")
    if step < cfg["steps"]:
        schedule = f"Stopped by hand at step {step} of the {cfg['steps']} its schedule was set for: " + schedule
    if "method" not in cfg:  # pretraining
        manifest = json.loads((Path(cfg["data"]) / "manifest.json").read_text())
        sources = ", ".join(s["name"] for s in manifest.get("sources", []))
        return (f"- `{run}` (`seekmoe train`, continued from `{cfg['model']}`): {step} steps, {tokens:,} tokens seen "
                f"(batch {cfg['batch_size']} × {cfg['seq_len']} tokens) of `{cfg['data']}` "
                f"({manifest['splits']['train']['tokens']:,} training tokens: {sources}). {schedule}")
    data = json.loads((run / "data_report.json").read_text())
    method = cfg["method"]
    if method == "lora":
        method += f" (rank {cfg['lora']['r']} on {cfg['lora']['targets'].replace(',', ', ')}; merged)"
    if cfg.get("context"):
        method += f", context stretched to {cfg['context']:,} tokens with YaRN"
    return (f"- `{run}` (`seekmoe finetune` from `{cfg['model']}`, method {method}): {step} steps, "
            f"{tokens:,} tokens seen (batch {cfg['batch_size']} × {cfg['seq_len']} tokens, conversations packed; "
            f"loss on assistant tokens and plain-text rows only, {data['train']['target_tokens']:,} of the "
            f"{data['train']['tokens']:,} tokens of an epoch) of `{cfg['data']}`. {schedule}")


def goal_rows(before: dict, after: dict) -> list[tuple[str, str, str, str, bool]]:
    """(goal, target, before, after, met) for each goal of issue 19 that bench/chat_eval.py measures."""
    def cont(r: dict, key: str = "continuation") -> str:
        return f"{_pct(r[key].get('en', 0))} / {_pct(r[key].get('zh', 0))}"

    def hybrid(r: dict, key: str) -> float:
        return r.get("summaries", {}).get("hybrid", {}).get(key, float("nan"))

    c = after["counts"]
    return [
        ("plain continuation: samples ≥ 20 characters, in the prompt's language (English without a Chinese "
         "character), not a loop (en / zh)", "≥ 90%",
         cont(before), cont(after), min(after["continuation"].values()) >= 0.9),
    ] + ([("the same sampled as a request without sampling fields is (the model's generation_config.json; en / zh)",
           "—", cont(before, "continuation_defaults"), cont(after, "continuation_defaults"), True)]
         if "continuation_defaults" in before and "continuation_defaults" in after else []) + [
        (f"intent, documented router prompt ({c['intents']} messages, unseen phrasings)", "≥ 97%",
         _pct(before["intent_accuracy"]), _pct(after["intent_accuracy"]), after["intent_accuracy"] >= 0.97),
        ("intent, three paraphrased router instructions", "≥ 97%", _pct(paraphrased(before)),
         _pct(paraphrased(after)), paraphrased(after) >= 0.97),
        ("a first-turn fact recalled after ≥ 5 further turns", "≥ 90%", _pct(before["recall_after_5_turns"]),
         _pct(after["recall_after_5_turns"]), after["recall_after_5_turns"] >= 0.9),
        ("the same in Chinese dialogues", "≥ 90%", _pct(before.get("recall_after_5_turns_zh", float("nan"))),
         _pct(after.get("recall_after_5_turns_zh", float("nan"))), after.get("recall_after_5_turns_zh", 0) >= 0.9),
        (f"math with the tool: final answer right ({c['arithmetic']} word problems)", "≥ 90%",
         _pct(before["arithmetic_tool_accuracy"]), _pct(after["arithmetic_tool_accuracy"]),
         after["arithmetic_tool_accuracy"] >= 0.9),
        ("chats that need no math get no tool call", "all", _pct(before["no_tool_without_math"]),
         _pct(after["no_tool_without_math"]), after["no_tool_without_math"] == 1.0),
        ("summaries (hybrid) keep a 100k-character report's stated conclusion", "≥ 90%",
         _pct(hybrid(before, "kept")), _pct(hybrid(after, "kept")), hybrid(after, "kept") >= 0.9),
        ("reads images and speech", "yes", "yes" if before["reads_media"] else "no",
         "yes" if after["reads_media"] else "no", after["reads_media"]),
    ] + ([(f"a support message about an order is answered naming its number ({c['support']} messages; greedy / "
           "sampled as a request without sampling fields)", "—", support(before), support(after), True)]
         if "support_greedy" in before and "support_greedy" in after else [])


def support(r: dict) -> str:
    return f"{_pct(r['support_greedy'])} / {_pct(r['support_sampled'])}"


def paraphrased(r: dict) -> float:
    keys = [k for k in r if k.startswith("intent_accuracy_paraphrase_")]
    return sum(r[k] for k in keys) / max(len(keys), 1)


def earlier_stages(card_text: str) -> tuple[list[str], list[str]]:
    """From the card of the model this chain started from (a bundled model, not a run on disk): its Training bullets
    and its Reproduce commands that made a model (not the data, evaluation or bundling ones)."""
    training = card_text.split("\n## Training\n", 1)[1].split("\n## ", 1)[0]
    bullets = [b for b in training.strip().split("\n") if b.startswith("- ")]
    code = card_text.split("## Reproduce\n```bash\n", 1)[1].split("```", 1)[0]
    commands = [c for c in code.strip().split("\n") if c.startswith(".venv/bin/seekmoe ")]
    return bullets, commands


def fill(text: str, width: int) -> str:
    return textwrap.fill(text, width, break_on_hyphens=False)  # "held-out" stays whole


def card(name: str, run: Path, sources: dict, before: dict, after: dict, model,
         media: tuple[dict, dict | None, str] | None = None, invocation: str = "", before_note: str = "",
         previous: str | None = None, note: str = "") -> str:
    """media: eval-multimodal's accuracy of this model and of the one compared with (or None), and what that one is.
    invocation: this script's arguments, for the card's Reproduce section. before_note: what to know about the
    before column, printed under the table. previous: the card of the bundled model the first stage started from,
    whose stages come first. note: a paragraph of its own after the limits (what this model adds)."""
    report = inspect_config(model.config)
    chain = stages(run)
    bullets, commands = earlier_stages(previous) if previous else ([], [])
    recipes = "\n".join(commands + [command(r) for r in chain])
    sees = (previous is not None and "train-multimodal" in previous) or any(is_multimodal(r) for r in chain)
    media_section = ""
    if media:
        media_section = f"""
Held-out media, asked through the chat interface (`seekmoe eval-multimodal`, greedy; the speech test voices never
spoke in training){f"; before: {media[2]}" if media[1] else ""}:

{media_table(media[0], media[1])}
"""
    sets = sorted(set(after["val_loss"]) & set(before["val_loss"]))
    loss_rows = "\n".join(f"| {s} | {before['val_loss'][s]:.3f} | {after['val_loss'][s]:.3f} |" for s in sets)
    source_rows = "\n".join(
        f"| {s['name']} | {s.get('origin', '')} | {s.get('license', '')} | {s['counts']['train']:,} | "
        f"{s['counts']['val']:,} |" for s in sources.get("sets", []))
    goals = goal_rows(before, after)
    folder = Path(before["model"])
    before_name = f"{folder.parent if folder.name == 'model' else folder}, bundled before"
    results = "\n".join([f"| goal | target | {before_name} (before) | {name} (after) |", "|---|---|---|---|",
                         *(f"| {g} | {t} | {b} | {a} |" for g, t, b, a, _ in goals)])
    missed = "; ".join(g.split(":")[0].split(" (")[0] for g, _, _, _, met in goals if not met) or "none"
    examples = "\n".join(f"- *{ex['asked']}* → `{ex['said']}`" for ex in
                         after["intent_examples"][:2] + after["dialogue_examples"][:2]
                         + after.get("continuation_examples", [])[:2])
    for ex in after.get("tool_examples", [])[:2]:
        calls = ", ".join(f"{c['name']} {c['arguments']}" for c in ex["calls"])
        examples += f"\n- *{ex['asked']}* → calls {calls} → `{ex['said']}`"
    seeing = (", then taught to see and hear (image and audio encoders, `seekmoe train-multimodal`)", " It names "
              "the digit or garment in an attached picture and what an attached recording says (digits, everyday "
              "phrases).") if sees else ("", "")
    grown = ", its routed experts doubled by sparse upcycling" if any(is_upcycled(r) for r in chain) else ""
    intro = (f"seekmoe-tiny{grown} ({report.total / 1e6:.1f}M parameters, {report.active / 1e6:.1f}M active per token) "
             f"taught to copy from its context by continued pretraining, then fine-tuned to chat by `seekmoe "
             f"finetune`{seeing[0]}, on CPU ({len(bullets) + len(chain)} stages, below). It is the model every "
             "seekmoe command (`serve`, `chat`, `generate`, `summarize`) uses when none is given. It follows the "
             "chat template and the tool format: it labels shop-support messages with their intent, answers support "
             "questions in the shape it was taught, continues plain text, writes worked arithmetic answers in English "
             f"and Chinese, and calls the math tool and answers from its result.{seeing[1]}")
    limits = (f"Goals it does not reach yet (measured below): {missed}. It is a working part for demos and for "
              f"testing the stack (serving, tools, fine-tuning), not an assistant.")
    generation = run / "model" / "generation_config.json"
    defaults = ""
    if generation.is_file():  # written by hand into the run's model folder, before chat_eval measured it
        text = generation.read_text(encoding="utf-8").strip()
        shown = ", ".join(f"{k} {v}" for k, v in json.loads(text).items())
        defaults = "\n" + fill(f"Sampling defaults (`generation_config.json`: {shown}) fill what a request "
                                "leaves out, as in vLLM; a request's own values win.", 116) + "\n"
        recipes += f"\nprintf '%s\\n' {shlex.quote(text)} > {run}/model/generation_config.json"
    return f"""# {name}

{fill(intro, 116)}

{fill(limits, 116)}
{defaults}{(chr(10) + fill(note, 116) + chr(10)) if note else ""}
## Results on held-out data
Measured by `bench/chat_eval.py` (greedy answers through the engine, continuations sampled at temperature 0.8;
the intent, dialogue and continuation sets use phrasings and texts that never occur in training).

{results}
{(chr(10) + fill(before_note, 116) + chr(10)) if before_note else ""}{media_section}
Validation loss, nats per assistant token:

| set | before | after |
|---|---|---|
{loss_rows}

Some answers of {name}:
{examples}

## Training
{chr(10).join(bullets + [stage_text(r) for r in chain])}

## Data and licenses
Pretraining: `scripts/get_corpus.sh` (novels, scripture, Shakespeare, US presidential addresses, Python
documentation, classical Chinese; see seekmoe-tiny's card) and `seekmoe data copy` (generated, Apache-2.0).
Fine-tuning: `seekmoe data chat` (the default sizes are in the repository's data/chat; the last stage's sets,
below, are `recipes/{name}-data.sh`'s), and `scripts/sft_mix.py`, which adds plain-text paragraphs of the
corpus, copy documents and chats that need no tool:

| set | origin | license | train | val |
|---|---|---|---|---|
{source_rows}

## Reproduce
```bash
scripts/get_corpus.sh
bash recipes/{name}-data.sh  # every data set below, as each stage used it
{recipes}
.venv/bin/python bench/chat_eval.py {before['model']} {run}/model --summary-methods hybrid --json {run}/eval.json
.venv/bin/python scripts/bundle_chat_model.py {invocation}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the fine-tuning run folder")
    parser.add_argument("eval", type=Path, help="bench/chat_eval.py --json output: the base model, then the run's")
    parser.add_argument("out", type=Path, help="the model folder to write")
    parser.add_argument("--name", default="seekmoe-tiny-chat", help="model name in the card")
    parser.add_argument("--chat-data", type=Path, default=Path("data/chat"),
                        help="the `seekmoe data chat` folder of the last fine-tuning stage (its SOURCES.json)")
    parser.add_argument("--media-eval", type=Path, help="seekmoe eval-multimodal RUN/model --json output")
    parser.add_argument("--media-before", type=Path, help="the same for the model to compare with")
    parser.add_argument("--media-before-name", default="the chat model bundled before",
                        help="what --media-before measured, in the card")
    parser.add_argument("--before-note", default="", help="a sentence under the results table about the before column")
    parser.add_argument("--previous-card", type=Path,
                        help="the card (README.md) of the bundled model the run's first stage started from: its "
                             "training stages and commands come first in this card")
    parser.add_argument("--note", default="", help="a paragraph after the limits: what this model adds")
    args = parser.parse_args()
    previous = args.previous_card.read_text(encoding="utf-8") if args.previous_card else None
    results = json.loads(args.eval.read_text())
    before, after = results[0], results[-1]
    sources = json.loads((args.chat_data / "SOURCES.json").read_text())
    model = load_model(args.run / "model", dtype="bfloat16")
    save_model(model, args.out)
    for f in ("tokenizer.json", "tokenizer_config.json", "multimodal.safetensors", "generation_config.json"):
        if (args.run / "model" / f).is_file():
            shutil.copyfile(args.run / "model" / f, args.out / f)
    media = None
    if args.media_eval:
        media = (json.loads(args.media_eval.read_text()),
                 json.loads(args.media_before.read_text()) if args.media_before else None, args.media_before_name)
    invocation = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = card(args.name, args.run, sources, before, after, model, media, invocation, args.before_note, previous,
                args.note)
    (args.out / "README.md").write_text(text, encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
