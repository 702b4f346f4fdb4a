"""A from-scratch two-layer network, checked end to end by check_layer.

The network is written the way the "deep learning from scratch" books write
it (in this project's own words): layer objects with ``forward``/``backward``
and ``dW``/``db`` attributes, an ``OrderedDict`` of them, a ``params`` dict
whose arrays the layers share, ``gradient(x, t)`` returning a ``grads`` dict
keyed like ``params``, and the book's own ``numerical_gradient``. check_layer
takes the network as it is, checks its loss against every parameter, and
names the parameter (or the attribute) when a planted bug is in backward.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest

from oracles import check_layer


def softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    # The books add 1e-7 inside the log; that makes (y - t) / N off by about 1e-7 / y, which this
    # checker sees (test_layer_styles pins it). The network here uses the exact loss.
    if t.size == y.size:
        t = t.argmax(axis=1)
    n = y.shape[0]
    return -np.sum(np.log(y[np.arange(n), t])) / n


def numerical_gradient(f, x):
    """The book's central difference, h = 1e-4, perturbing ``x`` in place and restoring it."""
    h = 1e-4
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        i = it.multi_index
        keep = x[i]
        x[i] = keep + h
        up = f(x)
        x[i] = keep - h
        down = f(x)
        grad[i] = (up - down) / (2 * h)
        x[i] = keep
        it.iternext()
    return grad


class Affine:
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
        return self.x @ self.W + self.b

    def backward(self, dout):
        dx = dout @ self.W.T
        dW = self.x.T @ dout
        self.db = np.sum(dout, axis=0)
        if self.bug == "db_mean":
            self.db = np.mean(dout, axis=0)
        elif self.bug == "one_element":  # one entry off by 1e-6 relative: a typo-sized slip
            dW = dW.copy()
            dW[1, 2] *= 1 + 1e-6
        elif self.bug == "accumulate":
            dW = dW if self.dW is None else self.dW + dW
        self.dW = dW
        if self.bug == "sgd_inside":
            self.W -= 0.01 * self.dW  # W is params['W1']: the step changes the network's params
        return dx.reshape(*self.original_x_shape)


class Relu:
    def __init__(self, bug=None):
        self.mask = None
        self.bug = bug

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask if self.bug != "mask_inverted" else ~self.mask] = 0  # in place, as published
        return dout


class SoftmaxWithLoss:
    def __init__(self, bug=None):
        self.loss = None
        self.y = None
        self.t = None
        self.bug = bug

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        self.loss = cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        n = self.t.shape[0]
        if self.t.size == self.y.size:
            dx = self.y - self.t
        else:
            dx = self.y.copy()
            dx[np.arange(n), self.t] -= 1
        return dx if self.bug == "no_1_over_n" else dx / n


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, seed=0, **kw):
        bugs = kw.get("bugs") or {}
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": weight_init_std * rng.standard_normal((input_size, hidden_size)),
            "b1": 0.1 * rng.standard_normal(hidden_size),
            "W2": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b2": 0.1 * rng.standard_normal(output_size),
        }
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"], bugs.get("Affine1"))
        self.layers["Relu1"] = Relu(bugs.get("Relu1"))
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"], bugs.get("Affine2"))
        self.lastLayer = SoftmaxWithLoss(bugs.get("SoftmaxWithLoss"))

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.lastLayer.forward(self.predict(x), t)

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        def loss_w(_):
            return self.loss(x, t)

        return {key: numerical_gradient(loss_w, self.params[key]) for key in self.params}

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.lastLayer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        return {
            "W1": self.layers["Affine1"].dW,
            "b1": self.layers["Affine1"].db,
            "W2": self.layers["Affine2"].dW,
            "b2": self.layers["Affine2"].db,
        }


def _data(n_in, n_out, batch, seed, one_hot=False):
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((batch, n_in))
    t = rng.integers(0, n_out, batch)
    if one_hot:
        t = np.eye(n_out)[t]
    return x, t


SIZES = [  # input, hidden, output, batch, weight scale, seed, one-hot labels
    (4, 5, 3, 6, 0.01, 0, False),
    (7, 3, 4, 5, 1.0, 1, True),
    (3, 8, 2, 1, 0.5, 2, False),
    (10, 6, 5, 9, 0.1, 3, True),
]


# --------------------------------------------------------------------------- correct


