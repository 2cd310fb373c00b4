"""The layer-vs-dense part of `fwpkm-rag bench ops`: the dense baseline is a real causal block and the
comparison runs end to end on tiny shapes."""
import torch

from fwpkm_rag.memory import FwPKMConfig
from fwpkm_rag.benchmarks.layer_vs_dense import DenseBlock, layer_vs_dense, markdown
from fwpkm_rag.benchmarks.ops import op_bytes


def test_dense_block_is_causal():
    torch.manual_seed(0)
    block = DenseBlock(48, head_dim=16)
    h = torch.randn(1, 13, 48)
    changed = h.clone()
    changed[:, 9:] += torch.randn(1, 4, 48)
    a, b = block(h), block(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])  # earlier positions never see later tokens
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_layer_vs_dense_runs_and_reports_both_modes():
    cfg = FwPKMConfig(n_subkeys=8, k_dim=16, v_dim=16, topk=4, chunk_size=16)
    rows = layer_vs_dense(32, cfg, (37,), torch.device("cpu"), repeats=1)
    assert [(r["tokens"], r["mode"]) for r in rows] == [(37, "inference"), (37, "fwd+bwd")]
    for r in rows:
        assert r["fwpkm_tokens_per_s"] > 0 and r["dense_tokens_per_s"] > 0
        assert abs(r["fwpkm_over_dense"] - r["fwpkm_tokens_per_s"] / r["dense_tokens_per_s"]) < 1e-9
    table = markdown(rows, 32, "test")
    assert table.count("| 37 |") == 2


def test_op_bytes_counts_value_rows():
    info = dict(d=8, entries=40, tokens=5, touched=12)
    assert op_bytes("(b) weighted_gather", info) == 4 * 8 * (40 + 5)
    assert op_bytes("(c) row_update", info) == 4 * 8 * (40 + 2 * 12)
    assert op_bytes("(a) product_key_topk", info) is None
