"""attach_fwpkm on a tiny random Llama: unchanged logits at a zero output path, detach, generate with the
memory, streaming parity of the adapter (one call == pieces == token by token), save/load of the FwPKM weights
only, and clear errors."""
import json

import pytest
import torch

from backbone_helpers import nonzero_output, small_memory, tiny_hf_tokenizer, tiny_llama
from fwpkm_rag import FwPKMConfig, attach_fwpkm, detach_fwpkm
from fwpkm_rag.errors import ConfigError, InputError, ModelMismatchError, StateError, StateFormatError
from fwpkm_rag.modeling.attach import fwpkm_blocks, load_fwpkm, save_fwpkm
from fwpkm_rag.modeling.attached import AttachedFwPKMModel

TEXT = ("The quick brown fox jumps over the lazy dog. The secret number for ID-4821 is 730954. "
        "Paris is the capital of France; Berlin is the capital of Germany. Rain falls on the hills.")


@pytest.fixture(scope="module")
def tok():
    return tiny_hf_tokenizer()


def _ids(tok, text=TEXT):
    return torch.tensor([tok.encode(text)])


def _memory_tensors(state):
    return [state.keys, *[state.values.dense(g) for g in range(state.groups)], state.pending_q, state.pending_v]


def _same_memory(a, b):
    assert a.position == b.position and a.pending == b.pending and a.updates == b.updates
    for x, y in zip(_memory_tensors(a), _memory_tensors(b)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_zero_output_path_leaves_logits_bit_identical_and_detach_restores(tok):
    model = tiny_llama(len(tok))
    ids = _ids(tok)
    with torch.no_grad():
        ref = model(ids).logits
        ref_gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    n_before = sum(p.numel() for p in model.parameters())
    attach_fwpkm(model, layers=[1, -1], config=small_memory())
    assert [i for i, layer in enumerate(model.model.layers) if hasattr(layer, "fwpkm")] == [1, 3]
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".fwpkm." not in n)
    assert all(p.requires_grad for b in fwpkm_blocks(model) for p in b.parameters())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)  # h + 0 is h: bit for bit
        assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), ref_gen)
        # the adapter runs the same layers with its own cache and float64 rotary angles
        adapter = AttachedFwPKMModel(model, tok, window=None)
        torch.testing.assert_close(adapter(ids).logits, ref, rtol=0, atol=1e-5)
    removed = detach_fwpkm(model)
    assert len(removed) == 2 and not any(hasattr(layer, "fwpkm") for layer in model.model.layers)
    assert sum(p.numel() for p in model.parameters()) == n_before
    assert all(p.requires_grad for p in model.parameters())  # as before attaching
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_generate_writes_and_reads_the_memory(tok):
    model = tiny_llama(len(tok))
    attach_fwpkm(model, layers=[1], config=small_memory())
    nonzero_output(model, scale=2.0)
    ids = _ids(tok)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
        state = out.cache._fwpkm_memory[0]
        # the prompt and the generated tokens streamed through the memory: full chunks were written
        assert state.position == ids.shape[1] + 8 - 1 and state.updates >= ids.shape[1] // 8
        # generate equals a cache-free greedy loop over the same model (the memory sees the same stream)
        seq = ids
        for _ in range(8):
            logits = model(seq, use_cache=False).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(out.sequences, seq)
        # and the memory changes the answer: with the memory frozen (read only) the logits differ
        adapter = AttachedFwPKMModel(model, tok, window=None)
        live = adapter(ids, logits_to_keep=1).logits
        frozen = adapter(ids, logits_to_keep=1, read_only=True).logits
        assert not torch.allclose(live, frozen)


@pytest.mark.parametrize("window", [None, 12])
def test_streaming_parity_one_call_pieces_token_by_token(tok, window):
    model = tiny_llama(len(tok))
    attach_fwpkm(model, layers=[0, 2], config=small_memory())
    nonzero_output(model)
    adapter = AttachedFwPKMModel(model, tok, window=window)
    ids = _ids(tok)[:, :40]
    T = ids.shape[1]
    with torch.no_grad():
        c1 = adapter.init_cache(1)
        one = adapter(ids, cache=c1, return_memory=True)
        c2 = adapter.init_cache(1)
        pieces = [adapter(ids[:, s:e], cache=c2, return_memory=True) for s, e in ((0, 5), (5, 19), (19, 20), (20, T))]
        c3 = adapter.init_cache(1)
        steps = [adapter(ids[:, t:t + 1], cache=c3).logits for t in range(T)]
    torch.testing.assert_close(torch.cat([p.logits for p in pieces], 1), one.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), one.logits, rtol=1e-5, atol=1e-5)
    for j in range(2):
        _same_memory(c1.memory[j], c2.memory[j])
        _same_memory(c1.memory[j], c3.memory[j])
        assert torch.equal(torch.cat([p.memory_reads[j][0] for p in pieces], 1), one.memory_reads[j][0])
    if window is not None:  # the KV window is bounded
        assert all(kv[0].shape[-2] == window - 1 for kv in c3.kv)
    # memory-only (truncated) calls write exactly the same memories, and compute no logits
    with torch.no_grad():
        c4 = adapter.init_cache(1)
        mem = adapter(ids, cache=c4, memory_only=True, return_memory=True)
    assert mem.logits is None and c4.kv[3] is None
    for j in range(2):
        _same_memory(c1.memory[j], c4.memory[j])
    with pytest.raises(StateError, match="memory-only"):
        adapter(ids[:, :2], cache=c4)


