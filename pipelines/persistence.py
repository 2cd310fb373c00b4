"""Saving and loading a store: atomic snapshots, no pickle.

Layout of a store folder:

    DIR/CURRENT                      the name of the current snapshot (replaced atomically with os.replace)
    DIR/snap-<time>-<rand>/
        manifest.json                format name + version, model fingerprint, settings (StoreSettings.to_dict),
                                     sha256 of every file
        store.sqlite                 documents, chunks, counters, provenance table and token counts (blobs)
        memory-<i>.safetensors       the memory state of FwPKM layer i (written by `cache.save`, read by
                                     `model.load_cache`; MemoryState format, own checksum)
        kv.safetensors               the sliding-window KV of every layer and the stream position

A save writes a new snapshot folder under a temporary name, fsyncs it, renames it, then points CURRENT at it
(temp file + fsync + os.replace) and only then removes older snapshots. A crash (kill -9) at any moment leaves
CURRENT naming a complete snapshot: the previous one or the new one.

`load` checks the manifest's format version and every file's sha256 (StateFormatError when a file is missing,
truncated or modified) and that the model is the one the store was built with: a sha256 fingerprint of its
config and parameters (ModelMismatchError otherwise).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time

from fwpkm_rag.errors import ModelMismatchError, StateFormatError
from fwpkm_rag.modeling.protocol import MemoryLM
from fwpkm_rag.pipelines.docstore import DocStore
from fwpkm_rag.pipelines.index import MemoryIndex
from fwpkm_rag.pipelines.settings import StoreSettings

FORMAT_NAME = "fwpkm-store"
FORMAT_VERSION = 1
POINTER = "CURRENT"

def model_fingerprint(model: MemoryLM) -> str:
    """sha256 of the model's config (JSON) and every parameter and persistent buffer (names, shapes, bytes)."""
    from fwpkm_rag.fingerprint import weights_fingerprint

    return weights_fingerprint(model, model.config.to_dict(), model.state_dict())


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_index(index: MemoryIndex, directory: str) -> str:
    """Write a new snapshot of `index` into `directory` and make it current; returns the snapshot path."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    name = f"snap-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    tmp = os.path.join(directory, f".tmp-{name}")
    os.makedirs(tmp)
    try:
        _write_snapshot(index, tmp)
        final = os.path.join(directory, name)
        os.rename(tmp, final)
        _fsync_dir(directory)
        _point_current(directory, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Older snapshots and leftovers of interrupted saves are garbage now.
    for entry in os.listdir(directory):
        if entry != name and (entry.startswith("snap-") or entry.startswith(".tmp-snap-") or entry.startswith(f".{POINTER}.")):
            path = os.path.join(directory, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
    return final


def _write_snapshot(index: MemoryIndex, folder: str) -> None:
    """The snapshot's files in `folder` (consistent: taken under the writer lock), its manifest, all fsynced."""
    with index.lock:
        index.save_state()
        index.docs.backup_to(os.path.join(folder, "store.sqlite"))
        index.cache.save(folder)  # memory-<i>.safetensors per FwPKM layer and kv.safetensors
        files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model_fingerprint": model_fingerprint(index.model),
            "settings": index.settings.to_dict(),
            "n_memories": len(index.cache.memory),
            "files": {f: _sha256_file(os.path.join(folder, f)) for f in files},
        }
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    for f in os.listdir(folder):
        _fsync_file(os.path.join(folder, f))
    _fsync_dir(folder)


def _point_current(directory: str, name: str) -> None:
    """Make CURRENT name the snapshot `name`: a temp file, fsynced, then os.replace (atomic)."""
    pointer_tmp = os.path.join(directory, f".{POINTER}.{secrets.token_hex(4)}")
    with open(pointer_tmp, "w") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, os.path.join(directory, POINTER))
    _fsync_dir(directory)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # pragma: no cover
        pass


def current_snapshot(directory: str) -> str:
    directory = os.fspath(directory)
    pointer = os.path.join(directory, POINTER)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no store at {directory}: the folder does not exist")
    if not os.path.exists(pointer):
        raise StateFormatError(f"{directory} is not an fwpkm store: it has no {POINTER} file (saved with store.save())")
    with open(pointer) as fh:
        name = fh.read().strip()
    if not name.startswith("snap-") or os.sep in name or not os.path.isdir(os.path.join(directory, name)):
        raise StateFormatError(f"{pointer} names a snapshot {name!r} that is not in {directory}")
    return os.path.join(directory, name)


def read_manifest(snapshot: str) -> dict:
    path = os.path.join(snapshot, "manifest.json")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise StateFormatError(f"{snapshot} has no manifest.json: the snapshot is incomplete") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFormatError(f"{path} is not valid JSON (corrupted): {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StateFormatError(f"{path} is not an fwpkm store manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise StateFormatError(f"{snapshot} was written in store format version {manifest.get('version')!r}; "
                               f"this library reads version {FORMAT_VERSION}")
    return manifest


def load_index(directory: str, model: MemoryLM, **overrides) -> MemoryIndex:
    """Rebuild a MemoryIndex from the current snapshot in `directory` over `model`; `overrides`: StoreSettings
    fields on top of the saved ones (e.g. the limits, which snapshots do not record)."""
    snapshot = current_snapshot(directory)
    manifest = read_manifest(snapshot)
    for fname, digest in manifest.get("files", {}).items():
        path = os.path.join(snapshot, fname)
        if not os.path.exists(path):
            raise StateFormatError(f"{path} is missing: the snapshot is incomplete")
        if _sha256_file(path) != digest:
            raise StateFormatError(f"{path} failed its checksum: the file was modified or corrupted")
    if manifest.get("model_fingerprint") != model_fingerprint(model):
        raise ModelMismatchError(
            f"the store in {directory} was built with another model (config or weights differ): load it with the "
            "model it was built with (FwPKMStore.load(dir, model=...)), or re-ingest the documents with this one"
        )
    if manifest.get("n_memories") != len(model.config.fwpkm_layers):
        raise ModelMismatchError(f"the store holds {manifest.get('n_memories')} memories, the model has "
                                 f"{len(model.config.fwpkm_layers)} FwPKM layers")
    settings = StoreSettings.from_dict(manifest["settings"], **overrides)
    docs = DocStore(os.path.join(snapshot, "store.sqlite"))
    index = MemoryIndex(model, settings, _docstore=docs)
    index.restore_state(model.load_cache(snapshot), source=f"{snapshot}/store.sqlite")
    return index
