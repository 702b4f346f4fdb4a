"""check_layer on layers written the way people write them, correct and with planted bugs.

Every layer here is this project's own code, written in the spirit of three
codebases that people learn from and build on:

* "deep learning from scratch" (volumes 1 and 2): attributes ``W``/``dW``,
  ``self.x = None`` set in ``__init__``, a ReLU that zeroes ``dout`` in
  place, ``SoftmaxWithLoss.backward(dout=1)``, dropout drawing its mask
  from ``np.random.rand``; and, in volume 2, ``params``/``grads`` lists
  whose gradient arrays are written in place (``grads[0][...] = dW``);
* a solved CS231n assignment: functions with caches
  (``affine_forward``/``affine_backward``, ``lstm_step_forward``...);
* numpy-ml: ``self.parameters``/``self.gradients`` dicts, parameters made
  by the first forward, gradients accumulated until ``flush_gradients()``.

Plus the other places parameters live: ``weight``/``grad_weight``, ``W`` with
``grads['W']``, ``__slots__``, and layers nested in lists and dicts.
"""

from __future__ import annotations

import pathlib
import re
from collections import OrderedDict

import numpy as np
import pytest

from oracles import InvalidArgument, UserFunctionError, check_layer

ROOT = pathlib.Path(__file__).resolve().parents[2]

# batch, n_in, n_out (2 x 2: a square W), and the scale of the inputs
CASES = [((4, 3, 5), 1.0), ((1, 6, 2), 30.0), ((7, 2, 2), 1.0)]


def _affine_data(shape, scale, seed):
    n, d_in, d_out = shape
    rng = np.random.default_rng(seed)
    return (
        scale * rng.standard_normal((n, d_in)),
        rng.standard_normal((d_in, d_out)) / np.sqrt(d_in),
        rng.standard_normal(d_out),
    )


# --------------------------------------------------------------------------- the styles


class ScratchAffine:
    """Volume 1: attributes, ``self.x = None`` in __init__, x flattened to 2-D."""

    def __init__(self, W, b, bug=None):
        self.W, self.b = W, b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None
        self.bug = bug

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0) / (len(dout) if self.bug == "db_mean" else 1)
        if self.bug == "dW_transposed":
            self.dW = np.dot(dout.T, self.x)
        elif self.bug == "dW_list":
            self.dW = self.dW.tolist()
        elif self.bug == "db_never_set":
            self.db = None
        return dx.reshape(*self.original_x_shape)


class TorchishLinear:
    """``weight``/``bias`` with ``grad_weight``/``grad_bias``, as in hand-written Linear layers."""

    def __init__(self, W, b, bug=None):
        self.weight, self.bias = W, b
        self.bug = bug

    def forward(self, x):
        self.input = x
        return x @ self.weight + self.bias

    def backward(self, grad_output):
        self.grad_weight = self.input.T @ grad_output
        self.grad_bias = grad_output.sum(0) / (len(grad_output) if self.bug == "db_mean" else 1)
        if self.bug == "dW_transposed":
            self.grad_weight = self.grad_weight.T
        return grad_output @ self.weight.T


class GradsDictAffine:
    """Parameters as attributes, gradients in ``self.grads``."""

    def __init__(self, W, b, bug=None):
        self.W, self.b = W, b
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.cache = (x,)
        return x @ self.W + self.b

    def backward(self, dout):
        (x,) = self.cache
        self.grads["W"] = x.T @ dout if self.bug != "dW_transposed" else dout.T @ x
        if self.bug != "db_never_set":
            self.grads["b"] = dout.sum(0) / (len(dout) if self.bug == "db_mean" else 1)
        return dout @ self.W.T


class ParamsDictAffine:
    """``self.params``/``self.grads`` dicts (the CS231n model style, on a layer)."""

    def __init__(self, W, b, bug=None):
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout):
        self.grads = {
            "W": self.x.T @ dout if self.bug != "dW_transposed" else dout.T @ self.x,
            "b": dout.sum(0) / (len(dout) if self.bug == "db_mean" else 1),
        }
        if self.bug == "db_never_set":
            del self.grads["b"]
        return dout @ self.params["W"].T


