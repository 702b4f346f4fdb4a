"""Every reference op three ways: hand VJP vs torch autograd vs JAX, on native framework ops.

For each op, on Hypothesis-drawn shapes and values, the forward values of
the torch-native and jax-native versions (:mod:`oracles.verify.native_torch`,
:mod:`oracles.verify.native_jax`) match the reference, and the three VJPs (the
hand derivation, ``torch_vjp`` through torch's ops, ``jax_vjp`` through
JAX's) agree pairwise elementwise within::

    |a - b| <= TOL * (|b| + max|b| + terms)

``terms`` is the magnitude of what the gradient is computed from, where
rounding of those terms is what limits the result: ``|g|`` for the
elementwise activations (both frameworks compute ``sigmoid'`` as
``s (1 - s)`` and ``tanh'`` as ``1 - y^2``, so for ``x > 37`` torch and
JAX return 0 where the true ``sigmoid'(x) ~ e^-x`` is tiny but non-zero: an
absolute error of ``eps |g|``, a relative error of 1), the row sums of the
products for softmax/cross-entropy, and ``|G| |W|^T``-style absolute
products for the affine layer. Measured maximum of
``|a - b| / (eps (|b| + max|b| + terms))``: see ``AGREEMENT`` (printed with
``pytest -s``). ``TINY`` (~2e-305) is an absolute floor: XLA on CPU flushes
subnormal numbers to zero.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as R
from oracles import jax_vjp, torch_vjp
from oracles.backends.rounding import TINY, error_estimate
from oracles.strategies import (
    affine_inputs,
    arrays,
    axes,
    cotangents,
    logits,
    logits_and_targets,
)
from oracles.verify import native_jax as nj
from oracles.verify import native_torch as nt
from oracles.verify.native import NATIVE_OPS

pytestmark = [pytest.mark.torch, pytest.mark.jax]

EPS = float(np.finfo(np.float64).eps)
#: Relative tolerance, in units of the scale above. The largest ratio the
#: Hypothesis runs measured was 3.0 eps (tanh, jax vs hand; every other op and
#: pair stayed below 1 eps); a dense scan of 1.4 million points found 8 eps for
#: JAX's tanh gradient (XLA's tanh is accurate to 3.5 ulp, and 1 - y^2 doubles
#: that), 1.25 eps for torch's. 32 leaves a margin over both.
TOL = 32 * EPS  # 7.1e-15
SETTINGS = settings(max_examples=20, deadline=None)

#: Shapes drawn from: a batch of 1, odd sizes, non-square, 1 to 3 leading axes,
#: a class axis of 1. A pool, not free shapes: JAX compiles every primitive
#: for every new shape (~0.1 s each), values are where the variety goes.
SHAPES = st.sampled_from(
    [(3, 4), (1,), (5,), (1, 4), (3, 7), (6, 2), (4, 1), (2, 3, 5), (1, 1, 3), (2, 1, 3, 4)]
)
#: Shapes with a class axis of at least 2, for the cross-entropy.
CLASS_SHAPES = SHAPES.filter(lambda shape: shape[-1] >= 2)
#: Leading axes of the affine layer's input (``()``: a single unbatched row).
BATCH_SHAPES = st.sampled_from([(2,), (), (1,), (5,), (1, 3), (2, 1, 3)])
FEATURES = st.sampled_from([3, 1, 2, 5])

#: Largest |a - b| / (eps * scale) seen, per (op, comparison): the measurement behind TOL.
AGREEMENT = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _print_agreement():
    yield
    for key in sorted(AGREEMENT):
        print(f"{key[0]:>28s} {key[1]:>14s}: max |a-b| = {AGREEMENT[key]:.2f} eps * scale")


def _agree(op, what, a, b, terms=0.0):
    """Assert ``|a - b| <= TOL (|b| + max|b| + terms)`` elementwise; record the ratio."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{op} {what}: shapes {a.shape} and {b.shape}"
    scale = np.abs(b) + (np.max(np.abs(b)) if b.size else 0.0) + terms
    err = np.maximum(np.abs(a - b) - TINY, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / (EPS * scale))
    assert np.all(err <= TOL * scale), (
        f"{op} {what}: max |a-b| / (eps * scale) = {np.max(ratio):.3g} > {TOL / EPS:.0f}\n"
        f"a={a!r}\nb={b!r}"
    )
    if ratio.size:  # recorded for the passing comparisons only
        AGREEMENT[(op, what)] = max(AGREEMENT[(op, what)], float(np.max(ratio)))


