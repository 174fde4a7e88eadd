"""Byte-level BPE tokenizer: train it on text files, load it, encode and decode with an exact round trip.

The folder `train_tokenizer` writes (tokenizer.json + tokenizer_config.json) loads unchanged with
transformers' `AutoTokenizer.from_pretrained(folder)`, and gives the ids our `Tokenizer.encode` gives:
`hf(text, add_special_tokens=False)` equals `encode(text)`, and `hf(text)` equals `encode(text, add_bos=True)`,
since, as DeepSeek's tokenizers do, transformers prepends the begin-of-sentence token by default.

Special tokens take ids 0..25 in every vocabulary size, before the 256 byte tokens and the learned merges:

    0 <｜begin▁of▁sentence｜>   bos            3 <｜User｜>   4 <｜Assistant｜>   5 <｜System｜>   chat roles
    1 <｜end▁of▁sentence｜>     eos            6-14  tool calls: <｜tool▁calls▁begin｜> ... <｜tool▁output▁end｜>
    2 <｜▁pad▁｜>               pad            15-17 fill in the middle: <｜fim▁hole｜> <｜fim▁begin｜> <｜fim▁end｜>
                                               18-25 <｜place▁holder▁no▁0｜> .. 7, reserved: rename one, keep its id

The names follow DeepSeek-V2/V3 (full-width bars, ▁ for spaces); DeepSeek's own chat template puts the system
prompt straight after bos, <｜System｜> is there for templates that want a marker. Like transformers, `encode`
turns these strings (every added token's) into their ids wherever they appear in the text; `encode(text,
special=False)` reads them as plain text, the ordinary tokens of their characters (transformers'
split_special_tokens=True). `apply_chat_template` uses both: the template's markers are special, the text of the
messages and tools is plain, so a user who types "<｜Assistant｜>" cannot forge a turn
(seekmoe.text.chat tells them apart).

Lone surrogates. A Python str may hold lone surrogates (U+D800..U+DFFF: JSON "\\ud800", os.fsdecode of bad
bytes), which Rust strings, and so the `tokenizers` library, cannot take. `encode` cuts them out and writes each as
the three bytes of its 'surrogatepass' UTF-8 form (ED A0..BF 80..BF) in byte tokens; `decode` joins the bytes of
all tokens and decodes them with 'surrogatepass', which gives the surrogates back. No valid UTF-8 text holds these
byte sequences, and so no learned merge does: every string round-trips, and text without lone surrogates, the
common case, goes to the Rust tokenizer untouched and gets exactly transformers' ids. Bytes that are not UTF-8 at
all (a model's stray byte tokens) decode to U+FFFD, as transformers does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator
from functools import cached_property
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from seekmoe.errors import SeekmoeError
from seekmoe.text.chat import DEFAULT_CHAT_TEMPLATE

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
SPECIAL_TOKENS = (
    BOS, EOS, PAD,
    "<｜User｜>", "<｜Assistant｜>", "<｜System｜>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
    "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>",
    *(f"<｜place▁holder▁no▁{i}｜>" for i in range(8)),
)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 1_000_000
CORPUS_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")  # what a folder given to train_tokenizer is searched for

# Pre-tokenization, in order; BPE merges never cross the pieces these cut. Each digit on its own (DeepSeek-V2),
# so numbers are spelled the same everywhere. Runs of Chinese, Japanese and Korean script on their own (as
# DeepSeek-V3): CJK has no spaces, so the English rule below would glue the punctuation, or a space, that precedes
# a run onto it. Then GPT-4's rule for the rest: English contractions, words with at most one leading non-letter
# (" the", "_name"), punctuation runs, newlines, and spaces (the last space of a run goes to the next word).
DIGITS = r"\p{N}"
CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+"
WORDS = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Short samples for the tokens-per-character figures printed after training.
SAMPLE_ENGLISH = (
    "The river rose quickly after three days of heavy rain, and by Thursday morning the old stone bridge was "
    "closed to traffic. Engineers said the structure itself was sound, but they wanted to inspect the foundations "
    "before letting trucks cross again. Meanwhile, residents on the east bank had to drive twenty minutes north to "
    "reach the market, the school and the only pharmacy in town."
)
SAMPLE_CHINESE = (
    "连续三天的大雨之后，河水迅速上涨，到了星期四早上，那座古老的石桥已经禁止车辆通行。工程师说，桥身本身没有问题，"
    "但他们希望在允许卡车再次通过之前先检查一下桥基。与此同时，住在东岸的居民只能向北开车二十分钟，"
    "才能到达市场、学校和镇上唯一的一家药店。"
)

_SURROGATES = re.compile("[\ud800-\udfff]+")
_TEXT_CHUNK = 1 << 16  # characters per piece handed to the trainer; it buffers a few hundred pieces


class TokenizerError(SeekmoeError, ValueError):
    """A tokenizer folder, a corpus or a training setting that is wrong; the message names it."""


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-level map: each byte to a printable character, so tokens are readable strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    for i, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + i)
    return dict(sorted(chars.items()))


def _token_config_name(value: object) -> str | None:
    """A token in tokenizer_config.json: a string, or transformers' {"content": ...} form."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A byte-level BPE tokenizer (a `tokenizers.Tokenizer`) with an encode/decode pair that round-trips every str."""

    def __init__(self, backend: Backend, bos_token: str = BOS, eos_token: str = EOS, pad_token: str | None = PAD,
                 source: str = "tokenizer", chat_template: str | None = None):
        if not isinstance(backend.decoder, decoders.ByteLevel):
            raise TokenizerError(f"{source}: decoder is {type(backend.decoder).__name__}, expected ByteLevel "
                                 f"(only byte-level BPE tokenizers are supported)")
        self._backend = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        alphabet = byte_alphabet()
        char_to_byte = {c: b for b, c in alphabet.items()}
        missing = [c for c in char_to_byte if c not in vocab]
        if missing:
            raise TokenizerError(f"{source}: {len(missing)} of the 256 byte tokens are missing (first {missing[0]!r})")
        self._byte_ids = [vocab[c] for c in alphabet.values()]  # byte value -> token id

        # Token id -> bytes, by the rule of the Rust ByteLevel decoder: a token made only of byte-alphabet characters
        # stands for those bytes, any other token (the special ones) for its own UTF-8.
        self._id_bytes: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            if all(c in char_to_byte for c in token):
                self._id_bytes[i] = bytes(char_to_byte[c] for c in token)
            else:
                self._id_bytes[i] = token.encode("utf-8")

        def known(role: str, token: str) -> int:
            if token not in vocab:
                raise TokenizerError(f"{source}: {role} {token!r} is not in the vocabulary")
            return vocab[token]

        self.chat_template = chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token  # no pad token: pad with eos
        self.bos_id = known("bos_token", bos_token)
        self.eos_id = known("eos_token", eos_token)
        self.pad_id = known("pad_token", self.pad_token)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load tokenizer.json, and bos/eos/pad from tokenizer_config.json when it is there."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: not a folder (expected one holding tokenizer.json)")
        if not path.is_file():
            raise TokenizerError(f"{path}: no such file")
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception for bad JSON and bad contents alike
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
        names = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TokenizerError(f"{config_path}: not valid JSON ({e})") from None
            if not isinstance(config, dict):
                raise TokenizerError(f"{config_path}: expected a JSON object")
            names = {key: _token_config_name(config.get(key)) for key in names}
            if names["bos_token"] is None or names["eos_token"] is None:
                raise TokenizerError(f"{config_path}: bos_token and eos_token must both be set")
            template = config.get("chat_template")
            if template is not None and not isinstance(template, str):
                raise TokenizerError(f"{config_path}: chat_template must be a string (one Jinja template)")
            names["chat_template"] = template
        return cls(backend, **names, source=str(path))

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json, the files transformers' AutoTokenizer reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",  # transformers 4 and 5 both load tokenizer.json as it is
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": True,  # what tokenizer.json's post-processor does; transformers 5 rebuilds it from these
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,  # anything else breaks the round trip in transformers' decode
            "chat_template": self.chat_template,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; a model's vocab_size must be at least this."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def to_json(self) -> str:
        """tokenizer.json's text: what other libraries (the grammar compiler) read the vocabulary from."""
        return self._backend.to_str()

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes an id stands for in `decode`: a special token gives its own UTF-8."""
        piece = self._id_bytes[token_id] if 0 <= token_id < len(self._id_bytes) else None
        if piece is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary (0..{len(self._id_bytes) - 1})")
        return piece

    @cached_property
    def max_token_bytes(self) -> int:
        """Bytes of the longest token: the most text one token stands for (so a text of more characters than
        n * this cannot fit n tokens)."""
        return max(len(b) for b in self._id_bytes if b is not None)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of the tokens not made of byte-alphabet characters (bos, eos, pad, chat roles, ...): `decode` writes
        them as their own text, transformers' decode(skip_special_tokens=True) drops them."""
        chars = set(byte_alphabet().values())
        vocab = self._backend.get_vocab(with_added_tokens=True)
        return frozenset(i for token, i in vocab.items() if not all(c in chars for c in token))

    @cached_property
    def added_ids(self) -> frozenset[int]:
        """Ids of the added tokens, special or not (the media placeholders are added but made of plain characters)."""
        return frozenset(self._added[1].values())

    @cached_property
    def _added(self) -> tuple[re.Pattern, dict[str, int]]:
        """The added tokens (special or not: the backend cuts them all out of the text), as a pattern and by text."""
        from seekmoe.text.chat import any_of

        added = {t.content: i for i, t in self._backend.get_added_tokens_decoder().items()}
        return any_of(tuple(sorted(added))), added

    @cached_property
    def _plain(self) -> Backend:
        """The backend without its added tokens: their text goes through the pre-tokenizer and the merges like any
        other, and no merge gives back a token that is not made of byte characters."""
        spec = json.loads(self._backend.to_str())
        spec["added_tokens"] = []
        return Backend.from_str(json.dumps(spec))

    def encode(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """Token ids of text. special: added tokens' text (<｜User｜>, eos, ...) becomes their ids, as transformers
        does; special=False: it is plain text (for text a user wrote)."""
        backend = self._backend if special else self._plain
        ids = [self.bos_id] if add_bos else []
        start = 0
        for m in _SURROGATES.finditer(text):  # rare: see the module docstring
            ids += _encode(backend, text[start:m.start()])
            ids += [self._byte_ids[b] for b in m.group().encode("utf-8", "surrogatepass")]
            start = m.end()
        if start < len(text):
            ids += _encode(backend, text[start:])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        parts = []
        for i in ids:
            piece = self._id_bytes[i] if 0 <= i < len(self._id_bytes) else None
            if piece is None:
                raise ValueError(f"token id {i} is not in the vocabulary (0..{len(self._id_bytes) - 1})")
            parts.append(piece)
        return utf8_to_str(b"".join(parts))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, keep_special: Collection[str] = ()) -> list[int]:
        """Token ids of a conversation rendered with this tokenizer's chat template: the markers the template writes
        are special, the text of the messages and tools is plain (special=False). keep_special: added tokens that
        stay special in that text too (the media placeholders seekmoe.multimodal.parts writes into it). ChatError for a
        template that changes the text before writing it, when the text holds special-token text."""
        from seekmoe.text.chat import render_chat_parts

        pattern, added = self._added
        keep = set(keep_special)
        unknown = sorted(keep - set(added))
        if unknown:
            raise ValueError(f"keep_special: {unknown[0]!r} is not an added token of this tokenizer")
        parts = render_chat_parts(messages, self.chat_template, self.bos_token, self.eos_token,
                                  add_generation_prompt, tools, specials=set(added) - keep)
        # Cut only at the markers, and encode the text between two markers as one string, as `encode` does with
        # the whole text: a BPE piece that crosses from the template's text into the request's (" math" after
        # "###") is the same piece, and text without special-token text gets the very ids `encode` gives it.
        ids, run = [], []
        for text, from_request in parts:
            start = 0
            for m in pattern.finditer(text):
                if from_request and m.group() not in keep:
                    continue
                run.append(text[start:m.start()])
                ids += self.encode("".join(run), special=False)
                ids.append(added[m.group()])
                run, start = [], m.end()
            run.append(text[start:])
        return ids + self.encode("".join(run), special=False)

    def tokens_per_char(self, text: str) -> float:
        return len(self.encode(text)) / max(len(text), 1)


