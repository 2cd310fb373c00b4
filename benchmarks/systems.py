"""The retrieval systems of the benchmark suite (issue 7) behind one interface, and the model they share.

Every system has ``add(chunks)``, ``search(query, k) -> [(chunk_index, score)]`` and ``nbytes()`` (resident
index bytes, documents excluded), exactly like :mod:`fwpkm_rag.benchmarks.baselines`. FwPKM joins them through
:class:`FwPKMSystem`, a thin adapter over the public ``FwPKMStore`` (langchain_core VectorStore): each benchmark
chunk is added as one text with ``id=str(chunk_index)``, so a returned ``Document.id`` is the chunk index.

Dense baselines share one MiniLM encoding of the chunks per corpus (:class:`SystemSet`): the vectors are
computed once, timed, and handed to FAISS flat / HNSW / Chroma, whose ingest time is then *encode time + their
own add time* (the embedding is part of a vector store's ingest cost, so it is charged to each of them).
langchain_core's InMemoryVectorStore always embeds through its own ``add_texts`` (no shortcut into its
internals), so it pays its own encoding and is optional in long sweeps (``inmemory_max_chunks``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from fwpkm_rag.errors import ConfigError

FWPKM = "fwpkm"
DENSE_SHARED = ("minilm-faiss-flat", "minilm-faiss-hnsw", "minilm-chroma", "ensemble-bm25-minilm")
DEFAULT_SYSTEMS = (FWPKM, "bm25", "minilm-faiss-flat", "minilm-faiss-hnsw", "minilm-inmemory", "minilm-chroma")


class FwPKMSystem:
    """FwPKM retrieval (the model's memory + provenance table) with the baselines' add/search/nbytes calls.

    ``chunk_tokens`` of the store is set to twice the benchmark chunk size: a benchmark chunk re-tokenized on
    its own can come out a token or two longer than the size it was cut at, and it must stay ONE store chunk so
    that every system ranks exactly the same units.
    """

    name = FWPKM
    accepts_embeddings = False

    def __init__(self, model, chunk_size: int = 256, per_slot: int = 32, piece_tokens: int = 2048):
        from fwpkm_rag.pipelines import FwPKMStore

        # the lexical memory alone (the word layer, on by default in the store, is measured as its own system)
        self.store = FwPKMStore(model=model, chunk_tokens=2 * chunk_size, per_slot=per_slot,
                                piece_tokens=piece_tokens, word_layer=False)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, chunks: Sequence[str]) -> None:
        chunks = list(chunks)
        if not chunks:
            return
        self.store.add_texts(chunks, ids=[str(self.n + i) for i in range(len(chunks))])
        self.n += len(chunks)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for doc, score in self.store.similarity_search_with_score(query, k=k):
            idx = int(doc.id)
            if idx not in seen:  # one chunk per document by construction; guard anyway
                seen.add(idx)
                out.append((idx, float(score)))
        return out

    def nbytes(self) -> int:
        """Memory states (fast weights + KV window) + provenance table + token counts; no documents."""
        return int(self.store.index.nbytes())

    def close(self) -> None:
        self.store.close()


def fwpkm_factory(model, chunk_size: int = 256, **kwargs):
    """A SystemSet ``extra`` factory: FwPKM retrieval over another model with the FwPKMForCausalLM interface
    (e.g. a pretrained backbone with FwPKM attached), used exactly as the ``fwpkm`` system uses its model."""

    def make() -> FwPKMSystem:
        return FwPKMSystem(model, chunk_size=chunk_size, **kwargs)

    return make


def load_model_described(path: Optional[str] = None, dev_preset: Optional[str] = None):
    """(model, description, load seconds). The shipped model unless ``path``; while the shipped checkpoint is
    missing (it is being trained) fall back to ``build_model(dev_preset or "tiny")`` and say so in the
    description, so no result is ever mistaken for the trained model's."""
    from fwpkm_rag import load_model

    start = time.perf_counter()
    if path:
        model = load_model(path)
        desc = f"checkpoint {path}"
    elif dev_preset is None:
        try:
            model = load_model(None)
            desc = "shipped default model (fwpkm_rag/default_model)"
        except FileNotFoundError:
            dev_preset = "tiny"
    if dev_preset is not None and not path:
        from fwpkm_rag.training.loop import build_model

        model = build_model(dev_preset).eval()
        desc = (f"UNTRAINED build_model({dev_preset!r}) (recall-ready init, random weights): the shipped "
                f"checkpoint was not available; retrieval acts as a hashed n-gram index")
    return model, desc, time.perf_counter() - start


def model_for_run(model=None, model_path: Optional[str] = None):
    """(model, description, load seconds or None) for a benchmark run: the model passed in, or the checkpoint at
    `model_path` (the shipped one when None) loaded and named by its weights' sha256."""
    if model is not None:
        return model, getattr(model.config, "_name_or_path", "") or "model passed in", None
    from fwpkm_rag.benchmarks.common import checkpoint_fingerprint

    model, desc, seconds = load_model_described(model_path)
    return model, desc + checkpoint_fingerprint(model_path), seconds


@dataclass
class Built:
    system: object
    ingest_s: float
    n_chunks: int


@dataclass
class SystemSet:
    """Builds the systems named in ``names`` over one list of chunks, with timed ingestion."""

    names: Sequence[str]
    model: object = None
    chunk_size: int = 256
    inmemory_max_chunks: Optional[int] = None  # skip InMemoryVectorStore above this many chunks (it re-embeds)
    encoder: object = None
    skipped: dict = field(default_factory=dict)
    # more systems by name: a factory called with no arguments returns a fresh, empty system (add/search/
    # nbytes[/close]); e.g. {"fwpkm-smollm2": fwpkm_factory(other_model, chunk_size)}. They may be named in
    # ``names`` or not (then they are appended).
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from fwpkm_rag.benchmarks.baselines import BASELINES, available_baselines

        self.extra = dict(self.extra or {})
        avail = set(available_baselines()) | {FWPKM} | set(self.extra)
        names = []
        for n in list(self.names) + [e for e in self.extra if e not in self.names]:
            if n != FWPKM and n not in BASELINES and n not in self.extra:
                raise ConfigError(f"unknown system {n!r}; choose from {[FWPKM, *BASELINES, *self.extra]}")
            if n not in avail:
                self.skipped[n] = "library not installed"
                continue
            names.append(n)
        self.names = names
        if FWPKM in names and self.model is None:
            raise ConfigError("the fwpkm system needs a model")
        if any(n.startswith("minilm") or n == "ensemble-bm25-minilm" for n in names) and self.encoder is None:
            from fwpkm_rag.benchmarks.baselines import MiniLMEncoder

            self.encoder = MiniLMEncoder.shared()

    def build(self, chunks: list[str], only: Optional[Sequence[str]] = None) -> dict[str, Built]:
        """Fresh systems holding ``chunks``; ingest seconds include MiniLM encoding for every dense system."""
        from fwpkm_rag.benchmarks.baselines import make_baseline

        names = [n for n in self.names if only is None or n in only]
        out: dict[str, Built] = {}
        emb, enc_s = None, 0.0
        if any(n in DENSE_SHARED for n in names):
            start = time.perf_counter()
            emb = self.encoder.encode(chunks)
            enc_s = time.perf_counter() - start
        for n in names:
            if n == "minilm-inmemory" and self.inmemory_max_chunks is not None and len(chunks) > self.inmemory_max_chunks:
                continue
            if n in self.extra:
                sys_ = self.extra[n]()
            elif n == FWPKM:
                sys_ = FwPKMSystem(self.model, chunk_size=self.chunk_size)
            elif n.startswith("minilm") or n == "ensemble-bm25-minilm":
                sys_ = make_baseline(n, encoder=self.encoder)
            else:
                sys_ = make_baseline(n)
            start = time.perf_counter()
            if n in DENSE_SHARED:
                sys_.add(chunks, embeddings=emb)
                secs = time.perf_counter() - start + enc_s
            else:
                sys_.add(chunks)
                secs = time.perf_counter() - start
            out[n] = Built(sys_, secs, len(chunks))
        return out


def close_all(built: dict[str, Built]) -> None:
    """Release what a system holds outside Python objects (Chroma's temp folder, the store's SQLite)."""
    for b in built.values():
        close = getattr(b.system, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # pragma: no cover - best effort cleanup
                pass
