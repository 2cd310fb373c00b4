"""Why the default store is a phrase matcher (issue 17 A, step 2): cheap ablations on the entries task.

``python -m fwpkm_rag.benchmarks.addressing_diagnosis [--entries 1000] [--out results/addressing]`` asks every
entry shuffled and reordered (and verbatim where the change could cost it) after changing ONE thing:

* (i)   the query convolution: its past taps zeroed at query time only, or at write and query time;
* (ii)  the writers kept per slot: 32 (default), 128, 512;
* (iii) subword tokens vs words: the word layer keyed by BPE tokens vs by lowercased words;
* (iv)  the scoring: the saturation constant, the slot idf's power, the question-token idf.

Scoring changes are made by swapping retrieval's public module-level names (``SATURATION``, ``slot_idf``,
``idf_weight``) for the duration of one measurement and restoring them; the conv by editing the model's
``q_conv`` taps in place and restoring them. A diagnosis, not a library path. Writes diagnosis.json.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from fwpkm_rag.benchmarks.common import commit, machine, write_json
from fwpkm_rag.benchmarks.systems import FwPKMSystem, load_model_described

TASKS = ("verbatim", "shuffled", "reordered")


@contextlib.contextmanager
def swapped(module, name: str, value):
    """module.name = value for the duration of the block."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


@contextlib.contextmanager
def conv_past_zeroed(model):
    """The FwPKM query convolutions see the token alone (taps t-3..t-1 set to 0) for the block."""
    convs = [p for n, p in model.named_parameters() if n.endswith("q_conv")]
    saved = [p.detach().clone() for p in convs]
    with torch.no_grad():
        for p in convs:
            p[:, :-1] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(convs, saved):
                p.copy_(s)


def recall(search, entries, tasks) -> dict:
    """{task: {"r5", "r1"}} in % over all entries; search(question) -> chunk ids best first."""
    out = {}
    for task in tasks:
        r5 = r1 = 0
        for e in entries:
            hits = search(e.question(task))[:5]
            r5 += e.index in hits
            r1 += bool(hits) and hits[0] == e.index
        out[task] = dict(r5=100.0 * r5 / len(entries), r1=100.0 * r1 / len(entries))
    return out


def run(n_entries: int = 1000, out_dir: str = "results/addressing", threads: int = 1) -> dict:
    from fwpkm_rag.data.entries import make_entries
    from fwpkm_rag.pipelines import retrieval
    from fwpkm_rag.pipelines.word_layer import WordLayer

    torch.set_num_threads(threads)
    entries = make_entries(n_entries)
    chunks = [e.text for e in entries]
    model, desc, _ = load_model_described()
    rows = []

    def store_search(system):
        return lambda q: [i for i, _ in system.search(q, 5)]

    def record(label, search, tasks=TASKS[1:], **extra):
        t0 = time.perf_counter()
        r = recall(search, entries, tasks)
        rows.append(dict(change=label, **extra, **r))
        print(f"{label}: " + " | ".join(f"{t} {v['r5']:.1f} / {v['r1']:.1f}" for t, v in r.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)

    base = FwPKMSystem(model, chunk_size=128)
    base.add(chunks)
    search = store_search(base)
    record("default store", search, TASKS, bytes=base.nbytes())
    with conv_past_zeroed(model):
        record("(i) conv past taps zeroed at query time only", search, TASKS)
        zero = FwPKMSystem(model, chunk_size=128)
        zero.add(chunks)
        record("(i) conv past taps zeroed at write and query time", store_search(zero), TASKS)
        zero.close()
    for per_slot in (128, 512):
        wide = FwPKMSystem(model, chunk_size=128, per_slot=per_slot)
        wide.add(chunks)
        record(f"(ii) {per_slot} writers per slot", store_search(wide), bytes=wide.nbytes())
        wide.close()
    for sat in (0.05, 5.0, 1e6):
        with swapped(retrieval, "SATURATION", sat):
            record(f"(iv) saturation {sat:g}", search)
    slot_idf, idf_weight = retrieval.slot_idf, retrieval.idf_weight
    with swapped(retrieval, "slot_idf", lambda t, layer: slot_idf(t, layer).sqrt()):
        record("(iv) slot idf to the power 1 (not 2)", search)
    with swapped(retrieval, "slot_idf", lambda t, layer: torch.ones(t.n_slots)):
        record("(iv) slot idf off", search)
    with swapped(retrieval, "idf_weight", lambda n, df: torch.ones(len(df)).index_fill_(0, torch.tensor([0]), 0.0)):
        record("(iv) question-token idf off", search)
    with swapped(retrieval, "idf_weight", lambda n, df: idf_weight(n, df) ** 2):
        record("(iv) question-token idf squared", search)
    base.close()
    for unit in ("token", "word"):
        layer = WordLayer(unit=unit)
        layer.add(chunks, list(range(len(chunks))))

        def layer_search(q, layer=layer):
            scores = layer.scores(q)
            return sorted(scores, key=lambda c: (-scores[c], c))

        record(f"(iii) word layer keyed by {unit}s", layer_search, TASKS, bytes=layer.nbytes())
    res = dict(meta=dict(machine=machine(threads), commit=commit(), model=desc, n_entries=n_entries,
                         command=" ".join(sys.argv)), rows=rows)
    write_json(out_dir, "diagnosis.json", res)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=1000)
    p.add_argument("--out", default="results/addressing")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    run(a.entries, a.out, a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
