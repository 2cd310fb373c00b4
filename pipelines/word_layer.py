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
"""
from __future__ import annotations

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
from fwpkm_rag.pipelines.provenance import ProvenanceTable

_WORD = re.compile(r"\w+")
UNITS = ("word", "token")


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
    def scores(self, question: str) -> dict[int, float]:
        """{chunk id: score > 0} for the question (read-only)."""
        if not isinstance(question, str):
            raise InputTypeError(f"the question must be a str, got {type(question).__name__}")
        units = sorted(set(self.units(question)))
        if not units or self.n_chunks == 0:
            return {}
        c, table = self.config, self.table
        slots, weights = self.address(units)  # (U, k)
        writes = table.writes[0][slots]  # (U, k) write events of each slot read
        df = writes.min(dim=1).values  # (U,) count-min estimate of the unit's document frequency
        n = float(self.n_chunks)
        idf = torch.log1p((n - df + 0.5).clamp_min(0) / (df + 0.5))  # (U,) BM25's idf
        chunk = table.chunk[0, slots].long()  # (U, k, m)
        strength = table.strength[0, slots].float()  # (U, k, m)
        valid = chunk >= 0
        valid &= table.alive[chunk.clamp_min(0)]
        contrib = (idf[:, None, None] * weights[..., None] * strength / (strength + c.saturation))[valid]  # (E,)
        ids = chunk[valid]
        if not ids.numel():
            return {}
        uniq, inv = torch.unique(ids, return_inverse=True)
        total = torch.zeros(uniq.numel()).index_add_(0, inv, contrib)
        return {int(i): float(s) for i, s in zip(uniq.tolist(), total.tolist()) if s > 0}

    def nbytes(self) -> int:
        """Provenance table (writers, strengths, write counts, liveness) + sub-keys."""
        return int(self.table.nbytes() + self.keys.numel() * self.keys.element_size())


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
