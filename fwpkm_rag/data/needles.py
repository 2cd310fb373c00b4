"""RULER-style needle-in-a-haystack tasks, generated offline and seeded.

A *needle* is a key->value fact written in a template ("The access code for ID-4821 is 730954."). An item
hides one gold needle at a requested depth of a natural-text haystack of about L tokens, optionally with
distractor needles that use the same template and differ only in the key (and, by default, the value:
``distractor_values="same"`` makes them identical but for the key). Each item carries the question in the
fact's own wording and a paraphrase that shares no content word with the fact except the key, so both the
exact-match and the semantic side of retrieval can be measured.

Why two splits: the model is trained on generated facts too (issue 5), so training and benchmark must not
share templates or keys, or a benchmark would measure memorisation of its own items. ``split="train"`` and
``split="bench"`` use disjoint template sets, disjoint key sets (a key belongs to the split chosen by a hash of
its text, :func:`key_split`), separate random streams (seeds are namespaced by split) and haystacks from the
matching corpus split (:mod:`fwpkm_rag.data.corpora`).

Chunking: :func:`chunk_text` cuts a text into chunks of ``size`` tokens of the project tokenizer (encode
once, cut the token ids, map cut points back to character offsets so chunks concatenate to the text exactly)
and :func:`chunk_item` reports which chunk(s) hold the gold needle and each distractor. ``make_item(...,
chunk_size=S)`` moves the gold needle to a nearby sentence boundary where it falls inside one chunk.
"""
from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from fwpkm_rag.data.corpora import tokenizer_or_default
from fwpkm_rag.errors import ConfigError, InputError, check_int

__all__ = [
    "BENCH_TEMPLATES",
    "TRAIN_TEMPLATES",
    "Chunk",
    "ChunkedItem",
    "Fact",
    "NeedleItem",
    "Template",
    "chunk_item",
    "chunk_text",
    "chunks_touching",
    "key_split",
    "make_fact",
    "make_facts",
    "make_item",
    "make_items",
    "sentence_boundaries",
    "templates_for",
]

# ----------------------------------------------------------------------------------------------------------
# vocabularies for keys and values
# ----------------------------------------------------------------------------------------------------------
_FIRST = (
    "Helena Marco Aisha Tomas Ingrid Rafael Yuki Omar Greta Lucas Priya Dmitri Sofia Kwame Elena Mateo Hana "
    "Felix Amara Jonas Leila Victor Nadia Henrik Zara Pablo Mei Anders Lucia Tariq Ines Oskar Noor Bruno Vera "
    "Emil Sana Hugo Maya Iker"
).split()
_LAST = (
    "Varga Okafor Lindqvist Moreau Tanaka Castillo Novak Haddad Brennan Kowalski Mendes Petrov Adeyemi Larsen "
    "Fischer Romano Nakamura Duarte Sorensen Quinn Abara Vogel Ibarra Holm Marsh Ferreira Koenig Silva Dubois "
    "Yilmaz Hart Rossi Bauer Ortega Lund Keller Costa Weiss Navarro Sato"
).split()
_PLACES = (
    "Lisbon Oslo Nairobi Kyoto Montreal Valparaiso Tbilisi Porto Reykjavik Hanoi Cusco Gdansk Marrakesh Bergen "
    "Adelaide Tallinn Zanzibar Cordoba Ljubljana Halifax Bruges Mombasa Krakow Tromso Salzburg Cartagena Dakar "
    "Hobart Utrecht Sapporo Ghent Arequipa Trieste Windhoek Tampere Valencia Lucerne Asmara Quito Riga"
).split()
_ADJ = (
    "amber silver crimson quiet rapid hollow golden frozen bitter gentle hidden lunar northern velvet copper "
    "scarlet ancient brisk cobalt dusty emerald fierce humble ivory jagged lively misty noble olive pale"
).split()
_NOUN = (
    "falcon harbor lantern meadow orchid pebble quarry raven saddle tundra violin walnut anchor beacon cedar "
    "dolphin ember fjord glacier heron island juniper kettle lagoon marble nectar otter prism quill ridge"
).split()
_WORD_VALUES = (
    "biscuit tornado saffron pelican marigold cathedral trombone avalanche porcupine lighthouse hazelnut "
    "telescope chameleon blizzard cinnamon dragonfly pineapple waterfall mandolin sunflower labyrinth "
    "paprika carousel nightingale tangerine compass thimble meteor hammock lavender"
).split()
_MONTHS = (
    "January February March April May June July August September October November December"
).split()


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10**n - 1))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


