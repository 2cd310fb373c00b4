"""StoreSettings: one place for the store's settings — defaults, validation, overrides, the manifest entry."""
from __future__ import annotations

import pytest

from fwpkm_rag.errors import ConfigError
from fwpkm_rag.pipelines import FwPKMStore, StoreSettings
from fwpkm_rag.pipelines.settings import DEFAULT_MAX_DOCUMENT_CHARS, DEFAULT_MAX_QUERY_TOKENS, SNAPSHOT_FIELDS


def test_defaults_and_none_means_the_default_query_limit():
    s = StoreSettings()
    assert (s.chunk_tokens, s.chunk_overlap, s.piece_tokens, s.per_slot, s.passes) == (256, 0, 2048, 32, 1)
    assert s.show_progress is False and s.max_document_chars == DEFAULT_MAX_DOCUMENT_CHARS == 10_000_000
    assert StoreSettings(max_query_tokens=None).max_query_tokens == DEFAULT_MAX_QUERY_TOKENS == 8192
    assert StoreSettings(max_document_chars=None).max_document_chars is None  # None: no limit


@pytest.mark.parametrize("name,value", [
    ("chunk_tokens", 0), ("chunk_tokens", 2.0), ("chunk_tokens", True), ("piece_tokens", -1), ("per_slot", 0),
    ("passes", 0), ("chunk_overlap", -1), ("max_query_tokens", 0), ("max_document_chars", 0),
    ("max_document_chars", "100"),
])
def test_bad_values_raise_config_errors_naming_the_setting(name, value):
    with pytest.raises(ConfigError, match=name):
        StoreSettings(**{name: value})


def test_overlap_must_be_smaller_than_the_chunk():
    with pytest.raises(ConfigError, match=r"chunk_overlap \(8\) must be smaller than chunk_tokens \(8\)"):
        StoreSettings(chunk_tokens=8, chunk_overlap=8)
    assert StoreSettings(chunk_tokens=8, chunk_overlap=7).chunk_overlap == 7


def test_replace_validates_and_leaves_the_original_alone():
    s = StoreSettings(chunk_tokens=64)
    t = s.replace(passes=2)
    assert (s.passes, t.passes, t.chunk_tokens) == (1, 2, 64)
    with pytest.raises(ConfigError):
        s.replace(chunk_tokens=0)
    with pytest.raises(TypeError):
        s.replace(no_such_setting=1)
    with pytest.raises(Exception):  # frozen
        s.chunk_tokens = 3


def test_manifest_entry_is_the_version_1_format_and_loads_back_with_overrides():
    s = StoreSettings(chunk_tokens=64, chunk_overlap=8, per_slot=16, max_document_chars=None, show_progress=True)
    saved = s.to_dict()
    assert list(saved) == list(SNAPSHOT_FIELDS) == ["chunk_tokens", "chunk_overlap", "piece_tokens", "per_slot", "passes"]
    back = StoreSettings.from_dict(saved)
    # limits not saved; a version-1 manifest describes a store without the word layer
    assert back == s.replace(max_document_chars=DEFAULT_MAX_DOCUMENT_CHARS, show_progress=False, word_layer=False)
    assert StoreSettings.from_dict(saved, max_query_tokens=100).max_query_tokens == 100
    with pytest.raises(ConfigError, match="unknown store settings"):
        StoreSettings.from_dict({**saved, "colour": "red"})


def test_store_keyword_arguments_build_the_settings(small_model):
    a = FwPKMStore(model=small_model, chunk_tokens=16, passes=2)
    b = FwPKMStore(model=small_model, settings=StoreSettings(chunk_tokens=16, passes=2))
    c = FwPKMStore(model=small_model, settings=StoreSettings(chunk_tokens=16), passes=2)  # kwargs on top
    assert a.settings == b.settings == c.settings == StoreSettings(chunk_tokens=16, passes=2)
    store = FwPKMStore.from_texts(["one two three four five six seven"], model=small_model, chunk_tokens=4,
                                  ids=["d"], passes=1)
    assert store.settings.chunk_tokens == 4 and store.index.segments[0].index.next_chunk == 2  # 7 tokens / 4 per chunk
    for s in (a, b, c, store):
        s.close()
