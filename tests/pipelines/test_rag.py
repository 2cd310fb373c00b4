"""The RAG component: chunking, needle retrieval, isolation, deletion, provenance metadata, chat, persistence
(save -> load in a new process, kill -9 during save, corrupted snapshots), flat RSS while streaming, CLI."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from langchain_core.documents import Document

from fwpkm_rag.errors import InputError, ModelMismatchError, StateFormatError
from fwpkm_rag.pipelines import ChatFwPKM, FwPKMStore
from fwpkm_rag.pipelines.chunking import chunk_spans
from rag_helpers import rag_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def filler_text(n_words: int, seed: int = 0) -> str:
    """English-ish prose from the language reference shipped with CPython (always on disk)."""
    import pydoc_data.topics as topics

    words = " ".join(topics.topics[k] for k in sorted(topics.topics)).split()
    start = random.Random(seed).randrange(0, len(words) - n_words)
    return " ".join(words[start:start + n_words])


def needle_corpus(n_words=2400, keys=("4821", "4822", "7310", "7319", "5055"), seed=0):
    rng = random.Random(seed)
    parts = filler_text(n_words, seed).split()
    values = {k: f"{rng.randrange(100000, 999999)}" for k in keys}
    for i, k in enumerate(keys):
        at = (i + 1) * len(parts) // (len(keys) + 1)
        parts.insert(at, f"The secret number for ID-{k} is {values[k]}.")
    return " ".join(parts), values


def test_chunk_spans_are_exact_substrings_with_multibyte_text(small_model):
    tok = small_model.get_tokenizer()
    text = "naïve café — 東京 " * 40 + "emoji 🎉🎉 end"
    ids = tok.encode(text)
    spans = chunk_spans(text, ids, tok, chunk_tokens=7, chunk_overlap=3)
    assert "".join(t[off:] for _, t, off, _, _ in spans) == text  # cores tile the document exactly
    for idx, t, off, s, e in spans:
        assert t in text and e - s <= 7
        if idx:
            assert off > 0  # widened on the left by the overlap
    assert chunk_spans("", [], tok, 7, 0) == [(0, "", 0, 0, 0)]


def test_needles_with_distractors_gold_chunk_in_top5(small_model):
    text, values = needle_corpus()
    # overlap widens the returned text: a needle cut by a chunk boundary still shows whole in the chunk
    # holding its key
    store = FwPKMStore(model=small_model, chunk_tokens=64, chunk_overlap=16)
    store.add_texts([text], metadatas=[{"source": "haystack"}], ids=["hay"])
    n_tokens = store.index.tokens_ingested
    assert n_tokens > 2500
    for key, value in values.items():
        hits = store.search_with_provenance(f"What is the secret number for ID-{key}?", k=5)
        assert len(hits) == 5
        gold = [h for h in hits if f"ID-{key}" in h.text]
        assert gold, (key, [h.text[:80] for h in hits])
        assert gold[0].matched_slots and gold[0].metadata == {"source": "haystack"}


def test_retriever_documents_carry_provenance_and_search_documents_do_not(small_model):
    store = FwPKMStore(model=small_model, chunk_tokens=16)
    store.add_texts(["alpha beta gamma " * 10, "The launch code is 7781."], metadatas=[{"source": "a"}, {"source": "b"}],
                    ids=["a", "b"])
    plain = store.similarity_search("launch code", k=1)
    assert plain == [Document(page_content="The launch code is 7781.", metadata={"source": "b"}, id="b")]
    (doc,) = store.as_retriever(search_kwargs={"k": 1}).invoke("launch code")
    assert doc.id == "b" and doc.metadata["source"] == "b"
    info = doc.metadata["fwpkm"]
    assert info["source"] == "b" and info["chunk_index"] == 0 and info["score"] > 0 and info["matched_slots"]
    # a multi-chunk document comes back whole from get_by_ids
    assert store.get_by_ids(["a"])[0].page_content == "alpha beta gamma " * 10


def test_delete_and_replace_never_return_old_chunks(small_model):
    store = FwPKMStore(model=small_model, chunk_tokens=64)
    store.add_texts(["The vault password is walrus.", "Unrelated text about gardens."], ids=["v", "g"])
    store.add_texts(["The vault password is pelican."], ids=["v"])  # replaces
    texts = [d.page_content for d in store.similarity_search("vault password walrus", k=10)]
    assert "walrus" not in " ".join(texts) and "The vault password is pelican." in texts
    store.delete(["v", "missing"])
    assert all(d.id == "g" for d in store.similarity_search("vault password", k=10))
    assert store.get_by_ids(["v"]) == []


def test_stores_are_isolated_and_queries_never_change_a_store(small_model):
    a = FwPKMStore(model=small_model)
    b = FwPKMStore(model=small_model)
    a.add_texts(["The secret number for ID-9931 is 424242."])
    b.add_texts(["Gardening notes: water the tomatoes every morning."])
    fresh = FwPKMStore(model=small_model)
    fresh.add_texts(["Gardening notes: water the tomatoes every morning."])
    for sa, sb in zip(b.index.view.memory, fresh.index.view.memory):  # A's ingestion left B untouched
        assert torch.equal(sa.keys, sb.keys) and torch.equal(sa.values.rows, sb.values.rows)
    hits = b.similarity_search("What is the secret number for ID-9931?", k=4)
    assert all("424242" not in d.page_content for d in hits)
    before = [m.values.rows.clone() for m in b.index.view.memory]
    answer = ChatFwPKM(store=b, max_tokens=12).invoke("What is the secret number for ID-9931?").text
    assert "424242" not in answer
    assert all(torch.equal(x, m.values.rows) for x, m in zip(before, b.index.view.memory))


def test_chat_stop_sequences_streaming_and_seeded_sampling(small_model):
    chat = ChatFwPKM(model=small_model, max_tokens=12, temperature=0.0)
    full = chat.invoke("hello there")
    streamed = "".join(c.text for c in chat.stream("hello there"))
    assert full.text == streamed and full.text
    assert full.usage_metadata["output_tokens"] <= 12
    assert full.usage_metadata["total_tokens"] == full.usage_metadata["input_tokens"] + full.usage_metadata["output_tokens"]
    stop = full.text[2:4]
    if stop.strip():
        cut = chat.invoke("hello there", stop=[stop]).text
        assert stop not in cut and full.text.startswith(cut)
    hot = ChatFwPKM(model=small_model, max_tokens=10, temperature=1.0, seed=7)
    assert hot.invoke("hi").text == hot.invoke("hi").text


def test_bad_inputs_give_clear_errors(small_model, tmp_path):
    store = FwPKMStore(model=small_model)
    with pytest.raises(InputError, match="JSON"):
        store.add_texts(["x"], metadatas=[{"bad": object()}])
    with pytest.raises(InputError, match="iterable of texts"):
        store.add_texts("just a string")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        store.add_files([bad])
    with pytest.raises(FileNotFoundError):
        store.add_files([tmp_path / "nope.txt"])
    with pytest.raises(FileNotFoundError):
        FwPKMStore.load(tmp_path / "no-store", model=small_model)


def test_streaming_a_long_generator_keeps_rss_flat(small_model):
    store = FwPKMStore(model=small_model, chunk_tokens=64)
    words = filler_text(4000, seed=3).split()
    rss = []

    def rss_mb():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def docs(n):
        rng = random.Random(0)
        for i in range(n):
            if i % 100 == 0:
                rss.append(rss_mb())
            start = rng.randrange(0, len(words) - 80)
            yield f"record {i}: " + " ".join(words[start:start + 60])

    store.add_texts(docs(1200))
    assert store.index.tokens_ingested > 80_000
    growth = max(rss[2:]) - rss[2]
    assert growth < 25, f"RSS grew {growth:.1f} MiB while streaming ({[round(r) for r in rss]})"


# ---- persistence ------------------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {here!r})
    from rag_helpers import rag_model
    from fwpkm_rag.pipelines import FwPKMStore
    store = FwPKMStore.load({store!r}, model=rag_model())
    out = {{q: [(d.id, d.page_content, round(s, 4)) for d, s in store.similarity_search_with_score(q, k=3)]
            for q in {queries!r}}}
    print(json.dumps(out))
""")