KEY_KINDS: dict[str, Callable[[random.Random], str]] = {
    "id": lambda r: f"ID-{_digits(r, 4)}",
    "code": lambda r: f"{r.choice(string.ascii_uppercase)}{r.choice(string.ascii_uppercase)}-{_digits(r, 3)}",
    "name": lambda r: f"{r.choice(_FIRST)} {r.choice(_LAST)}",
    "word": lambda r: f"{r.choice(_ADJ)}-{r.choice(_NOUN)}",
    "hex": lambda r: f"{_hex(r, 4)}-{_hex(r, 4)}",
}
"""Key generators. A key is used only in the split :func:`key_split` assigns it to."""

VALUE_KINDS: dict[str, Callable[[random.Random], str]] = {
    "number6": lambda r: _digits(r, 6),
    "number7": lambda r: _digits(r, 7),
    "amount": lambda r: f"{r.randint(120, 98000):,}",
    "word": lambda r: r.choice(_WORD_VALUES),
    "uuid": lambda r: f"{_hex(r, 8)}-{_hex(r, 4)}-{_hex(r, 4)}",
    "date": lambda r: f"{r.choice(_MONTHS)} {r.randint(1, 28)}, {r.randint(1931, 2019)}",
    "place": lambda r: r.choice(_PLACES),
    "gate": lambda r: f"{r.choice('ABCDEFGH')}{r.randint(1, 48)}",
}


def key_split(key: str) -> str:
    """``"train"`` or ``"bench"``: the only split allowed to use ``key`` (a hash of its text, half each)."""
    return "bench" if hashlib.sha256(key.encode("utf-8")).digest()[0] & 1 else "train"


