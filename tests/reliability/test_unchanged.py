"""Nothing the user owns changes: inputs, cotangent and layer parameters, bit for bit.

Every entry point (check_vjp, assert_vjp, numeric_vjp, torch_vjp, jax_vjp,
check_layer) is run with a well-behaved ``fn``/``vjp`` and with ones that
write into what they receive (``x += 1``, ``x[...] = 0``, ``g *= 2``, an
optimizer step inside ``backward``). Whatever the outcome (a report, a
reported problem, an error), the caller's arrays are identical afterwards:
same bytes, dtype, strides and writeable flag.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oracles import assert_vjp, check_vjp, jax_vjp, numeric_vjp, torch_vjp
from oracles.errors import GradientMismatch, InconclusiveCheck, OraclesError
from oracles.layer import check_layer
from reference.layers import Affine


def _snapshot(a):
    return (a.tobytes(), a.dtype, a.shape, a.strides, a.flags.writeable)


def _fn(mutation):
    """``x * y + y`` (operators only: NumPy, torch and jax), writing into ``x`` first if asked."""

    def fn(x, y):
        if mutation == "x += 1":
            x += 1.0
        elif mutation == "x[...] = 0":
            x[...] = 0.0
        return x * y + y

    return fn


def _vjp(mutation):
    def vjp(g, x, y):
        gx, gy = g * y, g * x + g
        if mutation == "g *= 2":
            g *= 2.0
        elif mutation == "x += 1":
            x += 1.0
        elif mutation == "g[...] = 0":
            g[...] = 0.0
        return gx, gy

    return vjp


def _run(entry, fn, vjp, inputs, cot):
    if entry == "check_vjp":
        return check_vjp(fn, vjp, inputs, direction=cot)
    if entry == "assert_vjp":
        return assert_vjp(fn, vjp, inputs, direction=cot)
    run = {"numeric_vjp": numeric_vjp, "torch_vjp": torch_vjp, "jax_vjp": jax_vjp}[entry]
    return run(fn, inputs, cot)


ENTRY_POINTS = [
    "check_vjp",
    "assert_vjp",
    "numeric_vjp",
    pytest.param("torch_vjp", marks=pytest.mark.torch),
    pytest.param("jax_vjp", marks=pytest.mark.jax),
]
FN_MUTATIONS = ["none", "x += 1", "x[...] = 0"]
VJP_MUTATIONS = ["none", "g *= 2", "x += 1", "g[...] = 0"]


@st.composite
def _arrays(draw, shape):
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int32]))
    elements = st.integers(-5, 5) if dtype == np.int32 else st.floats(-5, 5, width=16)
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["plain", "fortran", "reversed", "read-only"]))
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "reversed":
        a = np.ascontiguousarray(a[::-1])[::-1]
    elif layout == "read-only":
        a.flags.writeable = False
    return a


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("fn_mutation", FN_MUTATIONS)
@pytest.mark.parametrize("vjp_mutation", VJP_MUTATIONS)
@settings(max_examples=5)
@given(data=st.data())
def test_inputs_and_cotangent_are_bitwise_unchanged(entry, fn_mutation, vjp_mutation, data):
    if entry not in ("check_vjp", "assert_vjp") and vjp_mutation != "none":
        return  # the oracles alone never call a vjp; one run per fn mutation is enough
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=3), label="shape")
    x = data.draw(_arrays(shape), label="x")
    y = data.draw(_arrays(shape), label="y")
    cot = data.draw(_arrays(shape), label="cotangent")
    before = [_snapshot(a) for a in (x, y, cot)]
    clean = fn_mutation == "none" and vjp_mutation == "none"
    # A framework may refuse the in-place write; the arrays must be unchanged either way. A
    # clean run may only be inconclusive (an all-zero cotangent): assert_vjp then says so.
    outcome = contextlib.suppress(InconclusiveCheck) if clean else contextlib.suppress(
        OraclesError, GradientMismatch, InconclusiveCheck, RuntimeError, TypeError
    )  # an all-zero cotangent makes even a mutated run inconclusive: assert_vjp raises that
    with outcome:
        result = _run(entry, _fn(fn_mutation), _vjp(vjp_mutation), (x, y), cot)
        visible = {  # did the write change a value? (g *= 2 leaves zeros as they are)
            "x += 1": True, "x[...] = 0": np.any(x != 0), "g *= 2": np.any(cot != 0),
            "g[...] = 0": np.any(cot != 0), "none": False,
        }  # fmt: skip
        if entry == "check_vjp" and (visible[fn_mutation] or visible[vjp_mutation]):
            # The write is reported as a problem of the user's code, and fails the check.
            assert not result.ok
            assert "in place" in " ".join(result.problems)
        if clean and entry == "check_vjp":
            # Right derivatives never fail (an all-zero cotangent is inconclusive, not failed).
            assert result.status != "failed", str(result)
    assert [_snapshot(a) for a in (x, y, cot)] == before


def test_the_returned_gradients_do_not_alias_the_callers_arrays():
    x, y, cot = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([1.0, 1.0])

    def identity_vjp(g, x, y):
        return g, g  # returns the cotangent itself

    report = check_vjp(lambda x, y: x + y, identity_vjp, (x, y), direction=cot)
    assert report.ok
    (gx, gy) = numeric_vjp(lambda x, y: x + y, (x, y), cot)
    gx[...] = 99.0
    assert cot.tolist() == [1.0, 1.0] and x.tolist() == [1.0, 2.0]


# --- layers ----------------------------------------------------------------------------------


class _Scaling(Affine):
    """Affine whose backward scales ``dout`` in place."""

    def backward(self, dout):
        dx = super().backward(dout)
        dout *= 2.0
        return dx


class _StepInBackward(Affine):
    """Affine whose backward takes an optimizer step (a bookkeeping mistake)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.W -= 0.1 * self.dW
        self.b -= 0.1 * self.db
        return dx


