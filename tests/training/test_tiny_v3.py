"""The tiny-v3 recipe (issue 15): v2 with a separate write gate, warm-started from the v2 checkpoint."""
import dataclasses
import json

import pytest
import torch

from fwpkm_rag.errors import ConfigError
from fwpkm_rag.fingerprint import sha256_file
from fwpkm_rag.modeling.config import FwPKMModelConfig
from fwpkm_rag.modeling.model import FwPKMForCausalLM
from fwpkm_rag.training import recipes
from fwpkm_rag.training.loop import TrainConfig, train
from fwpkm_rag.training.warm_start import warm_start


def _v2_like(seed=0):
    torch.manual_seed(seed)
    model = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny-v2"))
    with torch.no_grad():  # a gate that is not the init's, so copying it is visible
        for block in model.fwpkm_modules:
            block.g_proj.weight.normal_(0, 0.3)
            block.g_proj.bias.fill_(0.7)
            block.g_norm.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_tiny_v3_preset_is_v2_with_a_separate_write_gate():
    v2, v3 = FwPKMModelConfig.preset("tiny-v2"), FwPKMModelConfig.preset("tiny-v3")
    assert v3.fwpkm_config.write_gate == "separate" and v2.fwpkm_config.write_gate == "shared"
    assert v3.fwpkm_config.replace(write_gate="shared") == v2.fwpkm_config
    assert v3.tokenizer == v2.tokenizer


def test_warm_start_from_v2_starts_the_write_gate_as_v2s_gate_and_computes_exactly_what_v2_does():
    v2 = _v2_like()
    v3 = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny-v3")).eval()
    warm_start(v3, v2)
    for b2, b3 in zip(v2.fwpkm_modules, v3.fwpkm_modules):
        assert torch.equal(b3.w_proj.weight, b2.g_proj.weight) and torch.equal(b3.w_proj.bias, b2.g_proj.bias)
        assert torch.equal(b3.w_norm.weight, b2.g_norm.weight)
        assert torch.count_nonzero(b3.w_ctx.weight) == 0
    assert torch.equal(v3.embed_tokens.weight, v2.embed_tokens.weight)  # same tokenizer: every row as it was
    ids = torch.randint(0, 32768, (1, 300))
    with torch.no_grad():
        c2, c3 = v2.init_cache(1), v3.init_cache(1)
        a, b = v2(ids, cache=c2, return_memory=True), v3(ids, cache=c3, return_memory=True)
    assert torch.equal(a.logits, b.logits)
    for (s2, w2, g2), (s3, w3, g3) in zip(a.memory_reads, b.memory_reads):
        assert torch.equal(s2, s3) and torch.equal(g2, g3)


def test_tiny_v3_refuses_a_source_that_is_not_the_pinned_v2(tmp_path):
    with pytest.raises(ConfigError, match="no model.safetensors: pass the v2 checkpoint"):
        recipes.warm_start_source(recipes.recipe("tiny-v3"), str(tmp_path / "missing"))
    _v2_like().save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="the v2 checkpoint"):
        recipes.warm_start_source(recipes.recipe("tiny-v3"), str(tmp_path))


def test_tiny_v3_trains_resumes_like_an_uninterrupted_run_and_logs_the_write_gates(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    src = tmp_path / "v2"
    _v2_like().save_pretrained(str(src))
    pinned = dataclasses.replace(recipes.RECIPES["tiny-v3"], warm_start_sha256=sha256_file(str(src / "model.safetensors")))
    monkeypatch.setitem(recipes.RECIPES, "tiny-v3", pinned)
    common = dict(preset="tiny-v3", stage_steps=(3,), log_every=1, save_every=1, warmup=1, warm_start=str(src))
    train(TrainConfig(out_dir=str(tmp_path / "a"), resume=False, **common))
    train(TrainConfig(out_dir=str(tmp_path / "b"), max_steps=2, resume=False, **common))
    train(TrainConfig(out_dir=str(tmp_path / "b"), resume=True, **common))
    log = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"gate0_fact", "gate0_filler", "gate1_fact", "gate1_filler", "gate_aux"} <= set(log[-1])
    a = FwPKMForCausalLM.from_pretrained(str(tmp_path / "a" / "checkpoint"))
    b = FwPKMForCausalLM.from_pretrained(str(tmp_path / "b" / "checkpoint")).state_dict()
    assert a.config.fwpkm_config.write_gate == "separate"
    assert all(torch.count_nonzero(block.w_ctx.weight) > 0 for block in a.fwpkm_modules)  # the context part learns
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_write_gates_learn_at_the_recipes_fast_rate_and_other_recipes_keep_two_groups():
    from fwpkm_rag.training.loop import _optimizer

    v3 = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny-v3"))
    opt = _optimizer(v3, TrainConfig(preset="tiny-v3"))
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert len(scale_of) == sum(1 for _ in v3.parameters())  # every parameter, once
    for name, p in v3.named_parameters():
        new = any(part in name for part in (".w_ctx.", ".w_proj.", ".w_norm."))
        assert scale_of[id(p)] == (10.0 if new else 1.0), name
    v2_groups = _optimizer(_v2_like(), TrainConfig(preset="tiny-v2")).param_groups
    assert [(g["weight_decay"], g["lr_scale"]) for g in v2_groups] == [(0.01, 1.0), (0.0, 1.0)]


def test_match_new_row_norms_scales_only_the_added_ranks_to_the_copied_rows_mean_norm():
    from fwpkm_rag.training.warm_start import match_new_row_norms

    model = _v2_like()
    before = model.embed_tokens.weight.detach().clone()
    target = match_new_row_norms(model, 8192)
    after = model.embed_tokens.weight.detach()
    torch.testing.assert_close(torch.tensor(target), before[:8192].norm(dim=1).mean())
    assert torch.equal(after[:8192], before[:8192]) and torch.equal(after[32768:], before[32768:])  # old, specials
    torch.testing.assert_close(after[8192:32768].norm(dim=1), torch.full((32768 - 8192,), target), rtol=1e-5, atol=0)
    cos = torch.nn.functional.cosine_similarity(after[8192:32768], before[8192:32768], dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)  # directions kept
    with pytest.raises(ConfigError, match="old_k"):
        match_new_row_norms(model, 32768)


def test_tiny_v3_norm_starts_as_its_pinned_v3_source_with_matched_rows(tmp_path, monkeypatch):
    from fwpkm_rag.training.loop import build_model

    src = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny-v3"))
    src.save_pretrained(str(tmp_path))
    pinned = dataclasses.replace(recipes.RECIPES["tiny-v3-norm"],
                                 warm_start_sha256=sha256_file(str(tmp_path / "model.safetensors")))
    monkeypatch.setitem(recipes.RECIPES, "tiny-v3-norm", pinned)
    model = build_model("tiny-v3-norm", warm_start=str(tmp_path))
    emb = model.embed_tokens.weight.detach()
    target = src.embed_tokens.weight.detach()[:8192].norm(dim=1).mean()
    torch.testing.assert_close(emb[8192:32768].norm(dim=1), target.expand(32768 - 8192), rtol=1e-5, atol=0)
    ref = src.state_dict()
    for name, value in model.state_dict().items():
        if name not in ("embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(value, ref[name]), name
    with pytest.raises(ConfigError, match="the v3 checkpoint"):
        recipes.warm_start_source(recipes.recipe("tiny-v3-norm"), str(tmp_path / "nowhere"))
