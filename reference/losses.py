"""Losses: cross-entropy from logits and squared error, with hand-derived VJPs and HVPs.

Conventions (written out because published derivations mix them up):

* Classes lie along the **last** axis; every other axis is a batch axis.
  ``N`` below is the number of rows, i.e. the product of the batch axes.
* ``reduction="mean"`` for cross-entropy divides by ``N`` (the number of
  rows); for squared error it divides by the number of **elements**, as
  ``torch.nn.MSELoss`` does. ``"batch_mean"`` (squared error only) divides by
  ``N`` after summing over the class axis.
* ``half=True`` multiplies the squared error by 1/2, the convention of many
  textbooks, which makes the gradient ``(p - t)`` instead of ``2 (p - t)``.

Inputs (see :mod:`reference._validation`): lists are converted; ``None``,
non-numbers, logits without a class (``C = 0``), and class labels that are
negative, ``>= C`` or not integers raise :class:`reference.InvalidInput`
naming the argument. An empty batch is a valid input for ``"sum"`` (loss 0)
and ``"none"`` (an empty array); a mean over nothing is undefined, so
``"mean"`` (and ``"batch_mean"`` with no rows) refuses it. Complex logits,
predictions and targets give the analytic continuation.
"""

from __future__ import annotations

import numpy as np

from reference._validation import (
    InvalidInput,
    as_floats,
    as_numbers,
    cotangent_like,
    direction_like,
)
from reference.softmax import _shifted, log_softmax, softmax

__all__ = [
    "CE_REDUCTIONS",
    "SE_REDUCTIONS",
    "cross_entropy",
    "cross_entropy_hvp",
    "cross_entropy_vjp",
    "squared_error",
    "squared_error_hvp",
    "squared_error_vjp",
]

CE_REDUCTIONS = ("mean", "sum", "none")
# The reductions whose loss is a scalar (a Hessian-vector product needs a scalar loss).
_CE_SCALAR_REDUCTIONS = ("mean", "sum")
_FLOAT_MAX = float(np.finfo(np.float64).max)
SE_REDUCTIONS = ("sum", "mean", "batch_mean", "none")


def _targets_as_probabilities(logits, targets):
    """Return ``(logits, Y)``: logits as floats, targets as probabilities shaped like them."""
    logits = as_floats(logits, "logits")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise InvalidInput(
            f"logits must have a class axis (the last) with at least 1 class, got shape "
            f"{logits.shape}"
        )
    n_classes = logits.shape[-1]
    if targets is not None and np.asarray(targets).dtype == np.bool_:
        raise InvalidInput(
            "targets must be integer class labels or floating probability targets, got dtype bool"
        )
    targets = as_numbers(targets, "targets")
    if np.issubdtype(targets.dtype, np.integer):
        if targets.shape != logits.shape[:-1]:
            raise InvalidInput(
                f"targets: integer class labels must have the shape of logits without the "
                f"class axis: expected {logits.shape[:-1]}, got {targets.shape}"
            )
        if targets.size and (targets.min() < 0 or targets.max() >= n_classes):
            raise InvalidInput(
                f"targets: class labels must lie in [0, {n_classes - 1}], got values in "
                f"[{targets.min()}, {targets.max()}]"
            )
        # One-hot by indexing every row at its own label: Y[n, t_n] = 1.
        # (Y[:, t] would set whole columns: a published mistake.)
        Y = np.zeros(logits.shape, dtype=np.float64)
        np.put_along_axis(Y, targets[..., None].astype(np.intp), 1.0, axis=-1)
        return logits, Y
    if targets.shape != logits.shape:
        hint = "; class labels must be integers" if targets.shape == logits.shape[:-1] else ""
        raise InvalidInput(
            f"targets: {targets.dtype} targets are probabilities and must have the shape of "
            f"logits {logits.shape}{hint}, got shape {targets.shape}"
        )
    return logits, targets.astype(np.result_type(targets, np.float64), copy=False)


def _check_reduction(reduction, valid, logits, *, why=""):
    """A known reduction; ``"mean"`` needs at least one row to average."""
    if reduction not in valid:
        raise InvalidInput(f"reduction must be one of {valid}{why}, got {reduction!r}")
    if reduction == "mean" and logits.size == 0:
        raise InvalidInput(
            f"logits has no rows (shape {logits.shape}): reduction='mean' averages over the "
            f"rows and a mean of none is undefined; use reduction='sum' (0) or 'none' (empty)"
        )


def _reduce(per_row, reduction):
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return np.sum(per_row)
    n = per_row.size
    if np.max(np.abs(per_row)) > _FLOAT_MAX / n:
        # The sum could overflow although the mean is representable (losses
        # of 1e308 from logits near the float64 limit): divide first.
        return np.sum(per_row / n)
    return np.mean(per_row)


