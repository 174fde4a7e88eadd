"""The knowledge graph (issue 22): terms and relations from literature, stored with their sources, and the hidden
links open discovery reveals; `seekmoe graph build|neighbors|path|discover|export`. Tiny written corpora, seconds."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import networkx as nx
import pytest

from seekmoe.graph import GraphError
from seekmoe.graph.build import build
from seekmoe.graph.discover import discover, neighbors, path, weight
from seekmoe.graph.export import export, relation_type
from seekmoe.graph.extract import CooccurrenceExtractor, ModelExtractor, parse_triples
from seekmoe.graph.sentences import split_sentences
from seekmoe.graph.store import Graph
from seekmoe.graph.terms import find_terms, singular, term_key
from tests.conftest import assert_usage_error, run_cli

DATA = Path(__file__).parent / "data" / "graph"

# Unrelated documents, as any real corpus has: relatedness is measured against chance (NPMI), and in a corpus of
# six sentences every term is common
FILLER = ["Rainfall in the northern valley peaked in April.", "The old bridge was repainted by volunteers.",
          "Copper wire conducts electricity well.", "The library opens at nine on weekdays.",
          "Wheat harvests depend on soil moisture.", "The orchestra rehearsed the second symphony.",
          "Glaciers retreat when summers grow warmer.", "Chess clubs meet on Thursday evenings.",
          "Tidal energy is predictable but costly.", "The museum acquired a bronze statue."]

# A -> B in some documents, B -> C in others, A and C never together; "dietary tyrosine" hangs off one B only and
# the copper documents are a separate island
PLANTED_EN = {
    "a1.txt": "Zorvane extract raises kelmic acid in the liver. The effect lasted two weeks.",
    "a2.txt": "In cultured cells, zorvane extract blocks the tavron receptor.",
    "a3.txt": "Zorvane extract is a bitter resin. Zorvane extract also lowers kelmic acid in blood.",
    "c1.txt": "Kelmic acid accumulates in prelosis syndrome. Kelmic acid is made from dietary tyrosine.",
    "c2.txt": "The tavron receptor is overactive in prelosis syndrome.",
    "c3.txt": "Prelosis syndrome begins in childhood. Tavron receptor antagonists ease prelosis syndrome.",
    "x1.txt": "Mirelda root lowers serum copper. Serum copper rises in winter.",
    "x2.txt": " ".join(FILLER),
}
PLANTED_ZH = [
    {"id": "zh-a1", "text": "鱼油降低血液黏度。长期服用鱼油的人群血液黏度较低。"},
    {"id": "zh-a2", "text": "鱼油抑制血小板聚集。"},
    {"id": "zh-c1", "text": "雷诺病患者的血液黏度升高。血液黏度升高加重雷诺病的症状。"},
    {"id": "zh-c2", "text": "雷诺病与血小板聚集增强有关。"},
    {"id": "zh-x1", "text": "阿司匹林用于预防中风。胰岛素治疗糖尿病。"},
    {"id": "zh-x2", "text": "春季北方降雨增多。图书馆周末开放。小麦产量取决于土壤湿度。交响乐团排练新曲目。"
                            "冰川在夏季退缩。"},
]


def write_planted(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in PLANTED_EN.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def built(tmp_path: Path, *docs, extractor=None) -> Graph:
    out = tmp_path / "g.db"
    build([str(d) for d in docs], out, extractor or CooccurrenceExtractor())
    return Graph.open(out)


# ---- sentences and terms ----------------------------------------------------------------------------------------

def test_sentences_english_and_chinese_with_abbreviations_and_code_left_out():
    text = ("Title\n=====\n\nFish oil lowers blood viscosity (Smith et al. 1990). It works, e.g. in men. Use "
            "os.path.join() on 3.5 paths!\n\n    code = 1\n    more = 2\n\n>>> print(1)\n\n"
            "鱼油降低血液黏度。血液黏度升高与雷诺病有关！")
    assert split_sentences(text) == [
        "Title", "Fish oil lowers blood viscosity (Smith et al. 1990).", "It works, e.g. in men.",
        "Use os.path.join() on 3.5 paths!", "鱼油降低血液黏度。", "血液黏度升高与雷诺病有关！"]
    assert all(len(s) <= 600 for s in split_sentences("word " * 1000))
    assert split_sentences("") == [] and split_sentences("....\n\n---") == []


def test_english_terms_multiword_nested_names_quantities_and_relations():
    found = find_terms("Dietary fish oils reduce blood viscosity at 3 g per day in the Python Software Foundation.")
    keys = {t.key: t.kind for t in found.terms}
    assert keys == {"dietary fish oil": "term", "fish oil": "term", "blood viscosity": "term", "3 g": "quantity",
                    "python software foundation": "name"}
    fish, blood = (next(t for t in found.terms if t.key == k) for k in ("fish oil", "blood viscosity"))
    assert found.relation(fish, blood) == "reduce"  # the verb between neighbours is their relation
    assert singular("viscosities") == "viscosity" and singular("analysis") == "analysis"
    assert term_key("Platelets") == "platelet" == term_key("  platelet ")


def test_chinese_terms_through_jieba():
    found = find_terms("雷诺病患者的血液黏度升高，每天服用3克鱼油。")
    keys = {t.key: t.kind for t in found.terms}
    assert {"雷诺病", "血液黏度", "鱼油"} <= set(keys)
    assert keys["3克"] == "quantity"
    found = find_terms("鱼油降低血液黏度。")
    assert found.relation(*found.terms) == "降低"


# ---- build, discovery, provenance --------------------------------------------------------------------------------

def test_planted_abc_found_in_english(tmp_path):
    with built(tmp_path, write_planted(tmp_path / "docs")) as g:
        found = discover(g, "zorvane extract")
        assert found[0]["term"] == "prelosis syndrome"
        assert set(found[0]["via"][:2]) == {"kelmic acid", "tavron receptor"}
        assert len(found[0]["via"]) == 2 > len(found[1]["via"])  # two links beat one ("dietary tyrosine")
        names = [r["term"] for r in found]
        assert "dietary tyrosine" in names
        assert not {"serum copper", "Mirelda root"} & set(names)  # no link to the island
        assert not {"kelmic acid", "tavron receptor"} & set(names)  # already known with A: not hidden
        docs = {e["doc"] for e in found[0]["evidence"]}
        assert {Path(d).name for d in docs} >= {"a1.txt", "c1.txt"}  # A-B from one paper, B-C from another
        for e in found[0]["evidence"]:
            assert set(e) >= {"doc", "sentence", "link"} and e["sentence"] in Path(e["doc"]).read_text()


def test_planted_abc_found_in_chinese(tmp_path):
    docs = tmp_path / "zh.jsonl"
    docs.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in PLANTED_ZH), encoding="utf-8")
    with built(tmp_path, docs) as g:
        found = discover(g, "鱼油")
        assert "雷诺病" in [r["term"] for r in found[:3]]
        top = next(r for r in found if r["term"] == "雷诺病")
        assert "血液黏度" in top["via"]
        assert {e["doc"] for e in top["evidence"]} >= {"zh-a1", "zh-c1"}


def test_swanson_fish_oil_finds_raynauds_in_its_top_five(tmp_path):
    with built(tmp_path, DATA / "swanson.jsonl") as g:
        top = [r["term"] for r in discover(g, "fish oil", limit=5)]
        assert "Raynaud's disease" in top, top
        # the point of the method: no abstract names both
        assert not any("fish oil" in line.lower() and "raynaud" in line.lower()
                       for line in (DATA / "swanson.jsonl").read_text().splitlines())


def test_neighbors_carry_their_sentences_and_path_links_a_to_c(tmp_path):
    with built(tmp_path, write_planted(tmp_path / "docs")) as g:
        near = neighbors(g, "Kelmic acids")  # any case, plural
        assert {r["term"] for r in near} >= {"Zorvane extract", "prelosis syndrome", "dietary tyrosine"}
        raised = next(r for r in near if r["term"] == "Zorvane extract")
        first = raised["evidence"][0]
        assert Path(first["doc"]).name == "a1.txt"
        assert first["sentence"] == "Zorvane extract raises kelmic acid in the liver."
        assert (first["subject"], first["relation"], first["object"]) == ("Zorvane extract", "raises", "kelmic acid")
        hops = path(g, "zorvane extract", "prelosis syndrome")
        assert len(hops) == 2 and hops[0]["from"] == "Zorvane extract" and hops[-1]["to"] == "prelosis syndrome"
        assert hops[0]["to"] in ("kelmic acid", "tavron receptor") and hops[0]["evidence"]
        assert path(g, "zorvane extract", "serum copper") == []  # different islands


def test_incremental_build_adds_only_new_documents(tmp_path):
    docs = write_planted(tmp_path / "docs")
    out = tmp_path / "g.db"
    first = build([str(docs / "a1.txt"), str(docs / "c1.txt")], out, CooccurrenceExtractor())
    assert (first.added, first.skipped) == (2, 0)
    with Graph.open(out) as g:
        before = g.stats()
        assert neighbors(g, "kelmic acid")[0]["count"] == 1
    again = build([str(docs)], out, CooccurrenceExtractor(), batch=2)
    assert (again.documents, again.added, again.skipped) == (8, 6, 2)
    with Graph.open(out) as g:
        after = g.stats()
        assert after["documents"] == 8 and after["sentences"] > before["sentences"]
        zorvane = next(r for r in neighbors(g, "kelmic acid") if r["term"] == "Zorvane extract")
        assert zorvane["count"] == 2  # a1 and a3: counts add up across builds
    third = build([str(docs)], out, CooccurrenceExtractor())
    assert third.added == 0 and third.skipped == 8
    with Graph.open(out) as g:
        assert g.stats() == after  # nothing counted twice


def test_a_build_stopped_midway_keeps_what_it_added_and_a_rerun_finishes_it(tmp_path):
    docs = write_planted(tmp_path / "docs")
    out = tmp_path / "g.db"

    class Crashing(CooccurrenceExtractor):
        seen = 0

        def extract(self, sentence):
            self.seen += 1
            if "tavron" in sentence.lower():
                raise KeyboardInterrupt  # Ctrl-C in the middle of a document
            return super().extract(sentence)

    with pytest.raises(KeyboardInterrupt):
        build([str(docs)], out, Crashing(), batch=1)
    with Graph.open(out) as g:  # a consistent graph of the documents before the one that stopped it
        partial = g.stats()["documents"]
        assert 0 < partial < 8
        for table in ("documents", "sentences", "terms", "edges"):
            g.db.execute(f"SELECT count(*) FROM {table}").fetchone()
    report = build([str(docs)], out, CooccurrenceExtractor())
    assert (report.skipped, report.added) == (partial, 8 - partial)


def test_weight_is_npmi_damped_for_rare_pairs():
    assert weight(10, 10, 10, 10) == pytest.approx(10 / 11)  # always together
    assert weight(1, 1, 1, 1000) == pytest.approx(0.5)  # together once: NPMI 1, halved
    assert weight(1, 100, 100, 1000) < 0  # less often than chance
    assert weight(0, 5, 5, 100) == 0.0


# ---- export ------------------------------------------------------------------------------------------------------

def test_export_graphml_and_neo4j_csv_parse(tmp_path):
    with built(tmp_path, write_planted(tmp_path / "docs")) as g:
        stats = g.stats()
        export(g, "graphml", tmp_path / "g.graphml")
        export(g, "neo4j", tmp_path / "neo4j")
    read = nx.read_graphml(tmp_path / "g.graphml")
    assert (read.number_of_nodes(), read.number_of_edges()) == (stats["terms"], stats["edges"])
    labels = {d["label"] for _, d in read.nodes(data=True)}
    assert {"Zorvane extract", "kelmic acid"} <= labels
    with open(tmp_path / "neo4j" / "nodes.csv", newline="", encoding="utf-8") as f:
        nodes = list(csv.DictReader(f))
    with open(tmp_path / "neo4j" / "relationships.csv", newline="", encoding="utf-8") as f:
        rels = list(csv.DictReader(f))
    assert set(nodes[0]) >= {"id:ID", "name", ":LABEL"} and len(nodes) == stats["terms"]
    assert set(rels[0]) >= {":START_ID", ":END_ID", ":TYPE", "weight:float"} and len(rels) == stats["edges"]
    ids = {n["id:ID"] for n in nodes}
    assert all(r[":START_ID"] in ids and r[":END_ID"] in ids for r in rels)
    assert {r[":TYPE"] for r in rels} >= {"RAISES", "CO_OCCURS_WITH"}
    float(rels[0]["weight:float"])
    assert relation_type("is associated with") == "IS_ASSOCIATED_WITH" and relation_type("") == "CO_OCCURS_WITH"


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_bad_documents_are_clear_errors_and_leave_no_graph(tmp_path):
    out = tmp_path / "g.db"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "img.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "Fine."}\n{"text": 3}\n')
    for docs, needle in [([empty], "empty file"), ([binary], "binary file"), ([latin1], "not UTF-8"),
                         ([bad_jsonl], "bad.jsonl:2"), ([tmp_path / "nope"], "no such file or folder"),
                         ([], "no documents given")]:
        with pytest.raises(GraphError, match=needle):
            build([str(d) for d in docs], out, CooccurrenceExtractor())
        assert not out.exists()
    folder = tmp_path / "only_empty"
    folder.mkdir()
    (folder / "a.txt").write_text("  \n")
    with pytest.raises(GraphError, match="no documents with text"):
        build([str(folder)], out, CooccurrenceExtractor())
    assert not out.exists()


def test_a_file_that_is_not_a_graph_is_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just some notes\n" * 100)
    plain_db = tmp_path / "other.db"
    sqlite3.connect(plain_db).execute("CREATE TABLE t (x)").connection.commit()
    docs = write_planted(tmp_path / "docs")
    good = tmp_path / "g.db"
    build([str(docs)], good, CooccurrenceExtractor())
    torn = tmp_path / "torn.db"
    torn.write_bytes(good.read_bytes()[:4096] + b"\xff" * 4096)
    for bad, needle in [(text, "no SQLite database"), (plain_db, "no seekmoe graph"), (torn, "graph"),
                        (tmp_path / "missing.db", "no such graph file"), (tmp_path, "not a file")]:
        with pytest.raises(GraphError, match=needle):
            Graph.open(bad)
    with pytest.raises(GraphError, match="no seekmoe graph"):  # a build must not write into someone's database
        build([str(docs)], plain_db, CooccurrenceExtractor())
    with pytest.raises(GraphError, match="built with the cooccurrence extractor"):
        build([str(docs)], good, ModelExtractor(lambda prompt: '{"triples": []}'))


def test_a_missing_term_names_the_closest(tmp_path):
    with built(tmp_path, write_planted(tmp_path / "docs")) as g:
        with pytest.raises(GraphError, match=r"no term 'kelmik acid'.*did you mean 'kelmic acid'"):
            neighbors(g, "kelmik acid")
        with pytest.raises(GraphError, match="empty"):
            discover(g, "  ")
        with pytest.raises(GraphError, match="limit must be"):
            discover(g, "kelmic acid", limit=0)
        with pytest.raises(GraphError, match="same term"):
            path(g, "kelmic acid", "Kelmic acids")


# ---- the model extractor -----------------------------------------------------------------------------------------

SENTENCE = "Zorvane extract raises kelmic acid in the liver."


def test_model_triples_are_validated_against_the_sentence():
    ok = json.dumps({"triples": [{"subject": "Zorvane extract", "relation": "raises", "object": "kelmic acid"}]})
    (t,), dropped = parse_triples(ok, SENTENCE)
    assert dropped == 0
    assert (t.subject.key, t.relation, t.object.key) == ("zorvane extract", "raises", "kelmic acid")
    # a bare list is accepted; an invented term is dropped, the grounded triple kept
    both = json.dumps([{"subject": "liver", "relation": "holds", "object": "kelmic acid"},
                       {"subject": "liver", "relation": "cures", "object": "cancer"}])
    triples, dropped = parse_triples(both, SENTENCE)
    assert [(t.subject.key, t.object.key) for t in triples] == [("liver", "kelmic acid")] and dropped == 1
    for reply, reason in [("not json", "not JSON"), ('{"triples": 3}', "not a list"),
                          ('{"triples": [], "extra": 1}', "wrong keys"),
                          ('{"triples": [{"subject": 1, "relation": "r", "object": "liver"}]}', "not a string"),
                          ('{"triples": [{"subject": "liver"}]}', "bad triple"),
                          ("[" * 100_000 + "]" * 100_000, "too long"),
                          ("[" * 5000 + "]" * 5000, "not JSON"),  # nesting past the recursion limit
                          (json.dumps([{"subject": "liver", "relation": "x", "object": "kelmic acid"}] * 9),
                           "too many triples"),
                          (json.dumps([{"subject": "liver", "relation": "a\x00b", "object": "kelmic acid"}]),
                           "bad relation")]:
        with pytest.raises(ValueError, match=reason):
            parse_triples(reply, SENTENCE)


def test_model_extractor_builds_a_graph_and_counts_refused_replies(tmp_path):
    docs = write_planted(tmp_path / "docs")
    replies = {
        # an injection in the data: the model is told to add a term that is in no sentence; it is dropped
        "Zorvane extract raises": '{"triples": [{"subject": "Zorvane extract", "relation": "raises", "object": '
                                  '"kelmic acid"}, {"subject": "Zorvane extract", "relation": "cures", "object": '
                                  '"everything; DROP TABLE terms"}]}',
        "tavron receptor is overactive": '{"triples": [{"subject": "tavron receptor", "relation": "is overactive '
                                         'in", "object": "prelosis syndrome"}]}',
        "Kelmic acid accumulates": '{"triples": [{"subject": "Kelmic acid", "relation": "accumulates in", '
                                   '"object": "prelosis syndrome"}]}',
        "blocks the tavron": '{"triples": [{"subject": "zorvane extract", "relation": "blocks", "object": '
                             '"tavron receptor"}]}',
    }
    prompts = []

    def complete(prompt: str) -> str:
        prompts.append(prompt)
        sentence = prompt.rsplit("Sentence: ", 1)[1]
        return next((r for k, r in replies.items() if k in sentence), "Sorry, I cannot help with that.")

    extractor = ModelExtractor(complete)
    report = build([str(docs)], tmp_path / "m.db", extractor)
    assert len(prompts) == report.sentences
    assert extractor.reasons == {"not JSON": report.sentences - len(replies), "triples not in the sentence": 1}
    with Graph.open(tmp_path / "m.db") as g:
        assert g.meta("extractor") == "model"
        with pytest.raises(GraphError, match="no term"):
            g.term("everything; DROP TABLE terms")
        found = discover(g, "zorvane extract")
        assert found[0]["term"] == "prelosis syndrome"
        relations = {e["relation"] for e in found[0]["evidence"]}
        assert {"raises", "accumulates in"} <= relations


# ---- the command line --------------------------------------------------------------------------------------------

def test_cli_build_neighbors_path_discover_export(tmp_path, capsys):
    docs = write_planted(tmp_path / "docs")
    out = str(tmp_path / "g.db")
    rc, text, err = run_cli(capsys, "graph", "build", str(docs), "--out", out, "-q")
    assert rc == 0 and "8 document(s) added" in text and err == ""
    rc, text, _ = run_cli(capsys, "graph", "build", str(docs), "--out", out, "-q", "--json")
    assert rc == 0 and json.loads(text)["skipped"] == 8
    rc, text, _ = run_cli(capsys, "graph", "discover", out, "zorvane extract", "--json")
    rows = json.loads(text)
    assert rc == 0 and rows[0]["term"] == "prelosis syndrome"
    assert {"term", "score", "via", "evidence"} <= set(rows[0])
    assert all({"doc", "sentence"} <= set(e) for e in rows[0]["evidence"])
    rc, text, _ = run_cli(capsys, "graph", "discover", out, "zorvane extract")
    assert rc == 0 and text.startswith(" 1. prelosis syndrome") and "a1.txt] Zorvane extract raises" in text
    rc, text, _ = run_cli(capsys, "graph", "neighbors", out, "tavron receptor", "--json", "--limit", "2")
    assert rc == 0 and len(json.loads(text)) == 2
    rc, text, _ = run_cli(capsys, "graph", "path", out, "zorvane extract", "prelosis syndrome")
    assert rc == 0 and text.startswith("Zorvane extract -> ")
    rc, text, err = run_cli(capsys, "graph", "path", out, "zorvane extract", "serum copper", "--json")
    assert rc == 1 and json.loads(text) == [] and "no path" in err
    rc, text, _ = run_cli(capsys, "graph", "export", out, "--format", "graphml", "--out", str(tmp_path / "x.graphml"))
    assert rc == 0 and nx.read_graphml(tmp_path / "x.graphml").number_of_nodes() > 0


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    docs = write_planted(tmp_path / "docs")
    out = str(tmp_path / "g.db")
    binary = tmp_path / "b.bin"
    binary.write_bytes(bytes(range(256)))
    rc, _, err = run_cli(capsys, "graph", "build", str(binary), "--out", out, "-q")
    assert_usage_error(rc, err, "b.bin", "binary")
    rc, _, err = run_cli(capsys, "graph", "build", str(tmp_path / "missing"), "--out", out, "-q")
    assert_usage_error(rc, err, "no such file or folder")
    rc, _, err = run_cli(capsys, "graph", "build", str(docs), "--out", str(tmp_path / "no" / "g.db"), "-q")
    assert_usage_error(rc, err, "no such folder")
    rc, _, err = run_cli(capsys, "graph", "build", str(docs), "--out", out, "--model", "m", "-q")
    assert_usage_error(rc, err, "--model is used only with --extractor model")
    rc, _, err = run_cli(capsys, "graph", "build", str(docs), "--out", out, "-q")
    assert rc == 0
    rc, _, err = run_cli(capsys, "graph", "discover", out, "nothing like it")
    assert_usage_error(rc, err, "no term 'nothing like it'")
    rc, _, err = run_cli(capsys, "graph", "neighbors", str(binary), "x")
    assert_usage_error(rc, err, "not a seekmoe graph")
    rc, _, err = run_cli(capsys, "graph", "neighbors", str(tmp_path / "none.db"), "x")
    assert_usage_error(rc, err, "no such graph file")
    rc, _, err = run_cli(capsys, "graph", "export", out, "--format", "neo4j", "--out", str(docs / "a1.txt"))
    assert_usage_error(rc, err, "is a file")
    rc, _, err = run_cli(capsys, "graph", "discover", out, "kelmic acid", "--limit", "0")
    assert rc == 2 and "must be a positive integer" in err


def test_cli_model_extractor_takes_an_injected_model(tmp_path, capsys):
    from seekmoe.cli.graph import cmd_build
    from seekmoe.cli.main import build_parser

    docs = write_planted(tmp_path / "docs")
    args = build_parser().parse_args(["graph", "build", str(docs / "a1.txt"), "--out", str(tmp_path / "m.db"),
                                      "--extractor", "model", "-q"])
    asked = []

    def complete(model):
        asked.append(model)
        return lambda prompt: ('{"triples": [{"subject": "Zorvane extract", "relation": "raises", '
                               '"object": "kelmic acid"}]}')

    assert cmd_build(args, complete) == 0
    out = capsys.readouterr().out
    assert asked == [None] and "1 document(s) added" in out
    assert "model replies refused: 1 triples not in the sentence" in out
