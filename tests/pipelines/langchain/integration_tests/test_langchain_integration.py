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


def _filled_store() -> FwPKMStore:
    store = FwPKMStore(model=MODEL, chunk_tokens=16)
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


class TestChatFwPKMIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatFwPKM]:
        return ChatFwPKM

    @property
    def chat_model_params(self) -> dict:
        return {"store": _filled_store(), "model_name": "fwpkm-test", "temperature": 0.7, "seed": 3}
