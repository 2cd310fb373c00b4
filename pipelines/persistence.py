"""Saving and loading a store: one folder per segment, a catalog and a manifest, swapped atomically; no pickle.

Layout of a store folder (store format version 2, docs/segments.md):

    DIR/CURRENT                        the name of the current manifest (replaced atomically with os.replace)
    DIR/manifest-<stamp>.json          format name + version 2, model fingerprint, settings
                                       (StoreSettings.store_dict), the segments in order (id, sealed, folder,
                                       tombstones: doc ids deleted from a sealed segment after its folder was
                                       written), next segment id, the catalog file and its sha256
    DIR/catalog-<stamp>.json           [[doc id, [segment ids of its parts, in order]], ...] in document order
    DIR/seg-<id>-<uid>[-<stamp>]/      one segment: a version-1 snapshot folder, as single-memory stores wrote:
        manifest.json                  format name + version 1, model fingerprint, settings, sha256 of every file
        store.sqlite                   the segment's parts, chunks, counters, provenance table and token counts
                                       (and, with word_layer=True, the word layer: arrays words.chunk /
                                       .strength / .writes / .alive and meta "words": its config, counters and
                                       the chunk ids it covers)
        memory-<i>.safetensors         the memory state of FwPKM layer i (`cache.save` / `model.load_cache`)
        kv.safetensors                 the sliding-window KV of every layer and the stream position

A sealed segment never changes (but for tombstones, kept in the manifest), so its folder `seg-<id>-<uid>` is
written once and every later save into the same DIR reuses it: saving a large store writes the open segment,
the catalog and the manifest. The open segment is written anew (`seg-<id>-<uid>-<stamp>`) by every save.

A save writes each new folder under a temporary name, fsyncs it and renames it, writes the catalog and the
manifest the same way, then points CURRENT at the manifest (temp file + fsync + os.replace) and only then
removes what no current manifest names (older manifests, catalogs and open-segment folders, compacted
segments, leftovers of interrupted saves, a version-1 snapshot). A crash (kill -9) at any moment leaves
CURRENT naming a complete manifest whose files are all there: the previous one or the new one.

`load` checks the formats, every file's sha256 (StateFormatError when a file is missing, truncated or
modified) and that the model is the one the store was built with (ModelMismatchError otherwise). A version-1
store (CURRENT naming one `snap-*` folder: one memory, no segments) loads as a one-segment store; its next
save writes version 2.

The word layer (docs/addressing.md, "In the store"). A store saved with `word_layer=True` records `word_layer`
and `word_weight` in its manifest's settings (a store without it writes exactly the manifest of earlier
versions; a library older than the word layer refuses a store with it: "unknown store settings"). The settings
of the store's manifest (with the caller's overrides) decide: off, a segment's saved layer is ignored; on, each
segment's layer is read back as saved, or, where a segment has none (a store saved without it: every store of
earlier versions) or a stale one (saved by a later save without the layer), rebuilt from the segment's stored
chunks with a warning (~100K tokens/s, no model); a sealed segment rebuilt so gets a new folder name, so the
next save writes it with its layer.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time

from fwpkm_rag.errors import ModelMismatchError, StateFormatError
from fwpkm_rag.fingerprint import sha256_file
from fwpkm_rag.modeling.protocol import MemoryLM
from fwpkm_rag.pipelines.docstore import DocStore
from fwpkm_rag.pipelines.index import MemoryIndex
from fwpkm_rag.pipelines.retrieval import SCORED_LAYERS
from fwpkm_rag.pipelines.segments import Segment, SegmentedIndex, new_uid
from fwpkm_rag.pipelines.settings import StoreSettings

FORMAT_NAME = "fwpkm-store"
FORMAT_VERSION = 1
"""The format version of a snapshot folder (one memory): every segment folder, and whole version-1 stores."""
STORE_FORMAT_VERSION = 2
"""The format version of a segmented store's manifest."""
POINTER = "CURRENT"
_OURS = ("seg-", "snap-", "manifest-", "catalog-", ".tmp-", f".{POINTER}.")  # what a save may clean up