def cross_entropy(logits, targets, *, reduction="mean"):
    r"""Cross-entropy between ``softmax(logits)`` and ``targets``, fused and stable.

    Parameters
    ----------
    logits : array, shape ``(..., C)``
    targets : int array, shape ``(...)``, or float array, shape ``(..., C)``
        Class labels, or probability targets (one-hot or soft). Probability
        targets need **not** sum to 1 per row (label smoothing variants,
        partial labels, weighted targets); the loss and its gradient are
        derived for the general case.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the number of rows ``N``.

    Notes
    -----
    Per row, ``L = -sum_i y_i log a_i`` with ``log a = log_softmax(z)``
    computed directly (never ``log(softmax(z))``), so logits of any magnitude
    give finite losses.

    Examples
    --------
    >>> round(float(cross_entropy(np.zeros((1, 4)), np.array([2]))), 6)
    1.386294
    """
    logits, Y = _targets_as_probabilities(logits, targets)
    _check_reduction(reduction, CE_REDUCTIONS, logits)
    # A class with target 0 contributes 0, also where log_softmax is -inf
    # (a logit 1.8e308 below the row's maximum): 0 * -inf would be nan.
    log_a = np.where(Y != 0, log_softmax(logits, axis=-1), 0.0)
    per_row = -np.sum(Y * log_a, axis=-1)
    return _reduce(per_row, reduction)


