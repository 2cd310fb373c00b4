"""The MemoryLM interface, on both models: FwPKMForCausalLM and AttachedFwPKMModel (a tiny random Llama).

Caches over given memories (questions over a store), cache save/load, memory_only, and load_model."""
import os

import pytest
import torch

from backbone_helpers import small_memory, tiny_hf_tokenizer, tiny_llama
from fwpkm_rag import FwPKMConfig, attach_fwpkm, load_model
from fwpkm_rag.errors import InputError, StateError, StateFormatError
from fwpkm_rag.modeling import AttachedCache, AttachedFwPKMModel, FwPKMForCausalLM, FwPKMModelConfig, MemoryLM
from fwpkm_rag.tokenizer import Tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. The secret number for ID-4821 is 730954. "
        "Paris is the capital of France; Berlin is the capital of Germany. Rain falls on the hills.")
QUESTION = "What is the secret number for ID-4821?"


def _sharpen(lm) -> None:
    """Larger memory projections than N(0, 0.02), as in the other model tests: reads spread over many slots."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lm.fwpkm_modules:
            for lin in (layer.q_proj, layer.v_proj, layer.g_proj, layer.o_proj):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.5)
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * 0.1)


def fwpkm_lm() -> FwPKMForCausalLM:
    torch.manual_seed(0)
    cfg = FwPKMModelConfig.preset("tiny", n_layers=3, d_model=32, n_heads=2, window=8, fwpkm_layers=[0, 2],
                                  fwpkm=FwPKMConfig(n_subkeys=8, k_dim=8, v_dim=8, heads=2, topk=3, chunk_size=8,
                                                    q_conv=3).to_dict())
    model = FwPKMForCausalLM(cfg).eval()
    _sharpen(model)
    return model


def attached_lm() -> AttachedFwPKMModel:
    tok = tiny_hf_tokenizer()
    backbone = tiny_llama(len(tok), layers=3)
    attach_fwpkm(backbone, layers=[0, 1], config=small_memory())
    model = AttachedFwPKMModel(backbone, tok, window=16)
    _sharpen(model)
    return model


@pytest.fixture(scope="module", params=["fwpkm", "attached"])
def lm(request):
    return fwpkm_lm() if request.param == "fwpkm" else attached_lm()


def _ids(lm, text: str, eos: bool = False) -> torch.Tensor:
    tok = lm.get_tokenizer()
    return torch.tensor([([tok.eos_id] if eos else []) + tok.encode(text)])


def _state(m) -> list:
    """Everything a MemoryState remembers, as tensors (dense values per group)."""
    return [m.keys, *[m.values.dense(g) for g in range(m.groups)], m.pending_q, m.pending_v, m.pending_g,
            m.pending_mask, m.conv_cache, m.refused]


def _assert_same_state(a, b) -> None:
    assert (a.position, a.pending, a.updates, a.mode, a.batch_size) == (b.position, b.pending, b.updates, b.mode, b.batch_size)
    for x, y in zip(_state(a), _state(b), strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def _ingest(lm, *, memory_only: bool = True):
    cache = lm.init_cache()
    with torch.no_grad():
        lm(_ids(lm, TEXT, eos=True), cache=cache, memory_only=memory_only)
    return cache


def test_both_models_implement_memory_lm(lm):
    assert isinstance(lm, MemoryLM) and isinstance(lm.as_reader(), MemoryLM)
    assert isinstance(lm.get_tokenizer(), Tokenizer)
    assert lm.device == torch.device("cpu")
    assert len(lm.fwpkm_modules) == len(lm.config.fwpkm_layers) == 2
    assert lm.config.fwpkm_config == lm.fwpkm_modules[0].config
    assert lm.config.vocab_size >= lm.get_tokenizer().vocab_size


def test_as_reader(lm):
    reader = lm.as_reader()
    if isinstance(lm, FwPKMForCausalLM):
        assert reader is lm
    else:  # the same backbone, memory off, full attention
        assert reader.backbone is lm.backbone and reader.window is None and not reader.use_memory


def test_a_cache_over_given_memories_reads_exactly_those_states(lm):
    store = _ingest(lm)
    lm.flush_memory(store)
    before = [m.clone() for m in store.memory]
    qc = lm.init_cache(memories=store.memory)
    assert all(a is b for a, b in zip(qc.memory, store.memory, strict=True))  # the states, not copies
    assert qc.position == 0 and all(kv is None for kv in qc.kv) and not qc.truncated and qc.batch_size == 1
    q = _ids(lm, QUESTION, eos=True)
    kw = dict(read_only=True, return_memory=True, memory_only=True)
    with torch.no_grad():
        over_store = lm(q, cache=qc, **kw)
        fresh = lm(q, cache=lm.init_cache(), **kw)
        # how pipelines built a question cache before: a fresh cache whose memories are replaced
        legacy = lm.init_cache()
        legacy.memory = list(store.memory)
        ref = lm(q, cache=legacy, **kw)
    for j in range(2):
        assert torch.equal(over_store.memory_reads[j][0], ref.memory_reads[j][0])  # slots (1, T, H, k)
        torch.testing.assert_close(over_store.memory_reads[j][1], ref.memory_reads[j][1], rtol=0, atol=0)
        # the written memory answers differently from a blank one
        assert not torch.allclose(over_store.memory_reads[j][1], fresh.memory_reads[j][1])
    for a, b in zip(store.memory, before):  # read only: the store's memories are untouched
        _assert_same_state(a, b)


def test_a_cache_over_memories_that_do_not_fit_is_refused(lm):
    store = _ingest(lm)
    with pytest.raises(StateError, match="one per FwPKM layer"):
        lm.init_cache(memories=store.memory[:1])
    with pytest.raises(StateError, match="1 sequence"):
        lm.init_cache(2, memories=store.memory)
    with pytest.raises(StateError, match="mode"):
        lm.init_cache(mode="shared", memories=store.memory)
    with pytest.raises(InputError, match="batch_size"):
        lm.init_cache(0)


def test_cache_save_and_load_round_trip_the_state_exactly(lm, tmp_path):
    cache = _ingest(lm, memory_only=False)  # every layer's KV window filled
    assert any(m.pending for m in cache.memory)  # a queued partial chunk is part of the state too
    cache.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["kv.safetensors", "memory-0.safetensors", "memory-1.safetensors"]
    loaded = lm.load_cache(tmp_path)
    assert type(loaded) is type(cache)
    assert (loaded.position, loaded.batch_size, loaded.mode, loaded.n_layers, loaded.fwpkm_layers) == (
        cache.position, cache.batch_size, cache.mode, cache.n_layers, cache.fwpkm_layers)
    for a, b in zip(loaded.memory, cache.memory, strict=True):
        _assert_same_state(a, b)
    for a, b in zip(loaded.kv, cache.kv, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(loaded.key_valid, cache.key_valid)
    # The stream goes on the same from either. The states are equal bit for bit; the tensors live at other
    # addresses, which CPU kernels may sum in another order (issue 13): float32 rounding, not bitwise.
    more = _ids(lm, " Rain falls on the hills north of the river.")
    with torch.no_grad():
        a, b = lm(more, cache=cache).logits, lm(more, cache=loaded).logits
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_load_cache_says_what_is_wrong_with_the_files(lm, tmp_path):
    _ingest(lm).save(tmp_path)
    (tmp_path / "memory-2.safetensors").write_bytes((tmp_path / "memory-1.safetensors").read_bytes())
    with pytest.raises(StateFormatError, match="more memories"):
        lm.load_cache(tmp_path)
    (tmp_path / "memory-2.safetensors").unlink()
    (tmp_path / "kv.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StateFormatError, match="kv.safetensors"):
        lm.load_cache(tmp_path)
    (tmp_path / "memory-1.safetensors").unlink()
    with pytest.raises(StateFormatError, match="memory-1"):
        lm.load_cache(tmp_path)


def test_memory_only_gives_the_memories_of_a_full_call(lm):
    ids = _ids(lm, TEXT, eos=True)
    full, part = lm.init_cache(), lm.init_cache()
    with torch.no_grad():
        a = lm(ids, cache=full, return_memory=True)
        b = lm(ids, cache=part, return_memory=True, memory_only=True)
    assert a.logits is not None and b.logits is None
    for x, y in zip(full.memory, part.memory, strict=True):  # the same instance and ops: identical
        _assert_same_state(x, y)
    for ra, rb in zip(a.memory_reads, b.memory_reads, strict=True):
        assert torch.equal(ra[0], rb[0])
    if isinstance(lm, FwPKMForCausalLM):  # runs every layer: the cache is complete, generation can follow
        assert all(kv is not None for kv in part.kv) and not part.truncated
    else:  # stops after the last FwPKM layer
        assert part.truncated and part.kv[-1] is None
    with pytest.raises(InputError, match="memory_only"):
        lm(ids, labels=ids, memory_only=True)


def test_attached_cache_clone_is_an_attached_cache():
    lm = attached_lm()
    cache = _ingest(lm)
    copy = cache.clone()
    assert type(copy) is AttachedCache and copy.truncated and copy.position == cache.position
    assert all(a is not b for a, b in zip(copy.memory, cache.memory))
    for a, b in zip(copy.memory, cache.memory):
        _assert_same_state(a, b)


def test_load_model_tells_a_checkpoint_from_attached_weights(tmp_path):
    from fwpkm_rag import load_default_model

    assert load_model() is load_default_model()  # None: the shipped model (cached, shared)
    model = fwpkm_lm()
    model.save_pretrained(tmp_path / "own")
    loaded = load_model(tmp_path / "own")
    assert type(loaded) is FwPKMForCausalLM and not loaded.training
    assert all(torch.equal(x, y) for x, y in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))

    attached = AttachedFwPKMModel.from_backbone("tiny-random-llama", layers=[1], config=small_memory(),
                                                calibrate=False)
    _sharpen(attached)
    attached.save_pretrained(tmp_path / "attached")
    again = load_model(tmp_path / "attached")  # loads the named offline backbone, then the FwPKM weights
    assert type(again) is AttachedFwPKMModel and again.config.fwpkm_layers == [1]
    for a, b in zip(attached.fwpkm_modules, again.fwpkm_modules, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
