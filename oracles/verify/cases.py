"""The verification cases of every reference derivation, shared by the report, tests and scripts.

A :class:`Case` bundles what one check needs: the reference forward and its
hand-written VJP, the inputs, and the same forward written with torch's and
jax's own ops (from :mod:`oracles.verify.native`, not a transliteration). The
report command (``python -m oracles report``), the sensitivity script and
the benchmarks all run these, so they agree on what "every op" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Case", "reference_cases"]


@dataclass
class Case:
    """One derivation to verify at one point."""

    op: str
    variant: str
    fn: object
    vjp: object
    inputs: tuple
    torch_fn: object = None
    jax_fn: object = None
    names: tuple = None
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self):
        return f"{self.op} ({self.variant})" if self.variant else self.op


def _bind(f, **kw):
    """``f`` with keyword arguments fixed, keeping positional inputs."""
    if not kw:
        return f

    def bound(*args):
        return f(*args, **kw)

    bound.__name__ = getattr(f, "__name__", "fn")
    return bound


def _bind_vjp(f, **kw):
    def bound(g, *args):
        return f(g, *args, **kw)

    bound.__name__ = getattr(f, "__name__", "vjp")
    return bound


def _closure(f, extra, **kw):
    """``f(x, *extra, **kw)``: a non-differentiable argument (labels) closed over."""

    def bound(x):
        return f(x, *extra, **kw)

    bound.__name__ = getattr(f, "__name__", "fn")
    return bound


def _closure_vjp(f, extra, **kw):
    def bound(g, x):
        return f(g, x, *extra, **kw)

    bound.__name__ = getattr(f, "__name__", "vjp")
    return bound


def reference_cases(*, seed=0, include_mlp=True):
    """The list of :class:`Case` covering every reference op and the MLP step.

    Inputs are drawn from ``numpy.random.default_rng(seed)``; the MLP cases
    use real bundled MNIST digits.

    Examples
    --------
    >>> cases = reference_cases(include_mlp=False)
    >>> sorted({c.op for c in cases})  # doctest: +NORMALIZE_WHITESPACE
    ['affine', 'cross_entropy', 'log_softmax', 'relu', 'sigmoid', 'softmax',
     'squared_error', 'tanh']
    >>> from oracles import check_vjp
    >>> c = cases[0]
    >>> check_vjp(c.fn, c.vjp, c.inputs, names=c.names).ok
    True
    """
    import reference as R
    from oracles.verify.native import NATIVE_OPS

    rng = np.random.default_rng(seed)
    cases = []

    def add(op, variant, fn, vjp, inputs, tfn, jfn, names=None):
        cases.append(Case(op, variant, fn, vjp, tuple(inputs), tfn, jfn, names))

    for op in ("tanh", "sigmoid", "relu"):
        x = rng.normal(size=(4, 7)) * 2
        if op == "relu":
            x[0, :3] = 0.0  # the kink, on purpose
        add(
            op,
            "",
            getattr(R, op),
            getattr(R, f"{op}_vjp"),
            (x,),
            NATIVE_OPS[op].torch,
            NATIVE_OPS[op].jax,
            ("x",),
        )
    for op in ("softmax", "log_softmax"):
        for axis, shape in ((-1, (4, 6)), (0, (3, 4, 5))):
            x = rng.normal(size=shape) * 3
            add(
                op,
                f"axis={axis}, shape {shape}",
                _bind(getattr(R, op), axis=axis),
                _bind_vjp(getattr(R, f"{op}_vjp"), axis=axis),
                (x,),
                _bind(NATIVE_OPS[op].torch, axis=axis),
                _bind(NATIVE_OPS[op].jax, axis=axis),
                ("x",),
            )
    z = rng.normal(size=(5, 4)) * 3
    labels = rng.integers(0, 4, size=5)
    soft = rng.uniform(0.0, 1.0, size=(5, 4))  # rows do not sum to 1, on purpose
    for targets, kind in ((labels, "labels"), (soft, "soft targets, rows not summing to 1")):
        for reduction in ("mean", "sum", "none"):
            kw = {"reduction": reduction}
            add(
                "cross_entropy",
                f"{kind}, {reduction}",
                _closure(R.cross_entropy, (targets,), **kw),
                _closure_vjp(R.cross_entropy_vjp, (targets,), **kw),
                (z,),
                _closure(NATIVE_OPS["cross_entropy"].torch, (targets,), **kw),
                _closure(NATIVE_OPS["cross_entropy"].jax, (targets,), **kw),
                ("logits",),
            )
    p, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    for reduction in ("sum", "mean", "batch_mean", "none"):
        for half in (False, True):
            kw = {"reduction": reduction, "half": half}
            add(
                "squared_error",
                f"{reduction}, half={half}",
                _bind(R.squared_error, **kw),
                _bind_vjp(R.squared_error_vjp, **kw),
                (p, t),
                _bind(NATIVE_OPS["squared_error"].torch, **kw),
                _bind(NATIVE_OPS["squared_error"].jax, **kw),
                ("pred", "target"),
            )
    x, W, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(5, 4)), rng.normal(size=4)
    add(
        "affine",
        "batch (2, 3)",
        R.affine,
        R.affine_vjp,
        (x, W, b),
        NATIVE_OPS["affine"].torch,
        NATIVE_OPS["affine"].jax,
        ("x", "W", "b"),
    )
    if include_mlp:
        cases += mlp_cases(seed=seed)
    return cases


def mlp_cases(*, seed=0, hidden=16, batch=8, combos=None):
    """The full MLP training step (784 -> hidden -> 10) on real digits, as cases."""
    from oracles.verify.mnist import jax_mlp_loss, torch_mlp_loss
    from reference import mlp
    from reference.mnist import as_float_features, load_mnist

    images, labels = load_mnist()
    X, y = as_float_features(images[:batch]), labels[:batch].astype(np.int64)
    params = tuple(mlp.init_params((784, hidden, 10), seed=seed))
    combos = combos or (
        ("tanh", "cross_entropy"),
        ("sigmoid", "cross_entropy"),
        ("tanh", "squared_error"),
        ("sigmoid", "squared_error"),
        ("relu", "cross_entropy"),
    )
    out = []
    for activation, loss in combos:
        kw = {"activation": activation, "loss": loss}

        def fn(*p, kw=kw):
            return mlp.mlp_loss(X, y, *p, **kw)

        def vjp(g, *p, kw=kw):
            return mlp.mlp_loss_vjp(g, X, y, *p, **kw)

        fn.__name__, vjp.__name__ = "mlp_loss", "mlp_loss_vjp"
        out.append(
            Case(
                "mlp_step",
                f"784-{hidden}-10, {activation}, {loss}, {batch} real digits",
                fn,
                vjp,
                params,
                torch_mlp_loss(X, y, **kw),
                jax_mlp_loss(X, y, **kw),
                ("W1", "b1", "W2", "b2"),
            )
        )
    return out
