"""Where a model looks when it recalls a fact: per language and kind of fact, on the held-out dialogues.

Each held-out support dialogue (bench/chat_eval.py's recall set) is fed teacher-forced up to the point of its last
answer where the fact begins ("您说您在" of "您说您在成都。"). At that position the script reads
- first token: how often the model's greedy next token is the fact's first token, and the mean probability it gives
  that token (the first token is the hard one: the rest a model copies by following on from it);
- attention: for every head of every layer, the attention from that position to the fact's first token where the
  customer gave it, averaged over the dialogues; the strongest head is shown. A kind whose best head stays near 0
  is never found: the answer can only guess.

    .venv/bin/python bench/recall_heads.py [MODEL ...] [--data data/chat8] [--limit 300] [--misses 5]
        [--by-template] [--phrasings training]

--misses N lists, under the table, up to N dialogues of each kind where the first token was missed: the fact, the
token it begins with, and the token the model chose instead. --by-template splits each kind by the phrasing of the
turn that gave the fact (its template id). --phrasings training asks dialogues drawn as training draws them
(training phrasings, training facts; never the ones trained on, a seed of their own) instead of the held-out ones: a
fact found there and missed in held-out dialogues is lost to the phrasing, not to copying.

Without MODEL: the bundled seekmoe-tiny-chat. About half a minute a model for 600 dialogues on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import torch

from seekmoe.model.checkpoint import load_model
from seekmoe.model.model import MLA
from seekmoe.text.tokenizer import Tokenizer
from seekmoe.train.chat_data import customer_service, customer_service_zh

ROOT = Path(__file__).resolve().parents[1]
SETS = ("dialogues", "dialogues_zh")  # the held-out dialogue sets read from --data


def probes(tok: Tokenizer, dialogues: list[dict]) -> list[dict]:
    """(ids up to the fact in the answer, the fact's first token id, its position in the customer's turn)."""
    out = []
    for ex in dialogues:
        fact, answer = ex["meta"]["fact"], ex["messages"][-1]["content"]
        prompt = tok.apply_chat_template(ex["messages"][:-1])
        # the answer's own tokens up to the fact's first one; a lone space before English digits is not it
        full = tok.encode(answer[:answer.index(fact) + len(fact)])
        k = len(tok.encode(answer[:answer.index(fact)].rstrip(" ")))
        while k < len(full) - 1 and not tok.decode([full[k]]).strip():
            k += 1
        first = full[k]
        # where the customer gave it: the same token, in the first user turn (the held-out dialogues give it there)
        turn = tok.apply_chat_template(ex["messages"][:2] if ex["messages"][0]["role"] == "system"
                                       else ex["messages"][:1])
        at = [i for i in range(len(turn)) if turn[i] == first and tok.decode(turn[i:]).strip().startswith(fact)]
        if not at:  # tokenised differently in the turn than in the answer: no position to read
            continue
        out.append({"ids": prompt + full[:k], "first": first, "at": at[0], "fact": fact,
                    "key": f'{ex["meta"].get("lang", "en")}/{ex["meta"]["fact_kind"]}',
                    "template": ex["meta"]["templates"][0]})
    return out


def last_attention(mod: MLA, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One MLA layer's attention (H, T) from the last position of a one-row input, as MLA.forward computes it."""
    q_nope, q_pe = mod.queries(x, cos, sin)
    c_kv, k_pe = mod.latent(x, cos, sin)
    t = x.shape[1]
    k_nope = mod.kv_b_proj(c_kv).view(t, mod.n_heads, -1)[..., :mod.nope_dim]  # (T, H, nope)
    scores = (torch.einsum("hd,thd->ht", q_nope[0, -1], k_nope)
              + torch.einsum("hd,td->ht", q_pe[0, -1], k_pe[0])) * mod.softmax_scale  # (H, T)
    return scores.float().softmax(-1)


def read(model, probe: dict) -> tuple[float, int, torch.Tensor]:
    """p(first token), the greedy token, and attention (layers, heads) from the last position to the fact."""
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.append((mod, args)))
             for m in model.modules() if isinstance(m, MLA)]
    try:
        with torch.no_grad():
            out = model(torch.tensor([probe["ids"]]))
    finally:
        for h in hooks:
            h.remove()
    logits = out if torch.is_tensor(out) else out[0]
    p = logits[0, -1].float().softmax(-1)
    with torch.no_grad():
        rows = [last_attention(mod, *args)[:, probe["at"]] for mod, args in inputs]
    return p[probe["first"]].item(), int(p.argmax()), torch.stack(rows)


