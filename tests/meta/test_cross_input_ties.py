"""Ties across inputs: ``maximum(a, b)`` at ``a == b``, ``|p - t|`` at ``p == t``.

Each tied element alone lies between its one-sided slopes, and each input's
own tie groups hold one of the two, so a backward that routes the gradient
to both arguments (or to neither) passed element by element, while the same
function with ``a`` and ``b`` stacked into one input failed. Tied kinks of
two or more inputs are now judged jointly across the inputs: valid routings
(to either argument, or split) pass and the two wrong ones fail, at several
sizes, scales and seeds, in both modes.
"""

import numpy as np
import pytest

from oracles import check_vjp


def tied_pair(shape, seed, scale):
    """Integer-valued arrays (about a third of the elements tie), times ``scale``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, size=shape).astype(np.float64)
    b = rng.integers(0, 3, size=shape).astype(np.float64)
    b.reshape(-1)[0] = a.reshape(-1)[0]  # at least one tie
    return a * scale, b * scale


def maximum(a, b):
    return np.maximum(a, b)


ROUTINGS = {
    "to a": lambda a, b: ((a >= b) * 1.0, (a < b) * 1.0),
    "to b": lambda a, b: ((a > b) * 1.0, (a <= b) * 1.0),
    "split": lambda a, b: ((a > b) + 0.5 * (a == b), (a < b) + 0.5 * (a == b)),
    "both": lambda a, b: ((a >= b) * 1.0, (b >= a) * 1.0),
    "neither": lambda a, b: ((a > b) * 1.0, (b > a) * 1.0),
}


def routed(how):
    def vjp(g, a, b):
        wa, wb = ROUTINGS[how](a, b)
        return g * wa, g * wb

    return vjp


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("shape", [(6,), (4, 6), (12, 10)])
def test_maximum_of_two_inputs_at_ties(shape, scale, mode):
    for seed in range(2):
        a, b = tied_pair(shape, seed, scale)
        for how in ("to a", "to b", "split"):
            r = check_vjp(maximum, routed(how), (a, b), mode=mode, seed=seed)
            assert r.status != "failed", (how, seed, r)
        for how in ("both", "neither"):
            r = check_vjp(maximum, routed(how), (a, b), mode=mode, seed=seed)
            assert r.status == "failed", (how, seed, r)
            assert "tied values across inputs" in str(r), (how, seed, r)


def l1(p, t):
    return np.mean(np.abs(p - t))


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("shape", [(8,), (5, 7)])
def test_l1_loss_at_predictions_equal_to_targets(shape, mode):
    for seed in range(3):
        p, t = tied_pair(shape, seed, 1.0)
        n = p.size

        def sign_vjp(g, p, t, n=n):  # np.sign(0) = 0: both 0 at ties
            s = np.sign(p - t) / n
            return g * s, -g * s

        def one_sided(g, p, t, n=n):  # +1/N and -1/N at ties: a subgradient too
            s = np.where(p >= t, 1.0, -1.0) / n
            return g * s, -g * s

        def both_plus(g, p, t, n=n):  # +1/N to both at ties: sums to 2/N along (1, 1)
            s = np.sign(p - t) / n
            tie = (p == t) / n
            return g * (s + tie), g * (-s + tie)

        for vjp in (sign_vjp, one_sided):
            assert check_vjp(l1, vjp, (p, t), mode=mode, seed=seed).status != "failed", seed
        r = check_vjp(l1, both_plus, (p, t), mode=mode, seed=seed)
        assert r.status == "failed" and "tied values across inputs" in str(r), (seed, r)


def test_independent_kinks_in_two_inputs_are_not_a_false_alarm():
    """relu(a) + relu(b) with zeros in both, each input with its own convention at 0."""

    def fn(a, b):
        return np.maximum(a, 0) + 2.0 * np.maximum(b, 0)

    for seed in range(4):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
        a[rng.random(a.shape) < 0.4] = 0.0
        b[rng.random(b.shape) < 0.4] = 0.0
        for at_a, at_b in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.5, 1.0)):

            def vjp(g, a, b, at_a=at_a, at_b=at_b):
                da = np.where(a > 0, 1.0, np.where(a == 0, at_a, 0.0))
                db = np.where(b > 0, 1.0, np.where(b == 0, at_b, 0.0))
                return g * da, 2.0 * g * db

            for mode in ("exhaustive", "fast"):
                r = check_vjp(fn, vjp, (a, b), mode=mode, seed=seed)
                assert r.status != "failed", (seed, at_a, at_b, mode, r)
