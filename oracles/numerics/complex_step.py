"""The complex-step derivative: a numeric VJP with no subtractive cancellation.

For a function that is analytic (complex-differentiable) in each input
element, the Taylor expansion along the imaginary axis gives::

    f(x + i h e_j) = f(x) + i h f'(x) e_j - h^2/2 f''(x) e_j^2 - i h^3/6 f'''(x) e_j^3 + ...

so ``Im f(x + i h e_j) / h = df/dx_j - h^2/6 f''' + ...``. No difference of
two nearly equal numbers is taken: ``h`` can be tiny (``1e-30``, the
default), the truncation term ``h^2 f'''`` vanishes, and the result is
accurate to a few ulp. One evaluation of ``fn`` per input element.

It only works when ``fn`` is complex-safe: written with operations that are
analytic and that NumPy evaluates in complex arithmetic (``+ - * /``,
``exp``, ``log``, ``log1p``, ``tanh``, ``matmul``, ``sum``, ``**``...). It is
wrong, silently, for code that is not: ``np.real`` and ``np.conj`` (they
drop or flip the imaginary part: ``x * np.real(x)`` has the complex-step
derivative ``x``, not ``2 x``), ``np.abs`` (the modulus of a complex number,
not an analytic function), ``np.maximum``/``np.max``/comparisons (NumPy
orders complex numbers by real part, then by imaginary part, so
``np.maximum(0 + ih, 0)`` picks ``ih`` and differentiates a kink
one-sidedly), ``np.where(x >= 0, ...)``, or any cast to float
(``np.asarray(x, dtype=float)`` drops the imaginary part with a
ComplexWarning). A wrong complex-step reference approves a VJP that is wrong
the same way, so ``fn`` is tested before it is trusted, and
:class:`~oracles.errors.InvalidArgument` refuses it when any test fails:

1. *Complex input.* ``fn`` runs on a complex copy of the inputs; it must not
   raise, warn that it discards the imaginary part, or return a real array;
   the real part at the unperturbed point must equal ``fn(*inputs)``, with
   imaginary part 0.
2. *Homogeneity in the step.* Along :data:`N_DIRECTIONS` independent
   Gaussian directions ``u``, ``Im fn(x + i c h u)`` must be ``c`` times
   ``Im fn(x + i h u)`` for each ``c`` of :data:`STEP_FACTORS` (2 and -1),
   output element by output element, to rounding. For an analytic ``fn``
   the imaginary part is odd and linear in ``h`` (the ``h^3`` term is
   ``1e-60`` relative), and scaling imaginary parts by a power of two or
   by -1 commutes with rounding. A comparison, ``np.maximum``, ``np.sign``
   or a sort at tied real parts breaks it.
3. *Real central differences along whole directions.* Along the same
   directions, the real step ladder's derivative of ``<cotangent, fn>``
   must equal the contracted complex-step gradient within the ladder's own
   error estimate plus the complex step's. Gaussian directions never
   cancel a structured discrepancy exactly (a ``+-1`` direction misses a
   discrepancy ``e`` with ``e_1 = e_2`` whenever ``u_1 = -u_2``: half the
   time), and all three miss one ``k`` times their error bar with
   probability about ``(0.8 / k)^3``.
4. *Every element on its own.* The numeric oracle's exhaustive check
   (``mode="exhaustive"``, :mod:`oracles.numerics.exhaustive`) runs with
   the complex-step gradient as the gradient under test: the elements with
   the largest gradient and some random ones get the full real step ladder
   (the spot checks), every other element a central difference at a step
   calibrated on them, and the ladder wherever that does not settle it.
   Each element must agree within both error estimates, and none may sit
   at a kink. So a discrepancy the numeric oracle would see in any one
   element, however sparse, is seen here.

Test 2 catches the branch switches that real differences average over;
tests 3 and 4 catch functions that are smooth along the real and the
imaginary axis but not analytic (``np.real``, ``np.conj``, ``np.abs`` away
from 0): their imaginary part is linear in ``h`` but is not ``h f'``. A
discrepancy below the real ladder's error estimate cannot be seen (about
1e-11 relative for smooth functions of unit scale, where the numeric
oracle's own limit is about the same).

Of the reference functions, ``tanh``, ``softmax``, ``log_softmax``,
``cross_entropy`` (logits), ``squared_error`` and ``affine`` are complex-safe
at points without ties in a row's maximum (``np.max``/``argmax`` of a
complex array order by real part, and softmax is invariant to the complex
shift that results); ``relu`` is not at 0 (``np.maximum``), and the MLP
(:func:`reference.mlp.mlp_loss`) casts its parameters to float64.

Threads: test 1 needs a warnings filter, and ``warnings.catch_warnings``
saves and restores the process-wide list of filters, so two threads
interleaving it would leave an ``"error"`` filter behind. This module
serializes its own blocks with a lock (see :func:`_complex_call`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles._guards import call_user
from oracles._validation import as_cotangent, as_inputs, as_output, check_callable, check_seed
from oracles.backends.rounding import ROUNDING_FACTOR, TINY
from oracles.compare import Reference
from oracles.errors import InvalidArgument, InvalidArgumentType
from oracles.numerics.directional import directional
from oracles.numerics.exhaustive import Exhaustive
from oracles.numerics.objective import ScalarObjective

__all__ = [
    "DEFAULT_STEP",
    "N_DIRECTIONS",
    "STEP_FACTORS",
    "complex_step_reference",
    "complex_step_vjp",
]

#: The imaginary step. Any ``h`` far below ``sqrt(eps) * |x|`` makes the
#: truncation error ``h^2 |f'''| / 6`` negligible; ``1e-30`` leaves the
#: imaginary parts (``h * f'``) far above the subnormal range for any
#: derivative above ``1e-270``.
DEFAULT_STEP = 1e-30

#: Independent Gaussian directions of the analyticity tests (2 and 3 of the module notes).
N_DIRECTIONS = 3

#: The factors ``c`` of the homogeneity test: ``Im fn(x + i c h u) = c Im fn(x + i h u)``.
STEP_FACTORS = (2.0, -1.0)

#: Rounding allowed by the homogeneity test, in units of eps times the
#: imaginary parts compared and the largest of them. Exact scaling is the
#: rule; this is room for libraries that round differently at different
#: magnitudes, and is still 1e-13 of a branch switch.
HOMOGENEITY_ULPS = 64.0

_EPS = float(np.finfo(np.float64).eps)

#: Serializes every ``warnings.catch_warnings`` block of this module (see
#: :func:`_complex_call`). Re-entrant, so an ``fn`` that itself runs a
#: complex-step check in the same thread does not deadlock.
_WARNINGS_LOCK = threading.RLock()

_NOT_SAFE = (
    "against='complex' needs a complex-safe fn: one written with analytic operations that "
    "NumPy evaluates in complex arithmetic (exp, log, tanh, matmul, + - * /). np.real, "
    "np.conj, np.abs, np.maximum, comparisons and casts to float are not complex-analytic"
)


def _check_step(h):
    if isinstance(h, bool) or not isinstance(h, (int, float, np.floating, np.integer)):
        raise InvalidArgumentType(f"h must be a positive real number, got {h!r}")
    h = float(h)
    if not (np.isfinite(h) and 0.0 < h <= 1e-8):
        raise InvalidArgument(
            f"h must be finite and in (0, 1e-8] (the truncation error is h^2 f'''), got {h!r}"
        )
    return h


def _complex_call(fn, zs, shape):
    """``fn(*zs)`` on complex inputs -> complex128 array, or InvalidArgument saying why not.

    ``shape`` is the shape of ``fn``'s output for real input; the complex
    output must have it too.
    """
    try:
        # warnings.catch_warnings saves the process-wide warnings.filters on
        # entry and puts that list back on exit: two threads interleaving
        # their blocks restore each other's lists, and an "error" filter for
        # ComplexWarning stays behind. The lock serializes the blocks of this
        # module (every complex-step call, from every thread), so the
        # oracles' own concurrent calls never interleave. Code in *other*
        # threads that changes the filters while a block runs can still race
        # with it (a filter it adds meanwhile is dropped on exit, and a
        # ComplexWarning it triggers meanwhile is raised as an error): before
        # Python 3.14 the filters are process-wide, and that cannot be avoided.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            with np.errstate(all="ignore"):
                out = fn(*zs)
    except np.exceptions.ComplexWarning as exc:
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn casts its complex input to real, dropping the imaginary part ({exc})"
        ) from exc
    except Exception as exc:  # the user's code refused complex input
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn raised {type(exc).__name__} on complex input: {exc}"
        ) from exc
    try:
        out = np.asarray(out)
    except Exception as exc:  # a ragged or exotic result: not an array of numbers
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn returned {type(out).__name__} for complex input, not an array"
        ) from exc
    if out.dtype.kind != "c":
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn returned dtype {out.dtype} for complex input (the imaginary part was "
            "dropped somewhere)"
        )
    if out.shape != shape:
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn returned shape {out.shape} for complex input, but {shape} for real "
            "input"
        )
    return out.astype(np.complex128, copy=False)


def _gradients(fn, xs, cot, h):
    """Per-element complex-step gradients and the rounding scale of their contraction."""
    zs = [x.astype(np.complex128) for x in xs]
    grads, scales = [], []
    for z, x in zip(zs, xs, strict=True):
        g = np.empty(x.shape)
        s = np.empty(x.shape)
        flat = z.reshape(-1)
        for j in range(x.size):
            flat[j] = complex(flat[j].real, h)
            try:
                out = _complex_call(fn, [zk.copy() for zk in zs], cot.shape)
            finally:
                flat[j] = complex(flat[j].real, 0.0)
            # Im / h first (the derivative, of the size of f'), then the contraction: the
            # product of a tiny cotangent and Im ~ h f' would underflow (1e-298 * 1e-30).
            d = out.imag / h
            g.reshape(-1)[j] = float(np.vdot(cot.ravel(), d.ravel()))
            s.reshape(-1)[j] = float(np.sum(np.abs(cot * d)))
        grads.append(g)
        scales.append(s)
    return grads, scales


def _check_real_part(fn, xs, real, shape):
    """Test 1: ``fn`` on the complex copy gives the real forward as its real part, and 0i."""
    out = _complex_call(fn, [x.astype(np.complex128) for x in xs], shape)
    scale = np.maximum(np.abs(real), 1.0)
    if not (np.all(np.abs(out.real - real) <= 64 * _EPS * scale) and np.all(out.imag == 0)):
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn gives a different value for the same point passed as complex"
        )


def _directions(xs, seed):
    """:data:`N_DIRECTIONS` standard normal directions over all inputs (lists of arrays).

    Their own stream: independent of the default cotangent, which the checks
    draw from ``default_rng(seed)``.
    """
    rng = np.random.default_rng([seed, 0xC0])
    return [[rng.standard_normal(x.shape) for x in xs] for _ in range(N_DIRECTIONS)]


def _check_homogeneous(fn, xs, shape, u, h):
    """Test 2: ``Im fn(x + i c h u) == c Im fn(x + i h u)``, output element by element."""

    def imag(c):
        zs = [x + 1j * (c * (h * ui)) for x, ui in zip(xs, u, strict=True)]
        return _complex_call(fn, zs, shape).imag

    base = imag(1.0)
    if not np.all(np.isfinite(base)):
        raise InvalidArgument(f"{_NOT_SAFE}; fn gave a non-finite imaginary part")
    peak = float(np.max(np.abs(base))) if base.size else 0.0
    for c in STEP_FACTORS:
        other = imag(c)
        with np.errstate(invalid="ignore", over="ignore"):
            gap = np.abs(other - c * base)
            bound = HOMOGENEITY_ULPS * _EPS * (np.abs(other) + abs(c) * (np.abs(base) + peak))
        bad = ~(gap <= bound + TINY)
        if np.any(bad):
            i = int(np.argmax(np.where(bad, np.nan_to_num(gap - bound, nan=np.inf), -np.inf)))
            where = tuple(int(k) for k in np.unravel_index(i, shape)) if shape else ()
            raise InvalidArgument(
                f"{_NOT_SAFE}; fn is not complex-analytic at this point: its imaginary part is "
                f"not odd and linear in the imaginary step (at output element {where}, "
                f"Im fn(x + {c:g}ihu) = {float(other.reshape(-1)[i]):.6g} but "
                f"{c:g} Im fn(x + ihu) = {float(c * base.reshape(-1)[i]):.6g}, along a random "
                "direction u): a comparison, np.maximum, np.sign or a sort at tied real parts"
            )


def _check_directional(objective, us, grads, cs_error):
    """Test 3: real central differences along whole Gaussian directions."""
    est = directional(objective, us, grads=grads)
    for k, u in enumerate(us):
        residual, err = float(est.value[k]), float(est.error[k])
        if not (np.isfinite(residual) and np.isfinite(err)):
            raise InvalidArgument(
                f"{_NOT_SAFE}; the complex-step gradient could not be confirmed by real central "
                "differences along a random direction (fn is not finite at the perturbed "
                "points), so it is not trusted"
            )
        allowed = err + sum(float(np.sum(np.abs(a) * e)) for a, e in zip(u, cs_error, strict=True))
        if not abs(residual) <= allowed:
            along = sum(float(np.vdot(g, a)) for g, a in zip(grads, u, strict=True))
            coarse = ""
            if err >= 0.1 * abs(along):
                coarse = (
                    "; or the real step ladder cannot resolve fn at this point, and then the "
                    "complex step cannot be confirmed either"
                )
            raise InvalidArgument(
                f"{_NOT_SAFE}; the complex-step gradient along a random direction ({along:.6g}) "
                f"disagrees with real central differences by {abs(residual):.3g} (their error "
                f"estimate {err:.3g}): fn is not complex-analytic at this point (np.real, "
                f"np.conj, np.abs, np.maximum, a comparison, or a kink){coarse}"
            )


def _check_elements(objective, grads, cs_error):
    """Test 4: every element against the numeric oracle's own per-element check."""
    refs, _, _, _ = Exhaustive().reference(objective, grads)
    for i, (ref, g, e) in enumerate(zip(refs, grads, cs_error, strict=True)):
        value, err = np.asarray(ref.value), np.asarray(ref.error)
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(value - g) <= err + e)
        kink = np.asarray(ref.kink, dtype=bool)
        if not (bad.any() or kink.any()):
            continue
        flat = int(np.flatnonzero((kink | bad).reshape(-1))[0])
        where = tuple(int(k) for k in np.unravel_index(flat, g.shape)) if g.shape else ()
        name = f"inputs[{i}][{', '.join(map(str, where))}]"
        if kink.reshape(-1)[flat]:
            raise InvalidArgument(
                f"{_NOT_SAFE}; fn has a kink at {name} (one-sided slopes "
                f"{float(ref.left.reshape(-1)[flat]):.6g} and "
                f"{float(ref.right.reshape(-1)[flat]):.6g}), where the complex step "
                "differentiates one side only: fn is not complex-analytic at this point"
            )
        v, r = float(value.reshape(-1)[flat]), float(err.reshape(-1)[flat])
        if not (np.isfinite(v) and np.isfinite(r)):
            raise InvalidArgument(
                f"{_NOT_SAFE}; the complex-step derivative at {name} could not be confirmed by "
                "real central differences (fn is not finite at the perturbed points), so it is "
                "not trusted"
            )
        raise InvalidArgument(
            f"{_NOT_SAFE}; at {name} the complex-step derivative "
            f"({float(g.reshape(-1)[flat]):.17g}) disagrees with real central differences "
            f"({v:.17g}, error estimate {r:.3g}): fn is not complex-analytic at this point "
            "(np.real, np.conj, np.abs, or a kink)"
        )


