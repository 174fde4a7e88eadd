"""The knowledge graph (issue 22), measured: edge precision and recall and discovery recall@5 on planted corpora
(English and Chinese), Swanson's fish oil -> Raynaud's on abstracts we wrote, and build speed, peak memory and graph
size on the Python documentation corpus.

    .venv/bin/python bench/graph.py [--docs data/corpus/python_docs] [--seed 0]

Planted corpora: for each of N hidden pairs (A, C), documents state A -> B1 and A -> B2, other documents state
B1 -> C and B2 -> C, and A and C never share a document; distractor documents relate other terms, filler documents
relate nothing planted. An edge is correct when the corpus writer stated it (planted or distractor); precision is
over every edge the graph holds with positive weight, context words ("in mice") included, so it measures the noise
a user would see. recall@5: the share of A for which `discover A` lists C in its top five.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seekmoe.graph.build import build
from seekmoe.graph.discover import discover, weight
from seekmoe.graph.extract import CooccurrenceExtractor
from seekmoe.graph.store import Graph
from seekmoe.graph.terms import term_key

ROOT = Path(__file__).resolve().parents[1]

SWANSON = ROOT / "tests" / "data" / "graph" / "swanson.jsonl"

# ---- planted corpora ---------------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return text.split()


_SYLLABLES = _words("ka lo vi dre mon tas quel ri zen bor fa nu pel sim tor gha xin vel dar mur cal pen sor lin")

EN = {
    "a_head": ["extract", "resin", "oil", "tincture"],
    "b_head": ["acid", "receptor", "kinase", "hormone", "peptide"],
    "c_head": ["syndrome", "disease", "disorder"],
    "ab": ["{a} raises {b}{ctx}.", "{a} lowers {b}{ctx}.", "{a} blocks the {b}{ctx}.", "{a} activates {b}{ctx}."],
    "bc": ["{b} is elevated in {c}.", "Patients with {c} show abnormal {b}.", "{b} accumulates in {c}{ctx}.",
           "Loss of {b} worsens {c}."],
    "ctx": ["", "", " in mice", " in the liver", " in healthy adults"],
    "filler": ["Rainfall in the northern valley peaked in April.", "The old bridge was repainted by volunteers.",
               "The library opens at nine on weekdays.", "Wheat harvests depend on soil moisture.",
               "The orchestra rehearsed the second symphony.", "Glaciers retreat when summers grow warmer.",
               "Chess clubs meet on Thursday evenings.", "Tidal energy is predictable but costly.",
               "The museum acquired a bronze statue.", "Copper wire conducts electricity well."],
}
# Chinese: words jieba knows as nouns, so that segmentation (not invented names) is what is measured
ZH = {
    "a": _words("鱼油 绿茶 大蒜 姜黄 人参 银杏 蜂胶 红曲 螺旋藻 枸杞 黄芪 灵芝"),
    "b": _words("胆固醇 甘油三酯 胰岛素 尿酸 血小板 血红蛋白 肾上腺素 多巴胺 褪黑素 皮质醇 甲状腺素 雌激素 睾酮 "
                "肝酶 白细胞 血糖 钙离子 维生素 叶酸 铁蛋白 组胺 前列腺素 胶原蛋白 血清素"),
    "c": _words("雷诺病 偏头痛 关节炎 痛风 哮喘 抑郁症 失眠症 骨质疏松 贫血 银屑病 湿疹 青光眼"),
    "ab": ["{a}能够降低{b}。", "{a}可以提高{b}{ctx}。", "{a}抑制{b}{ctx}。", "长期服用{a}会增加{b}。"],
    "bc": ["{c}患者的{b}明显升高。", "{b}异常会加重{c}。", "{b}在{c}中大量积累。", "{b}不足与{c}有关。"],
    "ctx": ["", "", "在小鼠体内", "在肝脏中"],
    "filler": ["春季北方降雨增多。", "图书馆周末开放。", "小麦产量取决于土壤湿度。", "交响乐团排练新曲目。",
               "冰川在夏季退缩。", "博物馆收藏了一座铜像。", "铁路沿线修建了新车站。", "渔民清晨出海捕鱼。"],
}


def _english_names(rng: random.Random, n: int) -> list[str]:
    names = set()
    while len(names) < n:
        names.add("".join(rng.sample(_SYLLABLES, 3)))
    return sorted(names)


def planted(lang: str, n: int, seed: int) -> tuple[list[dict], set[frozenset[str]], list[tuple[str, str]]]:
    """(documents, every stated pair as term keys, the hidden (A, C) pairs)."""
    rng = random.Random(seed)
    if lang == "en":
        words = _english_names(rng, 4 * n + 10)
        a = [f"{w} {rng.choice(EN['a_head'])}" for w in words[:n]]
        b = [f"{w} {rng.choice(EN['b_head'])}" for w in words[n:3 * n]]
        c = [f"{w} {rng.choice(EN['c_head'])}" for w in words[3 * n:4 * n]]
        d = [f"{w} {rng.choice(EN['b_head'])}" for w in words[4 * n:]]
        t = EN
    else:
        n = min(n, len(ZH["a"]), len(ZH["c"]), len(ZH["b"]) // 2)
        a, c = ZH["a"][:n], ZH["c"][:n]
        b, d = ZH["b"][:2 * n], ZH["b"][2 * n:]
        t = ZH
    docs, gold, hidden = [], set(), []

    def doc(kind: str, i: int, sentences: list[str]) -> None:
        rng.shuffle(sentences)
        joiner = " " if lang == "en" else ""
        docs.append({"id": f"{lang}-{kind}{i}-{len(docs)}", "text": joiner.join(sentences)})

    def say(template: str, **terms: str) -> str:
        text = template.format(ctx=rng.choice(t["ctx"]), **terms)
        return text[0].upper() + text[1:]

    for i in range(n):
        b1, b2 = b[2 * i], b[2 * i + 1]
        hidden.append((a[i], c[i]))
        for bi in (b1, b2):
            gold.add(frozenset((term_key(a[i]), term_key(bi))))
            gold.add(frozenset((term_key(bi), term_key(c[i]))))
            for _ in range(2):  # each link stated in two documents, each with filler around it
                doc("ab", i, [say(rng.choice(t["ab"]), a=a[i], b=bi), *rng.sample(t["filler"], 2)])
                doc("bc", i, [say(rng.choice(t["bc"]), b=bi, c=c[i]), *rng.sample(t["filler"], 2)])
    for i in range(len(d) - 1):  # distractors: a chain of stated relations among terms planted nowhere else
        gold.add(frozenset((term_key(d[i]), term_key(d[i + 1]))))
        doc("d", i, [say(rng.choice(t["ab"]), a=d[i], b=d[i + 1]), *rng.sample(t["filler"], 2)])
    for i in range(n):
        doc("f", i, rng.sample(t["filler"], 4))
    rng.shuffle(docs)
    return docs, gold, hidden


def evaluate_planted(lang: str, n: int, seed: int, work: Path) -> dict:
    docs, gold, hidden = planted(lang, n, seed)
    corpus = work / f"planted-{lang}.jsonl"
    corpus.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs), encoding="utf-8")
    out = work / f"planted-{lang}.db"
    build([corpus], out, CooccurrenceExtractor())
    with Graph.open(out) as g:
        keys = {t.id: t for t in g.iter_terms()}
        total = g.sentence_count
        predicted = {frozenset((keys[a].key, keys[b].key)) for a, b, count, _ in g.iter_edges()
                     if weight(count, keys[a].sentences, keys[b].sentences, total) > 0}
        hits, ranks = 0, []
        for a, c in hidden:
            top = [term_key(r["term"]) for r in discover(g, a, limit=5)]
            hits += term_key(c) in top
            ranks.append(top.index(term_key(c)) + 1 if term_key(c) in top else None)
    correct = len(predicted & gold)
    vocabulary = set().union(*gold)
    between = {p for p in predicted if p <= vocabulary}  # both ends planted or distractor terms
    return {"lang": lang, "documents": len(docs), "hidden": len(hidden), "gold": len(gold),
            "predicted": len(predicted), "precision": correct / max(len(predicted), 1),
            "precision_terms": len(between & gold) / max(len(between), 1),
            "recall": correct / len(gold), "recall@5": hits / len(hidden),
            "rank1": sum(r == 1 for r in ranks) / len(hidden)}


def swanson(work: Path) -> tuple[int | None, list[str]]:
    out = work / "swanson.db"
    build([SWANSON], out, CooccurrenceExtractor())
    with Graph.open(out) as g:
        top = [r["term"] for r in discover(g, "fish oil", limit=10)]
    rank = next((i for i, t in enumerate(top, 1) if "raynaud" in t.lower()), None)
    return rank, top


# ---- build speed and memory: a child process, so its peak RSS is the build's alone -----------------------------

# peak RSS from VmHWM: Linux's ru_maxrss carries over the parent's peak through fork and exec
_CHILD = """
import json, re, sys, time
from pathlib import Path
from seekmoe.graph.build import build
from seekmoe.graph.extract import CooccurrenceExtractor
start = time.perf_counter()
r = build(sys.argv[2:], sys.argv[1], CooccurrenceExtractor())
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"seconds": time.perf_counter() - start, "documents": r.added, "bytes": r.bytes,
                  "sentences": r.sentences, "graph": r.graph, "peak_mb": peak / 1024}))
