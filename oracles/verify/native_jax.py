"""The reference ops rebuilt from JAX's own operations, for the jax oracle.

Each function has the call signature of its namesake in :mod:`reference`
and takes and returns jax arrays. They use ``jax.nn`` and ``jax.numpy``
primitives (``jax.nn.log_softmax``, ``jax.nn.sigmoid``, ``jnp.take_along_axis``),
**not** a transliteration of the NumPy code, so that ``jax.vjp`` through them
is an independent check of the hand derivations. JAX has no built-in
cross-entropy or squared-error loss (those live in optax, which we do not
depend on); they are composed here from ``jax.nn.log_softmax`` and
``jnp.square``.

jax is imported inside each function: importing this module does not need
it. Call them under 64-bit mode (:func:`~oracles.jax_vjp` does)
to get float64.
"""

from __future__ import annotations

from oracles.backends.jax import import_jax
from oracles.errors import InvalidArgument
from reference.losses import CE_REDUCTIONS, SE_REDUCTIONS

__all__ = [
    "affine",
    "cross_entropy",
    "log_softmax",
    "relu",
    "sigmoid",
    "softmax",
    "squared_error",
    "tanh",
]

# The reference's conventions, named once (reference.losses).
_CE_REDUCTIONS = CE_REDUCTIONS
_SE_REDUCTIONS = SE_REDUCTIONS


def _jnp():
    import_jax()
    import jax.numpy as jnp

    return jnp


def tanh(x):
    """``jax.numpy.tanh``.

    Examples
    --------
    >>> tanh(0.0).tolist()
    0.0
    """
    return _jnp().tanh(x)


def sigmoid(x):
    """``jax.nn.sigmoid``.

    Examples
    --------
    >>> sigmoid(0.0).tolist()
    0.5
    """
    return import_jax().nn.sigmoid(x)


def relu(x):
    """``jax.nn.relu``. Its derivative at exactly 0 is 0 (JAX defines it so): ours.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> relu(jnp.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    return import_jax().nn.relu(x)


def softmax(x, axis=-1):
    """``jax.nn.softmax(x, axis=axis)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> softmax(jnp.zeros((2, 2)), axis=0).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    return import_jax().nn.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    """``jax.nn.log_softmax(x, axis=axis)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> log_softmax(jnp.array([1000.0, 0.0])).tolist()
    [0.0, -1000.0]
    """
    return import_jax().nn.log_softmax(x, axis=axis)


def cross_entropy(logits, targets, *, reduction="mean"):
    r"""Cross-entropy from logits, composed from ``jax.nn.log_softmax``.

    Parameters
    ----------
    logits : array, shape ``(..., C)``
        Classes on the last axis (JAX has no class-axis convention to convert).
    targets : int array, shape ``(...)``; or float array, shape ``(..., C)``
        Class labels, picked out with ``jnp.take_along_axis`` (no one-hot
        matrix is formed); or probability targets, used as given (they need
        not sum to 1): ``-sum_i y_i log_softmax(z)_i`` per row.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` is ``jnp.mean`` over the rows: divides by ``N``.

    Notes
    -----
    optax's ``softmax_cross_entropy`` (probability targets) and
    ``softmax_cross_entropy_with_integer_labels`` return the unreduced
    per-row losses; their mean is this ``reduction="mean"``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))), 6)
    1.386294
    """
    jax = import_jax()
    jnp = _jnp()
    if reduction not in _CE_REDUCTIONS:
        raise InvalidArgument(f"reduction must be one of {_CE_REDUCTIONS}, got {reduction!r}")
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = jnp.asarray(targets)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        per_row = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    else:
        per_row = -jnp.sum(targets * logp, axis=-1)
    if reduction == "none":
        return per_row
    return jnp.sum(per_row) if reduction == "sum" else jnp.mean(per_row)


def squared_error(pred, target, *, reduction="sum", half=False):
    r"""Squared error from ``jnp.square``, with the reference's reductions and ``half``.

    ``"mean"`` is ``jnp.mean`` over all elements (torch's ``MSELoss``);
    ``"batch_mean"`` sums and divides by ``pred.shape[0]``; ``half=True``
    multiplies by 1/2 (optax's ``l2_loss`` convention).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(squared_error(jnp.array([1.0, 2.0]), jnp.zeros(2)))
    5.0
    """
    jnp = _jnp()
    if reduction not in _SE_REDUCTIONS:
        raise InvalidArgument(f"reduction must be one of {_SE_REDUCTIONS}, got {reduction!r}")
    sq = jnp.square(pred - target)
    if reduction == "none":
        loss = sq
    elif reduction == "mean":
        loss = jnp.mean(sq)
    elif reduction == "sum":
        loss = jnp.sum(sq)
    else:
        if jnp.ndim(pred) < 1:
            raise InvalidArgument("reduction='batch_mean' needs an array with a batch axis")
        loss = jnp.sum(sq) / jnp.shape(pred)[0]
    return 0.5 * loss if half else loss


def affine(x, W, b):
    r"""``jnp.matmul(x, W) + b`` for ``W`` of shape ``(n_in, n_out)`` (flax's ``Dense`` layout).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> affine(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)).shape
    (2, 4)
    """
    return _jnp().matmul(x, W) + b
