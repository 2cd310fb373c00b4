"""HF save_pretrained / from_pretrained round trip (safetensors only): identical weights, the same logits."""
import os

import pytest
import torch

from fwpkm_rag.errors import InputError
from fwpkm_rag.modeling import FwPKMForCausalLM, FwPKMModelConfig

from model_helpers import VOCAB, tiny_model


@pytest.mark.parametrize("over", [{}, {"tie_word_embeddings": False, "static_pkm_layer": 1, "static_pkm": {"n_subkeys": 6, "k_dim": 8, "topk": 2}}])
def test_round_trip_gives_identical_weights_and_logits(tmp_path, over):
    model = tiny_model(**over)
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = FwPKMForCausalLM.from_pretrained(tmp_path).eval()
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}
    assert strip(loaded.config.to_dict()) == strip(model.config.to_dict())
    assert loaded.config.fwpkm_config == model.config.fwpkm_config
    assert loaded.config.tie_word_embeddings == (loaded.lm_head.weight is loaded.embed_tokens.weight)
    for a, b in zip(model.fwpkm_modules, loaded.fwpkm_modules):  # regenerated from the seed, not stored
        assert torch.equal(a.keys_init, b.keys_init) and torch.equal(a.values_init, b.values_init)
    # The contract is the state: every saved tensor comes back bit for bit.
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for name in saved:
        assert saved[name].dtype == back[name].dtype and torch.equal(saved[name], back[name]), name
    # Logits of two model instances are not bitwise equal on every CPU: oneDNN/MKL pick kernels by the
    # tensors' memory alignment, so the same weights at other addresses can sum in another order (seen on an
    # AMD EPYC: 5.4e-8 apart, issue 13). fp32 logits of this size (|x| < 1) differ by a few ulps (~1e-7) from
    # reordering alone; 1e-5 leaves that ~100x room and is still 1e-4 of the logits' scale (~0.1 here), so a
    # lost or mis-mapped tensor (all weights are checked exactly above anyway) could not hide in it.
    ids = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_config_records_tokenizer_and_special_ids(tmp_path):
    cfg = FwPKMModelConfig.preset("tiny", n_layers=2, d_model=64, n_heads=2, fwpkm_layers=[0],
                                  fwpkm={"n_subkeys": 16, "k_dim": 16, "v_dim": 16})
    assert cfg.vocab_size == 8192 + 5 and cfg.eos_token_id == 8192 and cfg.pad_token_id == 8193
    cfg.save_pretrained(tmp_path)
    again = FwPKMModelConfig.from_pretrained(tmp_path)
    assert again.tokenizer == cfg.tokenizer and again.fwpkm == cfg.fwpkm and again.fwpkm_layers == [0]


def test_pickle_checkpoints_are_refused(tmp_path):
    with pytest.raises(InputError):
        tiny_model().save_pretrained(tmp_path, safe_serialization=False)
