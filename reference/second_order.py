r"""Hand-derived Hessian-vector products of scalar losses.

A Hessian-vector product (HVP) ``H v`` is the derivative of the gradient
along ``v``: ``H v = d/dt grad L(x + t v) |_{t=0}``. It is what Newton-type
and curvature methods need, and it is never formed from the full Hessian:
each function below derives ``H v`` in closed form, in ``O(size)`` work.

Every function takes the direction ``v`` first (shaped like the variable
differentiated), then the arguments of the loss, as the VJPs of this
package take the cotangent first. Each is the HVP of one **scalar**
function, named in its docstring, with respect to one argument; the other
arguments (labels, targets, weights) are constants.
"""

from __future__ import annotations

import numpy as np

from reference._validation import InvalidInput
from reference.activations import tanh_vjp
from reference.losses import SE_REDUCTIONS, _targets_as_probabilities
from reference.softmax import softmax

__all__ = ["cross_entropy_hvp", "squared_error_hvp", "tanh_hvp"]

#: The reductions whose loss is a scalar (an HVP is defined for a scalar loss).
SCALAR_CE_REDUCTIONS = ("mean", "sum")


def _direction(v, shape, what):
    v = np.asarray(v, dtype=np.float64)
    if v.shape != tuple(shape):
        raise InvalidInput(f"v must have the shape of {what} {tuple(shape)}, got {v.shape}")
    return v


def cross_entropy_hvp(v, logits, targets, *, reduction="mean"):
    r"""HVP of ``L(z) = cross_entropy(z, targets, reduction=reduction)`` with respect to the logits.

    Derivation
    ----------
    Rows are independent (the Hessian is block diagonal), so take one row
    ``z`` with targets ``y``, ``S = sum_i y_i`` (1 for class labels) and
    ``a = softmax(z)``. From :func:`reference.losses.cross_entropy_vjp`::

        dL/dz_j = S a_j - y_j

    The targets are constants; differentiate ``a_j`` once more
    (``da_j/dz_k = a_j (delta_jk - a_k)``)::

        d^2 L / dz_j dz_k = S (a_j delta_jk - a_j a_k)
        H = S (diag(a) - a a^T)

    and, without forming ``H``::

        (H v)_j = S (a_j v_j - a_j (a . v)) = S a_j (v_j - a . v)

    ``"sum"`` adds the rows' Hessians, ``"mean"`` divides them by the number
    of rows ``N``. Dropping the ``a (a . v)`` term (keeping only the
    diagonal of ``H``) is the classic mistake; so is forgetting ``S`` for
    targets that do not sum to 1.

    Parameters
    ----------
    v : array, shape of ``logits``
        The direction.
    logits : array, shape ``(..., C)``
    targets : int array, shape ``(...)``, or float array, shape ``(..., C)``
        As in :func:`reference.losses.cross_entropy`.
    reduction : {"mean", "sum"}
        ``"none"`` has no HVP: the loss is not a scalar.

    Returns
    -------
    ndarray
        ``H v``, shaped like ``logits``.

    Notes
    -----
    ``H`` is positive semi-definite (``v . H v = S (sum a v^2 - (a . v)^2)
    >= 0``) and ``H 1 = 0``: adding a constant to a row's logits does not
    change the loss.

    Examples
    --------
    >>> z = np.zeros((1, 2))
    >>> cross_entropy_hvp(np.array([[1.0, 0.0]]), z, np.array([0])).tolist()
    [[0.25, -0.25]]
    """
    if reduction not in SCALAR_CE_REDUCTIONS:
        raise InvalidInput(
            f"reduction must be one of {SCALAR_CE_REDUCTIONS} (a Hessian-vector product needs a "
            f"scalar loss), got {reduction!r}"
        )
    logits = np.asarray(logits, dtype=np.float64)
    Y, _ = _targets_as_probabilities(logits, targets)
    v = _direction(v, logits.shape, "logits")
    a = softmax(logits, axis=-1)
    S = np.sum(Y, axis=-1, keepdims=True)
    hv = S * a * (v - np.sum(a * v, axis=-1, keepdims=True))
    if reduction == "mean":
        hv = hv / max(int(np.prod(logits.shape[:-1])), 1)
    return hv


