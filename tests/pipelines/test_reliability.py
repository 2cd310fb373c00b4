"""Issue 8, reliability and isolation: bad input at every entry point, transactional add calls, a property
test of the store API against a dict model, rebuild(), readers during a write, the divergence guard under
adversarial input, and loading without pickle. (kill -9 during save, corrupted snapshots and two-store
isolation live in test_rag.py.)"""
from __future__ import annotations

import math
import pickle
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from langchain_core.documents import Document

from fwpkm_rag.errors import (ConfigError, DocumentTooLargeError, DuplicateIdError, FwPKMError, InputError,
                              InputTypeError, QueryTooLongError)
from fwpkm_rag.memory import FwPKMConfig
from fwpkm_rag.pipelines import ChatFwPKM, FwPKMStore
from rag_helpers import rag_model

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def prose(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ---- the exact state of a store, for "bit-identical" comparisons --------------------------------------------
def fingerprint(store: FwPKMStore) -> dict:
    """Every segment's memories, provenance, token counts and counters, the segment list, the catalog, the
    documents and some results."""
    idx = store.index
    mem, prov, chunk_df, counters = [], [], [], []
    for sv in idx.view.segments:
        for m in sv.view.memory:
            mem += [m.keys.clone(), m.values.rows.clone(), m.values.slot_map.clone(), m.pending_q.clone(),
                    m.conv_cache.clone(), m.refused.clone(), m.position, m.updates]
        prov += [t.clone() for t in sv.view.provenance.tensors().values()]
        chunk_df.append(sv.view.chunk_df.clone())
        seg = sv.index
        counters.append((sv.id, sv.sealed, seg.next_chunk, seg.next_seq, seg.tokens_ingested, seg.at_boundary,
                         seg.position, seg.docs.n_chunks()))
    counters.append((idx.next_segment, tuple(idx.view.catalog.items()),
                     tuple((s.id, s.sealed, s.uid, s.tombstones) for s in idx.segments)))
    docs = [(d.id, d.page_content, d.metadata) for d in store.get_by_ids(idx.doc_ids())]
    results = [(d.id, d.page_content, s) for q in ("secret number", "golf hotel")
               for d, s in store.similarity_search_with_score(q, k=3)]
    return {"mem": mem, "prov": prov, "docs": docs, "counters": counters, "results": results,
            "chunk_df": chunk_df}


def assert_same(a: dict, b: dict) -> None:
    assert len(a["mem"]) == len(b["mem"]) and len(a["prov"]) == len(b["prov"])
    for x, y in zip(a["mem"], b["mem"]):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    for x, y in zip(a["prov"], b["prov"]):
        assert torch.equal(x, y)
    assert len(a["chunk_df"]) == len(b["chunk_df"])
    assert all(torch.equal(x, y) for x, y in zip(a["chunk_df"], b["chunk_df"]))
    assert a["docs"] == b["docs"] and a["counters"] == b["counters"] and a["results"] == b["results"]


@pytest.fixture()
def store(small_model):
    s = FwPKMStore(model=small_model, chunk_tokens=32)
    s.add_texts(["The secret number for ID-77 is 123456.", prose(200, 1)], ids=["needle", "hay"],
                metadatas=[{"source": "n"}, {"source": "h"}])
    yield s
    s.close()


# ---- 1. bad input -------------------------------------------------------------------------------------------
class Unserialisable:
    pass


circular: dict = {}
circular["self"] = circular

# (name, call, expected exception) — each must raise and leave the store exactly as it was
REJECTED = [
    ("bytes text", lambda s: s.add_texts([b"raw bytes"]), InputTypeError),
    ("non-UTF-8 bytes text", lambda s: s.add_texts([b"\xff\xfe caf\xe9"]), InputTypeError),
    ("lone surrogate (undecodable bytes)", lambda s: s.add_texts([b"caf\xe9".decode("utf-8", "surrogateescape")]), InputError),
    ("int text", lambda s: s.add_texts([42]), InputTypeError),
    ("None text", lambda s: s.add_texts([None]), InputTypeError),
    ("single str as texts", lambda s: s.add_texts("a text"), InputTypeError),
    ("single bytes as texts", lambda s: s.add_texts(b"a text"), InputTypeError),
    ("int id", lambda s: s.add_texts(["x"], ids=[7]), InputTypeError),
    ("bytes id", lambda s: s.add_texts(["x"], ids=[b"id"]), InputTypeError),
    ("empty id", lambda s: s.add_texts(["x"], ids=[""]), InputError),
    ("single str as ids", lambda s: s.add_texts(["x"], ids="abc"), InputTypeError),
    ("ids collide in a batch", lambda s: s.add_texts(["x", "y"], ids=["dup", "dup"]), DuplicateIdError),
    ("fewer ids than texts", lambda s: s.add_texts(["x", "y"], ids=["a"]), InputError),
    ("fewer metadatas than texts", lambda s: s.add_texts(["x", "y"], metadatas=[{}]), InputError),
    ("object in metadata", lambda s: s.add_texts(["x"], metadatas=[{"bad": Unserialisable()}]), InputError),
    ("set in metadata", lambda s: s.add_texts(["x"], metadatas=[{"bad": {1, 2}}]), InputError),
    ("bytes in metadata", lambda s: s.add_texts(["x"], metadatas=[{"bad": b"\x00"}]), InputError),
    ("int metadata key", lambda s: s.add_texts(["x"], metadatas=[{1: "a"}]), InputError),
    ("circular metadata", lambda s: s.add_texts(["x"], metadatas=[circular]), InputError),
    ("metadata not a dict", lambda s: s.add_texts(["x"], metadatas=[["a"]]), InputError),
    ("single dict as metadatas", lambda s: s.add_texts(["x"], metadatas={"a": 1}), InputTypeError),
    ("non-Document", lambda s: s.add_documents(["text"]), InputTypeError),
    ("single Document", lambda s: s.add_documents(Document(page_content="x")), InputTypeError),
    ("Document with int id", lambda s: s.add_documents([Document(page_content="x", id="a"), Document(page_content="y")],
                                                        ids=["a", 5]), InputTypeError),
    ("single path", lambda s: s.add_files("notes.txt"), InputTypeError),
    ("int path", lambda s: s.add_files([3]), InputTypeError),
    ("missing file", lambda s: s.add_files(["/nonexistent/file.txt"]), FileNotFoundError),
    ("folder as file", lambda s: s.add_files([str(HERE)]), InputError),
    ("bytes query", lambda s: s.similarity_search(b"secret"), InputTypeError),
    ("None query", lambda s: s.similarity_search(None), InputTypeError),
    ("surrogate query", lambda s: s.similarity_search("caf\udce9"), InputError),
    ("k < 0", lambda s: s.similarity_search("secret", k=-1), InputError),
    ("k float", lambda s: s.similarity_search("secret", k=2.0), InputTypeError),
    ("k str", lambda s: s.similarity_search("secret", k="4"), InputTypeError),
    ("k bool", lambda s: s.similarity_search("secret", k=True), InputTypeError),
    ("query over max_query_tokens", lambda s: s.similarity_search("word " * 9000), QueryTooLongError),
    ("1 MB query", lambda s: s.similarity_search("x" * 1_000_000), QueryTooLongError),
    ("retriever k < 0", lambda s: s.as_retriever(k=-2).invoke("secret"), InputError),
    ("delete a bare str", lambda s: s.delete("needle"), InputTypeError),
    ("delete int ids", lambda s: s.delete([1, 2]), InputTypeError),
    ("get_by_ids a bare str", lambda s: s.get_by_ids("needle"), InputTypeError),
    ("get_by_ids None ids", lambda s: s.get_by_ids([None]), InputTypeError),
    ("chat prompt too long", lambda s: ChatFwPKM(store=s, max_tokens=2).invoke("word " * 9000), QueryTooLongError),
    ("chat surrogate", lambda s: ChatFwPKM(store=s, max_tokens=2).invoke("caf\udce9"), InputError),
    ("chat max_tokens 0", lambda s: ChatFwPKM(store=s, max_tokens=0).invoke("hi"), InputError),
    ("chat bad prompt_format", lambda s: ChatFwPKM(store=s, prompt_format="xml").invoke("hi"), InputError),
]


@pytest.mark.parametrize("name,call,exc", REJECTED, ids=[r[0] for r in REJECTED])
def test_bad_input_is_rejected_with_a_named_error_and_no_change(store, name, call, exc):
    before = fingerprint(store)
    with pytest.raises(exc) as info:
        call(store)
    assert str(info.value), name  # a message naming the problem
    if exc is not FileNotFoundError:
        assert isinstance(info.value, FwPKMError)
    assert_same(before, fingerprint(store))


ACCEPTED = {
    "empty": "",
    "whitespace only": " \n\t  \n",
    "NUL bytes": "before\x00after\x00\x00 end",
    "mixed scripts and emoji": "naïve café — 東京 Ελληνικά العربية हिन्दी 🎉👩‍💻🏳️‍🌈 end",
    "control characters": "\x01\x02\x1b[31mred\x1b[0m\r\n\x7f",
    # 1 MB (about 660K tokens) passes too but takes ~60 s here: docs/reliability.md
    "64 KB line without spaces": "".join(random.Random(0).choice("abcdefghij") for _ in range(1 << 16)),
}


def test_odd_but_valid_texts_round_trip_exactly(small_model):
    store = FwPKMStore(model=small_model, chunk_tokens=64, piece_tokens=4096)
    store.add_texts(list(ACCEPTED.values()), ids=list(ACCEPTED), metadatas=[{"k": "ü\x00🎉", "n": [1, None, 2.5]}] * len(ACCEPTED))
    got = {d.id: d.page_content for d in store.get_by_ids(list(ACCEPTED))}
    assert got == ACCEPTED
    assert store.get_by_ids(["empty"])[0].metadata == {"k": "ü\x00🎉", "n": [1, None, 2.5]}
    for q in ("", "   ", "東京 🎉", "before\x00after", "abcdefghij"):
        assert len(store.similarity_search(q, k=3)) == 3
    for v in store.index.view.memory:
        assert torch.isfinite(v.values.rows).all() and torch.isfinite(v.keys).all()


def test_k_zero_huge_and_long_queries(store):
    assert store.similarity_search("secret", k=0) == []
    n = store.index.n_live_chunks
    assert len(store.similarity_search("secret", k=10**9)) == n  # huge k: every live chunk, once
    window = store.model.config.window
    long_q = "What is the secret number for ID-77? " * (10 * window)  # far longer than the attention window
    hits = store.search_with_provenance(long_q, k=2)
    assert len(hits) == 2 and hits[0].doc_id == "needle"
    assert store.get_by_ids([]) == [] and store.get_by_ids(["missing"]) == []
    store.delete([])  # no-op
    assert len(store) == 2


def test_a_batch_failing_midway_leaves_the_store_bit_identical(store):
    before = fingerprint(store)

    def docs():  # two good documents (ingested into the memory) and then a bad one
        yield "The vault code is 4411. " + prose(300, 5)
        yield prose(400, 6)
        yield b"not text"

    with pytest.raises(InputTypeError):
        store.add_texts(docs(), ids=["v", "w", "x"])
    assert_same(before, fingerprint(store))
    # replacing an id then failing: the old document is still there
    with pytest.raises(InputError):
        store.add_texts(["The secret number for ID-77 is 000000.", "y"], ids=["needle", "y"],
                        metadatas=[{}, {"bad": object()}])
    assert_same(before, fingerprint(store))

    def interrupted():
        yield prose(300, 7)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add_texts(interrupted())
    assert_same(before, fingerprint(store))
    # and the store keeps working exactly like one that never saw the failures
    store.add_texts(["late document"], ids=["late"])
    assert store.get_by_ids(["late"])[0].page_content == "late document"


def test_cli_rejects_bad_files_and_accepts_odd_ones(small_model, tmp_path):
    model_dir = tmp_path / "model"
    small_model.save_pretrained(model_dir)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nul.txt").write_bytes(b"a\x00b and emoji \xf0\x9f\x8e\x89")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    cli = [sys.executable, "-m", "fwpkm_rag.cli"]
    common = ["--store", str(tmp_path / "store"), "--model", str(model_dir), "--threads", "1"]
    run = subprocess.run(cli + ["ingest", str(tmp_path / "empty.txt"), str(tmp_path / "nul.txt")] + common,
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    run = subprocess.run(cli + ["ingest", str(tmp_path / "latin1.txt")] + common, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "not UTF-8" in run.stderr and "Traceback" not in run.stderr
    for question, k, ok, msg in (("", "1000", 0, "retrieved"), ("w " * 9000, "2", 1, "max_query_tokens")):
        run = subprocess.run(cli + ["ask", question, "-k", k, "--no-answer"] + common, capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == ok and msg in (run.stdout + run.stderr) and "Traceback" not in run.stderr, run.stderr
    loaded = FwPKMStore.load(tmp_path / "store", model=small_model)  # the rejected file changed nothing
    assert sorted(d.id for d in loaded.get_by_ids([str(tmp_path / n) for n in ("empty.txt", "nul.txt", "latin1.txt")])) == \
        sorted([str(tmp_path / "empty.txt"), str(tmp_path / "nul.txt")])


# ---- huge documents: a limit by default, opt-in streaming -----------------------------------------------------
def test_a_document_over_max_document_chars_is_refused_before_tokenizing(small_model, monkeypatch):
    import fwpkm_rag.pipelines.chunking as chunking
    from fwpkm_rag.pipelines.settings import DEFAULT_MAX_DOCUMENT_CHARS

    encoded = []
    real = chunking.encode_document
    monkeypatch.setattr(chunking, "encode_document", lambda tok, text, *a: encoded.append(len(text)) or real(tok, text, *a))
    default = FwPKMStore(model=small_model)
    assert default.settings.max_document_chars == DEFAULT_MAX_DOCUMENT_CHARS == 10_000_000
    before = fingerprint(default)
    huge = "a" * (DEFAULT_MAX_DOCUMENT_CHARS + 1)  # ~10 MB: refused by its length, never tokenized
    with pytest.raises(DocumentTooLargeError, match=r"document #1 has 10,000,001 characters, over the limit of "
                                                    r"10,000,000 \(max_document_chars\).*max_document_chars=None"):
        default.add_texts(["fine", huge], ids=["ok", "huge"])
    assert encoded == [4] and default.get_by_ids(["ok", "huge"]) == []
    assert_same(before, fingerprint(default))
    del huge

    store = FwPKMStore(model=small_model, chunk_tokens=16, max_document_chars=300)
    store.add_texts([prose(20, 1)], ids=["small"])
    before, encoded[:] = fingerprint(store), []
    long_text = prose(200, 2) + " The secret number for ID-77 is 4501."
    for call in (lambda: store.add_texts(["x", long_text], ids=["x", "long"]),
                 lambda: store.add_documents([Document(page_content=long_text, id="long")]),
                 lambda: store.add_texts([long_text[:100]], max_document_chars=50)):  # a stricter call
        with pytest.raises(DocumentTooLargeError, match="max_document_chars"):
            call()
        assert_same(before, fingerprint(store))
    assert len(long_text) not in encoded
    # explicit opt-in, per call or per store: stored exactly, retrievable, and rebuild keeps it
    store.add_texts([long_text], ids=["long"], max_document_chars=None)
    assert store.get_by_ids(["long"])[0].page_content == long_text
    store.rebuild()
    assert store.get_by_ids(["long"])[0].page_content == long_text
    assert store.similarity_search("The secret number for ID-77 is", k=1)[0].id == "long"
    for bad in (0, -1, True, 2.5, "100"):
        with pytest.raises(ConfigError, match="max_document_chars"):
            FwPKMStore(model=small_model, max_document_chars=bad)
        with pytest.raises(ConfigError, match="max_document_chars"):
            store.add_texts(["x"], max_document_chars=bad)


def test_huge_document_files_are_refused_before_reading(small_model, tmp_path):
    store = FwPKMStore(model=small_model, max_document_chars=100)
    big = tmp_path / "big.txt"
    big.write_text("word " * 100)  # 500 bytes > 4 x 100: refused from its size alone
    wide = tmp_path / "wide.txt"
    wide.write_text("東" * 120)  # 360 bytes, but 120 characters > 100: refused once decoded
    before = fingerprint(store)
    with pytest.raises(DocumentTooLargeError, match=r"big.txt is 500 bytes, so at least 125 characters, over the limit of 100"):
        store.add_files([big])
    with pytest.raises(DocumentTooLargeError, match=r"document #0 has 120 characters"):
        store.add_files([wide])
    assert_same(before, fingerprint(store))
    assert store.add_files([big, wide], max_document_chars=None) == [str(big), str(wide)]
    assert store.get_by_ids([str(wide)])[0].page_content == "東" * 120


def test_cli_ingest_refuses_a_huge_file_unless_told(small_model, tmp_path, capsys):
    from fwpkm_rag.cli import main

    model_dir = tmp_path / "model"
    small_model.save_pretrained(model_dir)
    (tmp_path / "big.txt").write_text(prose(400, 3))
    args = ["ingest", str(tmp_path / "big.txt"), "--store", str(tmp_path / "store"), "--model", str(model_dir),
            "--threads", "1"]
    assert main(args + ["--max-document-chars", "1000"]) == 1  # an error message, not an exception
    err = capsys.readouterr().err
    assert "fwpkm-rag: error: document #0 has" in err and "max_document_chars" in err
    assert not (tmp_path / "store" / "CURRENT").exists()  # nothing was saved
    assert main(args + ["--max-document-chars", "-5"]) == 1 and "must be >= 0" in capsys.readouterr().err
    assert main(args + ["--max-document-chars", "0"]) == 0
    loaded = FwPKMStore.load(tmp_path / "store", model=small_model)
    assert loaded.get_by_ids([str(tmp_path / "big.txt")])[0].page_content == prose(400, 3)
    torch.set_num_threads(1)


def test_a_long_document_streams_in_segments_and_pieces(small_model, monkeypatch):
    """Tokenized in many segments and fed to the model in many pieces: same contents, tokens and retrieval as
    the document's plain path (one segment)."""
    import fwpkm_rag.pipelines.chunking as chunking

    names = {3: "amber", 10: "cobalt", 17: "saffron", 24: "umber", 31: "viridian", 38: "magenta"}
    text = "\n".join(prose(30, i) + (f" Vault {names[i]} opens with code {1000 + i}." if i in names else "")
                     for i in range(40))
    plain = FwPKMStore(model=small_model, chunk_tokens=48, chunk_overlap=16, piece_tokens=4096)
    plain.add_texts([text], ids=["doc"])
    monkeypatch.setattr(chunking, "SEGMENT_CHARS", 300)
    seg = FwPKMStore(model=small_model, chunk_tokens=48, chunk_overlap=16, piece_tokens=100)
    seg.add_texts([text], ids=["doc"])
    assert seg.get_by_ids(["doc"])[0].page_content == text
    n_seg = len(chunking.encode_document(seg.index.tok, text))
    assert seg.index.tokens_ingested == n_seg + 2 and n_seg - len(seg.index.tok.encode(text)) in range(-5, 6)
    for name in names.values():
        for store in (plain, seg):
            top = store.similarity_search(f"Vault {name} opens with code", k=5)
            assert any(f"Vault {name} opens with code" in d.page_content for d in top), (name, top)


# ---- property test of the store API against a dict model ------------------------------------------------------
def test_store_api_matches_a_dict_model(small_model, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings, strategies as st

    text = st.text(alphabet=st.sampled_from(list("ab xyz\n\x00é東🎉")), max_size=40)
    doc_id = st.sampled_from(["a", "b", "c", "d", "e"])
    op = st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(doc_id, text), max_size=3, unique_by=lambda t: t[0])),
        st.tuples(st.just("add_bad"), st.lists(st.tuples(doc_id, text), min_size=1, max_size=2, unique_by=lambda t: t[0])),
        st.tuples(st.just("delete"), st.lists(doc_id, max_size=3)),
        st.tuples(st.just("search"), text, st.integers(0, 8)),
        st.tuples(st.just("get"), st.lists(doc_id, max_size=4)),
        st.tuples(st.just("saveload"), st.just(None)),
    )
    saves = {"n": 0}

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(op, max_size=8))
    def run(ops):
        store = FwPKMStore(model=small_model, chunk_tokens=4)
        expected: dict = {}
        for kind, *args in ops:
            if kind == "add":
                batch = args[0]
                store.add_texts([t for _, t in batch], ids=[i for i, _ in batch], metadatas=[{"i": i} for i, _ in batch])
                expected.update({i: t for i, t in batch})
            elif kind == "add_bad":
                with pytest.raises(InputError):
                    store.add_texts([t for _, t in args[0]] + [b"bad"], ids=[i for i, _ in args[0]] + ["z"])
            elif kind == "delete":
                store.delete(args[0])
                for i in args[0]:
                    expected.pop(i, None)
            elif kind == "search":
                q, k = args
                docs = store.similarity_search(q, k=k)
                assert len(docs) == min(k, store.index.n_live_chunks)
                for d in docs:
                    assert d.id in expected and d.page_content in expected[d.id] and d.metadata == {"i": d.id}
                assert len({(d.id, d.page_content) for d in docs}) == len(docs) or any(
                    expected[d.id].count(d.page_content) > 1 or not d.page_content for d in docs)
            elif kind == "get":
                got = store.get_by_ids(args[0])
                assert [(d.id, d.page_content) for d in got] == [(i, expected[i]) for i in args[0] if i in expected]
            elif kind == "saveload" and saves["n"] < 2:
                saves["n"] += 1
                path = tmp_path_factory.mktemp("prop")
                store.save(path)
                store.close()
                store = FwPKMStore.load(path, model=small_model)
            assert len(store) == len(expected)
            assert store.index.n_live_chunks == sum(seg.index.docs.n_chunks() for seg in store.index.segments)
        store.close()

    run()


# ---- 2. rebuild ---------------------------------------------------------------------------------------------
def test_rebuild_forgets_deleted_content_in_the_fast_weights(small_model):
    # trained-free check of generation: a store whose memory saw the secret continues "...is" with it more
    # readily; after delete + rebuild the memory equals one that never saw it, bit for bit.
    secret = "The launch code for project Nightjar is 58214 and nobody else knows it."
    live = [prose(150, 11), "The garden gate code is 1234."]
    store = FwPKMStore(model=small_model, chunk_tokens=32)
    store.add_texts([live[0], secret, live[1]], ids=["live0", "secret", "live1"])
    assert any("58214" in d.page_content for d in store.similarity_search("launch code Nightjar", k=2))
    store.delete(["secret"])
    stale = [m.values.rows.clone() for m in store.index.view.memory]
    store.rebuild()
    clean = FwPKMStore(model=small_model, chunk_tokens=32)
    clean.add_texts(live, ids=["live0", "live1"])
    for a, b in zip(store.index.view.memory, clean.index.view.memory):  # as if never written
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values.rows, b.values.rows)
        assert torch.equal(a.values.slot_map, b.values.slot_map)
    assert any(not torch.equal(x, m.values.rows) if x.shape == m.values.rows.shape else True
               for x, m in zip(stale, store.index.view.memory))
    # cannot be retrieved nor generated; live documents still are
    for k in (1, 10):
        assert all("58214" not in d.page_content for d in store.similarity_search("launch code Nightjar 58214", k=k))
    prompt = "The launch code for project Nightjar is"
    ans = ChatFwPKM(store=store, max_tokens=8, prompt_format="qa").invoke(prompt).text
    assert "58214" not in ans
    assert ans == ChatFwPKM(store=clean, max_tokens=8, prompt_format="qa").invoke(prompt).text
    assert store.similarity_search("garden gate code", k=1)[0].id == "live1"
    assert [d.id for d in store.get_by_ids(["live0", "secret", "live1"])] == ["live0", "live1"]
    assert store.get_by_ids(["live0"])[0].page_content == live[0]


