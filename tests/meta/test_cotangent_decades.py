"""Cotangents whose elements span hundreds of decades (1 next to 3e-294 in one array),
most of them tiny, so that the median gradient is tiny.

Every element is judged in its own units: a correct VJP passes (not
inconclusive because the large elements' absolute thresholds were lent to
the tiny ones), and an element off by a relative 1e-7 fails wherever it
sits, among the tiny or the large ones.
"""

import numpy as np
import pytest

from oracles import check_vjp


def _fn(x):
    return np.tanh(x) * x


def _vjp(g, x):
    t = np.tanh(x)
    return g * (t + x * (1.0 - t**2))


@pytest.mark.parametrize("tiny", [3e-294, 1e-150])
@pytest.mark.parametrize(("n", "share"), [(5, 0.55), (12, 0.7), (40, 0.85)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cotangent_spanning_hundreds_of_decades(tiny, n, share, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    small = rng.random(n) < share
    small[:2] = [True, False]  # both kinds, whatever the draw
    d = rng.normal(size=n) * np.where(small, tiny, 1.0)
    r = check_vjp(_fn, _vjp, (x,), direction=d)
    assert r.status == "passed", str(r)
    for j in (int(np.flatnonzero(small)[0]), int(np.flatnonzero(~small)[0])):

        def wrong(g, x, j=j):
            out = _vjp(g, x)
            out[j] *= 1.0 + 1e-7
            return out

        assert check_vjp(_fn, wrong, (x,), direction=d).status == "failed"
