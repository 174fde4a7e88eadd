"""Byte-level BPE: training, transformers parity, exact round trip (lone surrogates too), CLI and its errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekmoe.text.tokenizer import (
    BOS,
    EOS,
    LONG_TEXT,
    MAX_VOCAB_SIZE,
    MIN_VOCAB_SIZE,
    PAD,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    build_backend,
    byte_alphabet,
    corpus_files,
    read_corpus,
    train_tokenizer,
)
from tests.conftest import assert_usage_error, run_cli

ENGLISH = (
    "The model reads the text one token at a time. It's trained on 2024 documents, and in 2025 we'll add more.\n"
    "Each expert sees only the tokens the router sends it; the shared expert sees them all.\n"
    "Training runs on eight GPUs for 3 days, then we evaluate it on 1200 questions.\n"
)
CHINESE = (
    "模型一次读取一个词元。我们用二零二四年的文档训练它，明年会加入更多的数据。\n"
    "每个专家只看到路由器发给它的词元，共享专家则看到全部词元。\n"
    "我们在八块显卡上训练三天，然后用一千两百个问题评估模型。我用Python写代码。\n"
)
CODE = "def square(x: int) -> int:\n    return x * x  # 😀\n\nprint([square(i) for i in range(10)])\r\n"
CORPUS = (ENGLISH + CHINESE + CODE) * 4

PARITY_STRINGS = [
    "The model reads the text.", "  leading and trailing spaces  ", "It's 12:30, isn't it?",
    "我们用二零二四年的文档训练它。", "我用Python写代码，很好。", "日本語のテキストと한국어",
    "emoji 😀👍🏽 and 🇨🇭 flags", CODE, "tabs\tand\nnewlines\r\n\n", "price: $1,234.56 (≈ ¥8,900)",
    f"{BOS}hello{EOS}{PAD}", "<｜User｜>hi<｜Assistant｜>", "", " ", "\x00\x7f\u200b\ufeff",
]


def write_corpus(folder, text: str = CORPUS, name: str = "corpus.txt"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tokenizer for the module: (its folder, our Tokenizer)."""
    root = tmp_path_factory.mktemp("tokenizer")
    tok = train_tokenizer([write_corpus(root / "data")], root / "out", vocab_size=600, show_progress=False)
    return root / "out", tok


@pytest.fixture(scope="module")
def hf(trained):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(trained[0])




# --- training output and transformers parity ---

def test_train_writes_loadable_folder(trained):
    out, tok = trained
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (BOS, EOS, PAD)
    assert MIN_VOCAB_SIZE < tok.vocab_size <= 600
    again = Tokenizer.from_pretrained(out)
    assert again.vocab_size == tok.vocab_size
    assert [again.encode(s) for s in PARITY_STRINGS] == [tok.encode(s) for s in PARITY_STRINGS]


def test_transformers_gives_our_ids(trained, hf):
    _, tok = trained
    assert type(hf).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert len(hf) == tok.vocab_size
    for s in PARITY_STRINGS:
        assert hf(s, add_special_tokens=False)["input_ids"] == tok.encode(s), s
        assert hf(s)["input_ids"] == tok.encode(s, add_bos=True), s  # transformers prepends bos, as DeepSeek's does
        assert hf.decode(tok.encode(s)) == tok.decode(tok.encode(s)) == s


