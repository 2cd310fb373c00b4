"""Presets (parameter counts) and constant resident memory while streaming 100K tokens through `tiny`."""
import time

import pytest
import torch

from fwpkm_rag.modeling import FwPKMForCausalLM, FwPKMModelConfig
from fwpkm_rag.model_bench import count_parameters, stream_tokens


def test_presets_and_parameter_count():
    tiny = FwPKMModelConfig.preset("tiny")
    assert (tiny.d_model, tiny.n_layers, tiny.fwpkm_layers, tiny.fwpkm_config.n_subkeys) == (256, 4, [0, 2], 128)
    assert tiny.fwpkm_config.q_conv == 4 and tiny.fwpkm_config.k_dim == tiny.fwpkm_config.v_dim == 128
    paper = FwPKMModelConfig.preset("paper")  # not instantiated: 2 x 512 MiB of initial value tables
    assert (paper.d_model, paper.n_layers, paper.window, paper.fwpkm_layers) == (768, 12, 512, [2, 10])
    assert paper.fwpkm_config.n_slots == 512 * 512 and paper.fwpkm_config.chunk_size == 512
    assert FwPKMModelConfig.preset("tiny", fwpkm={"chunk_size": 256}).fwpkm_config.n_subkeys == 128
    small = FwPKMModelConfig.preset("tiny", static_pkm_layer=1, tie_word_embeddings=False)
    model = FwPKMForCausalLM(small)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(small)["total"]


@pytest.mark.slow
def test_resident_memory_is_flat_while_streaming_100k_tokens():
    torch.manual_seed(0)
    model = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny")).eval()
    t0 = time.perf_counter()
    res = stream_tokens(model, 100_000, piece=1024, checkpoints=[20_000, 100_000])
    growth = res["rss"][100_000] - res["rss"][20_000]
    # Bounded by design: KV windows are fixed; each memory may still add rewritten value rows, at most
    # n*n*v_dim floats (8 MiB per memory here). A full-attention KV cache would add ~600 MiB over 80K tokens.
    fw = model.config.fwpkm_config
    bound = 2 * fw.n_slots * fw.v_dim * 4 + 16 * 2**20
    assert growth < bound, f"RSS grew by {growth / 2**20:.1f} MiB between 20K and 100K tokens"
    assert res["cache"].position == 100_000
    assert all(k.shape[2] == model.config.window - 1 for k, _ in res["cache"].kv)
    print(f"streamed 100K tokens in {time.perf_counter() - t0:.1f}s; RSS growth 20K->100K {growth / 2**20:.2f} MiB")


def test_import_fwpkm_rag_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, fwpkm_rag; assert 'transformers' not in sys.modules, 'transformers imported';"
        "from fwpkm_rag import FwPKMForCausalLM, FwPKMModelConfig, FwPKMCache; assert 'transformers' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