class _WritesInput(Affine):
    def forward(self, x):
        out = super().forward(x)
        x *= 0.5
        return out


@pytest.mark.parametrize("layer_cls", [Affine, _Scaling, _StepInBackward, _WritesInput])
@settings(max_examples=5)
@given(data=st.data())
def test_layer_parameters_inputs_and_cotangent_are_bitwise_unchanged(layer_cls, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    W, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    layer = layer_cls(W, b)
    x, cot = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    if data.draw(st.booleans(), label="read-only x"):
        x.flags.writeable = False
    owned = {"W": layer.W, "b": layer.b, "x": x, "cotangent": cot}
    before = {k: _snapshot(v) for k, v in owned.items()}
    state = dict(vars(layer))
    with contextlib.suppress(OraclesError):
        report = check_layer(layer, (x,), direction=cot)
        assert report.ok == (layer_cls is Affine), str(report)
    assert {k: _snapshot(v) for k, v in owned.items()} == before
    assert layer.W is state["W"] and layer.b is state["b"]
    assert vars(layer).keys() == state.keys()


@pytest.mark.jax
def test_the_first_jax_import_through_a_check_leaves_numpys_random_state_alone():
    """jax 0.10 draws from NumPy's global generator on its first import: the oracle undoes it."""
    import subprocess
    import sys

    code = (
        "import numpy as np, sys\n"
        "from oracles import check_vjp\n"
        "assert 'jax' not in sys.modules\n"
        "before = np.random.get_state()\n"
        "r = check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.ones(3),), against='jax',\n"
        "              jax_fn=lambda x: __import__('jax').numpy.sin(x))\n"
        "assert r.ok and 'jax' in sys.modules\n"
        "after = np.random.get_state()\n"
        "assert before[0] == after[0] and (before[1] == after[1]).all(), 'np.random moved'\n"
        "assert before[2:] == after[2:], 'np.random moved'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