def test_long_text_gives_transformers_ids_too(trained, hf):
    """Past LONG_TEXT characters encode takes the path that lets other threads run; the ids are the same."""
    _, tok = trained
    text = "".join(PARITY_STRINGS) * (LONG_TEXT // len("".join(PARITY_STRINGS)) + 2) + "<｜User｜>x"
    assert len(text) > LONG_TEXT
    for special in (True, False):
        ids = tok.encode(text, special=special)
        assert ids == hf(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.decode(tok.encode(text + "\ud800" + text, special=special)) == text + "\ud800" + text


def test_special_tokens_have_stable_ids_and_are_single_tokens(trained, hf, tmp_path):
    _, tok = trained
    smaller = train_tokenizer([write_corpus(tmp_path, ENGLISH)], tmp_path / "out", vocab_size=MIN_VOCAB_SIZE,
                              show_progress=False)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(token) == smaller.token_to_id(token) == hf.convert_tokens_to_ids(token) == i
        assert tok.encode(token) == [i] and tok.decode([i]) == token
    assert smaller.vocab_size == MIN_VOCAB_SIZE
    assert tok.encode("a<｜User｜>b")[1:-1] == [tok.token_to_id("<｜User｜>")]
    assert tok.token_to_id("<｜no such token｜>") is None


# --- pre-tokenization: digits, CJK, English ---

def test_digits_are_single_tokens(trained):
    _, tok = trained
    ids = tok.encode("2024 and 1200")  # both frequent in the corpus, still never merged
    assert [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()] == list("20241200")
    assert len(tok.encode("1234567890")) == 10


def test_pieces_keep_scripts_apart():
    alphabet = {c: b for b, c in byte_alphabet().items()}

    def pieces(text: str) -> list[str]:
        pre = build_backend().pre_tokenizer.pre_tokenize_str(text)
        return [bytes(alphabet[c] for c in piece).decode("utf-8") for piece, _ in pre]

    assert pieces("我用Python写代码，很好。") == ["我用", "Python", "写代码", "，", "很好", "。"]
    assert pieces("It's trained on 2024 docs.") == ["It", "'s", " trained", " on", " ", *"2024", " docs", "."]
    assert pieces("  x = y\n\n") == [" ", " x", " =", " y", "\n\n"]


def test_chinese_and_english_compress(trained):
    _, tok = trained
    chinese, english = CHINESE.splitlines()[0], ENGLISH.splitlines()[0]
    assert tok.tokens_per_char(chinese) < 1.0  # raw UTF-8 bytes would be 3 per character
    assert tok.tokens_per_char(english) < 0.5
    assert len(tok.encode("模型")) == 1


# --- exact round trip ---

any_text = st.text(st.characters(codec=None, exclude_categories=()))  # surrogates and unassigned code points too
fragments = st.sampled_from([*PARITY_STRINGS, *SPECIAL_TOKENS, "\ud800", "\udfff", "\ud83d\ude00", "😀", "2024"])
mixed_text = st.lists(st.one_of(any_text, fragments)).map("".join)


@settings(max_examples=200, deadline=None)
@given(mixed_text)
def test_round_trip_any_str(trained, text):
    _, tok = trained
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, add_bos=True)) == BOS + text


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(codec="utf-8")))
def test_transformers_parity_any_valid_str(trained, hf, text):
    _, tok = trained
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_lone_surrogates_are_surrogatepass_bytes(trained):
    _, tok = trained
    byte_id = {b: tok.token_to_id(c) for b, c in byte_alphabet().items()}
    assert tok.encode("\ud800") == [byte_id[0xED], byte_id[0xA0], byte_id[0x80]]
    halves = "\ud83d\ude00"  # a surrogate pair as two code points is not the emoji, and stays two code points
    assert tok.decode(tok.encode(halves)) == halves != "😀"
    assert tok.encode("a\udfffb") == [*tok.encode("a"), byte_id[0xED], byte_id[0xBF], byte_id[0xBF], *tok.encode("b")]


def test_decode_of_bytes_that_are_not_utf8(trained, hf):
    _, tok = trained
    byte_id = {b: tok.token_to_id(c) for b, c in byte_alphabet().items()}
    for raw in ([0xFF], [0xE6, 0xA8], [0x41, 0xFF, 0x42], [0xED, 0xA0]):
        ids = [byte_id[b] for b in raw]
        assert tok.decode(ids) == hf.decode(ids) == bytes(raw).decode("utf-8", "replace")
    with pytest.raises(ValueError, match="token id 100000"):
        tok.decode([100_000])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])


# --- corpus reading ---

def test_corpus_folders_jsonl_and_chunks(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Title\r\n", encoding="utf-8")
    (tmp_path / "sub" / "b.rst").write_text("rst text\n", encoding="utf-8")
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "jsonl one"}\n\n{"text": "two \\ud800", "id": 2}\n')
    (tmp_path / "skip.bin").write_bytes(b"\xff\xfe")
    files = corpus_files([tmp_path])
    assert [f.name for f in files] == ["a.md", "b.rst", "c.jsonl"]
    assert list(read_corpus(files)) == ["# Title\r\n", "rst text\n", "jsonl one", "two "]

    big = "line of text\n" * 20_000 + "no newline at the end"
    pieces = list(read_corpus([write_corpus(tmp_path, big, "big.txt")]))
    assert "".join(pieces) == big and len(pieces) > 1
    assert all(p.endswith("\n") for p in pieces[:-1])


# --- errors ---

