"""Adversarial numerics: the verdict at every scale, precision, size and kink (round 17).

Each test is a class of hard input, built here at several sizes, scales and
seeds: units of 1e-12 to 1e12 in the outputs and 1e-9 to 1e9 in the inputs
(together), magnitudes 24 decades apart within one output, functions that
compute in float32, float16 or bfloat16, tangents and HVP vectors of mixed
scales at kinks, vectors along which no check can fail, and structured
errors (swapped entries, a sign flip, everything off by 1e-7) in fast mode
at sizes where it is the default. A correct derivation must never fail; a
planted error above the sensitivity the report states must; a check that
could not have failed must not say ``ok``.

The one class the fuzzing pass found wrong verdicts in, ``fn`` rounding its
*input* to a coarse grid (float32 near a large offset), is recorded as a
strict xfail at the end (README, known limits).
"""

import ml_dtypes
import numpy as np
import pytest

from oracles import check_hvp, check_jvp, check_vjp

SCALES = [(s, t) for s in (1e-12, 1.0, 1e12) for t in (1e-9, 1.0, 1e9)]


def _scaled_sin(s, t):
    """``s sin(x / t)`` and its derivative: output scale ``s``, input scale ``t``."""
    return (lambda x: s * np.sin(x / t)), (lambda x: (s / t) * np.cos(x / t))


def _typical(g, rng, k=1):
    """``k`` distinct indices of elements of typical size (within 2x of the median |g|)."""
    a = np.abs(g)
    med = np.median(a)
    pool = np.flatnonzero((a > 0.5 * med) & (a < 2.0 * med))
    return rng.choice(pool, k, replace=False)


def _planted(g, rng):
    """Wrong gradients built from the right one ``g``: one element, a swap, a sign, all."""
    i, j = _typical(g, rng, 2)
    one = g.copy()
    one[i] *= 1.0 + 1e-6
    swap = g.copy()
    swap[i], swap[j] = g[j], g[i]
    sign = g.copy()
    sign[i] = -sign[i]
    return {"one 1e-6": one, "swap": swap, "sign": sign, "all 1e-7": g * (1.0 + 1e-7)}


def _fixed(w):
    return lambda c, x: w.copy()


@pytest.mark.parametrize(("s", "t"), SCALES)
@pytest.mark.parametrize(("n", "mode"), [(7, "exhaustive"), (60, "exhaustive"), (60, "fast")])
def test_the_units_do_not_change_the_verdict(s, t, n, mode):
    """Output scales 1e-12..1e12 with input scales 1e-9..1e9: same verdicts, same sensitivity."""
    f, df = _scaled_sin(s, t)
    for seed in (0, 1):
        rng = np.random.default_rng(100 * seed + n)
        x = t * rng.normal(size=n)
        c = rng.normal(size=n)
        g = c * df(x)
        right = check_vjp(f, lambda cc, xx: cc * df(xx), (x,), direction=c, mode=mode, seed=seed)
        assert right.ok, right
        assert right.inputs[0].sensitivity < 1e-7, right
        for label, w in _planted(g, rng).items():
            if label == "all 1e-7" and mode == "fast":
                continue  # below fast mode's projections at 60 elements; exhaustive catches it
            r = check_vjp(f, _fixed(w), (x,), direction=c, mode=mode, seed=seed)
            assert r.status == "failed", (label, r)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    ("s", "t"), [(1e-12, 1e-9), (1e12, 1e9), (1e-12, 1e9), (1e12, 1e-9), (1.0, 1.0)]
)
def test_fast_mode_at_its_default_sizes_catches_structured_errors(s, t, seed):
    """Above 5,000 elements (fast by default): swaps, a sign flip, one element, all elements."""
    f, df = _scaled_sin(s, t)
    rng = np.random.default_rng(seed)
    x = t * rng.normal(size=6000)
    c = rng.normal(size=6000)
    g = c * df(x)
    right = check_vjp(f, lambda cc, xx: cc * df(xx), (x,), direction=c, seed=seed)
    assert right.ok, right
    for label, w in _planted(g, rng).items():
        r = check_vjp(f, _fixed(w), (x,), direction=c, seed=seed)
        assert r.status == "failed", (label, r)


@pytest.mark.parametrize("n", [8000, 20000])
def test_exp_over_sixty_decades_in_fast_mode(n):
    """exp over [-30, 30]: gradients 26 decades apart, each wrong gradient fails."""
    rng = np.random.default_rng(n)
    x = rng.uniform(-30.0, 30.0, n)
    c = rng.normal(size=n)
    g = c * np.exp(x)
    right = check_vjp(np.exp, lambda cc, xx: cc * np.exp(xx), (x,), direction=c, seed=1)
    assert right.ok, right
    for label, w in _planted(g, rng).items():
        r = check_vjp(np.exp, _fixed(w), (x,), direction=c, seed=1)
        assert r.status == "failed", (label, r)


