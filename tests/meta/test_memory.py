"""The memory a check holds beyond what the user's own code needs (issue 17: at most 4 copies).

Measured with ``tracemalloc`` (NumPy reports its allocations to it), so the
figures do not depend on the machine or its load. What the user's ``fn`` and
``vjp`` allocate themselves (their temporaries, their results) is what the
check cannot avoid while it calls them: the check's own peak is held to at
most ``4`` copies of the inputs above that.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from oracles import check_vjp

#: Most copies of the inputs a check may hold above the user's own code (issue 17).
COPIES = 4.0


def half_tanh_sq(x):
    return 0.5 * np.sum(np.tanh(x) ** 2)


def half_tanh_sq_vjp(g, x):
    t = np.tanh(x)
    return g * t * (1 - t * t)


def sum_sin_matrix(x, w):
    return np.sum(np.sin(x) * w)


def sum_sin_matrix_vjp(g, x, w):
    return g * np.cos(x) * w, g * np.sin(x)


def _peak(call):
    """Peak bytes traced while ``call()`` runs, above what was traced before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()
        return tracemalloc.get_traced_memory()[1] - before, result
    finally:
        tracemalloc.stop()


def _user_peak(fn, vjp, inputs, cotangent):
    """The user's own footprint: the larger peak of ``fn`` and ``vjp`` on fresh copies."""
    fwd, _ = _peak(lambda: fn(*[x.copy() for x in inputs]))
    bwd, _ = _peak(lambda: vjp(cotangent, *[x.copy() for x in inputs]))
    return max(fwd, bwd)


CASES = [
    # (fn, vjp, input shapes, planted error)
    (half_tanh_sq, half_tanh_sq_vjp, [(1_000_000,)], None),
    (half_tanh_sq, half_tanh_sq_vjp, [(500, 800)], None),
    (sum_sin_matrix, sum_sin_matrix_vjp, [(300, 1000), (300, 1000)], None),
]


@pytest.mark.parametrize("fn, vjp, shapes, plant", CASES, ids=["1e6", "500x800", "two-inputs"])
@pytest.mark.parametrize("seed", [0, 3])
def test_a_correct_check_holds_at_most_four_copies_of_its_inputs(fn, vjp, shapes, plant, seed):
    rng = np.random.default_rng(seed)
    inputs = tuple(rng.uniform(-2.0, 2.0, s) for s in shapes)
    size = sum(x.nbytes for x in inputs)
    user = _user_peak(fn, vjp, inputs, np.float64(1.0))
    peak, report = _peak(lambda: check_vjp(fn, vjp, inputs, seed=seed))
    assert report.ok, report
    copies = (peak - user) / size
    assert copies <= COPIES, f"the check held {copies:.2f} copies of its inputs (user: {user})"


def test_the_measure_sees_a_check_that_holds_too_much(monkeypatch):
    """The bound is not vacuous: five extra copies held through the numerics exceed it."""
    import oracles.numerics.fast as fast

    inner = fast.fast_partials
    hoard = []

    def greedy(objective, grads, **kwargs):
        hoard.extend(np.array(x, copy=True) for x in objective.point for _ in range(5))
        return inner(objective, grads, **kwargs)

    monkeypatch.setattr(fast, "fast_partials", greedy)
    x = np.random.default_rng(0).uniform(-2.0, 2.0, 200_000)
    user = _user_peak(half_tanh_sq, half_tanh_sq_vjp, (x,), np.float64(1.0))
    peak, report = _peak(lambda: check_vjp(half_tanh_sq, half_tanh_sq_vjp, (x,)))
    assert report.ok
    assert (peak - user) / x.nbytes > COPIES


def test_a_wrong_element_is_still_named_at_a_million_elements():
    x = np.random.default_rng(1).uniform(-2.0, 2.0, 1_000_000)

    def wrong(g, x):
        d = half_tanh_sq_vjp(g, x)
        d[123_456] *= 1 + 1e-6
        return d

    report = check_vjp(half_tanh_sq, wrong, (x,))
    assert report.status == "failed"
    assert [e.index for e in report.inputs[0].worst if not e.passed] == [(123_456,)]


# --- the zero-memory references of mode fast keep the verdict at any size and scale ------------


def _scaled(n, scale, seed):
    """``scale * sum(sin(x))``: the fast mode is invariant to the scale of the output."""
    x = np.random.default_rng(seed).uniform(0.5, 1.5, n)

    def fn(x):
        return scale * np.sum(np.sin(x))

    def vjp(g, x):
        return (g * scale) * np.cos(x)

    return x, fn, vjp


@pytest.mark.parametrize("n", [6_000, 60_000, 300_000])
@pytest.mark.parametrize("scale", [1e-100, 1.0, 1e100])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_mode_verdicts_with_broadcast_references(n, scale, seed):
    x, fn, vjp = _scaled(n, scale, seed)
    right = check_vjp(fn, vjp, (x,), mode="fast", seed=seed)
    assert right.ok, right
    # Nothing was compared one by one: the per-element record is a broadcast (no memory).
    ratio = right.inputs[0].checks["numeric"].error_ratio
    assert ratio.shape == x.shape and not any(ratio.strides)
    assert right.inputs[0].checks["numeric"].n_checked == n
    assert 0 < right.inputs[0].sensitivity < 1e-6
    j = (7919 * (seed + 1)) % n

    def wrong(g, x):
        d = vjp(g, x)
        d[j] *= 1 + 1e-6
        return d

    report = check_vjp(fn, wrong, (x,), mode="fast", seed=seed)
    assert report.status == "failed"
    assert [e.index for e in report.inputs[0].worst if not e.passed] == [(j,)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_mode_over_inputs_some_compared_some_not(seed):
    """A named element makes its input's reference dense; the other inputs stay broadcast."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 1.5, 4000), rng.uniform(0.5, 1.5, (30, 100))

    def fn(a, b):
        return np.sum(np.sin(a)) + np.sum(np.tanh(b))

    def vjp(g, a, b):
        da, db = g * np.cos(a), g * (1 - np.tanh(b) ** 2)
        da[123] *= 1 + 1e-6
        return da, db

    report = check_vjp(fn, vjp, (a, b), mode="fast", seed=seed)
    assert report.status == "failed"
    assert [(e.input_number, e.index) for e in report.inputs[0].worst if not e.passed] == [
        (0, (123,))
    ]
    assert report.inputs[1].ok and report.inputs[1].checks["numeric"].n_checked == b.size
    assert not any(report.inputs[1].checks["numeric"].error_ratio.strides)
