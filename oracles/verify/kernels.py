"""Custom gradients to check the drop-ins on: torch Functions and jax custom_vjp rules.

The same five kernels for both frameworks, each correct or with a planted
error, shared by the drop-ins' tests (tests/meta/test_torch_dropin.py,
tests/meta/test_jax_dropin.py) and the benchmark against the frameworks'
own checkers (benchmarks/bench_frameworks.py):

``affine``
    ``x @ W + b``; the error goes into ``dW``.
``softmax_ce``
    The mean softmax cross-entropy of logits ``z`` with integer labels
    (torch: a second, non-differentiable input; jax: closed over); the
    error goes into ``dz``.
``layernorm``
    ``(x - mean) / sqrt(var + 1e-5) * gamma + beta`` over the last axis;
    the error goes into ``dx``.
``relu``
    ``max(x, 0)``, whose backward passes ``g`` where ``x > 0`` (0 at the
    kink, a subgradient); the error goes into ``dx``.
``float32_kernel``
    ``tanh(x @ w)``, computed in float32 whatever it is given (torch: the
    Function refuses any other dtype, as compiled kernels do; jax: it casts
    to float32 inside); the error goes into ``dx``. Its float64 reference
    is :func:`float32_kernel_reference` (the same math without the kernel).

``torch_function(name, err, where)`` returns the ``autograd.Function``
subclass and ``jax_rule(name, err, where, labels=...)`` the ``custom_vjp``
function. The planted error multiplies one flat element ``where`` of the
gradient named in :data:`PLANTED` by ``1 + err`` (every element when
``where`` is None). :func:`kernel_inputs` draws the inputs of one kernel in
NumPy float64 (shapes grow with ``size``, values scaled by ``scale``),
:func:`torch_inputs` turns them into tensors with ``requires_grad``.

torch and jax are imported only when a kernel is built.

Examples
--------
>>> import torch
>>> from oracles.torch import check
>>> xs = torch_inputs("layernorm", seed=0, size=3)
>>> check(torch_function("layernorm").apply, xs).status
'passed'
>>> check(torch_function("layernorm", 1e-6, where=1).apply, xs).failed_inputs
['x']
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NAMES",
    "PLANTED",
    "float32_kernel_reference",
    "jax_rule",
    "expected_statuses",
    "kernel_inputs",
    "plant_index",
    "torch_function",
    "torch_inputs",
]

#: The kernels, in the benchmark's order.
NAMES = ("affine", "softmax_ce", "layernorm", "relu", "float32_kernel")

#: Which input's gradient carries the planted error (its position among the inputs).
PLANTED = {"affine": 1, "softmax_ce": 0, "layernorm": 0, "relu": 0, "float32_kernel": 0}

#: The layer norm's variance offset.
LAYERNORM_EPS = 1e-5

#: The number of classes of ``softmax_ce``.
CLASSES = 5


def kernel_inputs(name, seed=0, size=3, scale=1.0):
    """The inputs of kernel ``name`` as NumPy arrays: float64, and the integer labels of
    ``softmax_ce`` (last). Shapes grow with ``size``; values are scaled by ``scale``.

    ``relu`` gets about a third of its elements exactly at the kink (0), and
    one element of ``scale`` or more (else the gradient would be 0 everywhere).

    Examples
    --------
    >>> [a.shape for a in kernel_inputs("affine", size=2)]
    [(2, 3), (3, 2), (2,)]
    >>> z, labels = kernel_inputs("softmax_ce", size=4)
    >>> z.shape, labels.dtype.kind
    ((4, 5), 'i')
    """
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape) * scale

    if name == "affine":
        return (r(size, size + 1), r(size + 1, 2), r(2))
    if name == "softmax_ce":
        return (r(size, CLASSES), rng.integers(0, CLASSES, size))
    if name == "layernorm":
        return (r(size, 4), 1 + 0.1 * r(4), r(4))
    if name == "relu":
        x = r(size, 3)
        x[np.abs(x) < 0.6 * scale] = 0.0
        x[0, 1] = abs(x[0, 1]) + scale
        return (x,)
    if name == "float32_kernel":
        return (r(size, size + 2), r(size + 2, 3) / np.sqrt(size + 2))
    raise ValueError(f"name must be one of {NAMES}, got {name!r}")


def expected_statuses(name, reduced, in_scale):
    """The statuses a check of kernel ``name`` may end in, right and with a planted error
    (1e-6 in float64, 1e-3 at reduced precision), at inputs of scale ``in_scale``.

    Right passes and wrong fails, except softmax-CE at reduced precision with logits of
    1e6 or more: one float32 ulp of such a logit (0.06) moves a probability by 6%, so the
    check can only say inconclusive for the right kernel, and inconclusive or failed for
    the wrong one.

    Examples
    --------
    >>> [sorted(may) for may in expected_statuses("softmax_ce", True, 1e6)]
    [['inconclusive'], ['failed', 'inconclusive']]
    >>> expected_statuses("affine", True, 1e6)
    ({'passed'}, {'failed'})
    """
    if name == "softmax_ce" and reduced and in_scale >= 1e6:
        return {"inconclusive"}, {"failed", "inconclusive"}
    return {"passed"}, {"failed"}


def plant_index(gradient):
    """Where to plant an error: the flat index of the element of median magnitude among
    the nonzero ones of ``gradient`` (a typical element, neither the largest nor one at 0).

    Examples
    --------
    >>> plant_index(np.array([[0.0, -3.0], [1.0, 2.0]]))
    3
    """
    g = np.abs(np.asarray(gradient, dtype=np.float64)).reshape(-1)
    nonzero = np.flatnonzero(g > 0)
    if not nonzero.size:
        raise ValueError("the gradient is 0 everywhere: an error planted in it would be 0 too")
    return int(nonzero[np.argsort(g[nonzero], kind="stable")][len(nonzero) // 2])


def torch_inputs(name, seed=0, size=3, scale=1.0, dtype=None):
    """:func:`kernel_inputs` as torch tensors of ``dtype`` (default float64) with
    ``requires_grad`` (the integer labels stay integer, without)."""
    from oracles.backends.torch import import_torch

    torch = import_torch()
    dtype = torch.float64 if dtype is None else dtype
    out = []
    for a in kernel_inputs(name, seed, size, scale):
        t = torch.from_numpy(np.array(a, copy=True))
        out.append(t.to(dtype).requires_grad_() if a.dtype.kind == "f" else t)
    return tuple(out)


def float32_kernel_reference(x, w):
    """``tanh(x @ w)`` without the kernel: torch tensors or jax arrays, any dtype."""
    return (x @ w).tanh() if hasattr(x, "tanh") else _jnp().tanh(x @ w)


def _jnp():
    from oracles.backends.jax import import_jax

    import_jax()
    import jax.numpy as jnp

    return jnp


# --- torch ---------------------------------------------------------------------------------------


def _torch_planted(g, err, where):
    if not err:
        return g
    if where is None:
        return g * (1 + err)
    g = g.clone()
    flat = g.view(-1)
    flat[where] = flat[where] * (1 + err)
    return g


def torch_function(name, err=0.0, where=None):
    """The ``torch.autograd.Function`` of kernel ``name``, ``err`` planted at ``where``."""
    from oracles.backends.torch import import_torch

    torch = import_torch()
    plant = _torch_planted

    class Affine(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W, b):
            ctx.save_for_backward(x, W)
            return x @ W + b

        @staticmethod
        def backward(ctx, g):
            x, W = ctx.saved_tensors
            return g @ W.T, plant(x.T @ g, err, where), g.sum(0)

    class SoftmaxCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, y):
            m = z.amax(dim=1, keepdim=True)
            lse = m + torch.log(torch.exp(z - m).sum(1, keepdim=True))
            ctx.save_for_backward(torch.exp(z - lse), y)
            return (lse.squeeze(1) - z.gather(1, y[:, None]).squeeze(1)).mean()

        @staticmethod
        def backward(ctx, g):
            p, y = ctx.saved_tensors
            d = p.clone()
            d[torch.arange(len(y)), y] -= 1
            return plant(d * g / len(y), err, where), None

    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta):
            mu = x.mean(-1, keepdim=True)
            rstd = 1 / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + LAYERNORM_EPS)
            xh = (x - mu) * rstd
            ctx.save_for_backward(xh, rstd, gamma)
            return xh * gamma + beta

        @staticmethod
        def backward(ctx, g):
            xh, rstd, gamma = ctx.saved_tensors
            gx = g * gamma
            dx = rstd * (gx - gx.mean(-1, keepdim=True) - xh * (gx * xh).mean(-1, keepdim=True))
            return plant(dx, err, where), (g * xh).sum(0), g.sum(0)

    class Relu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return plant(g * (x > 0).to(g.dtype), err, where)

    class Float32Kernel(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            if x.dtype != torch.float32 or w.dtype != torch.float32:
                raise TypeError("this kernel is compiled for float32 only")
            ctx.save_for_backward(x, w)
            return torch.tanh(x @ w)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            d = g * (1 - torch.tanh(x @ w) ** 2)
            return plant(d @ w.T, err, where), x.T @ d

    functions = {
        "affine": Affine,
        "softmax_ce": SoftmaxCE,
        "layernorm": LayerNorm,
        "relu": Relu,
        "float32_kernel": Float32Kernel,
    }
    if name not in functions:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    return functions[name]


# --- jax -----------------------------------------------------------------------------------------


def jax_rule(name, err=0.0, where=None, *, labels=None):
    """The ``jax.custom_vjp`` function of kernel ``name``, ``err`` planted at ``where``.

    ``softmax_ce`` closes over its integer ``labels`` (one per row of ``z``).
    """
    from oracles.backends.jax import import_jax

    jax = import_jax()
    jnp = _jnp()

    def plant(g, err, where):
        if not err:
            return g
        if where is None:
            return g * (1 + err)
        return jnp.asarray(g).reshape(-1).at[where].multiply(1 + err).reshape(g.shape)

    if name == "affine":

        @jax.custom_vjp
        def f(x, W, b):
            return x @ W + b

        def fwd(x, W, b):
            return f(x, W, b), (x, W)

        def bwd(res, g):
            x, W = res
            return g @ W.T, plant(x.T @ g, err, where), g.sum(0)

    elif name == "softmax_ce":
        if labels is None:
            raise ValueError("softmax_ce needs labels=, one integer class per row of z")
        labels = jnp.asarray(labels)

        @jax.custom_vjp
        def f(z):
            lse = jax.nn.logsumexp(z, axis=1)
            return jnp.mean(lse - jnp.take_along_axis(z, labels[:, None], 1)[:, 0])

        def fwd(z):
            return f(z), jnp.exp(z - jax.nn.logsumexp(z, axis=1, keepdims=True))

        def bwd(p, g):
            d = p.at[jnp.arange(len(labels)), labels].add(-1.0)
            return (plant(d * g / len(labels), err, where),)

    elif name == "layernorm":

        def normalize(x):
            mu = x.mean(-1, keepdims=True)
            rstd = 1 / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + LAYERNORM_EPS)
            return (x - mu) * rstd, rstd

        @jax.custom_vjp
        def f(x, gamma, beta):
            return normalize(x)[0] * gamma + beta

        def fwd(x, gamma, beta):
            xh, rstd = normalize(x)
            return xh * gamma + beta, (xh, rstd, gamma)

        def bwd(res, g):
            xh, rstd, gamma = res
            gx = g * gamma
            dx = rstd * (gx - gx.mean(-1, keepdims=True) - xh * (gx * xh).mean(-1, keepdims=True))
            return plant(dx, err, where), (g * xh).sum(0), g.sum(0)

    elif name == "relu":

        @jax.custom_vjp
        def f(x):
            return jnp.maximum(x, 0.0)

        def fwd(x):
            return f(x), x

        def bwd(x, g):
            return (plant(g * (x > 0).astype(g.dtype), err, where),)

    elif name == "float32_kernel":

        @jax.custom_vjp
        def f(x, w):
            return jnp.tanh(x.astype(jnp.float32) @ w.astype(jnp.float32))

        def fwd(x, w):
            return f(x, w), (x.astype(jnp.float32), w.astype(jnp.float32))

        def bwd(res, g):
            x, w = res
            d = g * (1 - jnp.tanh(x @ w) ** 2)
            return plant(d @ w.T, err, where), x.T @ d

    else:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    f.defvjp(fwd, bwd)
    return f