@pytest.mark.parametrize("n_in, hidden, n_out, batch, scale, seed, one_hot", SIZES)
def test_the_network_checks_out_against_every_parameter(
    n_in, hidden, n_out, batch, scale, seed, one_hot
):
    net = TwoLayerNet(n_in, hidden, n_out, weight_init_std=scale, seed=seed)
    x, t = _data(n_in, n_out, batch, seed, one_hot)
    r = check_layer(net, (x, t))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs] == ["W1", "b1", "W2", "b2"]
    assert [i.shape for i in r.inputs] == [(n_in, hidden), (hidden,), (hidden, n_out), (n_out,)]
    assert "W1, b1, W2 and b2 from layer.params and the dict layer.gradient() returns" in r.notes[0]
    assert any(n == "held fixed (not differentiated): x, t" for n in r.notes)
    assert "layer.gradient" in r.context["direction"]
    # Every element of every parameter was compared on its own (auto: small enough).
    assert all(c.n_checked == int(np.prod(i.shape)) for i in r.inputs for c in i.checks.values())


def test_the_network_is_left_as_it_was():
    net = TwoLayerNet(4, 5, 3, seed=4)
    x, t = _data(4, 3, 6, 4)
    before = copy.deepcopy(net)
    ids = {k: id(v) for k, v in net.params.items()}
    assert check_layer(net, (x, t)).ok
    assert {k: id(v) for k, v in net.params.items()} == ids
    for key in net.params:
        np.testing.assert_array_equal(net.params[key], before.params[key])
    assert net.layers["Affine1"].W is net.params["W1"]  # the aliasing is the user's, untouched
    assert net.layers["Affine1"].dW is None and net.layers["Relu1"].mask is None
    assert net.lastLayer.loss is None


def test_the_books_own_numerical_gradient_agrees_with_the_network():
    # The network used here is right by the book's own gradient check, too.
    net = TwoLayerNet(4, 5, 3, weight_init_std=1.0, seed=5)
    x, t = _data(4, 3, 6, 5)
    numeric, analytic = net.numerical_gradient(x, t), net.gradient(x, t)
    for key in net.params:
        assert np.mean(np.abs(numeric[key] - analytic[key])) < 1e-7


# --------------------------------------------------------------------------- planted bugs


@pytest.mark.parametrize(
    "bugs, failed",
    [
        ({"Affine2": "db_mean"}, ["b2"]),
        ({"Affine1": "db_mean"}, ["b1"]),
        ({"Relu1": "mask_inverted"}, ["W1", "b1"]),
        ({"SoftmaxWithLoss": "no_1_over_n"}, ["W1", "b1", "W2", "b2"]),
    ],
)
@pytest.mark.parametrize("seed", [0, 7])
def test_a_planted_bug_in_backward_is_found_and_named(bugs, failed, seed):
    net = TwoLayerNet(4, 5, 3, weight_init_std=1.0, seed=seed, bugs=bugs)
    x, t = _data(4, 3, 6, seed)
    r = check_layer(net, (x, t))
    assert not r.ok
    assert r.failed_inputs == failed
    for name in failed:
        assert f"elements of the gradient of {name} disagree with numeric" in r.verdict


@pytest.mark.parametrize("mode", ["auto", "fast"])
def test_one_element_off_by_1e_6_is_named_where_the_books_check_sees_nothing(mode):
    net = TwoLayerNet(4, 5, 3, weight_init_std=1.0, seed=8, bugs={"Affine1": "one_element"})
    x, t = _data(4, 3, 6, 8)
    r = check_layer(net, (x, t), mode=mode)
    assert r.failed_inputs == ["W1"]
    worst = r.input("W1").worst[0]
    assert worst.index == (1, 2) and not worst.passed
    assert ("bisection" in r.context["oracles"]) == (mode == "fast")
    # The book's check (mean absolute difference to its numerical gradient) cannot tell.
    numeric, analytic = net.numerical_gradient(x, t), net.gradient(x, t)
    assert np.mean(np.abs(numeric["W1"] - analytic["W1"])) < 1e-7


def test_an_accumulating_layer_inside_the_network_is_named():
    net = TwoLayerNet(4, 5, 3, weight_init_std=1.0, seed=9, bugs={"Affine1": "accumulate"})
    x, t = _data(4, 3, 6, 9)
    r = check_layer(net, (x, t))
    assert not r.ok and r.failed_inputs == []  # the first call is right...
    assert any("accumulates into the gradient of W1" in p for p in r.problems), r.problems
    assert not any("gradient of b1" in p for p in r.problems)


def test_an_optimizer_step_inside_backward_is_named_through_the_shared_params():
    net = TwoLayerNet(4, 5, 3, weight_init_std=1.0, seed=10, bugs={"Affine2": "sgd_inside"})
    x, t = _data(4, 3, 6, 10)
    r = check_layer(net, (x, t))
    assert not r.ok
    step = [p for p in r.problems if p.startswith("layer.gradient changed the parameter W2")]
    assert step and "layer.params['W2']" in step[0] and "layer.layers['Affine2'].W" in step[0]
    np.testing.assert_array_equal(net.params["W2"], TwoLayerNet(4, 5, 3, 1.0, 10).params["W2"])
