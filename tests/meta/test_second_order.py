"""Hand-derived HVPs (reference.second_order) and check_hvp, against numerics, torch and jax."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from oracles import GradientMismatch, InvalidArgument, UserFunctionError, assert_hvp, check_hvp
from oracles.strategies import logits_and_targets
from reference import InvalidInput, cross_entropy_hvp, squared_error_hvp, tanh_hvp
from reference.activations import tanh_vjp
from reference.losses import cross_entropy, cross_entropy_vjp, squared_error, squared_error_vjp
from reference.softmax import softmax

RNG = np.random.default_rng(11)
LABELS = np.array([2, 0, 1, 4, 4, 3])


def ce_case(z, targets, reduction="mean"):
    """(fn, hvp, grad) for the cross-entropy over logits."""
    return (
        lambda z: cross_entropy(z, targets, reduction=reduction),
        lambda v, z: cross_entropy_hvp(v, z, targets, reduction=reduction),
        lambda z: cross_entropy_vjp(1.0, z, targets, reduction=reduction),
    )


def ce_hvp_diagonal_only(targets):
    """The classic mistake: diag(a) v, dropping - a (a . v)."""

    def hvp(v, z):
        return softmax(z) * v / z.shape[0]

    return hvp


def torch_ce(targets, reduction="mean"):
    import torch

    def f(z):
        t = torch.as_tensor(targets)
        if t.dtype == torch.int64:
            t = torch.nn.functional.one_hot(t, z.shape[-1]).to(z.dtype)
        per_row = -(t * torch.log_softmax(z, dim=-1)).sum(-1)
        return per_row.mean() if reduction == "mean" else per_row.sum()

    return f


def jax_ce(targets, reduction="mean"):
    import jax
    import jax.numpy as jnp

    def f(z):
        t = jnp.asarray(targets)
        if jnp.issubdtype(t.dtype, jnp.integer):
            t = jax.nn.one_hot(t, z.shape[-1], dtype=z.dtype)
        per_row = -(t * jax.nn.log_softmax(z, axis=-1)).sum(-1)
        return per_row.mean() if reduction == "mean" else per_row.sum()

    return f


# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (10.0, 0.0), (100.0, 0.0), (1.0, 1e6)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_hvp_passes_numeric(scale, offset, reduction):
    z = scale * RNG.standard_normal((6, 5)) + offset
    fn, hvp, grad = ce_case(z, LABELS, reduction)
    assert_hvp(fn, hvp, (z,), grad=grad)


def test_cross_entropy_hvp_with_targets_not_summing_to_one():
    z = RNG.standard_normal((4, 3))
    y = RNG.random((4, 3)) * 2  # rows sum to about 3: S matters
    fn, hvp, grad = ce_case(z, y, "sum")
    assert_hvp(fn, hvp, (z,), grad=grad)

    def forgot_s(v, z):
        a = softmax(z)
        return a * (v - np.sum(a * v, axis=-1, keepdims=True))

    assert check_hvp(fn, forgot_s, (z,), grad=grad).failed_inputs == ["Hv[z]"]


def test_dropping_the_outer_product_term_is_caught():
    z = RNG.standard_normal((6, 5))
    fn, _, grad = ce_case(z, LABELS)
    with pytest.raises(GradientMismatch) as info:
        assert_hvp(fn, ce_hvp_diagonal_only(LABELS), (z,), grad=grad)
    text = str(info.value)
    assert "check_hvp: FAILED" in text and "Hv[z]" in text and "disagree with numeric" in text


@pytest.mark.torch
@pytest.mark.jax
def test_cross_entropy_hvp_against_torch_and_jax():
    z = 10 * RNG.standard_normal((6, 5))
    fn, hvp, grad = ce_case(z, LABELS)
    r = assert_hvp(
        fn, hvp, (z,), grad=grad, against=("numeric", "torch", "jax"),
        torch_fn=torch_ce(LABELS), jax_fn=jax_ce(LABELS),
    )
    assert all(a.agree for a in r.agreements)
    r = check_hvp(
        fn, ce_hvp_diagonal_only(LABELS), (z,), against=("torch", "jax"),
        torch_fn=torch_ce(LABELS), jax_fn=jax_ce(LABELS),
    )
    assert not r.ok and r.oracles_blame_derivation()


@pytest.mark.torch
def test_numeric_oracle_can_differentiate_the_torch_gradient():
    z = RNG.standard_normal((6, 5))
    fn, hvp, _ = ce_case(z, LABELS)
    r = check_hvp(fn, hvp, (z,), torch_fn=torch_ce(LABELS))
    assert r.ok and "torch autodiff" in r.context["oracles"]


@pytest.mark.jax
def test_numeric_oracle_can_differentiate_the_jax_gradient():
    z = RNG.standard_normal((6, 5))
    fn, _, _ = ce_case(z, LABELS)
    r = check_hvp(fn, ce_hvp_diagonal_only(LABELS), (z,), jax_fn=jax_ce(LABELS))
    assert r.failed_inputs == ["Hv[z]"] and "jax autodiff" in r.context["oracles"]


@given(pair=logits_and_targets(shape=(3, 4)))
@settings(max_examples=15)
def test_cross_entropy_hessian_is_psd_symmetric_and_shift_invariant(pair):
    z, t = pair
    v, w = RNG.standard_normal(z.shape), RNG.standard_normal(z.shape)
    hv = cross_entropy_hvp(v, z, t, reduction="sum")
    hw = cross_entropy_hvp(w, z, t, reduction="sum")
    scale = np.sum(np.abs(v)) * np.sum(np.abs(w)) * max(1.0, float(np.max(np.abs(t))))
    assert float(np.vdot(v, hv)) >= -1e-13 * scale  # positive semi-definite
    assert abs(np.vdot(w, hv) - np.vdot(v, hw)) <= 1e-13 * scale  # symmetric
    np.testing.assert_allclose(cross_entropy_hvp(np.ones(z.shape), z, t), 0.0, atol=1e-15)


# --------------------------------------------------------------------------- squared error, tanh


@pytest.mark.parametrize("reduction", ["sum", "mean", "batch_mean"])
@pytest.mark.parametrize("half", [False, True])
def test_squared_error_hvp(reduction, half):
    p, t = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    kw = dict(reduction=reduction, half=half)
    assert_hvp(
        lambda p: squared_error(p, t, **kw),
        lambda v, p: squared_error_hvp(v, p, t, **kw),
        (p,),
        grad=lambda p: squared_error_vjp(1.0, p, t, **kw)[0],
    )


def test_squared_error_hvp_with_the_wrong_convention_fails():
    p, t = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    r = check_hvp(
        lambda p: squared_error(p, t, reduction="mean"),
        lambda v, p: squared_error_hvp(v, p, t, reduction="batch_mean"),
        (p,),
        grad=lambda p: squared_error_vjp(1.0, p, t, reduction="mean")[0],
    )
    assert r.failed_inputs == ["Hv[p]"]


@pytest.mark.torch
def test_tanh_hvp_with_weights_against_torch():
    import torch

    x = RNG.standard_normal((3, 4)) * 2
    w = RNG.standard_normal((3, 4))
    assert_hvp(
        lambda x: np.sum(w * np.tanh(x)),
        lambda v, x: tanh_hvp(v, x, weights=w),
        (x,),
        grad=lambda x: tanh_vjp(w, x),
        against=("numeric", "torch"),
        torch_fn=lambda x: (torch.as_tensor(w) * torch.tanh(x)).sum(),
    )


def test_tanh_hvp_with_the_wrong_sign_fails():
    x = RNG.standard_normal(5)
    r = check_hvp(
        lambda x: np.sum(np.tanh(x)),
        lambda v, x: -tanh_hvp(v, x),
        (x,),
        grad=lambda x: tanh_vjp(np.ones_like(x), x),
    )
    assert r.failed_inputs == ["Hv[x]"]


# --------------------------------------------------------------------------- check_hvp itself


def test_two_inputs_give_one_block_per_input():
    def f(x, y):
        return np.sum(x * y**2)

    def grad(x, y):
        return y**2, 2 * x * y

    def hvp(v, x, y):
        vx, vy = v
        return 2 * y * vy, 2 * y * vx + 2 * x * vy

    def hvp_missing_cross_term(v, x, y):
        vx, vy = v
        return 2 * y * vy, 2 * x * vy

    inputs = (RNG.standard_normal(3), RNG.standard_normal(3))
    r = assert_hvp(f, hvp, inputs, grad=grad)
    assert [b.name for b in r.inputs] == ["Hv[x]", "Hv[y]"]
    assert check_hvp(f, hvp_missing_cross_term, inputs, grad=grad).failed_inputs == ["Hv[y]"]


def test_given_vectors_are_used():
    x = np.array([0.3, -0.2])
    f, g = (lambda x: np.sum(x**4)), (lambda x: 4 * x**3)
    wrong_in_second = lambda v, x: 12 * x**2 * v * np.array([1.0, 3.0])  # noqa: E731
    assert check_hvp(f, wrong_in_second, (x,), grad=g, direction=np.array([1.0, 0.0])).ok
    assert not check_hvp(f, wrong_in_second, (x,), grad=g).ok


def test_an_hvp_that_ignores_v_is_not_linear():
    f, g = (lambda x: np.sum(x**3)), (lambda x: 3 * x**2)
    r = check_hvp(f, lambda v, x: 6 * x, (np.ones(2),), grad=g)
    assert any("hvp is not linear" in p for p in r.problems)


def test_an_hvp_that_writes_into_v_is_a_problem():
    def hvp(v, x):
        v *= 6 * x
        return v.copy()

    r = check_hvp(lambda x: np.sum(x**3), hvp, (np.ones(2),), grad=lambda x: 3 * x**2)
    assert any("modified its argument v" in p for p in r.problems)


X = np.array([0.5, -1.0])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: check_hvp(np.sum, lambda v, x: 0 * v, (X,)), InvalidArgument, "grad="),
        (lambda: check_hvp(np.tanh, lambda v, x: v, (X,), grad=np.ones_like), UserFunctionError,
         "scalar"),
        (lambda: check_hvp(np.sum, lambda v, x: v[:1], (X,), grad=np.ones_like),
         UserFunctionError, "shape"),
        (lambda: check_hvp(np.sum, lambda v, x: 0 * v, (X,), grad=lambda x: x[:1]),
         UserFunctionError, "grad returned"),
        (lambda: check_hvp(np.sum, lambda v, x: 0 * v, (X,), grad=np.ones_like,
                           direction=np.ones(3)), InvalidArgument, "direction"),
        (lambda: cross_entropy_hvp(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 1]),
                                   reduction="none"), InvalidInput, "scalar loss"),
        (lambda: cross_entropy_hvp(np.ones(3), np.ones((2, 3)), np.array([0, 1])),
         InvalidInput, "shape of logits"),
        (lambda: squared_error_hvp(X, X, X, reduction="none"), InvalidInput, "scalar loss"),
        (lambda: squared_error_hvp(X, X, X[:1]), InvalidInput, "same shape"),
        (lambda: tanh_hvp(X, X, weights=np.ones(3)), InvalidInput, "broadcast"),
    ],
)
def test_argument_validation(call, error, match):
    with pytest.raises(error, match=match):
        call()
