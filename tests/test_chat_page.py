"""The chat page in headless Chromium (Debian's, driven by playwright): ask for the key, stream a reply, keep the
conversation, show tokens/s, and redraw the expert-load heatmap; render replies as sanitised Markdown, send the
system prompt, keep conversations across reloads, regenerate and edit; on a multimodal model, attach images and
audio (files or a fake microphone) as OpenAI content parts, and read replies aloud. No request leaves the server's
origin. Saves screenshots to runs/screenshots/."""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import struct
import time
import wave
from pathlib import Path

import pytest
import requests

from seekmoe.llm import LLM
from seekmoe.server.config import ServeConfig
from tests.conftest import running_server, tiny_model_folder, tiny_multimodal_folder

pytest_plugins = ["tests.grounded"]  # grounded_folder: the grounded model, trained once a session

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

KEY = "sk-page"
CHROMIUM = os.environ.get("SEEKMOE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parent.parent / "runs" / "screenshots" / "chat_page.png"
MM_SCREENSHOT = SCREENSHOT.with_name("chat_page_multimodal.png")
MD_SCREENSHOT = SCREENSHOT.with_name("chat_page_markdown.png")
# Waits that only catch a page that never gets there: chromium beside other busy processes can take seconds for a
# change it makes at once alone (UI_MS), and a reply streams at the speed of a shared CPU (REPLY_MS).
UI_MS = 30_000
REPLY_MS = 120_000

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
    for path in ("/", "/static/chat.js", "/static/chat.css", "/static/markdown.js", "/static/store.js",
                 "/static/vendor/marked.umd.js", "/static/vendor/purify.min.js"):
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
            page.wait_for_selector("#key-form:not([hidden])", timeout=UI_MS)  # 401: the page asks for the key
            page.fill("#key", KEY)
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('model').textContent !== '…'", timeout=UI_MS)
            page.wait_for_function("document.querySelector('#heatmap').dataset.total === '0' && "
                                   "document.getElementById('load-total').textContent === '0'", timeout=UI_MS)
            before = page.evaluate("document.getElementById('heatmap').toDataURL()")

            page.evaluate(RECORD)
            page.fill("#temperature", "1")
            page.fill("#max-tokens", "48")
            page.fill("#prompt", "Tell me about the sea.")
            page.press("#prompt", "Enter")
            page.wait_for_function("window.states.includes('generating') && document.body.dataset.state === 'idle'",
                                   timeout=REPLY_MS)

            lengths = page.evaluate("window.lengths")
            reply = page.text_content(".msg.assistant")
            assert reply and not page.text_content("#error"), page.text_content("#error")
            grew = sorted({n for n in lengths if n > 0})
            # lengths in the page's own units (UTF-16: a character outside the BMP counts 2)
            final = page.evaluate("document.querySelector('.msg.assistant').textContent.length")
            # it came in pieces, growing: at least one partial reply before the whole. More is not guaranteed, since
            # on a loaded machine the browser may read most of the stream's events at once (a CI run saw [0, 2, 118])
            assert len(grew) >= 2 and grew[-1] == final, lengths
            assert "tokens/s" in page.text_content("#tps") and int(page.get_attribute("#tps", "data-tokens")) > 1
            page.wait_for_function("Number(document.querySelector('#heatmap').dataset.total) > 0", timeout=UI_MS)
            assert page.evaluate("document.getElementById('heatmap').toDataURL()") != before

            total = int(page.get_attribute("#heatmap", "data-total"))
            page.fill("#prompt", "And then?")
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.msg').length === 4 && "
                                   "document.body.dataset.state === 'idle'", timeout=REPLY_MS)
            roles = page.eval_on_selector_all(".msg", "els => els.map(e => e.className)")
            assert roles == ["msg user", "msg assistant", "msg user", "msg assistant"]
            page.wait_for_function(f"Number(document.querySelector('#heatmap').dataset.total) > {total}",
                                   timeout=UI_MS)
            assert not errors, errors

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            print(f"screenshot: {SCREENSHOT}")
        finally:
            browser.close()


# ---- images, audio and speech, on a tiny multimodal model ---------------------------------------------------------