# ----------------------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A fact pattern with its question in the same words and a paraphrased question.

    ``fact`` holds ``{key}`` and ``{value}``; ``question`` and ``paraphrase`` hold ``{key}``. The paraphrase
    shares no content word with the fact other than the key (checked by the tests): synonyms and a different
    clause order, so lexical matching on the template words cannot find it.
    """

    name: str
    key_kind: str
    value_kind: str
    fact: str
    question: str
    paraphrase: str


TRAIN_TEMPLATES: tuple[Template, ...] = (
    Template("access_code", "id", "number6", "The access code for {key} is {value}.",
             "What is the access code for {key}?", "Which digits unlock entry for {key}?"),
    Template("residence", "name", "place", "{key} lives in {value}.",
             "Where does {key} live?", "In which city is the home of {key}?"),
    Template("password", "code", "word", "The password of account {key} is {value}.",
             "What is the password of account {key}?", "Which secret phrase opens the login {key}?"),
    Template("birthday", "name", "date", "{key} was born on {value}.",
             "When was {key} born?", "What is the birthday of {key}?"),
    Template("shelf", "code", "amount", "Warehouse shelf {key} holds {value} boxes.",
             "How many boxes does warehouse shelf {key} hold?", "What count of crates is stored on rack {key}?"),
    Template("serial", "word", "uuid", "The serial number of the {key} device is {value}.",
             "What is the serial number of the {key} device?", "Which identifier was assigned to the {key} gadget?"),
    Template("shipment", "id", "place", "Package {key} was shipped to {value}.",
             "Where was package {key} shipped to?", "What is the destination of parcel {key}?"),
    Template("pet", "name", "word", "The pet of {key} is named {value}.",
             "What is the pet of {key} named?", "What do people call the animal owned by {key}?"),
)
"""Templates for generated training data (issue 5). Never used by benchmarks."""

BENCH_TEMPLATES: tuple[Template, ...] = (
    Template("magic_number", "word", "number7", "One of the special magic numbers for {key} is: {value}.",
             "What is the special magic number for {key}?", "Which secret figure belongs to {key}?"),
    Template("magic_uuid", "hex", "uuid", "The special magic uuid for {key} is: {value}.",
             "What is the special magic uuid for {key}?", "Which hidden identifier string is tied to {key}?"),
    Template("locker", "code", "number6", "The vault combination of locker {key} is {value}.",
             "What is the vault combination of locker {key}?", "Which digits open storage box {key}?"),
    Template("relocation", "name", "place", "Professor {key} moved to {value} last year.",
             "Where did Professor {key} move to last year?", "In which town has the academic {key} recently settled?"),
    Template("meeting", "name", "date", "The meeting with {key} is scheduled for {value}.",
             "When is the meeting with {key} scheduled?", "On what day will {key} be seen for the appointment?"),
    Template("flight", "code", "gate", "Flight {key} departs from gate {value}.",
             "From which gate does flight {key} depart?", "Where should passengers board plane {key}?"),
    Template("codeword", "id", "word", "The codeword assigned to agent {key} is {value}.",
             "What is the codeword assigned to agent {key}?", "Which secret term was given to operative {key}?"),
    Template("invoice", "hex", "amount", "Invoice {key} totals {value} dollars.",
             "What is the total of invoice {key} in dollars?", "How much money does bill {key} charge?"),
)
"""Templates for benchmarks (the first two follow RULER's wording). Never used for training."""


def templates_for(split: str) -> tuple[Template, ...]:
    """The template set of ``split`` ("train" or "bench")."""
    if split == "train":
        return TRAIN_TEMPLATES
    if split == "bench":
        return BENCH_TEMPLATES
    raise ConfigError(f"split must be 'train' or 'bench', got {split!r}")


def _template(split: str, template: str | Template | None, rng: random.Random) -> Template:
    pool = templates_for(split)
    if template is None:
        return rng.choice(pool)
    if isinstance(template, Template):
        if template not in pool:
            raise ConfigError(f"template {template.name!r} is not one of the {split!r} templates")
        return template
    for t in pool:
        if t.name == template:
            return t
    raise ConfigError(f"unknown {split!r} template {template!r}; choose from {[t.name for t in pool]}")


# ----------------------------------------------------------------------------------------------------------
# facts
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    """One key->value fact with its questions."""

    template: str
    key: str
    value: str
    text: str
    question: str
    paraphrase: str

    @property
    def answer(self) -> str:
        return self.value


def _rng(split: str, seed: int, purpose: str) -> random.Random:
    if split not in ("train", "bench"):
        raise ConfigError(f"split must be 'train' or 'bench', got {split!r}")
    check_int("seed", seed)
    # string seeds are hashed with SHA-512 by random.Random: deterministic, and train/bench streams never meet
    return random.Random(f"fwpkm-needles:{split}:{purpose}:{seed}")


def _new_key(rng: random.Random, kind: str, split: str, used: set[str]) -> str:
    gen = KEY_KINDS[kind]
    for _ in range(10_000):
        k = gen(rng)
        if k not in used and key_split(k) == split:
            used.add(k)
            return k
    raise ConfigError(f"ran out of distinct {kind!r} keys for split {split!r} ({len(used)} used)")


def _new_value(rng: random.Random, kind: str, avoid: set[str]) -> str:
    gen = VALUE_KINDS[kind]
    v = gen(rng)
    for _ in range(1000):
        if v not in avoid:
            break
        v = gen(rng)
    avoid.add(v)
    return v


def _fill(t: Template, key: str, value: str) -> Fact:
    return Fact(t.name, key, value, t.fact.format(key=key, value=value), t.question.format(key=key),
                t.paraphrase.format(key=key))


def make_facts(
    n: int,
    split: str = "train",
    seed: int = 0,
    template: str | Template | None = None,
    same_template: bool = True,
    rng: random.Random | None = None,
) -> list[Fact]:
    """``n`` facts with distinct keys (and distinct values where the value space allows).

    ``same_template=True`` gives the multi-key setting (all facts in one template, differing in key and
    value); False draws a template per fact. Pass ``rng`` to continue an existing stream (training loops).
    """
    check_int("n", n, 0)
    rng = rng or _rng(split, seed, "facts")
    first = _template(split, template, rng)
    keys: set[str] = set()
    values: set[str] = set()
    out = []
    for i in range(n):
        t = first if (same_template or i == 0) else _template(split, None, rng)
        out.append(_fill(t, _new_key(rng, t.key_kind, split, keys), _new_value(rng, t.value_kind, values)))
    return out


def make_fact(split: str = "train", seed: int = 0, template: str | Template | None = None) -> Fact:
    """A single fact (see :func:`make_facts`)."""
    return make_facts(1, split, seed, template)[0]


# ----------------------------------------------------------------------------------------------------------
# chunking
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """A slice of a text: ``text == source[start:end]``, about ``token_end - token_start`` tokens."""

    text: str
    start: int
    end: int
    token_start: int
    token_end: int


def chunk_text(text: str, size: int, tokenizer=None) -> list[Chunk]:
    """Split ``text`` into consecutive chunks of ``size`` tokens of the project tokenizer.

    Why not langchain-text-splitters' TokenTextSplitter: it takes only tiktoken encoding names, and its
    generic token splitter decodes each slice of ids separately, which loses character offsets (needed to
    say which chunk holds a needle) and can corrupt characters cut between two chunks. Here we encode once,
    cut the ids every ``size`` tokens, and map each cut to a character offset through the tokens' byte
    lengths (moving a cut that lands inside a UTF-8 character to the character's end), so the chunks
    concatenate to exactly ``text``, their token spans tile ``[0, len(ids))``, and every chunk is ``size``
    tokens except the last (shorter) and one that took a cut character whole (up to 3 more tokens: a chunk
    left empty by that is dropped and its tokens go to the chunk before it).
    """
    if not isinstance(text, str):
        raise InputError(f"chunk_text() takes str, got {type(text).__name__}")
    check_int("chunk size", size, 1)
    tok = tokenizer_or_default(tokenizer)
    ids = tok.encode(text)
    if not ids:
        return []
    data = text.encode("utf-8")
    cuts_tok = list(range(0, len(ids), size)) + [len(ids)]
    # byte offset of each cut: cumulative byte length of the tokens before it
    byte_cuts = [0]
    for a, b in zip(cuts_tok[:-1], cuts_tok[1:]):
        byte_cuts.append(byte_cuts[-1] + len(tok.decode_bytes(ids[a:b])))
    if byte_cuts[-1] != len(data):  # pragma: no cover - the tokenizer round-trips exactly
        raise InputError("tokenizer did not round-trip the text; cannot compute chunk offsets")
    char_cuts, at_byte, at_char = [], 0, 0  # running offsets: linear in the text (a 10M-token haystack)
    for bc in byte_cuts:
        while 0 < bc < len(data) and (data[bc] & 0xC0) == 0x80:  # inside a multi-byte character
            bc += 1
        at_char += len(data[at_byte:bc].decode("utf-8"))
        at_byte = bc
        char_cuts.append(at_char)
    chunks = []
    for i in range(len(cuts_tok) - 1):
        s, e = char_cuts[i], char_cuts[i + 1]
        if e > s:
            chunks.append(Chunk(text[s:e], s, e, cuts_tok[i], cuts_tok[i + 1]))
        else:  # all its bytes lie in a character the previous chunk took whole: so do its tokens
            chunks[-1] = replace(chunks[-1], token_end=cuts_tok[i + 1])
    return chunks


def chunks_touching(chunks: Sequence[Chunk], start: int, end: int) -> list[int]:
    """Indices of the chunks that overlap the character span ``[start, end)``."""
    return [i for i, c in enumerate(chunks) if c.start < end and start < c.end]


# ----------------------------------------------------------------------------------------------------------
# items
# ----------------------------------------------------------------------------------------------------------
@dataclass
class NeedleItem:
    """One needle task: a haystack with needles inserted, the question(s) and the answer.

    ``gold_span`` and ``distractor_spans`` are character offsets into ``text`` (``text[s:e]`` is the
    needle). ``depth`` is the requested depth; ``actual_depth`` the fraction of ``text``'s tokens before the
    gold needle. ``length`` is the token count of ``text``.
    """

    text: str
    needle: str
    gold_span: tuple[int, int]
    question: str
    paraphrase: str
    answer: str
    key: str
    depth: float
    actual_depth: float
    length: int
    n_distractors: int
    distractors: list[str] = field(default_factory=list)
    distractor_spans: list[tuple[int, int]] = field(default_factory=list)
    distractor_keys: list[str] = field(default_factory=list)
    distractor_answers: list[str] = field(default_factory=list)
    template: str = ""
    split: str = "bench"
    seed: int = 0
    chunk_size: int | None = None


@dataclass
class ChunkedItem:
    """An item cut into chunks: the chunk strings and which ones hold the gold needle / each distractor."""

    chunks: list[str]
    gold_chunks: list[int]
    distractor_chunks: list[list[int]]
    spans: list[tuple[int, int]]

    @property
    def gold_chunk(self) -> int:
        """The (first) chunk holding the gold needle."""
        return self.gold_chunks[0]


_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)|\n\s*\n")


