"""Functions that vary on a scale far below the magnitude of their inputs (issue 13).

``sin(x)`` at ``x ~ 1e14`` varies on a scale of 1 where float64 inputs are
1/64 apart; ``tanh(x - c)`` and a positional-encoding style ``sin(w p) +
cos(0.3 w p)`` at positions ``p ~ c`` likewise. The noise probe's steps
follow the magnitude of the elements, so at its steps these functions
oscillate: its larger steps see phases advancing modulo ``2 pi`` (which can
look calm), and every step of a ladder far above the scale of 1 sees
quotients of about 0 that agree with each other. The claims, at several
offsets, sizes and seeds, in both modes:

* a correct VJP never fails (where the numerics cannot resolve the function
  the check is inconclusive);
* one element off by a relative 1e-3 never passes;
* where the inputs still resolve the function well (offsets up to ``1e6``) a
  correct VJP passes.

``tanh(x - c)`` at ``c > 1e12`` is a known limit (README): its transition is
narrower than every step of the ladder but the last few, which the inputs'
spacing leaves too few to settle, and a correct VJP fails (strict xfail). At
``c = 1e12`` it failed 3 of 30 exhaustive checks (sizes 12/50/200, seeds 0-9)
until round 17's quarter-step noise check; now none.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp
from oracles.numerics.objective import element_scales, measure_noise


def _sin(c, rng, n):
    x = c + rng.normal(size=n)
    return x, np.sin, lambda g, x: g * np.cos(x)


def _tanh(c, rng, n):
    x = c + 2.0 * rng.normal(size=n)
    return x, lambda x: np.tanh(x - c), lambda g, x: g * (1.0 - np.tanh(x - c) ** 2)


def _encoding(c, rng, n):
    # Integer positions, as a positional encoding gets them: many ties among them.
    x = np.round(c + rng.uniform(0.0, 100.0, size=n))

    def fn(x):
        return 0.5 * np.sin(x) + np.cos(0.3 * x)

    def vjp(g, x):
        return g * (0.5 * np.cos(x) - 0.3 * np.sin(0.3 * x))

    return x, fn, vjp


FAMILIES = {"sin": _sin, "tanh": _tanh, "encoding": _encoding}


def _planted(vjp, rel):
    def wrong(g, x):
        d = np.array(vjp(g, x), dtype=np.float64)
        j = int(np.argsort(np.abs(d))[d.size // 2])  # a typical element
        d[j] *= 1.0 + rel
        return d

    return wrong


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("offset", [1e6, 1e9, 1e12, 1e14, 1e15, 1e16])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_correct_never_fails_and_a_planted_error_never_passes(request, family, offset, mode):
    if family == "tanh" and offset > 1e12:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="known limit (README): tanh(x - c) at c > 1e12, a transition narrower "
                "than every step but the last few, which the inputs' spacing leaves too few "
                "to settle: a correct VJP fails",
            )
        )
    for n, seed in ((12, 0), (50, 1), (200, 2), (12, 2)):
        x, fn, vjp = FAMILIES[family](offset, np.random.default_rng(seed), n)
        right = check_vjp(fn, vjp, (x,), seed=seed + 100, mode=mode)
        assert right.status != "failed", f"n={n} seed={seed}\n{right}"
        # Mode fast on tanh(x - c) at 1e6, 200 elements, is inconclusive (its projections
        # resolve nothing there; noticed, not fixed): it must not fail, as above.
        if offset <= 1e6 and not (family == "tanh" and mode == "fast"):
            assert right.status == "passed", f"n={n} seed={seed}\n{right}"
        wrong = check_vjp(fn, _planted(vjp, 1e-3), (x,), seed=seed + 100, mode=mode)
        assert wrong.status != "passed", f"n={n} seed={seed}\n{wrong}"


def test_the_probe_does_not_take_aliased_steps_for_calm_ones():
    """At 1e14 the probe's larger steps see ``sin`` at phases ``theta k mod 2 pi``: where
    a smaller step saw it oscillate, those do not count as calm, and the probe goes on
    below its smallest step until ``sin`` is smooth (a step near 1 of the input)."""
    x = 1e14 + np.random.default_rng(0).normal(size=50)
    noise = measure_noise(lambda a: np.sin(a[0]), [x], element_scales([x]))
    assert np.all(noise.calm * 1e14 < 10.0)
    assert np.all(np.isfinite(noise.wavy))
    assert np.all(noise.start_limit(turns=False) * 1e14 < 40.0)


def test_the_probe_reads_a_fn_that_oscillates_at_the_inputs_spacing_as_noise():
    """At 1e16 (inputs 2 apart) ``sin`` oscillates at every step the inputs allow: the
    size of that oscillation is its noise, so nothing is claimed to be resolved."""
    x = 1e16 + np.random.default_rng(1).normal(size=50) * 8.0
    noise = measure_noise(lambda a: np.sin(a[0]), [x], element_scales([x]))
    assert np.all(noise.detected)
    assert np.median(noise.sigma) > 0.1


def test_a_smooth_fn_is_probed_as_before():
    """No oscillation: no probe step below the usual ones, no limit on where ladders start."""
    x = np.random.default_rng(2).normal(size=200)
    noise = measure_noise(lambda a: np.tanh(a[0]) * 3.0, [x], element_scales([x]))
    assert noise.wavy is None
    assert noise.start_limit(turns=False) is None