QUERIES = ["What is the secret number for ID-7310?", "secret number ID-4822", "gardens"]


def _results(store):
    return {q: [[d.id, d.page_content, round(s, 4)] for d, s in store.similarity_search_with_score(q, k=3)]
            for q in QUERIES}


def _child_results(path):
    code = CHILD.format(here=str(HERE), store=str(path), queries=QUERIES)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout)


def test_save_then_load_in_a_new_process_gives_the_same_results(small_model, tmp_path):
    text, _ = needle_corpus(900)
    store = FwPKMStore(model=small_model, chunk_tokens=48)
    store.add_texts([text, "Notes about gardens and tomatoes."], ids=["hay", "garden"])
    store.save(tmp_path / "s")
    assert _child_results(tmp_path / "s") == _results(store)
    # a loaded store keeps ingesting exactly like the original
    loaded = FwPKMStore.load(tmp_path / "s", model=small_model)
    for s in (store, loaded):
        s.add_texts(["The secret number for ID-7310 is 000111."], ids=["late"])
    assert _results(loaded) == _results(store)


@pytest.mark.parametrize("segment_tokens", [None, 300], ids=["one-segment", "segmented"])
def test_kill_during_save_leaves_the_previous_snapshot_loadable(small_model, tmp_path, segment_tokens):
    """kill -9 at any moment of a save loop leaves a loadable store with the same results. Segmented: several
    sealed segments (reused by every save), the open one (written anew), the catalog and the manifest."""
    path = tmp_path / "s"
    store = FwPKMStore(model=small_model, chunk_tokens=48, segment_tokens=segment_tokens)
    store.add_texts([needle_corpus(600)[0]], ids=["hay"])
    if segment_tokens is not None:
        assert len(store.index.segments) >= 3
    store.save(path)
    expected = _results(store)
    saver = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(HERE)!r})
        from rag_helpers import rag_model
        from fwpkm_rag.pipelines import FwPKMStore
        store = FwPKMStore.load({str(path)!r}, model=rag_model())
        print("ready", flush=True)
        while True:
            store.save({str(path)!r})
    """)
    for delay in (0.0, 0.03, 0.1, 0.25, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", saver], stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        loaded = FwPKMStore.load(path, model=small_model)  # whichever snapshot is current is complete
        assert _results(loaded) == expected, delay
        loaded.close()


def segment_folder(manifest_path) -> Path:
    """The folder of the last segment a saved store's manifest names."""
    manifest = json.loads(Path(manifest_path).read_text())
    return Path(manifest_path).parent / manifest["segments"][-1]["folder"]


