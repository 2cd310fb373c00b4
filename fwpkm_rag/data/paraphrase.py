"""A paraphrase retrieval task whose questions share no content word with their facts (issue 9).

Why this task exists: the needle task's "paraphrase" question keeps the needle's key verbatim (``XY-123``), so
BM25 finds it by that rare token and the task never separates semantic from lexical retrieval. Here a fact
names its subject by a description ("the capital's oldest bridge") and the question names the same subject in
other words ("the most ancient river crossing in the seat of government"), so lexical matching has nothing to
hold on to. Every item is generated from a hand-written bank, seeded, into natural-text haystacks
(:func:`fwpkm_rag.data.corpora.haystack`, benchmark split).

The bank
--------
* :data:`CONCEPTS` — subjects (a place/object or a person). Each has the fact's wording of it, two or three
  question wordings, *near-duplicate* wordings (the fact's own words with one word changed in meaning: "the
  capital's newest bridge") and *trap* wordings (the question's words in another sense: "the ferry office in
  the seat of government"). A concept's ``kind`` says how the question reaches it: ``"synonym"`` (each content
  word replaced by a synonym) or ``"definition"`` (the fact uses one term, the question its meaning: "the town's
  cardiologist" / "the heart doctor of the municipality").
* :data:`RELATIONS` — what a fact says about its subject ("{X} was painted {V}."), with a direct question
  ("What colour did the decorators apply to {Y}?"), a *reordered* question (fronted clause or passive voice:
  "To {Y}, which hue was applied by the decorators?") and a trap sentence that uses the question's relation words
  without stating the relation. A question in the reordered form is counted as kind ``"reordered"``.

An item (:func:`make_item`) holds ``n_facts`` gold facts on distinct concepts, each asked once, and per fact
``near`` near-duplicate facts (same relation and wording, another subject, another value) and ``traps`` trap
sentences. No other inserted sentence that shares a content word with a fact's question, and no sentence of the
same concept, may sit in that fact's gold chunk (placement is retried until this holds), so the gold chunk gets
no lexical help from the task itself; only the haystack's own prose can share words with a question, by chance.

Honesty check: :func:`content_overlap` counts the content words (stop words removed, simple suffix
stemming) two texts share. For every generated question the overlap with its gold fact is 0, while every trap
sentence shares at least two content words with it (tests/pipelines/test_paraphrase_task.py; asserted here
by :func:`make_item` too).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from fwpkm_rag.errors import ConfigError, check_int

__all__ = [
    "CONCEPTS",
    "KINDS",
    "RELATIONS",
    "ChunkedParaphraseItem",
    "Concept",
    "ParaphraseFact",
    "ParaphraseItem",
    "Relation",
    "chunk_paraphrase_item",
    "content_overlap",
    "content_words",
    "fact_text",
    "make_item",
    "make_items",
    "question_text",
    "stem",
    "trap_text",
]

# ----------------------------------------------------------------------------------------------------------
# lexical overlap
# ----------------------------------------------------------------------------------------------------------
STOPWORDS = frozenset(
    """a an the of for is are was were be been being am in on at to by with from into onto over under near off
    out up down about across through per as than then so and or nor but if because while who whom whose which what
    when where why how many much more most less least very one ones it its itself this that these those there here
    do does did done doing has have had having will would shall should can could may might must not no yes any all
    each every some such own other another same also only just even still yet again ever i me my we our you your
    he him his she her they them their s t""".split()
)
_WORDS = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ingly", "edly", "ing", "ers", "est", "ies", "ied", "ed", "er", "es", "ly", "s")


def stem(word: str) -> str:
    """A deliberately simple suffix stripper ("bridges" -> "bridg", "painted" -> "paint", "oldest" -> "old").

    Crude on purpose: it conflates more inflections than it misses, which makes the zero-overlap check
    stricter, not looser.
    """
    w = word.lower()
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[: -len(suf)]
            break
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    return w


def content_words(text: str) -> set[str]:
    """Stems of the content words of ``text`` (lowercase alphanumeric runs minus :data:`STOPWORDS`)."""
    return {stem(w) for w in _WORDS.findall(text.lower().replace("'s ", " ")) if w not in STOPWORDS}


def content_overlap(a: str, b: str) -> int:
    """How many content-word stems ``a`` and ``b`` share (0 = no lexical handle from one to the other)."""
    return len(content_words(a) & content_words(b))


# ----------------------------------------------------------------------------------------------------------
# the bank
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    """A subject of facts, with the fact's wording, question wordings, near-duplicates and traps."""

    name: str
    type: str  # "thing" or "person": which relations fit it
    kind: str  # "synonym" or "definition"
    fact: tuple[str, ...]
    question: tuple[str, ...]
    near: tuple[str, ...]
    trap: tuple[str, ...]  # trap[j] echoes question[j]


