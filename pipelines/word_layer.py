"""A word-addressed memory layer (issue 17, part A): a shared word matches whatever its neighbours.

Why: the model's FwPKM layers key a token in its local context (the query goes through a short convolution
over the last tokens), so the store is a phrase matcher: the same words in another order read other slots.
This layer's query sees ONE unit alone — a lowercased word (or, for the diagnosis, one BPE token) — and is
addressed exactly like FwPKM addresses: product keys (two sub-key books of ``n_subkeys`` keys, IDW scores,
two-stage top-k), read weights by softmax over the selected scores, and per-slot provenance of the strongest
``per_slot`` writers (``ProvenanceTable``, weakest evicted). The state is bounded by construction: n² slots x
per_slot writers, whatever the corpus size. It is "the memory", not an inverted index: a word's postings
live in the k slots its query reads, shared with every other word that lands there, and a crowded slot keeps
only its strongest writers.

Queries. A unit's query is a fixed pseudo-random Gaussian vector seeded by a hash of the unit (no training,
no vocabulary table): equal units give equal queries on every machine, different units give independent ones.

Writes (``add``). Per chunk, each distinct unit writes the k slots it reads with strength
tf x read weight x length factor, the length factor (avg_len / len)^b being BM25's length normalisation (a
long chunk's count of a word means less). Chunks are written in the order given; ``writes`` counts the
(slot, chunk) write events of every slot.

Scores (``scores``). A question's distinct units read their k slots; a writer c of slot s scores

    idf(unit) x read weight x s_cs / (s_cs + saturation)

summed over units and slots, where idf comes from a count-min estimate of the unit's document frequency: the
fewest write events over the unit's k slots (collisions only ever add to a slot's count, so the least
crowded slot is the closest upper bound of the true df). Scores are {chunk id: score > 0}.

Inside the store (``FwPKMStore(word_layer=True)``, docs/addressing.md "In the store"): every segment's
``MemoryIndex`` owns one layer, written with the segment's chunk ids; a write call works on a ``clone()``
(dropped if the call fails), a sealed segment keeps the ``compacted()`` layer (filled entries only, as its
provenance), deleted chunks are filtered by the segment's alive flags (``scores(question, alive=...)``), and
``fuse_sources`` combines its scores with the lexical store's by the rule of docs/addressing.md.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fwpkm_rag.errors import ConfigError, InputError, InputTypeError, check_int
from fwpkm_rag.kernels.product_key import product_key_topk, read_weights
from fwpkm_rag.pipelines.provenance import CompactProvenance, ProvenanceTable, chunk_totals

_WORD = re.compile(r"\w+")
UNITS = ("word", "token")

WORD_CONTEXT = 8
"""Words of the preceding chunk of the same document that a store's word layer also writes for a chunk
(`chunk_word_texts`). Why: a fact cut by a chunk boundary ("... The secret number for ID-" | "7319 is 541001.")
leaves the chunk that holds its key with one of the question's words, while look-alike facts elsewhere hold
all the others, so the word layer (weight 8 in the fusion) would outvote the lexical memory, whose short
convolution reads the key in its context across the boundary. Eight words cover a short key phrase, as the
convolution covers the last few tokens."""

CANDIDATES = 50
"""The lexical store's candidate depth in the fusion (docs/addressing.md): each segment's top K = max(k, 50) by
the store's own ranking; chunks below it count 0 for the lexical source, as in any score fusion."""