def test_corrupted_snapshots_and_wrong_models_give_clear_errors(small_model, tmp_path):
    store = FwPKMStore(model=small_model)
    store.add_texts(["The secret number for ID-1 is 2."])
    snap = segment_folder(store.save(tmp_path / "s"))
    db = snap / "store.sqlite"
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0xFF
    db.write_bytes(bytes(data))
    with pytest.raises(StateFormatError, match="checksum"):
        FwPKMStore.load(tmp_path / "s", model=small_model)
    snap = segment_folder(store.save(tmp_path / "s"))
    mem = snap / "memory-0.safetensors"
    mem.write_bytes(mem.read_bytes()[:100])
    with pytest.raises(StateFormatError):
        FwPKMStore.load(tmp_path / "s", model=small_model)
    snap = segment_folder(store.save(tmp_path / "s"))
    (snap / "manifest.json").write_text("{not json")
    with pytest.raises(StateFormatError, match="manifest"):
        FwPKMStore.load(tmp_path / "s", model=small_model)
    store.save(tmp_path / "s")
    with pytest.raises(ModelMismatchError, match="another model"):
        FwPKMStore.load(tmp_path / "s", model=rag_model(seed=1))
    (tmp_path / "s" / "CURRENT").unlink()
    with pytest.raises(StateFormatError, match="CURRENT"):
        FwPKMStore.load(tmp_path / "s", model=small_model)


