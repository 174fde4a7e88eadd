"""Relations from sentences: (subject, relation, object) triples between terms, behind one interface.

- CooccurrenceExtractor: the terms terms.py finds, each two in one sentence related (by the verb between them when
  they are next to each other, else by co-occurring). No model; fast; the default. How strong a relation is comes
  later, from counts over the whole corpus (discover.py weighs pairs by NPMI).
- ModelExtractor: asks a model for the triples of each sentence as JSON ({"triples": [...]}, TRIPLES_SCHEMA, which
  a caller with constrained decoding hands to the model) and keeps only triples that pass validation: the right
  shape, short strings, subject and object written in the sentence. The model is a `complete(prompt) -> text`
  callable, so this package never imports one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from seekmoe.graph.terms import Term, find_terms, term_key

PAIR_WINDOW = 8  # terms more than this many places apart in one sentence (a list, a table row) are not paired
MAX_TRIPLES = 8  # per sentence, from a model
MAX_FIELD_CHARS = 80
MAX_REPLY_CHARS = 20_000  # a reply longer than this is refused unread: no sentence has that many relations

TRIPLES_SCHEMA = {
    "type": "object",
    "properties": {"triples": {"type": "array", "maxItems": MAX_TRIPLES, "items": {
        "type": "object",
        "properties": {k: {"type": "string", "minLength": 1, "maxLength": MAX_FIELD_CHARS}
                       for k in ("subject", "relation", "object")},
        "required": ["subject", "relation", "object"], "additionalProperties": False}}},
    "required": ["triples"], "additionalProperties": False,
}

PROMPT = (
    "List the relations the sentence states, as JSON: {{\"triples\": [{{\"subject\": \"...\", \"relation\": "
    "\"...\", \"object\": \"...\"}}]}}. Subject and object are short terms copied from the sentence; the relation "
    "is a verb phrase. No relations: {{\"triples\": []}}.\n\n"
    "Sentence: Aspirin inhibits platelet aggregation.\n"
    "JSON: {{\"triples\": [{{\"subject\": \"Aspirin\", \"relation\": \"inhibits\", \"object\": \"platelet "
    "aggregation\"}}]}}\n\n"
    "Sentence: {sentence}\nJSON: "
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Triple:
    subject: Term
    relation: str  # "" when the sentence only puts the two together
    object: Term


@dataclass(frozen=True)
class Facts:
    """What one sentence says: its terms, and the triples between them."""
    terms: list[Term]
    triples: list[Triple]


class Extractor(Protocol):
    name: str  # stored in the graph, so an incremental build keeps to the extractor it began with

    def extract(self, sentence: str) -> Facts: ...


class CooccurrenceExtractor:
    """Terms by term statistics (terms.py); each two in a sentence a triple."""

    name = "cooccurrence"

    def extract(self, sentence: str) -> Facts:
        found = find_terms(sentence)
        terms, seen = [], set()
        for t in found.terms:
            if t.key not in seen:
                seen.add(t.key)
                terms.append(t)
        triples = []
        for i, a in enumerate(terms):
            for b in terms[i + 1:]:
                # a term and the one nested in it ("dietary fish oil", "fish oil") share a slot: one thing, no pair
                if a.slot != b.slot and b.slot - a.slot <= PAIR_WINDOW:
                    triples.append(Triple(a, found.relation(a, b), b))
        return Facts(terms, triples)


@dataclass
class ModelExtractor:
    """Triples asked of a model, one sentence a prompt; replies that fail validation are counted and dropped."""

    complete: Callable[[str], str]
    name: str = "model"
    rejected: int = 0  # replies (or triples in them) refused
    reasons: dict[str, int] = field(default_factory=dict)  # why, counted: what a user sees after a build

    def extract(self, sentence: str) -> Facts:
        reply = self.complete(PROMPT.format(sentence=sentence))
        try:
            triples, ungrounded = parse_triples(reply, sentence)
        except ValueError as e:
            self._reject(str(e).split(":")[0])
            return Facts([], [])
        for _ in range(ungrounded):
            self._reject("triples not in the sentence")
        terms: dict[str, Term] = {}
        for t in triples:
            terms.setdefault(t.subject.key, t.subject)
            terms.setdefault(t.object.key, t.object)
        return Facts(list(terms.values()), triples)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _field(item: dict, name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ValueError(f"not a string: {name} is {type(value).__name__}")
    value = " ".join(value.split())
    if not value or len(value) > MAX_FIELD_CHARS or _CONTROL.search(value):
        raise ValueError(f"bad {name}: empty, over {MAX_FIELD_CHARS} characters or with control characters")
    return value


def parse_triples(reply: str, sentence: str) -> tuple[list[Triple], int]:
    """The triples of a model's reply, validated against the sentence it was asked about, and how many were dropped
    as not in it. ValueError (its message starting with the reason, then ':') for a reply that is not JSON of the
    expected shape. A triple whose subject or object is not in the sentence is dropped, as a model that invents
    terms (or a sentence that tells it to) would otherwise put them in the graph."""
    if not isinstance(reply, str) or len(reply) > MAX_REPLY_CHARS:
        raise ValueError(f"too long: a reply of over {MAX_REPLY_CHARS} characters")
    try:
        data = json.loads(reply)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if isinstance(data, dict):
        if set(data) != {"triples"}:
            raise ValueError(f"wrong keys: expected {{\"triples\": [...]}}, got keys {sorted(data)[:5]}")
        data = data["triples"]
    if not isinstance(data, list):
        raise ValueError(f"not a list: triples is {type(data).__name__}")
    if len(data) > MAX_TRIPLES:
        raise ValueError(f"too many triples: {len(data)}, at most {MAX_TRIPLES} a sentence")
    text = " ".join(sentence.split()).lower()
    out, seen, ungrounded = [], set(), 0
    for item in data:
        if not isinstance(item, dict) or set(item) != {"subject", "relation", "object"}:
            raise ValueError("bad triple: expected objects with exactly subject, relation and object")
        subject, relation, obj = (_field(item, k) for k in ("subject", "relation", "object"))
        if subject.lower() not in text or obj.lower() not in text:
            ungrounded += 1
            continue
        if term_key(subject) == term_key(obj):
            continue  # a term related to itself says nothing
        key = (term_key(subject), relation.lower(), term_key(obj))
        if key not in seen:
            seen.add(key)
            out.append(Triple(Term(key[0], subject, "term", 0), relation.lower(), Term(key[2], obj, "term", 1)))
    return out, ungrounded


__all__ = ["MAX_TRIPLES", "PROMPT", "TRIPLES_SCHEMA", "CooccurrenceExtractor", "Extractor", "Facts", "ModelExtractor",
           "Triple", "parse_triples"]
