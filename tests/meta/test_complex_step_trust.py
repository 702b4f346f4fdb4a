"""The complex-step oracle trusts ``fn`` only after testing it, and never leaks global state.

A complex-step reference of a function that is not complex-analytic is
wrong, and it approves a VJP that is wrong the same way: the naive
complex-step VJP ``Im fn(x + i h e_j) / h``, computed here by brute force,
is the VJP such a reference would approve. For every construction below
(``np.real`` inside, ``np.abs``, ``np.conj``, ``np.maximum`` and sorts at
ties, casts) at several sizes, input patterns and 40 seeds, that VJP is
wrong (the numeric oracle fails it) and ``against="complex"`` refuses the
function with :class:`~oracles.errors.InvalidArgument`: it never approves.
The constant and integer-grid inputs are where a single ``+-1`` direction
used to be fooled (a discrepancy ``e`` with equal entries cancels whenever
the direction is balanced, 6 times in 16 at 4 elements). Analytic functions
(tanh, exp, softmax, log-softmax, matmul chains) still pass with the right
VJP and fail with a planted one.
"""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import pytest

from oracles import check_vjp, complex_step_vjp
from oracles.errors import InvalidArgument
from oracles.numerics import complex_step
from oracles.numerics.complex_step import N_DIRECTIONS, complex_step_reference

SEEDS = range(40)
H = 1e-30


def naive_complex_step_vjp(fn):
    """The VJP a complex-step reference of ``fn`` would approve: Im fn(x + ih e_j) / h."""

    def vjp(g, *xs):
        grads = []
        for k, x in enumerate(xs):
            out = np.zeros(np.shape(x))
            for j in range(out.size):
                zs = [np.array(a, dtype=np.complex128) for a in xs]
                zs[k].reshape(-1)[j] += 1j * H
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", np.exceptions.ComplexWarning)  # the casts
                    im = np.imag(np.asarray(fn(*zs)))
                out.reshape(-1)[j] = np.vdot(np.ravel(g), im.ravel()) / H
            grads.append(out)
        return grads[0] if len(xs) == 1 else tuple(grads)

    return vjp


def _softmax_real_denominator(x):
    e = np.exp(x)
    return e / np.sum(np.exp(np.real(x)), axis=-1, keepdims=True)


def _one_element_through_real(x):
    # Only element 0 goes through np.real, weakly: the complex step is off there by
    # 1e-6 (x - 3) / tanh'(x), at least 1e-6 relative.
    w = np.zeros(x.shape)
    w.reshape(-1)[0] = 1e-6
    return np.tanh(x) + w * (x - 3.0) * np.real(x - 3.0)


def _sorted(x):
    return np.sort(x, axis=-1) * np.arange(1.0, x.shape[-1] + 1.0)


def _cast_to_float(x):
    return np.tanh(np.asarray(x, dtype=np.float64))


def _cast_to_float32(x):
    return np.tanh(x.astype(np.float32)).astype(np.float64) + 0 * x


# name -> (fn, how the inputs are drawn): "normal", "constant", "grid", "ties" (half zeros, ties)
NOT_ANALYTIC = {
    "x * real(x)": (lambda x: x * np.real(x), "normal"),
    "sum(x * real(x))": (lambda x: np.sum(x * np.real(x)), "constant"),
    "tanh(x) + 0.3 real(x)^2": (lambda x: np.tanh(x) + 0.3 * np.real(x) ** 2, "normal"),
    "exp(real(x)) * x": (lambda x: np.exp(np.real(x)) * x, "grid"),
    "softmax, real in the denominator": (_softmax_real_denominator, "constant"),
    "one element through real, 1e-6": (_one_element_through_real, "normal"),
    "x * abs(x)": (lambda x: x * np.abs(x), "grid"),
    "sum(x * abs(x))": (lambda x: np.sum(x * np.abs(x)), "constant"),
    "x^2 + conj(x)": (lambda x: x * x + np.conj(x), "normal"),
    "sum(x^2 + conj(x))": (lambda x: np.sum(x * x + np.conj(x)), "grid"),
    "maximum(x, 0) at 0": (lambda x: np.maximum(x, 0.0) * (1.0 + 0.5 * x), "ties"),
    "maximum(x, x / 2) at 0": (lambda x: np.sum(np.maximum(x, 0.5 * x)), "ties"),
    "sort at ties": (_sorted, "ties"),
    "cast to float": (_cast_to_float, "normal"),
    "cast to float32": (_cast_to_float32, "normal"),
}


