"""A failed tie group blames the windows that are wrong, and counts stay consistent.

Equal values spread over many independent windows (integer pixels under a
max-pool, pairs under a row maximum) form one tie group per value. Moved
together, every window whose maximum is tied moves along with them, so
``phi`` is smooth along the group's direction and a backward that routes the
gradient to every tied maximum (or to none) fails the joint test. The report
must then name the windows with tied maxima, not every element holding the
value (a zero that is no window's maximum has a gradient of its own, and it
is right), and never count more failures than elements checked.
"""

import numpy as np
import pytest

from oracles import check_vjp


def row_max(x):
    return x.max(axis=1)


def pool(x):
    n, m = x.shape
    return x.reshape(n // 2, 2, m // 2, 2).max(axis=(1, 3))


def windows(f, x):
    """Each element's window (flat index of the output it can reach), for the two fns."""
    if f is row_max:
        return np.repeat(np.arange(x.shape[0]), x.shape[1])
    n, m = x.shape
    i, j = np.indices(x.shape)
    return ((i // 2) * (m // 2) + j // 2).reshape(-1)


def routing(f, x, how):
    """A backward for ``f`` at ``x`` with the given routing at ties."""
    win = windows(f, x)
    flat = x.reshape(-1)
    top = np.full(win.max() + 1, -np.inf)
    np.maximum.at(top, win, flat)
    is_max = flat == top[win]
    count = np.bincount(win, weights=is_max)
    first = np.zeros_like(is_max)
    seen = set()
    for k in np.flatnonzero(is_max):
        if win[k] not in seen:
            seen.add(win[k])
            first[k] = True
    tied_window = count[win] > 1

    def vjp(g, x_):
        g = np.asarray(g).reshape(-1)[win]
        if how == "all":
            w = is_max
        elif how == "none":
            w = is_max & ~tied_window
        elif how == "first":
            w = first
        else:  # "split"
            w = is_max / count[win]
        return (g * w).reshape(x.shape)

    return vjp, is_max & tied_window


def point(shape, seed, levels):
    return np.random.default_rng(seed).integers(0, levels, size=shape).astype(np.float64)


CASES = [
    (row_max, (6, 2), 3),
    (row_max, (40, 2), 3),
    (row_max, (120, 3), 4),
    (pool, (4, 4), 3),
    (pool, (8, 12), 4),
    (pool, (16, 16), 5),
]


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("f,shape,levels", CASES)
def test_wrong_routing_blames_exactly_the_tied_windows(f, shape, levels, seed, mode):
    x = point(shape, seed, levels)
    for how in ("all", "none"):
        vjp, blamed = routing(f, x, how)
        if not blamed.any():
            continue
        r = check_vjp(f, vjp, (x,), mode=mode, seed=seed)
        assert r.status == "failed", (how, r)
        (c,) = r.inputs[0].checks.values()
        assert c.n_failed <= c.n_checked, r.verdict
        failed = np.asarray(c.error_ratio).reshape(-1) > 1
        # The failures are exactly the tied maxima of windows whose maximum is tied.
        np.testing.assert_array_equal(failed, blamed, err_msg=f"{how}\n{r}")
        assert c.n_failed == int(blamed.sum())
        assert f"{c.n_failed} of {c.n_checked} elements" in r.verdict


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("f,shape,levels", CASES)
def test_valid_routings_pass(f, shape, levels, seed, mode):
    x = point(shape, seed, levels)
    for how in ("first", "split"):
        vjp, _ = routing(f, x, how)
        r = check_vjp(f, vjp, (x,), mode=mode, seed=seed)
        assert r.ok, (how, r)


def test_scaled_pixels_blame_the_same_windows():
    """The blame does not depend on the units of the pixels or of the output."""
    base = point((8, 8), 5, 3)
    _, blamed = routing(pool, base, "all")
    assert blamed.any()
    for scale in (1e-6, 1.0, 1e6):
        x = base * scale
        vjp, _ = routing(pool, x, "all")

        def f(x_, s=scale):
            return pool(x_) / s

        def g(d, x_, s=scale, v=vjp):
            return v(d / s, x_)

        r = check_vjp(f, g, (x,), seed=5)
        (c,) = r.inputs[0].checks.values()
        np.testing.assert_array_equal(np.asarray(c.error_ratio).reshape(-1) > 1, blamed)