def _triangulate(op, hand, fn_torch, fn_jax, inputs, g, terms=0.0):
    """hand vs torch vs jax, pairwise, for every input's gradient."""
    t = torch_vjp(fn_torch, inputs, g)
    j = jax_vjp(fn_jax, inputs, g)
    hand = hand if isinstance(hand, tuple) else (hand,)
    terms = terms if isinstance(terms, tuple) else (terms,) * len(hand)
    for i, (h, ti, ji, s) in enumerate(zip(hand, t, j, terms, strict=True)):
        _agree(op, f"torch~hand[{i}]", ti, h, s)
        _agree(op, f"jax~hand[{i}]", ji, h, s)
        _agree(op, f"torch~jax[{i}]", ti, ji, s)


def _forward(op, ref_out, fn_torch, fn_jax, inputs, terms=0.0):
    """Forward values of the native versions against the reference."""
    t, j = _forward_values(fn_torch, fn_jax, inputs)
    _agree(op, "forward torch", t, ref_out, terms)
    _agree(op, "forward jax", j, ref_out, terms)


def _forward_values(fn_torch, fn_jax, inputs):
    import jax
    import torch

    t = fn_torch(*(torch.tensor(np.asarray(x, dtype=np.float64)) for x in inputs))
    with jax.enable_x64(True):
        j = np.array(fn_jax(*(jax.numpy.asarray(x, dtype=np.float64) for x in inputs)))
    return t.numpy(), j


# --------------------------------------------------------------------------- activations

ACTIVATIONS = [
    ("tanh", R.tanh, R.tanh_vjp),
    ("sigmoid", R.sigmoid, R.sigmoid_vjp),
    ("relu", R.relu, R.relu_vjp),
]


