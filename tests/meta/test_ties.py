"""Tied values are judged jointly (issue 13, "coupled kinks").

At a tie (max, max-pool, top-k, sort) each element alone sits at a kink
whose one-sided slopes bracket any routing of the gradient; only the joint
test along the direction that moves the tied elements together tells a
subgradient (route once, or split) from a backward that routes to every tied
element or to none. The constructions below vary sizes, scales, offsets,
seeds and modes; correct backwards of every convention must pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp
from oracles.numerics.ties import tie_groups

MODES = ["exhaustive", "fast", "ladder"]


def _right(report, mode):
    """A subgradient never fails. Where the measured noise of a piecewise-linear fn (max-pool on
    a coarse grid) widens the estimates past resolve=, the check may say it cannot tell
    (inconclusive); it must never say "failed"."""
    del mode
    return report.status != "failed"


def _windows(x, k):
    n, m = x.shape[-2] // k, x.shape[-1] // k
    lead = x.shape[:-2]
    w = x.reshape(*lead, n, k, m, k)
    return np.moveaxis(w, -3, -2).reshape(*lead, n, m, k * k)


def _unwindows(w, shape, k):
    lead = shape[:-2]
    n, m = shape[-2] // k, shape[-1] // k
    w = w.reshape(*lead, n, m, k, k)
    return np.moveaxis(w, -2, -3).reshape(shape)


def maxpool(x, k=2):
    return _windows(x, k).max(-1)


def maxpool_vjp_first(g, x, k=2):
    w = _windows(x, k)
    out = np.zeros_like(w)
    np.put_along_axis(out, w.argmax(-1)[..., None], g[..., None], -1)
    return _unwindows(out, x.shape, k)


def maxpool_vjp_split(g, x, k=2):
    w = _windows(x, k)
    hit = w == w.max(-1, keepdims=True)
    return _unwindows(hit * (g / hit.sum(-1))[..., None], x.shape, k)


def maxpool_vjp_every_tie(g, x, k=2):  # the published mistake
    w = _windows(x, k)
    return _unwindows((w == w.max(-1, keepdims=True)) * g[..., None], x.shape, k)


def maxpool_vjp_none_at_ties(g, x, k=2):
    w = _windows(x, k)
    hit = w == w.max(-1, keepdims=True)
    return _unwindows((hit & (hit.sum(-1, keepdims=True) == 1)) * g[..., None], x.shape, k)


def _integer_images(rng, shape, levels=3):
    return rng.integers(0, levels, size=shape).astype(np.float64)


def _has_tied_max(x, k=2):
    w = _windows(x, k)
    return bool(np.any((w == w.max(-1, keepdims=True)).sum(-1) > 1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("shape", "scale", "offset"), [
    ((4, 4), 1.0, 0.0),
    ((2, 6, 6), 1e-3, 0.0),
    ((8, 8), 1e4, 5.0),
    ((3, 4, 4), 1.0, 1e6),
])  # fmt: skip
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maxpool_routing_to_every_or_no_tie_fails_and_subgradients_pass(
    mode, shape, scale, offset, seed
):
    rng = np.random.default_rng(seed)
    x = _integer_images(rng, shape) * scale + offset
    assert _has_tied_max(x)
    for vjp in (maxpool_vjp_first, maxpool_vjp_split):
        r = check_vjp(maxpool, vjp, (x,), mode=mode, seed=seed)
        assert _right(r, mode), str(r)
    for vjp in (maxpool_vjp_every_tie, maxpool_vjp_none_at_ties):
        r = check_vjp(maxpool, vjp, (x,), mode=mode, seed=seed)
        assert r.status == "failed", str(r)
        assert any("tie group of x" in p for p in r.problems), str(r)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("size", "n_tied"), [(2, 2), (10, 2), (10, 3), (40, 3), (40, 7)])
def test_max_of_a_vector_with_a_tied_maximum(mode, size, n_tied):
    rng = np.random.default_rng(size + n_tied)
    x = rng.uniform(-1.0, 0.5, size)
    top = rng.choice(size, n_tied, replace=False)
    x[top] = 1.0

    def first(g, x):
        d = np.zeros_like(x)
        d[np.argmax(x)] = g
        return d

    def split(g, x):
        hit = x == x.max()
        return g * hit / hit.sum()

    def every(g, x):
        return g * (x == x.max())

    def none(g, x):
        return np.zeros_like(x)

    def uneven_but_valid(g, x):  # any convex combination is a subgradient
        hit = np.flatnonzero(x == x.max())
        w = np.linspace(1.0, 2.0, hit.size)
        d = np.zeros_like(x)
        d[hit] = g * w / w.sum()
        return d

    def half_each(g, x):  # sums to n_tied / 2: wrong unless n_tied == 2
        return 0.5 * g * (x == x.max())

    for vjp in (first, split, uneven_but_valid):
        r = check_vjp(np.max, vjp, (x,), mode=mode, direction=np.array(1.7))
        assert _right(r, mode), str(r)
    wrong = [every, none] + ([half_each] if n_tied != 2 else [])
    for vjp in wrong:
        r = check_vjp(np.max, vjp, (x,), mode=mode, direction=np.array(1.7))
        assert r.status == "failed", str(r)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [5, 6, 7, 8])
def test_sort_and_top_k_with_ties(mode, seed):
    """Three or more tied values: middle positions are valid derivatives too."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=12).astype(np.float64)
    x[:3] = 3.0

    def top3(x):
        return np.sort(x)[-3:]

    def top3_vjp(g, x):
        d = np.zeros_like(x)
        d[np.argsort(x, kind="stable")[-3:]] = g
        return d

    def top3_vjp_every_tie(g, x):  # each of the top values gets the gradient of its value
        d = np.zeros_like(x)
        for value, gi in zip(np.sort(x)[-3:], g, strict=True):
            d[x == value] += gi
        return d

    assert _right(check_vjp(top3, top3_vjp, (x,), mode=mode), mode)
    assert check_vjp(top3, top3_vjp_every_tie, (x,), mode=mode).status == "failed"

    def sort_vjp(g, x):
        d = np.zeros_like(x)
        d[np.argsort(x, kind="stable")] = g
        return d

    r = check_vjp(np.sort, sort_vjp, (x,), mode=mode, seed=seed)
    assert _right(r, mode), str(r)

    def sort_vjp_reversed_ties(g, x):  # another permutation among the ties: still valid
        d = sort_vjp(g, x)
        d[:3] = d[:3][::-1]
        return d

    assert _right(check_vjp(np.sort, sort_vjp_reversed_ties, (x,), mode=mode, seed=seed), mode)

    def sort_vjp_duplicated(g, x):  # one tied element gets another's gradient twice
        d = sort_vjp(g, x)
        d[0] = d[1]
        return d

    assert check_vjp(np.sort, sort_vjp_duplicated, (x,), mode=mode, seed=seed).status == "failed"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(6))