# ---- 3. concurrency -----------------------------------------------------------------------------------------
def test_readers_see_whole_writes_while_one_writer_ingests(small_model):
    store = FwPKMStore(model=small_model, chunk_tokens=16, piece_tokens=256)
    store.add_texts(["The secret number for ID-1 is 111111."], ids=["d0"])
    n_batches, per_batch = 6, 3
    texts = {f"b{b}-{j}": f"The secret number for ID-{b}{j} is {b}{j}{j}. " + prose(60, b * 10 + j)
             for b in range(n_batches) for j in range(per_batch)}
    tok = small_model.get_tokenizer()
    # chunks of each document, from its token count alone (16-token chunks; an empty text is one chunk)
    n_chunks = {doc_id: max(1, math.ceil(len(tok.encode(text)) / 16))
                for doc_id, text in {"d0": "The secret number for ID-1 is 111111.", **texts}.items()}
    errors, seen = [], []
    done = threading.Event()

    def reader(seed):
        rng = random.Random(seed)
        while not done.is_set():
            try:
                docs = store.similarity_search(f"secret number ID-{rng.randrange(n_batches)}", k=1000)
                ids = {d.id for d in docs}
                # a batch is visible entirely or not at all: every batch id has all its docs, or none
                batches = {i.split("-")[0] for i in ids if "-" in i}
                for b in batches:
                    assert {f"{b}-{j}" for j in range(per_batch)} <= ids, (b, sorted(ids))
                # k=1000 is more than the store ever holds: every chunk of every visible document, each once
                assert "d0" in ids and Counter(d.id for d in docs) == {i: n_chunks[i] for i in ids}
                seen.append(len(ids))
                ChatFwPKM(store=store, max_tokens=2).invoke("secret number")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for b in range(n_batches):
        batch_ids = [f"b{b}-{j}" for j in range(per_batch)]
        store.add_texts([texts[i] for i in batch_ids], ids=batch_ids)
        if b == 3:
            store.delete([f"b1-{j}" for j in range(per_batch)])
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(seen) >= 3 and len(store) == 1 + (n_batches - 1) * per_batch


