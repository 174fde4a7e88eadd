"""The chat page in headless Chromium (Debian's, driven by playwright): ask for the key, stream a reply, keep the
conversation, show tokens/s, and redraw the expert-load heatmap. Saves a screenshot to runs/screenshots/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from seekmoe.llm import LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

KEY = "sk-page"
CHROMIUM = os.environ.get("SEEKMOE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parent.parent / "runs" / "screenshots" / "chat_page.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium, or "
                                                          "scripts/setup.sh test); set SEEKMOE_CHROMIUM to another")

# every text change of the newest reply, recorded in the page as it happens
RECORD = """() => {
  window.lengths = [];
  window.states = [];
  new MutationObserver(() => {
    const replies = document.querySelectorAll(".msg.assistant");
    if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
  }).observe(document.getElementById("messages"), {childList: true, subtree: true, characterData: true});
  // every state the page passes through, however briefly: a short reply can come and go between two polls
  new MutationObserver(() => window.states.push(document.body.dataset.state))
    .observe(document.body, {attributes: true, attributeFilter: ["data-state"]});
}"""


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    folder = tiny_model_folder(tmp_path_factory.mktemp("page"))
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(folder)) as (url, _):
        yield url


def test_static_files_are_public_and_the_api_is_not(url):
    for path in ("/", "/static/chat.js", "/static/chat.css"):
        assert requests.get(url + path).status_code == 200, path
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):  # no way out of the folder
        r = requests.get(url + path)
        assert r.status_code in (401, 404) and "create_app" not in r.text, path
    assert requests.get(f"{url}/static/nothing.js").status_code == 404
    assert requests.get(f"{url}/v2/expert_load").status_code == 401
    load = requests.get(f"{url}/v2/expert_load", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [layer["layer"] for layer in load["layers"]] and all(len(la["counts"]) > 1 for la in load["layers"])


def test_chat_page_streams_a_reply_and_redraws_the_heatmap(url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("#key-form:not([hidden])", timeout=5000)  # 401: the page asks for the key
            page.fill("#key", KEY)
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('model').textContent !== '…'", timeout=5000)
            page.wait_for_function("document.querySelector('#heatmap').dataset.total === '0' && "
                                   "document.getElementById('load-total').textContent === '0'", timeout=5000)
            before = page.evaluate("document.getElementById('heatmap').toDataURL()")

            page.evaluate(RECORD)
            page.fill("#temperature", "1")
            page.fill("#max-tokens", "48")
            page.fill("#prompt", "Tell me about the sea.")
            page.press("#prompt", "Enter")
            page.wait_for_function("window.states.includes('generating') && document.body.dataset.state === 'idle'",
                                   timeout=15000)

            lengths = page.evaluate("window.lengths")
            reply = page.text_content(".msg.assistant")
            assert reply and not page.text_content("#error"), page.text_content("#error")
            grew = sorted({n for n in lengths if n > 0})
            # lengths in the page's own units (UTF-16: a character outside the BMP counts 2)
            final = page.evaluate("document.querySelector('.msg.assistant').textContent.length")
            assert len(grew) >= 3 and grew[-1] == final, lengths  # it came in pieces, growing
            assert "tokens/s" in page.text_content("#tps") and int(page.get_attribute("#tps", "data-tokens")) > 1
            page.wait_for_function("Number(document.querySelector('#heatmap').dataset.total) > 0", timeout=5000)
            assert page.evaluate("document.getElementById('heatmap').toDataURL()") != before

            total = int(page.get_attribute("#heatmap", "data-total"))
            page.fill("#prompt", "And then?")
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.msg').length === 4 && "
                                   "document.body.dataset.state === 'idle'", timeout=15000)
            roles = page.eval_on_selector_all(".msg", "els => els.map(e => e.className)")
            assert roles == ["msg user", "msg assistant", "msg user", "msg assistant"]
            page.wait_for_function(f"Number(document.querySelector('#heatmap').dataset.total) > {total}",
                                   timeout=5000)
            assert not errors, errors

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            print(f"screenshot: {SCREENSHOT}")
        finally:
            browser.close()
