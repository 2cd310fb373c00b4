"""`fwpkm-rag bench addressing` (issue 17 A): the fusion against a naive sum, the weights chosen on dev only, and
a tiny end-to-end run that writes its files. Figures are the command's (docs/benchmarks.md, "Addressing")."""
from __future__ import annotations

import importlib.util
import json
import random

import pytest

from fwpkm_rag.benchmarks import addressing as A

needs_bm25 = pytest.mark.skipif(importlib.util.find_spec("rank_bm25") is None, reason="rank-bm25 not installed")


def test_fuse_is_the_weighted_sum_of_max_normalised_scores():
    rng = random.Random(0)
    for _ in range(50):
        sources = [{c: rng.uniform(0.01, 9) for c in rng.sample(range(30), rng.randint(0, 12))} for _ in range(3)]
        w = [rng.choice([0.0, 0.5, 1.0, 4.0]) for _ in range(3)]
        fused = A.fuse(sources, w)
        expected: dict = {}
        for s, wi in zip(sources, w):
            for c, v in s.items():
                if wi:
                    expected[c] = expected.get(c, 0.0) + wi * v / max(s.values())
        assert fused.keys() == expected.keys()
        assert all(fused[c] == pytest.approx(expected[c], rel=1e-12) for c in fused)
        top = A.ranked(fused, 5)
        assert top == sorted(fused, key=lambda c: (-fused[c], c))[:5]


def test_weights_come_from_the_answers_they_are_given():
    """choose_weights sees only what it is passed (the dev answers): here source b is right on every question,
    a on none, so the best grid point gives b the larger weight."""
    gold = list(range(10))
    answers = {"a": [({(g + 1) % 10: 1.0, g: 0.2}, [], 0.0) for g in gold],
               "b": [({g: 1.0, (g + 1) % 10: 0.5}, [], 0.0) for g in gold]}
    w, tried = A.choose_weights(answers, gold, ("a", "b"), [(1.0, 0.0), (1.0, 0.5), (1.0, 4.0), (0.0, 1.0)])
    assert w == (1.0, 4.0) and len(tried) == 4  # first best: r@1 100 at (1, 4) and (0, 1)
    assert tried[0]["r1"] == 0.0


@needs_bm25
def test_tiny_run_writes_its_files(tmp_path, small_model):
    tiny = dict(n_entries=24, needle_lengths=(2048,), needle_depths=(0.5,), needle_reps=1, scale_entries=(12, 24))
    res = A.run_addressing_bench(out_dir=str(tmp_path), quick=True, model=small_model, overrides=tiny,
                                 baselines=("bm25",), semantic=False)
    saved = json.loads((tmp_path / "addressing.json").read_text())
    assert (tmp_path / "addressing.md").is_file() and saved["meta"]["commit"]
    e = res["entries"]
    assert set(e["test"]) >= {"fwpkm", "word", "combined", "bm25"}
    for system, tasks in e["test"].items():
        assert set(tasks) == set(A.TASKS)
        assert all(0 <= t["r1"] <= t["r5"] <= 100 and t["n"] > 0 for t in tasks.values())
    assert tuple(e["weights"]["combined"]) in {tuple(g["weights"]) for g in e["dev"]["grid_combined"]}
    # the word layer finds an entry by its own words in any order on this tiny collection
    assert e["test"]["word"]["shuffled"]["r5"] == 100.0
    # and so does the store built with its word layer, searched as a user would (one ranking, one store)
    assert e["test"]["store+words"]["shuffled"]["r5"] == 100.0
    systems = {r["system"] for r in res["needles"]}
    assert systems == {"fwpkm", "word", "combined", "store+words", "bm25"}
    assert all(r["task"] in ("exact", "paraphrase") for r in res["needles"])
    exact = [r for r in res["needles"] if r["system"] == "bm25" and r["task"] == "exact"]
    assert len(exact) == 1 + A.DISTRACTORS and sum(r["gold_needle"] for r in exact) == 1  # every needle asked
    assert {"fwpkm", "word", "bm25", "combined", "store+words"} <= set(e["cost"])
    # the store with its word layer holds the lexical store's bytes plus its word layers'
    assert e["cost"]["store+words"]["bytes"] > e["cost"]["fwpkm"]["bytes"] > 0
    scale = res["scale"]
    assert {(r["n_entries"], r["system"]) for r in scale} == {(n, s) for n in (12, 24) for s in systems}
    assert "More entries in one memory" in (tmp_path / "addressing.md").read_text()
