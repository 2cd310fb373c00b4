"""`FwPKMStore`: a LangChain VectorStore over `SegmentedIndex` (segments.py: segments of `MemoryIndex`, queries
fanned out and merged).

Thin: LangChain's argument shapes (iterables of texts / Documents / paths, ids, metadatas) become the
(id, text, metadata) items the index ingests, and `Hit`s become Documents. Two views of a search result
(docs/usage.md):
- `similarity_search[_with_score]` return Documents exactly as stored: page_content = the chunk text,
  metadata = the parent document's metadata unchanged, id = the parent document's id (LangChain's contract).
- `search_with_provenance` returns `Hit`s, and `FwPKMRetriever` (also `store.as_retriever()`) returns Documents
  whose metadata carries one extra key, "fwpkm": {chunk_id, chunk_index, score, rank, source, matched_slots}.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from fwpkm_rag.errors import InputError, InputTypeError
from fwpkm_rag.pipelines.files import file_documents
from fwpkm_rag.pipelines.langchain.retrievers import FwPKMRetriever
from fwpkm_rag.pipelines.retrieval import Hit
from fwpkm_rag.pipelines.segments import SegmentedIndex
from fwpkm_rag.pipelines.settings import StoreSettings

_ADD_ARGS = ("passes", "show_progress", "max_document_chars")  # settings one add call may override


class FwPKMStore(VectorStore):
    """A LangChain vector store whose index is an FwPKM language model's memory (no embeddings).

    `FwPKMStore(model=None, settings=None, **settings_kwargs)`: with no model, the shipped default
    (`fwpkm_rag.load_default_model()`); the keyword arguments are `StoreSettings` fields (chunk_tokens=256,
    chunk_overlap=0, piece_tokens=2048, per_slot=32, passes=1, show_progress=False, max_query_tokens=8192,
    max_document_chars=10,000,000, segment_tokens=65536, merge="raw", word_layer=True, word_weight=8.0, word_topk=2), applied
    on top of `settings`. Each store has its own isolated memories: a list of segments of at most `segment_tokens`
    stream tokens each, queried together (docs/segments.md).

    `word_layer=True` (the default): every segment also keeps a word layer (a memory addressed by each word alone),
    and searches rank by the fusion of both sources (docs/addressing.md, "In the store"): a chunk is found by its
    words in another order, as BM25 finds it, and one fact among thousands of look-alikes. Scores are fused scores
    (the best chunk of a source scores 1 for it). `word_layer=False`: the lexical memories alone (raw scores).

    `max_document_chars`: a longer document raises DocumentTooLargeError before it is tokenized and its add
    call changes nothing; pass None (here or to one add call) to ingest documents of any size, in memory
    proportional to the document (about 6 bytes per character on top of the text itself).
    """

    def __init__(self, model=None, settings: Optional[StoreSettings] = None, *,
                 _index: Optional[SegmentedIndex] = None, **settings_kwargs: Any):
        if _index is None:
            settings = (StoreSettings() if settings is None else settings).replace(**settings_kwargs)
            _index = SegmentedIndex(model if model is not None else _default_model(), settings)
        self.index = _index

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def model(self):
        return self.index.model

    @property
    def settings(self) -> StoreSettings:
        return self.index.settings

    @property
    def embeddings(self) -> Optional[Embeddings]:
        return None  # no embedding model: the memory is the index

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (f"FwPKMStore(documents={len(self)}, segments={len(self.index.segments)}, "
                f"chunks={self.index.n_live_chunks}, "
                f"tokens_ingested={self.index.tokens_ingested}, chunk_tokens={self.settings.chunk_tokens})")

    # ---- adding -------------------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: Optional[Iterable[dict]] = None, *,
                  ids: Optional[Iterable[Optional[str]]] = None, **kwargs: Any) -> list[str]:
        """Stream texts (any iterable, e.g. a generator) into the memory; returns their ids."""
        if isinstance(texts, (str, bytes, bytearray)):
            raise InputTypeError("add_texts() takes an iterable of texts; wrap a single text in a list")
        if isinstance(metadatas, dict):
            raise InputTypeError("metadatas must be an iterable of dicts (one per text), got a single dict")
        _check_ids_arg(ids, "add_texts")
        meta_it = iter(metadatas) if metadatas is not None else None
        id_it = iter(ids) if ids is not None else None

        def items():
            for n, text in enumerate(texts):
                meta = _next(meta_it, "metadatas", n) if meta_it is not None else None
                doc_id = _next(id_it, "ids", n) if id_it is not None else None
                yield doc_id, text, meta

        return self.index.add(items(), **_add_kwargs(kwargs))

    def add_documents(self, documents: Iterable[Document], **kwargs: Any) -> list[str]:
        """Stream Documents (any iterable); ids from `ids=` or else each Document's own id (or new uuids)."""
        if isinstance(documents, Document):
            raise InputTypeError("add_documents() takes an iterable of Documents; wrap a single Document in a list")
        ids = kwargs.pop("ids", None)
        _check_ids_arg(ids, "add_documents")
        id_it = iter(ids) if ids is not None else None

        def items():
            for n, doc in enumerate(documents):
                if not isinstance(doc, Document):
                    raise InputTypeError(f"add_documents() takes Documents, got {type(doc).__name__} at #{n}")
                doc_id = _next(id_it, "ids", n) if id_it is not None else doc.id
                yield doc_id, doc.page_content, dict(doc.metadata)

        return self.index.add(items(), **_add_kwargs(kwargs))

    def add_files(self, paths: Iterable, **kwargs: Any) -> list[str]:
        """Ingest text files one by one (each a document; id = its path, metadata {"source": path})."""
        add_kwargs = _add_kwargs(kwargs)
        limit = add_kwargs.get("max_document_chars", self.settings.max_document_chars)
        return self.index.add(file_documents(paths, limit), **add_kwargs)

    @classmethod
    def from_texts(cls, texts: Iterable[str], embedding: Optional[Embeddings] = None,
                   metadatas: Optional[Iterable[dict]] = None, *, ids: Optional[Iterable[str]] = None,
                   model=None, **kwargs: Any) -> "FwPKMStore":
        """A new store holding `texts`. `embedding` is accepted for LangChain compatibility and ignored."""
        store = cls(model=model, **_settings_kwargs(kwargs))
        store.add_texts(texts, metadatas, ids=ids, **kwargs)
        return store

    @classmethod
    def from_documents(cls, documents: Iterable[Document], embedding: Optional[Embeddings] = None, *,
                       model=None, **kwargs: Any) -> "FwPKMStore":
        store = cls(model=model, **_settings_kwargs(kwargs))
        store.add_documents(documents, **kwargs)
        return store

    # ---- deleting and reading back ------------------------------------------------------------------------
    def delete(self, ids: Optional[Sequence[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Drop documents by id (all when ids is None); their chunks are never returned again."""
        self.index.delete(None if ids is None else _id_list(ids, "delete"))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        ids = _id_list(ids, "get_by_ids")
        return [Document(page_content=text, metadata=meta, id=doc_id) for doc_id, text, meta in self.index.get(ids)]

    def rebuild(self, **kwargs: Any) -> "FwPKMStore":
        """Re-ingest the live documents into a fresh memory and provenance table, so that deleted or replaced
        content is gone from the fast weights too (a delete alone only hides its chunks from retrieval).
        Costs a full re-ingestion; readers keep being served from the old state until the swap."""
        add_kwargs = _add_kwargs(kwargs)
        add_kwargs.pop("max_document_chars", None)  # the live documents were admitted already
        self.index.rebuild(**add_kwargs)
        return self

    def compact(self, min_live_fraction: float = 0.5, **kwargs: Any) -> list[int]:
        """Rebuild only the segments whose live chunks fell below `min_live_fraction` of their chunks (deletes
        and replacements leave dead chunks behind), from their stored parts; the others are not touched.
        Returns the ids of the segments rebuilt (or dropped, when nothing in them was live)."""
        add_kwargs = _add_kwargs(kwargs)
        add_kwargs.pop("max_document_chars", None)
        add_kwargs.pop("show_progress", None)
        return self.index.compact(min_live_fraction, **add_kwargs)

    # ---- search -------------------------------------------------------------------------------------------
    def search_with_provenance(self, query: str, k: int = 4, *, matched_slots: int = 8) -> list[Hit]:
        """Hits with their provenance: chunk id and index, score, rank, the parent's metadata, matched slots."""
        return self.index.search(query, k, with_matches=matched_slots > 0, match_top=matched_slots)

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return [(Document(page_content=h.text, metadata=h.metadata, id=h.doc_id), h.score)
                for h in self.index.search(query, k)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def _select_relevance_score_fn(self):
        return lambda score: score / (1.0 + score)  # memory scores are >= 0; map to [0, 1)

    def as_retriever(self, **kwargs: Any) -> FwPKMRetriever:
        """A FwPKMRetriever over this store (Documents with the "fwpkm" provenance metadata).

        Accepts LangChain's `search_kwargs={"k": 4}` as well as `k=4`."""
        search_kwargs = kwargs.pop("search_kwargs", None) or {}
        kwargs.pop("search_type", None)
        k = kwargs.pop("k", search_kwargs.get("k", 4))
        return FwPKMRetriever(store=self, k=k, **kwargs)

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, directory) -> str:
        """Save the store into `directory` atomically (one folder per segment, sealed ones written once, a catalog
        and a manifest; docs/segments.md); returns the path of the manifest now current."""
        from fwpkm_rag.pipelines.persistence import save_store

        return save_store(self.index, directory)

    @classmethod
    def load(cls, directory, model=None, **overrides: Any) -> "FwPKMStore":
        """Load the store saved in a folder (segmented, or a single-memory store of earlier versions as one
        segment). `model` must be the model it was built with (default:
        the shipped model); raises ModelMismatchError otherwise, StateFormatError for a corrupted snapshot.
        `overrides`: StoreSettings fields on top of the saved ones (e.g. max_document_chars)."""
        from fwpkm_rag.pipelines.persistence import load_store

        model = model if model is not None else _default_model()
        return cls(_index=load_store(directory, model, **overrides))

    def close(self) -> None:
        self.index.close()


def _default_model():
    from fwpkm_rag.default_model import load_default_model  # lazy: the shipped checkpoint is optional here

    return load_default_model()


def _settings_kwargs(kwargs: dict) -> dict:
    """Pop the StoreSettings fields out of from_texts / from_documents' **kwargs (the rest go to add)."""
    names = StoreSettings.field_names()
    return {name: kwargs.pop(name) for name in list(kwargs) if name in names}


def _add_kwargs(kwargs: dict) -> dict:
    return {name: kwargs.pop(name) for name in _ADD_ARGS if name in kwargs}


def _check_ids_arg(ids, where: str) -> None:
    if isinstance(ids, (str, bytes, bytearray)):
        raise InputTypeError(f"{where}(): ids must be a list of str (one per text), got a single {type(ids).__name__}")


def _id_list(ids, where: str) -> list[str]:
    """A list of str ids; a bare str (which would iterate as characters) or non-str ids raise."""
    if isinstance(ids, (str, bytes, bytearray)):
        raise InputTypeError(f"{where}() takes a list of ids, got a single {type(ids).__name__} {ids!r}; "
                             f"wrap it in a list")
    out = list(ids)
    for n, doc_id in enumerate(out):
        if not isinstance(doc_id, str):
            raise InputTypeError(f"{where}(): ids must be str, got {type(doc_id).__name__} {doc_id!r} at #{n}")
    return out


def _next(it, what: str, n: int):
    try:
        return next(it)
    except StopIteration:
        raise InputError(f"{what} has fewer entries than the texts (ran out at #{n})") from None
