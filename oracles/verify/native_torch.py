"""The reference ops rebuilt from PyTorch's own operations, for the torch oracle.

Each function has the call signature of its namesake in :mod:`reference`
and takes and returns torch tensors. They are built from torch's native ops
(``torch.softmax``, ``torch.nn.functional.cross_entropy``, ``F.mse_loss``,
``F.linear``), **not** transliterated from the NumPy code, so that autograd
through them is an independent check of the hand derivations. Where torch's
convention differs from ours, the function converts and its docstring says
how; tests/reference/test_native_equivalents.py checks every claim.

torch is imported inside each function: importing this module does not need
it (calling a function does, and it receives tensors anyway).
"""

from __future__ import annotations

from oracles.backends.torch import import_torch
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


def tanh(x):
    """``torch.tanh``.

    Examples
    --------
    >>> import torch
    >>> tanh(torch.zeros(1)).tolist()
    [0.0]
    """
    return import_torch().tanh(x)


def sigmoid(x):
    """``torch.sigmoid`` (stable for any ``|x|``, like the reference).

    Examples
    --------
    >>> import torch
    >>> sigmoid(torch.zeros(1)).tolist()
    [0.5]
    """
    return import_torch().sigmoid(x)


def relu(x):
    """``torch.relu``. Its autograd derivative at exactly 0 is 0, the reference's choice.

    Examples
    --------
    >>> import torch
    >>> relu(torch.tensor([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    return import_torch().relu(x)


def softmax(x, axis=-1):
    """``torch.softmax(x, dim=axis)``; our ``axis`` is torch's ``dim``.

    Examples
    --------
    >>> import torch
    >>> softmax(torch.zeros(2, 2), axis=0).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    return import_torch().softmax(x, dim=axis)


def log_softmax(x, axis=-1):
    """``torch.log_softmax(x, dim=axis)``; our ``axis`` is torch's ``dim``.

    Examples
    --------
    >>> import torch
    >>> log_softmax(torch.tensor([1000.0, 0.0], dtype=torch.float64)).tolist()
    [0.0, -1000.0]
    """
    return import_torch().log_softmax(x, dim=axis)


def cross_entropy(logits, targets, *, reduction="mean"):
    r"""``torch.nn.functional.cross_entropy`` with the reference's conventions.

    Parameters
    ----------
    logits : Tensor, shape ``(..., C)``
        Classes on the **last** axis.
    targets : int array or Tensor, shape ``(...)``; or float, shape ``(..., C)``
        Class labels, or probability targets (need not sum to 1). Array-likes
        are converted (labels to ``int64``, probabilities to ``logits.dtype``).
    reduction : {"mean", "sum", "none"}

    Notes
    -----
    Convention differences, each tested:

    * **Class axis.** torch wants classes on dim 1 (``(N, C, d1, ...)``); ours
      are last. For more than 2 axes this function moves the class axis of
      ``logits`` (and of probability targets) to dim 1 before the call.
      ``reduction="none"`` then returns shape ``logits.shape[:-1]``, ours.
    * **Probability targets** are used as given: torch computes
      ``-sum_i y_i log_softmax(z)_i`` per row and does not renormalize
      ``y``, which is our general form (the gradient is
      ``(sum y) softmax(z) - y``, not ``softmax(z) - y``).
    * **"mean"** divides by the number of rows ``N`` (the product of the
      batch axes) for labels and for probability targets alike: ours. With
      ``weight=`` or ``ignore_index=`` (not used here) torch's label mean
      divides by the summed weight of the non-ignored rows instead.
    * **label_smoothing=eps** (not used here; the reference has none) is
      cross-entropy against the targets ``(1 - eps) y + eps / C``: the one-hot
      of a label, or the given probabilities, mixed with the uniform
      distribution. With probability targets that do not sum to 1 the result
      still does not.

    Examples
    --------
    >>> import torch
    >>> z = torch.zeros(1, 4, dtype=torch.float64)
    >>> round(float(cross_entropy(z, [2])), 6)
    1.386294
    """
    torch = import_torch()
    functional = torch.nn.functional
    if reduction not in _CE_REDUCTIONS:
        raise InvalidArgument(f"reduction must be one of {_CE_REDUCTIONS}, got {reduction!r}")
    targets = torch.as_tensor(targets, device=logits.device)
    if targets.is_floating_point():
        targets = targets.to(logits.dtype)
        if targets.ndim > 2:
            targets = targets.movedim(-1, 1)
    else:
        targets = targets.long()
    if logits.ndim > 2:
        logits = logits.movedim(-1, 1)
    return functional.cross_entropy(logits, targets, reduction=reduction)


def squared_error(pred, target, *, reduction="sum", half=False):
    r"""``torch.nn.functional.mse_loss`` with the reference's reductions and ``half``.

    Notes
    -----
    torch's ``reduction="mean"`` (``MSELoss``' default) divides by the number
    of **elements**, which is our ``"mean"``. Our ``"batch_mean"`` (divide by
    ``pred.shape[0]`` only, the per-example sum averaged over the batch) has
    no torch name: it is ``mse_loss(reduction="sum") / N`` here; the two
    differ by the factor ``size / N``. torch has no ``half``; ``half=True``
    multiplies by 1/2.

    Examples
    --------
    >>> import torch
    >>> p, t = torch.tensor([1.0, 2.0]), torch.zeros(2)
    >>> float(squared_error(p, t)), float(squared_error(p, t, reduction="mean", half=True))
    (5.0, 1.25)
    """
    functional = import_torch().nn.functional
    if reduction not in _SE_REDUCTIONS:
        raise InvalidArgument(f"reduction must be one of {_SE_REDUCTIONS}, got {reduction!r}")
    if reduction == "batch_mean":
        if pred.ndim < 1:
            raise InvalidArgument("reduction='batch_mean' needs a tensor with a batch axis")
        loss = functional.mse_loss(pred, target, reduction="sum") / pred.shape[0]
    else:
        loss = functional.mse_loss(pred, target, reduction=reduction)
    return 0.5 * loss if half else loss


def affine(x, W, b):
    r"""``F.linear(x, W.mT, b)``: ``x @ W + b`` for ``W`` of shape ``(n_in, n_out)``.

    Notes
    -----
    ``F.linear`` and ``nn.Linear`` store the weight as ``(n_out, n_in)`` and
    compute ``x W^T + b``; ours is ``(n_in, n_out)``. The transpose here is
    a view, so autograd returns ``dW`` in our layout.

    Examples
    --------
    >>> import torch
    >>> affine(torch.ones(2, 3), torch.ones(3, 4), torch.zeros(4)).shape
    torch.Size([2, 4])
    """
    functional = import_torch().nn.functional
    return functional.linear(x, W.mT, b)