def _rounding_error(grads, scales, cot):
    """The complex step's per-element error estimate (see :func:`complex_step_reference`)."""
    ct_peak = float(np.max(np.abs(cot))) if cot.size else 0.0
    out = []
    for g, s in zip(grads, scales, strict=True):
        a = np.abs(g)
        peak = float(np.max(a)) if a.size else 0.0
        out.append(ROUNDING_FACTOR * _EPS * (a + peak + ct_peak + s) + TINY)
    return out


def complex_step_reference(fn, xs, cotangent, *, h=DEFAULT_STEP, seed=0):
    """Complex-step VJP with error estimates: one :class:`~oracles.compare.Reference` per input.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``; must be complex-safe (see the module notes).
    xs : sequence of array_like
        Real inputs; evaluated in float64 (copies; never modified).
    cotangent : array_like
        Shaped like ``fn(*xs)``.
    h : float
        Imaginary step, in ``(0, 1e-8]``.
    seed : int
        Seed of the random directions of the analyticity tests.

    Returns
    -------
    refs : list of Reference
        One :class:`~oracles.compare.Reference` (values and error estimates) per input.
    method : str
        A one-line description for the report.

    Raises
    ------
    InvalidArgument
        ``fn`` raised on complex input, dropped the imaginary part, gave a
        different real value, or failed one of the analyticity tests of the
        module notes (it is not complex-analytic here); or ``h`` is out of
        range, or the cotangent is not shaped like ``fn``'s output.

    Notes
    -----
    The error estimate per element is
    ``k * eps * (|g| + max|g| + max|c| + sum_i |c_i| |Im f_i| / h) + TINY``
    with ``k`` = :data:`oracles.backends.rounding.ROUNDING_FACTOR`: the
    rounding of the element, of the tensor it sits in (the scale a hand
    VJP's own rounding has), of the cotangent, and of the contraction with
    the cotangent. Truncation (``h^2 f'''``) is below ``1e-59 |f'''|`` at
    the default step and not counted. The estimate assumes ``fn`` does not
    itself cancel imaginary parts catastrophically (``E[x^2] - E[x]^2`` at
    inputs of ``1e6`` does); in such a function the complex step has the
    rounding error of the same computation in reverse mode. The analyticity
    tests cost ``2 N_DIRECTIONS + 1`` complex evaluations of ``fn`` and
    about as many real ones as the numeric oracle's exhaustive mode (2 per
    element, more for small inputs), on top of one complex evaluation per
    element.

    Examples
    --------
    >>> import numpy as np
    >>> refs, method = complex_step_reference(np.tanh, [np.array([0.5, 2.0])], np.ones(2))
    >>> bool(np.allclose(refs[0].value, 1 - np.tanh([0.5, 2.0]) ** 2, rtol=1e-15, atol=0))
    True
    >>> bool(np.all(refs[0].error < 1e-13))
    True
    """
    __tracebackhide__ = True
    check_callable(fn, "fn")
    h = _check_step(h)
    seed = check_seed(seed) or 0
    xs = as_inputs(xs)
    real = as_output(call_user(fn, [x.copy() for x in xs], "fn"))
    cot = as_cotangent(cotangent, real.shape)
    _check_real_part(fn, xs, real, cot.shape)
    grads, scales = _gradients(fn, xs, cot, h)
    if not all(np.all(np.isfinite(g)) for g in grads):
        raise InvalidArgument(f"{_NOT_SAFE}; fn gave a non-finite imaginary part")
    errors = _rounding_error(grads, scales, cot)
    method = f"complex step per element, h = {h:g}"
    if not any(x.size for x in xs):  # empty inputs: nothing to differentiate, nothing to test
        return [Reference(value=g, error=e) for g, e in zip(grads, errors, strict=True)], method
    us = _directions(xs, seed)
    for u in us:
        _check_homogeneous(fn, xs, cot.shape, u, h)
    objective = ScalarObjective(fn, xs, cot)
    _check_directional(objective, us, grads, errors)
    _check_elements(objective, grads, errors)
    refs = [Reference(value=g, error=e) for g, e in zip(grads, errors, strict=True)]
    return refs, method


