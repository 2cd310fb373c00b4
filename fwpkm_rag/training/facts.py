"""A grammar of training facts for chaining multi-token values (issue 15; used by `tiny-v2`'s data).

v1 learned from 8 fixed templates whose values were mostly 1-3 tokens, so it recalls the first token of a
value and loses the rest (docs/model-card.md: 6% right at 5+ tokens). Here a fact is

    <sentence form>(entity, attribute, value)      e.g. "For ticket ID-3390, the tracking number is 58 102 7741."

with an entity (a *train-split* key of fwpkm_rag.data.needles in an entity phrase), an attribute chosen by
the value's kind, and a value drawn from formats whose lengths cover 1 to 12+ tokens of the 32,768-rank
tokenizer: digit strings of any length (plain, grouped, dashed), letter+digit codes, dates in several
formats, amounts, times, multi-word names and places, words and phrases, hex ids and UUIDs. The
benchmark's *formats* (7-digit numbers, UUIDs, "Month D, YYYY", "A12" gates, places, words, amounts) are
inside this distribution; its *templates and keys* are not: every key passes `key_split(key) == "train"`,
and no sentence form, entity phrase or attribute uses a benchmark template's wording (tested against
BENCH_TEMPLATES' fact and question patterns).

Near keys (`near_key`) make distractors: the same entity phrase and attribute with a key one character (or
one name) away and another value, so that a reader must use the whole key.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from fwpkm_rag.data.needles import KEY_KINDS, key_split

# Value vocabularies: copies of fwpkm_rag.data.needles' lists as they were when tiny-v2 was trained, so the
# recipe reproduces its data even if the benchmark's lists change (and no private name crosses modules).
_FIRST = (
    "Helena Marco Aisha Tomas Ingrid Rafael Yuki Omar Greta Lucas Priya Dmitri Sofia Kwame Elena Mateo "
    "Hana Felix Amara Jonas Leila Victor Nadia Henrik Zara Pablo Mei Anders Lucia Tariq Ines Oskar Noor "
    "Bruno Vera Emil Sana Hugo Maya Iker "
).split()
_LAST = (
    "Varga Okafor Lindqvist Moreau Tanaka Castillo Novak Haddad Brennan Kowalski Mendes Petrov Adeyemi "
    "Larsen Fischer Romano Nakamura Duarte Sorensen Quinn Abara Vogel Ibarra Holm Marsh Ferreira Koenig "
    "Silva Dubois Yilmaz Hart Rossi Bauer Ortega Lund Keller Costa Weiss Navarro Sato "
).split()
_PLACES = (
    "Lisbon Oslo Nairobi Kyoto Montreal Valparaiso Tbilisi Porto Reykjavik Hanoi Cusco Gdansk Marrakesh "
    "Bergen Adelaide Tallinn Zanzibar Cordoba Ljubljana Halifax Bruges Mombasa Krakow Tromso Salzburg "
    "Cartagena Dakar Hobart Utrecht Sapporo Ghent Arequipa Trieste Windhoek Tampere Valencia Lucerne "
    "Asmara Quito Riga "
).split()
_WORD_VALUES = (
    "biscuit tornado saffron pelican marigold cathedral trombone avalanche porcupine lighthouse hazelnut "
    "telescope chameleon blizzard cinnamon dragonfly pineapple waterfall mandolin sunflower labyrinth "
    "paprika carousel nightingale tangerine compass thimble meteor hammock lavender "
).split()
_MONTHS = ("January February March April May June July August September October November December").split()

# ---- values: kind -> generator --------------------------------------------------------------------------------
_MORE_FIRST = "Agnes Basil Clara Desmond Edith Farid Gwen Idris Joao Katya Lorenzo Mirela Nils Odile Ravi".split()
_MORE_LAST = "Achterberg Bianchi Chowdhury Delacroix Eriksen Fontaine Gallagher Horvath Ivanova Jablonski".split()
_REGIONS = "Portugal Norway Kenya Japan Canada Chile Georgia Iceland Vietnam Peru Poland Morocco Australia".split()
_STREETS = "Harbor Mill Station Chapel Orchard Bridge Market Willow Granite Linden".split()
_PHRASE_ADJ = "blue quiet early broken silver patient wooden northern hollow bright".split()
_PHRASE_NOUN = "river window engine garden ladder signal kettle mirror canyon thistle".split()
_MONTH_ABBR = [m[:3] for m in _MONTHS]


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10**n - 1)) if n > 1 else str(rng.randint(0, 9))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(n))


def _number(rng):  # any length, 1-14 digits, skewed towards the 4-8 digits of real ids
    return _digits(rng, rng.choice((1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 10, 11, 12, 14)))


def _grouped(rng):  # phone-like or spaced digit groups
    sep = rng.choice((" ", "-", "."))
    return sep.join(_digits(rng, rng.choice((2, 3, 4))) for _ in range(rng.randint(2, 4)))


def _code(rng):  # letters and digits: K7, AB-482, XJ9-22K, QZ-4471-B, TRX4410
    shape = rng.choice(("LD", "LLDD", "LL-DDD", "LDL-DD", "LL-DDDD-L", "LLLDDDD", "DLL-DDL", "L-DDDDD"))
    return "".join(rng.choice(string.ascii_uppercase) if c == "L" else rng.choice(string.digits) if c == "D" else c
                   for c in shape)


def _date(rng):
    d, m, y = rng.randint(1, 28), rng.randrange(12), rng.randint(1900, 2030)
    return rng.choice((f"{_MONTHS[m]} {d}, {y}", f"{d} {_MONTHS[m]} {y}", f"{y}-{m + 1:02d}-{d:02d}",
                       f"{m + 1:02d}/{d:02d}/{y}", f"{_MONTHS[m]} {y}", f"{_MONTH_ABBR[m]} {d}, {y}",
                       f"the {d}th of {_MONTHS[m]}"))


def _amount(rng):
    n = rng.randint(1, 10 ** rng.randint(1, 7))
    return rng.choice((f"{n:,}", f"${n:,}", f"{n:,}.{rng.randint(0, 99):02d}", f"{rng.randint(1, 99)}.{rng.randint(1, 9)} million",
                       f"€{n:,}", f"{n}"))


def _time(rng):
    h, m = rng.randint(0, 23), rng.randint(0, 59)
    return rng.choice((f"{h:02d}:{m:02d}", f"{(h % 12) or 12}:{m:02d} {'am' if h < 12 else 'pm'}"))


def _name(rng):
    first, last = rng.choice(_FIRST + _MORE_FIRST), rng.choice(_LAST + _MORE_LAST)
    return rng.choice((f"{first} {last}", f"Dr. {first} {last}", f"{first} {_letters(rng, 1)}. {last}",
                       f"{first} {last}-{rng.choice(_LAST)}"))


def _place(rng):
    city = rng.choice(_PLACES)
    return rng.choice((city, city, f"{city}, {rng.choice(_REGIONS)}", f"{rng.randint(1, 220)} {rng.choice(_STREETS)} Street, {city}",
                       f"the old town of {city}"))


def _word(rng):
    return rng.choice((rng.choice(_WORD_VALUES), f"{rng.choice(_PHRASE_ADJ)} {rng.choice(_PHRASE_NOUN)}",
                       f"{rng.choice(_PHRASE_ADJ)}-{rng.choice(_PHRASE_NOUN)}-{rng.randint(1, 99)}"))


def _hexid(rng):
    return rng.choice((f"{_hex(rng, 4)}-{_hex(rng, 4)}", f"{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}", _hex(rng, 6),
                       f"{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}"))


VALUES = {"number": _number, "grouped": _grouped, "code": _code, "date": _date, "amount": _amount, "time": _time,
          "name": _name, "place": _place, "word": _word, "hex": _hexid}

# ---- attributes by value kind (none is a benchmark template's wording) ----------------------------------------
ATTRIBUTES = {
    "number": ("PIN", "reference number", "badge number", "ticket number", "tracking number", "extension",
               "batch number", "record number", "entry code", "customer number"),
    "grouped": ("phone number", "fax number", "routing number", "card number", "hotline"),
    "code": ("product code", "booking reference", "licence plate", "part number", "room code", "seat",
             "platform", "postcode", "model number"),
    "date": ("start date", "renewal date", "delivery date", "opening day", "deadline", "hire date",
             "expiry date", "inspection date"),
    "amount": ("balance", "budget", "price", "monthly rent", "salary", "deposit", "fine", "annual fee"),
    "time": ("check-in time", "opening time", "pickup time", "curfew"),
    "name": ("manager", "contact person", "owner", "doctor", "landlord", "supervisor", "tutor", "sponsor"),
    "place": ("home town", "destination", "office location", "warehouse", "headquarters", "birthplace",
              "holiday spot"),
    "word": ("password", "nickname", "favourite colour", "motto", "team name", "secret phrase"),
    "hex": ("hardware id", "checksum", "license key", "token", "fingerprint", "session id"),
}

# ---- entities: key kind -> phrases holding the key ------------------------------------------------------------
ENTITIES = {
    "id": ("order {key}", "ticket {key}", "patient {key}", "case {key}", "employee {key}", "member {key}"),
    "code": ("account {key}", "room {key}", "vehicle {key}", "unit {key}", "station {key}"),
    "name": ("{key}",),
    "word": ("the {key} project", "the {key} team", "the {key} club"),
    "hex": ("device {key}", "record {key}", "batch {key}", "node {key}"),
}

# sentence forms: (fact, question); {ent} entity phrase, {attr} attribute, {value} the value
FORMS = (
    ("The {attr} of {ent} is {value}.", "What is the {attr} of {ent}?"),
    ("{Ent}'s {attr} is {value}.", "What is {ent}'s {attr}?"),
    ("For {ent}, the {attr} is {value}.", "For {ent}, what is the {attr}?"),
    ("Please note that the {attr} for {ent} is {value}.", "What is the {attr} for {ent}?"),
    ("According to the records, the {attr} of {ent} is {value}.", "According to the records, what is the {attr} of {ent}?"),
    ("The {attr} of {ent} was recorded as {value}.", "What was the {attr} of {ent} recorded as?"),
    ("Record: the {attr} of {ent} is: {value}.", "Which {attr} does {ent} have?"),
    ("{Ent} has {attr} {value}.", "Which {attr} does {ent} have?"),
)


@dataclass(frozen=True)
class GrammarFact:
    """A generated fact: the sentence, its value, the question, and the answer's words before the value."""

    key: str
    value: str
    text: str
    question: str
    kind: str  # value kind (a key of VALUES)

    @property
    def prefix(self) -> str:
        return self.text[: self.text.rindex(self.value)]  # every form ends "{value}." (a key may contain it too)