# ---- 4. divergence guard under adversarial input ---------------------------------------------------------------
def test_divergence_guard_adversarial_hidden_states_and_a_long_repeated_stream():
    fw = FwPKMConfig(n_subkeys=64, k_dim=32, v_dim=16, heads=1, topk=4, chunk_size=64, q_conv=3, max_slot_norm=4.5)
    model = rag_model(fwpkm=fw.to_dict())
    store = FwPKMStore(model=model, chunk_tokens=32)
    store.add_texts(["The secret number for ID-4821 is 913042. " + prose(100, 1)], ids=["needle"])
    # adversarial hidden states: the layers' inputs are RMS-normalised, so blow up the value and query
    # projections instead (value targets of norm ~1e12 and far-off queries) while a document streams in
    saved = [(m.v_proj.weight.clone(), m.q_proj.weight.clone()) for m in model.fwpkm_modules]
    with torch.no_grad():
        for m in model.fwpkm_modules:
            m.v_proj.weight.mul_(1e12)
            m.q_proj.weight.mul_(1e6)
    store.add_texts([prose(300, 2)], ids=["poison"])
    refused = sum(int(m.refused.sum()) for m in store.index.view.memory)
    assert refused > 0  # a z-scored 16-dim value has norm 4: rows pushed past 4.5 are refused and counted
    with torch.no_grad():
        for m, (v, q) in zip(model.fwpkm_modules, saved):
            m.v_proj.weight.copy_(v)
            m.q_proj.weight.copy_(q)
    store.add_texts(["the " * 20_000], ids=["repeat"])  # 20K identical tokens
    assert store.index.tokens_ingested > 20_000
    for m in store.index.view.memory:
        assert torch.isfinite(m.values.rows).all() and torch.isfinite(m.keys).all()
        if m.values.rows.numel():
            assert float(m.values.rows.norm(dim=-1).max()) <= 4.5 + 1e-3
    hits = store.search_with_provenance("What is the secret number for ID-4821?", k=3)
    assert hits[0].doc_id == "needle", [(h.doc_id, h.score) for h in hits]
    print(f"refused updates: {refused}")