def sentence_boundaries(text: str) -> list[int]:
    """Character offsets where a new sentence or paragraph starts (insertion points), plus 0 and len(text)."""
    pts = {0, len(text)}
    for m in _BOUNDARY.finditer(text):
        pts.add(m.end())
    return sorted(pts)


def cut_haystack(text: str, n_tokens: int, tok) -> str:
    """The first ``n_tokens`` tokens of ``text``, cut back to the last sentence end (when there is one)."""
    ids = tok.encode(text)
    if len(ids) <= n_tokens:
        return text
    data = tok.decode_bytes(ids[:n_tokens])
    head = data.decode("utf-8", errors="ignore")
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s)", head)]
    if ends and ends[-1] > len(head) // 2:
        head = head[: ends[-1]]
    return head


def insert_sentences(base: str, inserts: list[tuple[int, int, str]]) -> tuple[str, dict[int, tuple[int, int]]]:
    """Insert needles at boundary offsets of ``base``; returns the text and each needle's span by id.

    ``inserts`` is (offset, needle_id, needle). Each needle becomes its own sentence: at offset 0 it is
    followed by a space, elsewhere it is preceded by one (the boundary already follows whitespace).
    """
    out = []
    spans: dict[int, tuple[int, int]] = {}
    pos = 0
    length = 0
    for off, nid, needle in sorted(inserts):
        seg = base[pos:off]
        out.append(seg)
        length += len(seg)
        if off > 0 and not base[off - 1].isspace():
            out.append(" ")
            length += 1
        spans[nid] = (length, length + len(needle))
        out.append(needle)
        length += len(needle)
        if off < len(base) and not base[off].isspace():
            out.append(" ")
            length += 1
        pos = off
    out.append(base[pos:])
    return "".join(out), spans


