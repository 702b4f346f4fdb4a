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
wrong, silently, for code that is not: ``np.abs`` (the modulus of a complex
number, not an analytic function), ``np.maximum``/``np.max``/comparisons
(NumPy orders complex numbers by real part, then by imaginary part, so
``np.maximum(0 + ih, 0)`` picks ``ih`` and differentiates a kink
one-sidedly), ``np.where(x >= 0, ...)``, or any cast to float
(``np.asarray(x, dtype=float)`` drops the imaginary part with a
ComplexWarning). This module therefore checks ``fn`` before trusting it:

1. ``fn`` is run on a complex copy of the inputs; if it raises, warns that
   it discards the imaginary part, or returns a real array,
   :class:`~oracles.errors.InvalidArgument` says so.
2. The real part at the unperturbed point must equal ``fn(*inputs)``.
3. The complex-step gradient, contracted with a random ``+-1`` direction
   ``u``, must agree with a real central-difference derivative along ``u``
   (the step ladder of :mod:`oracles.numerics`) to within that
   derivative's error estimate plus ``1e-6`` relative. A function that is
   not analytic (``sigmoid`` written with ``exp(-|x|)``, ReLU at its kink)
   fails this and raises :class:`~oracles.errors.InvalidArgument` instead of
   returning a confident wrong reference.

