"""The screen's sparse path for large outputs is its dense path, bitwise.

For outputs of more than ``SPARSE_OUTPUTS`` floats (lowered here) the screen compares each
output with ``f(x)`` at once and keeps only the outputs that changed
(:func:`oracles.numerics.exhaustive._sparse_rows`) instead of whole rows.
Here every screen runs both ways (the sparse one with ``SPARSE_OUTPUTS`` 64, the
dense one with it above the output's size) on outputs that are transposed in memory,
whose two sides move different outputs (a ReLU at its kink), that leave the
domain on one side (``log``), that are views of the input, that move every
output (a softmax: the screen goes back to rows after one block), and that
are not finite at ``x``: the values, noises and non-finite flags must be the
same to the last bit, at several block sizes and both ways of calling.
"""

import numpy as np
import pytest

from oracles.numerics import exhaustive
from oracles.numerics.objective import ScalarObjective


def _conv(x, W):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i : i + oh, j : j + ow]
    cols = cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)
    return (cols @ W.reshape(f, -1).T).reshape(n, oh, ow, f).transpose(0, 3, 1, 2)


def _relu_grid(x, c):
    return np.maximum(x[:, None] + c[None, :], 0.0)


def _log_grid(x, c):
    return np.log(x[:, None] * c[None, :])


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _cases(rng):
    x = rng.standard_normal((1, 2, 12, 12))
    W = rng.standard_normal((6, 2, 3, 3)) / 4
    c = rng.standard_normal(70)
    x_kink = rng.standard_normal(80)
    x_kink[::4] = -c[: x_kink[::4].size]  # x + c exactly 0 at f(x): one side stays 0
    tiny = rng.uniform(0.5, 2.0, 80)
    tiny[::5] = 1e-9  # x - h leaves log's domain
    big = rng.standard_normal(300) * 3
    inf_at_x = rng.uniform(0.5, 2.0, 80)
    inf_at_x[3] = 0.0  # log(0 * c) = -inf at f(x): not sparse, still judged the same
    return [
        ("conv (transposed output)", _conv, (x, W)),
        ("relu at its kink", _relu_grid, (x_kink, c)),
        ("log leaving its domain", _log_grid, (tiny, np.abs(c) + 0.1)),
        ("identity (a view of x)", lambda v: v.reshape(6, 70), (rng.standard_normal(420),)),
        ("softmax: every output moves", _softmax, (big,)),
        ("-inf at x", _log_grid, (inf_at_x, np.abs(c) + 0.1)),
    ]


def _screens(fn, xs, how, rows):
    objective = ScalarObjective(fn, xs, np.random.default_rng(2).standard_normal(fn(*xs).shape))
    out = []
    for i, xi in enumerate(xs):
        idx = np.arange(xi.size)
        for r in (2.0**-14, 3e-5):
            out.append(exhaustive._screen(objective, i, idx, r, how))
    return out


@pytest.mark.parametrize("how", ["direct", "copies"])
@pytest.mark.parametrize("rows", [None, 5])
def test_sparse_screen_is_the_dense_screen_bitwise(how, rows, monkeypatch):
    rng = np.random.default_rng(17)
    if rows is not None:  # blocks of a few elements: the softmax goes back to rows after one
        monkeypatch.setattr(exhaustive, "BLOCK_FLOATS", rows * 64)
    for name, fn, xs in _cases(rng):
        with np.errstate(all="ignore"):
            m = np.size(fn(*xs))
            with monkeypatch.context() as mp:
                mp.setattr(exhaustive, "SPARSE_OUTPUTS", 64)  # small cases, the sparse path
                sparse = _screens(fn, xs, how, rows)
            with monkeypatch.context() as mp:
                mp.setattr(exhaustive, "SPARSE_OUTPUTS", 10 * m)
                dense = _screens(fn, xs, how, rows)
        for got, want in zip(sparse, dense, strict=True):
            for g, w in zip(got, want, strict=True):
                assert g.tobytes() == w.tobytes(), name
