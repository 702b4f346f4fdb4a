"""Adversarial use of the public API: the verdict stays right, the caller's state stays put.

Each group is one class of input found by fuzzing the public entry points
(round 16), with its own constructions at several sizes, scales and seeds:

* a wrong ``grad=`` given to ``check_hvp``, with an HVP consistent with it: the
  numeric oracle differentiates ``grad=``, so the HVP check alone would pass;
* a tiny (subnormal) direction: a correct derivative must not fail, a wrong one
  must not pass;
* the caller's NumPy error state and warnings filters: the user's functions run
  under them, never under the numerics' own, and every piece of global state
  (NumPy's, torch's and jax's) is the same after the check, however it ends;
* one array in several places of a layer, and tied weights (arrays that share
  memory): judged as one parameter whose gradient is the sum over its uses, or
  refused with an error naming both.

Argument validation (wrong types, duplicate names, ``params=`` naming one array
twice) lives in the one table of ``test_inputs.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from oracles import (
    assert_hvp,
    check_hvp,
    check_jvp,
    check_layer,
    check_vjp,
    numeric_vjp,
)
from oracles.errors import GradientMismatch, InvalidArgument, UserFunctionError

SIZES = [1, 4, 23]
SEEDS = [0, 1, 2]


def _point(n, seed, scale=1.0):
    return scale * np.random.default_rng(100 + seed).standard_normal(n)


# --- check_hvp verifies grad= ---------------------------------------------------------------

#: fn = sum(x^3) (gradient 3x^2, Hessian 6 diag(x)); each row: a wrong gradient and the HVP
#: consistent with it, which the numeric oracle (differentiating grad=) would agree with.
WRONG_GRADIENTS = {
    "a factor off (2x^2)": (lambda x: 2 * x**2, lambda v, x: 4 * x * v),
    "a constant added (3x^2 + 1)": (lambda x: 3 * x**2 + 1.0, lambda v, x: 6 * x * v),
    "another function (cos x)": (np.cos, lambda v, x: -np.sin(x) * v),
    "one element off": (
        lambda x: 3 * x**2 * np.where(np.arange(x.size) == x.size // 2, 1.001, 1.0),
        lambda v, x: 6 * x * v * np.where(np.arange(x.size) == x.size // 2, 1.001, 1.0),
    ),
}


def _cube(x):
    return np.sum(x**3)


@pytest.mark.parametrize("wrong", list(WRONG_GRADIENTS))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_wrong_grad_fails_the_hvp_check_even_with_a_consistent_hvp(wrong, n, seed):
    grad, hvp = WRONG_GRADIENTS[wrong]
    x = _point(n, seed)
    report = check_hvp(_cube, hvp, (x,), grad=grad, seed=seed)
    assert report.status == "failed", str(report)
    assert any(p.startswith("grad= is not the gradient of fn") for p in report.problems)
    with pytest.raises(GradientMismatch, match="grad= is not the gradient of fn"):
        assert_hvp(_cube, hvp, (x,), grad=grad, seed=seed)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_a_right_grad_is_verified_and_the_check_passes(n, scale):
    x = _point(n, 0, scale)
    report = check_hvp(
        lambda x: np.sum(np.sin(x / scale)),
        lambda v, x: -np.sin(x / scale) / scale**2 * v,
        (x,),
        grad=lambda x: np.cos(x / scale) / scale,
    )
    assert report.ok, str(report)
    assert any(n.startswith("grad= was verified") for n in report.notes), report.notes


def test_a_grad_of_two_inputs_is_verified_block_by_block():
    x, y = _point(4, 0), _point(4, 1)

    def f(x, y):
        return np.sum(x * y**2)

    def right_hvp(v, x, y):
        return 2 * y * v[1], 2 * y * v[0] + 2 * x * v[1]

    def wrong_hvp(v, x, y):  # the Hessian of the wrong gradient (y^2, x y)
        return y * v[1], y * v[0] + x * v[1]

    assert check_hvp(f, right_hvp, (x, y), grad=lambda x, y: (y**2, 2 * x * y)).ok
    report = check_hvp(f, wrong_hvp, (x, y), grad=lambda x, y: (y**2, x * y))
    assert report.status == "failed"
    assert any(p.startswith("grad= is not the gradient of fn") for p in report.problems)


def test_a_grad_that_cannot_be_verified_is_said_to_be_trusted():
    # At the minimum of a quadratic the gradient is 0: no direction can tell 2x from x.
    x = np.zeros(3)
    report = check_hvp(lambda x: np.sum(x**2), lambda v, x: 2 * v, (x,), grad=lambda x: 2 * x)
    assert report.ok, str(report)
    assert any("it was trusted" in n for n in report.notes), report.notes


# --- tiny directions -----------------------------------------------------------------------


def _sin_layer(factor=1.0):
    class Sin:
        def forward(self, x):
            self.x = x
            return np.sin(x) * 1.5

        def backward(self, dout):
            return dout * 1.5 * np.cos(self.x) * factor

    return Sin()


def _check_along(kind, direction, x, factor=1.0):
    if kind == "vjp":
        return check_vjp(np.sin, lambda g, x: g * np.cos(x) * factor, (x,), direction=direction)
    if kind == "jvp":
        return check_jvp(np.sin, lambda t, x: np.cos(x) * t * factor, (x,), direction=direction)
    if kind == "hvp":
        return check_hvp(
            lambda x: np.sum(np.sin(x)),
            lambda v, x: -np.sin(x) * v * factor,
            (x,),
            grad=np.cos,
            direction=direction,
        )
    return check_layer(_sin_layer(factor), (x,), direction=direction)


@pytest.mark.parametrize("kind", ["vjp", "jvp", "hvp", "layer"])
@pytest.mark.parametrize("tiny", [1e-200, 1e-310, 5e-320])
@pytest.mark.parametrize("n", SIZES)
def test_a_tiny_direction_passes_a_right_derivative_and_fails_a_wrong_one(kind, tiny, n):
    x = _point(n, 3)
    d = tiny * np.random.default_rng(n).standard_normal(n)
    right = _check_along(kind, d, x)
    assert right.status == "passed", str(right)
    if tiny < 2.0**-500:
        assert any("multiplied by 2^" in note for note in right.notes), right.notes
    for factor in (1.01, 1.0 + 1e-6):
        wrong = _check_along(kind, d, x, factor)
        assert wrong.status == "failed", str(wrong)


def test_one_subnormal_element_among_normal_ones_is_not_rescaled():
    x, d = _point(6, 4), _point(6, 5)
    d[2] = 1e-315
    report = check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), direction=d)
    assert report.ok and not any("multiplied by 2^" in n for n in report.notes)


# --- the caller's global state -------------------------------------------------------------


def _state():
    return np.geterr(), list(warnings.filters)


def _entries():
    """(id, run(fn, derivative-maker)) of every entry point whose user code reads the state."""

    def vjp(mode):
        return lambda seen: check_vjp(
            seen(np.sin), seen(lambda g, x: g * np.cos(x)), (_point(5, 0),), mode=mode
        )

    def jvp(seen):
        return check_jvp(seen(np.sin), seen(lambda t, x: np.cos(x) * t), (_point(5, 0),))

    def hvp(seen):
        return check_hvp(
            seen(lambda x: np.sum(np.sin(x))),
            seen(lambda v, x: -np.sin(x) * v),
            (_point(5, 0),),
            grad=seen(np.cos),
        )

    def layer(seen):
        lay = _sin_layer()
        lay.forward, lay.backward = seen(lay.forward), seen(lay.backward)
        return check_layer(lay, (_point(5, 0),))

    def torch_fn(seen):
        import torch

        return check_vjp(
            seen(np.sin),
            seen(lambda g, x: g * np.cos(x)),
            (_point(5, 0),),
            against=("numeric", "torch"),
            torch_fn=seen(torch.sin),
        )

    def jax_fn(seen):
        import jax.numpy as jnp

        return check_vjp(
            seen(np.sin),
            seen(lambda g, x: g * np.cos(x)),
            (_point(5, 0),),
            against=("numeric", "jax"),
            jax_fn=seen(jnp.sin),
        )

    def torch_check(seen):
        import torch

        from oracles import torch as otorch

        x = torch.tensor(_point(5, 0), requires_grad=True)
        return otorch.check(seen(torch.sin), (x,))

    return [
        ("vjp exhaustive", vjp("exhaustive")),
        ("vjp fast", vjp("fast")),
        ("vjp ladder", vjp("ladder")),
        ("jvp", jvp),
        ("hvp", hvp),
        ("layer", layer),
        pytest.param("vjp torch_fn", torch_fn, marks=pytest.mark.torch, id="vjp torch_fn"),
        pytest.param("vjp jax_fn", jax_fn, marks=pytest.mark.jax, id="vjp jax_fn"),
        pytest.param("oracles.torch.check", torch_check, marks=pytest.mark.torch,
                     id="oracles.torch.check"),
    ]  # fmt: skip


ENTRIES = _entries()
USER_ERRSTATES = [
    {"all": "raise"},
    {"all": "warn"},
    {"divide": "raise", "over": "ignore", "under": "warn", "invalid": "print"},
]


@pytest.mark.parametrize(("name", "entry"), ENTRIES)
@pytest.mark.parametrize("errstate", USER_ERRSTATES, ids=["raise", "warn", "mixed"])
def test_user_code_runs_under_the_callers_error_state_and_warnings_filters(
    name, entry, errstate
):
    import torch  # noqa: F401 - its first import adds a warnings filter: not the check's doing

    with warnings.catch_warnings(), np.errstate(**errstate):
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="a filter of the caller's")
        user = _state()
        seen = []

        def recording(func):
            def call(*args):
                seen.append(_state())
                return func(*args)

            for attr in ("__name__", "__signature__"):
                if hasattr(func, attr):
                    setattr(call, attr, getattr(func, attr))
            return call

        report = entry(recording)
        assert report.ok, str(report)
        assert seen
        # At the oracle's own (perturbed) points what would only warn is ignored: those
        # warnings would tell the user nothing. Whatever raises still raises.
        quiet = {k: ("ignore" if v in ("warn", "print", "log") else v) for k, v in user[0].items()}
        assert [s for s in seen if s[0] not in (user[0], quiet)] == [], (
            f"{name}: fn saw another errstate"
        )
        if name not in ("vjp torch_fn", "vjp jax_fn", "oracles.torch.check"):
            assert user[0] in [s[0] for s in seen], f"{name}: fn never ran under the caller's"
        assert [s for s in seen if s[1] != user[1]] == [], f"{name}: fn saw other filters"
        assert _state() == user


def _raising_after(calls):
    count = [0]

    def fn(x):
        count[0] += 1
        if count[0] > calls:
            raise RuntimeError("boom")
        return np.sin(x)

    return fn


@pytest.mark.parametrize("calls", [1, 4, 20])
@pytest.mark.parametrize("kind", ["vjp", "jvp", "hvp"])
def test_the_callers_state_is_restored_when_fn_raises_anywhere(calls, kind):
    x = _point(5, 1)
    with warnings.catch_warnings(), np.errstate(all="warn"):
        before = _state()
        random_state = np.random.get_state()  # noqa: NPY002 - the state kept
        fn = _raising_after(calls)
        with pytest.raises(UserFunctionError, match="raised RuntimeError"):
            if kind == "vjp":
                check_vjp(fn, lambda g, x: g * np.cos(x), (x,))
            elif kind == "jvp":
                check_jvp(fn, lambda t, x: np.cos(x) * t, (x,))
            else:
                check_hvp(lambda x: np.sum(np.sin(x)), lambda v, x: -np.sin(x) * v, (x,),
                          grad=_raising_after(calls))  # fmt: skip
        assert _state() == before
        assert np.array_equal(np.random.get_state()[1], random_state[1])  # noqa: NPY002


def test_global_state_the_users_code_changes_is_put_back():
    import jax
    import torch

    x = _point(5, 2)

    def meddling(x):
        np.seterr(all="raise")
        warnings.simplefilter("always")
        np.random.seed(7)  # noqa: NPY002 - what is put back
        torch.manual_seed(7)
        torch.set_default_dtype(torch.float64)
        jax.config.update("jax_enable_x64", not jax.config.jax_enable_x64)
        return np.sin(x)

    default_dtype = torch.get_default_dtype()
    with warnings.catch_warnings(), np.errstate(all="warn"):
        torch.set_default_dtype(torch.float32)
        try:
            before = _state()
            torch_rng = torch.get_rng_state().clone()
            x64 = jax.config.jax_enable_x64
            numpy_rng = np.random.get_state()[1].copy()  # noqa: NPY002
            report = check_vjp(meddling, lambda g, x: g * np.cos(x), (x,))
            assert report.ok, str(report)
            assert _state() == before
            assert torch.equal(torch.get_rng_state(), torch_rng)
            assert torch.get_default_dtype() == torch.float32
            assert jax.config.jax_enable_x64 == x64
            assert np.array_equal(np.random.get_state()[1], numpy_rng)  # noqa: NPY002
        finally:
            torch.set_default_dtype(default_dtype)


def test_torch_rng_drawn_from_by_the_users_function_is_restored():
    import torch

    from oracles import torch as otorch

    x = torch.tensor(_point(4, 3), requires_grad=True)
    torch.manual_seed(11)
    before = torch.get_rng_state().clone()
    report = otorch.check(lambda t: torch.sin(t) + 0.0 * torch.rand_like(t), (x,))
    assert report.ok, str(report)
    assert torch.equal(torch.get_rng_state(), before)


def _sqrt_check(kind, x, factor=1.0):
    if kind == "vjp":
        return check_vjp(np.sqrt, lambda g, x: g * 0.5 / np.sqrt(x) * factor, (x,))
    if kind == "jvp":
        return check_jvp(np.sqrt, lambda t, x: t * 0.5 / np.sqrt(x) * factor, (x,))
    return check_hvp(  # grad= is sqrt-like: its steps leave the domain too
        lambda x: np.sum(np.sqrt(x) ** 3),
        lambda v, x: 0.75 / np.sqrt(x) * v * factor,
        (x,),
        grad=lambda x: 1.5 * np.sqrt(x),
    )


def _raising(how):
    """The caller's way of making NumPy's floating-point warnings raise."""
    if how == "errstate":
        return np.errstate(invalid="raise")
    context = warnings.catch_warnings()

    class Errors:
        def __enter__(self):
            context.__enter__()
            warnings.simplefilter("error", RuntimeWarning)  # pytest -W error

        def __exit__(self, *exc):
            return context.__exit__(*exc)

    return Errors()


@pytest.mark.parametrize("how", ["errstate", "warnings filter"])
@pytest.mark.parametrize("kind", ["vjp", "jvp", "hvp"])
def test_a_raise_at_a_perturbed_point_under_the_callers_state_is_outside_the_domain(how, kind):
    # sqrt's largest steps leave its domain: under the caller's invalid="raise" (or -W error)
    # fn raises there; that is a point where fn is not finite, and the remaining steps are used.
    x = np.array([1e-3, 0.5, 2.0])
    with _raising(how):
        assert _sqrt_check(kind, x).ok
        assert _sqrt_check(kind, x, factor=1.001).status == "failed"
        (g,) = numeric_vjp(np.sqrt, (x,), np.ones(3))
    np.testing.assert_allclose(g, 0.5 / np.sqrt(x), rtol=1e-8)


def test_raise_in_the_callers_errstate_at_the_point_itself_is_the_users_error():
    with np.errstate(divide="raise"), pytest.raises(UserFunctionError, match="FloatingPointError"):
        check_vjp(lambda x: np.log(x), lambda g, x: g / x, (np.array([0.0, 1.0]),))


# --- one array in several places; tied weights -------------------------------------------------


class _SharedDict:
    """``params['W1'] is params['W2']``: ``y = (x W) W``; backward stores per-use gradients."""

    def __init__(self, W, total):
        self.params = {"W1": W, "W2": W}
        self.grads = {}
        self.total = total

    def forward(self, x):
        self.x = x
        self.h = x @ self.params["W1"]
        return self.h @ self.params["W2"]

    def backward(self, dout):
        first = self.x.T @ (dout @ self.params["W2"].T)
        second = self.h.T @ dout
        if self.total:
            self.grads["W1"] = self.grads["W2"] = first + second
        else:
            self.grads["W1"], self.grads["W2"] = first, second
        return dout @ self.params["W2"].T @ self.params["W1"].T


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("seed", SEEDS)
def test_one_array_in_two_places_is_one_parameter_with_the_summed_gradient(n, seed):
    rng = np.random.default_rng(seed)
    W, x = rng.standard_normal((n, n)), rng.standard_normal((4, n))
    right = check_layer(_SharedDict(W, total=True), (x,))
    assert right.ok, str(right)
    assert [i.name for i in right.inputs] == ["x", "W1"]
    assert any("are one array (tied)" in note for note in right.notes), right.notes
    assert check_layer(_SharedDict(W, total=False), (x,)).status == "failed"


def _tied(kind, total=False):
    """A layer whose second weight ``V`` shares memory with its first ``W`` (``kind``), with a
    gradient stored for each: of its own use, or (``total``) ``dW`` the sum over both uses."""
    rng = np.random.default_rng(7)

    class Tied:
        def __init__(self):
            if kind == "transpose":
                self.W = rng.standard_normal((3, 2))
                self.V = self.W.T
            elif kind == "overlapping slices":
                buf = rng.standard_normal((4, 3))
                self.W, self.V = buf[:3], buf[1:4].T
            else:  # the rows reversed: every element of V is one of W
                self.W = rng.standard_normal((3, 3))
                self.V = self.W[::-1]

        def forward(self, x):
            self.x = x
            self.h = np.tanh(x @ self.W)
            return self.h @ self.V

        def backward(self, d):
            self.dV = self.h.T @ d
            dh = d @ self.V.T * (1 - self.h**2)
            self.dW = self.x.T @ dh
            if total:  # V's use, mapped onto W's elements
                if kind == "transpose":
                    self.dW = self.dW + self.dV.T
                elif kind == "overlapping slices":  # V[j, i] is W[i + 1, j]
                    self.dW[1:] += self.dV.T[:2]
                else:
                    self.dW = self.dW + self.dV[::-1]
            return dh @ self.W.T

    return Tied()


KINDS_OF_TIES = ["transpose", "overlapping slices", "reversed rows"]


@pytest.mark.parametrize("kind", KINDS_OF_TIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_tied_weights_each_with_a_gradient_are_judged_per_use_and_said_to_be(kind, seed):
    x = np.random.default_rng(8 + seed).standard_normal((4, 3))
    report = check_layer(_tied(kind), (x,))
    assert report.ok, str(report)
    assert [i.name for i in report.inputs] == ["x", "W", "V"]
    (note,) = [n for n in report.notes if "share memory" in n]
    for fragment in ("layer.W and layer.V share memory (tied weights)", "layer.dW", "layer.dV",
                     "its own use", "their sum"):  # fmt: skip
        assert fragment in note, note
    # The sum in dW as well as V's own gradient in dV: an optimizer stepping both would count
    # V's use twice.
    assert check_layer(_tied(kind, total=True), (x,)).failed_inputs == ["W"]


def test_disjoint_views_of_one_buffer_are_two_parameters():
    rng = np.random.default_rng(9)

    class TwoViews:
        def __init__(self):
            self.buf = rng.standard_normal((6, 3))
            self.W1, self.W2 = self.buf[:3], self.buf[3:]

        def forward(self, x):
            self.x = x
            self.h = np.tanh(x @ self.W1)
            return self.h @ self.W2

        def backward(self, d):
            self.dW2 = self.h.T @ d
            dh = d @ self.W2.T * (1 - self.h**2)
            self.dW1 = self.x.T @ dh
            return dh @ self.W1.T

    report = check_layer(TwoViews(), (rng.standard_normal((4, 3)),))
    assert report.ok, str(report)
    assert [i.name for i in report.inputs] == ["x", "W1", "W2"]


class _TiedTranspose:
    """An autoencoder-style tie: ``WT = W.T``; ``dW`` holds one use's gradient or both uses'."""

    def __init__(self, total, seed=0):
        self.W = np.random.default_rng(seed).standard_normal((3, 2))
        self.WT = self.W.T
        self.total = total

    def forward(self, x):
        self.x = x
        self.h = np.tanh(x @ self.W)
        return self.h @ self.WT

    def backward(self, d):
        dWT = self.h.T @ d
        dh = d @ self.WT.T * (1 - self.h**2)
        self.dW = self.x.T @ dh + (dWT.T if self.total else 0.0)
        return dh @ self.W.T


@pytest.mark.parametrize("params", [None, ["W"], {"W": "dW"}], ids=["found", "list", "dict"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_view_follows_its_parameter_found_or_named(params, seed):
    x = np.random.default_rng(10 + seed).standard_normal((5, 3))
    right = check_layer(_TiedTranspose(total=True, seed=seed), (x,), params=params)
    assert right.ok, str(right)
    wrong = check_layer(_TiedTranspose(total=False, seed=seed), (x,), params=params)
    assert wrong.status == "failed", str(wrong)


def test_params_naming_the_view_of_a_tied_weight_is_refused():
    x = np.random.default_rng(12).standard_normal((5, 3))
    with pytest.raises(InvalidArgument, match=r"params names layer\.WT, a view of layer\.W"):
        check_layer(_TiedTranspose(total=True), (x,), params={"WT": "dW"})


# --- framework tensors where NumPy arrays are expected ---------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("who", ["fn", "vjp"])
def test_a_torch_tensor_that_requires_grad_is_named_not_a_traceback(who):
    import torch

    def tensor(a):
        return torch.tensor(np.asarray(a), requires_grad=True) * 2

    x = _point(3, 4)
    fn = (lambda x: tensor(x)) if who == "fn" else (lambda x: 2 * x)
    vjp = (lambda g, x: 2 * g) if who == "fn" else (lambda g, x: tensor(g))
    with pytest.raises(UserFunctionError) as info:
        check_vjp(fn, vjp, (x,))
    message = str(info.value)
    assert message.startswith(who) and "Tensor" in message and "detach" in message, message
