"""The provenance table against a dictionary reference: bounded per slot, strongest writers kept, deleted
chunks never scored (scoring against the table: retrieval.score_chunks / slot_matches)."""
import math

import torch

from fwpkm_rag.pipelines.provenance import ProvenanceTable
from fwpkm_rag.pipelines.retrieval import score_chunks, slot_matches


class DictProvenance:
    """Obvious reference: per slot a dict chunk -> strength, trimmed to the strongest m after each record."""

    def __init__(self, n_slots, m):
        self.m, self.slots = m, [dict() for _ in range(n_slots)]
        self.writes = [0] * n_slots
        self.dead = set()

    def record(self, slots, chunks, strength):
        new = {}
        for s, c, x in zip(slots.tolist(), chunks.tolist(), strength.tolist()):
            if x > 0:
                new[(s, c)] = new.get((s, c), 0.0) + x
        for (s, c), x in new.items():
            self.writes[s] += 1
        for s in {s for s, _ in new}:
            entries = {c: x for c, x in self.slots[s].items() if c not in self.dead}
            for (s2, c), x in new.items():
                if s2 == s:
                    entries[c] = entries.get(c, 0.0) + x
            best = sorted(entries.items(), key=lambda e: -e[1])[: self.m]
            self.slots[s] = {c: float(torch.tensor(x).half()) for c, x in best}


def _random_writes(gen, n_slots, n_chunks, size):
    slots = torch.randint(0, n_slots, (size,), generator=gen)
    chunks = torch.randint(0, n_chunks, (size,), generator=gen)
    strength = torch.rand(size, generator=gen) + 0.01
    return slots, chunks, strength


def test_matches_dictionary_reference_over_many_records_and_deletes():
    gen = torch.Generator().manual_seed(0)
    table, ref = ProvenanceTable(n_layers=1, n_slots=11, per_slot=4), DictProvenance(11, 4)
    for step in range(30):
        slots, chunks, strength = _random_writes(gen, 11, 25, 40)
        table.record(0, slots, chunks, strength)
        ref.record(slots, chunks, strength)
        if step == 15:
            table.delete([3, 7])
            ref.dead |= {3, 7}
    for s in range(11):
        got = {int(c): float(x) for c, x in zip(table.chunk[0, s], table.strength[0, s]) if c >= 0}
        want = {c: x for c, x in ref.slots[s].items() if c not in ref.dead}
        got = {c: x for c, x in got.items() if c not in ref.dead}
        assert set(got) == set(want), s
        for c in got:
            assert math.isclose(got[c], want[c], rel_tol=2e-3), (s, c)
    assert table.writes[0].tolist() == [float(w) for w in ref.writes]


def test_size_is_bounded_by_the_memory_not_the_corpus():
    gen = torch.Generator().manual_seed(1)
    table = ProvenanceTable(n_layers=2, n_slots=64, per_slot=8)
    size = table.nbytes()
    for layer in range(2):
        for _ in range(20):
            table.record(layer, *_random_writes(gen, 64, 10_000, 500))
    assert table.nbytes() - size == table.alive.numel()  # only the one-byte alive flag grows per chunk
    assert (table.chunk >= 0).sum(-1).max() <= 8


def test_scoring_prefers_the_chunk_that_wrote_the_read_slots_and_skips_deleted():
    table = ProvenanceTable(n_layers=1, n_slots=50, per_slot=8)
    # chunk 0 writes slots 1-3 strongly; chunk 1 writes slot 3 and many others; chunk 2 writes common slot 40
    table.record(0, torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0]), torch.tensor([1.0, 1.0, 1.0]))
    table.record(0, torch.tensor([3, 4, 5, 6]), torch.tensor([1, 1, 1, 1]), torch.tensor([0.5, 1.0, 1.0, 1.0]))
    for c in range(2, 30):  # slot 40 is written by everyone: its idf is low
        table.record(0, torch.tensor([40]), torch.tensor([c]), torch.tensor([1.0]))
    reads = [(torch.tensor([[1, 2, 40], [3, 40, 40]]), torch.tensor([[0.4, 0.4, 0.2], [0.5, 0.25, 0.25]]))]
    scores = score_chunks(table, reads)
    assert int(scores.argmax()) == 0
    assert scores[0] > scores[1] > 0
    assert scores[2] < scores[0] / 5
    matched = [m.slot for m in slot_matches(table, reads, 0)]
    assert set(matched) == {1, 2, 3}
    table.delete([0])
    assert torch.isinf(score_chunks(table, reads)[0]) and int(score_chunks(table, reads).argmax()) == 1