"""


def speed(docs: list[Path], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(out), *map(str, docs)], capture_output=True,
                          text=True, env=env, check=True)
    result = json.loads(done.stdout)
    result["graph_mb"] = out.stat().st_size / 1e6
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", default=str(ROOT / "data" / "corpus" / "python_docs"),
                   help="the corpus to time the build on (default data/corpus/python_docs)")
    p.add_argument("--hidden", type=int, default=30, help="hidden (A, C) pairs planted in the English corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the planted corpora")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("planted relations (co-occurrence extractor)")
        print("(precision, all: over every edge; planted terms: over edges whose both ends were planted, so "
              "edges to context words such as 'mice' do not count)")
        print(f"{'lang':<5}{'docs':>6}{'hidden':>8}{'stated':>8}{'edges':>8}{'precision, all':>16}"
              f"{'planted terms':>15}{'recall':>8}{'recall@5':>10}{'rank 1':>8}")
        for lang in ("en", "zh"):
            r = evaluate_planted(lang, args.hidden, args.seed, work)
            print(f"{r['lang']:<5}{r['documents']:>6}{r['hidden']:>8}{r['gold']:>8}{r['predicted']:>8}"
                  f"{r['precision']:>16.3f}{r['precision_terms']:>15.3f}{r['recall']:>8.3f}{r['recall@5']:>10.3f}"
                  f"{r['rank1']:>8.3f}")
        rank, top = swanson(work)
        abstracts = len(SWANSON.read_text().splitlines())
        print(f"\nSwanson, discover 'fish oil' ({abstracts} abstracts we wrote): Raynaud's at rank {rank}; "
              f"top 5: {', '.join(top[:5])}")
        docs = Path(args.docs)
        if not docs.is_dir():
            print(f"\n{docs}: not here, build speed not measured")
            return
        files = sorted(f for f in docs.rglob("*") if f.is_file())
        half = files[: len(files) // 2]
        print(f"\nbuild on {docs.relative_to(ROOT) if docs.is_relative_to(ROOT) else docs} (one process, "
              f"co-occurrence extractor)")
        print(f"{'corpus':<8}{'docs':>7}{'MB':>7}{'sentences':>11}{'seconds':>9}{'docs/s':>8}{'MB/s':>7}"
              f"{'peak RSS MB':>13}{'terms':>9}{'edges':>10}{'graph MB':>10}")
        for name, part in (("half", half), ("all", files)):
            r = speed(part, work / f"speed-{name}.db")
            mb = r["bytes"] / 1e6
            print(f"{name:<8}{r['documents']:>7}{mb:>7.1f}{r['sentences']:>11,}{r['seconds']:>9.1f}"
                  f"{r['documents'] / r['seconds']:>8.1f}{mb / r['seconds']:>7.2f}{r['peak_mb']:>13.0f}"
                  f"{r['graph']['terms']:>9,}{r['graph']['edges']:>10,}{r['graph_mb']:>10.1f}")
        with Graph.open(work / "speed-all.db") as g:
            t = time.perf_counter()
            found = discover(g, "list comprehension", limit=5, min_count=2)
            print(f"\ndiscover 'list comprehension' --min-count 2 on it, in {time.perf_counter() - t:.2f} s; "
                  f"{', '.join(r['term'] + ' (via ' + ', '.join(r['via'][:2]) + ')' for r in found)}")
    print(f"\nthis process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
