"""check_layer / assert_layer: layer objects judged like functions, bookkeeping mistakes caught."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from oracles import GradientMismatch, InvalidArgument, InvalidArgumentType, UserFunctionError
from oracles.layer import assert_layer, check_layer
from reference.layers import (
    Affine,
    Relu,
    Sigmoid,
    Softmax,
    SoftmaxWithLoss,
    SquaredErrorLoss,
    Tanh,
)

RNG = np.random.default_rng(20240611)
X = RNG.standard_normal((4, 3))
W = RNG.standard_normal((3, 2))
B = RNG.standard_normal(2)
LOGITS = RNG.standard_normal((4, 5))
LABELS = np.array([0, 4, 2, 2])


class MyAffine:
    """A learner's affine layer; ``mistake`` plants one of the usual slips."""

    def __init__(self, W, b, mistake=None):
        self.W, self.b = W, b
        self.dW = self.db = None
        self.mistake = mistake

    def forward(self, x):
        self.x = x  # cached publicly, as many notebooks do: must not be taken for a parameter
        return x @ self.W + self.b

    def backward(self, dout):
        dx = dout @ self.W.T
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        if self.mistake == "dW_mean":
            self.dW = self.dW / len(dout)
        elif self.mistake == "dx_no_transpose":
            dx = (dout @ self.W.T) * 1.000001
        elif self.mistake == "sgd_inside":
            self.W -= 0.1 * self.dW
        elif self.mistake == "scale_dout":
            dout *= 1.0  # writes (the same values) into dout: harmless numerically
            dout[0, 0] = 0.0
        return dx


class Mul:
    """Two inputs, no parameters: backward returns a tuple."""

    def forward(self, x, y):
        self._x, self._y = x, y
        return x * y

    def backward(self, dout):
        return dout * self._y, dout * self._x


class NoArgLoss:
    """A loss layer whose backward takes no argument: L = sum((p - t)^2) / 2."""

    def forward(self, pred, target):
        self._d = pred - target
        return 0.5 * np.sum(self._d**2)

    def backward(self):
        return self._d.copy()


class GradUnderscore:
    """Stores the parameter gradient as ``grad_w``."""

    def __init__(self):
        self.w = np.array([0.5, -2.0])

    def forward(self, x):
        self._x = x
        return np.tanh(self.w * x)

    def backward(self, dout):
        s = 1 - np.tanh(self.w * self._x) ** 2
        self.grad_w = dout * s * self._x
        return dout * s * self.w


class BackwardWritesInput:
    def forward(self, x):
        self._x = x  # a reference, not a copy
        return 2 * x

    def backward(self, dout):
        self._x[0] = 0.0  # "free the cache": overwrites the caller's x
        return 2 * dout


class ForwardWritesInput:
    def forward(self, x):
        np.clip(x, -1.0, 1.0, out=x)
        return 2 * x

    def backward(self, dout):
        return 2 * dout


# --------------------------------------------------------------------------- correct layers pass


