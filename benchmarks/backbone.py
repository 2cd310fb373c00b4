"""Measure the attached backbone (docs/backbone.md): load time, ingest tokens/s of the full vs the truncated
(memory-only) forward, and needle retrieval per FwPKM layer choice (exact and paraphrased questions).

    python -m fwpkm_rag.benchmarks.backbone --threads 1 --layers 1 3 1,3 --items 6 --length 8192 --distractors 16
"""
from __future__ import annotations

import argparse
import json
import time

from fwpkm_rag.benchmarks.common import commit, machine


def _throughput(model, ids, memory_only: bool, piece: int = 512) -> float:
    import torch

    cache = model.init_cache(1)
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, ids.shape[1], piece):
            model(ids[:, s:s + piece], cache=cache, logits_to_keep=1, memory_only=memory_only)
    return ids.shape[1] / (time.perf_counter() - start)


def _retrieval(model, items, chunk_tokens: int, k: int = 5) -> dict:
    from fwpkm_rag.pipelines import FwPKMStore
    from fwpkm_rag.pipelines.chunking import chunk_spans

    tok = model.get_tokenizer()
    hits = {"question": 0, "paraphrase": 0}
    for item in items:
        store = FwPKMStore(model=model, chunk_tokens=chunk_tokens, word_layer=False)  # the lexical memory alone
        store.add_texts([item.text], ids=["doc"])
        gold = set()
        ids = tok.encode(item.text)
        for idx, _, _, s, e in chunk_spans(item.text, ids, tok, chunk_tokens, 0):
            lo = len(tok.decode(ids[:s]))
            hi = len(tok.decode(ids[:e]))
            if lo < item.gold_span[1] and hi > item.gold_span[0]:
                gold.add(idx)
        for kind in hits:
            got = store.search_with_provenance(getattr(item, kind), k=k, matched_slots=0)
            hits[kind] += bool(gold & {h.chunk_index for h in got})
        store.close()
    return {kind: v / len(items) for kind, v in hits.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", nargs="+", default=["1", "3", "7"],
                    help="placements to compare: a layer index, or several joined by commas (1,3)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens for the throughput measurement")
    ap.add_argument("--items", type=int, default=6, help="needle items per placement (0: skip retrieval)")
    ap.add_argument("--length", type=int, default=2048, help="tokens per needle item")
    ap.add_argument("--distractors", type=int, default=4)
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from fwpkm_rag import AttachedFwPKMModel, attach_fwpkm, backbone, detach_fwpkm
    from fwpkm_rag.data.corpora import haystack
    from fwpkm_rag.data.needles import make_item

    torch.set_num_threads(args.threads)
    res = {"machine": machine(args.threads), "commit": commit(), "threads": args.threads, "torch": torch.__version__}
    start = time.perf_counter()
    hf, tok = backbone.load_smollm2()
    res["load_s"] = round(time.perf_counter() - start, 3)
    res["converted_on_load"] = backbone.last_load.get("converted")
    adapter_tok = None
    text = haystack(args.tokens + 64, seed=1, split="bench")
    rows = []
    items = None
    for spec in args.layers:
        layer = [int(x) for x in spec.split(",")]
        attach_fwpkm(hf, layer)
        model = AttachedFwPKMModel(hf, tok, name="smollm2")
        adapter_tok = model.get_tokenizer()
        if not args.no_calibrate:
            model.calibrate()
        ids = torch.tensor([adapter_tok.encode(text)[: args.tokens]])
        row = {"layers": layer, "truncated_tok_s": round(_throughput(model, ids, True), 1)}
        if not rows:
            row["full_tok_s"] = round(_throughput(model, ids, False), 1)
            res["full_tok_s"] = row["full_tok_s"]
        if args.items:
            if items is None:
                items = [make_item(args.length, depth=(i + 0.5) / args.items, n_distractors=args.distractors,
                                   seed=100 + i, tokenizer=adapter_tok) for i in range(args.items)]
            t0 = time.perf_counter()
            row["hit@5"] = _retrieval(model, items, args.chunk_tokens)
            row["retrieval_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        detach_fwpkm(hf)
    res["placements"] = rows
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