class ListsAffine:
    """Volume 2: ``params``/``grads`` lists; the gradient arrays written in place."""

    def __init__(self, W, b, bug=None):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.x = None
        self.bug = bug

    def forward(self, x):
        W, b = self.params
        self.x = x
        return np.dot(x, W) + b

    def backward(self, dout):
        W, b = self.params
        dx = np.dot(dout, W.T)
        dW = np.dot(self.x.T, dout)
        db = np.sum(dout, axis=0) / (len(dout) if self.bug == "db_mean" else 1)
        if self.bug == "dW_transposed":
            self.grads[0] = dW.T
        else:
            self.grads[0][...] = dW
        if self.bug != "db_never_set":
            self.grads[1][...] = db
        return dx


class SlotsAffine:
    """``__slots__``: no instance dict at all."""

    __slots__ = ("W", "b", "dW", "db", "x", "bug")

    def __init__(self, W, b, bug=None):
        self.W, self.b, self.bug = W, b, bug
        self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout if self.bug != "dW_transposed" else dout.T @ self.x
        if self.bug != "db_never_set":
            self.db = dout.sum(0) / (len(dout) if self.bug == "db_mean" else 1)
        return dout @ self.W.T


class Identity:
    def __init__(self, rng=None):
        self.rng = rng

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


class Optimizer:
    """numpy-ml keeps an optimizer object, with its own cache dict, on every layer."""

    def __init__(self, lr=0.01):
        self.lr = lr
        self.cache = {}


class MLDense:
    """numpy-ml: parameters made by the first forward, gradients accumulated until flushed."""

    def __init__(self, n_out, init_W=None, init_b=None, bug=None, flush=True):
        self.n_in, self.n_out = None, n_out
        self.init_W, self.init_b = init_W, init_b
        self.parameters = {"W": None, "b": None}
        self.gradients = {}
        self.derived_variables = {"Z": []}
        self.hyperparameters = {"layer": "Dense", "n_out": n_out}
        self.X = []
        self.optimizer = Optimizer()
        self.act_fn = Identity()
        self.is_initialized = False
        self.bug = bug
        if not flush:
            self.flush_gradients = None

    def _init_params(self):
        self.parameters = {"W": self.init_W.copy(), "b": self.init_b.copy()}
        self.gradients = {"W": np.zeros_like(self.init_W), "b": np.zeros_like(self.init_b)}
        self.is_initialized = True

    def forward(self, X, retain_derived=True):
        if not self.is_initialized:
            self.n_in = X.shape[1]
            self._init_params()
        Z = X @ self.parameters["W"] + self.parameters["b"]
        if retain_derived:
            self.X.append(X)
            self.derived_variables["Z"].append(Z)
        return self.act_fn.forward(Z)

    def backward(self, dLdy, retain_grads=True):
        dX = []
        for dy, X in zip([dLdy], self.X, strict=False):
            dX.append(dy @ self.parameters["W"].T)
            if retain_grads:
                self.gradients["W"] += X.T @ dy if self.bug != "dW_transposed" else (dy.T @ X)
                db = dy.sum(axis=0) / (len(dy) if self.bug == "db_mean" else 1)
                if self.bug != "db_never_set":
                    self.gradients["b"] += db
        return dX[0]

    def flush_gradients(self):
        self.X = []
        self.derived_variables = {"Z": []}
        for k, v in self.gradients.items():
            self.gradients[k] = np.zeros_like(v)


def _ml_dense(W, b, bug=None):
    return MLDense(W.shape[1], W, b, bug=bug)


