"""The addressing task of issue 17: short natural-text entries, each asked verbatim, shuffled and reordered.

Why this task: the default store matches phrases (a token's query sees its neighbours), so a question that
reuses a document's words in another order reads other slots. This task measures exactly that, offline and
with no benchmark items: about 1,000 short entries (the leading sentences of docstring / comment paragraphs
of the bench split of :mod:`fwpkm_rag.data.corpora`), each one retrieval unit, each asked three ways:

* ``verbatim``  -- the entry's first sentence, as written;
* ``shuffled``  -- the same words (punctuation stripped) in a seeded random order;
* ``reordered`` -- the sentence's content words (function words dropped) in a seeded order, put into a
  question ("What about ... ?" and similar): the words of the entry, none of its phrasing.

Every entry belongs to ``dev`` or ``test`` by a seeded hash of its text (weights of a combined ranking are
chosen on dev, reported on test). Deterministic for one interpreter and package set: documents in sorted
order, shuffles seeded by strings.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

from fwpkm_rag.errors import ConfigError, check_int

__all__ = ["Entry", "ENTRY_TASKS", "STOPWORDS", "make_entries", "shuffled", "reordered", "split_entries"]

ENTRY_TASKS = ("verbatim", "shuffled", "reordered")

# Function words left out of the "reordered" question: they carry the phrasing, not the content.
STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from as into onto over under about than so that
this these those it its is are was were be been being am do does did done has have had having not no nor
can could may might must shall should will would which who whom whose what when where why how there here
all any each every some such only also very just more most other same own too both either neither
i you he she we they them their our your his her my me us one ones s t
""".split())

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WORDS = re.compile(r"[A-Za-z0-9]+(?:['_-][A-Za-z0-9]+)*")
_QUESTION_FORMS = ("What about {}?", "Which entry covers {}?", "Where is {} described?", "Tell me about {}?")


@dataclass(frozen=True)
class Entry:
    """One retrieval unit and its three questions."""

    index: int  # position in the collection (= the chunk id the benchmark gives it)
    text: str  # the entry: one or two leading sentences of a paragraph
    sentence: str  # its first sentence (the verbatim question)
    source: str  # "<source>:<document name>"
    split: str  # "dev" or "test"

    def question(self, task: str, seed: int = 0) -> str:
        if task == "verbatim":
            return self.sentence
        if task == "shuffled":
            return shuffled(self.sentence, f"{seed}:{self.index}")
        if task == "reordered":
            return reordered(self.sentence, f"{seed}:{self.index}")
        raise ConfigError(f"unknown task {task!r}; choose from {ENTRY_TASKS}")


def words(text: str) -> list[str]:
    """The words of a text as written (punctuation dropped)."""
    return _WORDS.findall(text)


def shuffled(sentence: str, seed: str) -> str:
    """The sentence's words in a seeded random order (different from the original when possible)."""
    w = words(sentence)
    rng = random.Random(f"fwpkm-entries:shuffle:{seed}")
    out = list(w)
    for _ in range(8):  # a few tries at an order that differs from the original
        rng.shuffle(out)
        if out != w:
            break
    return " ".join(out)


def reordered(sentence: str, seed: str) -> str:
    """The sentence's content words, in a seeded order, in a question template."""
    content = [x for x in words(sentence) if x.lower() not in STOPWORDS]
    rng = random.Random(f"fwpkm-entries:reorder:{seed}")
    rng.shuffle(content)
    form = _QUESTION_FORMS[rng.randrange(len(_QUESTION_FORMS))]
    return form.format(" ".join(content))


def _runs(paragraph: str, max_words: int) -> list[tuple[str, str]]:
    """(entry text, first sentence) for consecutive, non-overlapping runs of the paragraph's sentences, each
    as long as fits in max_words (a run always holds at least its first sentence)."""
    sentences = _SENTENCE_END.split(paragraph)
    out, i = [], 0
    while i < len(sentences):
        run, n = [sentences[i]], len(sentences[i].split())
        i += 1
        while i < len(sentences) and n + len(sentences[i].split()) <= max_words:
            run.append(sentences[i])
            n += len(sentences[i].split())
            i += 1
        out.append((" ".join(run), run[0]))
    return out


def _split_of(text: str, dev_fraction: float, seed: int) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big") / 2.0**64
    return "dev" if h < dev_fraction else "test"


def make_entries(n: int = 1000, *, min_words: int = 6, max_sentence_words: int = 20, min_entry_words: int = 16,
                 max_words: int = 45, dev_fraction: float = 0.3, seed: int = 0,
                 sources: Sequence[str] = ("stdlib", "pydoc", "essays")) -> list[Entry]:
    """``n`` distinct entries from the bench split of ``sources`` (documents in a seeded order).

    An entry is a run of consecutive sentences of a paragraph, ``min_entry_words`` to ``max_words`` words, whose first
    sentence (the question) has ``min_words`` to ``max_sentence_words`` words: the question is a part of its
    entry, as a user's question is a part of what they look for. Entries whose first sentence, or whose set
    of lowercased words, repeats an earlier entry's are skipped (docstrings repeat themselves: "Return the
    value." would make the gold entry ambiguous).
    """
    from fwpkm_rag.data.corpora import iter_documents

    check_int("n", n, 1)
    check_int("min_words", min_words, 1)
    check_int("max_sentence_words", max_sentence_words, min_words)
    check_int("max_words", max_words, max_sentence_words)
    check_int("min_entry_words", min_entry_words, 1)
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"dev_fraction must be in (0, 1), got {dev_fraction!r}")
    out: list[Entry] = []
    seen_sentences: set[str] = set()
    seen_bags: set[frozenset] = set()
    for doc in iter_documents("bench", list(sources), seed=seed):
        for par in doc.paragraphs:
            for text, sentence in _runs(par, max_words):
                w = words(sentence)
                n_words = len(words(text))
                if not min_words <= len(w) <= max_sentence_words or not min_entry_words <= n_words <= max_words:
                    continue
                key, bag = sentence.lower(), frozenset(x.lower() for x in w)
                if key in seen_sentences or bag in seen_bags:
                    continue
                seen_sentences.add(key)
                seen_bags.add(bag)
                out.append(Entry(len(out), text, sentence, f"{doc.ref.source}:{doc.ref.name}",
                                 _split_of(text, dev_fraction, seed)))
                if len(out) == n:
                    return out
    raise ConfigError(f"the bench split of {list(sources)} holds only {len(out)} entries, fewer than n={n}")


def split_entries(entries: Sequence[Entry], split: str) -> list[Entry]:
    """The entries of one split ("dev" or "test")."""
    if split not in ("dev", "test"):
        raise ConfigError(f"split must be 'dev' or 'test', got {split!r}")
    return [e for e in entries if e.split == split]