@dataclass(frozen=True)
class WordLayerConfig:
    """Hyper-parameters of the word layer (all validated)."""

    n_subkeys: int = 128  # sub-keys per book: n² = 16,384 slots
    k_dim: int = 64  # query width (two halves of k_dim/2, one per sub-key book)
    topk: int = 4  # slots read / written per unit
    per_slot: int = 64  # writers kept per slot (weakest evicted)
    saturation: float = 0.5  # s / (s + saturation): BM25-like tf saturation
    length_b: float = 0.75  # length normalisation exponent (0: none)
    unit: str = "word"  # "word": lowercased \w+ words; "token": the model tokenizer's BPE tokens of the lowercased text
    seed: int = 0  # sub-keys and query vectors

    def __post_init__(self):
        check_int("n_subkeys", self.n_subkeys, 2)
        check_int("k_dim", self.k_dim, 2)
        if self.k_dim % 2:
            raise ConfigError(f"k_dim must be even (two sub-key halves), got {self.k_dim}")
        check_int("topk", self.topk, 1)
        if self.topk > self.n_subkeys:
            raise ConfigError(f"topk ({self.topk}) must be <= n_subkeys ({self.n_subkeys})")
        check_int("per_slot", self.per_slot, 1)
        check_int("seed", self.seed, 0)
        if not (self.saturation > 0 and math.isfinite(self.saturation)):
            raise ConfigError(f"saturation must be a positive number, got {self.saturation!r}")
        if not 0.0 <= self.length_b <= 1.0:
            raise ConfigError(f"length_b must be in [0, 1], got {self.length_b!r}")
        if self.unit not in UNITS:
            raise ConfigError(f"unit must be one of {UNITS}, got {self.unit!r}")

    @property
    def n_slots(self) -> int:
        return self.n_subkeys * self.n_subkeys


