"""The segmented store's fast ranking (first-layer queries once, then per segment its sub-keys and provenance)
over an attached backbone agrees with the slow reference (one forward per segment over its memories, sealed
ones read back from disk): the first FwPKM layer's input is taken mid-forward from the backbone's own layers."""
import random

import pytest
import torch

from backbone_helpers import small_memory, tiny_hf_tokenizer, tiny_llama
from fwpkm_rag import attach_fwpkm
from fwpkm_rag.modeling.attached import AttachedFwPKMModel
from fwpkm_rag.pipelines import FwPKMStore
from fwpkm_rag.pipelines.retrieval import check_query, first_layer_queries, read_question, reads_against

WORDS = "river hill rain table list number class method object value function water sea city capital".split()


def test_fast_ranking_over_an_attached_backbone_matches_a_forward_per_segment():
    tok = tiny_hf_tokenizer()
    backbone = tiny_llama(len(tok), layers=3)
    attach_fwpkm(backbone, layers=[1, 2], config=small_memory(n_subkeys=32, k_dim=32, v_dim=16, chunk_size=32))
    with torch.no_grad():
        for layer in backbone.model.layers[1:3]:
            layer.fwpkm.q_proj.weight.normal_(0, 0.5)
    model = AttachedFwPKMModel(backbone, tok, window=64)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(50)) + f" The code for ID-{4000 + i} is {700 + i}."
            for i in range(6)]
    store = FwPKMStore(model=model, chunk_tokens=24, segment_tokens=150)
    store.add_texts(docs, ids=[f"d{i}" for i in range(6)])
    segments = store.index.view.segments
    assert len(segments) >= 3 and segments[0].index.sealed
    config = model.fwpkm_modules[0].config
    for query in [f"The code for ID-{4000 + i}" for i in (0, 3, 5)] + ["river hill"]:
        q = first_layer_queries(model, check_query(store.index.tok, query, 1000))
        for sv in segments:
            slots_ref, weights_ref = read_question(sv.index, query, sv.view).reads[0]
            slots, weights = reads_against(q, sv.view.keys[0], config)
            assert torch.equal(slots, slots_ref)
            torch.testing.assert_close(weights, weights_ref, rtol=1e-5, atol=1e-6)
        fast, slow = store.index.search(query, 4), store.index.search_reference(query, 4)
        assert [(h.segment, h.chunk_id) for h in fast] == [(h.segment, h.chunk_id) for h in slow]
        assert [h.score for h in fast] == pytest.approx([h.score for h in slow], rel=1e-5)
    store.close()
