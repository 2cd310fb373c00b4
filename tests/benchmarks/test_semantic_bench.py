"""benchmarks/semantic.py: the one-ranking fusion of docs/addressing.md (scores / their max, weighted sum)."""
import pytest

from fwpkm_rag.benchmarks.semantic import fuse, normalized


def test_normalized_divides_by_the_max():
    assert normalized({1: 2.0, 2: 1.0, 3: 0.0}) == {1: 1.0, 2: 0.5}
    assert normalized({}) == {} and normalized({4: 0.0}) == {}


def test_fuse_weights_ties_and_padding():
    lexical = {0: 10.0, 1: 5.0}  # -> 1.0, 0.5
    semantic = {1: 3.0, 2: 3.0}  # -> 1.0, 1.0
    got = fuse([(1.0, lexical), (0.5, semantic)], n_chunks=5, k=4)
    # 0: 1.0; 1: 0.5 + 0.5 = 1.0 (tie with 0: lower index first); 2: 0.5; then chunk 3 padded with score 0
    assert got == [(0, 1.0), (1, 1.0), (2, 0.5), (3, 0.0)]
    # weight 0 drops a source; a source that found nothing adds nothing
    assert [c for c, _ in fuse([(1.0, lexical), (0.0, semantic)], 5, 2)] == [0, 1]
    assert [c for c, _ in fuse([(1.0, {}), (1.0, semantic)], 5, 2)] == [1, 2]


# ---- reciprocal rank fusion -----------------------------------------------------------------------------------
def test_ranks_best_first_ties_by_index():
    from fwpkm_rag.benchmarks.semantic import ranks

    assert ranks({5: 1.0, 2: 3.0, 7: 1.0, 9: 0.0}) == {2: 1, 5: 2, 7: 3}
    assert ranks({}) == {}


def test_rrf_equals_a_reference_by_hand():
    from fwpkm_rag.benchmarks.semantic import rrf

    lexical = {0: 9.0, 3: 5.0, 1: 1.0}  # ranks 0:1, 3:2, 1:3
    semantic = {1: 0.9, 2: 0.8, 0: 0.1}  # ranks 1:1, 2:2, 0:3
    k0, w = 60.0, 2.0
    want = {0: 1 / (k0 + 1) + w / (k0 + 3), 1: 1 / (k0 + 3) + w / (k0 + 1), 2: w / (k0 + 2), 3: 1 / (k0 + 2)}
    got = rrf([(1.0, lexical), (w, semantic)], n_chunks=6, k=6, k0=k0)
    order = sorted(want, key=lambda c: (-want[c], c))
    assert [c for c, _ in got[:4]] == order  # 1, 0, 2, 3
    for c, s in got[:4]:
        assert abs(s - want[c]) < 1e-12
    assert got[4:] == [(4, 0.0), (5, 0.0)]  # padded with the unranked chunks in index order


def test_rrf_ignores_score_sizes_where_the_sum_does_not():
    """The score sum follows one source's confident top chunk; rank fusion favours the chunk both sources rank."""
    from fwpkm_rag.benchmarks.semantic import fuse, rrf

    lexical = {0: 100.0, 1: 1.0}  # normalised: 0 -> 1.0, 1 -> 0.01
    semantic = {2: 1.0, 1: 0.9}
    # sum: 0 -> 1.0, 2 -> 1.0, 1 -> 0.91;  rrf: 1 -> 2/62, 0 -> 1/61, 2 -> 1/61
    assert [c for c, _ in fuse([(1.0, lexical), (1.0, semantic)], 3, 3)] == [0, 2, 1]
    assert [c for c, _ in rrf([(1.0, lexical), (1.0, semantic)], 3, 3)] == [1, 0, 2]
    # rank fusion is invariant to any increasing transform of a source's scores
    squashed = {c: s ** 0.1 for c, s in lexical.items()}
    assert rrf([(1.0, squashed), (1.0, semantic)], 3, 3) == rrf([(1.0, lexical), (1.0, semantic)], 3, 3)


def test_combine_dispatches_and_rejects_unknown():
    from fwpkm_rag.benchmarks.semantic import combine, fuse, rrf
    from fwpkm_rag.errors import ConfigError

    parts = [(1.0, {0: 2.0, 1: 1.0}), (0.5, {1: 3.0, 2: 1.0})]
    assert combine("sum", parts, 4, 3) == fuse(parts, 4, 3)
    assert combine("rrf", parts, 4, 3) == rrf(parts, 4, 3)
    with pytest.raises(ConfigError):
        combine("max", parts, 4, 3)
    with pytest.raises(ConfigError):
        rrf(parts, 4, 3, k0=-1)


class _FakeSource:
    """Stands in for the lexical store or the semantic layer: scores a chunk by the words it shares."""

    built = 0

    def __init__(self, *a, **kw):
        type(self).built += 1
        self.chunks = []
        self.layer = self
        self.closed = False

    def add(self, chunks):
        self.chunks += list(chunks)

    def scores(self, query):
        q = set(query.split())
        return {i: float(len(q & set(c.split()))) for i, c in enumerate(self.chunks) if q & set(c.split())}

    def search(self, query, k=5):
        s = self.scores(query)
        return sorted(s.items(), key=lambda x: (-x[1], x[0]))[:k]

    def nbytes(self):
        return 10

    def close(self):
        self.closed = True


def test_combined_systems_share_sources_over_the_same_chunks(monkeypatch):
    import fwpkm_rag.benchmarks.semantic as sem
    import fwpkm_rag.benchmarks.systems as systems

    monkeypatch.setattr(systems, "FwPKMSystem", _FakeSource)
    monkeypatch.setattr(sem, "SemanticSystem", _FakeSource)
    _FakeSource.built = 0
    chunks = ["a b c", "c d", "e f", "a e"]
    share: dict = {}
    first = sem.CombinedSystem(None, 8, 1.0, None, "sum", share)
    first.add(chunks)
    second = sem.CombinedSystem(None, 8, 2.0, None, "rrf", share)
    second.add(chunks)
    assert _FakeSource.built == 2  # one lexical + one semantic source, read by both systems
    lex, semantic = first.sources("a c")
    assert second.sources("a c") == (lex, semantic)
    assert second.search("a c", 3) == sem.rrf([(1.0, lex), (2.0, semantic)], 4, 3)
    assert first.search("a c", 3) == sem.fuse([(1.0, lex), (1.0, semantic)], 4, 3)
    # other chunks: a system of its own
    third = sem.CombinedSystem(None, 8, 1.0, None, "rrf", share)
    third.add(chunks[:2])
    assert _FakeSource.built == 4 and third.n == 2
    with pytest.raises(sem.ConfigError):
        sem.CombinedSystem(None, 8, 1.0, None, "max")