# ---- 5. loading never executes code -----------------------------------------------------------------------------
def test_snapshots_hold_no_pickle_and_loading_never_unpickles(store, tmp_path, monkeypatch):
    store.save(tmp_path / "s")
    files = [f for f in (tmp_path / "s").rglob("*") if f.is_file() and f.name != "CURRENT"]
    assert any(f.suffix == ".safetensors" for f in files) and any(f.name == "store.sqlite" for f in files)
    for f in files:
        head = f.read_bytes()[:16]
        assert not head.startswith(b"\x80"), f  # pickle protocol 2+ opcode
        assert head.startswith((b"SQLite format 3", b"{", b"[")) or f.suffix == ".safetensors", f
        if f.suffix == ".safetensors":
            n = int.from_bytes(head[:8], "little")
            assert f.read_bytes()[8:9] == b"{" and n < f.stat().st_size  # a JSON header, then raw tensor bytes
    import fwpkm_rag.memory.state as state_mod
    import fwpkm_rag.pipelines.docstore as docstore_mod
    import fwpkm_rag.pipelines.persistence as persistence_mod

    for mod in (persistence_mod, docstore_mod, state_mod):
        src = Path(mod.__file__).read_text()
        for call in ("import pickle", "pickle.load", "torch.load(", "np.load(", "numpy.load(", "weights_only"):
            assert call not in src, (mod.__name__, call)

    def boom(*a, **k):
        raise AssertionError("unpickling during load")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(torch, "load", boom)
    loaded = FwPKMStore.load(tmp_path / "s", model=store.model)
    q = "What is the secret number for ID-77?"
    assert loaded.similarity_search_with_score(q, k=2) == store.similarity_search_with_score(q, k=2)
    loaded.close()
