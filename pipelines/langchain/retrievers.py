"""`FwPKMRetriever`: a LangChain BaseRetriever over a FwPKMStore — Documents with the parent document's metadata
plus an "fwpkm" entry (chunk id and index, score, rank, source, matched slots; `retrieval.Hit.provenance`)."""
from __future__ import annotations

from typing import Any, Optional

from langchain_core.callbacks.manager import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from fwpkm_rag.pipelines.retrieval import check_k


class FwPKMRetriever(BaseRetriever):
    """Retriever over a FwPKMStore: Documents with the parent's metadata plus "fwpkm" provenance."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any  # a FwPKMStore
    k: int = 4
    matched_slots: int = 8

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: Optional[int] = None) -> list[Document]:
        hits = self.store.search_with_provenance(query, check_k(self.k if k is None else k),
                                                 matched_slots=self.matched_slots)
        return [Document(page_content=h.text, metadata={**h.metadata, "fwpkm": h.provenance()}, id=h.doc_id)
                for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: Optional[int] = None) -> list[Document]:
        from langchain_core.runnables.config import run_in_executor

        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), k=k)