STYLES = {  # factory, parameter names, what the report says about where they were found
    "scratch attributes": (
        ScratchAffine,
        ["W", "b"],
        "W (layer.W, gradient layer.dW); b (layer.b, gradient layer.db)",
    ),
    "weight/grad_weight": (
        TorchishLinear,
        ["weight", "bias"],
        "weight (layer.weight, gradient layer.grad_weight); bias (layer.bias, gradient "
        "layer.grad_bias)",
    ),
    "W with grads['W']": (
        GradsDictAffine,
        ["W", "b"],
        "W (layer.W, gradient layer.grads['W']); b (layer.b, gradient layer.grads['b'])",
    ),
    "params/grads dicts": (
        ParamsDictAffine,
        ["W", "b"],
        "W and b from layer.params and layer.grads",
    ),
    "params/grads lists": (
        ListsAffine,
        ["params[0]", "params[1]"],
        "params[0] and params[1] from layer.params and layer.grads",
    ),
    "__slots__": (SlotsAffine, ["W", "b"], "W (layer.W, gradient layer.dW)"),
    "numpy-ml parameters/gradients": (
        _ml_dense,
        ["W", "b"],
        "W and b from layer.parameters and layer.gradients",
    ),
}


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("shape, scale", CASES)
def test_every_style_checks_out_and_says_where_it_found_the_parameters(style, shape, scale):
    make, names, where = STYLES[style]
    x, W, b = _affine_data(shape, scale, seed=sum(shape))
    r = check_layer(make(W, b), (x,))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs][1:] == names
    assert [i.shape for i in r.inputs] == [x.shape, W.shape, b.shape]
    assert r.notes[0].startswith("parameters checked: " + where), r.notes[0]


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("seed", [0, 1])
def test_a_wrong_bias_gradient_is_named_in_every_style(style, seed):
    make, names, _ = STYLES[style]
    x, W, b = _affine_data((4, 3, 5), 1.0, seed)
    r = check_layer(make(W, b, bug="db_mean"), (x,))
    assert not r.ok and r.failed_inputs == [names[1]], str(r)


@pytest.mark.parametrize("style", list(STYLES))
def test_a_transposed_gradient_of_a_non_square_weight_is_an_error_naming_it(style):
    make, names, _ = STYLES[style]
    x, W, b = _affine_data((4, 3, 5), 1.0, 2)
    if style.startswith("numpy-ml"):  # += into the preallocated gradient refuses the transpose
        with pytest.raises(UserFunctionError, match="layer.backward raised ValueError"):
            check_layer(make(W, b, bug="dW_transposed"), (x,))
        return
    with pytest.raises(UserFunctionError, match=r"shape \(5, 3\), but .* has shape \(3, 5\)") as e:
        check_layer(make(W, b, bug="dW_transposed"), (x,))
    assert "transpose" in str(e.value)


@pytest.mark.parametrize(
    "style", [s for s in STYLES if s not in ("weight/grad_weight", "scratch attributes")]
)
def test_a_bias_gradient_never_stored_is_an_error_naming_the_bias(style):
    make, names, _ = STYLES[style]
    x, W, b = _affine_data((4, 3, 5), 1.0, 3)
    with pytest.raises(UserFunctionError, match="b") as e:
        check_layer(make(W, b, bug="db_never_set"), (x,))
    text = str(e.value)
    assert ("reads" in text and "no gradient" in text) or "never wrote" in text or "None" in text


def test_the_scratch_style_mistakes_are_errors_that_say_what_was_expected():
    x, W, b = _affine_data((4, 3, 5), 1.0, 4)
    with pytest.raises(UserFunctionError, match=r"layer\.dW is a list, not a NumPy array"):
        check_layer(ScratchAffine(W, b, bug="dW_list"), (x,))
    with pytest.raises(UserFunctionError, match=r"layer\.db is None after backward"):
        check_layer(ScratchAffine(W, b, bug="db_never_set"), (x,))