def test_elementwise_kinks_at_equal_values_are_not_false_alarms(mode, seed):
    """ReLU and abs at exact zeros, random cotangent signs: every convention passes."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((5, 7))
    z[rng.random(z.shape) < 0.4] = 0.0
    for convention in (0.0, 0.5, 1.0):
        r = check_vjp(
            lambda z: np.maximum(z, 0.0),
            lambda g, z, c=convention: g * ((z > 0) + c * (z == 0)),
            (z,),
            mode=mode,
            seed=seed,
        )
        assert _right(r, mode), str(r)
    r = check_vjp(np.abs, lambda g, z: g * np.sign(z), (z,), mode=mode, seed=seed)
    assert _right(r, mode), str(r)


@pytest.mark.parametrize("mode", MODES)
def test_duplicated_values_of_a_smooth_function_pass(mode):
    """Ties in the input of a smooth function are just a directional check."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(6, 5)).astype(np.float64)
    W = rng.standard_normal((5, 4))
    def vjp(g, x, W):
        d = g * (1 - np.tanh(x @ W) ** 2)
        return d @ W.T, x.T @ d

    r = check_vjp(lambda x, W: np.tanh(x @ W), vjp, (x, W), mode=mode)
    assert _right(r, mode) and not any("sit at a kink" in n for n in r.notes), str(r)


def test_a_tie_in_a_large_fast_check_is_caught():
    rng = np.random.default_rng(11)
    x = rng.standard_normal(6000)
    x[[17, 4021]] = x.max() + 1.0

    def every(g, x):
        return g * (x == x.max())

    def first(g, x):
        d = np.zeros_like(x)
        d[np.argmax(x)] = g
        return d

    assert check_vjp(np.max, first, (x,), mode="fast").ok
    r = check_vjp(np.max, every, (x,), mode="fast")
    assert not r.ok and any("[17], [4021]" in p for p in r.problems), str(r)


def test_tie_groups_prefers_groups_with_kinks_and_caps():
    x = np.array([3.0, 1.0, 3.0, 2.0, 2.0, 2.0, 5.0])
    kinks = np.array([False, False, True, False, False, False, False])
    groups, found = tie_groups([x], [kinks], max_groups=1)
    assert found == 2 and [list(g) for _, g in groups] == [[0, 2]]
    groups, found = tie_groups([x], None)
    assert [list(g) for _, g in groups] == [[3, 4, 5], [0, 2]]
