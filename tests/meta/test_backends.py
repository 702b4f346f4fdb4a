"""The torch and jax VJP adapters: closed-form gradients, copies, dtype, x64 scope, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from oracles import jax_vjp, torch_vjp
from oracles.backends.rounding import ROUNDING_FACTOR, TINY, error_estimate
from oracles.errors import (
    BackendUnavailable,
    InvalidArgument,
    InvalidArgumentType,
    OraclesError,
    UserFunctionError,
)

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch, id="torch"),
    pytest.param("jax", marks=pytest.mark.jax, id="jax"),
]


def _namespace(backend):
    """The array namespace whose functions the test's ``fn`` uses: torch or jax.numpy."""
    if backend == "torch":
        import torch

        return torch
    import jax.numpy as jnp

    return jnp


def _vjp(backend):
    return torch_vjp if backend == "torch" else jax_vjp


def _assert_close(actual, expected, k=4.0):
    """``|a - b| <= k eps (|b| + max|b|)`` elementwise: agreement to rounding."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float64
    (bound,) = error_estimate([expected], factor=k)
    np.testing.assert_array_less(np.abs(actual - expected), bound + 1e-300)


_RNG = np.random.default_rng(20240611)
_X = _RNG.normal(size=(3, 4))
_Y = _RNG.normal(size=(3, 4))
_G = _RNG.normal(size=(3, 4))

# name, fn(m) -> function of the inputs using namespace m, inputs, cotangent, closed-form VJP
CLOSED_FORM = [
    (
        "polynomial",
        lambda m: lambda x: x**3 - 2.0 * x**2 + 0.5 * x - 7.0,
        (_X,),
        _G,
        lambda g, x: (g * (3.0 * x**2 - 4.0 * x + 0.5),),
    ),
    ("exp", lambda m: lambda x: m.exp(x), (_X,), _G, lambda g, x: (g * np.exp(x),)),
    ("sin", lambda m: lambda x: m.sin(x), (_X,), _G, lambda g, x: (g * np.cos(x),)),
    ("product", lambda m: lambda x, y: x * y, (_X, _Y), _G, lambda g, x, y: (g * y, g * x)),
    (
        "broadcast product",
        lambda m: lambda x, y: x * y,
        (_X[:, :1], _Y[:1, :]),
        _G,
        lambda g, x, y: ((g * y).sum(axis=1, keepdims=True), (g * x).sum(axis=0, keepdims=True)),
    ),
    (
        "scalar loss of two inputs",
        lambda m: lambda x, y: m.sum(m.sin(x) * y**2),
        (_X, _Y),
        np.array(-1.5),
        lambda g, x, y: (g * np.cos(x) * y**2, g * 2.0 * np.sin(x) * y),
    ),
    (
        "ignores its second input",
        lambda m: lambda x, y: x**2,
        (_X, _Y),
        _G,
        lambda g, x, y: (2.0 * g * x, np.zeros_like(y)),
    ),
    (
        "ignores every input",
        lambda m: lambda x: m.zeros_like(x) + 3.0,
        (_X,),
        _G,
        lambda g, x: (np.zeros_like(x),),
    ),
    (
        "0-d input",
        lambda m: lambda s, x: s * m.exp(x),
        (np.array(0.7), _X),
        _G,
        lambda g, s, x: (np.sum(g * np.exp(x)), 0.7 * g * np.exp(x)),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("make_fn", "inputs", "cotangent", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CLOSED_FORM],
)
def test_closed_form_gradients(backend, make_fn, inputs, cotangent, expected):
    grads = _vjp(backend)(make_fn(_namespace(backend)), inputs, cotangent)
    assert isinstance(grads, tuple) and len(grads) == len(inputs)
    for got, want in zip(grads, expected(cotangent, *inputs), strict=True):
        _assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jitted_jax_function_and_lists_of_inputs(backend):
    m = _namespace(backend)
    fn = lambda x, y: m.tanh(x) * y  # noqa: E731
    if backend == "jax":
        import jax

        fn = jax.jit(fn)
    dx, dy = _vjp(backend)(fn, [_X.tolist(), _Y], _G)
    _assert_close(dx, _G * _Y * (1.0 - np.tanh(_X) ** 2))
    _assert_close(dy, _G * np.tanh(_X))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
def test_inputs_of_other_dtypes_are_differentiated_in_float64(backend, dtype):
    x = np.array([0.1, 3.0, -2.7, 5.0]).astype(dtype)
    # d/dx (x^2 / 3) = 2x/3; 2/3 is not representable, so a float32 evaluation
    # would be off by ~1e-8 relative, float64 by ~1e-16.
    (dx,) = _vjp(backend)(lambda x: x * x / 3.0, (x,), np.ones(4, dtype=np.float32))
    assert dx.dtype == np.float64
    _assert_close(dx, 2.0 * x.astype(np.float64) / 3.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_precision_is_float64_not_float32(backend):
    x = np.array([1.0 + 1e-10])  # 1 in float32
    (dx,) = _vjp(backend)(lambda x: x**2, (x,), np.array([1.0]))
    assert abs(dx[0] - 2.0 * x[0]) <= 4e-16 * 2.0


def _tricky_inputs():
    """Read-only, non-contiguous, transposed and 0-d arrays, and their pristine copies."""
    base = np.arange(24.0).reshape(4, 6) / 7.0
    readonly = base[::2, 1::2].copy()
    readonly.flags.writeable = False
    strided = base[1::2, ::2]  # a view: its base must stay untouched too
    transposed = np.asfortranarray(np.linspace(-1, 1, 6).reshape(2, 3)).T
    zero_d = np.array(0.25)
    return (readonly, strided, transposed, zero_d), base


@pytest.mark.parametrize("backend", BACKENDS)
def test_caller_arrays_are_never_modified_or_aliased(backend):
    inputs, base = _tricky_inputs()
    cotangent = np.ones((2, 3))[:, ::-1]  # a negative-stride view
    cotangent.flags.writeable = False
    snapshots = [x.tobytes() for x in inputs] + [base.tobytes(), cotangent.tobytes()]

    m = _namespace(backend)

    def fn(a, b, c, s):
        if backend == "torch":
            # A hostile function: writes into the leaf tensors it was given.
            # Those must be private copies, not the caller's memory.
            with m.no_grad():
                b.detach().mul_(0.0)
        return a * b + m.tanh(c.T) * s

    grads = _vjp(backend)(fn, inputs, cotangent)
    for g in grads:
        g[...] = np.nan  # writing into the results must not reach the inputs
    after = [x.tobytes() for x in inputs] + [base.tobytes(), cotangent.tobytes()]
    assert after == snapshots
    assert not inputs[0].flags.writeable and not cotangent.flags.writeable


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_gradient_does_not_alias_cotangent(backend):
    g = np.array([1.0, 2.0, 3.0])
    (dx,) = _vjp(backend)(lambda x: x, (np.zeros(3),), g)
    assert not np.shares_memory(dx, g)
    dx[0] = 99.0
    assert g.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.jax
@pytest.mark.parametrize("initial", [False, True])
def test_jax_x64_is_scoped_to_the_call(initial):
    import jax
    import jax.numpy as jnp

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", initial)
    try:
        (dx,) = jax_vjp(lambda x: jnp.sin(x), (np.array([0.5]),), np.array([1.0]))
        assert dx.dtype == np.float64
        assert jax.config.jax_enable_x64 is initial
        assert jnp.asarray(1.0).dtype == (jnp.float64 if initial else jnp.float32)

        def boom(x):
            raise RuntimeError("user function failed")

        with pytest.raises(RuntimeError, match="user function failed"):
            jax_vjp(boom, (np.array([0.5]),), np.array([1.0]))
        assert jax.config.jax_enable_x64 is initial
    finally:
        jax.config.update("jax_enable_x64", previous)


class _FakeConfig:
    """Stands in for ``jax.config`` in a JAX without scoped x64 context managers."""

    def __init__(self):
        self.jax_enable_x64 = False
        self.updates = []

    def update(self, name, value):
        assert name == "jax_enable_x64"
        self.updates.append(value)
        self.jax_enable_x64 = value


@pytest.mark.jax
def test_x64_fallback_restores_the_global_flag_even_on_error(monkeypatch):
    import types

    import jax.experimental

    from oracles.backends.jax import x64_enabled

    monkeypatch.delattr(jax.experimental, "enable_x64", raising=False)
    fake = types.SimpleNamespace(config=_FakeConfig())  # no jax.enable_x64 either
    with x64_enabled(fake):
        assert fake.config.jax_enable_x64 is True
    assert fake.config.jax_enable_x64 is False
    with pytest.raises(KeyError), x64_enabled(fake):
        raise KeyError("inside")
    assert fake.config.jax_enable_x64 is False
    assert fake.config.updates == [True, False, True, False]


@pytest.mark.parametrize(
    ("module", "extra"), [("torch", "backprop-oracles[torch]"), ("jax", "backprop-oracles[jax]")]
)
def test_missing_backend_names_the_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # "import torch" now raises ImportError
    adapter = torch_vjp if module == "torch" else jax_vjp
    with pytest.raises(BackendUnavailable) as info:
        adapter(lambda x: x, (np.ones(2),), np.ones(2))
    assert f'pip install "{extra}"' in str(info.value)
    assert isinstance(info.value, ImportError) and isinstance(info.value, OraclesError)


def test_modules_import_without_torch_or_jax():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['jax'] = None\n"
        "import numpy as np, oracles, oracles.backends.torch, oracles.backends.jax\n"
        "import oracles.verify.native, oracles.verify.native_torch, oracles.verify.native_jax\n"
        "from oracles.errors import BackendUnavailable\n"
        "for f in (oracles.torch_vjp, oracles.jax_vjp):\n"
        "    try:\n"
        "        f(abs, (np.ones(1),), np.ones(1))\n"
        "    except BackendUnavailable as e:\n"
        "        print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "backprop-oracles[torch]"' in done.stdout
    assert 'pip install "backprop-oracles[jax]"' in done.stdout


# One table for argument validation: (case id, fn(m), inputs, cotangent, error, message fragment)
BAD_ARGUMENTS = [
    ("fn not callable", lambda m: 3.0, (np.ones(2),), np.ones(2), InvalidArgumentType, "_fn"),
    ("inputs a dict", lambda m: lambda x: x, {"x": np.ones(2)}, np.ones(2),
     InvalidArgumentType, "inputs"),
    ("inputs empty", lambda m: lambda: m.ones(2), (), np.ones(2), InvalidArgument, "inputs"),
    ("input of strings", lambda m: lambda x: x, (np.array(["a"]),), np.ones(1),
     InvalidArgumentType, "inputs[0]"),
    ("input with nan", lambda m: lambda x: x, (np.array([np.nan]),), np.ones(1),
     InvalidArgument, "inputs[0]"),
    ("cotangent wrong shape", lambda m: lambda x: x, (np.ones(3),), np.ones(2),
     InvalidArgument, "cotangent"),
    ("cotangent missing axis", lambda m: lambda x: m.sum(x), (np.ones(3),), np.ones(1),
     InvalidArgument, "cotangent"),
    ("returns numpy", lambda m: lambda x: np.ones(2), (np.ones(2),), np.ones(2),
     (UserFunctionError, TypeError), ""),
    ("returns integers", lambda m: lambda x: m.ones(2, dtype=m.int32), (np.ones(2),), np.ones(2),
     UserFunctionError, "floating"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("make_fn", "inputs", "cotangent", "error", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_clear_errors(backend, make_fn, inputs, cotangent, error, fragment):
    with pytest.raises(error) as info:
        _vjp(backend)(make_fn(_namespace(backend)), inputs, cotangent)
    assert fragment in str(info.value)


def test_error_estimate():
    g = np.array([[1.0, -4.0], [0.0, 2.0]])
    eps = np.finfo(np.float64).eps
    (bound,) = error_estimate([g])
    np.testing.assert_allclose(bound, ROUNDING_FACTOR * eps * (np.abs(g) + 4.0) + TINY)
    (with_ct,) = error_estimate([g], cotangent=np.array([3.0, -8.0]), factor=2.0)
    np.testing.assert_allclose(with_ct, 2.0 * eps * (np.abs(g) + 4.0 + 8.0) + TINY)
    (zero,) = error_estimate([np.zeros(3)], factor=2.0)
    assert zero.tolist() == [TINY] * 3
    (empty,) = error_estimate([np.zeros((0, 2))])
    assert empty.shape == (0, 2)
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(InvalidArgument, match="factor"):
            error_estimate([g], factor=bad)
    with pytest.raises(InvalidArgument, match="cotangent"):
        error_estimate([g], cotangent=np.array([np.nan]))
