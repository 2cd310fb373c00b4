"""Presets. (Parameter counts and flat resident memory while streaming are checked with the model benchmark's helpers:
tests/benchmarks/test_model.py.)"""
from fwpkm_rag.modeling import FwPKMModelConfig


def test_presets():
    tiny = FwPKMModelConfig.preset("tiny")
    assert (tiny.d_model, tiny.n_layers, tiny.fwpkm_layers, tiny.fwpkm_config.n_subkeys) == (256, 4, [0, 2], 128)
    assert tiny.fwpkm_config.q_conv == 4 and tiny.fwpkm_config.k_dim == tiny.fwpkm_config.v_dim == 128
    paper = FwPKMModelConfig.preset("paper")  # not instantiated: 2 x 512 MiB of initial value tables
    assert (paper.d_model, paper.n_layers, paper.window, paper.fwpkm_layers) == (768, 12, 512, [2, 10])
    assert paper.fwpkm_config.n_slots == 512 * 512 and paper.fwpkm_config.chunk_size == 512
    assert FwPKMModelConfig.preset("tiny", fwpkm={"chunk_size": 256}).fwpkm_config.n_subkeys == 128


def test_import_fwpkm_rag_stays_light():
    from lightimport import assert_import_light, fresh_modules

    assert_import_light("fwpkm_rag", forbidden=("transformers",))
    # and the lazy names load it on first use
    assert "transformers" in fresh_modules("from fwpkm_rag import FwPKMForCausalLM, FwPKMModelConfig, FwPKMCache")