class ScratchAffineNoDb:
    """Stores dW only; db is not even an attribute."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        return dout @ self.W.T


def test_forward_reading_a_parameter_without_gradient_is_an_error_naming_it():
    x, W, b = _affine_data((4, 3, 5), 1.0, 5)
    with pytest.raises(UserFunctionError) as e:
        check_layer(ScratchAffineNoDb(W, b), (x,))
    text = str(e.value)
    assert "layer.forward reads layer.b (shape (5,))" in text and "layer.db" in text
    # Saying which parameters to check is the way out (b taken as a constant).
    r = check_layer(ScratchAffineNoDb(W, b), (x,), params=["W"])
    assert r.ok and [i.name for i in r.inputs] == ["x", "W"]


def test_parameters_made_by_the_first_forward_are_found():
    x, W, b = _affine_data((5, 4, 3), 1.0, 6)
    r = check_layer(_ml_dense(W, b), (x,))
    assert r.ok and [i.name for i in r.inputs] == ["X", "W", "b"]
    assert any("creates its parameters in its first forward" in n for n in r.notes)
    assert any("flush_gradients() was called before every evaluation" in n for n in r.notes)
    r = check_layer(_ml_dense(W, b, bug="db_mean"), (x,))
    assert r.failed_inputs == ["b"]


def test_numpy_ml_without_a_flush_is_reported_as_accumulating():
    x, W, b = _affine_data((5, 4, 3), 1.0, 7)
    r = check_layer(MLDense(3, W, b, flush=False), (x,))
    assert not r.ok and r.failed_inputs == []
    assert any("accumulates into the gradient of W" in p for p in r.problems)
    assert any("accumulates into the gradient of b" in p for p in r.problems)


# --------------------------------------------------------------------------- nested layers


class Tanh:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = np.tanh(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out**2)


class Sequential:
    """A network holding its layers in a list (or a dict): forward and backward through all."""

    def __init__(self, layers):
        self.layers = layers

    def _all(self):
        return list(self.layers.values()) if isinstance(self.layers, dict) else self.layers

    def forward(self, x):
        for layer in self._all():
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(self._all()):
            dout = layer.backward(dout)
        return dout


class Block:
    """A layer made of layers, attributes naming them."""

    def __init__(self, W, b):
        self.fc = ScratchAffine(W, b)
        self.act = Tanh()

    def forward(self, x):
        return self.act.forward(self.fc.forward(x))

    def backward(self, dout):
        return self.fc.backward(self.act.backward(dout))


def _three(seed, bug=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3))
    W1, b1 = rng.standard_normal((3, 6)), rng.standard_normal(6)
    W2, b2 = rng.standard_normal((6, 2)) / 3, rng.standard_normal(2)
    return x, (W1, b1), (W2, b2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_list_of_layers_is_checked_as_a_whole(seed):
    x, (W1, b1), (W2, b2) = _three(seed)
    net = Sequential([ScratchAffine(W1, b1), Tanh(), ListsAffine(W2, b2)])
    r = check_layer(net, (x,))
    assert r.ok, str(r)
    names = ["x", "W", "b", "layers[2].params[0]", "layers[2].params[1]"]
    assert [i.name for i in r.inputs] == names
    bad = Sequential([ScratchAffine(W1, b1), Tanh(), ListsAffine(W2, b2, bug="db_mean")])
    assert check_layer(bad, (x,)).failed_inputs == ["layers[2].params[1]"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_dict_of_layers_and_layers_inside_layers(seed):
    x, (W1, b1), (W2, b2) = _three(seed)
    net = Sequential(OrderedDict(block=Block(W1, b1), out=ScratchAffine(W2, b2)))
    r = check_layer(net, (x,))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs] == [
        "x",
        "layers['block'].fc.W",
        "layers['block'].fc.b",
        "layers['out'].W",
        "layers['out'].b",
    ]
    net.layers["out"].bug = "db_mean"
    assert check_layer(net, (x,)).failed_inputs == ["layers['out'].b"]


class ScratchSequential2:
    """Volume 2's network: its params/grads lists are the layers' own arrays, end to end."""

    def __init__(self, layers, bug=None):
        self.layers = layers
        self.params, self.grads = [], []
        for layer in layers:
            self.params += getattr(layer, "params", [])
            self.grads += getattr(layer, "grads", [])

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout


class TanhNoParams(Tanh):
    params, grads = [], []


def test_volume_two_network_with_shared_params_and_grads_lists():
    x, (W1, b1), (W2, b2) = _three(3)
    net = ScratchSequential2([ListsAffine(W1, b1), TanhNoParams(), ListsAffine(W2, b2)])
    r = check_layer(net, (x,))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs][1:] == ["params[0]", "params[1]", "params[2]", "params[3]"]
    assert "from layer.params and layer.grads" in r.notes[0]
    bad = ScratchSequential2(
        [ListsAffine(W1, b1, bug="db_mean"), TanhNoParams(), ListsAffine(W2, b2)]
    )
    assert check_layer(bad, (x,)).failed_inputs == ["params[1]"]


# --------------------------------------------------------------------------- views of parameters


class TiedAutoencoder:
    """The decoder is the encoder's transpose, a view kept as an attribute; one gradient, dW."""

    def __init__(self, W, forget_decoder=False):
        self.W = W
        self.W_dec = W.T
        self.forget_decoder = forget_decoder

    def forward(self, x):
        self.x = x
        self.h = np.tanh(x @ self.W)
        return self.h @ self.W_dec

    def backward(self, dout):
        dh = dout @ self.W_dec.T
        da = dh * (1 - self.h**2)
        self.dW = self.x.T @ da
        if not self.forget_decoder:
            self.dW = self.dW + (self.h.T @ dout).T
        return da @ self.W.T