@pytest.mark.parametrize(
    "layer, inputs",
    [
        (Affine(W, B), (X,)),
        (Tanh(), (X,)),
        (Sigmoid(), (X,)),
        (Relu(), (X + np.sign(X) * 0.1,)),  # away from the kink
        (Softmax(), (LOGITS,)),
        (Softmax(axis=0), (LOGITS,)),
        (SoftmaxWithLoss(), (LOGITS, LABELS)),
        (SoftmaxWithLoss(reduction="sum"), (LOGITS, RNG.random((4, 5)))),
        (SoftmaxWithLoss(reduction="none"), (LOGITS, LABELS)),
        (SquaredErrorLoss(), (X, RNG.standard_normal((4, 3)))),
        (SquaredErrorLoss(reduction="batch_mean", half=True), (X, np.zeros((4, 3)))),
        (MyAffine(W, B), (X,)),
        (Mul(), (X, RNG.standard_normal((4, 3)))),
        (NoArgLoss(), (X, np.ones((4, 3)))),
        (GradUnderscore(), (np.array([1.0, 0.3]),)),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else "",
)
def test_correct_layers_pass(layer, inputs):
    report = assert_layer(layer, inputs)
    assert report.ok and report.kind == "check_layer"


def test_names_parameters_and_held_fixed_inputs():
    r = check_layer(Affine(W, B), (X,))
    assert [i.name for i in r.inputs] == ["x", "W", "b"]
    assert [i.shape for i in r.inputs] == [(4, 3), (3, 2), (2,)]
    r = check_layer(SoftmaxWithLoss(), (LOGITS, LABELS))
    assert [i.name for i in r.inputs] == ["logits"]
    assert any("held fixed" in n and "targets" in n for n in r.notes)
    r = check_layer(GradUnderscore(), (np.array([1.0, 0.3]),))
    assert [i.name for i in r.inputs] == ["x", "w"]


def test_public_cached_inputs_are_not_parameters():
    # MyAffine caches ``self.x`` publicly; there is no ``dx`` attribute, so it is no parameter.
    assert [i.name for i in check_layer(MyAffine(W, B), (X,)).inputs] == ["x", "W", "b"]


def test_the_users_layer_is_never_changed():
    layer = MyAffine(W.copy(), B.copy(), mistake="sgd_inside")
    before = copy.deepcopy(vars(layer))
    x = X.copy()
    check_layer(layer, (x,))
    assert layer.dW is None and layer.db is None and not hasattr(layer, "x")
    np.testing.assert_array_equal(layer.W, before["W"])
    np.testing.assert_array_equal(x, X)


# --------------------------------------------------------------------------- wrong layers fail


def test_wrong_parameter_gradient_is_named():
    r = check_layer(MyAffine(W, B, mistake="dW_mean"), (X,))
    assert not r.ok and r.failed_inputs == ["W"]
    text = str(r)
    assert "elements of the gradient of W disagree with numeric" in text
    assert "check_layer: FAILED" in text


def test_wrong_input_gradient_is_named():
    r = check_layer(MyAffine(W, B, mistake="dx_no_transpose"), (X,))
    assert r.failed_inputs == ["x"]


def test_assert_layer_raises_with_the_report():
    with pytest.raises(GradientMismatch) as info:
        assert_layer(MyAffine(W, B, mistake="dW_mean"), (X,))
    assert info.value.report.failed_inputs == ["W"]
    assert "disagree" in str(info.value)


def test_backward_that_updates_parameters_is_a_problem():
    r = check_layer(MyAffine(W, B, mistake="sgd_inside"), (X,))
    assert not r.ok
    assert any("layer.backward changed the parameter W" in p for p in r.problems)


def test_backward_that_writes_into_dout_is_a_problem():
    r = check_layer(MyAffine(W, B, mistake="scale_dout"), (X,))
    assert not r.ok
    assert any("layer.backward modified its argument dout" in p for p in r.problems)


def test_forward_and_backward_writing_into_inputs_are_problems():
    r = check_layer(BackwardWritesInput(), (np.array([1.0, 2.0]),))
    assert r.failed_inputs == []  # the numbers are right...
    assert not r.ok  # ...but the input was written into
    assert any(p.startswith("layer.backward modified its argument x") for p in r.problems)
    r = check_layer(ForwardWritesInput(), (np.array([0.5, -0.25]),))
    assert any(p.startswith("layer.forward modified its argument x") for p in r.problems) is False
    r = check_layer(ForwardWritesInput(), (np.array([0.5, 3.0]),), params={})
    assert any(p.startswith("layer.forward modified its argument x") for p in r.problems)


def test_a_relu_that_zeroes_dout_in_place_is_caught():
    class InPlaceRelu:
        def forward(self, x):
            self._mask = x <= 0
            return np.maximum(x, 0)

        def backward(self, dout):
            dout[self._mask] = 0
            return dout

    r = check_layer(InPlaceRelu(), (X + np.sign(X) * 0.1,))
    assert any("dout" in p for p in r.problems) and not r.ok


# --------------------------------------------------------------------------- options


def test_params_explicit_dict_list_and_empty():
    assert [i.name for i in check_layer(Affine(W, B), (X,), params={"W": "dW"}).inputs] == [
        "x",
        "W",
    ]
    assert [i.name for i in check_layer(Affine(W, B), (X,), params=["b"]).inputs] == ["x", "b"]
    assert [i.name for i in check_layer(Affine(W, B), (X,), params={}).inputs] == ["x"]


def test_wrt_selects_inputs():
    class SecondInputOnly:
        def forward(self, labels, x):
            self._labels, self._x = labels, x
            return x[np.arange(len(labels)), labels]

        def backward(self, dout):
            g = np.zeros_like(self._x)
            g[np.arange(len(dout)), self._labels] = dout
            return g

    r = check_layer(SecondInputOnly(), (LABELS, LOGITS), wrt=(1,))
    assert r.ok and [i.name for i in r.inputs] == ["x"]


def test_loss_layer_backward_with_scalar_dout():
    r = check_layer(SoftmaxWithLoss(), (LOGITS, LABELS), direction=2.5)
    assert r.ok and r.context["direction"] == "given"


def test_wrong_loss_layer_fails():
    class MeanlessLoss(SoftmaxWithLoss):
        def backward(self, dout=1.0):
            return super().backward(dout) * len(LABELS)  # forgot to divide by N

    assert check_layer(MeanlessLoss(), (LOGITS, LABELS)).failed_inputs == ["logits"]


@pytest.mark.torch
def test_layer_against_torch():
    r = check_layer(
        Affine(W, B), (X,), against=("numeric", "torch"), torch_fn=lambda x, w, b: x @ w + b
    )
    assert r.ok and r.oracles == ("numeric", "torch")


@pytest.mark.jax
def test_layer_against_jax_flags_wrong_dw():
    r = check_layer(
        MyAffine(W, B, mistake="dW_mean"), (X,), against="jax", jax_fn=lambda x, w, b: x @ w + b
    )
    assert r.failed_inputs == ["W"]


# --------------------------------------------------------------------------- argument validation


class _NoBackward:
    def forward(self, x):
        return x


class _TooManyGrads:
    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        return 2 * dout, dout


class _Raises:
    def forward(self, x):
        return x

    def backward(self, dout):
        raise RuntimeError("boom")


class _Net:
    """A network whose gradient() result is configurable: ``kind`` plants a mistake."""

    def __init__(self, kind=None):
        self.params = {"W": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.1, 0.2])}
        self.kind = kind

    def loss(self, x):
        out = x @ self.params["W"] + self.params["b"]
        return out if self.kind == "vector loss" else 0.5 * np.sum(out**2)

    def gradient(self, x):
        out = x @ self.params["W"] + self.params["b"]
        grads = {"W": x.T @ out, "b": out.sum(axis=0)}
        if self.kind == "list":
            return [grads["W"], grads["b"]]
        if self.kind == "unknown key":
            grads["W3"] = grads["W"]
        if self.kind == "missing key":
            del grads["b"]
        return grads