@dataclass(frozen=True)
class Frame:
    """Everything of a fact but its key and value: distractors share it."""

    key_kind: str
    entity: str
    attr: str
    kind: str
    form: int

    def fill(self, key: str, value: str) -> GrammarFact:
        ent = self.entity.format(key=key)
        fact_form, q_form = FORMS[self.form]
        fields = dict(ent=ent, Ent=ent[:1].upper() + ent[1:], attr=self.attr, value=value)
        return GrammarFact(key, value, fact_form.format(**fields), q_form.format(**fields), self.kind)


def random_frame(rng: random.Random) -> Frame:
    key_kind = rng.choice(sorted(ENTITIES))
    kind = rng.choice(sorted(VALUES))
    return Frame(key_kind, rng.choice(ENTITIES[key_kind]), rng.choice(ATTRIBUTES[kind]), kind, rng.randrange(len(FORMS)))


def new_key(rng: random.Random, kind: str, used: set) -> str:
    """A train-split key of `kind` not in `used` (added to it)."""
    for _ in range(10_000):
        key = KEY_KINDS[kind](rng)
        if key not in used and key_split(key) == "train":
            used.add(key)
            return key
    raise RuntimeError(f"ran out of train keys of kind {kind!r}")


def near_key(rng: random.Random, key: str, kind: str, used: set) -> str:
    """A train-split key one character (names: one name) away from `key`, not in `used` (added to it); a fresh
    key of the same kind when no near one is free."""
    for _ in range(200):
        if kind == "name":
            first, last = key.split(" ", 1)
            cand = f"{first} {rng.choice(_LAST)}" if rng.random() < 0.5 else f"{rng.choice(_FIRST)} {last}"
        else:
            i = rng.choice([j for j, c in enumerate(key) if c.isalnum()])
            c = key[i]
            pool = string.digits if c.isdigit() else "0123456789abcdef" if kind == "hex" else (
                string.ascii_lowercase if c.islower() else string.ascii_uppercase)
            cand = key[:i] + rng.choice(pool.replace(c, "")) + key[i + 1:]
        if cand not in used and key_split(cand) == "train":
            used.add(cand)
            return cand
    return new_key(rng, kind, used)


def make_value(rng: random.Random, kind: str, avoid: set) -> str:
    for _ in range(100):
        v = VALUES[kind](rng)
        if v not in avoid:
            break
    avoid.add(v)
    return v
