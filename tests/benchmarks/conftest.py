import os
import sys

import pytest

# The small random FwPKM model of the pipeline tests (tests/pipelines/rag_helpers.py) is the model the
# benchmark smoke tests run: pytest puts a test folder on sys.path only when it collects a test there, so the
# benchmark tests, run alone, add it themselves.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "pipelines"))

from rag_helpers import rag_model  # noqa: E402


@pytest.fixture(scope="session")
def small_model():
    """One small random FwPKM model with the real tokenizer, shared (stores never change a model)."""
    return rag_model()
