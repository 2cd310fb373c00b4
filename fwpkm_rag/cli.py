"""The `fwpkm-rag` command line: demo, ingest, ask, info, train, bench."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from fwpkm_rag.demo import run_demo

    return run_demo(tokens=args.tokens, facts=args.facts, distractors=args.distractors, seed=args.seed,
                    baseline=not args.no_baseline, threads=args.threads, read_k=args.read_k)


def _bench(args: argparse.Namespace) -> int:
    # Benchmarks live in fwpkm_rag.benchmarks (the top-level benchmarks/ folder), imported only here.
    if args.suite == "load":
        from fwpkm_rag.benchmarks.load import run_load_bench

        return run_load_bench(out_dir=args.out, quick=args.quick, threads=args.threads, model_path=args.model)
    if args.suite == "memory":
        from fwpkm_rag.benchmarks.memory import run_memory_bench

        return run_memory_bench(out_dir=args.out, quick=args.quick, threads=args.threads)
    if args.suite == "ops":
        from fwpkm_rag.benchmarks.ops import run_ops_bench

        return run_ops_bench(out_dir=args.out, quick=args.quick, threads=args.threads)
    if args.suite == "niah":
        from fwpkm_rag.benchmarks.niah import run_niah_bench

        return run_niah_bench(_load_model(args.model), out_dir=args.out, quick=args.quick, threads=args.threads,
                              passes=args.passes, lengths=args.lengths)
    if args.suite == "addressing":
        from fwpkm_rag.benchmarks.addressing import run_addressing_bench

        run_addressing_bench(out_dir=args.out, quick=args.quick, threads=args.threads, model_path=args.model)
        return 0
    if args.suite == "ray":
        from fwpkm_rag.benchmarks.ray_ingest import run_ray_bench

        run_ray_bench(out_dir=args.out, quick=args.quick, threads=args.threads, model_path=args.model)
        return 0
    if args.suite == "segments":
        from fwpkm_rag.benchmarks.segments import run_segments_bench

        run_segments_bench(out_dir=args.out, quick=args.quick, threads=args.threads, model_path=args.model,
                           lengths=args.lengths, segment_tokens=args.segment_tokens, word_layer=args.word_layer,
                           keep_store=args.keep_store, **({"parts": args.parts} if args.parts else {}))
        return 0
    if args.suite in _SUITE_PARTS:
        from fwpkm_rag.benchmarks.suite import run_suite

        parts = args.parts or _SUITE_PARTS[args.suite]
        run_suite(parts=parts, out_dir=args.out, quick=args.quick, scaling=args.scaling, threads=args.threads,
                  model_path=args.model, systems=args.systems or None, use_reader=not args.no_reader,
                  lengths=args.lengths)
        return 0
    raise SystemExit(f"unknown benchmark suite {args.suite!r}")


# issue 7's suite: `bench retrieval` runs every part; the others run one part each
_SUITE_PARTS = {"retrieval": ["needles", "answers", "capacity", "paraphrase", "cost"], "answers": ["answers"],
                "capacity": ["capacity"], "paraphrase": ["paraphrase"], "cost": ["cost"]}


def _train(args: argparse.Namespace) -> int:
    from fwpkm_rag.training.loop import TrainConfig, train

    cfg = TrainConfig(
        preset=args.preset, out_dir=args.out or f"runs/{args.preset}", seed=args.seed, lr=args.lr,
        warm_start=args.warm_start,
        max_steps=args.max_steps, stage_steps=tuple(args.stage_steps) if args.stage_steps else None,
        threads=args.threads, resume=not args.no_resume, save_every=args.save_every,
        backbone=args.backbone, backbone_layers=tuple(args.layers) if args.layers else None,
    )
    if args.backbone and not args.out:
        cfg.out_dir = f"runs/{args.backbone}"
    record = train(cfg)
    print(f"done: step {record.get('step')} loss {record.get('loss', float('nan')):.4f}; checkpoint in {cfg.out_dir}/checkpoint")
    return 0


def _load_model(path):
    """The MemoryLM in `path` (a FwPKMForCausalLM checkpoint or attached FwPKM weights), or the default model."""
    from fwpkm_rag.default_model import load_model

    return load_model(path or None)


def _fail(message: str) -> int:
    print(f"fwpkm-rag: error: {message}", file=sys.stderr)
    return 1


def _ingest(args: argparse.Namespace) -> int:
    import os
    import time

    import torch

    from fwpkm_rag.errors import FwPKMError
    from fwpkm_rag.pipelines import FwPKMStore

    torch.set_num_threads(args.threads)
    missing = [p for p in args.paths if not os.path.isfile(p)]
    if missing:
        return _fail(f"not a file: {', '.join(missing)}")
    if args.max_document_chars < 0:
        return _fail(f"--max-document-chars must be >= 0 (0: no limit), got {args.max_document_chars}")
    limit = args.max_document_chars or None
    if args.workers < 0:
        return _fail(f"--workers must be >= 0 (0 or 1: this process; N > 1: N Ray actors), got {args.workers}")
    if args.workers > 1:
        return _ingest_ray(args, limit)
    try:
        model = _load_model(args.model)
        words = {name: value for name, value in (("word_layer", args.word_layer),
                                                  ("semantic_layer", args.semantic_layer)) if value is not None}
        if os.path.exists(os.path.join(args.store, "CURRENT")):
            store = FwPKMStore.load(args.store, model=model, show_progress=True, max_document_chars=limit, **words)
            print(f"extending the store in {args.store} ({len(store)} documents)")
        else:
            store = FwPKMStore(model=model, chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap,
                               show_progress=True, max_document_chars=limit, **words)
        before, start = store.index.tokens_ingested, time.perf_counter()
        ids = store.add_files(args.paths, passes=args.passes)
        seconds = time.perf_counter() - start
        tokens = store.index.tokens_ingested - before
        snapshot = store.save(args.store)
    except (FwPKMError, OSError) as exc:
        return _fail(str(exc))
    print(f"ingested {len(ids)} file(s), {tokens:,} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s); "
          f"store: {len(store)} documents, {store.index.n_live_chunks} chunks in {len(store.index.segments)} segment(s), "
          f"index {store.index.nbytes() / 2**20:.1f} MiB; "
          f"saved to {snapshot}")
    return 0


def _ingest_ray(args: argparse.Namespace, limit) -> int:
    """`ingest --workers N` (N > 1): the store on N Ray actors (docs/scale-out.md), saved in the same format."""
    import os
    import time

    from fwpkm_rag.errors import FwPKMError

    try:
        from fwpkm_rag.pipelines import RayFwPKMStore
        from fwpkm_rag.pipelines.distributed import require_ray

        require_ray()
    except ImportError as exc:
        return _fail(str(exc))
    model = _load_model(args.model) if args.model else None  # None: every actor loads the shipped model itself
    ray_args = dict(num_workers=args.workers, address=args.address, threads=args.threads,
                    **({} if args.word_layer is None else {"word_layer": args.word_layer}),
                    **({} if args.semantic_layer is None else {"semantic_layer": args.semantic_layer}))
    store = None
    try:
        if os.path.exists(os.path.join(args.store, "CURRENT")):
            store = RayFwPKMStore.load(args.store, model=model, show_progress=True, max_document_chars=limit,
                                       **ray_args)
            print(f"extending the store in {args.store} ({len(store)} documents) on {args.workers} Ray workers")
        else:
            store = RayFwPKMStore(model=model, chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap,
                                  show_progress=True, max_document_chars=limit, **ray_args)
        before, start = store.index.tokens_ingested, time.perf_counter()
        ids = store.add_files(args.paths, passes=args.passes)
        seconds = time.perf_counter() - start
        stats = store.index.segment_stats()
        tokens = sum(s["tokens"] for s in stats) - before
        snapshot = store.save(args.store)
    except (FwPKMError, OSError) as exc:
        return _fail(str(exc))
    finally:
        if store is not None:
            store.close()
    print(f"ingested {len(ids)} file(s), {tokens:,} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s) "
          f"on {args.workers} Ray workers; store: {len(store)} documents, {sum(s['live_chunks'] for s in stats)} chunks "
          f"in {len(stats)} segment(s), index {sum(s['bytes_in_memory'] for s in stats) / 2**20:.1f} MiB; "
          f"saved to {snapshot}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    import time

    import torch

    from fwpkm_rag.errors import FwPKMError
    from fwpkm_rag.pipelines import ChatFwPKM, FwPKMStore

    torch.set_num_threads(args.threads)
    try:
        store = FwPKMStore.load(args.store, model=_load_model(args.model))
        start = time.perf_counter()
        hits = store.search_with_provenance(args.question, k=args.k)
        ms = 1000 * (time.perf_counter() - start)
    except (FwPKMError, OSError) as exc:
        return _fail(str(exc))
    print(f"question: {args.question}\nretrieved {len(hits)} chunk(s) in {ms:.1f} ms:")
    for h in hits:
        source = h.metadata.get("source", h.doc_id)
        text = " ".join(h.text.split())
        text = text if len(text) <= 300 else text[:297] + "..."
        print(f"  [{h.rank + 1}] score {h.score:8.3f}  {source} #chunk {h.chunk_index}\n      {text}")
    if args.no_answer:
        return 0
    from fwpkm_rag.modeling.reader import reader_status

    why = None if args.from_memory else reader_status()
    if args.from_memory or why:
        # the paper's mechanism: the index model completes the answer from its memory (docs/model-card.md)
        chat = ChatFwPKM(store=store, max_tokens=args.max_tokens, prompt_format=args.prompt_format)
        label = "answer from memory" + (f" (the reader is unavailable: {why})" if why else "")
    else:
        # classic RAG over the chunks above: SmolLM2-135M-Instruct reads them, whatever model indexes
        chat = ChatFwPKM(store=store, mode="reader", k=args.k, max_tokens=args.max_tokens)
        label = f"answer read from the top {args.k} chunk(s) by SmolLM2-135M-Instruct"
    start = time.perf_counter()
    try:
        answer = chat.invoke(args.question)
    except (FwPKMError, ImportError) as exc:
        return _fail(str(exc))
    print(f"{label} ({1000 * (time.perf_counter() - start):.0f} ms): {answer.text.strip()}")
    return 0


def _folder_bytes(path: str) -> int:
    import os

    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _info(args: argparse.Namespace) -> int:
    import torch

    from fwpkm_rag.errors import FwPKMError
    from fwpkm_rag.pipelines import FwPKMStore
    from fwpkm_rag.pipelines.persistence import segment_folders

    torch.set_num_threads(args.threads)
    try:
        store = FwPKMStore.load(args.store, model=_load_model(args.model))
        folders = segment_folders(args.store)
    except (FwPKMError, OSError) as exc:
        return _fail(str(exc))
    stats = store.index.segment_stats()
    print(f"store {args.store}: segment_tokens={store.settings.segment_tokens}, merge={store.settings.merge}, "
          f"chunk_tokens={store.settings.chunk_tokens}")
    print(f"{'segment':>7} {'sealed':>6} {'tokens':>12} {'parts':>8} {'live':>9} {'chunks':>9} {'bytes on disk':>15}")
    for s in stats:
        on_disk = _folder_bytes(folders[s["id"]]) if s["id"] in folders else 0
        print(f"{s['id']:>7} {'yes' if s['sealed'] else 'no':>6} {s['tokens']:>12} {s['parts']:>8} "
              f"{s['live_chunks']:>9} {s['chunks']:>9} {on_disk:>15,}")
    total_disk = _folder_bytes(args.store)
    print(f"total: {len(stats)} segments, {len(store)} documents, {sum(s['parts'] for s in stats)} parts, "
          f"{sum(s['tokens'] for s in stats):,} tokens, {sum(s['live_chunks'] for s in stats):,} live chunks of "
          f"{sum(s['chunks'] for s in stats):,}, {total_disk:,} bytes on disk (segments, catalog and manifest), "
          f"index in memory {store.index.nbytes() / 2**20:.1f} MiB")
    store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fwpkm-rag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job: hidden facts in a long text, answered by a RAG chain over the FwPKM index, offline")
    demo.add_argument("--tokens", type=int, default=100_000, help="length of the text in tokens (default 100000)")
    demo.add_argument("--facts", type=int, default=5, help="facts hidden in the text (default 5)")
    demo.add_argument("--distractors", type=int, default=3, help="look-alike distractors per fact (default 3)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=2)
    demo.add_argument("--read-k", type=int, default=1, help="chunks the reader reads per question (default 1)")
    demo.add_argument("--no-baseline", action="store_true", help="skip the MiniLM + FAISS comparison")
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="benchmarks (numbers go to a results folder)")
    bench.add_argument("suite", choices=["memory", "ops", "niah", "retrieval", "answers", "capacity", "paraphrase", "cost", "load", "segments", "addressing", "ray"],
                       help="memory: capacity curve and per-token cost; ops: FwPKM kernels vs the naive torch path; "
                            "niah: needle-in-a-haystack answers generated from memory; retrieval: FwPKM vs vector-database RAG "
                            "and BM25 (needles, answers, capacity, paraphrase, cost; the last four also run alone); load: 8 reader threads x 1,000 "
                            "queries against one writer ingesting 1M tokens (errors, latency p50/p95/p99, writer tokens/s); segments: the "
                            "one-memory curve that sizes a segment, the merge strategies, the segmented store (issue 14); addressing: "
                            "questions that reuse an entry's words in another order, the word layer, needles (issue 17); ray: the Ray "
                            "store's ingest tokens/s with 1 and 2 workers vs the local store, and whether they answer alike (issue 14)")
    bench.add_argument("--out", default="results", help="results folder (default ./results)")
    bench.add_argument("--quick", action="store_true", help="small sweep, finishes in seconds")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    bench.add_argument("--model", default=None, help="niah: a model folder (default: the shipped model)")
    bench.add_argument("--passes", type=int, default=1, help="niah: reading passes over the haystack (spec §9)")
    bench.add_argument("--lengths", type=int, nargs="+", default=None, help="niah, retrieval, segments: haystack lengths in tokens")
    bench.add_argument("--scaling", action="store_true", help="retrieval: add 1M-token haystacks to the needle sweep")
    bench.add_argument("--parts", nargs="+", default=None, choices=["needles", "answers", "capacity", "paraphrase", "cost",
                                                                     "curve", "merge", "store", "store-capacity"],
                       help="retrieval (needles..cost), segments (curve, merge, store, store-capacity): run only these parts")
    bench.add_argument("--systems", nargs="+", default=None, help="retrieval: systems to compare (default all installed): fwpkm, bm25, minilm-faiss-flat, minilm-faiss-hnsw, minilm-inmemory, minilm-chroma, and fwpkm-smollm2 (FwPKM on the frozen SmolLM2 backbone, docs/backbone.md; not in the default set)")
    bench.add_argument("--segment-tokens", type=int, default=None,
                       help="segments: segment size of the segmented store measured (default: the size the curve chooses)")
    bench.add_argument("--word-layer", action=argparse.BooleanOptionalAction, default=None,
                       help="segments: measure the store with (--word-layer) or without (--no-word-layer) its word layer, "
                            "beside BM25 only (default: the store as a user gets it, word layer on, and every baseline)")
    bench.add_argument("--keep-store", default=None, metavar="DIR",
                       help="segments: save each segmented store the store part builds under DIR (to re-time it later)")
    bench.add_argument("--no-reader", action="store_true", help="answers: skip the SmolLM2 reader")
    bench.set_defaults(run=_bench)
    tr = sub.add_parser("train", help="train a model through its memory updates (resumable; CPU, CUDA or torchrun)")
    tr.add_argument("--preset", default="tiny", choices=["tiny", "tiny-v2", "tiny-v3", "tiny-v3-norm", "paper"],
                    help="training recipe (default tiny; tiny-v2 warm-starts from the v1 default, tiny-v3 from the v2 checkpoint; docs/model-card.md)")
    tr.add_argument("--out", default=None, help="run folder (default runs/PRESET): checkpoint/, log.jsonl, loss.png")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, 1e-3 or 5e-4)")
    tr.add_argument("--warm-start", default=None, metavar="PATH",
                    help="tiny-v2: folder of the v1 checkpoint to start from (default: the shipped default, sha256-checked)")
    tr.add_argument("--stage-steps", type=int, nargs="+", default=None, help="steps of each curriculum stage")
    tr.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    tr.add_argument("--save-every", type=int, default=100)
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    tr.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    tr.add_argument("--backbone", default=None, choices=["smollm2", "tiny-random-llama"],
                    help="train only FwPKM weights attached to this frozen pretrained backbone (docs/backbone.md); "
                         "tiny-random-llama is a random stand-in for smoke runs")
    tr.add_argument("--layers", type=int, nargs="+", default=None,
                    help="--backbone: decoder layers that get a FwPKM sub-block (default: 1; docs/backbone.md)")
    tr.set_defaults(run=_train)
    ing = sub.add_parser("ingest", help="stream text files into a store (created or extended), then save it")
    ing.add_argument("paths", nargs="+", metavar="PATH", help="UTF-8 text files (each one document)")
    ing.add_argument("--store", required=True, help="store folder (created if missing)")
    ing.add_argument("--chunk-tokens", type=int, default=256, help="tokens per retrieval chunk (new stores; default 256)")
    ing.add_argument("--chunk-overlap", type=int, default=0, help="tokens of overlap in returned chunk text (new stores)")
    ing.add_argument("--passes", type=int, default=1, help="reading passes over each document (spec §9)")
    ing.add_argument("--max-document-chars", type=int, default=10_000_000,
                     help="refuse a file of more characters than this, before reading it when its size shows it "
                          "(default 10000000, about 2.5M tokens; 0: no limit)")
    ing.add_argument("--model", default=None, help="a model folder (default: the shipped model)")
    ing.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; with --workers: per worker)")
    ing.add_argument("--workers", type=int, default=1,
                     help="N > 1: ingest on N Ray actors (pip install 'fwpkm-rag[distributed]'; docs/scale-out.md), "
                          "saved in the same format; 0 or 1 (default): in this process")
    ing.add_argument("--address", default=None,
                     help="--workers: a Ray cluster to join (e.g. auto or HOST:6379; default: start a local Ray)")
    ing.add_argument("--word-layer", action=argparse.BooleanOptionalAction, default=None,
                     help="address every chunk by its words alone too (FwPKMStore(word_layer=...), docs/addressing.md): "
                          "questions in another word order and dense lists of near-duplicate facts. Default: on for a "
                          "new store, as saved for an existing one; --word-layer on a store saved without it "
                          "rebuilds it (with a warning), --no-word-layer drops it")
    ing.add_argument("--semantic-layer", action=argparse.BooleanOptionalAction, default=None,
                     help="address every chunk by the meaning of its sentences too (FwPKMStore(semantic_layer=True), "
                          "docs/addressing.md): questions in other words; needs the baselines extra (MiniLM) and costs "
                          "a MiniLM forward per sentence. Default: off for a new store, as saved for an existing one")
    ing.set_defaults(run=_ingest)
    ask = sub.add_parser("ask", help="retrieve chunks for a question from a store; a reader (SmolLM2) answers from them")
    ask.add_argument("question")
    ask.add_argument("--store", required=True, help="store folder written by `fwpkm-rag ingest`")
    ask.add_argument("-k", type=int, default=4, help="chunks to retrieve (default 4)")
    ask.add_argument("--no-answer", action="store_true", help="retrieval only, no generated answer")
    ask.add_argument("--from-memory", action="store_true",
                     help="answer by generation from the index model's memory (the paper's mechanism; low accuracy "
                          "today, docs/model-card.md) instead of the reader over the retrieved chunks")
    ask.add_argument("--max-tokens", type=int, default=32, help="answer length limit in tokens (default 32)")
    ask.add_argument("--prompt-format", default="qa", choices=["qa", "chat"],
                     help="--from-memory: qa: 'Question: ...\\nAnswer:' (the shipped model's format, default); chat: role tokens")
    ask.add_argument("--model", default=None, help="a model folder (default: the shipped model)")
    ask.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ask.set_defaults(run=_ask)
    info = sub.add_parser("info", help="a saved store's segments: sealed, tokens, documents (parts), live chunks, bytes on disk, totals")
    info.add_argument("--store", required=True, help="store folder written by `fwpkm-rag ingest` or store.save()")
    info.add_argument("--model", default=None, help="the model the store was built with (default: the shipped model)")
    info.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    info.set_defaults(run=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