@pytest.mark.parametrize("vocab_size", [MIN_VOCAB_SIZE - 1, MAX_VOCAB_SIZE + 1])
def test_cli_vocab_size_out_of_range(capsys, tmp_path, vocab_size):
    rc, _, err = run_cli(capsys, "tokenizer", "train", str(write_corpus(tmp_path)), "--out", str(tmp_path / "out"),
                     "--vocab-size", str(vocab_size))
    assert_usage_error(rc, err, "vocab_size", f"{vocab_size:,}", str(MIN_VOCAB_SIZE))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, needle", [
    ("missing", "missing.txt: no such file or folder"),
    ("empty", "the corpus is empty"),
    ("blank", "the corpus is empty"),
    ("empty_folder", "holds no .txt/.md/.rst/.jsonl files"),
    ("bad_jsonl", 'bad.jsonl:2: expected an object with a string "text" field'),
    ("not_json", "bad.jsonl:1: not valid JSON"),
    ("not_utf8", "latin1.txt: not UTF-8 text (byte 0xe9"),
    ("out_is_file", "out: exists and is not a folder"),
    ("min_frequency", "min_frequency must be >= 1, got 0"),
])
def test_cli_input_errors(capsys, tmp_path, case, needle):
    data, out, extra = tmp_path / "data", tmp_path / "out", []
    source = write_corpus(data)
    if case == "missing":
        source = data / "missing.txt"
    elif case == "empty":
        source = write_corpus(data, "", "empty.txt")
    elif case == "blank":
        source = write_corpus(data, " \n\n\t", "blank.txt")
    elif case == "empty_folder":
        source = tmp_path / "nothing"
        source.mkdir()
    elif case == "bad_jsonl":
        source = write_corpus(data, '{"text": "fine"}\n{"body": "no text"}\n', "bad.jsonl")
    elif case == "not_json":
        source = write_corpus(data, "{oops\n", "bad.jsonl")
    elif case == "not_utf8":
        source = data / "latin1.txt"
        source.write_bytes("café".encode("latin-1"))
    elif case == "out_is_file":
        out.write_text("a file")
    elif case == "min_frequency":
        extra = ["--min-frequency", "0"]
    rc, _, err = run_cli(capsys, "tokenizer", "train", str(source), "--out", str(out), "--vocab-size", "300", *extra)
    assert_usage_error(rc, err, needle)
    assert not (out / "tokenizer.json").exists()


def test_no_input_files(capsys, tmp_path):
    with pytest.raises(TokenizerError, match="no input files"):
        train_tokenizer([], tmp_path / "out", vocab_size=300)
    rc, _, err = run_cli(capsys, "tokenizer", "train", "--out", str(tmp_path / "out"), "--vocab-size", "300")
    assert rc == 2 and "FILE_OR_FOLDER" in err  # argparse's own usage error


def test_load_errors_name_the_file(trained, tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: no such file"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)

    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((trained[0] / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: not valid JSON"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": EOS}))
    with pytest.raises(TokenizerError, match="bos_token '<s>' is not in the vocabulary"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": BOS}, "eos_token": EOS}))
    assert Tokenizer.from_pretrained(folder).pad_id == 1  # no pad token: pad with eos


# --- CLI happy path ---

def test_cli_train(capsys, tmp_path):
    data = tmp_path / "data"
    write_corpus(data / "nested", ENGLISH * 3, "en.txt")
    write_corpus(data, CHINESE * 3, "zh.md")
    out = tmp_path / "new" / "tok"
    rc, stdout, err = run_cli(capsys, "tokenizer", "train", str(data), "--out", str(out), "--vocab-size", "400",
                          "--min-frequency", "2")
    assert rc == 0 and err == ""
    assert "trained on 2 file(s)" in stdout and "bos 0, eos 1, pad 2" in stdout
    assert "tokens per character: English" in stdout and "Chinese" in stdout
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert Tokenizer.from_pretrained(out).vocab_size <= 400


# ---- special-token text as plain text ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [*PARITY_STRINGS, *(f"a{t}b" for t in SPECIAL_TOKENS), "<｜User<｜User｜>｜>\ud800"])
def test_plain_encoding_has_no_special_ids_and_round_trips(trained, text):
    _, tok = trained
    ids = tok.encode(text, special=False)
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == text
    if not any(t in text for t in SPECIAL_TOKENS):
        assert ids == tok.encode(text)  # nothing to tell apart: the same ids


@pytest.mark.parametrize("text", [*PARITY_STRINGS, "x<｜User｜>y <｜tool▁sep｜> z", "<｜end▁of▁sentence｜>"])
def test_plain_encoding_is_transformers_split_special_tokens(trained, hf, text):
    _, tok = trained
    assert tok.encode(text, special=False) == hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"]  # the default is unchanged
