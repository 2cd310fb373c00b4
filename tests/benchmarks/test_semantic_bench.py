"""benchmarks/semantic.py: the one-ranking fusion of docs/addressing.md (scores / their max, weighted sum)."""
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