LONG_TEXT = 16_384  # characters


def _encode(backend: Backend, text: str) -> list[int]:
    # The library's encode holds the GIL throughout (a megabyte: a second in which no other thread of a server
    # runs); its encode_batch lets go of it while it works, and gives the same ids.
    if len(text) > LONG_TEXT:
        return backend.encode_batch([text], add_special_tokens=False)[0].ids
    return backend.encode(text, add_special_tokens=False).ids


def utf8_to_str(data: bytes) -> str:
    """UTF-8 with surrogates allowed; bytes that are not UTF-8 become U+FFFD, one per maximal bad run, like Rust."""
    parts, pos = [], 0
    while True:
        try:
            parts.append(data[pos:].decode("utf-8", "surrogatepass"))
            return "".join(parts)
        except UnicodeDecodeError as e:
            parts.append(data[pos:pos + e.start].decode("utf-8", "surrogatepass"))
            parts.append("\ufffd")
            pos += e.end


def build_backend() -> Backend:
    """An untrained byte-level BPE with our pre-tokenizer, decoder and bos post-processor."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DIGITS), behavior="isolated"),
        pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
        pre_tokenizers.Split(Regex(WORDS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes to printable characters only
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 0)])
    return backend


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to train on: files as given, folders searched recursively for CORPUS_SUFFIXES."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise TokenizerError("no input files given")
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in CORPUS_SUFFIXES and p.is_file())
            if not found:
                raise TokenizerError(f"{path}: folder holds no {'/'.join(CORPUS_SUFFIXES)} files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TokenizerError(f"{path}: no such file or folder")
    return files


def read_corpus(files: Iterable[Path]) -> Iterator[str]:
    """Text of each file in pieces of bounded size: JSONL (.jsonl) by its "text" fields, other files as UTF-8."""
    for path in files:
        yield from (_read_jsonl(path) if path.suffix == ".jsonl" else _read_text(path))


def _read_text(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", newline="") as f:  # newline="": train on the text's own line endings
            rest = ""
            while chunk := f.read(_TEXT_CHUNK):
                text = rest + chunk
                cut = text.rfind("\n") + 1 or len(text)  # end pieces at a line break where there is one
                yield text[:cut]
                rest = text[cut:]
            if rest:
                yield rest
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}: {e.reason})") from None


def _read_jsonl(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TokenizerError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise TokenizerError(f'{path}:{lineno}: expected an object with a string "text" field')
                # Lone surrogates ("\ud800" escapes) cannot reach the Rust trainer; they are byte tokens whatever
                # the merges, so dropping them costs the vocabulary nothing.
                yield _SURROGATES.sub("", record["text"])
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}: {e.reason})") from None


class _CountingCorpus:
    """read_corpus, remembering whether any non-blank text went by (the trainer drains it out of our sight)."""

    def __init__(self, files: list[Path]):
        self.files, self.has_text = files, False

    def __iter__(self) -> Iterator[str]:
        for text in read_corpus(self.files):
            self.has_text = self.has_text or not text.isspace()
            yield text


def train_tokenizer(files: Iterable[str | Path], out_dir: str | Path, vocab_size: int = 32_000,
                    min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on text files, folders and JSONL, streaming them; save it into out_dir."""
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise TokenizerError(f"vocab_size must be between {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special "
                             f"tokens) and {MAX_VOCAB_SIZE:,}, got {vocab_size:,}")
    if min_frequency < 1:
        raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TokenizerError(f"{out_dir}: exists and is not a folder (expected an output folder)")
    corpus = _CountingCorpus(corpus_files(files))

    backend = build_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer=trainer)
    if not corpus.has_text:
        names = ", ".join(str(f) for f in corpus.files[:3]) + (", ..." if len(corpus.files) > 3 else "")
        raise TokenizerError(f"the corpus is empty: no text in {names}")
    tokenizer = Tokenizer(backend)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
