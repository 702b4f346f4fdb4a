"""Layer objects with ``forward`` / ``backward`` methods, built on the reference functions.

The "deep learning from scratch" style: a layer caches what its backward
pass needs during ``forward``, and ``backward(dout)`` takes the upstream
gradient ``dout = dL/d(output)``, stores the gradients of its parameters as
attributes (``dW``, ``db``) and returns the gradient with respect to its
input. A learner writing their own layer classes can compare them with these,
object for object.

No derivation is repeated here: every ``forward`` calls the reference
function (:func:`reference.affine.affine`, :func:`reference.activations.tanh`,
...) and every ``backward`` calls its hand-derived VJP, whose docstring has
the derivation. The layers only add the bookkeeping, and the bookkeeping is
where layer code usually goes wrong, so it follows these rules:

* ``forward`` caches a **copy** of its inputs: changing ``x`` in place
  between ``forward`` and ``backward`` does not change the gradients.
* ``backward`` never writes to ``dout`` or to the parameters, and returns
  new arrays (``dout[x <= 0] = 0`` in a ReLU silently corrupts the caller's
  gradient; see :mod:`reference.pitfalls`).
* ``backward`` before any ``forward`` raises :class:`LayerStateError`;
  a ``dout`` of the wrong shape raises :class:`reference.InvalidInput`
  instead of broadcasting silently.
* Cached inputs live in private attributes (``_x``); the only public array
  attributes of a layer are its parameters and their gradients, so a
  checker that pairs ``W`` with ``dW`` finds exactly those.
* Inputs are accepted and refused as the reference functions accept and
  refuse them (lists converted; ``None`` and non-numbers raise
  :class:`reference.InvalidInput` naming the argument), checked before
  anything is cached.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from reference._validation import InvalidInput, as_numbers
from reference.activations import relu, relu_vjp, sigmoid, sigmoid_vjp, tanh, tanh_vjp
from reference.affine import affine, affine_vjp
from reference.losses import (
    CE_REDUCTIONS,
    SE_REDUCTIONS,
    cross_entropy,
    cross_entropy_vjp,
    squared_error,
    squared_error_vjp,
)
from reference.softmax import softmax, softmax_vjp

__all__ = [
    "Affine",
    "LayerStateError",
    "Relu",
    "Sigmoid",
    "Softmax",
    "SoftmaxWithLoss",
    "SquaredErrorLoss",
    "Tanh",
]


class LayerStateError(RuntimeError):
    """A layer method was called out of order: ``backward`` before any ``forward``."""


def _require_forward(layer):
    if layer._out_shape is None:
        name = type(layer).__name__
        raise LayerStateError(
            f"{name}.backward was called before {name}.forward: backward needs the "
            f"inputs that forward caches; call forward first"
        )


def _check_dout(layer, dout, *, scalar_ok=False):
    """``dout`` as an array whose shape is the forward output's (or ``()`` if allowed)."""
    dout = as_numbers(dout, "dout")
    if dout.shape == layer._out_shape or (scalar_ok and dout.shape == ()):
        return dout
    expected = f"{layer._out_shape}"
    if scalar_ok and layer._out_shape != ():
        expected += " or ()"
    raise InvalidInput(
        f"dout must have the shape of {type(layer).__name__}.forward's output, "
        f"{expected}, got {dout.shape}"
    )


class _Elementwise:
    """An elementwise activation: caches ``x``, backward is ``vjp(dout, x)``."""

    _fn = None
    _vjp = None

    def __init__(self) -> None:
        self._x = None
        self._out_shape = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        x = np.array(as_numbers(x, "x"))  # a copy: backward must see the x of this forward
        out = type(self)._fn(x)
        self._x, self._out_shape = x, np.shape(out)
        return out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        _require_forward(self)
        return type(self)._vjp(_check_dout(self, dout), self._x)


class Tanh(_Elementwise):
    """Tanh layer: ``forward`` is :func:`reference.activations.tanh`, ``backward`` its VJP.

    Examples
    --------
    >>> layer = Tanh()
    >>> float(layer.forward(np.array([0.0]))[0])
    0.0
    >>> layer.backward(np.array([2.0])).tolist()
    [2.0]
    """

    _fn = staticmethod(tanh)
    _vjp = staticmethod(tanh_vjp)