def make_item(
    length: int,
    depth: float,
    n_distractors: int = 0,
    split: str = "bench",
    seed: int = 0,
    template: str | Template | None = None,
    haystack: str | None = None,
    chunk_size: int | None = None,
    distractor_values: str = "random",
    sources: Sequence[str] | None = None,
    tokenizer=None,
) -> NeedleItem:
    """A needle task of about ``length`` tokens with the gold needle at ``depth`` (0 = start, 1 = end).

    The haystack comes from the corpus split matching ``split`` (:func:`fwpkm_rag.data.corpora.haystack`,
    seeded by ``seed``) unless ``haystack`` is given; it is cut to leave room for the needles, so the item's
    text has about ``length`` tokens. Needles go at sentence boundaries: the gold one at the boundary
    closest to ``depth``, distractors at seeded random boundaries elsewhere. ``n_distractors`` needles use
    the gold needle's template with other keys; ``distractor_values="random"`` (RULER multi-key) gives them
    other values too, ``"same"`` gives them the gold value, so they differ from the gold needle only in the
    key. With ``chunk_size`` the gold needle is placed (at the nearest suitable boundary) so that it lies
    inside one chunk of :func:`chunk_text`.
    """
    check_int("length (tokens)", length, 8)
    try:
        depth = float(depth)
    except (TypeError, ValueError):
        raise ConfigError(f"depth must be a number in [0, 1], got {depth!r}") from None
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"depth must be in [0, 1], got {depth}")
    check_int("n_distractors", n_distractors, 0)
    if distractor_values not in ("random", "same"):
        raise ConfigError(f"distractor_values must be 'random' or 'same', got {distractor_values!r}")
    check_int("chunk_size", chunk_size, 1, optional=True)
    tok = tokenizer_or_default(tokenizer)
    rng = _rng(split, seed, "item")
    t = _template(split, template, rng)
    facts = make_facts(1 + n_distractors, split, rng=rng, template=t)
    gold, others = facts[0], facts[1:]
    if distractor_values == "same":
        others = [_fill(t, f.key, gold.value) for f in others]
    needles = [gold.text] + [f.text for f in others]
    needle_tokens = sum(len(tok.encode(" " + n)) for n in needles)
    if chunk_size is not None and len(tok.encode(" " + gold.text)) + 2 > chunk_size:
        raise ConfigError(f"chunk_size={chunk_size} is too small to hold the needle {gold.text!r}")
    budget = max(length - needle_tokens, 1)

    if haystack is None:
        from fwpkm_rag.data.corpora import haystack as _haystack

        haystack = _haystack(budget, seed=seed, split=split, sources=sources, tokenizer=tok)
    elif not isinstance(haystack, str):
        raise InputError(f"haystack must be str, got {type(haystack).__name__}")
    base = cut_haystack(haystack, budget, tok)
    bounds = sentence_boundaries(base)

    # distractors: seeded random boundaries (distinct when there are enough)
    pool = list(bounds)
    rng.shuffle(pool)
    d_offsets = [pool[i % len(pool)] for i in range(len(others))]

    # gold candidates: boundaries ordered by distance from the requested depth (in characters, refined below)
    target = depth * len(base)
    cands = sorted(bounds, key=lambda b: (abs(b - target), b))
    if chunk_size is None:
        cands = cands[:1]
    item_text = ""
    spans: dict[int, tuple[int, int]] = {}
    for tries, g_off in enumerate(cands):
        inserts = [(g_off, 0, gold.text)] + [(o, i + 1, n) for i, (o, n) in enumerate(zip(d_offsets, needles[1:]))]
        item_text, spans = insert_sentences(base, inserts)
        if chunk_size is None:
            break
        chunks = chunk_text(item_text, chunk_size, tok)
        if len(chunks_touching(chunks, *spans[0])) == 1 or tries >= 200:
            break
    ids_before = len(tok.encode(item_text[: spans[0][0]]))
    total = len(tok.encode(item_text))
    return NeedleItem(
        text=item_text,
        needle=gold.text,
        gold_span=spans[0],
        question=gold.question,
        paraphrase=gold.paraphrase,
        answer=gold.value,
        key=gold.key,
        depth=depth,
        actual_depth=ids_before / max(total, 1),
        length=total,
        n_distractors=n_distractors,
        distractors=[f.text for f in others],
        distractor_spans=[spans[i + 1] for i in range(len(others))],
        distractor_keys=[f.key for f in others],
        distractor_answers=[f.value for f in others],
        template=t.name,
        split=split,
        seed=seed,
        chunk_size=chunk_size,
    )


