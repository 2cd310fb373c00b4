"""Measurements of the FwPKM language model: parameter counts, CPU forward throughput, resident memory while
streaming. Not wired into the CLI; run it as a script:

    .venv/bin/python -m fwpkm_rag.benchmarks.model --threads 2 --tokens 100000

Numbers go to docs/benchmarks.md ("Model (issue 4)") with the machine and the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import torch

from fwpkm_rag.benchmarks.common import commit, machine


def count_parameters(config) -> dict:
    """Slow-weight parameter counts of a model built from `config` (without building it), plus the fast
    weights per memory (not parameters: they live in MemoryState, initial tables regenerated from a seed)."""
    d, V, L = config.d_model, config.vocab_size, config.n_layers
    fw = config.fwpkm_config
    attn = 4 * d * d + d  # qkv + out projection + the pre-attention RMSNorm
    mlp = 3 * d * config.mlp_hidden + d  # SwiGLU gate/up + down + the pre-MLP RMSNorm
    width = fw.heads * fw.k_dim
    fwpkm = (d * width + width) + (d * fw.v_dim + fw.v_dim) + (d + 1) + (fw.v_dim * d + d)  # q, v, g, o
    fwpkm += 3 * d + fw.v_dim + width * fw.q_conv  # q/v/g norms, o norm, query conv
    static = 0
    if config.static_pkm_layer is not None:
        s = config.static_pkm
        static = d * s["heads"] * s["k_dim"] + s["heads"] * s["n_subkeys"] * s["k_dim"] + s["n_subkeys"] ** 2 * d
        static -= 3 * d * config.mlp_hidden  # replaces one SwiGLU
    embed = V * d
    head = 0 if config.tie_word_embeddings else V * d
    total = embed + head + L * (attn + mlp) + len(config.fwpkm_layers) * fwpkm + static + d
    return {
        "total": total,
        "embedding": embed,
        "lm_head": head,
        "blocks": L * (attn + mlp) + static,
        "fwpkm_slow": len(config.fwpkm_layers) * fwpkm,
        "non_embedding": total - embed - head,
        "fast_weight_floats_per_memory": fw.n_slots * fw.v_dim + 2 * fw.heads * fw.n_subkeys * fw.half_dim,
    }


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stream_tokens(model, total: int, piece: int = 1024, checkpoints=(), seed: int = 0) -> dict:
    """Stream `total` random token ids through `model` in pieces (no grad, memory written in place).

    Returns the wall time and {tokens: RSS bytes} at each checkpoint (taken after the piece that reaches it).
    """
    gen = torch.Generator().manual_seed(seed)
    cache = model.init_cache(1)
    marks = sorted(checkpoints)
    rss, done = {}, 0
    start = time.perf_counter()
    with torch.no_grad():
        while done < total:
            n = min(piece, total - done)
            ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen)
            model(ids, cache=cache, logits_to_keep=1)  # ingestion: only the last logits are needed
            done += n
            while marks and done >= marks[0]:
                rss[marks.pop(0)] = rss_bytes()
    return {"seconds": time.perf_counter() - start, "rss": rss, "cache_bytes": cache.nbytes(), "cache": cache}


def measure(preset: str = "tiny", threads: int = 2, tokens: int = 100_000, piece: int = 1024) -> dict:
    from fwpkm_rag import FwPKMForCausalLM, FwPKMModelConfig

    torch.set_num_threads(threads)
    config = FwPKMModelConfig.preset(preset)
    torch.manual_seed(0)
    model = FwPKMForCausalLM(config).eval()
    built = sum(p.numel() for p in model.parameters())
    counts = count_parameters(config)
    assert built == counts["total"], (built, counts)
    # Warm-up (allocator, first-call costs), then the timed stream.
    stream_tokens(model, 2 * piece, piece)
    marks = sorted({1_000, 20_000, 100_000, tokens})
    res = stream_tokens(model, tokens, piece, checkpoints=[m for m in marks if m <= tokens])
    return {
        "preset": preset,
        "threads": threads,
        "piece": piece,
        "parameters": counts,
        "tokens": tokens,
        "seconds": round(res["seconds"], 2),
        "tokens_per_second": round(tokens / res["seconds"]),
        "rss_mib": {k: round(v / 2**20, 1) for k, v in res["rss"].items()},
        "cache_mib_at_end": round(res["cache_bytes"] / 2**20, 2),
        "torch": torch.__version__,
        "machine": machine(threads),
        "commit": commit(),
    }


def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--piece", type=int, default=1024)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.preset, args.threads, args.tokens, args.piece), indent=2))


if __name__ == "__main__":
    main()
