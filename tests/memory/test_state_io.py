"""MemoryState persistence: bit-exact round trip, clear errors for truncated, corrupted, foreign and
future-version files."""
import json
import struct

import pytest
import torch

from fwpkm_rag.errors import StateError, StateFormatError
from fwpkm_rag.memory import MemoryState

from helpers import tiny_layer


def _used_state(layer, batch=2, mode="isolated"):
    with torch.no_grad():
        return layer(torch.randn(batch, 13, layer.d_model), layer.init_state(batch, mode=mode)).state


def _rewrite_metadata(path, **changes):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.mark.parametrize("mode", ["isolated", "shared"])
def test_save_load_round_trips_bit_exactly_and_continues_identically(tmp_path, mode):
    layer = tiny_layer(q_conv=3)
    state = _used_state(layer, mode=mode)
    assert state.pending > 0  # a queued partial chunk must survive too
    path = tmp_path / "mem.safetensors"
    state.save(path)
    loaded = layer.load_state(path)
    assert (loaded.mode, loaded.position, loaded.updates, loaded.batch_size) == (
        state.mode, state.position, state.updates, state.batch_size)
    for name, a in state._tensors().items():
        b = loaded._tensors()[name]
        assert a.dtype == b.dtype and torch.equal(a, b), name
    h = torch.randn(2, 9, layer.d_model)
    with torch.no_grad():
        a, b = layer(h, state), layer(h, loaded)
    assert torch.equal(a.output, b.output)
    assert all(torch.equal(x, y) for x, y in zip(a.state._tensors().values(), b.state._tensors().values()))


def test_truncated_file_gives_a_clear_error(tmp_path):
    layer = tiny_layer()
    path = tmp_path / "mem.safetensors"
    _used_state(layer).save(path)
    data = path.read_bytes()
    for cut in (3, 40, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(StateFormatError, match="truncated or corrupt|checksum"):
            layer.load_state(path)


def test_flipped_byte_fails_the_checksum(tmp_path):
    layer = tiny_layer()
    path = tmp_path / "mem.safetensors"
    _used_state(layer).save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(StateFormatError, match="checksum"):
        layer.load_state(path)


def test_other_version_and_other_format_are_refused(tmp_path):
    layer = tiny_layer()
    path = tmp_path / "mem.safetensors"
    _used_state(layer).save(path)
    _rewrite_metadata(path, version="2")
    with pytest.raises(StateFormatError, match="version '2'"):
        layer.load_state(path)
    _rewrite_metadata(path, version="1", format="something-else")
    with pytest.raises(StateFormatError, match="not an fwpkm memory state"):
        layer.load_state(path)


def test_state_of_another_layer_is_refused(tmp_path):
    path = tmp_path / "mem.safetensors"
    _used_state(tiny_layer()).save(path)
    with pytest.raises(StateError, match="configuration"):
        tiny_layer(seed=5).load_state(path)
    other = tiny_layer()
    other.values_init[0, 0] += 1.0  # same config, other initial table
    with pytest.raises(StateError, match="initial fast weights"):
        other.load_state(path)
    with pytest.raises(StateError, match="configuration"):
        tiny_layer(topk=2).load_state(path)
    with pytest.raises(FileNotFoundError):
        tiny_layer().load_state(tmp_path / "missing.safetensors")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    layer = tiny_layer()
    path = tmp_path / "mem.safetensors"
    first = _used_state(layer)
    first.save(path)
    _used_state(layer, batch=3).save(path)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["mem.safetensors"]
    assert layer.load_state(path).batch_size == 3


def test_detach_clone_to_and_nbytes():
    layer = tiny_layer()
    h = torch.randn(2, 12, layer.d_model, requires_grad=True)
    state = layer(h).state
    assert state.keys.requires_grad
    detached = state.detach()
    assert not detached.keys.requires_grad and not detached.values.rows.requires_grad
    clone = detached.clone()
    clone.keys.add_(1.0)
    assert not torch.equal(clone.keys, detached.keys)
    moved = detached.to("cpu")
    assert moved.device == torch.device("cpu") and isinstance(moved, MemoryState)
    assert detached.nbytes() > 0
