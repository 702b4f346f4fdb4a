"""PyTorch autograd as an oracle: the VJP of a torch function, from NumPy in, to NumPy out.

``torch`` is imported only when an adapter is called, so ``import oracles``
works without it; calling one without torch installed raises
:class:`~oracles.errors.BackendUnavailable` naming the extra to install.

Arguments are validated by :mod:`oracles._validation`, as for every entry
point: the adapters accept exactly what ``check_vjp`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles._validation import as_cotangent, as_inputs, check_callable
from oracles.errors import BackendUnavailable, InvalidArgument, UserFunctionError

__all__ = ["ROUNDING_FACTOR", "TINY", "error_estimate", "torch_vjp"]

#: ``k`` in the per-element rounding bound of :func:`error_estimate`.
#: Reverse-mode autodiff has no truncation error: what separates it from the
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


def error_estimate(grads, *, cotangent=None, factor=ROUNDING_FACTOR):
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

    Returns
    -------
    tuple of float64 arrays
        ``k * eps * (|g| + max|g| + max|cotangent|) + TINY`` elementwise,
        shaped like each gradient.

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
    bounds = []
    for g in grads:
        a = np.abs(np.asarray(g, dtype=np.float64))
        peak = float(np.max(a)) if a.size else 0.0
        bounds.append(factor * _EPS * (a + peak + ct_peak) + TINY)
    return tuple(bounds)


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            "the torch oracle needs PyTorch, which is not installed: "
            'pip install "backprop-oracles[torch]"'
        ) from exc
    return torch


def torch_vjp(
    torch_fn: Callable[..., Any], inputs: Sequence[ArrayLike], cotangent: ArrayLike
) -> tuple[np.ndarray, ...]:
    r"""Vector-Jacobian product of ``torch_fn`` by PyTorch autograd, in float64.

    Parameters
    ----------
    torch_fn : callable
        ``torch_fn(*tensors)`` returns one tensor, built from torch operations
        only (anything through NumPy breaks the graph).
    inputs : tuple of array_like
        The point at which to differentiate, one array per argument of
        ``torch_fn``. Copied to float64 (float32 or integer inputs included);
        the caller's arrays are never modified.
    cotangent : array_like
        The upstream gradient; must have exactly the output's shape (``1.0``
        for a scalar loss).

    Returns
    -------
    tuple of float64 ndarray
        ``cotangent^T d torch_fn / d inputs[i]``, one per input, shaped like
        it. An input that does not influence the output gets zeros.

    Raises
    ------
    BackendUnavailable
        torch is not installed (``pip install "backprop-oracles[torch]"``).
    InvalidArgument, InvalidArgumentType
        ``inputs`` or ``cotangent`` break the rules above.
    UserFunctionError
        ``torch_fn`` returned something other than a floating tensor.

    Notes
    -----
    Autodiff is exact up to rounding (no step size, no truncation error);
    :func:`error_estimate` gives the rounding bound to compare with. If
    ``torch_fn`` converts to float32 internally, the result carries float32
    rounding: keep the function in the dtype of its inputs. At kinks, torch
    returns its own choice of subgradient (``relu'(0) = 0``).

    Examples
    --------
    >>> import torch
    >>> (dx,) = torch_vjp(lambda x: x**3, (np.array([1.0, 2.0]),), np.ones(2))
    >>> dx.tolist()
    [3.0, 12.0]
    """
    torch = _import_torch()
    check_callable(torch_fn, "torch_fn")
    # Fresh float64 copies: read-only arrays and strided views are fine, and
    # nothing the framework does can reach the caller's memory.
    arrays = as_inputs(inputs)
    tensors = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays)
    out = torch_fn(*tensors)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        kind = f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserFunctionError(f"torch_fn must return a floating torch.Tensor, got {kind}")
    ct = as_cotangent(cotangent, out.shape)
    if not out.requires_grad:
        # No input reaches the output (e.g. a constant): every gradient is 0.
        return tuple(np.zeros(a.shape) for a in arrays)
    grads = torch.autograd.grad(
        out, tensors, grad_outputs=torch.tensor(ct, dtype=out.dtype), allow_unused=True
    )
    return tuple(
        np.zeros(a.shape) if g is None else np.array(g.detach().cpu().numpy(), dtype=np.float64)
        for a, g in zip(arrays, grads, strict=True)
    )