def model_fingerprint(model: MemoryLM) -> str:
    """sha256 of the model's config (JSON) and every parameter and persistent buffer (names, shapes, bytes)."""
    from fwpkm_rag.fingerprint import weights_fingerprint

    return weights_fingerprint(model, model.config.to_dict(), model.state_dict())


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
    """Write one MemoryIndex as a version-1 store (one snapshot folder, no segments) into `directory` and make it
    current; returns the snapshot path. The format stores saved before segments; `FwPKMStore.save` writes
    version 2 (`save_store`). Kept to make and test version-1 stores."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    name = f"snap-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    tmp = os.path.join(directory, f".tmp-{name}")
    os.makedirs(tmp)
    try:
        write_snapshot(index, tmp, model_fingerprint(index.model))
        final = os.path.join(directory, name)
        os.rename(tmp, final)
        _fsync_dir(directory)
        point_current(directory, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Older snapshots and leftovers of interrupted saves are garbage now.
    for entry in os.listdir(directory):
        if entry != name and (entry.startswith("snap-") or entry.startswith(".tmp-snap-") or entry.startswith(f".{POINTER}.")):
            path = os.path.join(directory, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
    return final


def write_snapshot(index: MemoryIndex, folder: str, fingerprint: str) -> None:
    """The snapshot's files in `folder` (consistent: taken under the writer lock), its manifest, all fsynced.
    `fingerprint`: the model's (`model_fingerprint`, computed once per save)."""
    with index.lock:
        index.save_state()
        index.docs.backup_to(os.path.join(folder, "store.sqlite"))
        index.save_memory(folder)  # memory-<i>.safetensors per FwPKM layer and kv.safetensors
        files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model_fingerprint": fingerprint,
            "settings": index.settings.to_dict(),
            "n_memories": index.n_memories,
            "files": {f: sha256_file(os.path.join(folder, f)) for f in files},
        }
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    for f in os.listdir(folder):
        _fsync_file(os.path.join(folder, f))
    _fsync_dir(folder)


def point_current(directory: str, name: str) -> None:
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
    """The snapshot folder CURRENT names in a version-1 store (one memory, no segments)."""
    directory = os.fspath(directory)
    name = current_name(directory)
    if not name.startswith("snap-") or not os.path.isdir(os.path.join(directory, name)):
        raise StateFormatError(f"{os.path.join(directory, POINTER)} names {name!r}, not a snapshot folder of {directory}")
    return os.path.join(directory, name)


def current_name(directory: str) -> str:
    """What CURRENT names: a manifest (`manifest-*.json`, version 2) or a snapshot folder (`snap-*`, version 1)."""
    directory = os.fspath(directory)
    pointer = os.path.join(directory, POINTER)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no store at {directory}: the folder does not exist")
    if not os.path.exists(pointer):
        raise StateFormatError(f"{directory} is not an fwpkm store: it has no {POINTER} file (saved with store.save())")
    with open(pointer) as fh:
        name = fh.read().strip()
    if not name.startswith(("snap-", "manifest-")) or os.sep in name or not os.path.exists(os.path.join(directory, name)):
        raise StateFormatError(f"{pointer} names a manifest or snapshot {name!r} that is not in {directory}")
    return name


def read_manifest(snapshot: str) -> dict:
    """The manifest of a segment's snapshot folder (format version 1)."""
    path = os.path.join(snapshot, "manifest.json")
    if not os.path.exists(path):
        raise StateFormatError(f"{snapshot} has no manifest.json: the snapshot is incomplete")
    return _checked_manifest(path, FORMAT_VERSION, f"this library reads version {FORMAT_VERSION}")