# a fake microphone (a beep) that needs no click to allow; sound plays without a gesture first (reading aloud)
MEDIA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              "--autoplay-policy=no-user-gesture-required"]
IDLE_AFTER = "n => document.querySelectorAll('.msg').length === n && document.body.dataset.state === 'idle'"


def png(size: int = 24) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([(8 * x % 256, 8 * y % 256, 128) for y in range(size) for x in range(size)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def mm_url(tmp_path_factory):
    folder = tiny_multimodal_folder(tmp_path_factory.mktemp("page-mm") / "m")
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(folder)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=MEDIA_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def chat(browser):
    """open(url) -> a page holding the key, and `sent`: the JSON body of every /v1/chat/completions request. After
    the test: no page error, and every request went to the page's own server (nothing from a CDN)."""
    context = browser.new_context(viewport={"width": 1200, "height": 760}, permissions=["microphone"])
    context.add_init_script(f"sessionStorage.setItem('seekmoe-key', '{KEY}')")
    sent: list[dict] = []
    errors: list[str] = []
    elsewhere: list[str] = []

    def open_page(url: str, init_script: str | None = None):
        page = context.new_page()
        if init_script:
            page.add_init_script(init_script)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
        page.on("request", lambda r: r.url.startswith((url + "/", "data:", "blob:")) or elsewhere.append(r.url))
        page.goto(url + "/")
        ready(page)
        return page

    yield open_page, sent
    context.close()
    assert not errors, errors
    assert not elsewhere, elsewhere


def ready(page) -> None:
    """Waits for the model's name (the key worked); short replies."""
    page.wait_for_function("document.getElementById('model').textContent !== '…'", timeout=UI_MS)
    page.fill("#max-tokens", "12")


def stored(page) -> dict:
    """The open conversation as the page keeps it in localStorage."""
    return page.evaluate("""() => {
      const s = JSON.parse(localStorage.getItem('seekmoe-chats'));
      return s.conversations.find((c) => c.id === s.current);
    }""")


def send(page, text: str, messages: int) -> str:
    """Sends the prompt (and the attachments); waits for `messages` messages and an idle page; returns the reply as
    the model wrote it (the page shows it rendered as Markdown)."""
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(IDLE_AFTER, arg=messages, timeout=REPLY_MS)
    assert not page.text_content("#error"), page.text_content("#error")
    return stored(page)["turns"][-1]["content"]


def test_an_image_goes_as_an_image_url_part_and_stays_in_the_history(mm_url, chat):
    open_page, sent = chat
    page = open_page(mm_url)
    data = png()
    page.set_input_files("#file", files=[{"name": "grid.png", "mimeType": "image/png", "buffer": data}])
    page.wait_for_function("document.querySelector('#attachments .chip img')?.naturalWidth === 24", timeout=UI_MS)

    page.evaluate(RECORD)
    reply = send(page, "What is in the picture?", 2)
    assert reply and page.evaluate("window.states").count("generating") == 1
    assert len({n for n in page.evaluate("window.lengths") if n > 0}) >= 2  # streamed, in pieces
    parts = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(data)}"}},
             {"type": "text", "text": "What is in the picture?"}]
    assert sent[-1]["messages"] == [{"role": "user", "content": parts}]
    assert "temperature" not in sent[-1]  # the field left empty: the model's default
    assert page.locator("#attachments .chip").count() == 0  # sent: the composer is empty again
    assert page.eval_on_selector(".msg.user .media img", "img => img.naturalWidth") == 24
    assert page.text_content(".msg.user") == "What is in the picture?"

    second = send(page, "And the colours?", 4)
    assert sent[-1]["messages"] == [{"role": "user", "content": parts}, {"role": "assistant", "content": reply},
                                    {"role": "user", "content": "And the colours?"}]
    assert second and page.locator(".msg.user .media img").count() == 1
    page.set_input_files("#file", files=[{"name": "next.png", "mimeType": "image/png", "buffer": png(40)},
                                         {"name": "tone.wav", "mimeType": "audio/wav", "buffer": wav_bytes()}])
    page.wait_for_function("document.querySelectorAll('#attachments .chip').length === 2", timeout=UI_MS)
    MM_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(MM_SCREENSHOT), full_page=True)
    print(f"screenshot: {MM_SCREENSHOT}")


