"""The rounding bound of autodiff results, shared by every autodiff oracle.

Reverse- and forward-mode autodiff have no truncation error: what separates
them from the exact derivative is floating-point rounding only.
:func:`error_estimate` bounds it per element.
"""

from __future__ import annotations

import numpy as np

from oracles._validation import as_cotangent
from oracles.errors import InvalidArgument

__all__ = [
    "OUTPUT_ROUNDING",
    "RESOLVED",
    "ROUNDING_FACTOR",
    "TINY",
    "error_estimate",
    "output_rates",
]

#: ``k`` in the per-element rounding bound of :func:`error_estimate`.
#: Autodiff has no truncation error: what separates it from the
#: exact VJP is floating-point rounding only. Measured on every reference op
#: (tests/reference/test_native_equivalents.py: Hypothesis values, batches of
#: 1, odd sizes, up to 3 leading axes, logits up to +-500), hand VJP, torch
#: and JAX differed by at most ``3 * eps * scale`` with the scale of
#: :func:`error_estimate` (below ``1 * eps * scale`` except for tanh); a dense
#: scan found ``8 * eps * scale`` for JAX's tanh (XLA's tanh is accurate to
#: 3.5 ulp). 64 leaves room for longer reductions (the rounding of a sum grows
#: with its length) and larger layers.
ROUNDING_FACTOR = 64.0


#: Absolute floor of :func:`error_estimate`: XLA on CPU flushes subnormal
#: numbers to zero, so JAX returns 0 where the exact result is below ~2e-308.
TINY = 1e3 * float(np.finfo(np.float64).tiny)


_EPS = float(np.finfo(np.float64).eps)


def error_estimate(grads, *, cotangent=None, factor=ROUNDING_FACTOR, natural=None):
    r"""Rounding-level error bound for autodiff gradients, one array per gradient.

    Parameters
    ----------
    grads : sequence of arrays
        Gradients as returned by :func:`torch_vjp` or
        :func:`~oracles.jax_backend.jax_vjp`.
    cotangent : array_like, optional
        The cotangent they were computed with. Recommended: it adds the
        absolute term ``k * eps * max|cotangent|`` (see Notes).
    factor : float, optional
        The multiple ``k`` of machine epsilon; see :data:`ROUNDING_FACTOR`.
    natural : sequence of array_like, optional
        Per gradient, the derivative's natural scale in its own units
        (broadcastable to the gradient): what a derivative of the size of
        the function over the scale of its input would be. Replaces
        ``max|cotangent|`` (see Notes), which has the units of the cotangent
        only and is right only where inputs and outputs are of order 1.

    Returns
    -------
    tuple of float64 arrays
        ``k * eps * (|g| + max|g| + max|cotangent|) + TINY`` elementwise,
        shaped like each gradient (``natural`` in place of
        ``max|cotangent|`` where given).

    Notes
    -----
    Three scales, each for a way autodiff loses accuracy:

    * ``|g|``: the rounding of the element itself.
    * ``max|g|``, the magnitude of the tensor: an element that is small only
      because large terms cancelled (``a - y`` for a confident softmax,
      ``X^T G`` summed over a batch) carries the rounding error of those
      terms, not of its own size.
    * ``max|cotangent|``: torch and JAX compute ``sigmoid'`` as ``s (1 - s)``
      and ``tanh'`` as ``1 - y^2``, which round to 0 once ``s`` or ``|y|``
      rounds to 1 (``x > 37`` for the sigmoid, ``|x| > 19`` for tanh) where
      the exact derivative is tiny but not 0: an absolute error of
      ``eps * |cotangent|`` and a relative error of 1. A hand VJP that keeps
      those digits (the reference's sigmoid does) must not be blamed.
      In units: the loss is ``eps`` times the derivative's natural scale,
      ``max|cotangent * f| / s_j`` for a VJP (``s_j`` the scale of input
      element ``j``); ``max|cotangent|`` is that for ``f`` and ``x`` of
      order 1. The checks pass ``natural`` (at an output scale of ``1e-12``
      the plain term would hide a relative error of ``1e-2``).

    It is a heuristic, not a proof: a Jacobian with huge entries whose
    products cancel to a small gradient can exceed it. Exact zeros (inputs
    that do not influence the output) get only the ``TINY`` floor.

    Examples
    --------
    >>> (bound,) = error_estimate([np.array([1.0, 0.0])])
    >>> bool(bound[0] > bound[1] > 0)
    True
    >>> (bound,) = error_estimate([np.array([0.0])], cotangent=np.array([1.0]))
    >>> bool(bound[0] == ROUNDING_FACTOR * np.finfo(float).eps + TINY)
    True
    """
    if not np.isfinite(factor) or factor < 0:
        raise InvalidArgument(f"factor must be a finite number >= 0, got {factor!r}")
    ct_peak = 0.0
    if cotangent is not None:
        ct = np.abs(as_cotangent(cotangent))
        ct_peak = float(np.max(ct)) if ct.size else 0.0
    if natural is not None and len(natural) != len(grads):
        raise InvalidArgument(
            f"natural must have one entry per gradient ({len(grads)}), got {len(natural)}"
        )
    bounds = []
    for p, g in enumerate(grads):
        a = np.abs(np.asarray(g, dtype=np.float64))
        peak = float(np.max(a)) if a.size else 0.0
        extra = ct_peak if natural is None else np.abs(np.asarray(natural[p], dtype=np.float64))
        with np.errstate(over="ignore", invalid="ignore"):
            bounds.append(np.broadcast_to(factor * _EPS * (a + peak + extra) + TINY, a.shape))
    return tuple(np.array(b) for b in bounds)


