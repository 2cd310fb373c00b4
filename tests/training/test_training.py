"""Training the FwPKM model: the recall-ready initialisation recalls before any training (through the fast
weights only), a few steps of the real recipe lower the loss and keep recall, and a resumed run equals an
uninterrupted one."""
import json

import pytest
import torch

from fwpkm_rag.training.data import CURRICULUM, EpisodeMaker
from fwpkm_rag.training.loop import TrainConfig, answer_accuracy, build_model, train

MARK, IS = 100, 200  # two fixed token ids used as "fact" and "is" markers


def _recall_sequences(n_seq=4, n_facts=16, filler=300, seed=1, vocab=8192):
    """Multi-query associative recall: [F k1 k2 IS v1 v2] x n, random filler longer than the attention
    window, then every fact asked again in random order; returns (ids (1,T), [(position of IS, v1)])."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_seq):
        keys = torch.randint(1000, vocab, (n_facts, 2), generator=gen)
        vals = torch.randint(1000, vocab, (n_facts, 2), generator=gen)
        ids = []
        for i in range(n_facts):
            ids += [MARK, *keys[i].tolist(), IS, *vals[i].tolist()]
        ids += torch.randint(1000, vocab, (filler,), generator=gen).tolist()
        asks = []
        for i in torch.randperm(n_facts, generator=gen).tolist():
            ids += [MARK, *keys[i].tolist(), IS]
            asks.append((len(ids) - 1, int(vals[i, 0])))
            ids += vals[i].tolist()
        out.append((torch.tensor([ids]), asks))
    return out


@torch.no_grad()
def _recall(model, read_only):
    hit = total = 0
    for ids, asks in _recall_sequences():
        logits = model(ids, use_cache=False, read_only=read_only).logits
        hit += sum(int(logits[0, p].argmax()) == v for p, v in asks)
        total += len(asks)
    return hit / total


def test_recall_ready_init_recalls_at_step_zero_through_the_fast_weights_only():
    model = build_model("tiny").eval()
    assert _recall(model, read_only=False) >= 0.85
    assert _recall(model, read_only=True) <= 0.02


def test_a_few_steps_of_the_recipe_lower_the_loss_and_keep_recall(tmp_path):
    torch.set_num_threads(1)
    model = build_model("tiny").eval()
    held_out = [EpisodeMaker(model.get_tokenizer(), seed=999).batch(CURRICULUM[0], s) for s in range(2)]
    before = answer_accuracy(model, held_out)
    train(TrainConfig(out_dir=str(tmp_path), max_steps=20, stage_steps=(20, 1), log_every=4, save_every=20, warmup=2,
                      resume=False))
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"], log
    from fwpkm_rag.modeling.model import FwPKMForCausalLM

    trained = FwPKMForCausalLM.from_pretrained(str(tmp_path / "checkpoint")).eval()
    after, frozen = answer_accuracy(trained, held_out), answer_accuracy(trained, held_out, read_only=True)
    assert after >= 0.8 and after >= before - 0.1, (before, after)
    assert frozen <= 0.1, frozen  # the answers come from the fast weights, not from the attention window
    assert (tmp_path / "loss.png").exists()
    assert {"gate0_filler", "gate0_fact", "gate1_filler"} <= set(log[-1])


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    common = dict(stage_steps=(3, 3), log_every=1, save_every=2, lr=3e-4)
    train(TrainConfig(out_dir=str(tmp_path / "a"), max_steps=4, resume=False, **common))
    train(TrainConfig(out_dir=str(tmp_path / "b"), max_steps=2, resume=False, **common))
    train(TrainConfig(out_dir=str(tmp_path / "b"), max_steps=4, resume=True, **common))  # resumes at step 2
    from fwpkm_rag.modeling.model import FwPKMForCausalLM

    a = FwPKMForCausalLM.from_pretrained(str(tmp_path / "a" / "checkpoint")).state_dict()
    b = FwPKMForCausalLM.from_pretrained(str(tmp_path / "b" / "checkpoint")).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
