"""RayFwPKMStore (issue 14 item 4; docs/scale-out.md): the FwPKMStore interface over segments held by Ray actors.

One local Ray (2 CPUs, no dashboard) is started for the module and shut down after it. The model is the tiny
random one of rag_helpers, shipped to the actors with ray.put.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'fwpkm-rag[distributed]'")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from fwpkm_rag.errors import DuplicateIdError, InputTypeError  # noqa: E402
from fwpkm_rag.pipelines import FwPKMStore, RayFwPKMStore  # noqa: E402
from rag_helpers import rag_model  # noqa: E402

MODEL = rag_model()
SETTINGS = dict(chunk_tokens=16, segment_tokens=96)
TEXTS = [f"Record {i}: the vault code for account {i:03d} is {4000 + 37 * i}; it rotates every {i + 2} days. "
         f"Field note {i}: {'alpha beta gamma delta'.split()[i % 4]} river crossing at mile {i * 11}." for i in range(24)]
IDS = [f"doc-{i}" for i in range(24)]
QUERIES = ["the vault code for account 007", "river crossing at mile 55", "it rotates every 9 days", "gamma"]


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py: one local Ray for the module


def rankings(store, k=6):
    return [[(h.doc_id, h.chunk_index, h.rank, h.score) for h in store.search_with_provenance(q, k=k)]
            for q in QUERIES]


def same_rankings(a, b, rel=0.0):
    """Same ids, chunks and ranks; scores equal within `rel` (relative)."""
    assert [[h[:3] for h in r] for r in a] == [[h[:3] for h in r] for r in b]
    for ra, rb in zip(a, b):
        for ha, hb in zip(ra, rb):
            assert ha[3] == pytest.approx(hb[3], rel=rel, abs=1e-6 if rel else 0)


@pytest.fixture(scope="module")
def local_store():
    store = FwPKMStore(model=MODEL, **SETTINGS)
    store.add_texts(TEXTS, [{"n": i} for i in range(24)], ids=IDS)
    yield store
    store.close()


def test_one_worker_answers_like_the_local_store(local_store):
    store = RayFwPKMStore(num_workers=1, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS, [{"n": i} for i in range(24)], ids=IDS)
        assert len(store) == 24 and store.index.doc_ids() == IDS
        assert len(store.index.segment_stats()) == len(local_store.index.segments) > 2
        # the same documents streamed in the same order through the same model in another process: the same
        # float32 computation, so the same scores (a tolerance of 1e-5 would cover a different thread count)
        same_rankings(rankings(store), rankings(local_store), rel=1e-5)
    finally:
        store.close()


def test_two_workers_save_a_folder_the_local_store_opens_identically(tmp_path):
    store = RayFwPKMStore(num_workers=2, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS[:16], [{"n": i} for i in range(16)], ids=IDS[:16])
        store.add_texts(TEXTS[16:], [{"n": i} for i in range(16, 24)], ids=IDS[16:])
        stats = store.index.segment_stats()
        assert {s["worker"] for s in stats if s["chunks"]} == {0, 1}  # the documents went to both actors
        ids = [s["id"] for s in stats]
        assert len(set(ids)) == len(ids)  # segment ids are global
        store.delete(["doc-3"])
        assert len(store) == 23 and store.get_by_ids(["doc-3"]) == []
        ray_rankings = rankings(store)
        store.save(tmp_path / "s")
        loaded = FwPKMStore.load(tmp_path / "s", model=MODEL)
        try:
            same_rankings(rankings(loaded), ray_rankings)  # identical, scores included
            assert loaded.index.doc_ids() == store.index.doc_ids()
            assert loaded.get_by_ids(["doc-7", "doc-20"]) == store.get_by_ids(["doc-7", "doc-20"])
        finally:
            loaded.close()
    finally:
        store.close()


def test_two_workers_with_the_word_layer_rank_like_the_saved_store_loaded_locally(tmp_path):
    """The fusion over actors (idf counts, then each source's maxima, then fused top k: three rounds) gives the
    ranking the local store gives over the same segments, and a reordered question finds its record."""
    store = RayFwPKMStore(num_workers=2, model=MODEL, word_layer=True, **SETTINGS)
    try:
        store.add_texts(TEXTS, [{"n": i} for i in range(24)], ids=IDS)
        stats = store.index.segment_stats()
        assert {s["worker"] for s in stats if s["chunks"]} == {0, 1}
        store.delete(["doc-5"])
        queries = QUERIES + ["days 9 every rotates it", "crossing river mile 99 at", "mile 55 river"]
        got = [[(h.doc_id, h.chunk_index, h.rank, h.score) for h in store.search_with_provenance(q, k=6)]
               for q in queries]
        assert got[-2][0][0] == "doc-9"  # its words in another order
        assert all(h[0] != "doc-5" for h in got[-1])  # deleted: its words no longer score
        store.save(tmp_path / "w")
        loaded = FwPKMStore.load(tmp_path / "w", model=MODEL)
        try:
            assert loaded.settings.word_layer
            want = [[(h.doc_id, h.chunk_index, h.rank, h.score) for h in loaded.search_with_provenance(q, k=6)]
                    for q in queries]
            same_rankings(got, want, rel=1e-5)
            lexical = [[(h.doc_id, h.chunk_index, h.rank) for h in store.index.search(q, 6, words=False)]
                       for q in queries]
            assert lexical == [[(h.doc_id, h.chunk_index, h.rank) for h in loaded.index.search(q, 6, words=False)]
                               for q in queries]
        finally:
            loaded.close()
    finally:
        store.close()


def test_two_workers_with_the_semantic_layer_rank_like_the_saved_store_loaded_locally(tmp_path):
    """semantic_layer=True on Ray (each actor's segments keep their chunk semantic layers, all-MiniLM-L6-v2 loaded
    in the actors): the maxima round carries the third source, and the ranking equals the local store's over the
    same saved segments; words=False still ranks by the lexical store alone."""
    store = RayFwPKMStore(num_workers=2, model=MODEL, semantic_layer=True, **SETTINGS)
    try:
        store.add_texts(TEXTS[:12], ids=IDS[:12])
        assert store.settings.semantic_layer and store.settings.word_layer
        queries = QUERIES + ["how often does the combination change", "a bridge over the water"]
        got = [[(h.doc_id, h.chunk_index, h.rank, h.score) for h in store.search_with_provenance(q, k=5)]
               for q in queries]
        store.save(tmp_path / "s")
        loaded = FwPKMStore.load(tmp_path / "s", model=MODEL)
        try:
            assert loaded.settings.semantic_layer
            assert all(s.index.semantic is not None for s in loaded.index.segments)
            want = [[(h.doc_id, h.chunk_index, h.rank, h.score) for h in loaded.search_with_provenance(q, k=5)]
                    for q in queries]
            same_rankings(got, want, rel=1e-5)
            without = FwPKMStore.load(tmp_path / "s", model=MODEL, semantic_layer=False)  # the layer counts
            assert [[h.score for h in without.search_with_provenance(q, k=5)] for q in queries] != \
                [[h[3] for h in r] for r in want]
            without.close()
            assert [[h.doc_id for h in store.index.search(q, 5, words=False)] for q in queries] == \
                [[h.doc_id for h in loaded.index.search(q, 5, words=False)] for q in queries]
        finally:
            loaded.close()
    finally:
        store.close()


def test_ray_opens_a_local_folder_and_saves_it_back(local_store, tmp_path):
    local_store.save(tmp_path / "local")
    store = RayFwPKMStore.load(tmp_path / "local", model=MODEL, num_workers=2)
    try:
        assert {s["worker"] for s in store.index.segment_stats()} == {0, 1}  # segments spread over the actors
        same_rankings(rankings(store), rankings(local_store))
        assert store.index.doc_ids() == local_store.index.doc_ids()
        assert store.get_by_ids(IDS[::5]) == local_store.get_by_ids(IDS[::5])
        store.add_texts(["A late record: the lighthouse keeper signs as Marguerite Okonkwo."], ids=["late"])
        store.save(tmp_path / "local")  # sealed segment folders are reused
        again = FwPKMStore.load(tmp_path / "local", model=MODEL)
        try:
            assert len(again) == 25
            assert again.similarity_search("lighthouse keeper signs as", k=1)[0].id == "late"
            same_rankings(rankings(again), rankings(store))
        finally:
            again.close()
    finally:
        store.close()


def _all_there(store, texts: dict):
    assert len(store) == len(texts)
    got = {d.id: d.page_content for d in store.get_by_ids(list(texts))}
    assert got == texts
    for doc_id, text in texts.items():
        query = text.split(":")[1][:40]
        assert doc_id in [d.id for d in store.similarity_search(query, k=4)], doc_id


def test_an_actor_killed_between_two_adds_loses_nothing():
    store = RayFwPKMStore(num_workers=2, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS[:10], ids=IDS[:10])
        ray.kill(store.index.workers[1])
        store.add_texts(TEXTS[10:14], ids=IDS[10:14])  # the dead actor is replaced and re-ingested first
        assert store.index.restarts == 1
        _all_there(store, dict(zip(IDS[:14], TEXTS[:14])))
    finally:
        store.close()


def test_an_actor_that_dies_during_an_add_loses_nothing():
    store = RayFwPKMStore(num_workers=2, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS[:6], ids=IDS[:6])
        ray.get(store.index.workers[0].arm_crash.remote(1))  # exits after taking one document of its next add
        assert store.add_texts(TEXTS[6:12], ids=IDS[6:12]) == IDS[6:12]
        assert store.index.restarts == 1
        _all_there(store, dict(zip(IDS[:12], TEXTS[:12])))
    finally:
        store.close()


def test_an_actor_killed_before_a_query_is_replaced():
    store = RayFwPKMStore(num_workers=2, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS[:8], ids=IDS[:8])
        ray.kill(store.index.workers[0])
        _all_there(store, dict(zip(IDS[:8], TEXTS[:8])))
    finally:
        store.close()


def test_bad_input_changes_nothing_and_replace_keeps_one_copy():
    store = RayFwPKMStore(num_workers=2, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS[:4], ids=IDS[:4])
        with pytest.raises(DuplicateIdError):
            store.add_texts(["x", "y"], ids=["n1", "n1"])
        with pytest.raises(InputTypeError):
            store.add_texts(["fine", 3], ids=["n2", "n3"])
        with pytest.raises(InputTypeError):
            store.similarity_search("q", k="4")
        assert store.index.doc_ids() == IDS[:4]
        store.add_documents([Document(page_content="Replaced: the vault code is now 1.", id="doc-1")])
        assert store.index.doc_ids() == ["doc-0", "doc-2", "doc-3", "doc-1"]
        assert store.get_by_ids(["doc-1"])[0].page_content == "Replaced: the vault code is now 1."
        assert sum(s["parts"] for s in store.index.segment_stats()) == 4
        store.delete()
        assert len(store) == 0 and store.similarity_search("vault", k=3) == []
    finally:
        store.close()


def test_progress_bars_over_documents_and_tokens(capsys):
    store = RayFwPKMStore(num_workers=2, model=MODEL, **SETTINGS)
    try:
        store.add_texts(TEXTS[:6], show_progress=True)
        err = capsys.readouterr().err
        assert "documents" in err and "6/6" in err and "tokens" in err
    finally:
        store.close()


def test_importing_the_packages_does_not_import_ray():
    from lightimport import assert_import_light

    assert_import_light("fwpkm_rag", "fwpkm_rag.pipelines", "fwpkm_rag.pipelines.distributed",
                        "fwpkm_rag.pipelines.langchain.ray_store", forbidden=("ray",))


def test_cli_ingest_with_workers_writes_the_local_format(tmp_path):
    """`fwpkm-rag ingest --workers 2` on the shipped model, then `FwPKMStore.load` / `fwpkm-rag info` read it."""
    files = []
    for i in range(4):
        path = tmp_path / f"f{i}.txt"
        path.write_text(TEXTS[i] * 3)
        files.append(str(path))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "fwpkm_rag.cli", "ingest", *files, "--store", str(store), "--workers", "2",
           "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "on 2 Ray workers" in done.stdout
    info = subprocess.run([sys.executable, "-m", "fwpkm_rag.cli", "info", "--store", str(store)],
                          capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "4 documents" in info.stdout


@pytest.fixture(scope="module")
def shared_ray_store():
    store = RayFwPKMStore(num_workers=2, model=MODEL)
    yield store
    store.close()


class TestRayFwPKMStoreStandard(VectorStoreIntegrationTests):
    """LangChain's standard suite on one 2-actor store, emptied between tests (actors start in seconds, the
    suite has dozens of tests)."""

    @pytest.fixture()
    def vectorstore(self, shared_ray_store):
        shared_ray_store.delete()
        try:
            yield shared_ray_store
        finally:
            shared_ray_store.delete()
