"""Softmax and log-softmax along one axis, with hand-derived VJPs.

Both functions normalize along ``axis`` (default: the last, the class axis)
and treat every other axis as a batch axis: a ``(N, C)`` array is ``N``
independent rows, a ``(B, T, C)`` array is ``B * T`` rows.

Normalizing over the wrong axis (axis 0, the batch, for a ``(N, C)`` array)
is one of the most common published mistakes; it is in
:mod:`reference.pitfalls`.

``axis`` must be an int naming an axis of ``x``, and ``x`` must have at
least one entry along it: a softmax over no classes is not a distribution
(:class:`reference.InvalidInput`). An empty batch (a zero-length *other*
axis) gives an empty result. Lists are converted; complex ``x`` gives the
analytic continuation. The cotangent ``g`` has the shape of ``x``, or
broadcasts to it.
"""

from __future__ import annotations

import numpy as np

from reference._validation import InvalidInput, as_floats, cotangent_like

__all__ = ["log_softmax", "log_softmax_vjp", "softmax", "softmax_vjp"]


def _normalized_input(x, axis):
    """``x`` as floats with at least one entry along the int ``axis``, or InvalidInput."""
    x = as_floats(x, "x")
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise InvalidInput(f"axis must be an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise InvalidInput(f"axis {axis} is out of range for x of shape {x.shape}")
    if x.shape[axis] == 0:
        raise InvalidInput(
            f"x must have at least 1 entry along axis {axis} (a softmax over no classes is "
            f"not a distribution), got shape {x.shape}"
        )
    return x


def _shifted(x, axis):
    """``x - max(x)`` along ``axis``: the same softmax, no overflow in exp."""
    x = _normalized_input(x, axis)
    m = np.max(x, axis=axis, keepdims=True)
    # A row of all -inf has max -inf; shifting by it would give nan.
    m = np.where(np.isfinite(m), m, 0.0)
    # With logits of both signs near the float64 limit (1e308 and -1e308 in
    # one row) x - m is below -1.8e308: it rounds to -inf, its correctly
    # rounded value, and exp(-inf) = 0 is exact. Not an error to warn about.
    with np.errstate(over="ignore"):
        return x - m


def softmax(x, axis=-1):
    r"""Softmax ``a_i = exp(x_i) / sum_k exp(x_k)`` along ``axis``.

    The maximum of each row is subtracted first (softmax is invariant to a
    constant shift), so ``exp`` never overflows: logits of 1e308 are fine.

    Examples
    --------
    >>> softmax(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    >>> softmax(np.array([1e308, 0.0])).tolist()
    [1.0, 0.0]
    """
    e = np.exp(_shifted(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_vjp(g, x, axis=-1):
    r"""VJP of :func:`softmax` along ``axis``.

    Derivation
    ----------
    For one row, with ``a = softmax(x)``::

        d a_i / d x_j = a_i (delta_ij - a_j)        J = diag(a) - a a^T

    ``J`` is symmetric, so the VJP of a cotangent ``g`` is::

        (g^T J)_j = sum_i g_i a_i (delta_ij - a_j) = a_j g_j - a_j sum_i g_i a_i
                  = a_j (g_j - <g, a>)

    The off-diagonal part ``- a a^T`` is what makes the ``<g, a>`` term; a
    derivation that keeps only the diagonal ``a (1 - a)`` drops it and is
    wrong for every ``g`` that is not constant along the row.

    Examples
    --------
    >>> np.allclose(softmax_vjp(np.array([1.0, 1.0]), np.array([3.0, -2.0])), 0.0)
    True
    >>> softmax_vjp(np.array([1.0, 0.0]), np.array([0.0, 0.0])).tolist()
    [0.25, -0.25]
    """
    a = softmax(x, axis=axis)
    g = cotangent_like(g, a.shape, "g", "x")
    return a * (g - np.sum(g * a, axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    r"""Log-softmax ``x_i - log sum_k exp(x_k)`` along ``axis``.

    Computed as ``s - log1p(r)`` with ``s = x - max(x)`` and ``r`` the sum of
    ``exp(s)`` over every entry but the maximum (which contributes exactly
    1): exact where ``log(softmax(x))`` would give ``log(0) = -inf``, and
    accurate where ``log(sum(exp(s)))`` would round ``1 + r`` to 1 (a
    confident row whose loss is ``1e-20`` comes out as ``1e-20``, not 0).
    An entry whose true value is below the float64 range (``x_i - max(x) <
    -1.8e308``, only with logits of both signs near 1e308) is ``-inf``.

    Examples
    --------
    >>> np.round(log_softmax(np.array([0.0, 0.0])), 6).tolist()
    [-0.693147, -0.693147]
    >>> log_softmax(np.array([1000.0, 0.0])).tolist()
    [0.0, -1000.0]
    """
    s = _shifted(x, axis)
    return s - np.log1p(_rest_of_sum(np.exp(s), s, axis))


def _rest_of_sum(e, s, axis):
    """``sum(e) - 1`` along ``axis`` without cancellation: the sum over all but the argmax."""
    top = np.expand_dims(np.argmax(s, axis=axis), axis)
    masked = e.copy()
    np.put_along_axis(masked, top, 0.0, axis=axis)
    return np.sum(masked, axis=axis, keepdims=True)


def log_softmax_vjp(g, x, axis=-1):
    r"""VJP of :func:`log_softmax` along ``axis``.

    Derivation
    ----------
    ``l_i = x_i - log sum_k exp(x_k)``, so
    ``d l_i / d x_j = delta_ij - a_j`` with ``a = softmax(x)``; the Jacobian
    is ``I - 1 a^T``. The VJP::

        (g^T J)_j = g_j - a_j sum_i g_i

    Examples
    --------
    >>> log_softmax_vjp(np.array([1.0, 0.0]), np.array([0.0, 0.0])).tolist()
    [0.5, -0.5]
    """
    a = softmax(x, axis=axis)
    g = np.broadcast_to(cotangent_like(g, a.shape, "g", "x"), a.shape)
    return g - a * np.sum(g, axis=axis, keepdims=True)
