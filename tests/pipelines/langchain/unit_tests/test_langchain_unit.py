"""LangChain's standard unit suite (langchain-tests) against ChatFwPKM: construction, serialisation and the
standard parameters, with a small random model (the integration suites: ../integration_tests/)."""
from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from fwpkm_rag.pipelines import ChatFwPKM
from rag_helpers import rag_model

MODEL = rag_model()


class TestChatFwPKMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatFwPKM]:
        return ChatFwPKM

    @property
    def chat_model_params(self) -> dict:
        return {"model": MODEL, "model_name": "fwpkm-test", "temperature": 0.0}