@dataclass(frozen=True)
class Relation:
    """What a fact says about its subject: ``fact`` holds {X} and {V}; questions hold {Y}; ``trap`` holds {T}
    and {N} (a year) and reuses the question's relation words without stating the relation."""

    name: str
    types: tuple[str, ...]
    fact: str
    direct: str
    reordered: str
    trap: str
    values: str  # a key of _VALUES


def _c(name, type_, kind, fact, question, near, trap) -> Concept:
    return Concept(name, type_, kind, tuple(fact), tuple(question), tuple(near), tuple(trap))


CONCEPTS: tuple[Concept, ...] = (
    # ---- places and objects --------------------------------------------------------------------------------
    _c("oldest_bridge", "thing", "synonym", ["the capital's oldest bridge"],
       ["the most ancient river crossing in the seat of government",
        "the earliest span across the water in the nation's main city"],
       ["the capital's newest bridge", "the harbour's oldest bridge"],
       ["the ferry office in the seat of government beside the ancient river",
        "the main water taxi of the nation's earliest city"]),
    _c("lighthouse", "thing", "definition", ["the lighthouse on the northern cape"],
       ["the tall tower whose lamp warns ships away from the upper headland",
        "the beacon guiding sailors around the polar-side promontory"],
       ["the lighthouse on the southern cape", "the café beside the lighthouse on the northern cape"],
       ["the lamp shop of the tall tower district, which ships sailors' lanterns",
        "the headland tower where the sailors' guild warns members about debts"]),
    _c("warehouse", "thing", "synonym", ["the large warehouse by the docks"],
       ["the big storage depot close to the quay", "the huge stockroom beside the wharf"],
       ["the small warehouse by the docks", "the large warehouse behind the station docks"],
       ["the big quay restaurant with a storage depot for wine",
        "the huge wharf market whose stockroom sells fish"]),
    _c("observatory", "thing", "definition", ["the observatory on the hill"],
       ["the building where astronomers watch stars from high ground",
        "the place for studying planets through telescopes, up on the rise"],
       ["the library on the hill", "the observatory in the valley"],
       ["the high ground building where astronomers' children watch football",
        "the place selling telescopes and planets made of chocolate on the rise"]),
    _c("train_station", "thing", "synonym", ["the main train station"],
       ["the central railway terminus", "the principal rail hub"],
       ["the main bus station", "the old train station"],
       ["the central office of the railway workers' union, far from any terminus",
        "the principal's rail-themed birthday hub at the school"]),
    _c("aquarium", "thing", "definition", ["the aquarium downtown"],
       ["the building where fish and sea creatures are displayed in the city centre",
        "the marine animal exhibit hall in the urban core"],
       ["the aquarium uptown", "the planetarium downtown"],
       ["the city centre building where fish are sold and sea creatures are cooked",
        "the urban core exhibit hall for animal paintings"]),
    _c("chapel", "thing", "synonym", ["the tiny chapel in the forest"],
       ["the little church among the woods", "the small place of worship within the woodland"],
       ["the tiny chapel by the lake", "the tiny cabin in the forest"],
       ["the little church choir's picnic spot among the woods",
        "the small woodland camp that worship leaders use for retreats"]),
    _c("greenhouse", "thing", "definition", ["the greenhouse behind the school"],
       ["the glass structure for raising seedlings at the back of the academy",
        "the heated glazed shed where young plants sprout, at the rear of the pupils' campus"],
       ["the greenhouse behind the hospital", "the garage behind the school"],
       ["the academy's glass award structure for raising funds",
        "the campus shed at the rear of the pupils' car park where young plants are sold"]),
    _c("stone_tower", "thing", "synonym", ["the famous stone tower"],
       ["the renowned rock spire", "the celebrated granite turret"],
       ["the famous wooden tower", "the famous stone fountain"],
       ["the renowned rock band's spire-shaped stage", "the celebrated granite quarry's turret-shaped sign"]),
    _c("orphanage", "thing", "definition", ["the orphanage on the square"],
       ["the home for children without parents beside the plaza",
        "the refuge for parentless kids by the piazza"],
       ["the orphanage on the riverbank", "the pharmacy on the square"],
       ["the plaza home of parents whose children left for college",
        "the piazza refuge where kids' bicycles are parked"]),
    _c("castle", "thing", "synonym", ["the ruined castle above the village"],
       ["the crumbling fortress overlooking the hamlet", "the decayed stronghold perched over the small settlement"],
       ["the restored castle above the village", "the ruined mill above the village"],
       ["the hamlet's crumbling fortress-themed playground", "the small settlement's stronghold-shaped bakery sign"]),
    _c("cemetery", "thing", "definition", ["the cemetery at the edge of town"],
       ["the graveyard where the dead are buried on the outskirts",
        "the burial ground on the municipal fringe"],
       ["the cemetery at the centre of town", "the stadium at the edge of town"],
       ["the outskirts pub where stories of buried treasure and the dead are told",
        "the municipal fringe festival's burial-themed ground show"]),
    # ---- people ----------------------------------------------------------------------------------------------
    _c("cardiologist", "person", "definition", ["the town's cardiologist"],
       ["the heart doctor of the municipality", "the physician treating hearts across the borough"],
       ["the town's dermatologist", "the town's former cardiologist"],
       ["the doctor of philosophy who chairs the municipality's heart charity",
        "the borough physician's accountant, who treats everyone to lunch"]),
    _c("headmaster", "person", "synonym", ["the school's new headmaster"],
       ["the freshly appointed principal of the academy", "the recently hired head teacher"],
       ["the school's new janitor", "the school's previous headmaster"],
       ["the principal dancer freshly appointed to the academy ballet",
        "the head of the teacher union who was recently hired by a bank"]),
    _c("blacksmith", "person", "definition", ["the village blacksmith"],
       ["the metalworker who forges horseshoes for the hamlet", "the smith hammering iron at the country forge"],
       ["the village baker", "the village blacksmith's apprentice"],
       ["the lawyer for the hamlet's metalworker union who forges alliances",
        "the country singer hammering out songs about iron and horseshoes"]),
    _c("night_manager", "person", "synonym", ["the hotel's night manager"],
       ["the evening supervisor of the inn", "the overnight boss at the guesthouse"],
       ["the hotel's day manager", "the hotel's night porter"],
       ["the supervisor of the evening course on running an inn",
        "the boss of the overnight bus company next to the guesthouse"]),
    _c("veterinarian", "person", "definition", ["the zoo's veterinarian"],
       ["the animal doctor at the wildlife park", "the medic caring for creatures in the menagerie"],
       ["the zoo's accountant", "the zoo's former veterinarian"],
       ["the actor in the animal costume at the wildlife park",
        "the menagerie's souvenir seller, caring only for creatures made of plush"]),
    _c("violinist", "person", "synonym", ["the orchestra's lead violinist"],
       ["the concertmaster of the symphony", "the first fiddle of the philharmonic ensemble"],
       ["the orchestra's lead cellist", "the orchestra's second violinist"],
       ["the symphony fan who collects fiddle strings from every concertmaster",
        "the philharmonic ensemble's first ticket seller"]),
    _c("mayor", "person", "definition", ["the city's mayor"],
       ["the elected head of the municipal council", "the official leading the metropolis"],
       ["the city's deputy mayor", "the city's former mayor"],
       ["the clerk who leads tours of the municipal council building",
        "the official photographer of the metropolis marathon"]),
    _c("apprentice", "person", "synonym", ["the bakery's youngest apprentice"],
       ["the most junior trainee at the bread shop", "the least senior learner in the pastry kitchen"],
       ["the bakery's oldest apprentice", "the butcher's youngest apprentice"],
       ["the bread shop's junior trainee programme sponsor",
        "the pastry kitchen supplier who sells to the least senior learner"]),
    _c("navigator", "person", "definition", ["the ship's navigator"],
       ["the crew member who plots the vessel's course", "the sailor charting routes for the boat"],
       ["the ship's cook", "the ship's former navigator"],
       ["the course instructor who plots crew schedules at the vessel yard",
        "the boat dealer charting sales routes for sailor clubs"]),
    _c("curator", "person", "synonym", ["the museum's chief curator"],
       ["the head custodian of the gallery's collections", "the principal keeper of exhibits at the gallery"],
       ["the museum's assistant curator", "the museum's chief accountant"],
       ["the gallery café's head custodian", "the collections agency keeper who exhibits at art fairs"]),
    _c("beekeeper", "person", "definition", ["the local beekeeper"],
       ["the person tending honey-making hives nearby", "the keeper of honey insects in the neighbourhood"],
       ["the local postman", "the local beekeeper's neighbour"],
       ["the person selling honey cakes at the nearby hive-shaped kiosk",
        "the neighbourhood keeper of insect-themed board games"]),
    _c("pilot", "person", "synonym", ["the airline's senior pilot"],
       ["the most experienced aviator at the carrier", "the veteran captain flying for the air company"],
       ["the airline's junior pilot", "the airline's senior mechanic"],
       ["the carrier pigeon owner, an experienced aviator fan",
        "the veteran captain of the air company's football team"]),
)
"""The subjects. Every question wording shares no content word with its concept's fact wording (tested)."""

