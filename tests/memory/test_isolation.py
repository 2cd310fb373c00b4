"""Isolated mode: each sequence has its own memory, exactly as if it ran alone."""
import torch

from fwpkm_rag.memory import FwPKM, fwpkm_forward

from helpers import state_tensors, tiny_layer


def test_permuting_the_batch_permutes_outputs_and_memories_and_nothing_else():
    layer = tiny_layer(heads=2)
    h = torch.randn(4, 17, layer.d_model)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a = layer(h, diagnostics=True)
        b = layer(h[perm], diagnostics=True)
    torch.testing.assert_close(b.output, a.output[perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.state.keys, a.state.keys[perm], rtol=1e-5, atol=1e-6)
    for i, j in enumerate(perm.tolist()):
        torch.testing.assert_close(b.state.dense_values(i), a.state.dense_values(j), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.state.select(torch.argsort(perm)).keys, a.state.keys, rtol=1e-5, atol=1e-6)


def test_each_isolated_sequence_equals_the_functional_core_on_it_alone():
    layer = tiny_layer()
    cfg = layer.config
    h = torch.randn(3, 15, layer.d_model)  # 15 = 3 full chunks: nothing left queued
    with torch.no_grad():
        res = layer(h, return_reads=True)
        q, v, g, _ = layer.project(h, layer.init_state(3).conv_cache)
        for b in range(3):
            out, keys, values, _ = fwpkm_forward(
                q[b : b + 1], v[b : b + 1], g[b : b + 1], layer.keys_init, layer.values_init,
                chunk_size=cfg.chunk_size, topk=cfg.topk,
            )
            torch.testing.assert_close(res.state.keys[b], keys, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(res.state.dense_values(b), values, rtol=1e-5, atol=1e-6)


def test_reset_state_behaves_like_a_new_layer_and_base_tables_are_never_written():
    layer = tiny_layer()
    base_k, base_v = layer.keys_init.clone(), layer.values_init.clone()
    h1, h2 = torch.randn(2, 12, layer.d_model), torch.randn(2, 9, layer.d_model)
    with torch.no_grad():
        used = layer(h1).state
        after_reset = layer(h2, used.reset())
        twin = tiny_layer()  # same seed, same slow and fast initial weights
        fresh = twin(h2)
    torch.testing.assert_close(after_reset.output, fresh.output, rtol=0, atol=0)
    assert torch.equal(layer.keys_init, base_k) and torch.equal(layer.values_init, base_v)
    assert used.reset().position == 0 and used.reset().pending == 0


def test_two_sessions_never_influence_each_other():
    layer = tiny_layer()
    doc_a, doc_b, query = (torch.randn(1, n, layer.d_model) for n in (20, 20, 6))
    with torch.no_grad():
        alone = layer(query, layer(doc_a).state, read_only=True).output
        s_a, s_b = layer.init_state(1), layer.init_state(1)
        s_a = layer(doc_a, s_a).state
        s_b = layer(doc_b, s_b).state  # another session writes a lot in between
        s_b = layer(doc_b, s_b).state
        after = layer(query, s_a, read_only=True).output
        both = layer(torch.cat([doc_a, doc_b]), layer.init_state(2)).state  # and inside one batch
        batched = layer(torch.cat([query, query]), both, read_only=True).output
    torch.testing.assert_close(after, alone, rtol=0, atol=0)
    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched[1:], alone)


def test_isolated_state_stores_touched_rows_not_a_dense_copy():
    layer = FwPKM(16, tiny_layer().config.replace(n_subkeys=64, chunk_size=8))
    with torch.no_grad():
        state = layer(torch.randn(4, 32, 16)).state
    dense_bytes = 4 * layer.values_init.numel() * 4
    touched = int(state.values.touched().sum())
    assert state.values.rows.shape[0] == touched
    assert state.nbytes() < dense_bytes / 4