def test_a_wav_file_goes_as_an_input_audio_part_even_with_no_text(mm_url, chat):
    open_page, sent = chat
    page = open_page(mm_url)
    data = wav_bytes()
    page.set_input_files("#file", files=[{"name": "tone.wav", "mimeType": "audio/wav", "buffer": data}])
    page.wait_for_selector("#attachments .chip audio[controls]", timeout=UI_MS)

    reply = send(page, "", 2)  # media only
    part = {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}
    assert sent[-1]["messages"] == [{"role": "user", "content": [part]}]
    assert page.locator(".msg.user .media audio[controls]").count() == 1
    send(page, "Again?", 4)
    assert sent[-1]["messages"][:2] == [{"role": "user", "content": [part]}, {"role": "assistant", "content": reply}]


def test_wrong_files_are_refused_before_anything_is_sent(mm_url, chat, tmp_path):
    open_page, sent = chat
    page = open_page(mm_url)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "big.png").write_bytes(png() + bytes(10 * 2**20))  # over 10 MiB; a path: no copy through the driver
    page.set_input_files("#file", files=[tmp_path / "notes.txt", tmp_path / "big.png"])
    page.wait_for_function("document.getElementById('error').textContent !== ''", timeout=UI_MS)
    error = page.text_content("#error")
    assert "notes.txt: only PNG, JPEG or GIF images and WAV or FLAC audio" in error, error
    assert "big.png is 10.0 MiB; files up to 10 MiB" in error, error
    assert page.locator("#attachments .chip").count() == 0

    # an attachment can be removed before sending
    page.set_input_files("#file", files=[{"name": "grid.png", "mimeType": "image/png", "buffer": png()}])
    page.wait_for_selector("#attachments .chip", timeout=UI_MS)
    assert page.text_content("#error") == ""
    page.click("#attachments .chip button")
    assert page.locator("#attachments .chip").count() == 0
    page.click("#send")  # nothing to send
    page.wait_for_timeout(200)
    assert sent == [] and page.locator(".msg").count() == 0

    # no microphone API (http on another host than localhost): the button says why it does nothing
    page = open_page(mm_url, "delete Navigator.prototype.mediaDevices")
    assert page.is_disabled("#record") and "secure page" in page.get_attribute("#record", "title")


def test_a_recording_goes_as_a_16_bit_mono_wav(mm_url, chat):
    open_page, sent = chat
    page = open_page(mm_url)
    start = time.monotonic()
    page.click("#record")
    page.wait_for_function("document.getElementById('rec-time').textContent === '0:01'", timeout=UI_MS)
    page.wait_for_timeout(200)
    page.click("#record")
    between_clicks = time.monotonic() - start  # 1.2 s alone, more where chromium waits for a CPU
    page.wait_for_selector("#attachments .chip audio", timeout=UI_MS)
    assert page.text_content("#rec-time") == "" and not page.text_content("#error")

    send(page, "What did I say?", 2)
    audio, text = sent[-1]["messages"][0]["content"]
    assert audio["type"] == "input_audio" and audio["input_audio"]["format"] == "wav"
    assert text == {"type": "text", "text": "What did I say?"}
    data = base64.b64decode(audio["input_audio"]["data"])
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        print(f"recorded {w.getnframes() / w.getframerate():.2f} s at {w.getframerate()} Hz")
        # at most the time between the clicks, however long chromium took (a wrong rate in the header puts the
        # length off by the ratio of two sample rates)
        assert 0.5 < w.getnframes() / w.getframerate() < between_clicks + 0.5, (w.getnframes(), w.getframerate())
        samples = w.readframes(w.getnframes())
    assert any(samples), "the fake microphone's beep came out silent"