RELATIONS: tuple[Relation, ...] = (
    Relation("secret_number", ("thing", "person"), "The secret number of {X} is {V}.",
             "Which hidden figure belongs to {Y}?", "To {Y} belongs which hidden figure?",
             "A hidden figure belongs in the report on {T}, published in {N}.", "number7"),
    Relation("colour", ("thing",), "{X} was painted {V}.",
             "What colour did the decorators apply to {Y}?", "To {Y}, which hue was applied by the decorators?",
             "Decorators applied to renovate {T} in {N}, arguing about every hue and colour.", "colour"),
    Relation("built", ("thing",), "{X} was built in {V}.",
             "In what year was {Y} constructed?", "The construction of {Y} was completed in which year?",
             "A model of {T} was constructed for a year-long exhibition in {N}.", "year"),
    Relation("insured", ("thing",), "{X} is insured for {V} dollars.",
             "How much money would compensate for losing {Y}?",
             "If {Y} were destroyed, what sum would the policy pay out?",
             "A policy about losing money on {T} was debated until {N}.", "amount"),
    Relation("nickname", ("thing",), "The nickname of {X} is {V}.",
             "What do residents call {Y}?", "Among residents, how is {Y} known?",
             "Residents call for changes to {T}, known for its delays since {N}.", "nickname"),
    Relation("birthplace", ("person",), "{X} was born in {V}.",
             "What is the hometown of {Y}?", "From which place did {Y} originally come?",
             "The hometown paper wrote about {T}, originally a visitor to this place, in {N}.", "place"),
    Relation("pet", ("person",), "{X} has a cat named {V}.",
             "What does the feline owned by {Y} answer to?", "Owned by {Y}, the feline answers to what?",
             "A feline rescue owned by {T} opened in {N}.", "petname"),
    Relation("shift", ("person",), "{X} starts work at {V} every morning.",
             "At what hour does {Y} begin the daily shift?", "The daily shift of {Y} begins at what hour?",
             "A daily hour-long shift meeting with {T} began in {N}.", "time"),
)
"""What facts say. Fact, question and trap wordings use disjoint relation words (tested)."""