def cross_entropy_vjp(g, logits, targets, *, reduction="mean"):
    r"""VJP of :func:`cross_entropy` with respect to the logits.

    Derivation
    ----------
    For one row with ``a = softmax(z)`` and ``lse(z) = log sum_k exp(z_k)``::

        L = -sum_i y_i log a_i = -sum_i y_i z_i + (sum_i y_i) lse(z)
        dL/dz_j = -y_j + (sum_i y_i) a_j

    Only when the targets sum to 1 (class labels, one-hot, proper soft
    labels) does this collapse to the familiar ``a - y``; using ``a - y`` for
    targets that do not sum to 1 is a published mistake.

    The reduction scales the row gradients: ``"sum"`` by ``g``, ``"mean"`` by
    ``g / N`` (forgetting the ``1/N`` is another), ``"none"`` row ``n`` by
    ``g[n]``. ``g`` is a scalar for ``"mean"`` and ``"sum"``; for ``"none"``
    it has the shape of the per-row losses, or is a scalar weighting every row.

    Returns
    -------
    array shaped like ``logits``. The gradient with respect to probability
    targets, ``-log_softmax(z)`` (scaled the same way), is not returned.

    Examples
    --------
    >>> cross_entropy_vjp(1.0, np.zeros((1, 2)), np.array([0])).tolist()
    [[-0.5, 0.5]]
    """
    logits, Y = _targets_as_probabilities(logits, targets)
    _check_reduction(reduction, CE_REDUCTIONS, logits)
    loss_shape = logits.shape[:-1] if reduction == "none" else ()
    g = cotangent_like(g, loss_shape, "g", f"the loss (reduction={reduction!r})")
    g = g.astype(np.result_type(g, np.float64), copy=False)
    a = softmax(logits, axis=-1)
    # S a - y, rearranged as (S - y) a - y (1 - a): both terms are >= 0 for
    # targets in [0, 1], and 1 - a is computed without cancellation, so the
    # gradient of a confident row (a_t = 1 - 1e-11) keeps its digits. S - y_j
    # is the sum of the other targets, added up as such (prefix plus suffix):
    # for targets [1.4e-45, 1], S - 1 rounds to 0 where it is 1.4e-45.
    others = _sum_of_others(Y)
    row_grad = others * a - Y * _one_minus_softmax(logits)
    if reduction == "none":
        return row_grad * g[..., None]
    if reduction == "mean":
        return row_grad * (g / (logits.size // logits.shape[-1]))
    return row_grad * g


def _sum_of_others(Y):
    """``sum_{i != j} Y_i`` for every ``j`` of the last axis, without subtracting ``Y_j``."""
    zero = np.zeros(Y.shape[:-1] + (1,), dtype=Y.dtype)
    before = np.cumsum(np.concatenate([zero, Y[..., :-1]], axis=-1), axis=-1)
    after = np.flip(np.cumsum(np.concatenate([zero, np.flip(Y, -1)[..., :-1]], axis=-1), -1), -1)
    return before + after


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
    if reduction not in _CE_SCALAR_REDUCTIONS:
        raise InvalidInput(
            f"reduction must be one of {_CE_SCALAR_REDUCTIONS} (a Hessian-vector product needs a "
            f"scalar loss), got {reduction!r}"
        )
    logits, Y = _targets_as_probabilities(logits, targets)
    _check_reduction(reduction, _CE_SCALAR_REDUCTIONS, logits)
    v = direction_like(v, logits.shape, "logits")
    a = softmax(logits, axis=-1)
    S = np.sum(Y, axis=-1, keepdims=True)
    hv = S * a * (v - np.sum(a * v, axis=-1, keepdims=True))
    if reduction == "mean":
        hv = hv / (logits.size // logits.shape[-1])
    return hv


def _one_minus_softmax(logits):
    """``1 - softmax(z)`` along the last axis, accurate where ``softmax(z)`` is near 1.

    ``1 - a_j = sum_{k != j} exp(z_k) / sum_k exp(z_k)``; only at the
    row's maximum can ``a_j`` be near 1, and there the numerator is summed
    directly instead of subtracting.
    """
    s = _shifted(logits, -1)
    e = np.exp(s)
    total = np.sum(e, axis=-1, keepdims=True)
    out = 1.0 - e / total
    top = np.argmax(s, axis=-1)[..., None]
    masked = e.copy()
    np.put_along_axis(masked, top, 0.0, axis=-1)
    others = np.sum(masked, axis=-1, keepdims=True)
    np.put_along_axis(out, top, others / total, axis=-1)
    return out


def _se_arguments(pred, target, reduction, half, *, valid=SE_REDUCTIONS, why=""):
    """Validated float arrays ``(pred, target)`` of one shape, and the constant ``c``.

    ``c`` is the constant in ``L = c * sum (p - t)^2`` (before any ``"none"``).
    """
    pred = as_floats(pred, "pred")
    target = as_floats(target, "target")
    if pred.shape != target.shape:
        raise InvalidInput(
            f"pred and target must have the same shape, got {pred.shape} and {target.shape}"
        )
    if reduction not in valid:
        raise InvalidInput(f"reduction must be one of {valid}{why}, got {reduction!r}")
    if not isinstance(half, bool | np.bool_):
        raise InvalidInput(f"half must be True or False, got {half!r}")
    c = 0.5 if half else 1.0
    if reduction == "mean":
        if pred.size == 0:
            raise InvalidInput(
                f"pred has no elements (shape {pred.shape}): reduction='mean' divides by the "
                f"number of elements and a mean of none is undefined; use reduction='sum' (0) "
                f"or 'none' (empty)"
            )
        c /= pred.size
    elif reduction == "batch_mean":
        if pred.ndim < 1 or pred.shape[0] == 0:
            raise InvalidInput(
                f"pred must have a batch axis with at least 1 row for reduction='batch_mean' "
                f"(it divides by the number of rows), got shape {pred.shape}"
            )
        c /= pred.shape[0]
    return pred, target, c


def squared_error(pred, target, *, reduction="sum", half=False):
    r"""Squared error with an explicit convention.

    ====================  ===============================================
    ``reduction``         loss
    ====================  ===============================================
    ``"sum"``             ``c * sum (p - t)^2``
    ``"mean"``            ``c * sum (p - t)^2 / size`` (torch ``MSELoss``)
    ``"batch_mean"``      ``c * sum (p - t)^2 / N``, ``N = p.shape[0]``
    ``"none"``            ``c * (p - t)^2`` elementwise
    ====================  ===============================================

    with ``c = 1/2`` when ``half=True`` and ``c = 1`` otherwise.

    Examples
    --------
    >>> float(squared_error(np.array([1.0, 2.0]), np.zeros(2)))
    5.0
    >>> float(squared_error(np.array([1.0, 2.0]), np.zeros(2), reduction="mean", half=True))
    1.25
    """
    pred, target, c = _se_arguments(pred, target, reduction, half)
    sq = (pred - target) ** 2
    return c * sq if reduction == "none" else c * np.sum(sq)


def squared_error_vjp(g, pred, target, *, reduction="sum", half=False):
    r"""VJP of :func:`squared_error`: gradients with respect to ``pred`` and ``target``.

    Derivation
    ----------
    ``L = c * sum_i (p_i - t_i)^2`` gives ``dL/dp_i = 2 c (p_i - t_i)`` and
    ``dL/dt_i = -2 c (p_i - t_i)``. With ``half=True`` the 2 cancels the 1/2;
    without it, the 2 stays (dropping it is a published mistake). The
    cotangent ``g`` multiplies: a scalar, or for ``"none"`` an array shaped
    like ``pred`` (elementwise).

    Examples
    --------
    >>> dp, dt = squared_error_vjp(1.0, np.array([1.0, 2.0]), np.zeros(2))
    >>> dp.tolist(), dt.tolist()
    ([2.0, 4.0], [-2.0, -4.0])
    """
    pred, target, c = _se_arguments(pred, target, reduction, half)
    loss_shape = pred.shape if reduction == "none" else ()
    g = cotangent_like(g, loss_shape, "g", f"the loss (reduction={reduction!r})")
    dpred = (2.0 * c) * (pred - target) * g
    return dpred, -dpred


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
    why = " (a Hessian-vector product needs a scalar loss)"
    pred, _, c = _se_arguments(pred, target, reduction, half, valid=scalar, why=why)
    v = direction_like(v, pred.shape, "pred")
    return 2.0 * c * v
