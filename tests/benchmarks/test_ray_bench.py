"""`fwpkm-rag bench ray` (issue 14): the document cutter and the quick run end to end (structure, not figures)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from fwpkm_rag.benchmarks import ray_ingest as R


def test_documents_cut_at_paragraphs_and_give_the_text_back():
    text = "\n\n".join(f"paragraph {i} " + "word " * (i % 7 * 30) for i in range(40))
    docs = R.documents(text, 500)
    assert "\n\n".join(docs) == text
    assert all(len(d) <= 500 or "\n\n" not in d for d in docs)  # over the budget only when one paragraph is
    assert len(docs) > 5


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the distributed extra is not installed")
def test_quick_run_compares_local_and_ray_stores(tmp_path, small_model, local_ray):
    res = R.run_ray_bench(out_dir=str(tmp_path), quick=True, threads=1, model=small_model)
    assert [r["system"] for r in res["rows"]] == ["local", "ray-1", "ray-2"]
    by = {r["system"]: r for r in res["rows"]}
    # one worker holds the local store's segments: every question gets the local store's top k
    assert by["ray-1"]["same_as_local"] == res["meta"]["questions"]
    assert all(r["tokens_per_s"] > 0 and 0 <= r["hit5"] <= 1 for r in res["rows"])
    assert res["ratio_2_vs_1"] > 0
    saved = json.loads((tmp_path / "ray.json").read_text())
    assert saved["meta"]["commit"] and "ray-2 / ray-1" in (tmp_path / "ray.md").read_text()