def _inputs(kind, seed):
    """Inputs of 1 to 40 elements (the size and shape follow the seed).

    None of them sits where the construction happens to be analytic after all
    (``exp(real(x)) * x`` at 0, a sort of one element).
    """
    rng = np.random.default_rng(seed)
    shape = [(4,), (1,), (3, 4), (40,), (2, 6)][seed % 5]
    if kind == "constant":
        return np.full(shape, [1.0, 0.5, -2.0][seed % 3])
    if kind == "grid":  # half-integers from -2.5 to 3.5: no zeros
        return (np.arange(np.prod(shape), dtype=float).reshape(shape) % 5) - 2.5 + (seed % 3)
    if kind == "ties":  # half zeros: ties with each other, and with 0
        x = rng.standard_normal(shape if shape != (1,) else (3,))
        x.reshape(-1)[::2] = 0.0
        return x
    return rng.standard_normal(shape)


@pytest.mark.parametrize("name", list(NOT_ANALYTIC))
def test_a_function_that_is_not_analytic_is_refused_and_its_wrong_vjp_never_approved(name):
    fn, kind = NOT_ANALYTIC[name]
    vjp = naive_complex_step_vjp(fn)
    shown_wrong = 0
    for seed in SEEDS:
        x = _inputs(kind, seed)
        against = "complex" if seed % 2 else ("numeric", "complex")
        with pytest.raises(InvalidArgument, match="complex-safe fn"):
            check_vjp(fn, vjp, (x,), against=against, seed=seed)
        if kind != "ties" and seed < 5:
            # The VJP a trusting oracle would approve is wrong: the numeric oracle fails it.
            # (At ties it can be a valid subgradient, which the numeric oracle accepts.)
            shown_wrong += not check_vjp(fn, vjp, (x,), seed=seed).ok
    assert kind == "ties" or shown_wrong == 5


def test_ties_are_refused_by_the_homogeneity_test():
    # np.maximum and sort pick by imaginary part at tied real parts: Im fn is not odd in h.
    for fn in (lambda x: np.maximum(x, 0.0), _sorted):
        for seed in range(10):
            x = _inputs("ties", seed)
            if x.size == 1:
                x = np.zeros(3)
            with pytest.raises(InvalidArgument, match="odd and linear in the imaginary step"):
                complex_step_reference(fn, [x], np.ones(np.shape(fn(x))), seed=seed)


def test_structured_discrepancies_are_refused_by_the_real_comparison():
    # sum(x * real(x)) at a constant x: a discrepancy with equal entries (the +-1 blind spot).
    fn = NOT_ANALYTIC["sum(x * real(x))"][0]
    for seed in SEEDS:
        with pytest.raises(InvalidArgument, match="disagrees with real central differences"):
            complex_step_reference(fn, [np.ones(4)], np.ones(()), seed=seed)


@pytest.mark.parametrize("n", [3, 12, 40, 300])
def test_a_sparse_weak_discrepancy_in_any_one_element_is_refused(n):
    # One element goes through np.real with weight 1e-7: the complex step is off by 1e-7
    # relative there only. Directions over all n elements may not resolve that; the
    # per-element check does, wherever the element is.
    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(n)
        j = int(rng.integers(n))
        w = np.zeros(n)
        w[j] = 1e-7

        def fn(x, w=w):
            return np.tanh(x) + w * (x - 3.0) * np.real(x - 3.0)

        with pytest.raises(InvalidArgument, match="complex-safe fn"):
            complex_step_reference(fn, [x], rng.standard_normal(n), seed=seed)
        # ... while the same function without the np.real is trusted.
        complex_step_reference(lambda x, w=w: np.tanh(x) + w * (x - 3.0) ** 2, [x], np.ones(n))