@lru_cache(maxsize=1 << 16)
def unit_query(unit: str, k_dim: int, seed: int) -> np.ndarray:
    """(k_dim,) float32: the unit's fixed query, N(0, 1/k_dim) seeded by sha256 of (seed, unit).

    A cache, not a table: dropping an entry only costs recomputing it."""
    digest = hashlib.sha256(f"{seed}\x00{unit}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return (rng.standard_normal(k_dim) / math.sqrt(k_dim)).astype(np.float32)


class WordLayer:
    """The word-addressed memory: ``add(chunk_texts, chunk_ids)``, ``scores(question)``, ``nbytes()``
    (the addressing-layer interface of docs/addressing.md)."""

    name = "word"

    def __init__(self, config: Optional[WordLayerConfig] = None, tokenizer=None, **overrides):
        self.config = config or WordLayerConfig(**overrides)
        if config is not None and overrides:
            raise ConfigError("give either a WordLayerConfig or keyword overrides, not both")
        c = self.config
        if c.unit == "token" and tokenizer is None:
            from fwpkm_rag.tokenizer import get_tokenizer

            tokenizer = get_tokenizer()
        self.tok = tokenizer
        gen = torch.Generator().manual_seed(c.seed)
        bound = 1.0 / math.sqrt(c.k_dim)
        # sub-keys, FwPKM's layout for one head: rows [book 0 (n); book 1 (n)], each k_dim/2 wide
        self.keys = (torch.rand(2 * c.n_subkeys, c.k_dim // 2, generator=gen) * 2 - 1) * bound  # (2n, k_dim/2)
        self.table = ProvenanceTable(1, c.n_slots, c.per_slot)
        self.n_chunks = 0  # chunks written
        self.n_units = 0  # units written (for the average chunk length)

    # ---- units and addressing ---------------------------------------------------------------------------
    def units(self, text: str) -> list[str]:
        """The text's units: lowercased words, or the BPE tokens of the lowercased text (as strings)."""
        low = text.lower()
        if self.config.unit == "word":
            return _WORD.findall(low)
        return [str(t) for t in self.tok.encode(low)]

    def address(self, units: Sequence[str]) -> tuple[Tensor, Tensor]:
        """slots (U, k) int64 and read weights (U, k) float32 of each unit, by product-key top-k."""
        c = self.config
        if not units:
            return torch.zeros(0, c.topk, dtype=torch.long), torch.zeros(0, c.topk)
        q = torch.from_numpy(np.stack([unit_query(u, c.k_dim, c.seed) for u in units]))  # (U, k_dim)
        slots, scores, _ = product_key_topk(q[None, :, None, :], self.keys[None], topk=c.topk)  # (1, U, 1, k)
        return slots[0, :, 0], read_weights(scores)[0, :, 0].float()  # (U, k) each

    # ---- writes -------------------------------------------------------------------------------------------
    def add(self, chunk_texts: Sequence[str], chunk_ids: Sequence[int]) -> None:
        """Write the chunks (in order): each distinct unit of a chunk writes its k slots.

        chunk_ids: ints >= 0, dense like the store's (liveness is one flag per id up to the largest); writing
        an id again adds to its strengths, as a chunk written in two pieces would."""
        texts, ids = _check_add(chunk_texts, chunk_ids)
        if self.compact:
            raise RuntimeError("a compacted word layer is read-only (a sealed segment's)")
        if not texts:
            return
        c = self.config
        per_chunk = [Counter(self.units(t)) for t in texts]
        lengths = [sum(cnt.values()) for cnt in per_chunk]
        self.n_chunks += len(texts)
        self.n_units += sum(lengths)
        avg = max(self.n_units / self.n_chunks, 1.0)  # running average: chunks written later see more of it
        vocab = sorted({u for cnt in per_chunk for u in cnt})
        row = {u: i for i, u in enumerate(vocab)}
        slots, weights = self.address(vocab)  # (V, k)
        unit_rows, tf, owner = [], [], []
        for cid, cnt, n in zip(ids, per_chunk, lengths):
            norm = (avg / max(n, 1)) ** c.length_b
            for u, f in cnt.items():
                unit_rows.append(row[u])
                tf.append(f * norm)
                owner.append(cid)
        r = torch.as_tensor(unit_rows, dtype=torch.long)  # (E,)
        strength = weights[r] * torch.as_tensor(tf, dtype=torch.float32)[:, None]  # (E, k)
        chunk = torch.as_tensor(owner, dtype=torch.long)[:, None].expand_as(strength)  # (E, k)
        self.table.record(0, slots[r], chunk, strength)

    # ---- reads --------------------------------------------------------------------------------------------
    def scores(self, question: str, alive: Optional[Tensor] = None, idf: Optional[Tensor] = None,
               address: Optional[tuple] = None) -> dict[int, float]:
        """{chunk id: score > 0} for the question (read-only). `alive`: (n,) bool flags of the chunk ids that
        may score (a store passes its segment's, so deleted chunks never score), on top of the layer's own.
        `idf`: (U,) the idf of the question's distinct units in sorted order, counted over other chunks too (a
        store's segments: `question_idf`), default over this layer's. `address`: (slots, weights) of those units
        from `address` of a layer of the same config (a store's layers share it: computed once per question)."""
        ids, total = self.score_tensors(question, alive, idf, address)
        return dict(zip(ids.tolist(), total.tolist()))

    def score_tensors(self, question: str, alive: Optional[Tensor] = None, idf: Optional[Tensor] = None,
                      address: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
        """`scores` as tensors: chunk ids (M,) int64, ascending, and their scores (M,) float32, all > 0 (what
        the store's fusion reads, without a dict per segment)."""
        if not isinstance(question, str):
            raise InputTypeError(f"the question must be a str, got {type(question).__name__}")
        none = (torch.zeros(0, dtype=torch.long), torch.zeros(0))
        units = sorted(set(self.units(question)))
        if not units or self.n_chunks == 0:
            return none
        c, table = self.config, self.table
        if alive is not None and alive.numel() < table.n_chunks:
            raise InputError(f"alive has {alive.numel()} flags, the layer holds chunk ids up to {table.n_chunks - 1}")
        slots, weights = self.address(units) if address is None else address  # (U, k)
        if idf is None:
            idf = word_idf([self], slots)  # (U,)
        elif idf.shape != (len(units),):
            raise InputError(f"idf has shape {tuple(idf.shape)}; the question has {len(units)} distinct units")
        read = (idf[:, None] * weights).reshape(-1)  # (U*k,) idf x read weight of each slot read
        # every writer of the slots read, slot by slot (a full table or a sealed segment's packed one alike)
        which, ids, strength = table.entries(0, slots.reshape(-1))  # (E,) each
        contrib = read[which] * strength / (strength + c.saturation)  # (E,)
        return chunk_totals(contrib, ids, table.alive, alive)

    # ---- the store's uses: transactions, sealing, persistence -------------------------------------------------
    @property
    def compact(self) -> bool:
        """True once `compacted()`: read-only (a sealed segment's layer)."""
        return isinstance(self.table, CompactProvenance)

    def clone(self) -> "WordLayer":
        """An independent copy to write on (a store's write call publishes it, or drops it on failure); the
        sub-keys, which nothing writes, are shared."""
        if self.compact:
            raise RuntimeError("a compacted word layer is read-only (a sealed segment's)")
        other = copy.copy(self)
        other.table = self.table.clone()
        return other

    def compacted(self) -> "WordLayer":
        """A read-only copy whose writers are packed back to back, filled entries only (`CompactProvenance`,
        chunk ids in 16 bits below 65,536 chunks): what a sealed segment keeps. Scores are the same, to the bit
        (the entries are read in the same order)."""
        if self.compact:
            return self
        other = copy.copy(self)
        other.table = CompactProvenance.from_table(self.table, 1)
        return other

    def state(self) -> tuple[dict, dict]:
        """(tensors, meta): the provenance table's tensors and the counters and config, for a store's database.
        The sub-keys and the queries are derived from the config's seed and need not be saved."""
        if self.compact:
            raise RuntimeError("a compacted word layer has no full table to save (save it before compacting)")
        meta = {"config": dataclasses.asdict(self.config), "n_chunks": self.n_chunks, "n_units": self.n_units}
        return dict(self.table.tensors()), meta

    @classmethod
    def from_state(cls, tensors: dict, meta: dict, tokenizer=None) -> "WordLayer":
        """The layer `state()` described (equal tensors, equal scores)."""
        layer = cls(WordLayerConfig(**meta["config"]), tokenizer=tokenizer)
        table = ProvenanceTable.from_tensors(tensors)
        if (table.n_layers, table.n_slots, table.per_slot) != (1, layer.config.n_slots, layer.config.per_slot):
            raise InputError(f"the saved word layer's table has shape {tuple(table.chunk.shape)}, its config says "
                             f"(1, {layer.config.n_slots}, {layer.config.per_slot})")
        layer.table, layer.n_chunks, layer.n_units = table, int(meta["n_chunks"]), int(meta["n_units"])
        return layer

    def nbytes(self) -> int:
        """Provenance table (writers, strengths, write counts, liveness) + sub-keys."""
        return int(self.table.nbytes() + self.keys.numel() * self.keys.element_size())


def chunk_word_texts(cores: Sequence[str], context: int = WORD_CONTEXT) -> list[str]:
    """What a store's word layer writes for consecutive chunks of one document, given their core texts in order:
    each core preceded by the last `context` words of the core before it (`WORD_CONTEXT`; the first chunk
    as it is)."""
    out, previous = [], ""
    for core in cores:
        tail = " ".join(_WORD.findall(previous)[-context:]) if context > 0 else ""
        out.append(f"{tail} {core}" if tail else core)
        previous = core
    return out


def _check_add(chunk_texts, chunk_ids) -> tuple[list[str], list[int]]:
    if isinstance(chunk_texts, str) or not isinstance(chunk_texts, Sequence):
        raise InputTypeError(f"chunk_texts must be a list of str, got {type(chunk_texts).__name__}")
    texts, ids = list(chunk_texts), list(chunk_ids)
    if len(texts) != len(ids):
        raise InputError(f"{len(texts)} chunk texts but {len(ids)} chunk ids")
    for i, (t, cid) in enumerate(zip(texts, ids)):
        if not isinstance(t, str):
            raise InputTypeError(f"chunk text {i} is {type(t).__name__}, not str")
        check_int("chunk id", cid, 0, error=InputError)
    return texts, ids


def word_counts(layers: Sequence[WordLayer], slots: Tensor) -> tuple[int, Tensor]:
    """(N, writes (U, k)): the chunks of all `layers` together and the summed write events of each slot read by
    the units whose slots are `slots` (U, k). Counts add over layers, segments and Ray actors alike."""
    first = layers[0]
    for other in layers[1:]:
        if other.config != first.config:
            raise ConfigError("word layers of different configs address words differently; their idf cannot be shared")
    writes = first.table.writes[0][slots]  # (U, k) write events of each slot read
    for other in layers[1:]:
        writes = writes + other.table.writes[0][slots]
    return sum(layer.n_chunks for layer in layers), writes


def idf_from_counts(n: int, writes: Tensor) -> Tensor:
    """(U,) BM25's idf from `word_counts`: df = the count-min estimate (the fewest write events over a unit's k
    slots: collisions only ever add, so the least crowded slot bounds the true df from above)."""
    df = writes.min(dim=1).values  # (U,) count-min estimate of the unit's document frequency
    return torch.log1p((float(n) - df + 0.5).clamp_min(0) / (df + 0.5))  # (U,) BM25's idf


def word_idf(layers: Sequence[WordLayer], slots: Tensor) -> Tensor:
    """(U,) BM25's idf of the units whose slots are `slots` (U, k), over the chunks of all `layers` together: N
    = their chunks, df = the count-min estimate over the summed write events of each slot read (layers of one
    config address a unit alike, so a slot counts the same units in each; sums of upper bounds bound the sum).
    A store's segments pass all their layers, so a word weighs the same in every segment, as the lexical
    question-token idf does (retrieval.store_idf). One layer: its own idf."""
    return idf_from_counts(*word_counts(layers, slots))


def question_word_counts(layers: Sequence[WordLayer], question: str) -> tuple[int, Tensor]:
    """`word_counts` of the question's distinct units (sorted, as `scores` orders them) over `layers`: what a
    Ray actor reports, so that the driver adds them up (`idf_from_counts`) into the store-wide word idf."""
    first = layers[0]
    return word_counts(layers, first.address(sorted(set(first.units(question))))[0])


def question_idf(layers: Sequence[WordLayer], question: str) -> Tensor:
    """(U,) the idf of the question's distinct units (sorted, as `scores` orders them) over the chunks of all
    `layers` (`word_idf`): computed once per question for a store, then passed to each layer's `scores`."""
    return idf_from_counts(*question_word_counts(layers, question))


def source_maxima(sources: Sequence[Sequence[dict]]) -> list[float]:
    """Each source's maximum score over every segment (0.0 for a source that found nothing)."""
    return [max((s for scores in per_segment for s in scores.values()), default=0.0) for per_segment in sources]


def flat_top(x, power: int):
    """1 - (1 - x)^power of a source's normalised score x in [0, 1] (a float or a tensor): 1 at the source's best
    chunk, flat near it and steep far from it, so a chunk close to the best one counts almost as much (the other
    sources decide among them) while a chunk far from it still counts little. power 1: x itself. The power is
    taken by repeated multiplication, so a float and a float64 tensor give the same bits."""
    if power == 1:
        return x
    y = 1.0 - x
    r = y
    for _ in range(power - 1):
        r = r * y
    return 1.0 - r


def fuse_sources(sources: Sequence[Sequence[dict]], weights: Sequence[float],
                 tops: Optional[Sequence[float]] = None, powers: Optional[Sequence[int]] = None) -> list[dict]:
    """One ranking out of several sources over a store's segments (docs/addressing.md, "How layers are
    combined"): `sources[s][g]` = {chunk id: score > 0} of source s in segment g. Each source's scores are divided
    by that source's maximum over EVERY segment (the store's best chunk scores 1 for it; a source that finds
    nothing adds 0), shaped by `flat_top` with `powers[s]` (default 1 for every source: the score as it is),
    weighted by `weights[s]` and summed per (segment, chunk), sources in order. `tops`: the sources' maxima when
    the store has more segments than these (a Ray actor's; the driver takes the maximum over the actors), default
    `source_maxima(sources)`. Returns per segment {chunk id: fused score > 0}."""
    n_segments = len(sources[0]) if sources else 0
    out: list[dict] = [{} for _ in range(n_segments)]
    tops = source_maxima(sources) if tops is None else list(tops)
    powers = [1] * len(sources) if powers is None else list(powers)
    for per_segment, w, top, power in zip(sources, weights, tops, powers):
        if len(per_segment) != n_segments:
            raise InputError(f"every source needs one score dict per segment ({n_segments}), got {len(per_segment)}")
        if not top > 0 or w == 0:
            continue
        for fused, scores in zip(out, per_segment):
            for c, s in scores.items():
                fused[c] = fused.get(c, 0.0) + (w * s / top if power == 1 else w * flat_top(s / top, power))
    return [{c: s for c, s in fused.items() if s > 0} for fused in out]
