"""`seekmoe generate` and `seekmoe chat` on the bundled model, and chat's /image and /audio on a tiny multimodal one.

Loading the model takes seconds, so most tests share one LLM: `spy` makes the CLI's `LLM()` hand out a spy around
it (recording prompts, never closing it). A few tests load for real: a model path, and the errors.
"""

from __future__ import annotations

import base64
import io
import json

import pytest

from seekmoe.llm import DEFAULT_MODEL, LLM
from seekmoe.multimodal.media import MediaLimits
from tests.conftest import assert_usage_error, run_cli, tiny_model_folder, tiny_multimodal_folder
from tests.test_multimodal import png, wav


class Spy:
    """The shared LLM, recording the conversations and prompt ids the CLI sends; close() leaves it running."""

    def __init__(self, llm: LLM):
        self._llm = llm
        self.conversations: list[list[dict[str, str]]] = []
        self.prompts: list[list[int]] = []
        self.wrap = lambda req: req  # a test may replace what submit returns

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def chat_prompt(self, messages, *args):
        self.conversations.append([dict(m) for m in messages])
        return self._llm.chat_prompt(messages, *args)

    def submit(self, prompt_token_ids, params=None, **kwargs):
        self.prompts.append(list(prompt_token_ids))
        return self.wrap(self._llm.submit(prompt_token_ids, params, **kwargs))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def llm():
    with LLM() as model:
        yield model


def spy_on(llm: LLM, path: str | None, monkeypatch) -> Spy:
    """Make the CLI's LLM(path) hand out a Spy around `llm`."""
    spy = Spy(llm)

    def fake(model=None, dtype="float32", quantize=None, **kwargs):
        assert model == path and dtype == "float32" and quantize is None, "only the shared model here"
        return spy

    monkeypatch.setattr("seekmoe.llm.LLM", fake)
    return spy


@pytest.fixture
def spy(llm, monkeypatch) -> Spy:
    return spy_on(llm, None, monkeypatch)


def stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


# ---- generate --------------------------------------------------------------------------------------------------

def test_generate_streams_text_and_summary(capsys, spy):
    rc, out, err = run_cli(capsys, "generate", "The sea", "--max-tokens", "6", "--temperature", "0")
    assert rc == 0
    expected = spy._llm.generate("The sea", max_tokens=6, temperature=0)
    assert out == expected.text + "\n" and expected.text
    assert err.startswith("prompt ") and f"completion {len(expected.token_ids)} tokens" in err and "tok/s" in err
    assert f"finish: {expected.finish_reason}" in err


def test_generate_with_model_path_loads_it(capsys):
    rc, out, err = run_cli(capsys, "generate", str(DEFAULT_MODEL), "Call me", "--max-tokens", "3", "--temperature",
                           "0", "--no-stream", "-q")
    assert rc == 0 and out.strip() and err == ""


def test_seed_repeats(capsys, spy):
    argv = ("generate", "Once upon", "--max-tokens", "8", "--temperature", "0.8", "--seed", "7", "-q")
    runs = [run_cli(capsys, *argv) for _ in range(2)]
    assert runs[0][0] == 0 and runs[0][1].strip()
    assert runs[0] == runs[1]


def test_json_shape_and_logprobs(capsys, spy):
    rc, out, err = run_cli(capsys, "generate", "Call me", "--max-tokens", "4", "--temperature", "0", "--json",
                           "--logprobs", "2", "-q")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert set(obj) == {"index", "text", "finish_reason", "usage", "logprobs"}
    assert obj["index"] == 0 and obj["finish_reason"] in ("stop", "length")
    usage = obj["usage"]
    assert usage["prompt_tokens"] == len(spy.prompts[0])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(obj["logprobs"]) == usage["completion_tokens"]
    first = obj["logprobs"][0]
    assert set(first) == {"token_id", "token", "bytes", "logprob", "top_logprobs"}
    assert len(first["top_logprobs"]) == 2 and first["logprob"] <= 0


