"""`DocStore`: the documents and retrieval chunks of a store, in SQLite (on disk, never all in RAM).

A live store keeps its database in a private temporary file; `save()` copies it into a snapshot with SQLite's
backup API. The working copy is in WAL mode: the writer (one add/delete call at a time) works in a transaction
that is committed at the end of the call or rolled back when the call fails, and readers (searches, get_by_ids)
use their own per-thread connections, so they see the last committed state, never a half-written batch.
Tables:

    docs(id TEXT PK, seq, metadata JSON, first_chunk, n_chunks)
    chunks(chunk_id INTEGER PK, doc_id, idx, text, core_offset, tok_start, tok_end)
    meta(key PK, value)                      -- small JSON values (counters, format version, fingerprints)
    arrays(name PK, dtype, shape, data BLOB)  -- tensors (provenance table, token counts) as raw bytes

A chunk's `text` is its returned text (the core span widened on the left by `chunk_overlap` tokens);
`text[core_offset:]` is its core, and a document's text is the concatenation of its chunks' cores.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import weakref
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from fwpkm_rag.errors import InputError, StateFormatError

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs(id TEXT PRIMARY KEY, seq INTEGER NOT NULL, metadata TEXT NOT NULL,
                                first_chunk INTEGER NOT NULL, n_chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(chunk_id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, idx INTEGER NOT NULL,
                                  text TEXT NOT NULL, core_offset INTEGER NOT NULL,
                                  tok_start INTEGER NOT NULL, tok_end INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arrays(name TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL);
"""

_DTYPES = {"int32": torch.int32, "int64": torch.int64, "float16": torch.float16, "float32": torch.float32,
           "bool": torch.bool, "uint8": torch.uint8}


@dataclass
class ChunkRecord:
    chunk_id: int
    doc_id: str
    index: int  # position of the chunk in its document
    text: str  # returned text (overlap included)
    core_offset: int  # text[core_offset:] is the non-overlapping core
    tok_start: int  # core token span [tok_start, tok_end) in the document's tokens
    tok_end: int
    metadata: dict


def dump_metadata(metadata: Optional[dict]) -> str:
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise InputError(f"document metadata must be a dict, got {type(metadata).__name__}")
    bad = _non_str_key(metadata)
    if bad is not None:
        raise InputError(f"document metadata keys must be str (JSON object keys), got {bad!r} "
                         f"({type(bad).__name__}); it would come back as a different key")
    try:
        return json.dumps(metadata, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"document metadata must be JSON-serialisable (str/int/float/bool/None/list/dict): {exc}") from None


