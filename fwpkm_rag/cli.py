"""The `fwpkm-rag` command line: demo, bench, and (as their issues land) ingest, ask, train."""
from __future__ import annotations

import argparse
import sys

PENDING = {
    "ingest": "streaming ingestion into a store (the RAG component)",
    "ask": "retrieval and answers from a store (the RAG component)",
}


def _demo(args: argparse.Namespace) -> int:
    from fwpkm_rag.pipelines.demo import run_demo

    return run_demo(facts=args.facts)


def _bench(args: argparse.Namespace) -> int:
    if args.suite == "memory":
        from fwpkm_rag.pipelines.bench_memory import run_memory_bench

        return run_memory_bench(out_dir=args.out, quick=args.quick, threads=args.threads)
    if args.suite == "ops":
        from fwpkm_rag.pipelines.bench_ops import run_ops_bench

        return run_ops_bench(out_dir=args.out, quick=args.quick, threads=args.threads)
    if args.suite == "niah":
        from fwpkm_rag.pipelines.bench_niah import run_niah_bench

        model = None
        if args.model:
            from fwpkm_rag.modeling.model import FwPKMForCausalLM

            model = FwPKMForCausalLM.from_pretrained(args.model).eval()
        return run_niah_bench(model, out_dir=args.out, quick=args.quick, threads=args.threads, passes=args.passes,
                              lengths=args.lengths)
    raise SystemExit(f"unknown benchmark suite {args.suite!r}")


def _train(args: argparse.Namespace) -> int:
    from fwpkm_rag.training.loop import TrainConfig, train

    cfg = TrainConfig(
        preset=args.preset, out_dir=args.out or f"runs/{args.preset}", seed=args.seed, lr=args.lr,
        max_steps=args.max_steps, stage_steps=tuple(args.stage_steps) if args.stage_steps else None,
        threads=args.threads, resume=not args.no_resume, save_every=args.save_every,
    )
    record = train(cfg)
    print(f"done: step {record.get('step')} loss {record.get('loss', float('nan')):.4f}; checkpoint in {cfg.out_dir}/checkpoint")
    return 0


def _pending(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"fwpkm-rag {name}: not available yet — {PENDING[name]} has not landed.", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fwpkm-rag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job: show the memory storing and recalling facts, offline")
    demo.add_argument("--facts", type=int, default=1000, help="associations to store (default 1000)")
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="benchmarks (numbers go to a results folder)")
    bench.add_argument("suite", choices=["memory", "ops", "niah"],
                       help="memory: capacity curve and per-token cost; ops: FwPKM kernels vs the naive torch path; "
                            "niah: needle-in-a-haystack answers generated from memory")
    bench.add_argument("--out", default="results", help="results folder (default ./results)")
    bench.add_argument("--quick", action="store_true", help="small sweep, finishes in seconds")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    bench.add_argument("--model", default=None, help="niah: a model folder (default: the shipped model)")
    bench.add_argument("--passes", type=int, default=1, help="niah: reading passes over the haystack (spec §9)")
    bench.add_argument("--lengths", type=int, nargs="+", default=None, help="niah: haystack lengths in tokens")
    bench.set_defaults(run=_bench)
    tr = sub.add_parser("train", help="train a model through its memory updates (resumable; CPU, CUDA or torchrun)")
    tr.add_argument("--preset", default="tiny", choices=["tiny", "paper"], help="model preset (default tiny)")
    tr.add_argument("--out", default=None, help="run folder (default runs/PRESET): checkpoint/, log.jsonl, loss.png")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--stage-steps", type=int, nargs="+", default=None, help="steps of each curriculum stage")
    tr.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    tr.add_argument("--save-every", type=int, default=100)
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    tr.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    tr.set_defaults(run=_train)
    for name, what in PENDING.items():
        sub.add_parser(name, help=f"(coming) {what}").set_defaults(run=_pending(name))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
