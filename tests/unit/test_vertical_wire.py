"""Embeddings and gradients on the vertical wire (federated/vertical.py `to_half`/`from_half`):
float16 with a power-of-two scale per column. For every finite matrix each value comes back within
2^-11 of its column's largest magnitude (gradient columns spanning 1e-9..1e3 included, which plain
float16 flushes to zero), zeros stay zeros, and malformed input is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated.vertical import from_half, to_half

FINITE = st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40), elements=FINITE))
def test_every_value_within_a_half_ulp_of_its_columns_peak(x: np.ndarray) -> None:
    wire = to_half(x)
    assert wire.dtype == np.float16 and wire.shape == (x.shape[0] + 1, x.shape[1])
    back = from_half(wire)
    peak = np.abs(x).max(axis=0) if len(x) else np.zeros(x.shape[1])
    assert np.all(np.abs(back - x) <= peak * 2.0**-11 + 1e-300)
    assert np.all(back[x == 0] == 0)


def test_tiny_gradients_survive_where_plain_float16_loses_them() -> None:
    g = np.array([[1e-9, 3.0], [-2.5e-9, -1e3]])
    assert np.all(g[:, 0].astype(np.float16) == 0)  # what plain float16 would send
    assert from_half(to_half(g)) == pytest.approx(g, rel=1e-3)
    assert to_half(g).nbytes * 4 == (g.shape[0] + 1) * g.shape[1] * 8  # a quarter of float64 (+ 1 row)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([[np.nan, 1.0]]), "finite"),
        (np.array([[np.inf]]), "finite"),
        (np.ones(3), "2-d"),
    ],
)
def test_non_finite_or_misshapen_matrices_are_refused(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_half(bad)


def test_a_malformed_wire_matrix_is_refused() -> None:
    with pytest.raises(ValueError, match="half-precision matrix"):
        from_half(np.ones((2, 2), dtype=np.float32))
    forged = to_half(np.ones((2, 2)))
    forged[0, 0] = np.float16(0.5)  # a fractional exponent
    with pytest.raises(ValueError, match="exponent row"):
        from_half(forged)