def _non_str_key(value, depth: int = 0):
    """The first dict key that is not a str, anywhere in `value` (None if all are)."""
    if depth > 100:
        return None  # json.dumps reports the (circular or too deep) structure itself
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return key
            bad = _non_str_key(item, depth + 1)
            if bad is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for item in value:
            bad = _non_str_key(item, depth + 1)
            if bad is not None:
                return bad
    return None


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class DocStore:
    """Documents and chunks in a SQLite file: a private temporary one (default) or a copy of `source`."""

    def __init__(self, source: Optional[str] = None):
        self._dir = tempfile.mkdtemp(prefix="fwpkm-store-")
        self._finalizer = weakref.finalize(self, _remove, self._dir)
        self.path = os.path.join(self._dir, "store.sqlite")
        if source is not None:
            try:
                src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
                dst = sqlite3.connect(self.path)
                src.backup(dst)
                src.close(), dst.close()
            except sqlite3.DatabaseError as exc:
                raise StateFormatError(f"{source} is not a readable store database (corrupt or truncated): {exc}") from exc
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        # A private working copy: durability comes from save(). WAL (not OFF) so that a failed add call can be
        # rolled back and readers on other connections see only committed batches.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self._local = threading.local()
        self._readers: list = []
        self._readers_lock = threading.Lock()
        try:
            self.db.executescript(SCHEMA)
            self.db.execute("SELECT count(*) FROM docs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateFormatError(f"{source} is not a readable store database (corrupt or truncated): {exc}") from exc

    # ---- documents ------------------------------------------------------------------------------------------
    def has(self, doc_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM docs WHERE id=?", (doc_id,)).fetchone() is not None

    def chunk_ids_of(self, doc_ids: Iterable[str]) -> list[int]:
        out = []
        for doc_id in doc_ids:
            out += [r[0] for r in self.db.execute("SELECT chunk_id FROM chunks WHERE doc_id=?", (doc_id,))]
        return out

    def add_document(self, doc_id: str, seq: int, metadata_json: str, chunks: list[tuple]) -> None:
        """chunks: (chunk_id, idx, text, core_offset, tok_start, tok_end) of this document, in order."""
        first = chunks[0][0] if chunks else -1
        self.db.execute("INSERT INTO docs VALUES (?,?,?,?,?)", (doc_id, seq, metadata_json, first, len(chunks)))
        self.db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?,?,?)", [(c[0], doc_id, *c[1:]) for c in chunks])

    def delete_documents(self, doc_ids: Iterable[str]) -> list[int]:
        """Drop documents and their chunks; returns the chunk ids dropped (missing ids are ignored)."""
        doc_ids = list(doc_ids)
        dropped = self.chunk_ids_of(doc_ids)
        self.db.executemany("DELETE FROM chunks WHERE doc_id=?", [(d,) for d in doc_ids])
        self.db.executemany("DELETE FROM docs WHERE id=?", [(d,) for d in doc_ids])
        return dropped

    def delete_all(self) -> None:
        self.db.execute("DELETE FROM chunks")
        self.db.execute("DELETE FROM docs")

    def get_documents(self, doc_ids: Iterable[str], db=None) -> list[tuple[str, str, dict]]:
        """(id, full text, metadata) for each id that exists, in the order given (`db`: a reader connection)."""
        db = self.db if db is None else db
        out = []
        for doc_id in doc_ids:
            row = db.execute("SELECT metadata FROM docs WHERE id=?", (doc_id,)).fetchone()
            if row is None:
                continue
            parts = db.execute("SELECT text, core_offset FROM chunks WHERE doc_id=? ORDER BY idx", (doc_id,))
            out.append((doc_id, "".join(t[o:] for t, o in parts), json.loads(row[0])))
        return out

    def get_chunks(self, chunk_ids: Iterable[int], db=None) -> dict[int, ChunkRecord]:
        db = self.db if db is None else db
        out = {}
        for cid in chunk_ids:
            row = db.execute(
                "SELECT c.chunk_id, c.doc_id, c.idx, c.text, c.core_offset, c.tok_start, c.tok_end, d.metadata "
                "FROM chunks c JOIN docs d ON d.id = c.doc_id WHERE c.chunk_id=?", (int(cid),)).fetchone()
            if row is not None:
                out[row[0]] = ChunkRecord(*row[:7], metadata=json.loads(row[7]))
        return out

    def n_documents(self, db=None) -> int:
        return (self.db if db is None else db).execute("SELECT count(*) FROM docs").fetchone()[0]

    def n_chunks(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def doc_ids(self, db=None) -> list[str]:
        return [r[0] for r in (self.db if db is None else db).execute("SELECT id FROM docs ORDER BY seq")]

    # ---- meta and arrays ------------------------------------------------------------------------------------
    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put_array(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        dtype = str(t.dtype).replace("torch.", "")
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() and t.dtype != torch.bool else t.numpy().tobytes()
        self.db.execute("INSERT OR REPLACE INTO arrays VALUES (?,?,?,?)", (name, dtype, json.dumps(list(t.shape)), data))

    def get_array(self, name: str) -> torch.Tensor:
        row = self.db.execute("SELECT dtype, shape, data FROM arrays WHERE name=?", (name,)).fetchone()
        if row is None:
            raise StateFormatError(f"the store database lacks the array {name!r}")
        dtype, shape, data = row[0], tuple(json.loads(row[1])), row[2]
        if dtype not in _DTYPES:
            raise StateFormatError(f"array {name!r} has an unknown dtype {dtype!r}")
        np_dtype = {"bool": np.bool_, "uint8": np.uint8, "int32": np.int32, "int64": np.int64,
                    "float16": np.float16, "float32": np.float32}[dtype]
        flat = np.frombuffer(data, dtype=np_dtype).copy()
        if flat.size != int(np.prod(shape)):
            raise StateFormatError(f"array {name!r} holds {flat.size} values, its shape {shape} needs {int(np.prod(shape))}")
        return torch.from_numpy(flat.reshape(shape))

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        """Undo everything since the last commit (a failed add or delete call)."""
        self.db.rollback()

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (autocommit; sees committed data only)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                   isolation_level=None, timeout=60.0)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def backup_to(self, path: str) -> None:
        """Copy the database into a new file at `path` (consistent snapshot)."""
        self.db.commit()
        dst = sqlite3.connect(path)
        self.db.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file (no -wal/-shm companions)
        dst.close()

    def close(self) -> None:
        try:
            with self._readers_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
            self.db.close()
        finally:
            self._finalizer()