def _softmax(x):
    e = np.exp(x - np.max(np.real(x), axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_vjp(g, x):
    a = _softmax(x)
    return a * (g - np.sum(g * a, axis=-1, keepdims=True))


def _log_softmax(x):
    m = np.max(np.real(x), axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _log_softmax_vjp(g, x):
    return g - _softmax(x) * np.sum(g, axis=-1, keepdims=True)


_RNG = np.random.default_rng(2024)
_W1, _W2 = _RNG.standard_normal((6, 5)), _RNG.standard_normal((5, 3))


def _chain(x):
    return np.tanh(np.tanh(x @ _W1) @ _W2)


def _chain_vjp(g, x):
    h = np.tanh(x @ _W1)
    d2 = g * (1 - np.tanh(h @ _W2) ** 2)
    return (d2 @ _W2.T * (1 - h**2)) @ _W1.T


ANALYTIC = {
    "tanh": (np.tanh, lambda g, x: g / np.cosh(x) ** 2, (12,), 1.0),
    "exp": (np.exp, lambda g, x: g * np.exp(x), (3, 4), 3.0),
    "softmax": (_softmax, _softmax_vjp, (4, 5), 5.0),
    "log_softmax": (_log_softmax, _log_softmax_vjp, (3, 7), 50.0),
    "matmul chain": (_chain, _chain_vjp, (4, 6), 1.0),
    "sum of a cubic": (
        lambda x: np.sum(x**3 - 2 * x**2 + x),
        lambda g, x: g * (3 * x**2 - 4 * x + 1),
        (9,),
        2.0,
    ),
}


@pytest.mark.parametrize("name", list(ANALYTIC))
def test_analytic_functions_still_pass_and_planted_mistakes_still_fail(name):
    fn, vjp, shape, scale = ANALYTIC[name]

    def planted(g, x):
        d = np.array(vjp(g, x))
        d.reshape(-1)[d.size // 2] *= 1 + 1e-9
        return d

    for seed in range(20):
        x = scale * np.random.default_rng(seed).standard_normal(shape)
        report = check_vjp(fn, vjp, (x,), against="complex", seed=seed)
        assert report.ok, str(report)
        if seed % 5 == 0:
            report = check_vjp(fn, planted, (x,), against="complex", seed=seed)
            assert not report.ok and report.failed_inputs == ["x"], str(report)


def test_the_tests_look_at_several_directions_and_every_element():
    assert N_DIRECTIONS >= 3
    calls = []

    def counted(x):
        calls.append(np.iscomplexobj(x))
        return np.tanh(x)

    n = 50
    complex_step_reference(counted, [np.linspace(-1, 1, n)], np.ones(n))
    n_complex = sum(calls)
    # One complex call per element, the real-part check, and 3 per direction (h, 2h, -h).
    assert n_complex == n + 1 + 3 * N_DIRECTIONS
    # Real calls: the directions' ladders and at least 2 per element (the exhaustive screen).
    assert len(calls) - n_complex >= 2 * n + 2 * N_DIRECTIONS


# --- global state: warnings filters, from many threads at once --------------------------------


def test_concurrent_complex_checks_leave_the_warnings_filters_exactly_as_they_were():
    x0 = np.linspace(-1.0, 1.0, 60)
    errors, results = [], []
    n_threads = 8
    barrier = threading.Barrier(n_threads)

    def work(k):
        try:
            barrier.wait()
            for _ in range(3):
                x = x0 + 0.1 * k
                r = check_vjp(np.tanh, lambda g, x: g / np.cosh(x) ** 2, (x,), against="complex")
                results.append(r.ok)
                with pytest.raises(InvalidArgument):
                    complex_step_vjp(lambda x: x * np.real(x), (x,), np.ones(x.shape))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    interval = sys.getswitchinterval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the caller's own filter
        before = list(warnings.filters)
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: expose interleaving
        try:
            threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
        after = list(warnings.filters)
        assert not errors, errors
        assert results == [True] * (3 * n_threads)
        assert after == before
        # A ComplexWarning in the caller's own code is still a warning, not an error.
        with pytest.warns(np.exceptions.ComplexWarning):
            np.array([1 + 1j]).astype(np.float64)


def test_the_lock_is_reentrant():
    # An fn that itself runs a complex-step check (same thread) must not deadlock.
    def fn(x):
        complex_step_vjp(np.sin, (np.array([0.3]),), np.ones(1))
        return np.tanh(x)

    assert complex_step._WARNINGS_LOCK.acquire(timeout=1)
    try:
        (g,) = complex_step_vjp(fn, (np.array([0.1, 0.2]),), np.ones(2))
    finally:
        complex_step._WARNINGS_LOCK.release()
    np.testing.assert_allclose(g, 1 / np.cosh([0.1, 0.2]) ** 2, rtol=1e-14)


@pytest.mark.parametrize("scale", [1e-298, 1e-200, 1.0, 1e200])
def test_cotangents_of_any_magnitude_neither_underflow_nor_refuse(scale):
    # Im fn(x + ih e_j) ~ h f' = 1e-30 f': contracted with a cotangent of 1e-298 first, the
    # product would underflow to 0 and the (right) function would be refused.
    x = np.array([1.0, -0.5, 2.0])
    cot = scale * np.array([2.75, -1.0, 0.5])
    (g,) = complex_step_vjp(lambda x: x * x, (x,), cot)
    np.testing.assert_allclose(g, 2.0 * x * cot, rtol=1e-14, atol=0)
