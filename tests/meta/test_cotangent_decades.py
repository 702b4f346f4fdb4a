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


def test_comparison_with_subnormal_or_huge_references_warns_nothing():
    """A subnormal reference divides a relative error to inf; a huge one overflows a tolerance."""
    import warnings

    from oracles.compare import compare

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare(
            np.array([1.0, 1e308, 0.0]),
            np.array([5e-324, -1e308, 1e-310]),
            np.array([0.0, 1e308, 0.0]),
            rtol=10.0,
            kink=np.array([True, False, False]),
            left=np.array([5e-324, 0.0, 0.0]),
            right=np.array([1e-320, 0.0, 0.0]),
        )
    assert c.passed.tolist() == [False, True, True]
