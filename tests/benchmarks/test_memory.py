"""The memory benchmark (`fwpkm-rag bench memory`): its capacity measurement recalls facts stored well below N/k."""
from fwpkm_rag.benchmarks.memory import capacity_recall
from fwpkm_rag.memory import FwPKMConfig


def test_capacity_high_recall_well_below_n_over_k():
    cfg = FwPKMConfig(n_subkeys=32, k_dim=32, v_dim=32, topk=8, chunk_size=64)  # N/k = 128 facts
    result = capacity_recall(cfg, facts=32, passes=1)
    assert result.load == 0.25
    assert result.recall >= 0.95, result
