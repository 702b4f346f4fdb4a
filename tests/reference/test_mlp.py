"""The reference MLP: shapes, seeding, purity, argument validation, and the full step
checked against numeric differences, PyTorch and JAX on real digits."""

from __future__ import annotations

import numpy as np
import pytest

from reference import InvalidInput, mlp
from reference.mnist import as_float_features, load_mnist

SIZES = (784, 8, 10)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist()
    return as_float_features(images[:64]), labels[:64].astype(np.int64)


def _trained(sizes, X, y, *, activation="tanh", loss="cross_entropy", seed=0, steps=3):
    """Parameters a few SGD steps away from the initialization (non-zero biases)."""
    params = mlp.init_params(sizes, seed=seed)
    for s in range(steps):
        rows = slice(8 * s, 8 * s + 8)
        _, grads = mlp.loss_and_grads(params, X[rows], y[rows], activation=activation, loss=loss)
        params = mlp.sgd_step(params, grads, 0.5)
    return params


# --- structure -----------------------------------------------------------------------------------


def test_default_sizes_shapes_and_dtypes():
    params = mlp.init_params()
    assert [p.shape for p in params] == [(784, 128), (128,), (128, 10), (10,)]
    assert all(p.dtype == np.float64 for p in params)
    assert mlp.layer_sizes(params) == (784, 128, 10)
    # LeCun normal: std 1/sqrt(n_in); biases start at zero.
    assert abs(params[0].std() * np.sqrt(784) - 1) < 0.02
    assert not params[1].any() and not params[3].any()


