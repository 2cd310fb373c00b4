"""The model benchmark (`python -m fwpkm_rag.benchmarks.model`): its parameter count matches the built model,
and its streaming helper shows constant resident memory over 100K tokens through `tiny`."""
import time

import pytest
import torch

from fwpkm_rag import FwPKMForCausalLM, FwPKMModelConfig
from fwpkm_rag.benchmarks.model import count_parameters, stream_tokens


def test_parameter_count_matches_the_built_model():
    small = FwPKMModelConfig.preset("tiny", static_pkm_layer=1, tie_word_embeddings=False)
    model = FwPKMForCausalLM(small)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(small)["total"]
    tiny = FwPKMModelConfig.preset("tiny")
    assert sum(p.numel() for p in FwPKMForCausalLM(tiny).parameters()) == count_parameters(tiny)["total"]


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
