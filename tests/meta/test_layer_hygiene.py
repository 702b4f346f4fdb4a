"""check_layer's hygiene findings: what a layer does besides computing the right numbers.

Each mistake here gives the right gradient on a fresh layer, so only the
hygiene checks can see it; each must fail the check as a problem that names
the attribute, and correct layers with unusual state must pass. Randomness
is re-seeded (and the caller's random state restored bitwise), loss layers
are called the way their authors call them, and the user's layer is never
changed.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from oracles import InvalidArgument, NonDeterministicFunction, check_layer


def _data(seed, n=4, d_in=3, d_out=5):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, d_in)),
        rng.standard_normal((d_in, d_out)),
        rng.standard_normal(d_out),
    )


class Affine:
    """A correct affine layer; ``mistake`` plants one hygiene slip in backward."""

    def __init__(self, W, b, mistake=None):
        self.W, self.b = W, b
        self.params = {"W": self.W, "b": self.b}  # the same arrays, as many layers keep both
        self.mistake = mistake
        self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        dx = dout @ self.W.T
        self.dW, self.db = self.x.T @ dout, dout.sum(axis=0)
        m = self.mistake
        if m == "dout *= 1":
            dout *= 1.5
        elif m == "dout via alias":
            g = dout
            g[0] = 0.0
        elif m == "dout via out=":
            np.multiply(dout, 0.5, out=dout)
        elif m == "free the cache":
            self.x[...] = 0.0  # self.x is the caller's x
        elif m == "W -= step":
            self.W -= 0.1 * self.dW
        elif m == "W = W - step":
            self.W = self.W - 0.1 * self.dW
        elif m == "params['W'] -= step":
            self.params["W"] -= 0.1 * self.dW
        elif m == "params['b'] = new":
            self.params["b"] = self.params["b"] - 0.1 * self.db
        return dx


HYGIENE = [  # mistake, the start of the problem, what else it must name
    ("dout *= 1", "layer.backward modified its argument dout in place", "dout"),
    ("dout via alias", "layer.backward modified its argument dout in place", "dout"),
    ("dout via out=", "layer.backward modified its argument dout in place", "dout"),
    ("free the cache", "layer.backward modified its argument x in place", "x"),
    ("W -= step", "layer.backward changed the parameter W in place", "layer.params['W']"),
    ("W = W - step", "layer.backward changed the parameter W: it assigned", "layer.W"),
    ("params['W'] -= step", "layer.backward changed the parameter W in place", "layer.W"),
    ("params['b'] = new", "layer.backward changed the parameter b: it assigned", "params['b']"),
]


@pytest.mark.parametrize("mistake, start, named", HYGIENE)
@pytest.mark.parametrize("seed", [0, 1])
def test_writes_into_dout_inputs_and_parameters_are_problems(mistake, start, named, seed):
    x, W, b = _data(seed)
    layer = Affine(W, b, mistake)
    before = pickle.dumps(layer)
    r = check_layer(layer, (x,))
    assert not r.ok
    hits = [p for p in r.problems if p.startswith(start)]
    assert hits and named in hits[0], r.problems
    assert pickle.dumps(layer) == before  # the user's layer, and its arrays, untouched


def test_a_correct_layer_with_aliased_parameters_passes():
    x, W, b = _data(2)
    r = check_layer(Affine(W, b), (x,))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs] == ["x", "W", "b"]  # params['W'] is W: one parameter


class WritesTargets:
    """A loss layer that zeroes its targets in backward (through its cache)."""

    def forward(self, pred, target):
        self.pred, self.target = pred, target
        return 0.5 * np.sum((pred - target) ** 2)

    def backward(self, dout=1):
        g = self.pred - self.target
        self.target[...] = 0.0
        return g


def test_a_write_into_an_input_held_fixed_is_named():
    rng = np.random.default_rng(3)
    r = check_layer(WritesTargets(), (rng.standard_normal(4), rng.standard_normal(4)))
    assert not r.ok and r.failed_inputs == []
    assert any(p.startswith("layer.backward modified its argument target") for p in r.problems)


class Accumulating:
    """Adds to stored gradients; ``reset`` names the method that clears them, if any."""

    def __init__(self, W, b, reset=None, stale=False):
        self.W, self.b = W, b
        self.dW, self.db = np.zeros_like(W), np.zeros_like(b)
        if stale:  # a layer that has been trained: its gradients are not zero
            self.dW += 1.0
            self.db -= 2.0
        self._reset = reset

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW += self.x.T @ dout
        self.db += dout.sum(axis=0)
        return dout @ self.W.T

    def __getattr__(self, name):
        if name != "_reset" and name == self.__dict__.get("_reset"):
            return self._zero
        raise AttributeError(name)

    def _zero(self):
        self.dW, self.db = np.zeros_like(self.W), np.zeros_like(self.b)


@pytest.mark.parametrize("stale", [False, True])
def test_accumulating_without_a_reset_is_a_problem_even_though_the_first_call_is_right(stale):
    x, W, b = _data(4)
    r = check_layer(Accumulating(W, b, stale=stale), (x,))
    assert not r.ok
    assert any("accumulates into the gradient of W" in p for p in r.problems)
    assert any("accumulates into the gradient of b" in p for p in r.problems)
    assert r.failed_inputs == (["W", "b"] if stale else [])


@pytest.mark.parametrize("reset", ["zero_grad", "flush_gradients"])
@pytest.mark.parametrize("stale", [False, True])
def test_accumulating_by_design_with_a_reset_is_reset_and_noted(reset, stale):
    x, W, b = _data(5)
    layer = Accumulating(W, b, reset=reset, stale=stale)
    before = pickle.dumps(layer)
    r = check_layer(layer, (x,))
    assert r.ok, str(r)
    assert any(f"layer.{reset}() was called before every evaluation" in n for n in r.notes)
    assert r.context["reset"] == f"layer.{reset}() before every evaluation"
    assert pickle.dumps(layer) == before  # the stale gradients are the user's: left alone


class ChangesItsCache:
    """Scales its cached input in backward: a second backward gives another answer."""

    def __init__(self, W):
        self.W = W

    def forward(self, x):
        self._x = np.array(x)
        return self._x @ self.W

    def backward(self, dout):
        self.dW = self._x.T @ dout
        dx = dout @ self.W.T
        self._x *= 0.5  # "free" memory by scaling it down
        return dx


def test_backward_changing_the_state_it_reads_is_a_problem():
    x, W, _ = _data(6)
    r = check_layer(ChangesItsCache(W), (x,))
    assert not r.ok
    assert any("a second layer.backward after one forward returned another gradient of W" in p
               for p in r.problems)  # fmt: skip
    assert not any("accumulates" in p for p in r.problems)


class GrowsHistory(Affine):
    def __init__(self, W, b):
        super().__init__(W, b)
        self.history = []
        self.seen = {}

    def backward(self, dout):
        self.history.append(dout.copy())
        self.seen[len(self.seen)] = 1
        return super().backward(dout)


def test_backward_growing_the_state_is_a_problem_naming_the_attribute():
    x, W, b = _data(7)
    r = check_layer(GrowsHistory(W, b), (x,))
    assert not r.ok and r.failed_inputs == []
    assert any("grows layer.history (1 -> 2 entries" in p for p in r.problems), r.problems
    assert any("grows layer.seen (1 -> 2 entries" in p for p in r.problems)


class CachesOnce:
    """Keeps the first input it ever saw."""

    def __init__(self):
        self.x = None

    def forward(self, x):
        if self.x is None:
            self.x = x
        return np.tanh(self.x)

    def backward(self, dout):
        return dout * (1 - np.tanh(self.x) ** 2)


class MemoizedOutput:
    """Computes its output once and returns it on every later call."""

    def __init__(self, W):
        self.W = W
        self.out = None

    def forward(self, x):
        self.x = x
        if self.out is None:
            self.out = x @ self.W
        return self.out

    def backward(self, dout):
        self.dW = self.x.T @ dout
        return dout @ self.W.T


class StatefulRNN:
    """Carries its hidden state from one forward to the next, by design."""

    def __init__(self, Wx, Wh, with_reset=True):
        self.Wx, self.Wh = Wx, Wh
        self.h = None
        if not with_reset:
            self.reset_state = None

    def reset_state(self):
        self.h = None

    def forward(self, x):
        h0 = np.zeros((x.shape[0], self.Wh.shape[0])) if self.h is None else self.h
        self.cache = (x, h0)
        self.h = np.tanh(x @ self.Wx + h0 @ self.Wh)
        return self.h

    def backward(self, dh):
        x, h0 = self.cache
        da = dh * (1 - self.h**2)
        self.dWx, self.dWh = x.T @ da, h0.T @ da
        return da @ self.Wx.T


def test_forward_keeping_state_from_an_earlier_call_is_a_problem():
    x, W, _ = _data(8)
    for layer in (CachesOnce(), MemoizedOutput(W)):
        r = check_layer(layer, (x,))
        assert not r.ok and r.failed_inputs == [], type(layer).__name__
        assert any(
            p.startswith("layer.forward keeps state from an earlier call") for p in r.problems
        )


def test_a_stateful_layer_with_reset_state_is_noted_and_without_it_reported():
    rng = np.random.default_rng(9)
    x, Wx, Wh = (
        rng.standard_normal((3, 4)),
        rng.standard_normal((4, 2)),
        rng.standard_normal((2, 2)),
    )
    r = check_layer(StatefulRNN(Wx, Wh), (x,))
    assert r.ok, str(r)
    assert any("stateful by design" in n and "reset_state()" in n for n in r.notes)
    r = check_layer(StatefulRNN(Wx, Wh, with_reset=False), (x,))
    assert any(p.startswith("layer.forward keeps state from an earlier call") for p in r.problems)


class ExtraState:
    """Correct, with state people add: x preset in __init__, dx and dout stored in backward."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = np.zeros((4, W.shape[0]))
        self.out = None
        self.dW = self.db = None

    def forward(self, x):
        self.x = x
        self.out = x @ self.W + self.b
        return self.out

    def backward(self, dout):
        self.dout = dout
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        self.dx = dout @ self.W.T
        return self.dx


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extra_state_on_a_correct_layer_is_neither_an_error_nor_a_parameter(seed):
    x, W, b = _data(seed)
    r = check_layer(ExtraState(W, b), (x,))
    assert r.ok, str(r)
    assert [i.name for i in r.inputs] == ["x", "W", "b"]


