"""The `fwpkm-rag` command line: demo, bench, and (as their issues land) ingest, ask, train."""
from __future__ import annotations

import argparse
import sys

PENDING = {
    "ingest": "streaming ingestion into a store (the RAG component)",
    "ask": "retrieval and answers from a store (the RAG component)",
    "train": "training the default model (the training issue)",
}


def _demo(args: argparse.Namespace) -> int:
    from fwpkm_rag.pipelines.demo import run_demo

    return run_demo(facts=args.facts)


def _bench(args: argparse.Namespace) -> int:
    if args.suite == "memory":
        from fwpkm_rag.pipelines.bench_memory import run_memory_bench

        return run_memory_bench(out_dir=args.out, quick=args.quick, threads=args.threads)
    raise SystemExit(f"unknown benchmark suite {args.suite!r}")


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
    bench.add_argument("suite", choices=["memory"], help="memory: capacity curve and per-token cost")
    bench.add_argument("--out", default="results", help="results folder (default ./results)")
    bench.add_argument("--quick", action="store_true", help="small sweep, finishes in seconds")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    bench.set_defaults(run=_bench)
    for name, what in PENDING.items():
        sub.add_parser(name, help=f"(coming) {what}").set_defaults(run=_pending(name))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
