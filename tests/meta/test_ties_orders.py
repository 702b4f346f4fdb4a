"""Tie groups whose middle positions matter: sort of many equal values, in any precision.

At ``k`` tied values of a sort, every position of the group is a limiting
derivative of every tied element (each order of the group is a piece of
``sort``), so a backward that gives the tied elements the cotangents of their
positions in *any* order is valid, and one that gives an element a value
outside the range of the group's cotangents (or duplicates one, changing the
group's sum) is not. Alone, an element only reaches the ends of its group;
the check samples orders of the group in which every element takes every
position (``oracles.numerics.ties.limiting_slopes``).

The constructions: integer data (many ties) of several sizes, group sizes 2
to 40, float64, float32 and float16 inside, several seeds. Correct
backwards never fail; wrong ones fail (in float16, where the noise can
hide an error, they may be inconclusive, never passed). ReLU at exact zeros
in float16 (a probe that saw no noise must not take float64's precision) is
here too.
"""

import numpy as np
import pytest

from oracles import check_vjp


def _sort_in(dtype):
    def sort(x):
        return np.sort(x.astype(dtype)).astype(np.float64)

    return sort


def _sort_vjp(dtype, reverse=False):
    def vjp(g, x):
        v = x.astype(dtype)
        # Stable order, or ties in reverse order: both are valid derivatives.
        order = np.lexsort((-np.arange(x.size), v)) if reverse else np.argsort(v, kind="stable")
        d = np.zeros_like(x)
        d[order] = g
        return d

    return vjp


def _largest_group(x):
    values, counts = np.unique(x, return_counts=True)
    return np.flatnonzero(x == values[np.argmax(counts)])


def _duplicated(vjp):
    def wrong(g, x):  # a tied element gets another's gradient: the group's sum changes
        d = vjp(g, x)
        t = _largest_group(x)
        d[t[0]] = d[t[1]]
        return d

    return wrong


def _moved_apart(vjp):
    def wrong(g, x):  # two tied elements moved apart, the sum kept: outside the positions' range
        d = vjp(g, x)
        t = _largest_group(x)
        span = float(np.max(np.abs(d[t]))) + 1.0
        d[t[0]] += span
        d[t[1]] -= span
        return d

    return wrong


def _integers(seed, n, k):
    return np.random.default_rng(seed).integers(0, k, n).astype(np.float64)


@pytest.mark.parametrize("n_tied", [9, 12, 20, 40])
@pytest.mark.parametrize("seed", [0, 1])
def test_float64_sort_with_large_tie_groups(n_tied, seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(-1.0, 1.0, 50) * 8) / 8
    x[rng.choice(50, n_tied, replace=False)] = 0.3
    sort = _sort_in(np.float64)
    for mode in ("exhaustive", "fast"):
        for reverse in (False, True):
            r = check_vjp(sort, _sort_vjp(np.float64, reverse), (x,), mode=mode, seed=seed)
            assert r.status == "passed", str(r)
    for wrong in (_duplicated, _moved_apart):
        r = check_vjp(sort, wrong(_sort_vjp(np.float64)), (x,), seed=seed)
        assert r.status == "failed", str(r)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("n", "k"), [(30, 5), (60, 12)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduced_precision_sort_of_integers(dtype, n, k, seed):
    x = _integers(seed, n, k)
    sort = _sort_in(dtype)
    for reverse in (False, True):
        r = check_vjp(sort, _sort_vjp(dtype, reverse), (x,), seed=seed)
        assert r.status != "failed", str(r)
        if dtype is np.float32 and k == 5:
            # Groups of 6: every element sits at a tie, and is judged there. (With 12
            # values the one element off a tie may set the figure: inconclusive.)
            assert r.status == "passed", str(r)
    for wrong in (_duplicated, _moved_apart):
        r = check_vjp(sort, wrong(_sort_vjp(dtype)), (x,), seed=seed)
        assert r.status == "failed", str(r)


@pytest.mark.parametrize("seed", range(4))
def test_float16_sort_without_room_between_values_says_so(seed):
    """Values 2 float16 units apart (a grid of 1/8 near 100): no order of a group fits.

    The tied elements cannot be judged one by one, and the check says that it
    could not tell, naming them; it never fails the correct sort.
    """
    rng = np.random.default_rng(seed)
    x = 97.0 + np.round(rng.uniform(0.0, 1.5, 40) * 8) / 8
    r = check_vjp(_sort_in(np.float16), _sort_vjp(np.float16), (x,), seed=seed)
    assert r.status == "inconclusive", str(r)
    assert any("could not be judged one by one" in p for p in r.inconclusive), str(r)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("seed", range(4))
def test_reduced_precision_relu_at_zeros_with_a_quiet_probe(dtype, seed):
    """ReLU over exact zeros and small values: every probe point of an element may round to
    one value of the reduced type (no noise and no quantum seen), and its outputs must still
    count with the type's rounding, not float64's."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(5, 6)), 0.0) * rng.choice([-1.0, 1.0], (5, 6))

    def relu(x):
        return np.maximum(x.astype(dtype), 0).astype(np.float64)

    def relu_vjp(g, x):
        return g * (x > 0)

    def relu_doubled_at_zero(g, x):  # 2g at 0 is outside the subgradients [0, g]
        return g * (x > 0) + 2.0 * g * (x == 0)

    for mode in ("exhaustive", "fast"):
        r = check_vjp(relu, relu_vjp, (x,), mode=mode, seed=seed)
        assert r.status != "failed", str(r)
    assert check_vjp(relu, relu_doubled_at_zero, (x,), seed=seed).status == "failed"


@pytest.mark.xfail(
    strict=True,
    reason="known limit (README): in float16 the measured noise makes the ladder of an element "
    "that is not tied prefer steps larger than the gap to its neighbours (32 float16 units), "
    "where the sort is another piece, and the correct sort fails",
)
def test_float16_sort_element_next_to_its_neighbours():
    rng = np.random.default_rng(25)
    x = np.round(rng.uniform(-1.0, 0.5, 20) * 8) / 8 + 1.0
    x[rng.choice(20, 5, replace=False)] = 3.0
    r = check_vjp(_sort_in(np.float16), _sort_vjp(np.float16), (x,), mode="exhaustive", seed=2)
    assert r.status != "failed", str(r)
