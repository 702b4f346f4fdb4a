"""Mode fast: two ways a wrong gradient passed (round 14, "fastmiss").

* **Inputs far below unit scale.** The projections stepped inputs below
  ``2^4`` in their own units from ``T0 = 1/8``; the calibration's 25 rungs end
  at ``2^-27 ~ 7e-9``, so an input of scale 1e-9 was never stepped at its
  scale: ``softmax(x / 1e-9)`` saturated at every rung, the stencils agreed
  on ``-<analytic, u>`` with an error of 1e-8 of it, every block of the
  search disagreed, and the exhaustive fallback (which resolves 2e-8 there)
  passed a 1e-8 error. Inputs below ``2^-4`` are now stepped in units of
  their scale, as those above ``2^4`` were.
* **A kink that one element owns.** ``|x_j - c|`` with ``c`` 1e-6 of the scale
  from ``x_j`` held the step of every projection below the kink's distance:
  the noise (``~ 1 / t``) left all 40 elements resolved to ``9e-6`` only, and
  a 1e-6 error at ``x_j`` passed. The element is now found by a search for
  the kink, judged by its ladder, and the step calibrated over the others.

Each claim at several sizes, scales and seeds, with correct derivatives
passing and planted errors failing.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_reduced_precision import _planted, _typical

import reference as R
from oracles import check_vjp


def _tiny(name, rng, n, s_in, s_out):
    if name == "softmax":
        x0 = rng.normal(size=(n // 5, 5)) * 3
        return (
            lambda x: s_out * R.softmax(x / s_in),
            lambda c, x: R.softmax_vjp(c, x / s_in) * (s_out / s_in),
            x0 * s_in,
        )
    x0 = rng.normal(size=n)
    return (
        lambda x: s_out * np.tanh(x / s_in),
        lambda c, x: c * (1 - np.tanh(x / s_in) ** 2) * (s_out / s_in),
        x0 * s_in,
    )


@pytest.mark.parametrize("s_out", [1e-12, 1.0, 1e12])
@pytest.mark.parametrize("s_in", [1e-5, 1e-9, 1e-15, 1e-30])
@pytest.mark.parametrize("name, n", [("softmax", 2000), ("tanh", 500)])
@pytest.mark.parametrize("seed", [0, 2])
def test_inputs_far_below_unit_scale_are_stepped_at_their_scale(name, n, s_in, s_out, seed):
    fn, vjp, x = _tiny(name, np.random.default_rng(seed), n, s_in, s_out)
    right = check_vjp(fn, vjp, (x,), mode="fast", seed=seed)
    assert right.status == "passed", str(right)
    assert right.input("x").sensitivity < 1e-8, str(right)
    # Covered by the projections, not by the exhaustive fallback of "errors everywhere".
    assert right.context["fn evaluations"] < 1000, str(right)
    j = _typical(fn, vjp, x, seed)
    wrong = check_vjp(fn, _planted(vjp, j, 1e-7), (x,), mode="fast", seed=seed)
    assert wrong.status == "failed", str(wrong)
    at = tuple(int(i) for i in np.unravel_index(j, x.shape))
    assert at in [e.index for e in wrong.inputs[0].worst if not e.passed], str(wrong)


def _owned_kink(kind, rng, n, scale, d):
    """An elementwise op with one kink ``d`` of the scale from ``x_j``, the rest far away."""
    j = int(rng.integers(n))
    x = rng.normal(size=n) * scale
    c = x + 10.0 * scale * np.sign(rng.normal(size=n))
    c[j] = x[j] - d * scale
    if kind == "abs":

        def fn(x):
            return np.tanh(x / scale) * scale + 0.5 * np.abs(x - c)

        def vjp(g, x):
            return g * (1 - np.tanh(x / scale) ** 2 + 0.5 * np.sign(x - c))

    else:  # relu

        def fn(x):
            return np.sin(x / scale) * scale + np.maximum(x - c, 0)

        def vjp(g, x):
            return g * (np.cos(x / scale) + (x > c))

    return x, j, fn, vjp


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("d", [1e-6, 1e-5])
@pytest.mark.parametrize("n", [40, 3000])
@pytest.mark.parametrize("kind", ["abs", "relu"])
def test_a_kink_one_element_owns_does_not_hold_the_projections_step(kind, n, d, scale):
    for seed in range(2):
        x, j, fn, vjp = _owned_kink(kind, np.random.default_rng(100 + seed), n, scale, d)
        right = check_vjp(fn, vjp, (x,), mode="fast", seed=seed)
        assert right.status == "passed", str(right)
        # Held at the kink's distance, the projections resolved 1e-6 .. 2e-5 here.
        assert right.input("x").sensitivity < 1e-8, str(right)
        assert "next to a kink" in right.context["oracles"], str(right)
        wrong = check_vjp(fn, _planted(vjp, j, 1e-6), (x,), mode="fast", seed=seed)
        assert wrong.status == "failed", str(wrong)
        assert [e.index for e in wrong.inputs[0].worst if not e.passed] == [(j,)], str(wrong)