def test_round_trip_through_tensors():
    gen = torch.Generator().manual_seed(2)
    table = ProvenanceTable(n_layers=1, n_slots=16, per_slot=4)
    table.record(0, *_random_writes(gen, 16, 9, 50))
    table.delete([2])
    copy = ProvenanceTable.from_tensors(table.tensors())
    for name, t in table.tensors().items():
        assert torch.equal(t, copy.tensors()[name])


# ---- a sealed segment's packed table (CompactProvenance) ---------------------------------------------------------
def _filled_table(seed: int, n_chunks: int) -> ProvenanceTable:
    gen = torch.Generator().manual_seed(seed)
    table = ProvenanceTable(n_layers=2, n_slots=64, per_slot=6)
    for layer in range(2):
        for _ in range(4):
            table.record(layer, *_random_writes(gen, 64, n_chunks, 300))
    table.delete([1, 5])
    return table


def test_the_packed_table_holds_exactly_the_filled_entries_and_scores_to_the_bit():
    from fwpkm_rag.pipelines.provenance import CompactProvenance

    table = _filled_table(3, 40)
    compact = CompactProvenance.from_table(table, 1)  # the scored layer only
    assert compact.n_layers == 1 and compact.n_entries == int((table.chunk[0] >= 0).sum())
    assert compact.chunk[0].dtype == torch.uint16 and compact.strength[0].dtype == torch.float16
    assert compact.nbytes() < table.nbytes() / 2
    slots = torch.tensor([0, 3, 3, 63, 17, 40])  # repeats, and whatever the slots hold
    for got, want in zip(compact.entries(0, slots), table.entries(0, slots)):
        assert torch.equal(got, want)  # same entries, same order
    gen = torch.Generator().manual_seed(4)
    reads = [(torch.randint(0, 64, (5, 4), generator=gen), torch.rand(5, 4, generator=gen))]
    tw = torch.rand(5, generator=gen)
    # the same float operations in the same order: equal to the bit (one process, one table)
    assert torch.equal(score_chunks(compact, reads, tw), score_chunks(table, reads, tw))
    assert slot_matches(compact, reads, 7, tw) == slot_matches(table, reads, 7, tw)


def test_the_packed_table_takes_deletes_on_its_own_flags_and_widens_ids_past_16_bits():
    from fwpkm_rag.pipelines.provenance import CompactProvenance

    compact = CompactProvenance.from_table(_filled_table(5, 30), 2)
    copy = compact.with_own_alive()
    copy.delete([0, 2])
    assert not copy.alive[0] and compact.alive[0] and copy.chunk is compact.chunk  # entries shared, flags not
    reads = [(torch.arange(64).reshape(8, 8), torch.ones(8, 8))] * 2
    assert torch.isinf(score_chunks(copy, reads)[[0, 2]]).all()
    big = ProvenanceTable(n_layers=1, n_slots=4, per_slot=2)
    big.record(0, torch.tensor([0, 1]), torch.tensor([3, 70_000]), torch.tensor([1.0, 2.0]))
    wide = CompactProvenance.from_table(big, 1)
    assert wide.chunk[0].dtype == torch.int32 and wide.entries(0, torch.tensor([1]))[1].tolist() == [70_000]