_COLOURS = ("teal", "maroon", "ochre", "turquoise", "lilac", "indigo", "mustard", "charcoal", "scarlet", "beige",
            "magenta", "khaki", "salmon", "navy", "violet", "cream")
_PLACES = ("Lisbon", "Oslo", "Nairobi", "Kyoto", "Montreal", "Valparaiso", "Tbilisi", "Porto", "Reykjavik", "Hanoi",
           "Cusco", "Gdansk", "Marrakesh", "Bergen", "Adelaide", "Tallinn", "Zanzibar", "Ljubljana", "Halifax", "Bruges")
_NICKNAMES = ("the Biscuit", "the Pelican", "the Marigold", "the Trombone", "the Porcupine", "the Hazelnut",
              "the Chameleon", "the Pineapple", "the Mandolin", "the Sunflower", "the Labyrinth", "the Carousel",
              "the Tangerine", "the Thimble", "the Hammock", "the Meteor")
_PETNAMES = ("Pickles", "Mochi", "Biscotti", "Noodle", "Juniper", "Pepper", "Waffles", "Ziggy", "Clementine",
             "Tofu", "Marmalade", "Pumpkin", "Gizmo", "Saffron", "Nutmeg", "Pretzel")
_VALUES = {
    "number7": lambda r: str(r.randint(1_000_000, 9_999_999)),
    "colour": lambda r: r.choice(_COLOURS),
    "year": lambda r: str(r.randint(1712, 1968)),
    "amount": lambda r: f"{r.randint(12, 990) * 1000:,}",
    "nickname": lambda r: r.choice(_NICKNAMES),
    "place": lambda r: r.choice(_PLACES),
    "petname": lambda r: r.choice(_PETNAMES),
    "time": lambda r: f"{r.randint(5, 9)}:{r.choice(('05', '10', '15', '20', '25', '35', '40', '45', '50', '55'))}",
}
KINDS = ("synonym", "definition", "reordered")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:] if s else s