#: ``k`` in ``k eps sum_i |c_i f_i| rate_i``, the rounding of a derivative
#: computed from rounded outputs (:func:`output_rates`). Measured on tanh and
#: sigmoid layers at saturation (pre-activations to 260: raw pixels, inputs of
#: 15 to 1e4; 8 shapes, 6 seeds, torch and JAX, each at two cotangents): a
#: correct VJP's disagreement with the framework was at most 9.3 times
#: ``eps sum_i |c_i f_i| rate_i`` (XLA's tanh is accurate to 3.5 ulp, and
#: units too saturated for a rate to be measured add their share), 16 gives
#: it room; a larger factor would hide more of a wrong derivation where
#: the rates are large (a dW off by 1e-3 was 10 to 34 times it at elements
#: whose true value had lost those digits).
OUTPUT_ROUNDING = 16.0


#: Significance of a rate in :func:`output_rates`: the log of the ratio of
#: the two one-sided differences must exceed this many times ``eps m (1/|up|
#: + 1/|down|)`` (``m`` the outputs' magnitude), the log's change when each
#: difference is off by ``eps m``. 128 = 8 units of rounding (fn's own, a few
#: ulps) times 16: an accepted rate is within ~7% of the function's, and a
#: linear output, whose log ratio is rounding only, never gives one.
RESOLVED = 128.0


def output_rates(up, down, base, step, relative=_EPS):
    r"""Per output, the local rate ``|f'' / f'|`` along one input element, or 0.

    Parameters
    ----------
    up, down : ndarray
        The one-sided differences ``f(x + T e_j) - f(x)`` and
        ``f(x) - f(x - T e_j)`` of every output element.
    base : ndarray
        ``f(x)``.
    step : float
        ``T`` (> 0), in the units of the input element.
    relative : float or ndarray, optional
        The outputs' relative rounding (float64's eps, or a measured noise).

    Returns
    -------
    ndarray
        ``|ln(up / down)| / T`` where both differences have the same sign
        (``f`` is monotone over ``[x - T, x + T]``: no turning point) and the
        log is significant (:data:`RESOLVED`), else 0. For
        ``f = A + B e^{\lambda x}`` it is ``|\lambda|`` at any step; where the
        step reaches past a saturated unit's transition it is less.

    Notes
    -----
    Autodiff and a hand derivation compute an activation's derivative from
    its rounded output: ``1 - y^2`` for tanh, ``y (1 - y)`` for a sigmoid.
    An output rounded by ``eps |f|`` is the exact output at a point moved by
    ``eps |f| / |f'|``, where the derivative differs by
    ``eps |f| |f'' / f'|``. At a saturated unit (``f'`` decays like
    ``e^{-2|a|}``) that is ``eps`` times the unsaturated slope, however small
    ``f'`` has become: the digits that ``1 - y^2`` lost in cancellation. For
    ``exp`` or a polynomial it is about ``eps |f'|``, the rounding of the
    derivative itself.

    Examples
    --------
    >>> x = np.array([0.0, 1.0])
    >>> f0, fp, fm = np.exp(2 * x), np.exp(2 * (x + 0.1)), np.exp(2 * (x - 0.1))
    >>> np.round(output_rates(fp - f0, f0 - fm, f0, 0.1), 12).tolist()
    [2.0, 2.0]
    >>> float(output_rates(np.array([1e-3]), np.array([1e-3]), np.array([1.0]), 1e-3)[0])
    0.0
    """
    up = np.asarray(up, dtype=np.float64)
    down = np.asarray(down, dtype=np.float64)
    base = np.abs(np.asarray(base, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        m = np.maximum(base, np.maximum(np.abs(base + up), np.abs(base - down)))
        au, ad = np.abs(up), np.abs(down)
        log = np.abs(np.log(au / ad))
        noise = RESOLVED * np.maximum(relative, _EPS) * m * (1.0 / au + 1.0 / ad)
        ok = (au > 0) & (ad > 0) & (np.sign(up) == np.sign(down)) & (log > noise)
        rate = log / step
    return np.where(ok & np.isfinite(rate), rate, 0.0)
