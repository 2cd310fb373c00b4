"""Ingestion, provenance retrieval, LangChain integration and benchmarks (being built; see the issues)."""
