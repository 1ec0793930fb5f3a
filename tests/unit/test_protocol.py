"""The wire format shared by agent and host: JSON codec and frame headers."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandlot.agent import protocol as p

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_dumps_is_json_and_loads_round_trips(value):
    encoded = p.dumps(value)
    assert json.loads(encoded) == value
    assert p.loads(encoded) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip(value):
    assert p.loads(p.dumps(value)) == value


@pytest.mark.parametrize("bad", [b"{", b"NaN", b"1 2", b"", b"\xff", b"[1,]", b"Infinity"])
def test_loads_refuses_anything_but_one_json_value(bad):
    with pytest.raises(ValueError):
        p.loads(bad)


def test_dumps_refuses_non_finite_and_unknown_types():
    with pytest.raises(ValueError):
        p.dumps(float("nan"))
    with pytest.raises(TypeError):
        p.dumps({"x": object()})


def test_header_layout():
    payload = b"abc"
    header = p.pack(p.DATA, 7, payload, p.STDERR)
    assert len(header) == p.HEADER_SIZE == 10
    assert p.HEADER.unpack(header) == (3, p.DATA, p.STDERR, 7)


def test_window_fits_many_frames():
    assert p.WINDOW >= 2 * p.MAX_DATA
