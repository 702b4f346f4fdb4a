"""Affine (fully connected) layer ``Y = X W + b`` with its hand-derived VJP.

Inputs (see :mod:`reference._validation`): lists are converted; ``None``,
non-numbers and shapes that do not chain (``x (..., n_in)``, ``W (n_in,
n_out)``, ``b (n_out,)``) raise :class:`reference.InvalidInput` naming the
argument. Zero-size axes are valid: an empty batch gives an empty ``Y`` and
zero parameter gradients. Complex inputs give the analytic continuation.
"""

from __future__ import annotations

import numpy as np

from reference._validation import InvalidInput, as_numbers, cotangent_like

__all__ = ["affine", "affine_vjp"]


def _arguments(x, W, b):
    """``x``, ``W``, ``b`` as arrays whose shapes chain, or InvalidInput naming the culprit."""
    x, W, b = as_numbers(x, "x"), as_numbers(W, "W"), as_numbers(b, "b")
    if W.ndim != 2:
        raise InvalidInput(f"W must be 2-D, shape (n_in, n_out), got shape {W.shape}")
    if b.shape != (W.shape[1],):
        raise InvalidInput(
            f"b must have shape (n_out,) = ({W.shape[1]},) to match W of shape {W.shape}, "
            f"got {b.shape}"
        )
    if x.ndim < 1 or x.shape[-1] != W.shape[0]:
        raise InvalidInput(
            f"x must have shape (..., n_in) with n_in = {W.shape[0]} (the rows of W), got {x.shape}"
        )
    return x, W, b


def affine(x, W, b):
    r"""Affine map ``Y = X W + b`` for batched ``X``.

    Parameters
    ----------
    x : array, shape ``(..., n_in)``
        Any number of leading batch axes (``(N, n_in)`` is the usual case).
    W : array, shape ``(n_in, n_out)``
    b : array, shape ``(n_out,)``

    Returns
    -------
    array, shape ``(..., n_out)``

    Examples
    --------
    >>> affine(np.ones((2, 3)), np.ones((3, 4)), np.zeros(4)).shape
    (2, 4)
    """
    x, W, b = _arguments(x, W, b)
    return np.matmul(x, W) + b


def affine_vjp(g, x, W, b):
    r"""VJP of :func:`affine`: gradients with respect to ``x``, ``W`` and ``b``.

    Derivation
    ----------
    With one row ``y_k = sum_i x_i W_ik + b_k``::

        dy_k / dx_i = W_ik     dy_k / dW_ij = x_i delta_jk     dy_k / db_j = delta_jk

    Contracting with the cotangent ``G = dL/dY`` and summing over the batch
    rows ``n`` (every row uses the same ``W`` and ``b``)::

        dL/dX = G W^T            (..., n_out) @ (n_out, n_in)
        dL/dW = X^T G            sum over all batch rows of x_n^T g_n
        dL/db = sum_n G_n        a sum over the batch, not a mean

    ``b`` only fixes the shapes: the layer is linear in it. Shapes check the transposes:
    ``G W`` (missing transpose) only type-checks when ``W`` is square, and then
    it is silently wrong.

    Examples
    --------
    >>> dx, dW, db = affine_vjp(np.ones((2, 4)), np.ones((2, 3)), np.ones((3, 4)), np.zeros(4))
    >>> dx.shape, dW.shape, db.tolist()
    ((2, 3), (3, 4), [2.0, 2.0, 2.0, 2.0])
    """
    x, W, b = _arguments(x, W, b)
    out_shape = x.shape[:-1] + W.shape[1:]
    g = np.broadcast_to(cotangent_like(g, out_shape, "g", "Y"), out_shape)
    # Rows counted explicitly: reshape(-1, n) cannot infer them when n is 0.
    rows = int(np.prod(x.shape[:-1]))
    g2 = g.reshape(rows, W.shape[1])
    x2 = x.reshape(rows, W.shape[0])
    dx = np.matmul(g, W.T)
    dW = x2.T @ g2
    db = g2.sum(axis=0)
    return dx, dW, db