@pytest.mark.parametrize(("name", "forward", "vjp"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
@SETTINGS
@given(data=st.data())
def test_activations(name, forward, vjp, data):
    x = data.draw(arrays(SHAPES, scale=st.sampled_from([1.0, 10.0, 100.0])), label="x")
    g = data.draw(cotangents(x.shape), label="g")
    torch_fn, jax_fn = NATIVE_OPS[name]
    _forward(name, forward(x), torch_fn, jax_fn, (x,))
    # Saturating activations: the frameworks round 1 - s (or 1 - y^2) with an
    # absolute error eps, so they are accurate to eps |g|, not relatively.
    _triangulate(name, vjp(g, x), torch_fn, jax_fn, (x,), g, terms=np.abs(g))


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@SETTINGS
@given(data=st.data())
def test_softmax_and_log_softmax_on_any_axis(name, data):
    x = data.draw(logits(SHAPES), label="x")
    axis = data.draw(axes(x.ndim), label="axis")
    g = data.draw(cotangents(x.shape), label="g")
    forward, vjp = getattr(R, name), getattr(R, f"{name}_vjp")
    torch_op, jax_op = NATIVE_OPS[name]

    def fn_torch(x):
        return torch_op(x, axis=axis)

    def fn_jax(x):
        return jax_op(x, axis=axis)

    _forward(name, forward(x, axis=axis), fn_torch, fn_jax, (x,))
    # Both VJPs subtract a row reduction of g (times a): sum |g| bounds those terms.
    terms = np.sum(np.abs(g), axis=axis, keepdims=True)
    _triangulate(name, vjp(g, x, axis=axis), fn_torch, fn_jax, (x,), g, terms=terms)


# --------------------------------------------------------------------------- cross-entropy


@SETTINGS
@given(
    pair=logits_and_targets(CLASS_SHAPES),
    reduction=st.sampled_from(R.losses.CE_REDUCTIONS),
    data=st.data(),
)
def test_cross_entropy(pair, reduction, data):
    z, y = pair
    out_shape = z.shape[:-1] if reduction == "none" else ()
    _check_cross_entropy(z, y, reduction, data.draw(cotangents(out_shape), label="g"))


def test_cross_entropy_of_a_confident_row():
    """Found by Hypothesis: the loss 1.8e-4 is ``lse(z) - z_0 = 10.00018 - 10``.

    torch and JAX compute it by that subtraction and lose 2 digits (an
    absolute error ``eps * |z|``); the reference shifts by the max first and
    keeps them. The forward comparison allows ``eps * |y| * max|z|``.
    """
    z = np.array([10.0, 0.0, 0.0, 0.0, 0.0])
    _check_cross_entropy(z, np.array(0), "mean", np.array(0.0))
    _check_cross_entropy(z, np.array(0), "none", np.array(1.0))


def _check_cross_entropy(z, y, reduction, g):
    def fn_torch(z):
        return nt.cross_entropy(z, y, reduction=reduction)

    def fn_jax(z):
        return nj.cross_entropy(z, y, reduction=reduction)

    row_sum = np.ones(z.shape[:-1] + (1,))
    if y.dtype.kind == "f":
        row_sum = np.maximum(np.sum(y, axis=-1, keepdims=True), 1.0)
    per_row_terms = (row_sum * np.max(np.abs(z), axis=-1, keepdims=True))[..., 0]
    reduce = {"none": np.asarray, "sum": np.sum, "mean": np.mean}[reduction]
    ref = R.cross_entropy(z, y, reduction=reduction)
    _forward("cross_entropy", ref, fn_torch, fn_jax, (z,), terms=reduce(per_row_terms))
    n_rows = max(int(np.prod(z.shape[:-1])), 1)
    g_rows = np.abs(g)[..., None] if reduction == "none" else np.abs(g)
    terms = row_sum * g_rows / (n_rows if reduction == "mean" else 1)
    hand = R.cross_entropy_vjp(g, z, y, reduction=reduction)
    _triangulate("cross_entropy", hand, fn_torch, fn_jax, (z,), g, terms=terms)


@SETTINGS
@given(
    pair=logits_and_targets(CLASS_SHAPES, targets="probabilities"),
    reduction=st.sampled_from(R.losses.CE_REDUCTIONS),
)
def test_cross_entropy_gradient_with_respect_to_probability_targets(pair, reduction):
    """Not in the reference: d CE / d y = -log_softmax(z) (scaled by the reduction)."""
    z, y = pair
    g = np.ones(z.shape[:-1]) if reduction == "none" else np.array(1.0)
    n_rows = max(int(np.prod(z.shape[:-1])), 1)
    expected = -R.log_softmax(z) / (n_rows if reduction == "mean" else 1)
    (t,) = torch_vjp(lambda y: nt.cross_entropy(_torch(z), y, reduction=reduction), (y,), g)
    (j,) = jax_vjp(lambda y: nj.cross_entropy(_jnp(z), y, reduction=reduction), (y,), g)
    _agree("cross_entropy", "dy torch", t, expected)
    _agree("cross_entropy", "dy jax", j, expected)


def _torch(a):
    import torch

    return torch.tensor(a, dtype=torch.float64)


def _jnp(a):
    import jax.numpy as jnp

    return jnp.asarray(a, dtype=jnp.float64)


# --------------------------------------------------------------------------- squared error


@SETTINGS
@given(
    pred=arrays(SHAPES),
    reduction=st.sampled_from(R.losses.SE_REDUCTIONS),
    half=st.booleans(),
    data=st.data(),
)
def test_squared_error(pred, reduction, half, data):
    target = data.draw(arrays(shape=pred.shape), label="target")
    g = data.draw(cotangents(pred.shape if reduction == "none" else ()), label="g")

    def fn_torch(p, t):
        return nt.squared_error(p, t, reduction=reduction, half=half)

    def fn_jax(p, t):
        return nj.squared_error(p, t, reduction=reduction, half=half)

    ref = R.squared_error(pred, target, reduction=reduction, half=half)
    _forward("squared_error", ref, fn_torch, fn_jax, (pred, target))
    hand = R.squared_error_vjp(g, pred, target, reduction=reduction, half=half)
    _triangulate("squared_error", hand, fn_torch, fn_jax, (pred, target), g)


# --------------------------------------------------------------------------- affine


@SETTINGS
@given(
    xwb=affine_inputs(batch_shape=BATCH_SHAPES, n_in=FEATURES, n_out=FEATURES),
    data=st.data(),
)
def test_affine(xwb, data):
    x, W, b = xwb
    g = data.draw(cotangents(x.shape[:-1] + (W.shape[1],)), label="g")
    forward_terms = np.abs(x) @ np.abs(W) + np.abs(b)
    _forward("affine", R.affine(x, W, b), nt.affine, nj.affine, (x, W, b), forward_terms)
    # Rounding of a sum of products is relative to the sum of |products|.
    x2, g2 = np.abs(x).reshape(-1, x.shape[-1]), np.abs(g).reshape(-1, g.shape[-1])
    terms = (np.abs(g) @ np.abs(W).T, x2.T @ g2, np.sum(g2, axis=0))
    _triangulate("affine", R.affine_vjp(g, x, W, b), nt.affine, nj.affine, (x, W, b), g, terms)


# --------------------------------------------------------------------------- conventions


def test_triangulation_catches_a_planted_mistake():
    """The comparison can fail: softmax' diagonal only, ``a (1 - a) g``, is caught."""
    x = np.array([[0.3, -1.2, 2.0], [0.0, 0.5, -0.5]])
    g = np.array([[1.0, -2.0, 0.5], [0.3, 0.3, -1.0]])
    a = R.softmax(x)
    with pytest.raises(AssertionError, match="softmax torch~hand"):
        _triangulate("softmax", a * (1 - a) * g, nt.softmax, nj.softmax, (x,), g, np.abs(g))
    # A relative error of 1e-12 in one element is caught too.
    wrong = R.softmax_vjp(g, x)
    wrong[1, 2] *= 1 + 1e-12
    with pytest.raises(AssertionError):
        _triangulate("softmax", wrong, nt.softmax, nj.softmax, (x,), g, np.abs(g))


def test_registry_covers_every_reference_op():
    ops = {n[: -len("_vjp")] for n in R.__all__ if n.endswith("_vjp")}
    assert set(NATIVE_OPS) == ops
    for name, pair in NATIVE_OPS.items():
        assert pair.torch is getattr(nt, name) and pair.jax is getattr(nj, name)


def test_relu_gradient_at_zero_is_zero_in_both_frameworks():
    x = np.array([-1.0, 0.0, -0.0, 1.0])
    expected = [0.0, 0.0, 0.0, 1.0]
    assert R.relu_vjp(np.ones(4), x).tolist() == expected
    assert torch_vjp(nt.relu, (x,), np.ones(4))[0].tolist() == expected
    assert jax_vjp(nj.relu, (x,), np.ones(4))[0].tolist() == expected


def test_saturated_activation_gradients_are_absolute_not_relative_in_the_frameworks():
    """The reference keeps ``sigmoid'(40) ~ 4e-18``; torch and JAX round it to 0.

    error_estimate with the cotangent covers it; without, it would blame the hand VJP.
    """
    x, g = np.array([40.0, 45.0]), np.array([2.0, -1.0])
    hand = R.sigmoid_vjp(g, x)
    np.testing.assert_allclose(hand, g * np.exp(-x), rtol=1e-12)
    for vjp, fn in [(torch_vjp, nt.sigmoid), (jax_vjp, nj.sigmoid)]:
        (got,) = vjp(fn, (x,), g)
        assert got.tolist() == [0.0, 0.0]
        (bound,) = error_estimate([got], cotangent=g)
        assert np.all(np.abs(hand - got) <= bound)
        (no_cotangent,) = error_estimate([got])
        assert np.all(np.abs(hand - got) > no_cotangent)
    # tanh: 1 - y^2 at |x| = 8 keeps only ~9 significant digits, everywhere.
    x = np.full(3, 8.0)
    (t,), (j,) = torch_vjp(nt.tanh, (x,), np.ones(3)), jax_vjp(nj.tanh, (x,), np.ones(3))
    exact = 1.0 / np.cosh(8.0) ** 2
    for got in (t, j, R.tanh_vjp(np.ones(3), x)):
        assert np.all(np.abs(got - exact) <= error_estimate([got], cotangent=np.ones(3))[0])


def test_torch_cross_entropy_wants_classes_on_dim_1():
    import torch

    z = np.random.default_rng(0).normal(size=(2, 3, 3))  # (batch, time, classes)
    labels = np.array([[0, 1, 2], [2, 2, 0]])
    raw = torch.nn.functional.cross_entropy(_torch(z), torch.tensor(labels))  # reads dim 1
    ours = nt.cross_entropy(_torch(z), labels)
    assert float(ours) == pytest.approx(float(R.cross_entropy(z, labels)), rel=1e-14)
    assert float(raw) != pytest.approx(float(ours), rel=1e-6)


def test_torch_probability_targets_are_not_renormalized_and_mean_divides_by_rows():
    import torch

    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 2, 5))
    y = rng.uniform(size=(4, 2, 5))  # rows sum to ~2.5, not 1
    per_row = -np.sum(y * R.log_softmax(z), axis=-1)
    for reduction, expected in [("mean", per_row.mean()), ("sum", per_row.sum())]:
        got = nt.cross_entropy(_torch(z), y, reduction=reduction)
        assert float(got) == pytest.approx(expected, rel=1e-14)
    normalized = y / y.sum(axis=-1, keepdims=True)
    assert float(nt.cross_entropy(_torch(z), y)) != pytest.approx(
        float(R.cross_entropy(z, normalized)), rel=1e-3
    )
    assert nt.cross_entropy(_torch(z), y, reduction="none").shape == torch.Size([4, 2])


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_torch_label_smoothing_is_mixing_targets_with_uniform(kind):
    import torch

    rng = np.random.default_rng(2)
    z, eps, n_classes = rng.normal(size=(6, 4)), 0.2, 4
    if kind == "labels":
        t = rng.integers(0, n_classes, size=6)
        y = np.eye(n_classes)[t]
        torch_t = torch.tensor(t)
    else:
        y = rng.uniform(size=(6, 4)) * 2.0
        torch_t = _torch(y)
    smoothed = (1 - eps) * y + eps / n_classes
    got = torch.nn.functional.cross_entropy(_torch(z), torch_t, label_smoothing=eps)
    assert float(got) == pytest.approx(float(R.cross_entropy(z, smoothed)), rel=1e-14)