def test_a_reply_is_read_aloud(mm_url, chat):
    open_page, _ = chat
    page = open_page(mm_url)
    send(page, "Hello", 2)
    reply = page.locator(".msg.assistant").last.text_content()  # what is read: the text, not the Markdown
    speech = "**/v1/audio/speech"
    with page.expect_response(speech, timeout=REPLY_MS) as answer:
        page.click(".speak")
    res = answer.value
    if shutil.which("espeak-ng"):
        assert res.status == 200 and res.headers["content-type"] == "audio/wav"
        assert res.request.headers["authorization"] == f"Bearer {KEY}"
        assert res.request.post_data_json == {"model": "tts", "input": reply, "voice": "alloy",
                                              "response_format": "wav"}
        page.wait_for_function("['playing', 'done'].includes(document.querySelector('.speak').dataset.state)",
                               timeout=UI_MS)
        assert not page.text_content("#error")
    else:  # 503 speech_unavailable: said in #error
        assert res.status == 503
        page.wait_for_function("document.getElementById('error').textContent.includes('espeak-ng')", timeout=UI_MS)
        return

    page.check("#autoread")  # the next reply is read without a click
    with page.expect_response(speech, timeout=REPLY_MS) as answer:
        send(page, "Again", 4)
    second = page.locator(".msg.assistant").last.text_content()
    assert answer.value.status == 200 and answer.value.request.post_data_json["input"] == second


def test_the_servers_word_on_bad_media_is_shown_and_the_attachment_kept(url, mm_url, chat):
    open_page, sent = chat
    corrupt = b"\x89PNG\r\n\x1a\n" + bytes(92)  # a PNG's signature, then nothing a decoder can read
    for server, data in ((mm_url, corrupt), (url, png())):  # the tiny text model reads no images at all
        page = open_page(server)
        page.set_input_files("#file", files=[{"name": "bad.png", "mimeType": "image/png", "buffer": data}])
        page.wait_for_selector("#attachments .chip", timeout=UI_MS)
        page.fill("#prompt", "Look")
        page.click("#send")
        page.wait_for_function("document.getElementById('error').textContent !== ''", timeout=REPLY_MS)
        expected = requests.post(f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                 json=sent[-1])
        assert expected.status_code == 400
        assert page.text_content("#error") == expected.json()["error"]["message"]
        # refused: not in the conversation; the message and its attachment are back in the composer, to remove
        assert page.locator(".msg").count() == 0 and page.input_value("#prompt") == "Look"
        assert page.locator("#attachments .chip").count() == 1
        page.click("#attachments .chip button")
        send(page, "Look", 2)
        assert sent[-1]["messages"] == [{"role": "user", "content": "Look"}]
    assert "reads text only" in expected.json()["error"]["message"]


# ---- Markdown, the system prompt, conversations kept across reloads, regenerate and edit --------------------------

MARKDOWN = "Some **bold** words and `code`:\n\n```python\nprint('hi')\n```\n\n- one\n- two\n"
# model output is untrusted: none of this may run, fetch anything or leave an event handler in the page
HOSTILE = ("<img src=x onerror=\"alert('onerror')\"> [click](javascript:alert('link')) "
           "![tracker](http://tracker.invalid/pixel.png) <script>alert('script')</script> **still bold**")
SEED = """([markdown, hostile]) => localStorage.setItem('seekmoe-chats', JSON.stringify({current: 'c1', conversations: [
  {id: 'c1', system: '', updated: 1, turns: [
    {role: 'user', content: 'Show me **Markdown**'}, {role: 'assistant', content: markdown},
    {role: 'user', content: 'And this?'}, {role: 'assistant', content: hostile}]}]}))"""


def reload(page, messages: int) -> None:
    page.reload()
    ready(page)
    page.wait_for_function("n => document.querySelectorAll('.msg').length === n", arg=messages, timeout=UI_MS)


def classes(page) -> list[str]:
    return page.eval_on_selector_all(".msg", "els => els.map(e => e.className)")