Of the reference functions, ``tanh``, ``softmax``, ``log_softmax``,
``cross_entropy`` (logits), ``squared_error`` and ``affine`` are complex-safe
at points without ties in a row's maximum (``np.max``/``argmax`` of a
complex array order by real part, and softmax is invariant to the complex
shift that results). ``sigmoid`` is not (``exp(-|x|)``), ``relu`` is not
(``np.maximum``), and the MLP (:func:`reference.mlp.mlp_loss`) casts its
parameters to float64.
"""

from __future__ import annotations

import warnings

import numpy as np

from oracles._validation import as_cotangent, as_inputs, check_callable
from oracles.backends.rounding import ROUNDING_FACTOR, TINY
from oracles.compare import Reference
from oracles.errors import InvalidArgument, InvalidArgumentType
from oracles.numerics.directional import directional
from oracles.numerics.objective import ScalarObjective

__all__ = ["DEFAULT_STEP", "complex_step_reference", "complex_step_vjp"]

#: The imaginary step. Any ``h`` far below ``sqrt(eps) * |x|`` makes the
#: truncation error ``h^2 |f'''| / 6`` negligible; ``1e-30`` leaves the
#: imaginary parts (``h * f'``) far above the subnormal range for any
#: derivative above ``1e-270``.
DEFAULT_STEP = 1e-30

#: Relative disagreement with a real directional derivative beyond which
#: ``fn`` is declared not complex-analytic (added to that derivative's own
#: error estimate).
ANALYTICITY_RTOL = 1e-6

_EPS = float(np.finfo(np.float64).eps)

_NOT_SAFE = (
    "against='complex' needs a complex-safe fn: one written with analytic operations that "
    "NumPy evaluates in complex arithmetic (exp, log, tanh, matmul, + - * /). np.abs, "
    "np.maximum, comparisons and casts to float are not complex-analytic"
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


def _complex_call(fn, zs):
    """``fn(*zs)`` on complex inputs -> complex128 array, or InvalidArgument saying why not."""
    try:
        with warnings.catch_warnings():
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
    out = np.asarray(out)
    if out.dtype.kind != "c":
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn returned dtype {out.dtype} for complex input (the imaginary part was "
            "dropped somewhere)"
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
                out = _complex_call(fn, zs)
            finally:
                flat[j] = complex(flat[j].real, 0.0)
            if out.shape != cot.shape:
                raise InvalidArgument(
                    f"fn returned shape {out.shape} for complex input, but {cot.shape} "
                    "for real input"
                )
            im = out.imag
            g.reshape(-1)[j] = float(np.vdot(cot.ravel(), im.ravel())) / h
            s.reshape(-1)[j] = float(np.sum(np.abs(cot * im))) / h
        grads.append(g)
        scales.append(s)
    return grads, scales


def _check_real_part(fn, xs, cot):
    """``fn`` on the complex copy must give the real forward as its real part, and 0i."""
    with np.errstate(all="ignore"):
        real = np.asarray(fn(*[x.copy() for x in xs]), dtype=np.float64)
    out = _complex_call(fn, [x.astype(np.complex128) for x in xs])
    if out.shape != cot.shape or real.shape != cot.shape:
        raise InvalidArgument(
            f"fn returned shape {out.shape} for complex input and {real.shape} for real input; "
            f"the cotangent has shape {cot.shape}"
        )
    scale = np.maximum(np.abs(real), 1.0)
    if not (np.all(np.abs(out.real - real) <= 64 * _EPS * scale) and np.all(out.imag == 0)):
        raise InvalidArgument(
            f"{_NOT_SAFE}; fn gives a different value for the same point passed as complex"
        )


def _check_analytic(fn, xs, cot, grads, seed):
    """The contracted complex-step gradient must match a real directional derivative."""
    rng = np.random.default_rng(seed)
    u = [rng.choice([-1.0, 1.0], size=x.shape) for x in xs]
    objective = ScalarObjective(fn, xs, cot)
    est = directional(objective, [u], grads=grads)
    residual, err = float(est.value[0]), float(est.error[0])
    scale = sum(float(np.sum(np.abs(g))) for g in grads)
    if not abs(residual) <= err + ANALYTICITY_RTOL * scale:
        along = sum(float(np.vdot(g, d)) for g, d in zip(grads, u, strict=True))
        raise InvalidArgument(
            f"{_NOT_SAFE}; the complex-step gradient along a random direction ({along:.6g}) "
            f"disagrees with central differences by {abs(residual):.3g} (their error estimate "
            f"{err:.3g}): fn is not complex-analytic at this point (np.abs, np.maximum, a "
            "comparison, or a kink)"
        )


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
        Seed of the random direction of the analyticity check.

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
        different real value, or disagreed with real central differences
        (not complex-analytic); or ``h`` is out of range.

    Notes
    -----
    The error estimate per element is
    ``k * eps * (|g| + max|g| + max|c| + sum_i |c_i| |Im f_i| / h) + TINY``
    with ``k`` = :data:`oracles.torch_backend.ROUNDING_FACTOR`: the rounding
    of the element, of the tensor it sits in (the scale a hand VJP's own
    rounding has), of the cotangent, and of the contraction with the
    cotangent. Truncation (``h^2 f'''``) is below ``1e-59 |f'''|`` at the
    default step and not counted. The estimate assumes ``fn`` does not itself
    cancel imaginary parts catastrophically (``E[x^2] - E[x]^2`` at inputs
    of ``1e6`` does); in such a function the complex step has the rounding
    error of the same computation in reverse mode.

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
    xs = as_inputs(tuple(xs))
    cot = as_cotangent(cotangent)
    _check_real_part(fn, xs, cot)
    grads, scales = _gradients(fn, xs, cot, h)
    if not all(np.all(np.isfinite(g)) for g in grads):
        raise InvalidArgument(f"{_NOT_SAFE}; fn gave a non-finite imaginary part")
    _check_analytic(fn, xs, cot, grads, seed)
    ct_peak = float(np.max(np.abs(cot))) if cot.size else 0.0
    refs = []
    for g, s in zip(grads, scales, strict=True):
        a = np.abs(g)
        peak = float(np.max(a)) if a.size else 0.0
        err = ROUNDING_FACTOR * _EPS * (a + peak + ct_peak + s) + TINY
        refs.append(Reference(value=g, error=err))
    return refs, f"complex step per element, h = {h:g}"


def complex_step_vjp(fn, inputs, cotangent, *, h=DEFAULT_STEP):
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
        Real; evaluated in float64 (copies; never modified).
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
        imaginary part, or is not complex-analytic at this point).

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
    if isinstance(inputs, np.ndarray):
        inputs = (inputs,)
    refs, _ = complex_step_reference(fn, tuple(inputs), cotangent, h=h)
    return tuple(r.value for r in refs)
