"""The RAG core: a store whose index is an FwPKM model's memory, and its LangChain adapters.

The path of a document, one job per module:

    settings.py     StoreSettings: the store's settings, defaults and rules, in one place
    chunking.py     text checks, tokenizing, chunk spans, the token queue
    docstore.py     documents and chunks in SQLite
    index.py        MemoryIndex: memory + provenance + chunk counts of one segment, its two-phase transaction, IndexView
    segments.py     SegmentedIndex: the store's segments, the catalog of parts, calls over segments, fan-out + merge
    merge.py        merge_hits: the segments' rankings merged into one top k (raw, max, rrf)
    provenance.py   ProvenanceTable: per memory slot, the chunks that wrote it most strongly
    retrieval.py    question -> reads -> idf -> scores -> ranked Hits
    generation.py   prompts, the one decode loop, answers from memory and reader mode
    files.py        text files as documents
    persistence.py  one folder per segment, a catalog and a manifest, swapped atomically (save / load)
    distributed.py  DistributedIndex: segments held by Ray actors, queries fanned out and merged (ray on first use)
    langchain/      FwPKMStore, RayFwPKMStore, FwPKMRetriever, ChatFwPKM: thin LangChain adapters over the above

The public names below load on first use (`import fwpkm_rag` and `import fwpkm_rag.pipelines` stay light).
"""
from __future__ import annotations

_LAZY = {
    "FwPKMStore": "fwpkm_rag.pipelines.langchain.vectorstores",
    "FwPKMRetriever": "fwpkm_rag.pipelines.langchain.retrievers",
    "ChatFwPKM": "fwpkm_rag.pipelines.langchain.chat_models",
    "RayFwPKMStore": "fwpkm_rag.pipelines.langchain.ray_store",
    "StoreSettings": "fwpkm_rag.pipelines.settings",
    "MemoryIndex": "fwpkm_rag.pipelines.index",
    "SegmentedIndex": "fwpkm_rag.pipelines.segments",
    "Hit": "fwpkm_rag.pipelines.retrieval",
    "ProvenanceTable": "fwpkm_rag.pipelines.provenance",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwpkm_rag.pipelines' has no attribute {name!r}")
