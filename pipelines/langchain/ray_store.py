"""`RayFwPKMStore`: the LangChain VectorStore of `FwPKMStore` over segments held by Ray actors
(pipelines/distributed.py, docs/scale-out.md). Importing this module does not import ray; building a store does."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from fwpkm_rag.pipelines.distributed import DistributedIndex
from fwpkm_rag.pipelines.langchain.vectorstores import FwPKMStore
from fwpkm_rag.pipelines.settings import StoreSettings

_RAY_ARGS = ("num_workers", "address", "threads", "cpus_per_worker")


class RayFwPKMStore(FwPKMStore):
    """FwPKMStore whose segments live in `num_workers` Ray actors; the same VectorStore interface.

    `RayFwPKMStore(num_workers=2, address=None, model=None, settings=None, threads=1, cpus_per_worker=1,
    **settings_kwargs)`: `address=None` starts a local Ray (no dashboard, num_workers x cpus_per_worker CPUs)
    unless one is running in this process; an address ("ray://host:10001", "host:6379" or "auto") connects to an
    existing cluster. `threads`: torch threads per actor. Documents are spread over the actors, questions fan out
    to all of them and are merged like the local store's segments; `save` writes the local store's format
    (`FwPKMStore.load` opens it) and `RayFwPKMStore.load` opens any store folder. Call `close()` to stop the
    actors (and the local Ray this store started)."""

    def __init__(self, num_workers: int = 2, address: Optional[str] = None, model=None,
                 settings: Optional[StoreSettings] = None, *, threads: int = 1, cpus_per_worker: float = 1,
                 _index: Optional[DistributedIndex] = None, **settings_kwargs: Any):
        if _index is None:
            settings = (StoreSettings() if settings is None else settings).replace(**settings_kwargs)
            _index = DistributedIndex(model, settings, num_workers=num_workers, address=address, threads=threads,
                                      cpus_per_worker=cpus_per_worker)
        super().__init__(_index=_index)

    @property
    def num_workers(self) -> int:
        return self.index.num_workers

    def __repr__(self) -> str:
        return f"RayFwPKMStore(documents={len(self)}, workers={self.index.num_workers}, " \
               f"chunk_tokens={self.settings.chunk_tokens})"

    @classmethod
    def from_texts(cls, texts: Iterable[str], embedding: Optional[Embeddings] = None,
                   metadatas: Optional[Iterable[dict]] = None, *, ids: Optional[Iterable[str]] = None,
                   model=None, **kwargs: Any) -> "RayFwPKMStore":
        store = cls(model=model, **_ray_kwargs(kwargs), **_settings_only(kwargs))
        store.add_texts(texts, metadatas, ids=ids, **kwargs)
        return store

    @classmethod
    def from_documents(cls, documents: Iterable[Document], embedding: Optional[Embeddings] = None, *,
                       model=None, **kwargs: Any) -> "RayFwPKMStore":
        store = cls(model=model, **_ray_kwargs(kwargs), **_settings_only(kwargs))
        store.add_documents(documents, **kwargs)
        return store

    def save(self, directory) -> str:
        """Save in the local store's format (one folder per segment, a catalog and a manifest; docs/segments.md):
        `FwPKMStore.load(directory)` opens it. The folder must be reachable from every actor."""
        return self.index.save(directory)

    @classmethod
    def load(cls, directory, model=None, *, num_workers: int = 2, address: Optional[str] = None, threads: int = 1,
             cpus_per_worker: float = 1, **overrides: Any) -> "RayFwPKMStore":
        """Open a store folder (written by FwPKMStore or RayFwPKMStore) with its segments spread over
        `num_workers` actors. `model`: the model it was built with (default: the shipped model)."""
        return cls(_index=DistributedIndex.load(directory, model, num_workers=num_workers, address=address,
                                                threads=threads, cpus_per_worker=cpus_per_worker, **overrides))


def _ray_kwargs(kwargs: dict) -> dict:
    return {name: kwargs.pop(name) for name in _RAY_ARGS if name in kwargs}


def _settings_only(kwargs: dict) -> dict:
    names = StoreSettings.field_names()
    return {name: kwargs.pop(name) for name in list(kwargs) if name in names}
