"""mode="fast", a gradient wrong everywhere: a wrong formula ends early, at a constant cost.

Constructions of our own: ``x / (1 + x^2)`` of every input (cheap at 1e5 elements),
concatenated, over 1 to 200
inputs, at 1e4 and 1e5 elements in all; every element off by 1% (a wrong
formula), or off by far less than ``rtol`` (tolerable errors, which must pass
after every disagreeing element is compared). The cost must not grow with the
number of inputs: at most about 3 evaluations per element plus a constant.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracles


def _problem(n, n_inputs, seed):
    rng = np.random.default_rng(seed)
    sizes = np.full(n_inputs, n // n_inputs)
    sizes[: n - sizes.sum()] += 1
    xs = tuple(rng.uniform(-1.5, 1.5, int(k)) for k in sizes)

    def fn(*xs):
        return np.concatenate([x / (1.0 + x * x) for x in xs])

    def vjp(g, *xs):
        out, o = [], 0
        for x in xs:
            out.append(g[o : o + x.size] * (1.0 - x * x) / (1.0 + x * x) ** 2)
            o += x.size
        return tuple(out) if len(out) > 1 else out[0]

    return xs, fn, vjp


def _scaled(vjp, factors):
    """The VJP with input ``i``'s gradient times ``factors[i]``."""

    def scaled(g, *xs):
        d = vjp(g, *xs)
        d = d if isinstance(d, tuple) else (d,)
        out = tuple(a * f for a, f in zip(d, factors, strict=True))
        return out if len(out) > 1 else out[0]

    return scaled


#: The constant: the projections, the search down to the level where it gives up, and
#: the sample's per-element ladders.
CONSTANT = 6000


@pytest.mark.parametrize(
    ("n", "n_inputs", "seed"),
    [(10**4, 1, 0), (10**4, 50, 1), (10**4, 200, 2), (10**5, 1, 3), (10**5, 20, 4)],
)
def test_a_wrong_formula_everywhere_fails_early_at_a_constant_cost(n, n_inputs, seed):
    xs, fn, vjp = _problem(n, n_inputs, seed)
    report = oracles.check_vjp(fn, _scaled(vjp, [1.01] * n_inputs), xs, mode="fast", seed=seed)
    assert report.status == "failed", str(report)
    assert any(note.startswith("a wrong formula, not a typo") for note in report.notes)
    evaluations = int(report.context["fn evaluations"])
    assert evaluations <= CONSTANT < 3 * n, evaluations
    checked = sum(r.checks["numeric"].n_checked for r in report.inputs)
    failed = sum(r.checks["numeric"].n_failed for r in report.inputs)
    assert 0 < failed <= checked < n  # a sample, all compared; the rest not counted


def test_a_wrong_formula_in_one_input_does_not_hide_a_tolerable_one_in_another():
    """Input 0 off by 1% (fails), input 1 off by 1e-9 relative with rtol 1e-7 (passes), 2 right."""
    xs, fn, vjp = _problem(3 * 4000, 3, 5)
    wrong = _scaled(vjp, [1.01, 1.0 + 1e-9, 1.0])
    report = oracles.check_vjp(fn, wrong, xs, mode="fast", seed=5, rtol=1e-7)
    assert report.failed_inputs == [report.inputs[0].name], str(report)
    for r in report.inputs[1:]:
        assert r.checks["numeric"].n_failed == 0
    tolerable = report.inputs[1].checks["numeric"]
    assert tolerable.n_checked == xs[1].size  # every element compared, none given up


@pytest.mark.parametrize(("n", "n_inputs", "seed"), [(8000, 1, 6), (4000, 20, 7)])
def test_tolerable_errors_everywhere_pass_after_every_disagreeing_element_is_compared(
    n, n_inputs, seed
):
    xs, fn, vjp = _problem(n, n_inputs, seed)
    report = oracles.check_vjp(
        fn, _scaled(vjp, [1.0 + 1e-9] * n_inputs), xs, mode="fast", seed=seed, rtol=1e-7
    )
    assert report.status == "passed", str(report)
    for r, x in zip(report.inputs, xs, strict=True):
        assert r.checks["numeric"].n_checked == x.size
