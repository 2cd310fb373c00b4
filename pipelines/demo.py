"""`make demo` until the RAG pipeline lands: the FwPKM memory storing and recalling facts, with timings.

The final demo (ingest a 100K-token text with hidden facts, ask questions, compare with MiniLM + FAISS) needs
the trained default model and the retrieval pipeline; this one shows the memory they are built on.
"""
from __future__ import annotations

import time

import torch

from fwpkm_rag.memory import FwPKM, FwPKMConfig
from fwpkm_rag.pipelines.bench_memory import capacity_recall

PLAN = """\
fwpkm-rag demo — what runs today, and what this command will become

  Today:   the FwPKM memory on its own. Random key -> value facts are streamed through one memory (one
           gradient step per chunk of tokens), then every key is asked for once with the memory frozen.
  Planned: with the shipped default model, ingest a >=100K-token text with facts hidden at several depths,
           ask questions, show the chunks the memory traces its reads back to and the generated answers,
           next to what MiniLM + FAISS retrieves for the same questions (see the open issues).
"""


def run_demo(facts: int = 1000) -> int:
    print(PLAN)
    torch.set_num_threads(2)
    config = FwPKMConfig(n_subkeys=128, k_dim=128, v_dim=128, topk=8, chunk_size=128)
    print(f"memory: {config.n_slots:,} value slots x {config.v_dim} floats, top-{config.topk} reads, "
          f"chunk {config.chunk_size}; no-overlap capacity N/k = {config.n_slots // config.topk:,} facts")
    for n in sorted({max(facts // 4, 1), facts, facts * 4}):
        start = time.perf_counter()
        result = capacity_recall(config, n)
        seconds = time.perf_counter() - start
        print(f"  stored {n:6,d} facts ({result.load:4.2f} x N/k): recall {100 * result.recall:5.1f}%  "
              f"mean cosine {result.mean_cosine:.3f}  ({seconds:.2f} s for {2 * n:,} tokens written + {n:,} read)")
    layer = FwPKM(256, config)
    dense = layer.values_init.numel() * 4
    print(f"\nan isolated session stores only the value rows it rewrote (dense table: {dense / 2**20:.0f} MiB):")
    with torch.no_grad():
        state = layer.init_state(1)
        for tokens in (256, 1024, 4096):
            state = layer(torch.randn(1, tokens - state.position, 256), state, inplace=True).state
            print(f"  after {tokens:5,d} random tokens: {state.nbytes() / 2**20:5.2f} MiB, "
                  f"{100 * state.written_fraction().item():4.1f}% of slots rewritten")
    return 0
