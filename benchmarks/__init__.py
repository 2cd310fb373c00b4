"""Benchmarks of fwpkm-rag (`fwpkm-rag bench ...`): installed as `fwpkm_rag.benchmarks`, never imported by the
library itself. Numbers go to a results folder and, with machine, commit and command, to docs/benchmarks.md."""
