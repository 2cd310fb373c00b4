"""Offline data for training and benchmarks: natural-text corpora and RULER-style needle tasks.

Nothing here downloads anything; see :mod:`fwpkm_rag.data.corpora` and :mod:`fwpkm_rag.data.needles`.
Submodules are imported on use so `import fwpkm_rag.data` stays cheap.
"""
from __future__ import annotations

_LAZY = {
    "haystack": "fwpkm_rag.data.corpora",
    "iter_haystack": "fwpkm_rag.data.corpora",
    "iter_documents": "fwpkm_rag.data.corpora",
    "iter_paragraphs": "fwpkm_rag.data.corpora",
    "list_documents": "fwpkm_rag.data.corpora",
    "split_of": "fwpkm_rag.data.corpora",
    "make_item": "fwpkm_rag.data.needles",
    "make_items": "fwpkm_rag.data.needles",
    "make_facts": "fwpkm_rag.data.needles",
    "chunk_text": "fwpkm_rag.data.needles",
    "chunk_item": "fwpkm_rag.data.needles",
    "NeedleItem": "fwpkm_rag.data.needles",
    "ChunkedItem": "fwpkm_rag.data.needles",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwpkm_rag.data' has no attribute {name!r}")
