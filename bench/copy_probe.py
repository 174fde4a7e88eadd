"""How well a model copies what followed last time, on runs whose tokens only copying predicts: models side by side.

Each probe is a run of distinct items in random order, a cue, and the same run again; the figure is the share of
the second copy's tokens (all but its first) that the model's greedy next-token choice gets right,
teacher-forced. A model with working induction heads ("what followed this token last time?") scores near 100%
on any items; one that only learned to copy a closed set (the invented syllables and the 40 characters of
seekmoe/train/copy_text.py) does better there than elsewhere. The item sets:
- syllables, hanzi: copy_text's own closed sets (what the copy documents trained on);
- english, chinese: common English words and Chinese characters (any text has them; none is a fact);
- cities en, cities zh: the held-out city names the recall evaluation asks back (bench/chat_eval.py).

    .venv/bin/python bench/copy_probe.py [MODEL ...] [--runs 60] [--length 12] [--seed 0]

Without MODEL: the bundled seekmoe-tiny-chat.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from seekmoe.model.checkpoint import load_model
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train import copy_text
from seekmoe.train.chat_data import customer_service, customer_service_zh

ROOT = Path(__file__).resolve().parents[1]
ENGLISH_WORDS = ("time year people way day man thing woman life child world school state family student group country "
                 "problem hand part place case week company system program question work government number night point "
                 "home water room mother area money story fact month lot right study book eye job word business issue "
                 "side kind head house service friend father power hour game line end member law car city community "
                 "name president team minute idea kid body information back parent face others level office door "
                 "health person art war history party result change morning reason research girl guy moment air "
                 "teacher force education foot boy age policy music market sense nation plan college interest death "
                 "experience effect class control care field development role effort rate heart drug show leader "
                 "light voice wife police mind price report decision son view relationship town road arm difference")
ENGLISH = ENGLISH_WORDS.split()
CHINESE = list(dict.fromkeys("的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出要于就下得可你年"
                             "生自会那后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起"
                             "与好看学进种将还分此心前面又定见只主没公从"))


# between the two copies: the copy documents' own cue that a repeat follows (English's for English items,
# Chinese's for Chinese), and one they never use: working induction needs neither
CUES = {"trained cue": ("\n\nOnce more:\n", "\n\n再说一遍：\n"), "new cue": ("\n(again)\n", "\n(again)\n")}


def item_sets() -> dict[str, tuple[list[str], str]]:
    """name -> (items, the separator between items)."""
    syllable_words = sorted({copy_text.word(random.Random(i), (1, 2)) for i in range(400)})
    return {"syllables": (syllable_words, " "), "hanzi": (copy_text.HANZI, ""), "english": (ENGLISH, " "),
            "chinese": (CHINESE, ""), "cities en": (list(customer_service.CITIES), " "),
            "cities zh": (customer_service_zh.CITIES_ZH, "")}


def probe(model, tok: Tokenizer, items: list[str], sep: str, cue: str, runs: int, length: int, seed: int) -> float:
    rng = random.Random(seed)
    right = total = 0
    for _ in range(runs):
        ids = tok.encode(sep.join(rng.sample(items, min(length, len(items)))))
        full = ids + tok.encode(cue) + ids
        start = len(full) - len(ids) + 1  # the second copy's first token has nothing before it to go by
        with torch.no_grad():
            guess = model(torch.tensor([full]))[0, start - 1:-1].argmax(-1)  # (len(ids) - 1,)
        right += int((guess == torch.tensor(full[start:])).sum())
        total += len(full) - start
    return right / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--runs", type=int, default=60, help="probes per item set")
    p.add_argument("--length", type=int, default=12, help="items per run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    models = args.models or [ROOT / "seekmoe" / "models" / "seekmoe-tiny-chat"]
    sets = item_sets()
    print("| model | cue | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for path in models:
        tok, model = Tokenizer.from_pretrained(path), load_model(path).eval()
        for name, (cue_en, cue_zh) in CUES.items():
            scores = [probe(model, tok, items, sep, cue_en if sep else cue_zh, args.runs, args.length, args.seed)
                      for items, sep in sets.values()]
            print(f"| {path} | {name} | " + " | ".join(f"{s:.1%}" for s in scores) + " |", flush=True)


if __name__ == "__main__":
    main()