def test_replies_render_as_markdown_and_nothing_in_them_runs(url, chat):
    open_page, _ = chat
    page = open_page(url)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.evaluate(SEED, [MARKDOWN, HOSTILE])  # a conversation as the page would have kept it: the renderer's input
    reload(page, 4)

    reply = page.locator(".msg.assistant").first
    assert reply.locator("strong").text_content() == "bold"
    assert reply.locator(":scope > p code").text_content() == "code"
    assert reply.locator("pre code").text_content() == "print('hi')\n"
    assert reply.locator("ul li").all_text_contents() == ["one", "two"]
    assert "monospace" in page.eval_on_selector(".msg.assistant pre code", "e => getComputedStyle(e).fontFamily")
    assert page.locator(".msg.user").first.text_content() == "Show me **Markdown**"  # the user's text stays text
    assert page.locator(".msg.user strong").count() == 0

    hostile = page.locator(".msg.assistant").last
    assert hostile.locator("strong").text_content() == "still bold"
    assert "<img src=x onerror=" in hostile.text_content()  # raw HTML shows as text
    assert page.locator("#messages img, #messages script, #messages [onerror]").count() == 0
    links = hostile.locator("a").evaluate_all("els => els.map(a => [a.textContent, a.getAttribute('href')])")
    assert ["tracker", "http://tracker.invalid/pixel.png"] in links  # an image is a link: nothing is fetched
    assert not any((href or "").lower().startswith("javascript") for _, href in links), links
    hostile.get_by_text("click", exact=True).click()
    page.wait_for_timeout(300)
    assert not dialogs, dialogs
    page.click("#settings summary")
    page.fill("#system", "Answer in Markdown.")
    MD_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(MD_SCREENSHOT), full_page=True)
    print(f"screenshot: {MD_SCREENSHOT}")


def test_the_system_prompt_is_sent_and_kept_across_a_reload(url, chat):
    open_page, sent = chat
    page = open_page(url)
    page.click("#settings summary")
    page.fill("#system", "Answer like a pirate.")
    system = {"role": "system", "content": "Answer like a pirate."}
    first = send(page, "Hello", 2)
    assert sent[-1]["messages"] == [system, {"role": "user", "content": "Hello"}]
    second = send(page, "More", 4)
    history = [system, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "More"}]
    assert sent[-1]["messages"] == history
    streamed = page.locator(".msg.assistant").last.inner_html()

    reload(page, 4)
    assert classes(page) == ["msg user", "msg assistant"] * 2
    assert page.is_visible("#system") and page.input_value("#system") == "Answer like a pirate."
    assert page.locator(".msg.assistant").last.inner_html() == streamed  # drawn from storage as it was streamed
    send(page, "Go on", 6)  # the conversation goes on where it was
    assert sent[-1]["messages"] == [*history, {"role": "assistant", "content": second},
                                    {"role": "user", "content": "Go on"}]

    # a new chat keeps the system prompt and starts empty; the old one is still in the list
    page.click("#clear")
    assert page.locator(".msg").count() == 0 and page.input_value("#system") == "Answer like a pirate."
    assert page.eval_on_selector_all("#conversations option", "os => os.map(o => o.textContent)") == ["New chat",
                                                                                                      "Hello"]
    page.select_option("#conversations", label="Hello")
    assert page.locator(".msg").count() == 6
    page.click("#delete")
    assert page.locator(".msg").count() == 0 and stored(page)["turns"] == []
    reload(page, 0)
    assert page.eval_on_selector_all("#conversations option", "os => os.map(o => o.textContent)") == ["New chat"]


def test_regenerate_replaces_the_last_reply_and_edit_asks_again_from_there(url, chat):
    open_page, sent = chat
    page = open_page(url)
    first = send(page, "Hello", 2)
    send(page, "Tell me more", 4)
    # under the last reply only
    assert page.is_visible("#regenerate") and page.locator("#regenerate").count() == 1
    assert page.eval_on_selector("#messages", "m => m.lastElementChild.contains(document.getElementById('regenerate'))")

    page.evaluate(RECORD)
    asked = len(sent)
    page.click("#regenerate")
    page.wait_for_function("window.states.includes('generating') && document.body.dataset.state === 'idle'",
                           timeout=REPLY_MS)
    assert len(sent) == asked + 1 and page.locator(".msg").count() == 4  # one request more, the same messages
    assert sent[-1]["messages"] == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": first},
                                    {"role": "user", "content": "Tell me more"}]
    turns = stored(page)["turns"]
    assert len(turns) == 4 and turns[3]["role"] == "assistant" and turns[3]["content"]

    page.evaluate(RECORD)
    page.locator(".actions.user .edit").first.click()
    page.fill(".msg.user textarea", "Hi there")
    page.click(".msg.user .editing .save")
    page.wait_for_function("window.states.includes('generating') && document.body.dataset.state === 'idle'",
                           timeout=REPLY_MS)
    assert sent[-1]["messages"] == [{"role": "user", "content": "Hi there"}]  # the later turns are gone
    assert classes(page) == ["msg user", "msg assistant"] and page.text_content(".msg.user") == "Hi there"
    assert [t["role"] for t in stored(page)["turns"]] == ["user", "assistant"]
    assert not page.text_content("#error")