def _checked_manifest(path: str, version: int, reads: str) -> dict:
    """A manifest file's JSON, checked to be this library's format at `version` (StateFormatError otherwise)."""
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFormatError(f"{path} is not valid JSON (corrupted): {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StateFormatError(f"{path} is not an fwpkm store manifest")
    if manifest.get("version") != version:
        raise StateFormatError(f"{path} was written in store format version {manifest.get('version')!r}; {reads}")
    return manifest


def load_snapshot(snapshot: str, model: MemoryLM, settings: StoreSettings, fingerprint: str) -> MemoryIndex:
    """A MemoryIndex from one snapshot folder (a segment, or a version-1 store's snapshot) over `model`, whose
    fingerprint is `fingerprint`; files, checksums and the model checked."""
    manifest = read_manifest(snapshot)
    for fname, digest in manifest.get("files", {}).items():
        path = os.path.join(snapshot, fname)
        if not os.path.exists(path):
            raise StateFormatError(f"{path} is missing: the snapshot is incomplete")
        if sha256_file(path) != digest:
            raise StateFormatError(f"{path} failed its checksum: the file was modified or corrupted")
    if manifest.get("model_fingerprint") != fingerprint:
        raise ModelMismatchError(
            f"the store in {os.path.dirname(snapshot)} was built with another model (config or weights differ): "
            "load it with the model it was built with (FwPKMStore.load(dir, model=...)), or re-ingest the "
            "documents with this one"
        )
    if manifest.get("n_memories") != len(model.config.fwpkm_layers):
        raise ModelMismatchError(f"the store holds {manifest.get('n_memories')} memories, the model has "
                                 f"{len(model.config.fwpkm_layers)} FwPKM layers")
    saved = StoreSettings.from_dict(manifest["settings"])
    docs = DocStore(os.path.join(snapshot, "store.sqlite"))
    index = MemoryIndex(model, settings.replace(**saved.to_dict()), _docstore=docs)
    index.restore_state(model.load_cache(snapshot), source=f"{snapshot}/store.sqlite")
    return index


def load_index(directory: str, model: MemoryLM, **overrides) -> MemoryIndex:
    """Rebuild a MemoryIndex from the current snapshot of a version-1 store in `directory` over `model`;
    `overrides`: StoreSettings fields on top of the saved ones (e.g. the limits, which snapshots do not record)."""
    snapshot = current_snapshot(directory)
    settings = StoreSettings.from_dict(read_manifest(snapshot)["settings"], **overrides)
    return load_snapshot(snapshot, model, settings, model_fingerprint(model))


# ---- segmented stores (version 2) ---------------------------------------------------------------------------------
def _write_json(directory: str, name: str, value) -> str:
    """`value` as JSON in DIR/name, atomically (temp file, fsync, rename); returns its sha256."""
    tmp = os.path.join(directory, f".tmp-{name}")
    with open(tmp, "w") as fh:
        json.dump(value, fh, ensure_ascii=False, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, os.path.join(directory, name))
    return sha256_file(os.path.join(directory, name))


def write_segment_folder(index: MemoryIndex, directory: str, name: str, fingerprint: str) -> None:
    """A segment's snapshot folder DIR/name, written under a temp name and renamed when complete."""
    tmp = os.path.join(directory, f".tmp-{name}")
    os.makedirs(tmp)
    try:
        write_snapshot(index, tmp, fingerprint)
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def segment_folder(segment: Segment, stamp: str) -> str:
    """A segment's folder name: fixed once sealed (written once, then reused), new for each save while open."""
    base = f"seg-{segment.id:06d}-{segment.uid}"
    return base if segment.sealed else f"{base}-{stamp}"


def save_store(store: SegmentedIndex, directory: str) -> str:
    """Write `store` into `directory` (new and changed segment folders, the catalog, a manifest) and make the
    manifest current; returns its path. Sealed segments already in `directory` are not written again."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    fingerprint = model_fingerprint(store.model)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    manifest_name, catalog_name = f"manifest-{stamp}.json", f"catalog-{stamp}.json"
    written: list = []  # what this save created: removed again if it fails before CURRENT points at it
    swapped = False
    with store.lock:
        try:
            entries = []
            for segment in store.segments:
                name = segment_folder(segment, stamp)
                if not os.path.isdir(os.path.join(directory, name)):  # a sealed one may be there already
                    write_segment_folder(segment.index, directory, name, fingerprint)
                    written.append(name)
                entries.append({"id": segment.id, "sealed": segment.sealed, "folder": name,
                                "tombstones": list(segment.tombstones)})
            written += [catalog_name, manifest_name]
            write_manifest(directory, stamp, entries, [[d, list(p)] for d, p in store.catalog.items()],
                           settings=store.settings, fingerprint=fingerprint,
                           n_memories=len(store.model.config.fwpkm_layers), next_segment=store.next_segment)
            point_current(directory, manifest_name)
            swapped = True
        except BaseException:
            if not swapped:
                for name in written:
                    path = os.path.join(directory, name)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
            raise
    remove_unnamed(directory, entries, stamp)
    return os.path.join(directory, manifest_name)


def write_manifest(directory: str, stamp: str, entries: list, catalog_rows: list, *, settings: StoreSettings,
                   fingerprint: str, n_memories: int, next_segment: int) -> str:
    """Phase one of a save's commit, once every segment folder `entries` names is on disk: the catalog
    (`catalog_rows`: [doc id, [segment ids]] in document order) and the manifest, each written atomically and
    fsynced. Returns the manifest's name; `point_current` makes it the store's state."""
    catalog_name, manifest_name = f"catalog-{stamp}.json", f"manifest-{stamp}.json"
    catalog_sha = _write_json(directory, catalog_name, catalog_rows)
    manifest = {
        "format": FORMAT_NAME,
        "version": STORE_FORMAT_VERSION,
        "model_fingerprint": fingerprint,
        "settings": settings.store_dict(),
        "n_memories": n_memories,
        "next_segment": next_segment,
        "segments": entries,
        "catalog": {"file": catalog_name, "sha256": catalog_sha},
    }
    _write_json(directory, manifest_name, manifest)
    _fsync_dir(directory)
    return manifest_name


def remove_unnamed(directory: str, entries: list, stamp: str) -> None:
    """After CURRENT points at the manifest of save `stamp`: remove every save file or folder it does not name
    (older manifests and catalogs, replaced segment folders, leftovers of interrupted saves)."""
    keep = {e["folder"] for e in entries} | {f"manifest-{stamp}.json", f"catalog-{stamp}.json", POINTER}
    for entry in os.listdir(directory):
        if entry not in keep and entry.startswith(_OURS):
            path = os.path.join(directory, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)


def read_store_manifest(directory: str, name: str) -> dict:
    """The manifest of a segmented store (format version 2)."""
    return _checked_manifest(os.path.join(directory, name), STORE_FORMAT_VERSION,
                             f"this library reads versions {FORMAT_VERSION} and {STORE_FORMAT_VERSION}")


def load_store(directory: str, model: MemoryLM, **overrides) -> SegmentedIndex:
    """The store saved in `directory` over `model` (a version-2 store, or a version-1 store as one segment);
    `overrides`: StoreSettings fields on top of the saved ones (e.g. the limits, which are not saved)."""
    directory = os.fspath(directory)
    name = current_name(directory)
    if name.startswith("snap-"):  # version 1: one memory, no segments -> a one-segment store
        index = load_index(directory, model, **overrides)
        return SegmentedIndex(model, index.settings, _segments=[Segment(0, index)],
                              _catalog={doc_id: (0,) for doc_id in index.docs.doc_ids()}, _next_segment=1)
    manifest = read_store_manifest(directory, name)
    fingerprint = model_fingerprint(model)
    if manifest.get("model_fingerprint") != fingerprint:
        raise ModelMismatchError(
            f"the store in {directory} was built with another model (config or weights differ): load it with the "
            "model it was built with (FwPKMStore.load(dir, model=...)), or re-ingest the documents with this one"
        )
    try:
        settings = StoreSettings.from_dict(manifest["settings"], **overrides)
        entries, catalog_ref, next_segment = manifest["segments"], manifest["catalog"], manifest["next_segment"]
        catalog_path = os.path.join(directory, catalog_ref["file"])
    except (KeyError, TypeError) as exc:
        raise StateFormatError(f"{directory}/{name} lacks an entry: {exc}") from None
    if not os.path.exists(catalog_path):
        raise StateFormatError(f"{catalog_path} is missing: the store is incomplete")
    if sha256_file(catalog_path) != catalog_ref.get("sha256"):
        raise StateFormatError(f"{catalog_path} failed its checksum: the file was modified or corrupted")
    with open(catalog_path) as fh:
        catalog = {doc_id: tuple(parts) for doc_id, parts in json.load(fh)}
    segments = load_segments(directory, entries, model, settings, fingerprint)
    return SegmentedIndex(model, settings, _segments=segments, _catalog=catalog, _next_segment=next_segment)


def load_segments(directory: str, entries: list, model, settings: StoreSettings, fingerprint: str) -> list:
    """The segments a manifest's `entries` name, loaded from their folders (tombstones applied); on any
    failure the ones already opened are closed and the error propagates (StateFormatError for a missing one)."""
    segments = []
    try:
        for entry in entries:
            folder = os.path.join(directory, entry["folder"])
            if os.sep in entry["folder"] or not os.path.isdir(folder):
                raise StateFormatError(f"{folder} is missing: the store is incomplete")
            index = load_snapshot(folder, model, settings, fingerprint)
            segments.append(Segment(entry["id"], index))  # closed below on failure
            if entry["tombstones"]:
                index.delete(entry["tombstones"])
            uid = entry["folder"].split("-")[2]
            # its folder lacks a rebuilt layer (words, semantic): the next save writes it anew
            if (index.words_rebuilt or index.semantic_rebuilt) and entry["sealed"]:
                uid = new_uid()
            segments[-1] = Segment(entry["id"], index, bool(entry["sealed"]), uid, tuple(entry["tombstones"]))
            if entry["sealed"]:  # compacted as it loads, so a large store never holds every segment whole
                try:
                    index.seal(SCORED_LAYERS, saved_folder=folder)  # its memory files linked, not rewritten
                except OSError:  # no room for the spill: stays whole; SegmentedIndex retries and warns
                    pass
    except BaseException:
        for segment in segments:
            segment.index.docs.close()
        raise
    return segments


def segment_folders(directory: str) -> dict:
    """{segment id: its folder} of the store saved in `directory` (a version-1 store: {0: its snapshot})."""
    directory = os.fspath(directory)
    name = current_name(directory)
    if name.startswith("snap-"):
        return {0: os.path.join(directory, name)}
    manifest = read_store_manifest(directory, name)
    return {e["id"]: os.path.join(directory, e["folder"]) for e in manifest.get("segments", [])}
