"""The fine-tuning mixture of the bundled chat model: the chat sets, plus plain text so the model keeps continuing
ordinary text (a chat-only fine-tune learns to end everything at once), plus copy documents so it keeps the
copying it learned in pretraining, plus chats that need no math with the math tool offered, so that a server
started with `--tools math` calls it only when there is something to compute (the tool chats alone teach "a tool
is offered, so call it").

    .venv/bin/python scripts/sft_mix.py --chat data/chat --corpus data/corpus --copy data/copy/copy.jsonl \
        --out runs/sft-mix [--text 4000] [--copy-docs 3000] [--no-tool 1500] [--seed 0]

OUT gets a link to every *.jsonl of --chat, text.train.jsonl / text.val.jsonl (paragraphs of the corpus, a quarter
of them Chinese), copy.train.jsonl ({"text": ...} lines: `seekmoe finetune` learns them whole) and
no_tool.train.jsonl (training dialogues cut after a random answer, chatterbot and Python FAQ chats, each with the
math tool in "tools" and answered without it).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from seekmoe.plugins import openai_tool
from seekmoe.plugins.math import plugin
from seekmoe.train.chat_data import write_jsonl as write_chats
from seekmoe.train.copy_text import corpus_paragraphs


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def no_tool_chats(chat: Path, n: int, rng: random.Random) -> list[dict]:
    """n chats that need no math, the math tool offered: half support dialogues (order numbers, e-mails and prices
    in them, yet nothing to compute) cut after a random answer, the rest chatterbot and Python FAQ exchanges."""
    dialogues = read_jsonl(chat / "dialogues.train.jsonl")
    short = read_jsonl(chat / "chatterbot.train.jsonl") + read_jsonl(chat / "python_faq.train.jsonl")
    tools = [openai_tool(plugin)]
    out = []
    for d in rng.sample(dialogues, n // 2):
        messages = d["messages"]
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        out.append({"messages": messages[:rng.choice(answers) + 1], "tools": tools})
    out += [{"messages": c["messages"], "tools": tools} for c in rng.choices(short, k=n - n // 2)]
    rng.shuffle(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chat", type=Path, default=Path("data/chat"))
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--copy", type=Path, default=Path("data/copy/copy.jsonl"))
    p.add_argument("--out", type=Path, default=Path("runs/sft-mix"))
    p.add_argument("--text", type=int, default=4000, help="plain-text rows for training (val: a tenth more)")
    p.add_argument("--copy-docs", type=int, default=3000)
    p.add_argument("--no-tool", type=int, default=1500, help="chats answered without the offered math tool")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for need in (args.chat, args.corpus, args.copy):
        if not need.exists():
            raise SystemExit(f"{need}: missing (scripts/get_corpus.sh; seekmoe data chat / copy)")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in sorted(args.chat.glob("*.jsonl")):
        link = args.out / f.name
        link.unlink(missing_ok=True)
        link.symlink_to(f.resolve())
    n_zh = args.text // 4
    # blocks of 200 to 1,500 characters: a few sentences of prose, a poem or two
    en, zh = corpus_paragraphs(args.corpus, 200, 1500, True), corpus_paragraphs(args.corpus, 200, 1500, False)
    rng.shuffle(en)
    rng.shuffle(zh)
    n_val = max(1, args.text // 10)
    train = en[:args.text - n_zh] + zh[:n_zh]
    val = en[args.text - n_zh:args.text - n_zh + n_val - n_val // 4] + zh[n_zh:n_zh + n_val // 4]
    rng.shuffle(train)
    write_jsonl(args.out / "text.train.jsonl", train)
    write_jsonl(args.out / "text.val.jsonl", val)
    copies = args.copy.read_text(encoding="utf-8").splitlines()
    (args.out / "copy.train.jsonl").write_text("\n".join(rng.sample(copies, args.copy_docs)) + "\n", encoding="utf-8")
    quiet = no_tool_chats(args.chat, args.no_tool, rng)
    (args.out / "no_tool.train.jsonl").unlink(missing_ok=True)
    if quiet:
        write_chats(args.out / "no_tool.train.jsonl", quiet)
    print(f"{args.out}: chat sets linked, text {len(train):,} train / {len(val):,} val, copy {args.copy_docs:,}, "
          f"no tool {len(quiet):,}")


if __name__ == "__main__":
    main()
