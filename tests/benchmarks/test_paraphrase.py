"""The paraphrase benchmark (issue 9, `fwpkm-rag bench retrieval --parts paraphrase`): the traps fool BM25, and the
suite part runs end to end (quick mode, BM25 + a small random FwPKM model)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from fwpkm_rag.data import paraphrase as P


@pytest.fixture(scope="module")
def items():
    return [P.make_item(2048, seed=s) for s in (0, 1, 2)]


def test_bm25_is_fooled_by_the_traps(items):
    """With the key's words gone, BM25's top hit is a trap chunk, not the gold one (the point of the task)."""
    pytest.importorskip("rank_bm25")
    from fwpkm_rag.benchmarks.baselines import BM25Baseline

    top1_gold = top1_trap = n = 0
    for it in items:
        ch = P.chunk_paraphrase_item(it)
        bm = BM25Baseline()
        bm.add(ch.chunks)
        for i, (f, gold) in enumerate(zip(it.facts, ch.gold_chunks)):
            top = bm.search(f.question, 5)[0][0]
            n += 1
            top1_gold += top == gold
            top1_trap += top in ch.trap_chunks[i]
    assert top1_trap >= 0.8 * n and top1_gold <= 0.1 * n, (top1_trap, top1_gold, n)


def test_paraphrase_part_runs_end_to_end(tmp_path, small_model):
    pytest.importorskip("rank_bm25")
    from fwpkm_rag.benchmarks.suite import run_suite
    from fwpkm_rag.benchmarks.systems import FwPKMSystem, fwpkm_factory

    made = []

    def second_fwpkm():  # the hook another model joins through (e.g. "fwpkm-smollm2")
        made.append(1)
        return fwpkm_factory(small_model, chunk_size=128)()

    res = run_suite(parts=["paraphrase"], out_dir=str(tmp_path), quick=True, threads=1, model=small_model,
                    systems=["fwpkm", "bm25"], extra_systems={"fwpkm-other": second_fwpkm})
    par = res["paraphrase"]
    assert res["meta"]["systems"] == ["fwpkm", "bm25", "fwpkm-other"] and len(made) == 3
    assert isinstance(fwpkm_factory(small_model)(), FwPKMSystem)
    n_q = sum(len(it["facts"]) for it in par["items"])
    assert n_q == 18
    for s in ("fwpkm", "bm25", "fwpkm-other"):
        rows = [r for r in par["rows"] if r["system"] == s]
        assert len(rows) == n_q and all(r["length_req"] == 2048 and r["n_chunks"] == 16 for r in rows)
        assert all(r["hit1"] <= r["hit5"] for r in rows)
    # the same model through the hook ranks exactly as the built-in system
    key = lambda s: [(r["seed"], r["fact"], r["rank"]) for r in par["rows"] if r["system"] == s]  # noqa: E731
    assert key("fwpkm") == key("fwpkm-other")
    bm = [r for r in par["rows"] if r["system"] == "bm25"]
    assert sum(r["hit1"] for r in bm) <= 2 and sum(r["top1_trap"] for r in bm) >= 0.8 * len(bm)
    assert all(f["gold_overlap"] == 0 for it in par["items"] for f in it["facts"])

    saved = json.loads((tmp_path / "paraphrase.json").read_text())
    assert len(saved["rows"]) == 3 * n_q and saved["meta"]["quick"] is True
    md = (tmp_path / "paraphrase.md").read_text()
    assert "recall@5" in md and "chance" in md and "| bm25 |" in md and "gold fact max 0" in md
    assert "Paraphrase retrieval" in (tmp_path / "suite.md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "paraphrase.png").stat().st_size > 1000
