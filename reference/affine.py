"""Affine (fully connected) layer ``Y = X W + b`` with its hand-derived VJP."""

from __future__ import annotations

import numpy as np

__all__ = ["affine", "affine_vjp"]


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

    ``b`` is unused: the layer is linear in it. Shapes check the transposes:
    ``G W`` (missing transpose) only type-checks when ``W`` is square, and then
    it is silently wrong.

    Examples
    --------
    >>> dx, dW, db = affine_vjp(np.ones((2, 4)), np.ones((2, 3)), np.ones((3, 4)), np.zeros(4))
    >>> dx.shape, dW.shape, db.tolist()
    ((2, 3), (3, 4), [2.0, 2.0, 2.0, 2.0])
    """
    del b
    g = np.asarray(g)
    x = np.asarray(x)
    W = np.asarray(W)
    g2 = g.reshape(-1, g.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dx = np.matmul(g, W.T)
    dW = x2.T @ g2
    db = g2.sum(axis=0)
    return dx, dW, db
