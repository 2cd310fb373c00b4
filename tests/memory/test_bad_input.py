"""Bad input gets a clear error and leaves the memory as it was; non-finite updates are refused."""
import pytest
import torch

from fwpkm_rag.errors import ConfigError, InputError, StateError
from fwpkm_rag.memory import FwPKMConfig, fwpkm_forward, stream_memory

from helpers import fast_inputs, state_tensors, tiny_layer


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: torch.randn(2, 5), "shape"),
        (lambda d: torch.randn(2, 5, d + 1), "shape"),
        (lambda d: torch.ones(2, 5, d, dtype=torch.long), "floating-point"),
        (lambda d: torch.full((2, 5, d), float("nan")), "NaN or Inf"),
        (lambda d: torch.randn(2, 5, d).index_fill_(1, torch.tensor([3]), float("inf")), "NaN or Inf"),
        (lambda d: [[0.0] * d], "torch.Tensor"),
    ],
)
def test_bad_hidden_states_raise_input_error_and_keep_the_state(make, match):
    layer = tiny_layer()
    with torch.no_grad():
        state = layer(torch.randn(2, 7, layer.d_model)).state
    before = [t.clone() for t in state_tensors(state)]
    with pytest.raises(InputError, match=match):
        layer(make(layer.d_model), state)
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(state), before))


def test_bad_mask_and_mismatched_state():
    layer = tiny_layer()
    h = torch.randn(2, 5, layer.d_model)
    with pytest.raises(InputError, match="mask"):
        layer(h, mask=torch.ones(2, 5))
    with pytest.raises(InputError, match="mask"):
        layer(h, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(StateError, match="holds 3 sequence"):
        layer(h, layer.init_state(3))
    with pytest.raises(StateError, match="configuration"):
        layer(h, tiny_layer(topk=2).init_state(2))
    with pytest.raises(InputError, match="MemoryState"):
        layer(h, state="not a state")
    with pytest.raises(StateError, match="mode"):
        layer.init_state(2, mode="global")


def test_functional_core_rejects_inconsistent_shapes_and_non_finite_values():
    q, v, g, keys, values = fast_inputs(2, 6, 1, 6, 5, 4, requires_grad=False)
    kw = dict(chunk_size=3, topk=2)
    with pytest.raises(InputError, match="values must be"):
        fwpkm_forward(q, v, g, keys, values[:-1], **kw)
    with pytest.raises(InputError, match="keys must be"):
        fwpkm_forward(q, v, g, keys[:, :2], values, **kw)
    with pytest.raises(InputError, match="v must be"):
        fwpkm_forward(q, v[:, :5], g, keys, values, **kw)
    with pytest.raises(InputError, match="even k_dim"):
        fwpkm_forward(q[..., :5], v, g, keys, values, **kw)
    bad = values.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InputError, match="values contains NaN"):
        fwpkm_forward(q, v, g, keys, bad, **kw)
    with pytest.raises(ConfigError, match="topk"):
        fwpkm_forward(q, v, g, keys, values, chunk_size=3, topk=9)


@pytest.mark.parametrize(
    "field, value",
    [("n_subkeys", 0), ("k_dim", 7), ("topk", 100), ("lookahead", 5), ("lookahead", -1), ("lr", 0.0),
     ("lr", float("nan")), ("score", "cosine"), ("mode", "global"), ("inner_grad", "numeric"), ("heads", 1.5),
     ("addr_weight", -1.0), ("max_slot_norm", 0.0), ("q_conv", -2), ("chunk_size", True)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        FwPKMConfig(n_subkeys=8, k_dim=8, v_dim=8, topk=4, chunk_size=5).replace(**{field: value})


def test_config_round_trips_through_json():
    cfg = FwPKMConfig(n_subkeys=8, k_dim=8, v_dim=8, topk=4, chunk_size=5, max_slot_norm=3.0)
    assert FwPKMConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        FwPKMConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def _overflowing_stream(layer, state, scale):
    """Drive the memory directly with finite inputs whose update overflows float32."""
    cfg = layer.config
    C = cfg.chunk_size
    q = torch.randn(state.batch_size, C, cfg.heads * cfg.k_dim)
    v = torch.randn(state.batch_size, C, cfg.v_dim) * scale
    g = torch.ones(state.batch_size, C)
    return stream_memory(q, v, g, None, state)


def test_update_that_would_make_the_memory_non_finite_is_refused():
    layer = tiny_layer(lr=1e4)
    with torch.no_grad():
        state = layer(torch.randn(2, 7, layer.d_model)).state
        state = layer.flush(state).state
        before = [t.clone() for t in state_tensors(state)]
        scale = torch.ones(2, 1, 1)
        scale[1] = 3e37  # only the second session's update overflows
        res = _overflowing_stream(layer, state, scale)
    assert res.refused == 1 and res.state.refused.tolist() == [0, 1]
    after = state_tensors(res.state)
    assert torch.equal(after[0][1], before[0][1])  # session 1 keys unchanged
    assert torch.equal(after[2], before[2])  # session 1 values unchanged
    assert not torch.equal(after[1], before[1])  # session 0 was written normally
    assert all(torch.isfinite(t).all() for t in after)


def test_max_slot_norm_bounds_every_written_row():
    layer = tiny_layer(max_slot_norm=3.0)
    with torch.no_grad():
        res = _overflowing_stream(layer, layer.init_state(2), torch.full((2, 1, 1), 50.0))
    assert res.refused == 2
    with torch.no_grad():
        res = _overflowing_stream(layer, layer.init_state(2), torch.full((2, 1, 1), 0.1))
    assert res.refused == 0
    rows = res.state.values.rows
    assert rows.shape[0] > 0 and rows.norm(dim=-1).max() <= 3.0


def test_config_int_fields_refuse_bools_and_store_numpy_ints_as_int():
    np = pytest.importorskip("numpy")
    cfg = FwPKMConfig(n_subkeys=np.int64(8), k_dim=8, v_dim=8, topk=np.int32(4), chunk_size=5, seed=np.int64(3))
    assert type(cfg.n_subkeys) is int and type(cfg.topk) is int and type(cfg.seed) is int
    assert FwPKMConfig.from_json(cfg.to_json()) == cfg  # json would refuse a numpy int
    with pytest.raises(ConfigError, match="FwPKMConfig.seed must be an int"):
        cfg.replace(seed=False)
    with pytest.raises(InputError, match="heads must be an int >= 1"):
        fwpkm_forward(*fast_inputs(1, 4, 1, 6, 5, 4, requires_grad=False), chunk_size=3, topk=2, heads=0)