def make_items(
    lengths: Sequence[int],
    depths: Sequence[float],
    n_distractors: Sequence[int] = (0,),
    split: str = "bench",
    seed: int = 0,
    per_cell: int = 1,
    **kwargs,
):
    """Yield items over the grid lengths x depths x n_distractors (``per_cell`` each), with distinct seeds.

    Items are generated lazily (a 128K-token item is about 0.5 MB of text).
    """
    cell = 0
    for L in lengths:
        for d in depths:
            for nd in n_distractors:
                for r in range(per_cell):
                    yield make_item(L, d, nd, split=split, seed=seed * 1_000_003 + cell * 101 + r, **kwargs)
                cell += 1


def chunk_item(item: NeedleItem, size: int | None = None, tokenizer=None) -> ChunkedItem:
    """Chunk ``item.text`` into ``size``-token chunks (default: the item's chunk_size) and locate the needles."""
    size = size or item.chunk_size
    if size is None:
        raise ConfigError("chunk_item() needs a size (the item was made without chunk_size)")
    chunks = chunk_text(item.text, size, tokenizer)
    return ChunkedItem(
        chunks=[c.text for c in chunks],
        gold_chunks=chunks_touching(chunks, *item.gold_span),
        distractor_chunks=[chunks_touching(chunks, s, e) for s, e in item.distractor_spans],
        spans=[(c.start, c.end) for c in chunks],
    )
