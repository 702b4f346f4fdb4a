"""How the exhaustive screen calls ``fn``: on the working arrays, on fresh copies, or in batches.

The screen perturbs one element of the working arrays in place and hands them
to ``fn`` directly, after a one-time test that ``fn`` neither writes into its
arguments nor answers from a reference it kept; otherwise every call gets
fresh copies. ``Exhaustive(vectorized=True)`` evaluates a leading batch of
perturbed points per call. None of this may change a verdict.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracles
import reference as R
from oracles.errors import InvalidArgument
from oracles.numerics import exhaustive
from oracles.numerics.exhaustive import Exhaustive
from oracles.numerics.objective import ScalarObjective


def _plant(vjp, i, j, rel):
    """``vjp`` with element ``j`` of gradient ``i`` off by a relative ``rel``."""

    def wrong(g, *xs):
        out = vjp(g, *xs)
        grads = [np.array(d, dtype=np.float64, copy=True) for d in (out if len(xs) > 1 else [out])]
        grads[i].reshape(-1)[j] *= 1.0 + rel
        return tuple(grads) if len(xs) > 1 else grads[0]

    return wrong


def _failing(report):
    return sorted(
        (r.name, e.index)
        for r in report.inputs
        for e in r.checks["numeric"].worst
        if not e.passed
    )


# --- views, shared buffers, kept references -----------------------------------------------------


class _Remembers:
    """An fn that answers from its cache when handed the same array object again (stale)."""

    def __init__(self):
        self.last, self.out = None, None

    def __call__(self, x):
        if x is self.last:
            return self.out
        self.last, self.out = x, np.sin(x)
        return self.out


_BUF = np.empty(200)


def _into_buffer(x):
    return np.sin(x, out=_BUF)  # one buffer, returned on every call


CASES = {
    "identity": (lambda x: x, lambda g, x: g),
    "reversed view": (lambda x: x[::-1], lambda g, x: g[::-1]),
    "reshaped view": (lambda x: x.reshape(20, 10), lambda g, x: g.reshape(-1)),
    "shared output buffer": (_into_buffer, lambda g, x: g * np.cos(x)),
    "remembers its last argument": (None, lambda g, x: g * np.cos(x)),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CASES))
def test_views_buffers_and_kept_references_do_not_change_verdicts(name, seed):
    fn, vjp = CASES[name]
    x = np.random.default_rng(seed).normal(size=200)
    make = _Remembers if fn is None else (lambda: fn)
    right = oracles.check_vjp(make(), vjp, (x,), mode="exhaustive")
    assert right.ok, str(right)
    assert "screened" in right.context["oracles"]
    for j in (3, 117):
        wrong = oracles.check_vjp(make(), _plant(vjp, 0, j, 1e-6), (x,), mode="exhaustive")
        assert _failing(wrong) == [("x", (j,))], str(wrong)


def test_a_remembering_fn_gets_fresh_copies():
    x = np.linspace(-1.0, 1.0, 64)
    objective = ScalarObjective(_Remembers(), (x,), np.ones(64))
    assert exhaustive.calling(objective) == "copies"
    assert exhaustive.calling(ScalarObjective(np.sin, (x,), np.ones(64))) == "direct"


def test_an_fn_that_writes_into_its_argument_gets_fresh_copies():
    def scribbles(x):
        y = np.sin(x)
        x[0] = 123.0
        return y

    x = np.linspace(-1.0, 1.0, 64)
    objective = ScalarObjective(scribbles, (x,), np.ones(64))
    before = [w.copy() for w in objective.work]
    assert exhaustive.calling(objective) == "copies"
    assert all(np.array_equal(w, b) for w, b in zip(objective.work, before, strict=True))
    report = oracles.check_vjp(scribbles, lambda g, x: g * np.cos(x), (x,), mode="exhaustive")
    assert any("modified its argument x in place" in p for p in report.problems)


def test_the_working_arrays_are_restored_after_the_screen():
    rng = np.random.default_rng(3)
    x, W = rng.normal(size=(7, 9)), rng.normal(size=(9, 5))
    objective = ScalarObjective(lambda x, W: np.tanh(x @ W), (x, W), rng.normal(size=(7, 5)))
    objective.noise  # noqa: B018 - measured before the screen, as in a check
    for how in ("direct", "copies", "vectorized"):
        for i in (0, 1):
            exhaustive._screen(objective, i, np.arange(objective.work[i].size), 1e-3, how)
        assert np.array_equal(objective.work[0], x) and np.array_equal(objective.work[1], W)


# --- vectorized=True ----------------------------------------------------------------------------


def _tanh_mm(x, W):
    return np.tanh(x @ W)


def _tanh_mm_vjp(g, x, W):
    d = g * (1 - np.tanh(x @ W) ** 2)
    return d @ W.T, x.T @ d


def _softmax_ce(z, t):
    return -np.sum(t * np.log(R.softmax(z)), axis=(-2, -1))


def _softmax_ce_vjp(g, z, t):
    return g * (R.softmax(z) * t.sum(-1, keepdims=True) - t), -g * np.log(R.softmax(z))


def _constructions():
    out = []
    shapes = [(0, (6, 10, 8), 1.0), (1, (20, 30, 12), 3.0), (2, (3, 50, 4), 1e-3)]
    for seed, (m, k, n), scale in shapes:
        rng = np.random.default_rng(seed)
        x = scale * rng.normal(size=(m, k))
        W = rng.normal(size=(k, n)) / np.sqrt(k)
        out.append((f"tanh(x @ W) {m}x{k}x{n} scale {scale:g}", _tanh_mm, _tanh_mm_vjp, (x, W)))
    for seed, scale in [(3, 1.0), (4, 30.0)]:
        rng = np.random.default_rng(seed)
        z = scale * rng.normal(size=(16, 6))
        t = rng.dirichlet(np.ones(6), size=16)
        out.append((f"softmax-CE 16x6 scale {scale:g}", _softmax_ce, _softmax_ce_vjp, (z, t)))
    return out


_CONSTRUCTIONS = _constructions()


@pytest.mark.parametrize(
    ("name", "fn", "vjp", "xs"), _CONSTRUCTIONS, ids=[c[0] for c in _CONSTRUCTIONS]
)
def test_vectorized_gives_the_verdicts_of_one_call_per_point(name, fn, vjp, xs):
    sizes = [x.size for x in xs]
    big = int(np.argmax(sizes))
    variants = {
        "correct": vjp,
        "one element 1e-6": _plant(vjp, big, sizes[big] // 3, 1e-6),
        "one element 1e-8": _plant(vjp, big, sizes[big] // 2, 1e-8),
        "everywhere 1e-3": lambda g, *a: tuple(1.001 * d for d in vjp(g, *a)),
    }
    for label, derivative in variants.items():
        one = oracles.check_vjp(fn, derivative, xs, mode=Exhaustive())
        batched = oracles.check_vjp(fn, derivative, xs, mode=Exhaustive(vectorized=True))
        assert batched.status == one.status, (label, str(one), str(batched))
        assert _failing(batched) == _failing(one), (label, str(one), str(batched))
        assert [r.checks["numeric"].n_failed for r in batched.inputs] == [
            r.checks["numeric"].n_failed for r in one.inputs
        ], label
        if label == "correct":
            assert one.ok
        elif label != "one element 1e-8":
            assert not one.ok


def test_vectorized_batches_many_points_per_call():
    calls = []

    def fn(x, W):
        calls.append(x.shape)
        return np.tanh(x @ W)

    rng = np.random.default_rng(0)
    xs = (rng.normal(size=(40, 50)), rng.normal(size=(50, 6)) / 7)
    n = sum(x.size for x in xs)
    report = oracles.check_vjp(fn, _tanh_mm_vjp, xs, mode=Exhaustive(vectorized=True))
    assert report.ok
    batched = [s for s in calls if len(s) == 3]
    assert batched and max(s[0] for s in batched) >= 64
    # The screen's 2 points per element come in batches: fewer calls than elements in all.
    assert int(report.context["fn evaluations"]) > 2 * n
    assert len(calls) < n


def _not_row_by_row(x):
    return np.sin(x - np.mean(x))  # the mean over the whole batch couples the rows


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda x: np.sum(np.sin(x)), r"leading batch axis.*returned shape \(\)"),
        (lambda x: np.sin(x.reshape(-1)), r"returned shape \(400,\), expected \(2, 200\)"),
        (lambda x: np.sin(x) if x.ndim == 1 else None, "vectorized=True"),
        (_not_row_by_row, r"row by row.*row [01]"),
        (lambda x: np.sin(x.reshape(200)), "on a batch of 2 points it failed"),
    ],
    ids=["scalar for a batch", "flattened", "None for a batch", "rows coupled", "raises"],
)
def test_vectorized_rejects_an_fn_that_does_not_batch(fn, match):
    x = np.linspace(-1.0, 1.0, 200)
    with pytest.raises(InvalidArgument, match=match):
        oracles.check_vjp(fn, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive(vectorized=True))


def test_vectorized_in_fast_mode_fallbacks_and_small_inputs():
    # An input too small for the screen is laddered (one point per call): still fine.
    x = np.linspace(-1.0, 1.0, 8)
    report = oracles.check_vjp(
        np.sin, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive(vectorized=True)
    )
    assert report.ok


# --- the caller's NumPy error state ---------------------------------------------------------------


def _conv_like(x, W):
    """``tanh(x @ W)`` tiled to more than 4,096 outputs (the screen keeps the changed ones)."""
    return np.tile(np.tanh(x @ W), (1, 8))


@pytest.mark.parametrize("outputs", ["dense", "sparse"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_screen_calls_fn_under_the_callers_error_state(outputs, seed):
    """Every call of ``fn`` (the screen's direct calls too) sees the caller's NumPy error state.

    The screen's fast path called ``fn`` under ``divide/over/invalid="ignore"``; the guard,
    and every other call, under the caller's. A raise at a perturbed point reads as not
    finite there, as it does in the ladder: same verdicts as under NumPy's default state.
    """
    rng = np.random.default_rng(seed)
    m = 12 if outputs == "dense" else 70
    x, W = rng.standard_normal((m, 10)), rng.standard_normal((10, 8)) / 3
    fn = np.tanh if outputs == "dense" else None
    seen = set()

    def f(x, W):
        seen.add(tuple(sorted(np.geterr().items())))
        return _conv_like(x, W) if fn is None else np.tanh(x @ W)

    def vjp(g, x, W):
        if fn is None:
            g = g.reshape(g.shape[0], 8, -1).sum(axis=1)
        d = g * (1 - np.tanh(x @ W) ** 2)
        return d @ W.T, x.T @ d

    wrong = _plant(vjp, 1, 5, 1e-6)
    with np.errstate(all="raise"):
        ok = oracles.check_vjp(f, vjp, (x, W), mode=Exhaustive())
        bad = oracles.check_vjp(f, wrong, (x, W), mode=Exhaustive())
    assert seen == {tuple(sorted({k: "raise" for k in np.geterr()}.items()))}
    assert ok.ok and not bad.ok and _failing(bad) == [("W", (0, 5))]


def test_a_raise_at_perturbed_points_of_the_screen_reads_as_not_finite():
    """``log`` of inputs within the screen's step of 0, under ``all="raise"``: the verdicts of
    NumPy's default state (where the same points give NaN, quietly)."""
    x = np.concatenate([np.linspace(1e-9, 1e-8, 10), np.linspace(0.5, 2.0, 90)])

    def run():
        return oracles.check_vjp(np.log, lambda g, x: g / x, (x,), mode=Exhaustive())

    with np.errstate(all="raise"):
        raised = run()
    quiet = run()
    assert raised.ok == quiet.ok
    assert raised.inputs[0].checks["numeric"].n_failed == quiet.inputs[0].checks["numeric"].n_failed
