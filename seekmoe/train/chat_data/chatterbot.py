"""Short conversations from the `chatterbot-corpus` PyPI package (BSD-3-Clause), English and simplified Chinese.

A YAML file holds `conversations:`, a list of [utterance, reply, reply2, ...]; each becomes alternating
user/assistant messages. The corpus's `chinese` folder is the simplified one (`traditionalchinese` is separate).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import yaml

from seekmoe.train.chat_data import ChatDataError, MissingSourceError, example

LANGUAGES = {"english": "en", "chinese": "zh"}
LICENSE = "BSD-3-Clause"


def package_data_dir() -> Path:
    """chatterbot_corpus/data of the installed package, found without importing it."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourceError("the chatterbot-corpus package is not installed: pip install chatterbot-corpus "
                                 "(or pass --skip-missing to leave the chatterbot set out)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def conversations_to_examples(conversations, lang: str, category: str) -> list[dict]:
    """Entries with fewer than two utterances or a non-string item are dropped, as is an odd last utterance:
    a reply nobody answers would end the example on the user."""
    examples = []
    for entry in conversations or []:
        if not isinstance(entry, list) or not all(isinstance(u, str) for u in entry):
            continue  # YAML turns bare `yes`, `1.5` or `- key: value` into bools, numbers and dicts
        utterances = [u.strip() for u in entry]
        if len(utterances) < 2 or not all(utterances):
            continue
        utterances = utterances[: len(utterances) // 2 * 2]
        turns = [("user" if i % 2 == 0 else "assistant", u) for i, u in enumerate(utterances)]
        examples.append(example(turns, {"source": "chatterbot", "lang": lang, "category": category}))
    return examples


def read_file(path: Path, lang: str) -> list[dict]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ChatDataError(f"{path}: not readable YAML ({e}); reinstall chatterbot-corpus") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), list):
        raise ChatDataError(f"{path}: expected a mapping with a `conversations:` list; reinstall chatterbot-corpus")
    return conversations_to_examples(doc["conversations"], lang, path.stem)


def load(data_dir=None) -> tuple[list[dict], dict]:
    """All English and Chinese conversations (exact duplicates once), and their SOURCES.json entry."""
    root = Path(data_dir) if data_dir is not None else package_data_dir()
    examples, seen = [], set()
    for folder, lang in LANGUAGES.items():
        files = sorted((root / folder).glob("*.yml"))
        if not files:
            raise MissingSourceError(f"no {folder}/*.yml in {root}: pip install chatterbot-corpus "
                                     "(or pass --skip-missing to leave the chatterbot set out)")
        for path in files:
            for ex in read_file(path, lang):
                key = tuple(m["content"] for m in ex["messages"])
                if key not in seen:  # the corpus repeats pairs across files; a repeat could leak into val
                    seen.add(key)
                    examples.append(ex)
    if data_dir is None:
        origin = f"pypi:chatterbot-corpus {importlib.metadata.version('chatterbot-corpus')} (english, chinese)"
    else:
        origin = f"chatterbot-corpus files in {root} (english, chinese)"
    source = {"origin": origin, "license": LICENSE,
              "url": "https://github.com/gunthercox/chatterbot-corpus"}
    return examples, source