def test_json_without_logprobs_and_n_2(capsys, spy):
    rc, out, _ = run_cli(capsys, "generate", "Call me", "--max-tokens", "4", "-n", "2", "--seed", "1", "--json")
    assert rc == 0
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["index"] for o in objs] == [0, 1]
    assert all("logprobs" not in o and o["usage"]["completion_tokens"] <= 4 for o in objs)


def test_n_2_as_text(capsys, spy):
    rc, out, err = run_cli(capsys, "generate", "Call me", "--max-tokens", "3", "-n", "2", "--seed", "1")
    assert rc == 0
    assert "--- completion 1 of 2 ---" in out and "--- completion 2 of 2 ---" in out
    assert "finish: " in err and err.count(",") >= 1  # one finish reason per completion


def test_stop_cuts_the_text(capsys, spy):
    full = spy._llm.generate("Step 1:", max_tokens=12, temperature=0).text  # " 10 3\n   Called to the" greedily
    words = full.split()
    assert len(words) >= 2, f"the bundled model's greedy text is too short for this test: {full!r}"
    stop = words[1]  # not the first word, so the cut usually leaves text before it
    rc, out, _ = run_cli(capsys, "generate", "Step 1:", "--max-tokens", "12", "--temperature", "0", "--stop", stop,
                         "--stop", "never written", "--json")
    obj = json.loads(out)
    assert rc == 0 and obj["finish_reason"] == "stop"
    assert obj["text"] == full[:full.index(stop)]


def test_prompt_from_stdin(capsys, spy, monkeypatch):
    stdin(monkeypatch, "Call me\n")
    rc, out, _ = run_cli(capsys, "generate", "-", "--max-tokens", "4", "--temperature", "0", "--no-stream", "-q")
    assert rc == 0
    assert spy.prompts == [spy._llm.encode("Call me")]  # the final newline dropped
    assert out == spy._llm.generate("Call me", max_tokens=4, temperature=0).text + "\n"