def test_media_too_large_for_the_browsers_storage_are_left_out_of_it(url, chat):
    open_page, sent = chat
    page = open_page(url)
    kept = page.evaluate("""async () => {
      const {newConversation, save} = await import('/static/store.js');
      const chat = newConversation();
      const image = {type: 'image_url', image_url: {url: 'data:image/png;base64,' + 'A'.repeat(16 * 2 ** 20)}};
      chat.turns.push({role: 'user', content: [image, {type: 'text', text: 'Look'}]},
                      {role: 'assistant', content: 'A picture.'});
      return save([chat], chat) && chat.turns[0].content.length;  // the page's own copy keeps the image
    }""")
    assert kept == 2
    assert stored(page)["turns"][0] == {"role": "user", "content": "Look", "dropped": 1}
    reload(page, 2)
    assert "1 attachment not kept" in page.text_content(".msg.user")
    send(page, "And now?", 4)
    assert sent[-1]["messages"][0] == {"role": "user", "content": "Look"}


# ---- annotated images: a reply that names regions of the picture ---------------------------------------------------

GROUNDED_SCREENSHOT = SCREENSHOT.with_name("chat_page_annotated.png")


@pytest.fixture(scope="module")
def grounded_url(grounded_folder):
    with running_server(ServeConfig(api_keys=(KEY,)), lambda: LLM(grounded_folder)) as (url, _):
        yield url


def test_a_reply_naming_a_region_shows_the_annotated_image_under_it(grounded_url, chat):
    from tests.grounded import ANSWER, PICTURE, QUESTION, check_annotated

    open_page, sent = chat
    page = open_page(grounded_url)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "80")
    page.set_input_files("#file", files=[{"name": "circuit.png", "mimeType": "image/png", "buffer": PICTURE}])
    page.wait_for_function("document.querySelector('#attachments .chip img')?.naturalWidth === 64", timeout=UI_MS)
    assert send(page, QUESTION, 2) == ANSWER
    assert sent[-1]["temperature"] == 0  # a temperature set on the page is sent

    shown = ".msg.assistant .annotated img"
    page.wait_for_function(f"document.querySelector('{shown}')?.naturalWidth > 0", timeout=UI_MS)
    assert max(page.eval_on_selector(shown, "img => [img.naturalWidth, img.naturalHeight]")) >= 448
    src = page.get_attribute(shown, "src")
    assert src.startswith("data:image/png;base64,")
    check_annotated(base64.b64decode(src.partition(",")[2]))
    # the region reads as its label, marked in its box's colour (the first of the palette), not as raw tags
    assert page.text_content(".msg.assistant mark.region") == "R1"
    assert page.eval_on_selector(".msg.assistant mark.region", "m => getComputedStyle(m).borderBottomColor") \
        == "rgb(230, 25, 75)"
    assert page.text_content(".msg.assistant").strip() == "It is here: R1"
    assert stored(page)["turns"][-1] == {"role": "assistant", "content": ANSWER, "images": [src]}
    GROUNDED_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(GROUNDED_SCREENSHOT), full_page=True)
    print(f"screenshot: {GROUNDED_SCREENSHOT}")

    reload(page, 2)  # kept with the conversation
    assert page.get_attribute(shown, "src") == src
    send(page, "Thanks", 4)  # the image is the page's: it does not go back to the model
    assert sent[-1]["messages"][1] == {"role": "assistant", "content": ANSWER}

    # too large for the browser's storage: left out of it, and the reply says so after a reload
    kept = page.evaluate("""async () => {
      const {newConversation, save} = await import('/static/store.js');
      const chat = newConversation();
      const image = 'data:image/png;base64,' + 'A'.repeat(16 * 2 ** 20);
      chat.turns.push({role: 'user', content: 'Where?'}, {role: 'assistant', content: 'here', images: [image]});
      return save([chat], chat) && chat.turns[1].images.length;
    }""")
    assert kept == 1 and stored(page)["turns"][1] == {"role": "assistant", "content": "here", "dropped": 1}
    reload(page, 2)
    assert "1 annotated image not kept" in page.text_content(".msg.assistant")
