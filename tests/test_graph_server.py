"""The knowledge graph over HTTP (issue 22): `seekmoe serve --graph GRAPH` answers /v2/graph/neighbors, /path and
/discover with the sentences behind each link, behind the API keys, while the model loads; and the /graph page
draws a neighbourhood and a discovery in headless Chromium with the vendored Cytoscape.js, nothing from a CDN."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from seekmoe.cli.main import build_parser
from seekmoe.cli.serve import config_from_args
from seekmoe.errors import CLIError
from seekmoe.graph.build import build
from seekmoe.graph.extract import CooccurrenceExtractor
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server

KEY = "sk-graph"
AUTH = {"Authorization": f"Bearer {KEY}"}
SWANSON = Path(__file__).parent / "data" / "graph" / "swanson.jsonl"
CHROMIUM = os.environ.get("SEEKMOE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parent.parent / "runs" / "screenshots" / "graph_page.png"
UI_MS = 30_000


def no_model():
    raise RuntimeError("this test serves a graph, no model")


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("graph") / "swanson.db"
    build([SWANSON], out, CooccurrenceExtractor())
    return out


@pytest.fixture(scope="module")
def url(graph_file):
    # the model never loads: the graph routes answer without it
    with running_server(ServeConfig(api_keys=(KEY,), graph=str(graph_file)), no_model, wait=False) as (url, _):
        yield url


def test_graph_routes_answer_with_sources_behind_the_key(url):
    assert requests.get(f"{url}/v2/graph/discover", params={"term": "fish oil"}).status_code == 401
    info = requests.get(f"{url}/v2/graph", headers=AUTH).json()
    assert info["documents"] == 22 and info["terms"] > 50 and info["extractor"] == "cooccurrence"

    found = requests.get(f"{url}/v2/graph/discover", params={"term": "Fish oil", "limit": 5}, headers=AUTH).json()
    assert found["object"] == "list" and found["term"] == "Fish oil"
    top = found["data"][0]
    assert top["term"] == "Raynaud's disease" and "blood viscosity" in top["via"]
    assert all({"doc", "sentence", "link"} <= set(e) for e in top["evidence"])
    assert any(e["doc"].startswith("fo-") for e in top["evidence"])
    assert any(e["doc"].startswith("rd-") for e in top["evidence"])

    near = requests.get(f"{url}/v2/graph/neighbors", params={"term": "blood viscosity", "limit": 3},
                        headers=AUTH).json()
    assert len(near["data"]) == 3 and all(n["evidence"] for n in near["data"])

    hops = requests.get(f"{url}/v2/graph/path", params={"source": "fish oil", "target": "Raynaud's disease"},
                        headers=AUTH).json()["data"]
    assert hops[0]["from"] == "fish oil" and hops[-1]["to"] == "Raynaud's disease" and len(hops) == 2


def test_graph_routes_refuse_bad_input_clearly(url):
    r = requests.get(f"{url}/v2/graph/neighbors", params={"term": "fsh oil"}, headers=AUTH)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "term_not_found" and "did you mean 'fish oil'" in err["message"]
    for params in ({"term": "fish oil", "limit": 0}, {"term": ""}, {}, {"term": "fish oil", "limit": "many"}):
        r = requests.get(f"{url}/v2/graph/discover", params=params, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["message"], params
    r = requests.get(f"{url}/v2/graph/path", params={"source": "fish oil", "target": "Fish oils"}, headers=AUTH)
    assert r.status_code == 400 and "same term" in r.json()["error"]["message"]


def test_a_server_without_a_graph_says_so():
    with running_server(ServeConfig(), no_model, wait=False) as (url, _):
        r = requests.get(f"{url}/v2/graph/discover", params={"term": "x"})
        assert r.status_code == 404 and "--graph" in r.json()["error"]["message"]


def test_serve_refuses_a_file_that_is_not_a_graph(tmp_path, graph_file):
    text = tmp_path / "notes.txt"
    text.write_text("not a graph\n")
    for path, needle in ((text, "not a seekmoe graph"), (tmp_path / "none.db", "no such graph file")):
        with pytest.raises(CLIError, match=f"--graph: .*{needle}"):
            config_from_args(build_parser().parse_args(["serve", "--graph", str(path)]), environ={})
    config = config_from_args(build_parser().parse_args(["serve"]), environ={"SEEKMOE_GRAPH": str(graph_file)})
    assert config.graph == str(graph_file)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium, or "
                                              "scripts/setup.sh test); set SEEKMOE_CHROMIUM to another")
def test_graph_page_draws_a_discovery_and_a_neighbourhood(url):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            elsewhere: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: r.url.startswith((url + "/", "data:", "blob:")) or elsewhere.append(r.url))
            page.goto(url + "/graph")
            page.wait_for_selector("#key-form:not([hidden])", timeout=UI_MS)  # 401: the page asks for the key
            page.fill("#key", KEY)
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('stats').textContent.includes('22 documents')",
                                   timeout=UI_MS)

            page.fill("#term", "fish oil")
            page.click("#discover")
            page.wait_for_function("document.body.dataset.state === 'drawn'", timeout=UI_MS)
            first = page.text_content("#results .result h3")
            assert first == "1. Raynaud's disease", first
            assert "[fo-" in page.text_content("#results") and "[rd-" in page.text_content("#results")
            assert int(page.get_attribute("#cy", "data-nodes")) >= 6
            assert page.evaluate("document.querySelector('#cy canvas') !== null")  # Cytoscape drew
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

            page.fill("#term", "blood viscosity")
            page.click("#neighbors")
            page.wait_for_function("document.body.dataset.state === 'drawn' && "
                                   "document.querySelectorAll('#results .result').length > 3", timeout=UI_MS)
            edges = int(page.get_attribute("#cy", "data-edges"))
            assert edges == page.evaluate("document.querySelectorAll('#results .result').length")

            page.fill("#term", "no such thing")
            page.click("#discover")
            page.wait_for_function("document.body.dataset.state === 'error'", timeout=UI_MS)
            assert "no term 'no such thing'" in page.text_content("#error")
            assert not errors, errors
            assert not elsewhere, elsewhere
        finally:
            browser.close()


def test_the_graph_plugin_answers_what_links_two_terms_with_sources(graph_file, monkeypatch):
    from seekmoe.plugins import call, discover, openai_tool

    plugin = discover()["graph"]
    assert openai_tool(plugin)["function"]["parameters"]["required"] == ["operation", "term"]
    monkeypatch.setenv("SEEKMOE_GRAPH", str(graph_file))  # as `seekmoe serve --graph` hands it to the workers
    result = call(plugin, {"operation": "path", "term": "fish oil", "target": "Raynaud's disease"}, timeout=60)
    assert result.ok, result.content
    first, *rest = result.content.splitlines()
    assert first.startswith("fish oil -> ") and first.endswith(" -> Raynaud's disease")
    assert any("[fo-" in line for line in rest) and any("[rd-" in line for line in rest)
    result = call(plugin, '{"operation": "discover", "term": "fish oil", "limit": 2}', timeout=60)
    assert result.ok and "1. Raynaud's disease (via " in result.content
    result = call(plugin, {"operation": "neighbors", "term": "fsh oil"}, timeout=60)
    assert not result.ok and "no term 'fsh oil'" in result.content and "fish oil" in result.content
    result = call(plugin, {"operation": "path", "term": "fish oil"}, timeout=60)
    assert not result.ok and "needs a target" in result.content
    result = call(plugin, {"operation": "drop", "term": "x"}, timeout=60)
    assert not result.ok and "schema" in result.content
    monkeypatch.delenv("SEEKMOE_GRAPH")
    result = call(plugin, {"operation": "discover", "term": "fish oil"}, timeout=60)
    assert not result.ok and "without --graph" in result.content