class TiedPair:
    """Volume 2's weight tying: W and W.T listed as two parameters, each with its gradient."""

    def __init__(self, W):
        self.params = [W, W.T]
        self.grads = [np.zeros_like(W), np.zeros_like(W.T)]

    def forward(self, x):
        W, W_out = self.params
        self.x, self.h = x, np.tanh(x @ W)
        return self.h @ W_out

    def backward(self, dout):
        W, W_out = self.params
        self.grads[1][...] = self.h.T @ dout
        da = (dout @ W_out.T) * (1 - self.h**2)
        self.grads[0][...] = self.x.T @ da
        return da @ W.T


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_view_of_a_parameter_follows_it(order, dtype):
    rng = np.random.default_rng(16)
    W = np.asarray(rng.standard_normal((3, 2)), dtype=dtype, order=order)
    x = rng.standard_normal((4, 3))
    layer = TiedAutoencoder(W)
    r = check_layer(layer, (x,))
    assert r.ok and [i.name for i in r.inputs] == ["x", "W"], str(r)
    assert layer.W_dec.base is layer.W  # the user's view, untouched
    assert check_layer(TiedAutoencoder(W, forget_decoder=True), (x,)).failed_inputs == ["W"]


def test_tied_weights_listed_twice_are_two_parameters_with_their_own_gradients():
    rng = np.random.default_rng(17)
    r = check_layer(TiedPair(rng.standard_normal((3, 2))), (rng.standard_normal((4, 3)),))
    assert r.ok and [i.name for i in r.inputs] == ["x", "params[0]", "params[1]"], str(r)


# --------------------------------------------------------------------------- scratch layers


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0  # as published: writes into the caller's dout
        return dout


class Sigmoid:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class BatchNormalization:
    """Training mode; running statistics kept (made by the first forward), never a parameter."""

    def __init__(self, gamma, beta, momentum=0.9):
        self.gamma, self.beta, self.momentum = gamma, beta, momentum
        self.running_mean = None
        self.running_var = None
        self.batch_size = self.xc = self.std = None
        self.dgamma = self.dbeta = None

    def forward(self, x):
        if self.running_mean is None:
            self.running_mean, self.running_var = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        mu = x.mean(axis=0)
        xc = x - mu
        var = np.mean(xc**2, axis=0)
        std = np.sqrt(var + 1e-7)
        xn = xc / std
        self.batch_size, self.xc, self.xn, self.std = x.shape[0], xc, xn, std
        self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
        self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        return self.gamma * xn + self.beta

    def backward(self, dout):
        self.dbeta = dout.sum(axis=0)
        self.dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        return dxc - dmu / self.batch_size


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxWithLoss:
    """As published, with ``delta`` added inside the log; backward ignores dout."""

    def __init__(self, delta=1e-7):
        self.loss = self.y = self.t = None
        self.delta = delta

    def forward(self, x, t):
        self.t = t
        self.y = _softmax(x)
        n = len(t)
        self.loss = -np.sum(np.log(self.y[np.arange(n), t] + self.delta)) / n
        return self.loss

    def backward(self, dout=1):
        n = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx / n


def test_scratch_activations_and_batch_norm():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 4))
    assert check_layer(Sigmoid(), (x,)).ok
    bn = BatchNormalization(rng.standard_normal(4), rng.standard_normal(4))
    r = check_layer(bn, (x,))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs] == ["x", "gamma", "beta"]  # running_* are not parameters
    assert bn.running_mean is None


def test_the_published_relu_is_right_but_writes_into_dout():
    x = np.random.default_rng(9).standard_normal((4, 5))
    x += np.sign(x) * 0.2  # away from the kink
    r = check_layer(Relu(), (x,))
    assert r.failed_inputs == [] and not r.ok
    assert any(
        p.startswith("layer.backward modified its argument dout in place") for p in r.problems
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_a_loss_layer_is_called_as_its_author_calls_it(seed):
    rng = np.random.default_rng(seed)
    z, t = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    r = check_layer(SoftmaxWithLoss(delta=0.0), (z, t))
    assert r.ok, str(r)
    assert any("is a loss layer" in n and "backward()" in n for n in r.notes)
    assert r.context["direction"].startswith("1.0 (loss layer")
    # The published delta (1e-7 inside the log) makes (y - t) / N off by about 1e-7 / y: real, and
    # found. It passes only when that is allowed for.
    r = check_layer(SoftmaxWithLoss(), (z, t))
    assert r.failed_inputs == ["x"] and r.inputs[0].max_rel_error < 1e-5
    assert check_layer(SoftmaxWithLoss(), (z, t), rtol=1e-5).ok


# --------------------------------------------------------------------------- CS231n functions


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1).dot(w) + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return dx, dw, db