def fact_text(relation: Relation, subject: str, value: str) -> str:
    return _cap(relation.fact.format(X=subject, V=value))


def question_text(relation: Relation, subject: str, reordered: bool) -> str:
    return _cap((relation.reordered if reordered else relation.direct).format(Y=subject))


def trap_text(relation: Relation, subject: str, year: str) -> str:
    return _cap(relation.trap.format(T=subject, N=year))


# ----------------------------------------------------------------------------------------------------------
# items
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ParaphraseFact:
    """One asked fact of an item, with the sentences inserted for it and their character spans."""

    concept: str
    relation: str
    kind: str  # "synonym", "definition" or "reordered"
    fact: str
    question: str
    answer: str
    span: tuple[int, int] = (0, 0)
    near: list[str] = field(default_factory=list)
    near_spans: list[tuple[int, int]] = field(default_factory=list)
    traps: list[str] = field(default_factory=list)
    trap_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ParaphraseItem:
    """A haystack of about ``length`` tokens holding ``facts`` (each asked) and their distractors."""

    text: str
    facts: list[ParaphraseFact]
    length: int
    length_req: int
    seed: int
    chunk_size: int


@dataclass
class ChunkedParaphraseItem:
    chunks: list[str]
    gold_chunks: list[int]  # per fact: the chunk holding its gold sentence
    near_chunks: list[set[int]]
    trap_chunks: list[set[int]]


def _check(n, name, lo=0):
    check_int(name, n, lo)


