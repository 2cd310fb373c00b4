"""Ingestion, provenance retrieval, LangChain integration and benchmarks.

The LangChain classes load on first use (`import fwpkm_rag` and `import fwpkm_rag.pipelines` stay light).
"""
from __future__ import annotations

_LAZY = {
    "FwPKMStore": "fwpkm_rag.pipelines.langchain",
    "FwPKMRetriever": "fwpkm_rag.pipelines.langchain",
    "ChatFwPKM": "fwpkm_rag.pipelines.langchain",
    "MemoryIndex": "fwpkm_rag.pipelines.ingest",
    "Hit": "fwpkm_rag.pipelines.retrieval",
    "ProvenanceTable": "fwpkm_rag.pipelines.provenance",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwpkm_rag.pipelines' has no attribute {name!r}")