@pytest.mark.parametrize("n", [8, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_magnitudes_far_apart_within_one_output(n, seed):
    """Outputs of 1e-12 next to 1e12: a relative 1e-6 in a tiny element fails, per element."""
    w = np.where(np.arange(n) % 2 == 0, 1e-12, 1e12)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    c = rng.normal(size=n)

    def f(x):
        return w * np.tanh(x)

    def vjp(cc, xx):
        return cc * w / np.cosh(xx) ** 2

    assert check_vjp(f, vjp, (x,), direction=c, mode="exhaustive", seed=seed).ok
    assert check_vjp(f, vjp, (x,), direction=c, mode="fast", seed=seed).ok
    g = vjp(c, x)
    for k in (2 * rng.integers(n // 2), 2 * rng.integers(n // 2) + 1):  # a tiny one, a huge one
        bad = g.copy()
        bad[k] *= 1.0 + 1e-6
        r = check_vjp(f, _fixed(bad), (x,), direction=c, mode="exhaustive", seed=seed)
        assert r.status == "failed", (k, r)


REDUCED = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}


def _inside(kind, name):
    dt = REDUCED[kind]
    if name == "tanh":
        return (lambda x: np.tanh(x.astype(dt)).astype(np.float64)), (lambda x: 1 / np.cosh(x) ** 2)
    # a float32 intermediate, rounded to the reduced type at the end, times 3 in float64
    return (
        (lambda x: np.exp(x.astype(np.float32)).astype(dt).astype(np.float64) * 3.0),
        (lambda x: 3.0 * np.exp(x)),
    )


@pytest.mark.parametrize("kind", list(REDUCED))
@pytest.mark.parametrize("name", ["tanh", "exp"])
@pytest.mark.parametrize(("n", "mode"), [(9, "exhaustive"), (80, "exhaustive"), (80, "fast")])
def test_reduced_precision_inside_never_fails_a_correct_vjp(kind, name, n, mode):
    """float32, float16 and bfloat16 inside fn: a correct VJP passes or is inconclusive."""
    f, df = _inside(kind, name)
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=n)
        r = check_vjp(f, lambda c, xx: c * df(xx), (x,), mode=mode, seed=seed)
        assert r.status != "failed", r
        if r.status == "inconclusive":
            assert r.inconclusive and r.advice, r  # it says why, and what to do


@pytest.mark.parametrize("n", [9, 80])
def test_float32_inside_still_catches_errors_above_its_noise(n):
    """A float32 tanh: 1e-2 off in one element fails where the report says 1e-4 is caught."""
    f, df = _inside("float32", "tanh")
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=n)
        right = check_vjp(f, lambda c, xx: c * df(xx), (x,), mode="exhaustive", seed=seed)
        if right.status != "passed" or not right.inputs[0].sensitivity < 1e-3:
            continue
        k = (7 * seed) % n

        def bad(c, xx, k=k):
            out = c * df(xx)
            out[k] *= 1.01
            return out

        assert check_vjp(f, bad, (x,), mode="exhaustive", seed=seed).status == "failed"


def _kinked_point(rng, n, at):
    x = rng.normal(size=n)
    x[rng.random(n) < 0.3] = at
    x[0] = at
    return x


def _tangents(rng, n):
    sparse = np.where(rng.random(n) < 0.2, rng.normal(size=n), 0.0)
    sparse[1] = 1.0
    return {
        "normal": rng.normal(size=n),
        "mixed": rng.normal(size=n) * 10.0 ** rng.uniform(-8, 8, n),
        "sparse": sparse,
    }


@pytest.mark.parametrize("n", [6, 40, 120])
@pytest.mark.parametrize("seed", [0, 1])
def test_jvp_at_kinks_with_tangents_of_mixed_scales(n, seed):
    """ReLU and abs at exact kinks: correct JVPs pass, one element off by 1e-3 fails."""
    rng = np.random.default_rng(seed)
    x = _kinked_point(rng, n, 0.0)
    for label, t in _tangents(rng, n).items():
        for f, good in (
            (lambda x: np.maximum(x, 0.0), lambda t_, x_: np.where(x_ > 0, t_, 0.0)),
            (np.abs, lambda t_, x_: np.sign(x_) * t_),
        ):
            assert check_jvp(f, good, (x,), direction=t, seed=seed).status != "failed", label
            moved = good(t, x)
            live = np.flatnonzero((x != 0) & (moved != 0))
            if not live.size:
                continue
            j = live[np.argmax(np.abs(moved[live]))]

            def bad(t_, x_, good=good, j=j):
                out = good(t_, x_)
                out[j] *= 1.001
                return out

            assert check_jvp(f, bad, (x,), direction=t, seed=seed).status == "failed", label


def _huber(x):
    return np.sum(np.where(np.abs(x) <= 1.0, 0.5 * x**2, np.abs(x) - 0.5))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("n", [6, 40, 300])
@pytest.mark.parametrize("seed", [0, 1])
def test_hvp_at_kinks_and_of_tiny_losses(n, seed):
    """A Huber loss on its kinks |x| = 1 and a loss of 1e-9 exp(3x): vectors of mixed scales."""
    rng = np.random.default_rng(seed)
    x = _kinked_point(rng, n, 1.0)
    y = rng.normal(size=n)
    for label, v in _tangents(rng, n).items():
        right = check_hvp(
            _huber, lambda v_, x_: (np.abs(x_) < 1) * v_, (x,), direction=v,
            grad=lambda x_: np.clip(x_, -1.0, 1.0), seed=seed,
        )  # fmt: skip
        assert right.status != "failed", (label, right)
        live = np.flatnonzero((np.abs(x) < 1) & (v != 0))
        if live.size:
            j = live[np.argmax(np.abs(v[live]))]

            def bad(v_, x_, j=j):
                out = (np.abs(x_) < 1) * v_
                out[j] *= 1.001
                return out

            r = check_hvp(
                _huber, bad, (x,), direction=v, grad=lambda x_: np.clip(x_, -1.0, 1.0), seed=seed
            )
            assert r.status == "failed", (label, r)

        def loss(x_):
            return 1e-9 * np.sum(np.exp(3.0 * x_))

        def grad(x_):
            return 3e-9 * np.exp(3.0 * x_)

        def hvp(v_, x_):
            return 9e-9 * np.exp(3.0 * x_) * v_

        assert check_hvp(loss, hvp, (y,), direction=v, grad=grad, seed=seed).ok, label
        j = int(np.argmax(np.abs(v)))

        def hvp_bad(v_, x_, j=j):
            out = hvp(v_, x_)
            out[j] *= 1.0 + 1e-6
            return out

        r = check_hvp(loss, hvp_bad, (y,), direction=v, grad=grad, seed=seed)
        assert r.status == "failed", (label, r)


@pytest.mark.parametrize("n", [5, 60])
def test_vectors_along_which_nothing_can_fail(n):
    """All-zero cotangents, tangents and HVP vectors are never ok; tiny ones still judge."""
    x = np.random.default_rng(n).normal(size=n)
    g = lambda c, x_: c * np.cos(x_)  # noqa: E731
    zero = np.zeros(n)
    for mode in ("exhaustive", "fast"):
        for vjp in (g, lambda c, x_: 0.0 * c):
            r = check_vjp(np.sin, vjp, (x,), direction=zero, mode=mode)
            assert not r.ok and r.status == "inconclusive" and r.inconclusive, r
    for jvp in (lambda t, x_: t * np.cos(x_), lambda t, x_: 0.0 * t):
        r = check_jvp(np.sin, jvp, (x,), direction=zero)
        assert not r.ok and r.inconclusive, r
    loss = lambda x_: np.sum(np.sin(x_))  # noqa: E731
    for hvp in (lambda v, x_: -np.sin(x_) * v, lambda v, x_: 0.0 * v):
        r = check_hvp(loss, hvp, (x,), direction=zero, grad=np.cos)
        assert not r.ok and r.inconclusive, r
    for size in (1e-300, 1e300):
        d = np.full(n, size)
        assert check_vjp(np.sin, g, (x,), direction=d).ok
        r = check_vjp(np.sin, lambda c, x_: c * np.cos(x_) * (1 + 1e-6), (x,), direction=d)
        assert r.status == "failed"
        assert check_jvp(np.sin, lambda t, x_: t * np.cos(x_), (x,), direction=d).ok
        r = check_jvp(np.sin, lambda t, x_: t * np.cos(x_) * (1 + 1e-6), (x,), direction=d)
        assert r.status == "failed"
        assert check_hvp(loss, lambda v, x_: -np.sin(x_) * v, (x,), direction=d, grad=np.cos).ok
        r = check_hvp(
            loss, lambda v, x_: -np.sin(x_) * v * (1 + 1e-6), (x,), direction=d, grad=np.cos
        )
        assert r.status == "failed"


def _rounds_its_input(offset):
    """``sin(x + offset)`` with the sum in float32: ``x`` is resolved to ulp(offset) only."""
    return lambda x: np.sin(x.astype(np.float32) + np.float32(offset)).astype(np.float64)


@pytest.mark.xfail(
    strict=True,
    reason="fn rounds its input to a coarse grid (float32 near a large offset): the step "
    "ladder takes steps below the grid for a zero derivative and does not model the input's "
    "rounding in its error estimates, so correct VJPs fail in exhaustive mode",
)
def test_fn_that_rounds_its_input_to_float32_near_a_large_offset():
    """Correct VJPs (and JVPs) of sin(float32(x) + c), c in 3e2..1e5, must not fail.

    Found by the round-17 fuzzing pass: 29 of 72 exhaustive checks failed a
    correct VJP on this grid (offsets 3e2, 1e3, 1e4, 1e5; 20, 80 and 300
    elements; 6 seeds), and 0 of 72 in fast mode. The outputs are float32
    values known to 6e-8, but ``x`` is resolved to ulp(c) only (2^-10 at
    1e4): steps below half of it change nothing (read as a derivative of 0),
    and those a few quanta above it carry an error of ``ulp(c) / step`` that
    the noise model, which measures the outputs' rounding, does not see.
    """
    failed = []
    for offset in (1e3, 1e4, 1e5):
        f = _rounds_its_input(offset)
        for n, seed in ((20, 2), (80, 0), (80, 4)):
            x = np.random.default_rng(seed).normal(size=n)
            vjp = lambda g, x_, c=offset: g * np.cos(x_ + c)  # noqa: E731
            jvp = lambda t, x_, c=offset: t * np.cos(x_ + c)  # noqa: E731
            r = check_vjp(f, vjp, (x,), mode="exhaustive", seed=seed)
            j = check_jvp(f, jvp, (x,), seed=seed)
            failed += [(offset, n, seed, k) for k, rep in (("vjp", r), ("jvp", j)) if not rep.ok]
    assert not failed, failed


def _tanh_slope_f32(x):
    """``1 - tanh(x)^2`` in float32: at ``|x| ~ 8`` a few units of ``2^-24``, by cancellation."""
    return (1.0 - np.tanh(x.astype(np.float32)) ** 2).astype(np.float64)


def _tanh_curvature(x):
    return -2.0 * np.tanh(x) * (1.0 - np.tanh(x) ** 2)


def _saturated_point(scale, n, seed):
    """Normal inputs times ``scale``, kept where float32's tanh is not exactly +-1."""
    return np.clip(np.random.default_rng(seed).normal(size=n) * scale, -8.5, 8.5)


def _off_at_median(h, rel):
    k = int(np.argsort(np.abs(h))[h.size // 2])
    h = h.copy()
    h[k] *= 1.0 + rel
    return h


@pytest.mark.parametrize("scale", [2.0, 3.0])
@pytest.mark.parametrize("n", [10, 40, 100])
def test_hvp_of_a_float32_gradient_at_saturation(scale, n):
    """A correct float64 HVP of sum(tanh) whose ``grad=`` computes in float32, |x| up to 8.5.

    The float32 gradient there is 0 to 3 units of ``2^-24`` (values of a few
    bits, cancelled from 1): it is known to that spacing, not to its own
    unit. Before round 17 the steps below one unit read as a derivative of 0
    within 1e-10, and 11 of 48 checks (inputs of scale 2 and 3; 10, 40, 100
    elements; 8 seeds) failed a correct HVP. A median element off by 1% fails.
    """

    def loss(x):
        return float(np.sum(np.tanh(x.astype(np.float32))))

    def hvp(v, x):
        return _tanh_curvature(x) * v

    for seed in range(4):
        x = _saturated_point(scale, n, seed)
        r = check_hvp(loss, hvp, (x,), grad=_tanh_slope_f32, seed=seed)
        assert r.status != "failed", r
        v = np.random.default_rng(99).normal(size=n)
        bad = _off_at_median(hvp(v, x), 1e-2)
        r = check_hvp(loss, _fixed(bad), (x,), direction=v, grad=_tanh_slope_f32, seed=seed)
        assert r.status == "failed", r


@pytest.mark.parametrize("scale", [2.0, 3.0])
@pytest.mark.parametrize("n", [10, 40, 100])
def test_float32_outputs_cancelled_from_one(scale, n):
    """VJP (both modes) and JVP of ``1 - tanh(x)^2`` in float32 near saturation.

    Before round 17: 5 of 24 exhaustive VJP checks and 6 of 24 JVP checks failed a correct
    derivative on this grid (4 seeds); now none, and a median element off by 1% fails.
    """
    for seed in range(4):
        x = _saturated_point(scale, n, seed)
        for mode in ("exhaustive", "fast"):
            r = check_vjp(
                _tanh_slope_f32, lambda g, x_: g * _tanh_curvature(x_), (x,), mode=mode, seed=seed
            )
            assert r.status != "failed", (mode, r)
        r = check_jvp(_tanh_slope_f32, lambda t, x_: t * _tanh_curvature(x_), (x,), seed=seed)
        assert r.status != "failed", r
        c = np.random.default_rng(5).normal(size=n)
        bad = _off_at_median(c * _tanh_curvature(x), 1e-2)
        r = check_vjp(_tanh_slope_f32, _fixed(bad), (x,), direction=c, mode="exhaustive")
        assert r.status == "failed", r