def make_item(length: int, seed: int = 0, n_facts: int = 6, near: int = 1, traps: int = 2, chunk_size: int = 128,
              split: str = "bench", sources: Sequence[str] | None = None, tokenizer=None) -> ParaphraseItem:
    """A paraphrase item of about ``length`` tokens: ``n_facts`` facts on distinct concepts, each with ``near``
    near-duplicate facts and ``traps`` trap sentences, at seeded sentence boundaries of a natural haystack.

    Placement is retried until every gold sentence lies inside one ``chunk_size``-token chunk that holds no
    other asked fact (when there are enough chunks), no sentence of its own concept and no inserted sentence
    sharing a content word with its question.
    """
    from fwpkm_rag.data.corpora import haystack as _haystack, tokenizer_or_default
    from fwpkm_rag.data.needles import chunk_text, cut_haystack, insert_sentences, chunks_touching, sentence_boundaries

    _check(length, "length", 64)
    _check(seed, "seed")
    _check(n_facts, "n_facts", 1)
    _check(near, "near")
    _check(traps, "traps")
    _check(chunk_size, "chunk_size", 16)
    if n_facts > len(CONCEPTS):
        raise ConfigError(f"n_facts={n_facts} exceeds the {len(CONCEPTS)} concepts of the bank")
    if near > min(len(c.near) for c in CONCEPTS) or traps > min(len(c.trap) for c in CONCEPTS):
        raise ConfigError(f"near <= {min(len(c.near) for c in CONCEPTS)} and traps <= "
                          f"{min(len(c.trap) for c in CONCEPTS)} (the bank's sizes)")
    tok = tokenizer_or_default(tokenizer)
    rng = random.Random(f"fwpkm-paraphrase:{split}:{seed}")
    concepts = rng.sample(CONCEPTS, n_facts)
    used_values: set[str] = set()

    def value(kind: str) -> str:
        for _ in range(1000):
            v = _VALUES[kind](rng)
            if v not in used_values:
                break
        used_values.add(v)
        return v

    facts: list[ParaphraseFact] = []
    for c in concepts:
        rel = rng.choice([r for r in RELATIONS if c.type in r.types])
        reordered = rng.random() < 1 / 3
        v = value(rel.values)
        j = rng.randrange(len(c.question))
        f = ParaphraseFact(c.name, rel.name, "reordered" if reordered else c.kind,
                           fact_text(rel, rng.choice(c.fact), v), question_text(rel, c.question[j], reordered), v)
        # traps: the one written for this question wording first, then the others
        order = [j % len(c.trap)] + rng.sample([t for t in range(len(c.trap)) if t != j % len(c.trap)], len(c.trap) - 1)
        f.traps = [trap_text(rel, c.trap[t], str(rng.randint(1950, 2020))) for t in order[:traps]]
        facts.append(f)
    for f, c in zip(facts, concepts):
        rel = next(r for r in RELATIONS if r.name == f.relation)
        f.near = [fact_text(rel, s, value(rel.values)) for s in rng.sample(c.near, near)]
        if content_overlap(f.question, f.fact) != 0:  # the bank is tested; this guards edits to it
            raise ConfigError(f"question {f.question!r} shares content words with its fact {f.fact!r}")

    sentences = []  # (fact index, role, j, text)
    for i, f in enumerate(facts):
        sentences.append((i, "gold", 0, f.fact))
        sentences += [(i, "near", j, s) for j, s in enumerate(f.near)]
        sentences += [(i, "trap", j, s) for j, s in enumerate(f.traps)]
    sent_tokens = sum(len(tok.encode(" " + s[3])) for s in sentences)
    budget = max(length - sent_tokens, 32)
    base = cut_haystack(_haystack(budget, seed=seed, split=split, sources=sources, tokenizer=tok), budget, tok)
    bounds = sentence_boundaries(base)

    text, spans = "", {}
    for attempt in range(200):
        offsets = [rng.choice(bounds) for _ in sentences]
        text, spans = insert_sentences(base, [(o, n, s[3]) for n, (o, s) in enumerate(zip(offsets, sentences))])
        chunks = chunk_text(text, chunk_size, tok)
        where = [chunks_touching(chunks, *spans[n]) for n in range(len(sentences))]
        if _placement_ok(facts, sentences, where, len(chunks)):
            break
    else:  # pragma: no cover - 200 tries fail only when the haystack is far too short for the sentences
        raise ConfigError(f"could not place {len(sentences)} sentences in {length} tokens with chunk_size={chunk_size}; "
                          "use a longer haystack, fewer facts or smaller chunks")
    for n, (i, role, _, _) in enumerate(sentences):
        f = facts[i]
        if role == "gold":
            f.span = spans[n]
        elif role == "near":
            f.near_spans.append(spans[n])
        else:
            f.trap_spans.append(spans[n])
    return ParaphraseItem(text, facts, len(tok.encode(text)), length, seed, chunk_size)


def _placement_ok(facts, sentences, where, n_chunks) -> bool:
    golds = [where[n][0] for n, s in enumerate(sentences) if s[1] == "gold" and where[n]]
    if len(set(golds)) < min(len(facts), n_chunks):  # one asked fact per chunk where the haystack allows it
        return False
    for n, (i, role, _, _) in enumerate(sentences):
        if role != "gold":
            continue
        if len(where[n]) != 1:
            return False
        gold = where[n][0]
        q = facts[i].question
        for m, (i2, _, _, s) in enumerate(sentences):
            if m != n and gold in where[m] and (i2 == i or content_overlap(q, s) > 0):
                return False
    return True


def chunk_paraphrase_item(item: ParaphraseItem, size: int | None = None, tokenizer=None) -> ChunkedParaphraseItem:
    """Cut the item into ``size``-token chunks (default its own chunk size) and locate every inserted sentence."""
    from fwpkm_rag.data.needles import chunk_text, chunks_touching

    chunks = chunk_text(item.text, size or item.chunk_size, tokenizer)
    gold = []
    for f in item.facts:
        touched = chunks_touching(chunks, *f.span)
        gold.append(touched[0])
    return ChunkedParaphraseItem(
        chunks=[c.text for c in chunks],
        gold_chunks=gold,
        near_chunks=[{i for s in f.near_spans for i in chunks_touching(chunks, *s)} for f in item.facts],
        trap_chunks=[{i for s in f.trap_spans for i in chunks_touching(chunks, *s)} for f in item.facts],
    )


def make_items(lengths: Sequence[int], per_length: int, seed: int = 0, **kwargs):
    """Yield ``per_length`` items per length, with distinct seeds derived from ``seed``."""
    for L in lengths:
        for r in range(per_length):
            yield make_item(L, seed=seed * 1_000_003 + 7_919 * (L % 999_983) + r, **kwargs)