def test_init_is_seeded():
    a, b, c = (mlp.init_params((784, 16, 10), seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("sizes", [(784, 10), (784, 32, 16, 10), (5, 7, 3)])
@pytest.mark.parametrize("activation", mlp.ACTIVATIONS)
@pytest.mark.parametrize("loss", mlp.LOSSES)
def test_any_depth_gradient_shapes(sizes, activation, loss):
    rng = np.random.default_rng(0)
    X, y = rng.random((6, sizes[0])), rng.integers(0, sizes[-1], 6)
    params = mlp.init_params(sizes, seed=1)
    value, grads = mlp.loss_and_grads(params, X, y, activation=activation, loss=loss)
    assert np.isfinite(value) and value > 0
    assert [g.shape for g in grads] == [p.shape for p in params]
    assert mlp.predict(params, X, activation=activation).shape == (6, sizes[-1])


def test_untrained_losses_have_their_closed_form(digits):
    X, y = digits
    zero = tuple(np.zeros_like(p) for p in mlp.init_params((784, 8, 10)))
    # All logits 0: softmax is uniform 1/10.
    ce = mlp.mlp_loss(X, y, *zero)
    se = mlp.mlp_loss(X, y, *zero, loss="squared_error")
    assert ce == pytest.approx(np.log(10), rel=1e-15)
    # Per row: 9 * (1/10)^2 + (1 - 1/10)^2 = 0.9, averaged over the batch (not the 10 classes).
    assert se == pytest.approx(0.9, rel=1e-15)


def test_sgd_step_and_backward_leave_their_inputs_alone(digits):
    X, y = digits
    params = _trained(SIZES, X, y)
    for p in params:
        p.flags.writeable = False  # any in-place write would raise
    X_before, y_before = X.copy(), y.copy()
    snapshot = [p.copy() for p in params]
    value, grads = mlp.loss_and_grads(params, X, y, activation="sigmoid", loss="squared_error")
    new = mlp.sgd_step(params, grads, 0.1)
    assert all(np.array_equal(p, s) for p, s in zip(params, snapshot, strict=True))
    assert np.array_equal(X, X_before) and np.array_equal(y, y_before)
    assert all(n is not p for n, p in zip(new, params, strict=True))
    for n, p, g in zip(new, params, grads, strict=True):
        np.testing.assert_array_equal(n, p - 0.1 * g)


def test_sgd_lowers_the_loss_on_real_digits(digits):
    X, y = digits
    params = mlp.init_params((784, 32, 10), seed=0)
    first, _ = mlp.loss_and_grads(params, X, y)
    for _ in range(20):
        _, grads = mlp.loss_and_grads(params, X, y)
        params = mlp.sgd_step(params, grads, 0.2)
    last, _ = mlp.loss_and_grads(params, X, y)
    assert last < 0.5 * first
    assert mlp.accuracy(params, X, y) > 0.9


def test_vector_view_round_trip():
    params = mlp.init_params((6, 4, 3), seed=2)
    vec = mlp.params_to_vector(params)
    assert vec.shape == (6 * 4 + 4 + 4 * 3 + 3,)
    back = mlp.vector_to_params(vec, (6, 4, 3))
    assert all(np.array_equal(a, b) for a, b in zip(params, back, strict=True))
    back[0][0, 0] = 99.0
    assert vec[0] == params[0][0, 0] != 99.0


@pytest.mark.parametrize("loss", mlp.LOSSES)
@pytest.mark.parametrize("activation", mlp.ACTIVATIONS)
def test_backward_matches_a_directional_difference(digits, activation, loss):
    """A quick self-contained check (5-point stencil), independent of :mod:`oracles`."""
    X, y = digits[0][:8], digits[1][:8]
    opts = {"activation": activation, "loss": loss}
    params = _trained(SIZES, *digits, **opts)
    vec = mlp.params_to_vector(params)
    d = np.random.default_rng(5).standard_normal(vec.size)
    grad = mlp.params_to_vector(mlp.mlp_loss_vjp(1.0, X, y, *params, **opts))

    def f(t):
        return float(mlp.mlp_loss(X, y, *mlp.vector_to_params(vec + t * d, SIZES), **opts))

    h = 1e-4
    numeric = (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)
    assert grad @ d == pytest.approx(numeric, rel=1e-7)


def test_cotangent_scales_the_gradient(digits):
    X, y = digits[0][:8], digits[1][:8]
    params = _trained(SIZES, *digits)
    one = mlp.mlp_loss_vjp(1.0, X, y, *params)
    three = mlp.mlp_loss_vjp(np.array(-3.0), X, y, *params)
    for a, b in zip(one, three, strict=True):
        np.testing.assert_allclose(b, -3.0 * a, rtol=1e-13, atol=1e-16)


# --- argument validation -------------------------------------------------------------------------

_P = mlp.init_params((4, 3, 2))
_X = np.zeros((2, 4))
_Y = np.array([0, 1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mlp.init_params((784,)), "at least two positive ints"),
        (lambda: mlp.init_params((784, 0, 10)), "at least two positive ints"),
        (lambda: mlp.forward(_P[:3], _X, _Y), "even number"),
        (lambda: mlp.forward((_P[0], _P[1], _P[0], _P[3]), _X, _Y), "layer 2"),
        (lambda: mlp.forward((_P[0], _P[3], _P[2], _P[3]), _X, _Y), r"b of shape \(n_out,\)"),
        (lambda: mlp.forward(_P, np.zeros((2, 5)), _Y), r"X must have shape \(N >= 1, 4\)"),
        (lambda: mlp.forward(_P, _X, np.array([0.0, 1.0])), "integer class labels"),
        (lambda: mlp.forward(_P, _X, np.array([0, 1, 1])), r"shape \(2,\)"),
        (lambda: mlp.forward(_P, _X, np.array([0, 2])), r"\[0, 1\]"),
        (lambda: mlp.forward(_P, _X, _Y, activation="gelu"), "activation must be one of"),
        (lambda: mlp.forward(_P, _X, _Y, loss="mse"), "loss must be one of"),
        (lambda: mlp.sgd_step(_P, _P[:2], 0.1), "same length"),
        (lambda: mlp.sgd_step(_P, _P[::-1], 0.1), r"grads\[0\]"),
        (lambda: mlp.vector_to_params(np.zeros(5), (4, 3, 2)), "23 entries"),
    ],
)
def test_argument_validation(call, message):
    with pytest.raises(InvalidInput, match=message):
        call()


# --- the full step against all three oracles, every element --------------------------------------


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.parametrize("loss", mlp.LOSSES)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_full_step_against_numeric_torch_and_jax(digits, activation, loss):
    """Every element of W1, b1, W2, b2 of a 784-8-10 MLP on 8 real digits."""
    from oracles import check_vjp
    from oracles.verify.mnist import jax_mlp_loss, torch_mlp_loss

    X, y = digits[0][:8], digits[1][:8]
    params = _trained(SIZES, *digits, activation=activation, loss=loss)
    opts = {"activation": activation, "loss": loss}
    report = check_vjp(
        lambda *p: mlp.mlp_loss(X, y, *p, **opts),
        lambda g, *p: mlp.mlp_loss_vjp(g, X, y, *p, **opts),
        params,
        against=("numeric", "torch", "jax"),
        torch_fn=torch_mlp_loss(X, y, **opts),
        jax_fn=jax_mlp_loss(X, y, **opts),
        names=("W1", "b1", "W2", "b2"),
        mode="exhaustive",  # every element, not projections
    )
    print(report)
    assert report.ok, str(report)
    assert all(
        c.n_checked == int(np.prod(r.shape)) for r in report.inputs for c in r.checks.values()
    )


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.parametrize("against", ["torch", "jax"])
def test_full_step_check_catches_a_planted_mistake(digits, against):
    """The same check fails when one bias gradient is off by a relative 1e-6."""
    from oracles import check_vjp
    from oracles.verify.mnist import jax_mlp_loss, torch_mlp_loss

    X, y = digits[0][:8], digits[1][:8]
    params = _trained(SIZES, *digits)

    def wrong_vjp(g, *p):
        grads = list(mlp.mlp_loss_vjp(g, X, y, *p))
        grads[1] = grads[1] * (1 + 1e-6)
        return tuple(grads)

    report = check_vjp(
        lambda *p: mlp.mlp_loss(X, y, *p),
        wrong_vjp,
        params,
        against=against,
        torch_fn=torch_mlp_loss(X, y),
        jax_fn=jax_mlp_loss(X, y),
    )
    assert not report.ok
