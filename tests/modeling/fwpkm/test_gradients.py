"""Training: the LM loss back-propagates through the unrolled memory updates into every slow weight."""
import torch

from model_helpers import VOCAB, tiny_model


def test_every_slow_weight_gets_a_gradient_in_train_mode():
    model = tiny_model(static_pkm_layer=1, static_pkm={"n_subkeys": 6, "k_dim": 8, "topk": 2}).train()
    ids = torch.randint(0, VOCAB, (2, 14))  # isolated memory per sequence (no cache: fresh memories)
    out = model(ids, labels=ids)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_gradient_reaches_early_tokens_only_through_the_memory_updates():
    # Window 5 and 3 layers reach 12 tokens back; the query conv 2 more. Tokens 0-3 can only influence the
    # logits at positions 20-23 through what chunk 0 wrote into the memory.
    model = tiny_model(tie_word_embeddings=False).train()
    early = torch.tensor([[0, 1, 2, 3]])
    rest = torch.randint(4, VOCAB, (1, 20))
    ids = torch.cat([early, rest], 1)
    weight = torch.randn(1, 4, VOCAB)
    grads = {}
    for read_only in (False, True):
        model.zero_grad()
        logits = model(ids, read_only=read_only).logits
        (logits[:, 20:] * weight).sum().backward()
        grads[read_only] = model.embed_tokens.weight.grad[:4].clone()
        # The memory projections also learn through the writes: their gradient differs when frozen.
        grads[(read_only, "v")] = model.layers[0].fwpkm.v_proj.weight.grad.clone()
    assert torch.count_nonzero(grads[True]) == 0
    assert float(grads[False].abs().sum()) > 0
    assert not torch.allclose(grads[(False, "v")], grads[(True, "v")])


def test_streaming_with_autograd_matches_one_call_and_detach_cuts_history():
    model = tiny_model().train()
    ids = torch.randint(0, VOCAB, (2, 12))
    full = model(ids).logits
    cache = model.init_cache(2)
    parts = [model(ids[:, :5], cache=cache).logits, model(ids[:, 5:], cache=cache).logits]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    cache.detach_()
    assert all(not m.keys.requires_grad for m in cache.memory)
