"""The fine-tuning mixture of the bundled chat model: the chat sets, plus plain text so the model keeps continuing
ordinary text (a chat-only fine-tune learns to end everything at once), plus copy documents so it keeps the
copying it learned in pretraining, plus chats that need no math with the math tool offered, so that a server
started with `--tools math` calls it only when there is something to compute (the tool chats alone teach "a tool
is offered, so call it").

    .venv/bin/python scripts/sft_mix.py --chat data/chat --corpus data/corpus --copy data/copy/copy.jsonl \
        --out runs/sft-mix [--text 4000] [--copy-docs 3000] [--no-tool 1500] [--seed 0] [--sources A,B,...]
        [--zh-share 0.25] [--in-turn A,B] [--cut-long] [--en-in-turn]

OUT gets a link to every *.jsonl of --chat, text.train.jsonl / text.val.jsonl (paragraphs of the corpus's --sources,
--zh-share of them Chinese; the Chinese of an --in-turn source takes turns with the rest's), copy.train.jsonl
({"text": ...} lines: `seekmoe finetune` learns them whole) and no_tool.train.jsonl (training dialogues cut after a
random answer, chatterbot and Python FAQ chats, each with the math tool in "tools" and answered without it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from seekmoe.plugins import openai_tool
from seekmoe.plugins.math import plugin
from seekmoe.train.chat_data import write_jsonl as write_chats
from seekmoe.train.copy_text import corpus_paragraphs

# the corpus's sources every mixture up to runs/sft-mix6 read: the corpus before its modern Chinese
MIX_SOURCES = ("austen", "chinese_poetry", "moby_dick", "python_docs", "shakespeare", "sotu", "web")


def names(text: str) -> list[str]:
    """A comma list's names, sorted, once each."""
    return sorted({n.strip() for n in text.split(",") if n.strip()})


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def taking_turns(pools: list[list[str]]) -> list[str]:
    """One block of each pool in turn, until every pool is used up."""
    return [p for row in itertools.zip_longest(*pools) for p in row if p is not None]


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
    p.add_argument("--sources", default=",".join(MIX_SOURCES), help="the corpus's source folders to draw text from")
    p.add_argument("--zh-share", type=float, default=0.25, help="the share of text rows not in ASCII (Chinese)")
    p.add_argument("--in-turn", default="", help="sources (of --sources) whose Chinese blocks take turns with the "
                   "others', however few they are")
    p.add_argument("--cut-long", action="store_true", help="cut blocks over 1,500 characters at sentence ends "
                   "instead of leaving them out (the speeches, the Bible), and count curly quotes as English")
    p.add_argument("--en-in-turn", action="store_true", help="the English sources' blocks take turns, so the "
                   "largest (Python's documentation) is not most of the English text")
    args = p.parse_args()
    sources, in_turn = names(args.sources), names(args.in_turn)
    missing = [s for s in sources if not (args.corpus / s).is_dir()]
    if missing or not sources:
        raise SystemExit(f"--sources: {', '.join(missing) or '(none)'}: not a source folder of {args.corpus}")
    stray = [s for s in in_turn if s not in sources]
    if stray:
        raise SystemExit(f"--in-turn: {', '.join(stray)}: not among --sources")
    if not 0 <= args.zh_share <= 1:
        raise SystemExit("--zh-share: a share between 0 and 1")
    for need in (args.chat, args.corpus, args.copy):
        if not need.exists():
            raise SystemExit(f"{need}: missing (scripts/get_corpus.sh; seekmoe data chat / copy)")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in sorted(args.chat.glob("*.jsonl")):
        link = args.out / f.name
        link.unlink(missing_ok=True)
        link.symlink_to(f.resolve())
    n_zh = int(args.text * args.zh_share)
    # blocks of 200 to 1,500 characters: a few sentences of prose, a poem or two
    def blocks(source: str, english: bool) -> list[str]:
        return corpus_paragraphs(args.corpus / source, 200, 1500, english, cut_long=args.cut_long)

    en_pools = [blocks(s, True) for s in sources]
    # the other blocks (the poetry, and the odd non-ASCII paragraph of an English source) are one pool, and each
    # --in-turn source another: the pools take turns, so a small source (modern prose) is not drowned by the poetry
    zh_pools = [[p for s in sources if s not in in_turn for p in blocks(s, False)],
                *(blocks(s, False) for s in in_turn)]
    if args.en_in_turn:
        for pool in en_pools:
            rng.shuffle(pool)
        en = taking_turns(en_pools)
    else:
        en = [p for pool in en_pools for p in pool]
        rng.shuffle(en)
    for pool in zh_pools:
        rng.shuffle(pool)
    zh = taking_turns(zh_pools)
    n_val = max(1, args.text // 10)
    train = en[:args.text - n_zh] + zh[:n_zh]
    n_val_zh = int(n_val * args.zh_share)
    val = en[args.text - n_zh:args.text - n_zh + n_val - n_val_zh] + zh[n_zh:n_zh + n_val_zh]
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
