"""The rounding bound of autodiff results, shared by every autodiff oracle.

Reverse- and forward-mode autodiff have no truncation error: what separates
them from the exact derivative is floating-point rounding only.
:func:`error_estimate` bounds it per element.
"""

from __future__ import annotations

import numpy as np

from oracles._validation import as_cotangent
from oracles.errors import InvalidArgument

__all__ = ["ROUNDING_FACTOR", "TINY", "error_estimate"]

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
