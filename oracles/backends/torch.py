"""PyTorch autograd as an oracle: VJP, JVP and HVP of a torch function, NumPy in, NumPy out.

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
from oracles.errors import BackendUnavailable, UserFunctionError

__all__ = ["import_torch", "torch_grad", "torch_hvp", "torch_jvp", "torch_vjp"]


def import_torch():
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
    :func:`oracles.backends.rounding.error_estimate` gives the rounding bound
    to compare with. If
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
    torch = import_torch()
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


def _tensor_result(out, who):
    """``out`` must be one floating torch tensor; else a UserFunctionError saying what it was."""
    torch = import_torch()
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        kind = f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserFunctionError(f"{who} must return a floating torch.Tensor, got {kind}")
    return out


def torch_jvp(torch_fn, inputs, tangents):
    """Jacobian-vector product of ``torch_fn`` along ``tangents`` (one per input), float64.

    ``torch.func.jvp`` (forward mode); for an op without a forward-mode
    formula, ``torch.autograd.functional.jvp`` (the double-backward trick).
    Returns the output tangent as a float64 ndarray.
    """
    torch = import_torch()
    check_callable(torch_fn, "torch_fn")
    primals = tuple(torch.tensor(x, dtype=torch.float64) for x in as_inputs(inputs))
    tans = tuple(torch.tensor(u, dtype=torch.float64) for u in as_inputs(tangents))

    def checked(*args):
        return _tensor_result(torch_fn(*args), "torch_fn")

    try:
        _, out_t = torch.func.jvp(checked, primals, tans)
    except (NotImplementedError, RuntimeError):
        _, out_t = torch.autograd.functional.jvp(checked, primals, tans)
    return np.array(out_t.detach().cpu().numpy(), dtype=np.float64)


def torch_grad(torch_fn, inputs):
    """Gradient of a scalar ``torch_fn``, one float64 array per input."""
    return torch_vjp(torch_fn, inputs, 1.0)


def torch_hvp(torch_fn, inputs, vectors):
    """Hessian-vector product of a scalar ``torch_fn`` (double backward), one block per input."""
    torch = import_torch()
    check_callable(torch_fn, "torch_fn")
    primals = tuple(torch.tensor(x, dtype=torch.float64) for x in as_inputs(inputs))
    vs = tuple(torch.tensor(v, dtype=torch.float64) for v in as_inputs(vectors))

    def checked(*args):
        out = _tensor_result(torch_fn(*args), "torch_fn")
        if out.numel() != 1:
            raise UserFunctionError(
                f"torch_fn must return a scalar for a Hessian-vector product, got shape "
                f"{tuple(out.shape)}"
            )
        return out.reshape(())

    _, hv = torch.autograd.functional.hvp(checked, primals, vs)
    return tuple(np.array(h.detach().cpu().numpy(), dtype=np.float64) for h in hv)
