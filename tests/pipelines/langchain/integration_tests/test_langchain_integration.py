"""LangChain's standard integration suites (langchain-tests) against FwPKMStore, FwPKMRetriever and ChatFwPKM,
with a small random model so that they run in seconds (the unit suite: ../unit_tests/test_langchain_unit.py)."""
from __future__ import annotations

import pytest
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from fwpkm_rag.pipelines import ChatFwPKM, FwPKMRetriever, FwPKMStore
from rag_helpers import rag_model

MODEL = rag_model()


class TestFwPKMStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self):
        store = FwPKMStore(model=MODEL)
        try:
            yield store
        finally:
            store.delete()
            store.close()


class TestSegmentedFwPKMStoreStandard(VectorStoreIntegrationTests):
    """The same suite over a store of many small segments (issue 14): every add of the suite's few short
    documents spans or opens segments, and searches go through the fan-out and the merge."""

    @pytest.fixture()
    def vectorstore(self):
        store = FwPKMStore(model=MODEL, segment_tokens=6)  # a few short documents per segment
        try:
            yield store
        finally:
            store.delete()
            store.close()


def _filled_store(**settings) -> FwPKMStore:
    store = FwPKMStore(model=MODEL, **{"chunk_tokens": 16, **settings})
    store.add_texts([
        "The capital of France is Paris, a city on the Seine.",
        "Photosynthesis turns light, water and carbon dioxide into sugar.",
        "The secret number for ID-4821 is 913042.",
        "Rivers carry sediment from mountains to the sea.",
    ], metadatas=[{"source": f"doc{i}"} for i in range(4)])
    return store


class TestFwPKMRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[FwPKMRetriever]:
        return FwPKMRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"store": _filled_store()}

    @property
    def retriever_query_example(self) -> str:
        return "What is the secret number for ID-4821?"


class TestSegmentedFwPKMRetrieverStandard(TestFwPKMRetrieverStandard):
    @property
    def retriever_constructor_params(self) -> dict:
        store = _filled_store(chunk_tokens=8, segment_tokens=24)
        assert len(store.index.segments) >= 3
        return {"store": store}


class TestChatFwPKMIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatFwPKM]:
        return ChatFwPKM

    @property
    def chat_model_params(self) -> dict:
        return {"store": _filled_store(), "model_name": "fwpkm-test", "temperature": 0.7, "seed": 3}