class Sigmoid(_Elementwise):
    """Sigmoid layer: ``forward`` is :func:`reference.activations.sigmoid`, ``backward`` its VJP.

    Examples
    --------
    >>> layer = Sigmoid()
    >>> layer.forward(np.array([0.0])).tolist()
    [0.5]
    >>> layer.backward(np.array([1.0])).tolist()
    [0.25]
    """

    _fn = staticmethod(sigmoid)
    _vjp = staticmethod(sigmoid_vjp)


class Relu(_Elementwise):
    """ReLU layer: ``forward`` is :func:`reference.activations.relu`, ``backward`` its VJP.

    The subgradient at ``x = 0`` is 0, as in :func:`reference.activations.relu_vjp`.
    ``backward`` returns a new array; ``dout`` is left as it was.

    Examples
    --------
    >>> layer = Relu()
    >>> layer.forward(np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    >>> dout = np.array([5.0, 5.0, 5.0])
    >>> layer.backward(dout).tolist(), dout.tolist()
    ([0.0, 0.0, 5.0], [5.0, 5.0, 5.0])
    """

    _fn = staticmethod(relu)
    _vjp = staticmethod(relu_vjp)


class Softmax:
    """Softmax layer over one axis: :func:`reference.softmax.softmax` and its VJP.

    Parameters
    ----------
    axis : int
        The axis to normalize (default: the last, the class axis).

    Notes
    -----
    ``backward`` applies the full Jacobian ``diag(a) - a a^T`` through
    :func:`reference.softmax.softmax_vjp`, not only its diagonal.

    Examples
    --------
    >>> layer = Softmax()
    >>> layer.forward(np.zeros((1, 2))).tolist()
    [[0.5, 0.5]]
    >>> layer.backward(np.array([[1.0, 0.0]])).tolist()
    [[0.25, -0.25]]
    """

    def __init__(self, *, axis: int = -1) -> None:
        if not isinstance(axis, int | np.integer) or isinstance(axis, bool):
            raise InvalidInput(f"axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self._x = None
        self._out_shape = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        x = np.array(as_numbers(x, "x"))
        if not -x.ndim <= self.axis < x.ndim:
            raise InvalidInput(f"axis {self.axis} is out of range for x of shape {x.shape}")
        out = softmax(x, axis=self.axis)
        self._x, self._out_shape = x, out.shape
        return out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        _require_forward(self)
        return softmax_vjp(_check_dout(self, dout), self._x, axis=self.axis)


class Affine:
    """Fully connected layer ``out = x @ W + b`` with parameter gradients ``dW``, ``db``.

    ``forward`` is :func:`reference.affine.affine`; ``backward`` calls
    :func:`reference.affine.affine_vjp`, stores ``dW`` (shape of ``W``) and
    ``db`` (shape of ``b``), and returns ``dx`` (shape of ``x``).

    Parameters
    ----------
    W : array, shape ``(n_in, n_out)``
    b : array, shape ``(n_out,)``
        Kept by reference (not copied), so an optimizer that updates them in
        place updates the layer. ``backward`` never writes to them.

    Attributes
    ----------
    W, b : ndarray
        The parameters.
    dW, db : ndarray or None
        Gradients of the loss with respect to ``W`` and ``b`` from the last
        ``backward``; ``None`` before the first one.

    Examples
    --------
    >>> layer = Affine(np.ones((3, 2)), np.zeros(2))
    >>> layer.forward(np.ones((4, 3))).shape
    (4, 2)
    >>> dx = layer.backward(np.ones((4, 2)))
    >>> dx.shape, layer.dW.shape, layer.db.tolist()
    ((4, 3), (3, 2), [4.0, 4.0])
    """

    def __init__(self, W: ArrayLike, b: ArrayLike) -> None:
        W = as_numbers(W, "W")
        b = as_numbers(b, "b")
        if W.ndim != 2:
            raise InvalidInput(f"W must be 2-D, shape (n_in, n_out), got shape {W.shape}")
        if b.shape != (W.shape[1],):
            raise InvalidInput(
                f"b must have shape (n_out,) = ({W.shape[1]},) to match W of shape {W.shape}, "
                f"got {b.shape}"
            )
        self.W = W
        self.b = b
        self.dW = None
        self.db = None
        self._x = None
        self._out_shape = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        x = np.array(as_numbers(x, "x"))
        if x.ndim < 1 or x.shape[-1] != self.W.shape[0]:
            raise InvalidInput(
                f"x must have shape (..., n_in) with n_in = {self.W.shape[0]} (the rows of W), "
                f"got {x.shape}"
            )
        out = affine(x, self.W, self.b)
        self._x, self._out_shape = x, out.shape
        return out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        _require_forward(self)
        dx, self.dW, self.db = affine_vjp(_check_dout(self, dout), self._x, self.W, self.b)
        return dx


class SoftmaxWithLoss:
    """Softmax followed by cross-entropy, fused: the usual last layer of a classifier.

    ``forward(logits, targets)`` returns
    :func:`reference.losses.cross_entropy` ``(logits, targets,
    reduction=reduction)``; ``backward(dout=1.0)`` returns the gradient with
    respect to the logits from :func:`reference.losses.cross_entropy_vjp`.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}
        ``"mean"`` (the default) divides by the number of rows.

    Notes
    -----
    ``targets`` are integer class labels (shape ``logits.shape[:-1]``) or
    probability targets shaped like the logits, which need not sum to 1 (the
    gradient is then ``(sum y) a - y``, not ``a - y``). The gradient with
    respect to probability targets is not returned.

    ``dout`` is the gradient of the final loss with respect to this layer's
    output: a scalar for ``"mean"`` and ``"sum"``; for ``"none"``, an array
    shaped like the per-row losses, or a scalar that weights every row.

    Examples
    --------
    >>> layer = SoftmaxWithLoss()
    >>> round(float(layer.forward(np.zeros((2, 4)), np.array([0, 3]))), 6)
    1.386294
    >>> layer.backward().tolist()
    [[-0.375, 0.125, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]]
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        if reduction not in CE_REDUCTIONS:
            raise InvalidInput(f"reduction must be one of {CE_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._logits = None
        self._targets = None
        self._out_shape = None

    def forward(self, logits: ArrayLike, targets: ArrayLike) -> np.ndarray:
        loss = cross_entropy(logits, targets, reduction=self.reduction)
        logits, targets = np.array(logits), np.array(targets)  # copies, validated above
        self._logits, self._targets, self._out_shape = logits, targets, np.shape(loss)
        return loss

    def backward(self, dout: ArrayLike = 1.0) -> np.ndarray:
        _require_forward(self)
        dout = _check_dout(self, dout, scalar_ok=True)
        return cross_entropy_vjp(dout, self._logits, self._targets, reduction=self.reduction)


class SquaredErrorLoss:
    """Squared-error loss layer with an explicit convention.

    ``forward(pred, target)`` returns :func:`reference.losses.squared_error`
    ``(pred, target, reduction=reduction, half=half)``; ``backward(dout=1.0)``
    returns the gradient with respect to ``pred`` from
    :func:`reference.losses.squared_error_vjp` (the gradient with respect to
    ``target`` is its negative and is not returned).

    Parameters
    ----------
    reduction : {"sum", "mean", "batch_mean", "none"}
        As in :func:`reference.losses.squared_error`; ``"mean"`` divides by
        the number of elements, ``"batch_mean"`` by ``pred.shape[0]``.
    half : bool
        Multiply the loss by 1/2 (the gradient is then ``p - t`` instead of
        ``2 (p - t)``).

    Notes
    -----
    ``dout`` is a scalar, except for ``reduction="none"`` where it may also
    be an array shaped like ``pred``.

    Examples
    --------
    >>> layer = SquaredErrorLoss(half=True)
    >>> float(layer.forward(np.array([1.0, 2.0]), np.zeros(2)))
    2.5
    >>> layer.backward().tolist()
    [1.0, 2.0]
    """

    def __init__(self, *, reduction: str = "sum", half: bool = False) -> None:
        if reduction not in SE_REDUCTIONS:
            raise InvalidInput(f"reduction must be one of {SE_REDUCTIONS}, got {reduction!r}")
        if not isinstance(half, bool | np.bool_):
            raise InvalidInput(f"half must be True or False, got {half!r}")
        self.reduction = reduction
        self.half = bool(half)
        self._pred = None
        self._target = None
        self._out_shape = None

    def forward(self, pred: ArrayLike, target: ArrayLike) -> np.ndarray:
        loss = squared_error(pred, target, reduction=self.reduction, half=self.half)
        pred, target = np.array(pred), np.array(target)  # copies, validated above
        self._pred, self._target, self._out_shape = pred, target, np.shape(loss)
        return loss

    def backward(self, dout: ArrayLike = 1.0) -> np.ndarray:
        _require_forward(self)
        dout = _check_dout(self, dout, scalar_ok=True)
        dpred, _ = squared_error_vjp(
            dout, self._pred, self._target, reduction=self.reduction, half=self.half
        )
        return dpred