def affine_backward_db_mean(dout, cache):
    dx, dw, db = affine_backward(dout, cache)
    return dx, dw, db / len(dout)


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    dout[cache <= 0] = 0
    return dout


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i, f, o = _sigmoid(a[:, :H]), _sigmoid(a[:, H : 2 * H]), _sigmoid(a[:, 2 * H : 3 * H])
    g = np.tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    next_h = o * np.tanh(next_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c)


def lstm_step_backward(dnext_h, dnext_c, cache, in_place=False):
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    tc = np.tanh(next_c)
    if in_place:
        dnext_c += dnext_h * o * (1 - tc**2)  # as in more than one published solution
        dc = dnext_c
    else:
        dc = dnext_c + dnext_h * o * (1 - tc**2)
    di, df, do, dg = dc * g, dc * prev_c, dnext_h * tc, dc * i
    da = np.hstack([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g**2)])
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_step_backward_in_place(dnext_h, dnext_c, cache):
    return lstm_step_backward(dnext_h, dnext_c, cache, in_place=True)


def word_embedding_forward(x, W):
    return W[x], (x, W)


def word_embedding_backward(dout, cache):
    x, W = cache
    dW = np.zeros_like(W)
    np.add.at(dW, x, dout)
    return dW


def softmax_loss(x, y):
    p = _softmax(x)
    n = x.shape[0]
    loss = -np.sum(np.log(p[np.arange(n), y])) / n
    dx = p.copy()
    dx[np.arange(n), y] -= 1
    return loss, dx / n


def svm_loss(x, y):
    n = x.shape[0]
    correct = x[np.arange(n), y][:, None]
    margins = np.maximum(0, x - correct + 1.0)
    margins[np.arange(n), y] = 0
    loss = np.sum(margins) / n
    positive = (margins > 0).astype(float)
    dx = positive.copy()
    dx[np.arange(n), y] -= positive.sum(axis=1)
    return loss, dx / n


def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])  # noqa: NPY002 - as the assignment does
    if mode == "train":
        mask = (np.random.rand(*x.shape) < p) / p  # noqa: NPY002
        return x * mask, (dropout_param, mask)
    return x, (dropout_param, None)


def dropout_backward(dout, cache):
    _, mask = cache
    return dout * mask


def conv_forward_naive(x, w, b, conv_param):
    pad, stride = conv_param["pad"], conv_param["stride"]
    N, _, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
    out = np.zeros((N, F, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride : i * stride + HH, j * stride : j * stride + WW]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache, crop_with_negative_pad=False):
    x, w, b, conv_param = cache
    pad, stride = conv_param["pad"], conv_param["stride"]
    _, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    db = dout.sum(axis=(0, 2, 3))
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            sl = (slice(None), slice(None), slice(i * stride, i * stride + HH),
                  slice(j * stride, j * stride + WW))  # fmt: skip
            dw += np.tensordot(dout[:, :, i, j], xp[sl], axes=([0], [0]))
            dxp[sl] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
    if crop_with_negative_pad:  # dxp[:, :, pad:-pad, pad:-pad] is empty when pad = 0
        dx = dxp[:, :, pad:-pad, pad:-pad]
    else:
        dx = dxp[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]]
    return dx, dw, db


def conv_backward_cropped(dout, cache):
    return conv_backward_naive(dout, cache, crop_with_negative_pad=True)


def _lstm_inputs(seed, N=2, D=3, H=2):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((N, D)),
        rng.standard_normal((N, H)),
        rng.standard_normal((N, H)),
        rng.standard_normal((D, 4 * H)) / 2,
        rng.standard_normal((H, 4 * H)) / 2,
        rng.standard_normal(4 * H),
    )


