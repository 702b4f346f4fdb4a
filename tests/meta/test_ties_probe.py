"""The probe that decides whether tied values need the joint test (a kink where they untie).

Equal values are not always ties of a max: zero-initialized biases of a
sigmoid layer are equal, and the function is smooth across them. The joint
test of a tie group (two one-sided ladders) runs only where a kink is seen;
it must still run, and catch wrong routings, wherever there is one.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracles
from oracles.checks import _kink_where_ties_untie
from oracles.numerics.objective import ScalarObjective

SCALES = (1e-6, 1.0, 1e6)


def _max3(x):
    return np.max(x.reshape(-1, 4), axis=1)


def _sort(x):
    return np.sort(x)


def _relu(x):
    return np.maximum(x, 0.0)


def _sigmoid_bias(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-(np.arange(x.size) * 0.01 + x)))


def _affine(x):
    return 3.0 * x + 1.0


def _tied(scale, n=16):
    x = scale * np.linspace(-1.0, 1.0, n)
    x[[2, 5, 9]] = scale * 0.37  # one group of three tied values
    return x


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    ("fn", "kink"),
    [
        (np.max, True),
        (np.min, False),  # the tied values are not the minimum: smooth there
        (_sort, True),
        (_relu, True),
        (_sigmoid_bias, False),
        (_affine, False),
    ],
    ids=["max", "min elsewhere", "sort", "relu", "sigmoid", "affine"],
)
def test_the_probe_sees_kinks_at_ties_and_only_there(fn, kink, scale):
    x = _tied(scale)
    if fn is _relu:
        x[[2, 5, 9]] = 0.0  # ReLU's kink is at 0
    if fn is np.max:
        x[[2, 5, 9]] = 1.5 * scale  # tied maxima
    idx = np.array([2, 5, 9])
    for seed in range(3):
        rng = np.random.default_rng(seed)
        out_shape = np.shape(fn(x))
        cot = rng.uniform(0.5, 1.5, size=out_shape) if out_shape else np.array(1.0)
        objective = ScalarObjective(fn, (x,), cot)
        before = objective.work[0].copy()
        assert _kink_where_ties_untie(objective, 0, idx, rng) is kink, (seed, scale)
        assert np.array_equal(objective.work[0], before)


def _vjp_max_split(share):
    """VJP of max over rows of 4 that gives ``share`` of the cotangent to every tied maximum."""

    def vjp(g, x):
        rows = x.reshape(-1, 4)
        top = rows == rows.max(axis=1, keepdims=True)
        n = top.sum(axis=1, keepdims=True)
        d = np.where(top, g[:, None] * (share if share is not None else 1.0 / n), 0.0)
        return d.reshape(x.shape)

    return vjp


@pytest.mark.parametrize("mode", ["exhaustive", "fast", "ladder"])
@pytest.mark.parametrize("scale", SCALES)
def test_a_wrong_routing_at_tied_maxima_still_fails(mode, scale):
    rng = np.random.default_rng(int(np.log10(scale)) + 7)
    x = scale * rng.normal(size=64)
    x[[8, 9, 11]] = scale * 5.0  # row 2: three tied maxima
    cot = rng.uniform(0.5, 1.5, size=16)
    right = oracles.check_vjp(_max3, _vjp_max_split(None), (x,), direction=cot, mode=mode)
    assert right.ok, str(right)
    # Half to each of three tied maxima: every element lies between its one-sided
    # slopes (0 and g), but the group sums to 1.5 g.
    wrong = oracles.check_vjp(_max3, _vjp_max_split(0.5), (x,), direction=cot, mode=mode)
    assert not wrong.ok, str(wrong)
    assert any("tie group" in p for p in wrong.problems), str(wrong)


def test_smooth_ties_skip_the_joint_test():
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(8, 30)), rng.normal(size=(30, 20)) / 5, np.zeros(20)

    def layer(x, W, b):
        return 1.0 / (1.0 + np.exp(-(x @ W + b)))

    def layer_vjp(g, x, W, b):
        s = layer(x, W, b)
        d = g * s * (1 - s)
        return d @ W.T, x.T @ d, d.sum(0)

    for mode in ("exhaustive", "fast"):
        report = oracles.check_vjp(layer, layer_vjp, (x, W, b), mode=mode)
        assert report.ok, str(report)
        notes = " ".join(report.notes)
        assert "smooth where they untie" in notes and "checked jointly" not in notes, notes
        wrong = oracles.check_vjp(
            layer, lambda g, *a: (lambda d: (d[0], d[1], 1.5 * d[2]))(layer_vjp(g, *a)),
            (x, W, b), mode=mode,
        )  # fmt: skip
        assert wrong.failed_inputs == ["b"], str(wrong)


def _sort_vjp(g, x):
    d = np.empty_like(x)
    d[np.argsort(x, kind="stable")] = g
    return d


@pytest.mark.parametrize("mode", ["exhaustive", "fast", "ladder"])
def test_sort_under_a_palindromic_cotangent_keeps_the_joint_test(mode):
    """Along every line through the tie the one-sided slopes of ``sort`` are opposite here
    (``J = 0``): the probe may see no kink, but the middle element's own slopes (1 and 1)
    disagree with its right gradient (0), and that alone sends the group to the joint test,
    whose limiting slopes accept it. Without it the right gradient is a false alarm."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=40)
    x[[3, 17, 30]] = 0.25
    pos = int(np.searchsorted(np.sort(x), 0.25))
    cot = rng.normal(size=40)
    cot[pos : pos + 3] = (1.0, 0.0, 1.0)
    report = oracles.check_vjp(np.sort, _sort_vjp, (x,), direction=cot, mode=mode)
    assert report.ok, str(report)
    wrong = oracles.check_vjp(
        np.sort, lambda g, x: _sort_vjp(g, x) + np.isin(np.arange(40), [3, 17, 30]),
        (x,), direction=cot, mode=mode,
    )  # fmt: skip
    assert not wrong.ok