class _FloatParam:
    """A PReLU-like slope kept as a Python float, with its gradient stored next to it."""

    def __init__(self):
        self.alpha = 0.25

    def forward(self, x):
        self._x = x
        return np.where(x > 0, x, self.alpha * x)

    def backward(self, dout):
        self.dalpha = float(np.sum(np.where(self._x > 0, 0.0, self._x) * dout))
        return dout * np.where(self._x > 0, 1.0, self.alpha)


def _lstm_like_forward(x):
    return x * 2, x * 3, x


def _lstm_like_backward(d1, d2, cache):
    return 2 * d1 + 3 * d2


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: check_layer(_NoBackward(), (X,)), InvalidArgumentType, "backward"),
        (lambda: check_layer(Tanh(), ()), InvalidArgument, "inputs is empty"),
        (lambda: check_layer(Tanh(), (X,), wrt=(3,)), InvalidArgument, "wrt holds 3"),
        (lambda: check_layer(Tanh(), (X,), wrt=("x",)), InvalidArgumentType, "positions"),
        (lambda: check_layer(Affine(W, B), (X,), params="W"), InvalidArgumentType, "string"),
        (lambda: check_layer(Affine(W, B), (X,), params={"V": "dV"}), InvalidArgument, "'V'"),
        (lambda: check_layer(Affine(W, B), (X,), params={"W": "dV"}), UserFunctionError, "'dV'"),
        (lambda: check_layer(Tanh(), (X,), direction=np.ones(3)), InvalidArgument, "shape"),
        (
            lambda: check_layer(NoArgLoss(), (X, X), direction=2.0),
            InvalidArgument,
            "no upstream gradient",
        ),
        (
            lambda: check_layer(SoftmaxWithLoss(), (LOGITS, LABELS), wrt=(0, 1)),
            InvalidArgument,
            "integer inputs",
        ),
        (lambda: check_layer(_TooManyGrads(), (X,)), UserFunctionError, "2 gradients"),
        (lambda: check_layer(_Raises(), (X,)), UserFunctionError, "boom"),
        (lambda: check_layer(Affine, (X,)), InvalidArgumentType, "pass an instance"),
        (lambda: check_layer(Tanh(), (X,), direction="ab"), InvalidArgumentType, "<U2"),
        (
            lambda: check_layer(Tanh(), (X,), direction=np.full((4, 3), np.nan)),
            InvalidArgument,
            "direction contains NaN",
        ),
        (
            lambda: check_layer(_Net("vector loss"), (X[:, :2],)),
            UserFunctionError,
            "must return a scalar loss",
        ),
        (lambda: check_layer(_Net("list"), (X[:, :2],)), UserFunctionError, "expected a dict"),
        (lambda: check_layer(_Net("unknown key"), (X[:, :2],)), UserFunctionError, "'W3'"),
        (
            lambda: check_layer(_Net("missing key"), (X[:, :2],)),
            UserFunctionError,
            r"reads layer.params\['b'\]",
        ),
        (
            lambda: check_layer(_Net(), (X[:, :2],), direction=np.ones(2)),
            InvalidArgument,
            "direction must be a scalar",
        ),
        (lambda: check_layer(_FloatParam(), (X,)), UserFunctionError, "Python float"),
        (
            lambda: check_layer(
                (_lstm_like_forward, _lstm_like_backward), (X,), direction=(np.ones((4, 3)),)
            ),
            InvalidArgument,
            "one array per output",
        ),
        (
            lambda: check_layer(
                (_lstm_like_forward, _lstm_like_backward),
                (X,),
                direction=(np.ones((4, 3)), np.ones(3)),
            ),
            InvalidArgument,
            r"direction\[1\] must have the shape of output 1",
        ),
        (
            lambda: check_layer((np.sin, _lstm_like_backward), (X,)),
            UserFunctionError,
            r"returns \(out, cache\)",
        ),
        (
            lambda: check_layer(Affine(W, B), (X,), params={"W": "dW", "b": "grads['b']"}),
            UserFunctionError,
            r"grads\['b'\]\" on the layer \(the gradient of layer\.b",
        ),
    ],
)
def test_argument_validation(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- more behaviours


def test_complex_gradients_are_refused_never_cast():
    class ComplexDx(Tanh):
        def backward(self, dout):
            return super().backward(dout) + 0j

    class ComplexDW(Affine):
        def backward(self, dout):
            dx = super().backward(dout)
            self.dW = self.dW + 1e-3j
            return dx

    with pytest.raises(UserFunctionError, match="returned complex values as the gradient of x"):
        check_layer(ComplexDx(), (X,))
    with pytest.raises(UserFunctionError, match=r"layer\.dW holds complex values"):
        check_layer(ComplexDW(W, B), (X,))


def test_forward_updating_a_parameter_is_a_problem():
    class Decays(Affine):
        def forward(self, x):
            self.W *= 0.999  # weight decay applied in forward
            return super().forward(x)

    r = check_layer(Decays(W.copy(), B.copy()), (X,))
    assert not r.ok
    assert any(p.startswith("layer.forward changed the parameter W in place") for p in r.problems)


def test_a_network_with_a_dict_gradient():
    r = check_layer(_Net(), (X[:, :2],))
    assert r.ok and [i.name for i in r.inputs] == ["W", "b"], str(r)
    assert (
        r.context["parameters"] == "W and b from layer.params and the dict layer.gradient() returns"
    )
    assert check_layer(_Net(), (X[:, :2],), direction=2.0).ok


def test_explicit_paths_name_parameters_and_gradients():
    r = check_layer(Affine(W, B), (X,), params={"layer.W": "layer.dW"})
    assert r.ok and [i.name for i in r.inputs] == ["x", "W"]
    r = check_layer(_Net(), (X[:, :2],), params={"params['W']": "W"})
    assert r.ok and [i.name for i in r.inputs] == ["W"]