@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (3, 6, 5)])
def test_cs231n_affine_functions(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape[:-1])
    w = rng.standard_normal((int(np.prod(shape[1:-1])), shape[-1]))
    b = rng.standard_normal(shape[-1])
    r = check_layer((affine_forward, affine_backward), (x, w, b))
    assert r.ok and [i.name for i in r.inputs] == ["x", "w", "b"], str(r)
    r = check_layer((affine_forward, affine_backward_db_mean), (x, w, b))
    assert r.failed_inputs == ["b"]


def test_cs231n_relu_writes_into_dout():
    x = np.random.default_rng(10).standard_normal((3, 4)) + 0.05
    r = check_layer((relu_forward, relu_backward), (x,))
    assert r.failed_inputs == [] and not r.ok
    assert any(p.startswith("relu_backward modified its argument dout") for p in r.problems)


@pytest.mark.parametrize("seed", [0])
def test_cs231n_lstm_step_two_outputs_and_a_write_into_the_cotangent(seed):
    inputs = _lstm_inputs(seed)
    r = check_layer((lstm_step_forward, lstm_step_backward), inputs)
    assert r.ok, str(r)
    assert [i.name for i in r.inputs] == ["x", "prev_h", "prev_c", "Wx", "Wh", "b"]
    r = check_layer((lstm_step_forward, lstm_step_backward_in_place), inputs)
    assert r.failed_inputs == [] and not r.ok
    assert any("modified its argument dnext_c in place" in p for p in r.problems), r.problems
    # Several outputs: the direction is one array per output.
    N, H = inputs[1].shape
    d = (np.ones((N, H)), np.zeros((N, H)))
    assert check_layer((lstm_step_forward, lstm_step_backward), inputs, direction=d).ok


def test_cs231n_word_embedding_gradient_of_the_float_input_only():
    rng = np.random.default_rng(11)
    x, W = np.array([[0, 3, 1], [2, 2, 0]]), rng.standard_normal((5, 3))
    r = check_layer((word_embedding_forward, word_embedding_backward), (x, W))
    assert r.ok and [i.name for i in r.inputs] == ["W"]
    assert "held fixed (not differentiated): x" in r.notes


@pytest.mark.parametrize("loss", [softmax_loss, svm_loss])
def test_cs231n_loss_functions_returning_loss_and_gradient(loss):
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    r = check_layer(loss, (x, y))
    assert r.ok, str(r)
    assert any("loss function returning (loss, gradient)" in n for n in r.notes)


def test_cs231n_dropout_in_train_mode():
    x = np.random.default_rng(13).standard_normal((4, 5))
    state = np.random.get_state()  # noqa: NPY002
    r = check_layer((dropout_forward, dropout_backward), (x, {"p": 0.5, "mode": "train"}))
    assert r.ok and any("re-seeded" in n for n in r.notes)
    seeded = {"p": 0.5, "mode": "train", "seed": 1}
    r = check_layer((dropout_forward, dropout_backward), (x, seeded))
    assert r.ok and not any("re-seeded" in n for n in r.notes)  # seeded by its own param
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


@pytest.mark.parametrize("pad", [0, 1])
def test_cs231n_convolution_and_the_empty_dx_for_pad_0(pad):
    rng = np.random.default_rng(14)
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 2, 2))
    b = rng.standard_normal(2)
    param = {"pad": pad, "stride": 1}
    assert check_layer((conv_forward_naive, conv_backward_naive), (x, w, b, param)).ok
    if pad == 0:
        with pytest.raises(UserFunctionError, match=r"shape \(1, 2, 0, 0\) as the gradient of x"):
            check_layer((conv_forward_naive, conv_backward_cropped), (x, w, b, param))
    else:
        assert check_layer((conv_forward_naive, conv_backward_cropped), (x, w, b, param)).ok


def test_function_pairs_take_no_params():
    x, W, b = _affine_data((4, 3, 5), 1.0, 15)
    with pytest.raises(InvalidArgument, match="params= does not apply"):
        check_layer((affine_forward, affine_backward), (x, W, b), params=["w"])


# --------------------------------------------------------------------------- the documentation


def test_the_documented_examples_run():
    text = (ROOT / "docs" / "layers-you-have.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 6
    for block in blocks:
        namespace = {"__name__": "layers_you_have"}
        exec(compile(block, "docs/layers-you-have.md", "exec"), namespace)  # noqa: S102