@pytest.mark.parametrize("flags, needle", [
    (["--temperature", "5"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["-n", "0"], "-n must be"),
    (["-n", "17"], "-n must be"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--top-k", "-2"], "--top-k"),
    (["--min-p", "1.5"], "--min-p"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
    (["--presence-penalty", "3"], "--presence-penalty"),
    (["--frequency-penalty", "-3"], "--frequency-penalty"),
    (["--stop", ""], "--stop"),
    (["--seed", "-1"], "--seed"),
    (["--logprobs", "21", "--json"], "--logprobs"),
    (["--logprobs", "2"], "--logprobs needs --json"),
])
def test_bad_sampling_values(capsys, flags, needle):
    rc, out, err = run_cli(capsys, "generate", "Call me", *flags)  # refused before any model loads
    assert_usage_error(rc, err, needle)
    assert out == ""


def test_max_tokens_beyond_the_context(capsys, spy):
    rc, _, err = run_cli(capsys, "generate", "Call me", "--max-tokens", "5000")
    assert_usage_error(rc, err, "context is 1024 tokens", "max_tokens 5000")


def test_unparsable_value_is_a_usage_error(capsys):
    rc, _, err = run_cli(capsys, "generate", "Call me", "--temperature", "hot")
    assert rc == 2 and "--temperature" in err


@pytest.mark.parametrize("cmd", ["generate", "chat"])
def test_missing_model_folder(capsys, tmp_path, cmd):
    rc, _, err = run_cli(capsys, cmd, str(tmp_path / "nope"), *(["Call me"] if cmd == "generate" else []))
    assert_usage_error(rc, err, str(tmp_path / "nope"), "no such model folder")


def test_folder_that_is_not_a_checkpoint(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "generate", str(tmp_path), "Call me")
    assert_usage_error(rc, err, str(tmp_path / "config.json"), "missing")


def test_empty_prompt(capsys, monkeypatch):
    rc, _, err = run_cli(capsys, "generate", "")
    assert_usage_error(rc, err, "PROMPT is empty")
    stdin(monkeypatch, "\n")
    rc, _, err = run_cli(capsys, "generate", "-")
    assert_usage_error(rc, err, "PROMPT is empty")


def test_model_folder_without_prompt(capsys):
    rc, _, err = run_cli(capsys, "generate", str(DEFAULT_MODEL))
    assert_usage_error(rc, err, "PROMPT is missing", str(DEFAULT_MODEL))


@pytest.mark.parametrize("cmd", ["generate", "chat"])
def test_kv_cache_dtype_reaches_the_cache(capsys, monkeypatch, tmp_path, cmd):
    import torch

    folder = str(tiny_model_folder(tmp_path / "m"))
    made: list[LLM] = []

    def recording(*args, **kwargs):
        made.append(LLM(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("seekmoe.llm.LLM", recording)
    for flags, dtype in (([], torch.float32), (["--kv-cache-dtype", "int8"], torch.int8)):
        stdin(monkeypatch, "Hello\n/bye\n")
        rc, out, _ = run_cli(capsys, cmd, folder, *(["Call me", "-q"] if cmd == "generate" else []),
                             "--max-tokens", "3", "--temperature", "0", *flags)
        assert rc == 0 and out
        assert made[-1].engine.cache.dtype == dtype
        made[-1].close()
    rc, _, err = run_cli(capsys, cmd, folder, "--kv-cache-dtype", "int4")
    assert rc == 2 and "--kv-cache-dtype" in err and "int4" in err


# ---- chat ------------------------------------------------------------------------------------------------------

CHAT = ("chat", "--max-tokens", "5", "--temperature", "0")


def test_chat_keeps_the_conversation(capsys, spy, monkeypatch):
    stdin(monkeypatch, "Hello there\nAnd then?\n/bye\nnever read\n")
    rc, out, err = run_cli(capsys, *CHAT, "--system", "Be brief.", "-v")
    assert rc == 0
    first, second = spy.conversations
    assert first == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    answer = spy._llm.chat(first, max_tokens=5, temperature=0).text
    assert second == [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    assert spy.prompts == [spy._llm.chat_ids(first), spy._llm.chat_ids(second)]
    assert spy.prompts[1][:len(spy.prompts[0])] == spy.prompts[0]  # the second prompt extends the first
    assert out.startswith(answer + "\n")
    assert out.count("\n") >= 2
    verbose = [line for line in err.splitlines() if line.startswith("prompt ")]
    assert [line.split()[1] for line in verbose] == [str(len(p)) for p in spy.prompts]
    assert ">>>" not in err  # stdin is not a terminal


def test_chat_commands(capsys, spy, monkeypatch):
    stdin(monkeypatch, "Hello\n/help\n/clear\n\n/what\nAgain\n")  # ends at EOF, no /bye
    rc, _, err = run_cli(capsys, *CHAT)
    assert rc == 0
    assert "/bye" in err and "conversation cleared" in err and "unknown command /what" in err
    assert spy.conversations == [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Again"}]]


def test_chat_drops_the_oldest_exchanges(capsys, spy, monkeypatch):
    tok = spy._llm.tokenizer
    words = " ".join(f"w{i}" for i in range(400))
    line = tok.decode(tok.encode(words)[:440])  # about 440 tokens: two fit the 1024-token context, three do not
    stdin(monkeypatch, "\n".join(["A " + line, "B " + line, "C " + line, ""]))
    rc, _, err = run_cli(capsys, *CHAT, "--system", "sys")
    assert rc == 0
    firsts = [[m["content"][:2] for m in c if m["role"] == "user"] for c in spy.conversations]
    assert firsts[:2] == [["A "], ["A ", "B "]]
    assert firsts[-1] == ["B ", "C "] and spy.conversations[-1][0] == {"role": "system", "content": "sys"}
    assert "dropped the 1 oldest exchange to fit the 1024-token context" in err
    assert all(len(p) + 5 <= 1024 for p in spy.prompts)


def test_chat_message_too_long_alone(capsys, spy, monkeypatch):
    stdin(monkeypatch, " ".join(f"w{i}" for i in range(1200)) + "\nHi\n")
    rc, out, err = run_cli(capsys, *CHAT)
    assert rc == 0 and out.count("\n") >= 1
    assert "does not fit" in err
    assert len(spy.prompts) == 1 and spy.conversations[-1] == [{"role": "user", "content": "Hi"}]


class Interrupted:
    """A request whose reader gets Ctrl-C after its first delta."""

    def __init__(self, req):
        self.req, self.cancelled = req, False

    def __iter__(self):
        it = iter(self.req)
        yield next(it)
        raise KeyboardInterrupt

    def collect(self, deltas):
        return self.req.collect(deltas)

    def cancel(self):
        self.cancelled = True
        self.req.cancel()


def test_chat_ctrl_c_stops_the_answer(capsys, spy, monkeypatch):
    stopped = []

    def interrupt_the_first(req):
        if stopped:
            return req
        stopped.append(Interrupted(req))
        return stopped[0]

    spy.wrap = interrupt_the_first
    stdin(monkeypatch, "Hello\nHi again\n/bye\n")
    rc, _, err = run_cli(capsys, *CHAT)
    assert rc == 0 and stopped[0].cancelled
    assert "stopped" in err
    assert spy.conversations[-1] == [{"role": "user", "content": "Hi again"}]  # the stopped exchange is not kept


def test_chat_ctrl_c_at_the_prompt_quits(capsys, spy, monkeypatch):
    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", CtrlC())
    rc, out, _ = run_cli(capsys, *CHAT)
    assert rc == 0 and out == ""


def test_chat_generate_only_flags_are_refused(capsys):
    rc, _, err = run_cli(capsys, "chat", "-n", "2")
    assert rc == 2 and "-n" in err


@pytest.mark.parametrize("flags, needle", [
    (["--temperature", "2.5"], "--temperature"),
    (["--system", ""], "--system"),
])
def test_chat_bad_values(capsys, flags, needle):
    rc, _, err = run_cli(capsys, "chat", *flags)
    assert_usage_error(rc, err, needle)


def test_chat_max_tokens_filling_the_context(capsys, spy):
    rc, _, err = run_cli(capsys, "chat", "--max-tokens", "1024")
    assert_usage_error(rc, err, "--max-tokens 1024", "1024-token context")


# ---- chat with images and audio --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mm_folder(tmp_path_factory):
    return tiny_multimodal_folder(tmp_path_factory.mktemp("chat-mm") / "model")


@pytest.fixture(scope="module")
def mm_llm(mm_folder):
    with LLM(mm_folder) as model:
        yield model


@pytest.fixture
def mm(mm_llm, mm_folder, monkeypatch) -> Spy:
    return spy_on(mm_llm, str(mm_folder), monkeypatch)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "cat.png").write_bytes(png(1))
    (tmp_path / "tone.wav").write_bytes(wav(0.5))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def mm_chat(capsys, mm: Spy, monkeypatch, *lines: str) -> tuple[str, str]:
    stdin(monkeypatch, "".join(line + "\n" for line in lines))
    rc, out, err = run_cli(capsys, "chat", str(mm._llm.path), "--max-tokens", "5", "--temperature", "0")
    assert rc == 0
    return out, err


def test_chat_image_then_questions_about_it(capsys, mm, monkeypatch, files):
    out, err = mm_chat(capsys, mm, monkeypatch, f"/image {files / 'cat.png'}", "What is this?", "And its colour?")
    assert "attached image cat.png (1 KB)" in err.splitlines()  # 800 bytes
    question = {"type": "text", "text": "What is this?"}
    first = [{"role": "user", "content": [{"type": "image", "data": png(1)}, question]}]
    answer = mm._llm.chat(first, max_tokens=5, temperature=0).text
    url = "data:image/png;base64," + base64.b64encode(png(1)).decode()
    openai = [{"type": "image_url", "image_url": {"url": url}}, question]
    assert answer == mm._llm.chat([{"role": "user", "content": openai}], max_tokens=5, temperature=0).text
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And its colour?"}]
    assert mm.conversations == [first, second]  # the follow-up still holds the image
    follow_up = mm._llm.chat(second, max_tokens=5, temperature=0).text
    assert out == answer + "\n" + follow_up + "\n"
    assert mm._llm.chat([{"role": "user", "content": "What is this?"}], max_tokens=5, temperature=0).text != answer


def test_chat_audio_and_several_attachments(capsys, mm, monkeypatch, files):
    out, err = mm_chat(capsys, mm, monkeypatch, f"/audio {files / 'tone.wav'}", f"/image '{files / 'cat.png'}'",
                       "What is this?")
    assert "attached audio tone.wav (16 KB)" in err and "attached image cat.png" in err
    parts = [{"type": "audio", "data": wav(0.5)}, {"type": "image", "data": png(1)},
             {"type": "text", "text": "What is this?"}]
    assert mm.conversations == [[{"role": "user", "content": parts}]]
    assert out == mm._llm.chat([{"role": "user", "content": parts}], max_tokens=5, temperature=0).text + "\n"


def test_chat_refuses_bad_attachments_and_attaches_nothing(capsys, mm, monkeypatch, files):
    _, err = mm_chat(capsys, mm, monkeypatch, f"/image {files / 'missing.png'}", f"/image {files / 'notes.txt'}",
                     f"/audio {files / 'cat.png'}", f"/image {files}", "/image", "Hello")
    lines = err.splitlines()
    assert f"cannot attach {files / 'missing.png'}: No such file or directory" in lines
    assert any(line.startswith(f"cannot attach {files / 'notes.txt'}: the image must be a PNG") for line in lines)
    assert any(line.startswith(f"cannot attach {files / 'cat.png'}: the audio must be a WAV or FLAC") for line in lines)
    assert f"cannot attach {files}: Is a directory" in lines and "usage: /image PATH" in lines
    assert "attached" not in err and mm.conversations == [[{"role": "user", "content": "Hello"}]]


def test_chat_media_the_model_refuses_are_not_sent_and_the_chat_goes_on(capsys, mm, monkeypatch, files):
    (files / "click.wav").write_bytes(wav(0.01))  # a valid WAV, too short for the audio encoder
    out, err = mm_chat(capsys, mm, monkeypatch, f"/audio {files / 'click.wav'}", "Hi", "Hello")
    assert "attached audio click.wav" in err and "(not sent: the audio is 0.01 s long" in err
    assert mm.conversations[-1] == [{"role": "user", "content": "Hello"}]  # the refused exchange is not kept
    assert out == mm._llm.chat(mm.conversations[-1], max_tokens=5, temperature=0).text + "\n"


def test_chat_drops_old_exchanges_for_the_media_limit(capsys, mm, monkeypatch, files):
    mm.media_limits = MediaLimits(max_items=2)  # the spy's, which the CLI reads
    image = f"/image {files / 'cat.png'}"
    _, err = mm_chat(capsys, mm, monkeypatch, image, "One", image, "Two", image, "Three", image, image, image, "Four")
    users = [[m["content"][-1]["text"] for m in c if m["role"] == "user"] for c in mm.conversations]
    assert users[:2] == [["One"], ["One", "Two"]] and ["Two", "Three"] in users
    assert ["One", "Two", "Three"] not in users  # 3 media: never even made a prompt
    assert "(dropped the 1 oldest exchange to fit the 256-token context and the 2 media a prompt may hold)" in err
    assert "at most 2 images and recordings in one message" in err  # the third of Four's is refused
    assert users[-1] == ["Four"] and len(mm.conversations[-1][0]["content"]) == 3
    assert "dropped the 2 oldest exchanges" in err


def test_chat_on_a_text_model_attaches_nothing(capsys, monkeypatch, files, tmp_path):
    folder = tiny_model_folder(tmp_path / "text")  # the bundled default reads images and speech
    with LLM(folder) as text_llm:
        spy = spy_on(text_llm, str(folder), monkeypatch)
        stdin(monkeypatch, f"/image {files / 'cat.png'}\n/audio {files / 'tone.wav'}\nHi\n")
        rc, _, err = run_cli(capsys, "chat", str(folder), "--max-tokens", "5", "--temperature", "0")
    assert rc == 0 and "this model reads text only: it has no image encoder" in err and "no audio encoder" in err
    assert "attached" not in err and spy.conversations == [[{"role": "user", "content": "Hi"}]]


def test_chat_help_lists_the_media_commands(capsys, spy, monkeypatch):
    stdin(monkeypatch, "/help\n")
    _, _, err = run_cli(capsys, *CHAT)
    assert "/image PATH" in err and "/audio PATH" in err