def held_out_dialogues(data: Path, limit: int) -> list[dict]:
    dialogues = []
    for name in SETS:
        path = data / f"{name}.val.jsonl"
        if path.exists():
            dialogues += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:limit]
    return dialogues


def training_dialogues(limit: int) -> list[dict]:
    """limit dialogues a language as `seekmoe data chat` draws training ones, from a seed no data set uses."""
    out = []
    for book in (customer_service.ENGLISH, customer_service_zh.CHINESE):
        out += customer_service.dialogues(limit, random.Random(f"recall_heads/{book.lang or 'en'}"), False, book)
    return out


def measure(model_path: Path, data: Path, limit: int, by_template: bool = False,
            phrasings: str = "held-out") -> dict:
    tok = Tokenizer.from_pretrained(model_path)
    model = load_model(model_path).eval().float()
    dialogues = held_out_dialogues(data, limit) if phrasings == "held-out" else training_dialogues(limit)
    groups, misses = defaultdict(list), defaultdict(list)
    for probe in probes(tok, dialogues):
        key = f'{probe["key"]} {probe["template"]}' if by_template else probe["key"]
        p, chosen, attention = read(model, probe)
        groups[key].append((p, chosen == probe["first"], attention))
        if chosen != probe["first"]:
            misses[key].append((probe["fact"], tok.decode([probe["first"]]), tok.decode([chosen])))
    result = {}
    for key, rows in sorted(groups.items()):
        attention = torch.stack([a for _, _, a in rows]).mean(0)  # (layers, heads)
        layer, head = divmod(int(attention.argmax()), attention.shape[1])
        result[key] = {"n": len(rows), "first_token": sum(hit for _, hit, _ in rows) / len(rows),
                       "p_first": sum(p for p, _, _ in rows) / len(rows),
                       "best_head": f"L{layer}H{head}", "attention": attention.max().item(), "misses": misses[key]}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="model folders (default: the bundled seekmoe-tiny-chat)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "chat",
                    help="folder with dialogues.val.jsonl and dialogues_zh.val.jsonl (default data/chat)")
    ap.add_argument("--limit", type=int, default=300, help="at most N dialogues of each language (default 300)")
    ap.add_argument("--misses", type=int, default=0, metavar="N",
                    help="list up to N missed first tokens of each kind of fact (default 0: none)")
    ap.add_argument("--by-template", action="store_true",
                    help="one row per phrasing of the turn that gave the fact, not per kind of fact")
    ap.add_argument("--phrasings", choices=("held-out", "training"), default="held-out",
                    help="held-out: the --data dialogues (default); training: dialogues drawn as training draws "
                         "them, with a seed of their own (--data unused)")
    args = ap.parse_args()
    if args.limit < 1:
        ap.error("--limit must be at least 1")
    if args.misses < 0:
        ap.error("--misses must be 0 or more")
    if args.phrasings == "held-out" and not any((args.data / f"{name}.val.jsonl").is_file() for name in SETS):
        ap.error(f"{args.data} holds neither dialogues.val.jsonl nor dialogues_zh.val.jsonl (seekmoe data chat)")
    models = args.models or [ROOT / "seekmoe" / "models" / "seekmoe-tiny-chat"]
    missing = [str(m) for m in models if not (m / "config.json").is_file()]
    if missing:
        ap.error(f"not a model folder (no config.json): {', '.join(missing)}")
    results = {str(m): measure(m, args.data, args.limit, args.by_template, args.phrasings) for m in models}
    keys = sorted({k for r in results.values() for k in r})
    print("| fact | " + " | ".join(f"{m}: first token / p / best head (attention)" for m in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        cells = []
        for r in results.values():
            c = r.get(k)
            cells.append("—" if c is None else f"{c['first_token']:.0%} / {c['p_first']:.2f} / {c['best_head']} "
                                               f"({c['attention']:.2f}), n={c['n']}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    for m, r in results.items():
        for k, c in r.items():
            if args.misses and c["misses"]:
                shown = "; ".join(f"{fact} ({want!r} -> {got!r})" for fact, want, got in c["misses"][:args.misses])
                print(f"{m} {k}, {len(c['misses'])} missed: {shown}")


if __name__ == "__main__":
    main()