def squared_error_hvp(v, pred, target, *, reduction="sum", half=False):
    r"""HVP of ``L(p) = squared_error(p, target, reduction=reduction, half=half)`` w.r.t. ``pred``.

    Derivation
    ----------
    ``L = c sum_i (p_i - t_i)^2`` with ``c`` the constant of the convention
    (``1/2`` for ``half=True``, divided by the number of elements for
    ``"mean"`` and by ``pred.shape[0]`` for ``"batch_mean"``), so::

        dL/dp_i = 2 c (p_i - t_i)
        d^2 L / dp_i dp_j = 2 c delta_ij
        H v = 2 c v

    The Hessian does not depend on ``pred`` or ``target``: the loss is
    quadratic. (With respect to ``(pred, target)`` jointly it would be
    ``2 c [[I, -I], [-I, I]]``; only ``pred`` is differentiated here.)

    Parameters
    ----------
    v : array, shape of ``pred``
    pred, target : array
        Same shape.
    reduction : {"sum", "mean", "batch_mean"}
        ``"none"`` has no HVP: the loss is not a scalar.
    half : bool

    Returns
    -------
    ndarray
        ``H v``, shaped like ``pred``.

    Examples
    --------
    >>> squared_error_hvp(np.array([1.0, -2.0]), np.zeros(2), np.ones(2), reduction="mean").tolist()
    [1.0, -2.0]
    """
    scalar = tuple(r for r in SE_REDUCTIONS if r != "none")
    if reduction not in scalar:
        raise InvalidInput(
            f"reduction must be one of {scalar} (a Hessian-vector product needs a scalar loss), "
            f"got {reduction!r}"
        )
    if not isinstance(half, bool | np.bool_):
        raise InvalidInput(f"half must be True or False, got {half!r}")
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise InvalidInput(
            f"pred and target must have the same shape, got {pred.shape} and {target.shape}"
        )
    v = _direction(v, pred.shape, "pred")
    c = 0.5 if half else 1.0
    if reduction == "mean":
        c /= max(int(np.prod(pred.shape)), 1)
    elif reduction == "batch_mean":
        if pred.ndim < 1:
            raise InvalidInput("reduction='batch_mean' needs an array with a batch axis")
        c /= max(pred.shape[0], 1)
    return 2.0 * c * v


def tanh_hvp(v, x, *, weights=None):
    r"""HVP of ``L(x) = sum(weights * tanh(x))`` with respect to ``x``.

    This is the second-order term that backpropagation through a tanh layer
    needs: ``weights`` plays the role of the upstream gradient, held fixed.

    Derivation
    ----------
    With ``y = tanh(x)``, ``dy/dx = 1 - y^2`` and, differentiating again,
    ``d^2 y / dx^2 = -2 y dy/dx = -2 tanh(x) (1 - tanh(x)^2)``. ``L`` is a
    sum of functions of one element each, so its Hessian is diagonal::

        dL/dx_i = w_i (1 - y_i^2)
        H = diag(-2 w y (1 - y^2))
        (H v)_i = -2 w_i y_i (1 - y_i^2) v_i

    Forgetting the factor 2, or the sign (``tanh`` is concave for
    ``x > 0``), are the usual mistakes.

    Parameters
    ----------
    v : array, shape of ``x``
    x : array
    weights : array or float, optional
        Broadcast to ``x``'s shape; default 1 (``L = sum tanh(x)``).

    Returns
    -------
    ndarray
        ``H v``, shaped like ``x``.

    Examples
    --------
    >>> tanh_hvp(np.array([1.0]), np.array([0.0])).tolist()
    [-0.0]
    >>> round(float(tanh_hvp(np.array([1.0]), np.array([1.0]))[0]), 6)
    -0.6397
    """
    x = np.asarray(x, dtype=np.float64)
    v = _direction(v, x.shape, "x")
    w = np.ones(x.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    try:
        w = np.broadcast_to(w, x.shape)
    except ValueError:
        raise InvalidInput(
            f"weights must broadcast to the shape of x {x.shape}, got {w.shape}"
        ) from None
    # tanh_vjp computes (1 - y^2) times its first argument.
    return -2.0 * np.tanh(x) * tanh_vjp(w * v, x)