def test_save_load_round_trips_only_the_fwpkm_weights(tok, tmp_path):
    model = tiny_llama(len(tok))
    attach_fwpkm(model, layers=[2], config=small_memory(n_subkeys=8))
    nonzero_output(model)
    AttachedFwPKMModel(model, tok, window=16).save_pretrained(tmp_path / "fw")
    files = sorted(p.name for p in (tmp_path / "fw").iterdir())
    assert files == ["fwpkm.json", "fwpkm.safetensors"]
    n_fwpkm = sum(p.numel() for b in fwpkm_blocks(model) for p in b.parameters())
    assert (tmp_path / "fw" / "fwpkm.safetensors").stat().st_size < 4 * n_fwpkm + 4096  # the backbone is not in it
    meta = json.loads((tmp_path / "fw" / "fwpkm.json").read_text())
    assert meta["layers"] == [2] and meta["window"] == 16 and len(meta["backbone"]["fingerprint"]) == 64
    ids = _ids(tok)
    with torch.no_grad():
        ref = AttachedFwPKMModel(model, tok, window=16)(ids).logits
    fresh = tiny_llama(len(tok))  # the same backbone weights (same seed), no FwPKM yet
    loaded = AttachedFwPKMModel.load(tmp_path / "fw", backbone=fresh, tokenizer=tok)
    assert loaded.window == 16 and loaded.config.fwpkm_layers == [2]
    for a, b in zip(fwpkm_blocks(model), loaded.fwpkm_modules):  # the saved state comes back bit for bit
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        # another model instance: same weights, but CPU kernels may sum in another order (issue 13), so the
        # logits agree to float32 rounding, not bitwise
        torch.testing.assert_close(loaded(ids).logits, ref, rtol=1e-5, atol=1e-5)
    other = tiny_llama(len(tok), seed=1)
    with pytest.raises(ModelMismatchError, match="another backbone"):
        load_fwpkm(other, tmp_path / "fw")
    (tmp_path / "fw" / "fwpkm.safetensors").write_bytes(b"garbage")
    with pytest.raises(StateFormatError):
        load_fwpkm(tiny_llama(len(tok)), tmp_path / "fw")


def test_training_reaches_the_fwpkm_weights_only(tok):
    model = tiny_llama(len(tok))
    attach_fwpkm(model, layers=[1], config=small_memory())
    adapter = AttachedFwPKMModel(model, tok, window=None).train()
    ids = _ids(tok)
    out = adapter(ids, labels=ids)
    out.loss.backward()
    block = fwpkm_blocks(model)[0]
    assert block.o_proj.weight.grad is not None and block.o_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if ".fwpkm." not in n)


def test_bad_input_gives_clear_errors(tok):
    model = tiny_llama(len(tok))
    with pytest.raises(StateError, match="attach_fwpkm"):
        AttachedFwPKMModel(model, tok)
    with pytest.raises(ConfigError, match="out of range"):
        attach_fwpkm(model, layers=[7])
    with pytest.raises(ConfigError, match="duplicates"):
        attach_fwpkm(model, layers=[1, 1])
    with pytest.raises(ConfigError, match="FwPKMConfig"):
        attach_fwpkm(model, layers=[1], config={"n_subkeys": 8})
    with pytest.raises(ConfigError, match="Llama-family"):
        attach_fwpkm(torch.nn.Linear(3, 3))
    attach_fwpkm(model, layers=[1], config=small_memory())
    with pytest.raises(StateError, match="already attached"):
        attach_fwpkm(model, layers=[2])
    adapter = AttachedFwPKMModel(model, tok)
    with pytest.raises(InputError, match="outside the vocabulary"):
        adapter(torch.tensor([[len(tok) + 5]]))
    with pytest.raises(InputError, match="batch, tokens"):
        adapter(torch.tensor([1, 2, 3]))
    with pytest.raises(ConfigError, match="window"):
        AttachedFwPKMModel(model, tok, window=1)
    cache = adapter.init_cache(2)
    with pytest.raises(StateError, match="2 stream"):
        adapter(torch.tensor([[1, 2]]), cache=cache)