def complex_step_vjp(
    fn: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    cotangent: ArrayLike,
    *,
    h: float = DEFAULT_STEP,
) -> tuple[np.ndarray, ...]:
    """Complex-step VJP of ``fn`` at ``inputs`` contracted with ``cotangent``.

    ``Im(fn(x + i h e_j)) / h`` per element ``j``, contracted with the
    cotangent: accurate to a few ulp, with no step-size trade-off, for
    complex-safe ``fn`` (see the module notes and
    :func:`complex_step_reference`, which also returns error estimates).

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``, complex-safe.
    inputs : tuple of array_like
        Real; evaluated in float64 (copies; never modified). A bare array or
        number counts as the only input.
    cotangent : array_like
        Shaped like ``fn(*inputs)``.
    h : float
        Imaginary step, in ``(0, 1e-8]``.

    Returns
    -------
    tuple of ndarray
        Float64, one per input, shaped like it.

    Raises
    ------
    InvalidArgument
        ``fn`` is not complex-safe (raises on complex input, drops the
        imaginary part, or fails an analyticity test: it is not
        complex-analytic at this point); a bad input, cotangent or ``h``.
    InvalidArgumentType
        ``fn`` is not callable; an input or the cotangent is not a real
        numeric array.
    UserFunctionError
        ``fn`` raised, or returned something unusable, for real input.

    Examples
    --------
    >>> import numpy as np
    >>> (g,) = complex_step_vjp(np.exp, (np.array([0.0, 1.0]),), np.ones(2))
    >>> bool(np.allclose(g, np.exp([0.0, 1.0]), rtol=1e-15, atol=0))
    True
    >>> complex_step_vjp(np.abs, (np.array([-1.0, 2.0]),), np.ones(2))
    Traceback (most recent call last):
    ...
    oracles.errors.InvalidArgument: against='complex' needs a complex-safe fn: ...
    """
    __tracebackhide__ = True
    refs, _ = complex_step_reference(fn, inputs, cotangent, h=h)
    return tuple(r.value for r in refs)
