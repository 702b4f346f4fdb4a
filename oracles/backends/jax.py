"""JAX autodiff as an oracle: VJP, JVP and HVP of a jax function, NumPy in, NumPy out.

``jax`` is imported only when an adapter is called, so ``import oracles``
works without it; calling one without jax installed raises
:class:`~oracles.errors.BackendUnavailable` naming the extra to install.

JAX computes in float32 unless 64-bit mode is on. The adapter turns it on
only for the duration of the call (a scoped, thread-local setting); the
caller's global ``jax_enable_x64`` is the same afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles._validation import as_cotangent, as_inputs, check_callable
from oracles.errors import BackendUnavailable, UserFunctionError

__all__ = ["import_jax", "jax_grad", "jax_hvp", "jax_jvp", "jax_vjp", "x64_enabled"]


def import_jax():
    """``import jax``, or :class:`BackendUnavailable`; NumPy's global random state is kept.

    The first ``import jax`` (0.10) draws from NumPy's global generator; no
    call of the oracles may change the caller's random state.
    """
    state = np.random.get_state()  # noqa: NPY002 (the legacy global state is what is kept)
    try:
        import jax
    except ImportError as exc:
        raise BackendUnavailable(
            'the jax oracle needs JAX, which is not installed: pip install "backprop-oracles[jax]"'
        ) from exc
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return jax


@contextlib.contextmanager
def x64_enabled(jax):
    """Turn on JAX's 64-bit mode inside the block only, whatever the JAX version."""
    scoped = getattr(jax, "enable_x64", None)  # jax >= 0.7: a config State, callable
    if callable(scoped):
        with scoped(True):
            yield
        return
    try:
        from jax.experimental import enable_x64 as scoped  # older jax
    except ImportError:
        scoped = None
    if scoped is not None:
        with scoped():
            yield
        return
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def jax_vjp(
    jax_fn: Callable[..., Any], inputs: Sequence[ArrayLike], cotangent: ArrayLike
) -> tuple[np.ndarray, ...]:
    r"""Vector-Jacobian product of ``jax_fn`` by ``jax.vjp``, in float64.

    Parameters
    ----------
    jax_fn : callable
        ``jax_fn(*arrays)`` returns one jax array, built from jax operations
        (``jax.numpy``, ``jax.nn``, ``jax.lax``). It may be jitted.
    inputs : tuple of array_like
        The point at which to differentiate, one array per argument of
        ``jax_fn``. Copied to float64 (float32 or integer inputs included);
        the caller's arrays are never modified.
    cotangent : array_like
        The upstream gradient; must have exactly the output's shape (``1.0``
        for a scalar loss).

    Returns
    -------
    tuple of float64 ndarray
        ``cotangent^T d jax_fn / d inputs[i]``, one per input, shaped like it.
        An input that does not influence the output gets zeros.

    Raises
    ------
    BackendUnavailable
        jax is not installed (``pip install "backprop-oracles[jax]"``).
    InvalidArgument, InvalidArgumentType
        ``inputs`` or ``cotangent`` break the rules above.
    UserFunctionError
        ``jax_fn`` returned something other than a floating array.

    Notes
    -----
    64-bit mode is enabled for this call only. A ``jax_fn`` jitted before
    the call is retraced for float64 inputs, which is correct but costs a
    compilation. At kinks JAX returns its own choice of subgradient
    (``jax.nn.relu`` has derivative 0 at 0). XLA on CPU flushes subnormal
    numbers to zero, so results below ~2e-308 come back as 0 (torch keeps
    them). :func:`oracles.backends.rounding.error_estimate` gives the rounding bound
    to compare with.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> dx, dy = jax_vjp(lambda x, y: x * y, (np.array([2.0]), np.array([5.0])), np.ones(1))
    >>> dx.tolist(), dy.tolist()
    ([5.0], [2.0])
    """
    jax = import_jax()
    check_callable(jax_fn, "jax_fn")
    arrays = as_inputs(inputs)  # fresh float64 copies; the caller's arrays stay untouched
    import jax.numpy as jnp

    with x64_enabled(jax):
        primals = tuple(jnp.asarray(a, dtype=jnp.float64) for a in arrays)
        out, pullback = jax.vjp(jax_fn, *primals)
        if not isinstance(out, jax.Array) or not jnp.issubdtype(out.dtype, jnp.floating):
            kind = type(out).__name__
            if isinstance(out, jax.Array):
                kind = f"an array of dtype {out.dtype}"
            raise UserFunctionError(f"jax_fn must return a floating jax array, got {kind}")
        ct = as_cotangent(cotangent, out.shape)
        grads = pullback(jnp.asarray(ct, dtype=out.dtype))
        # np.array copies: the result never aliases a jax buffer.
        return tuple(np.array(g, dtype=np.float64) for g in grads)


def _array_result(out, who):
    jax = import_jax()
    import jax.numpy as jnp

    if not isinstance(out, jax.Array) or not jnp.issubdtype(out.dtype, jnp.floating):
        kind = (
            f"an array of dtype {out.dtype}" if isinstance(out, jax.Array) else type(out).__name__
        )
        raise UserFunctionError(f"{who} must return a floating jax array, got {kind}")
    return out


def jax_jvp(jax_fn, inputs, tangents):
    """Jacobian-vector product of ``jax_fn`` along ``tangents`` by ``jax.jvp``, float64."""
    jax = import_jax()
    check_callable(jax_fn, "jax_fn")
    xs, us = as_inputs(inputs), as_inputs(tangents)
    import jax.numpy as jnp

    with x64_enabled(jax):
        primals = tuple(jnp.asarray(x, dtype=jnp.float64) for x in xs)
        tans = tuple(jnp.asarray(u, dtype=jnp.float64) for u in us)
        out, out_t = jax.jvp(jax_fn, primals, tans)
        _array_result(out, "jax_fn")
        return np.array(out_t, dtype=np.float64)


def jax_grad(jax_fn, inputs):
    """Gradient of a scalar ``jax_fn``, one float64 array per input."""
    return jax_vjp(jax_fn, inputs, 1.0)


def jax_hvp(jax_fn, inputs, vectors):
    """Hessian-vector product of a scalar ``jax_fn``: ``jax.jvp`` of ``jax.grad``, float64."""
    jax = import_jax()
    check_callable(jax_fn, "jax_fn")
    xs, vs = as_inputs(inputs), as_inputs(vectors)
    import jax.numpy as jnp

    def scalar(*args):
        out = _array_result(jax_fn(*args), "jax_fn")
        if out.size != 1:
            raise UserFunctionError(
                f"jax_fn must return a scalar for a Hessian-vector product, got shape {out.shape}"
            )
        return out.reshape(())

    with x64_enabled(jax):
        primals = tuple(jnp.asarray(x, dtype=jnp.float64) for x in xs)
        tans = tuple(jnp.asarray(v, dtype=jnp.float64) for v in vs)
        grad = jax.grad(scalar, argnums=tuple(range(len(xs))))
        _, hv = jax.jvp(grad, primals, tans)
        return tuple(np.array(h, dtype=np.float64) for h in hv)