def test_cli_ingest_word_and_semantic_layer_flags(small_model, tmp_path):
    """ingest: the word layer on by default, --no-word-layer drops it from a saved store, --word-layer rebuilds it;
    --semantic-layer adds the chunk semantic layer (MiniLM, the baselines extra)."""
    from fwpkm_rag.cli import main

    model_dir = tmp_path / "model"
    small_model.save_pretrained(model_dir)
    (tmp_path / "a.txt").write_text("Locker HF-871 holds 792905. Locker HF-879 holds 101010. " * 3)
    (tmp_path / "b.txt").write_text("The harbour lantern was painted teal by the decorators.")
    common = ["--store", str(tmp_path / "store"), "--model", str(model_dir), "--threads", "1"]

    def layers():
        store = FwPKMStore.load(tmp_path / "store", model=small_model)
        segs = store.index.segments
        out = (store.settings.word_layer, all(s.index.words is not None for s in segs),
               store.settings.semantic_layer, all(getattr(s.index, "semantic", None) is not None for s in segs))
        store.close()
        return out

    assert main(["ingest", str(tmp_path / "a.txt")] + common) == 0
    assert layers() == (True, True, False, False)
    assert main(["ingest", str(tmp_path / "b.txt"), "--no-word-layer"] + common) == 0
    assert layers()[:2] == (False, False)
    with pytest.warns(UserWarning, match="rebuilding"):
        assert main(["ingest", str(tmp_path / "b.txt"), "--word-layer"] + common) == 0
    assert layers()[:2] == (True, True)
    other = ["--store", str(tmp_path / "sem"), "--model", str(model_dir), "--threads", "1"]
    assert main(["ingest", str(tmp_path / "b.txt"), "--semantic-layer"] + other) == 0
    store = FwPKMStore.load(tmp_path / "sem", model=small_model)
    assert store.settings.semantic_layer and store.settings.word_layer
    assert store.similarity_search("What colour did the decorators apply to the lamp by the port?", k=1)
    store.close()


def test_cli_ingest_and_ask(small_model, tmp_path):
    model_dir = tmp_path / "model"
    small_model.save_pretrained(model_dir)
    text, values = needle_corpus(800)
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text("Notes about gardens and tomatoes.")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe caf\xe9")
    cli = [sys.executable, "-m", "fwpkm_rag.cli"]
    common = ["--store", str(tmp_path / "store"), "--model", str(model_dir), "--threads", "1"]
    run = subprocess.run(cli + ["ingest", str(tmp_path / "a.txt"), "--chunk-tokens", "64"] + common,
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "tokens/s" in run.stdout
    run = subprocess.run(cli + ["ingest", str(tmp_path / "b.txt")] + common, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and "extending" in run.stdout, run.stderr
    for bad, msg in (("bad.txt", "not UTF-8"), ("missing.txt", "not a file")):
        run = subprocess.run(cli + ["ingest", str(tmp_path / bad)] + common, capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 1 and msg in run.stderr, run.stderr
    run = subprocess.run(cli + ["ask", "What is the secret number for ID-4821?", "-k", "5", "--max-tokens", "4"] + common,
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert f"ID-4821 is {values['4821']}" in run.stdout and "score" in run.stdout and "answer" in run.stdout
    run = subprocess.run(cli + ["ask", "What is the secret number for ID-4821?", "-k", "2", "--max-tokens", "4",
                                "--from-memory"] + common, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and "answer from memory" in run.stdout, run.stderr
