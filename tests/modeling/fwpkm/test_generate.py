"""transformers' generate with the streaming cache equals a cache-free greedy loop."""
import torch

from model_helpers import VOCAB, tiny_model


def _greedy_loop(model, ids, steps):
    """Recompute the whole sequence every step, no cache (the memory is rebuilt from scratch each time)."""
    for _ in range(steps):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def test_generate_with_cache_equals_cache_free_greedy_loop():
    model = tiny_model()
    prompt = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        ref = _greedy_loop(model, prompt, 12)
    assert torch.equal(out, ref)


def test_generate_from_prefilled_cache_continues_the_stream():
    model = tiny_model()
    doc = torch.randint(0, VOCAB, (1, 13))
    question = torch.randint(0, VOCAB, (1, 3))
    with torch.no_grad():
        cache = model.init_cache(1)
        model(doc, cache=cache)
        out = model.generate(question, cache=cache, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        ref = _greedy_loop(model, torch.cat([doc, question], 1), 6)
    assert torch.equal(out, ref[:, 13:])  # generate returns the prompt it was given + the new tokens
    assert cache.position == 13 + 3 + 6 - 1  # the last sampled token was not fed back


def test_generate_without_cache_and_beam_search_run():
    model = tiny_model()
    prompt = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        no_cache = model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=False, eos_token_id=None, pad_token_id=0)
        cached = model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
        beams = model.generate(prompt, max_new_tokens=4, num_beams=2, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(no_cache, cached)
    assert beams.shape == (1, 9)
