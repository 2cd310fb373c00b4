import pytest

from rag_helpers import rag_model


@pytest.fixture(scope="session")
def small_model():
    """One small random FwPKM model with the real tokenizer, shared (stores never change a model)."""
    return rag_model()