def test_torch_ignore_index_mean_divides_by_the_rows_kept():
    import torch

    z = np.random.default_rng(3).normal(size=(5, 3))
    labels = np.array([0, 1, 2, 1, 1])
    got = torch.nn.functional.cross_entropy(_torch(z), torch.tensor(labels), ignore_index=1)
    kept = labels != 1
    assert float(got) == pytest.approx(float(R.cross_entropy(z[kept], labels[kept])), rel=1e-14)


def test_mse_mean_is_over_elements_and_batch_mean_over_rows():
    import torch

    rng = np.random.default_rng(4)
    p, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mse = float(torch.nn.functional.mse_loss(_torch(p), _torch(t)))  # MSELoss default
    assert mse == pytest.approx(float(R.squared_error(p, t, reduction="mean")), rel=1e-14)
    batch_mean = float(R.squared_error(p, t, reduction="batch_mean"))
    assert batch_mean == pytest.approx(mse * p.size / p.shape[0], rel=1e-14)
    assert float(nt.squared_error(_torch(p), _torch(t), reduction="batch_mean")) == pytest.approx(
        batch_mean, rel=1e-14
    )


def test_native_losses_reject_unknown_reductions():
    z = np.zeros((2, 3))
    for module, wrap in [(nt, _torch), (nj, np.asarray)]:
        with pytest.raises(ValueError, match="reduction must be one of"):
            module.cross_entropy(wrap(z), np.array([0, 1]), reduction="batchmean")
        with pytest.raises(ValueError, match="reduction must be one of"):
            module.squared_error(wrap(z), wrap(z), reduction="avg")