# --------------------------------------------------------------------------- randomness


class Dropout:
    """As published: the mask drawn from NumPy's global generator in forward."""

    def __init__(self, dropout_ratio=0.5, use_mask=True):
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.use_mask = use_mask

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = np.random.rand(*x.shape) > self.dropout_ratio  # noqa: NPY002
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask if self.use_mask else dout


class GeneratorDropout:
    """The mask drawn from the layer's own Generator (or RandomState)."""

    def __init__(self, rng, use_mask=True):
        self.rng = rng
        self.use_mask = use_mask

    def forward(self, x):
        self.mask = self.rng.random(x.shape) > 0.3
        return x * self.mask / 0.7

    def backward(self, dout):
        return dout * self.mask / 0.7 if self.use_mask else dout / 0.7


class FreshGeneratorDropout:
    def forward(self, x):
        self.mask = np.random.default_rng().random(x.shape) > 0.5
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


def _global_state():
    return np.random.get_state()  # noqa: NPY002


def _same_state(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("shape", [(4, 5), (1, 9), (2, 2, 3)])
def test_dropout_as_published_checks_out_and_the_callers_rng_is_untouched(shape):
    np.random.seed(1234)  # noqa: NPY002 - a caller's state, to be found unchanged
    np.random.rand(3)  # noqa: NPY002 - mid-stream, not just after seeding
    state = _global_state()
    x = np.random.default_rng(sum(shape)).standard_normal(shape)
    r = check_layer(Dropout(), (x,))
    assert r.ok, str(r)
    assert any("re-seeded" in n and "restored" in n for n in r.notes)
    assert _same_state(state, _global_state())
    r = check_layer(Dropout(use_mask=False), (x,))
    assert r.failed_inputs == ["x"]
    assert _same_state(state, _global_state())


@pytest.mark.parametrize("make", [np.random.default_rng, np.random.RandomState])
def test_dropout_with_its_own_generator(make):
    x = np.random.default_rng(10).standard_normal((4, 5))
    layer = GeneratorDropout(make(7))
    rng_before = pickle.dumps(layer.rng)
    r = check_layer(layer, (x,))
    assert r.ok, str(r)
    assert pickle.dumps(layer.rng) == rng_before
    assert check_layer(GeneratorDropout(make(7), use_mask=False), (x,)).failed_inputs == ["x"]


def test_randomness_that_cannot_be_reseeded_is_an_error_that_speaks_of_layers():
    state = _global_state()
    with pytest.raises(NonDeterministicFunction) as e:
        check_layer(FreshGeneratorDropout(), (np.ones((4, 5)),))
    text = str(e.value)
    assert "layer.forward is not deterministic" in text and "__init__" in text
    assert "inside fn" not in text
    assert _same_state(state, _global_state())


def test_the_callers_rng_is_restored_when_the_check_raises():
    class Raises(Dropout):
        def backward(self, dout):
            raise RuntimeError("boom")

    state = _global_state()
    with pytest.raises(Exception, match="boom"):
        check_layer(Raises(), (np.ones((3, 3)),))
    assert _same_state(state, _global_state())


# --------------------------------------------------------------------------- loss layers


class MeanSquaredLoss:
    """``backward(dout=1)``; ``honours`` says whether it multiplies by dout."""

    def __init__(self, honours=False):
        self.honours = honours

    def forward(self, y, t):
        self.diff = y - t
        return 0.5 * np.mean(self.diff**2)

    def backward(self, dout=1):
        g = self.diff / self.diff.size
        return g * dout if self.honours else g


class NoArgLoss(MeanSquaredLoss):
    def backward(self):
        return self.diff / self.diff.size


@pytest.mark.parametrize("layer", [MeanSquaredLoss(), MeanSquaredLoss(True), NoArgLoss()])
def test_loss_layers_are_called_as_their_authors_call_them(layer):
    rng = np.random.default_rng(11)
    y, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    r = check_layer(layer, (y, t))
    assert r.ok, str(r)
    call = "backward()" if isinstance(layer, NoArgLoss) else "backward() (its default dout=1)"
    assert any("is a loss layer" in n and call in n for n in r.notes), r.notes
    assert r.context["direction"] == f"1.0 (loss layer: {call})"


def test_a_given_direction_is_passed_to_a_defaulted_backward():
    rng = np.random.default_rng(12)
    y, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    assert check_layer(MeanSquaredLoss(True), (y, t), direction=2.5).ok
    assert check_layer(MeanSquaredLoss(False), (y, t), direction=2.5).failed_inputs == ["y"]


# --------------------------------------------------------------------------- options


def test_mode_and_names_follow_the_convention_of_the_other_checks():
    x, W, b = _data(13)
    r = check_layer(Affine(W, b), (x,), mode="fast", names=["inp"])
    assert r.ok and [i.name for i in r.inputs] == ["inp", "W", "b"]
    assert "bisection" in r.context["oracles"]  # the fast mode: projections, then bisection
    r = check_layer(Affine(W, b), (x,), mode="exhaustive")
    assert r.ok and "bisection" not in r.context["oracles"]
    with pytest.raises(InvalidArgument, match="names must give one name per input"):
        check_layer(Affine(W, b), (x,), names=["a", "b"])
    with pytest.raises(InvalidArgument):
        check_layer(Affine(W, b), (x,), mode="sideways")
