"""What every entry point accepts as inputs, and the clear error for everything else.

Entry points: check_vjp, assert_vjp, numeric_vjp, torch_vjp, jax_vjp. Real
arrays of any float or integer dtype, Python numbers, lists, 0-d and empty
arrays, strided and read-only views work (check_vjp's docstring says so);
everything else raises one of :mod:`oracles.errors`' types, naming the
argument and the rule. One table holds the argument validation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oracles import assert_vjp, check_vjp, jax_vjp, numeric_vjp, torch_vjp
from oracles.errors import InvalidArgument, InvalidArgumentType, OraclesError

ENTRY_POINTS = [
    "check_vjp",
    "assert_vjp",
    "numeric_vjp",
    pytest.param("torch_vjp", marks=pytest.mark.torch),
    pytest.param("jax_vjp", marks=pytest.mark.jax),
]


def _square(x):
    # Only operators: the same function runs on NumPy arrays, torch tensors and jax arrays.
    return x * x


def _square_vjp(g, x):
    return 2.0 * g * x


def _call(entry, inputs, cotangent, *, fn=_square, vjp=_square_vjp, **options):
    """Run one entry point; return the gradients (a tuple of arrays)."""
    if entry in ("check_vjp", "assert_vjp"):
        run = check_vjp if entry == "check_vjp" else assert_vjp
        report = run(fn, vjp, inputs, direction=cotangent, **options)
        assert report.ok, str(report)
        return report
    assert not options
    run = {"numeric_vjp": numeric_vjp, "torch_vjp": torch_vjp, "jax_vjp": jax_vjp}[entry]
    return run(fn, inputs, cotangent)


# --- what works -----------------------------------------------------------------------------

_REAL_DTYPES = [
    np.float16, np.float32, np.float64,
    np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64,
]  # fmt: skip
_LAYOUTS = ["contiguous", "fortran", "reversed", "strided", "broadcast", "transposed"]


def _layout(base, layout):
    """A view of ``base``'s values (or of its first row, for ``broadcast``) in another layout."""
    if base.ndim == 0 or base.size == 0 or layout == "contiguous":
        return base
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "reversed":  # negative strides
        return np.ascontiguousarray(base[::-1])[::-1]
    if layout == "strided":
        return np.repeat(base, 2, axis=0)[::2]
    if layout == "broadcast":  # zero strides, read-only
        return np.broadcast_to(base[:1], base.shape)
    return np.ascontiguousarray(base.T).T


@st.composite
def real_inputs(draw):
    """A real array of any float or integer dtype, shape (0-d, empty), layout, writeability."""
    dtype = np.dtype(draw(st.sampled_from(_REAL_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    if dtype.kind == "f":
        elements = st.floats(-100, 100, width=dtype.itemsize * 8)
    else:
        lo = 0 if dtype.kind == "u" else -100
        elements = st.integers(lo, 100)
    x = _layout(draw(hnp.arrays(dtype, shape, elements=elements)), draw(st.sampled_from(_LAYOUTS)))
    if draw(st.booleans()) and x.flags.writeable:
        x.flags.writeable = False
    return x


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@settings(max_examples=15)
@given(x=real_inputs(), data=st.data())
@example(x=np.array(2.5, dtype=np.float16), data=None)
@example(x=np.zeros((0, 3), dtype=np.int32), data=None)
def test_real_arrays_of_any_dtype_shape_and_layout_work(entry, x, data):
    x64 = np.asarray(x, dtype=np.float64)
    cot = np.arange(1.0, x64.size + 1.0).reshape(x64.shape) if data is None else data.draw(
        hnp.arrays(np.float64, x64.shape, elements=st.floats(-2, 2)), label="cotangent"
    )
    before = (x.copy(), x.dtype, x.strides, x.flags.writeable)
    result = _call(entry, (x,), cot)
    if entry in ("check_vjp", "assert_vjp"):
        if x.dtype != np.float64:
            note = f"given as {x.dtype}; it was evaluated in float64"
            assert any(note in n for n in result.notes)
    else:
        (g,) = result
        assert g.dtype == np.float64 and g.shape == x.shape
        np.testing.assert_allclose(g, 2.0 * x64 * cot, rtol=1e-9, atol=1e-9)
    assert np.array_equal(x, before[0]) and (x.dtype, x.strides, x.flags.writeable) == before[1:]


PLAIN_PYTHON = [
    pytest.param(2.5, 4.0, id="float"),
    pytest.param(3, 1.5, id="int"),
    pytest.param([1.0, -2.0], [1.0, 0.5], id="list"),
    pytest.param([[1, 2], [3, 4]], np.ones((2, 2)), id="nested list of ints"),
    pytest.param(np.float32(1.5), 1.0, id="numpy scalar"),
    pytest.param(np.ones((2, 2), dtype=np.float32).view(np.matrix), np.ones((2, 2)), id="matrix"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("x", "cot"), PLAIN_PYTHON)
def test_python_numbers_lists_and_array_likes_work(entry, x, cot):
    result = _call(entry, (x,), cot)
    if entry not in ("check_vjp", "assert_vjp"):
        np.testing.assert_allclose(result[0], 2.0 * np.asarray(x, dtype=float) * cot, rtol=1e-9)


def test_a_bare_array_or_number_is_the_only_input():
    assert check_vjp(_square, _square_vjp, np.array([1.0, 2.0])).ok
    assert check_vjp(_square, _square_vjp, 1.5).ok
    (g,) = numeric_vjp(_square, np.array([1.0, 2.0]), np.ones(2))
    np.testing.assert_allclose(g, [2.0, 4.0], rtol=1e-10)


def test_the_docstring_says_what_is_accepted_and_what_raises():
    doc = " ".join(check_vjp.__doc__.split())
    accepted_kinds = ("integer dtype", "Python numbers", "nested lists", "0-d and empty")
    accepted_kinds += ("read-only",)
    for accepted in accepted_kinds:
        assert accepted in doc, accepted
    for rejected in ("boolean", "complex", "NaN or inf in an input", "negative seed"):
        assert rejected in doc, rejected


# --- one table for argument validation ------------------------------------------------------

_X = np.array([0.5, -1.5])
_COT = np.array([1.0, 2.0])
_ALL = ("check_vjp", "assert_vjp", "numeric_vjp", "torch_vjp", "jax_vjp")
_CHECKS = ("check_vjp", "assert_vjp")


def _torch_tensor_requiring_grad():
    import torch

    return torch.ones(2, dtype=torch.float64, requires_grad=True)


# (id, entry points, changes to the default call, error, fragments the message must contain)
BAD_ARGUMENTS = [
    # inputs: the container
    ("inputs None", _ALL, dict(inputs=None), InvalidArgumentType, ["inputs", "tuple of arrays"]),
    ("inputs a dict", _ALL, dict(inputs={"x": _X}), InvalidArgumentType, ["inputs", "tuple"]),
    ("inputs a set", _ALL, dict(inputs={1.0}), InvalidArgumentType, ["inputs", "tuple"]),
    ("inputs a string", _ALL, dict(inputs="ab"), InvalidArgumentType, ["inputs", "tuple"]),
    ("inputs empty", _ALL, dict(inputs=()), InvalidArgument, ["inputs is empty"]),
    ("more inputs than fn takes", _CHECKS, dict(inputs=[1.0, 2.0]), InvalidArgument,
     ["fn cannot take 2 positional", "one array per positional argument"]),
    ("vjp takes no cotangent", _CHECKS, dict(vjp=lambda x: x), InvalidArgument,
     ["vjp cannot take 2", "vjp(cotangent, *inputs)"]),
    # inputs: one element
    ("input None", _ALL, dict(inputs=(None,)), InvalidArgumentType, ["inputs[0] is None"]),
    ("input bool", _ALL, dict(inputs=(np.array([True, False]),)), InvalidArgumentType,
     ["inputs[0]", "bool", "no derivative"]),
    ("input Python bool", _ALL, dict(inputs=(True,)), InvalidArgumentType, ["inputs[0]", "bool"]),
    ("input complex", _ALL, dict(inputs=(_X + 1j,)), InvalidArgumentType,
     ["inputs[0]", "complex", "real and imaginary parts"]),
    ("input object dtype", _ALL, dict(inputs=(np.array([1.0, 2.0], dtype=object),)),
     InvalidArgumentType, ["inputs[0]", "dtype object", "real numeric"]),
    ("input Python ints too big", _ALL, dict(inputs=([2**70, 1],)), InvalidArgumentType,
     ["inputs[0]", "dtype object"]),
    ("input strings", _ALL, dict(inputs=(np.array(["1.0", "2"]),)), InvalidArgumentType,
     ["inputs[0]", "<U3", "real numeric"]),
    ("input datetime", _ALL, dict(inputs=(np.array(["2020-01-01"], dtype="datetime64[D]"),)),
     InvalidArgumentType, ["inputs[0]", "datetime64"]),
    ("input structured", _ALL, dict(inputs=(np.zeros(2, dtype=[("a", float)]),)),
     InvalidArgumentType, ["inputs[0]", "real numeric"]),
    ("input ragged list", _ALL, dict(inputs=([[1.0], [1.0, 2.0]],)), InvalidArgumentType,
     ["inputs[0] could not be converted", "inhomogeneous"]),
    ("input masked", _ALL, dict(inputs=(np.ma.array(_X, mask=[0, 1]),)), InvalidArgumentType,
     ["inputs[0] is a masked array", "mask would be ignored"]),
    ("input torch tensor requiring grad", _ALL,
     dict(inputs=lambda: (_torch_tensor_requiring_grad(),)), InvalidArgumentType,
     ["inputs[0] could not be converted", "detach"]),
    ("input NaN", _ALL, dict(inputs=(np.array([0.5, np.nan]),)), InvalidArgument,
     ["inputs[0] contains NaN or inf", "(1,)", "finite point"]),
    ("input inf", _ALL, dict(inputs=(np.array([np.inf, 0.5]),)), InvalidArgument,
     ["inputs[0] contains NaN or inf", "(0,)"]),
    ("input -inf, second input", _CHECKS,
     dict(fn=lambda x, y: x * y, vjp=lambda g, x, y: (g * y, g * x),
          inputs=(_X, np.array([1.0, -np.inf]))),
     InvalidArgument, ["inputs[1] contains NaN or inf"]),
    ("input float16 inf", _ALL, dict(inputs=(np.array([np.inf, 1], dtype=np.float16),)),
     InvalidArgument, ["inputs[0] contains NaN or inf"]),
    # cotangent
    ("cotangent longer", _ALL, dict(cotangent=np.ones(3)), InvalidArgument,
     ["{direction}", "shape", "(2,)", "(3,)"]),
    ("cotangent extra axis", _ALL, dict(cotangent=np.ones((2, 1))), InvalidArgument,
     ["{direction}", "(2, 1)"]),
    ("cotangent scalar for a vector output", _ALL, dict(cotangent=1.0), InvalidArgument,
     ["{direction}", "shape", "()"]),
    ("cotangent None", ("numeric_vjp", "torch_vjp", "jax_vjp"), dict(cotangent=None),
     InvalidArgumentType, ["{direction} is None"]),
    ("cotangent NaN", _ALL, dict(cotangent=np.array([1.0, np.nan])), InvalidArgument,
     ["{direction} contains NaN or inf"]),
    ("cotangent complex", _ALL, dict(cotangent=_COT + 0j), InvalidArgumentType,
     ["{direction}", "complex"]),
    ("cotangent bool", _ALL, dict(cotangent=np.array([True, False])), InvalidArgumentType,
     ["{direction}", "bool"]),
    ("cotangent string", _ALL, dict(cotangent="ab"), InvalidArgumentType, ["{direction}", "<U2"]),
    # the functions
    ("fn not callable", _ALL, dict(fn=3.0), InvalidArgumentType, ["fn must be callable", "float"]),
    ("vjp not callable", _CHECKS, dict(vjp=None), InvalidArgumentType,
     ["vjp must be callable", "NoneType"]),
    ("torch_fn missing", _CHECKS, dict(against="torch"), InvalidArgument,
     ["against includes 'torch'", "torch_fn= must be given"]),
    ("torch_fn not callable", _CHECKS, dict(against="torch", torch_fn=1), InvalidArgumentType,
     ["torch_fn must be callable"]),
    ("jax_fn not callable", _CHECKS, dict(against="jax", jax_fn="f"), InvalidArgumentType,
     ["jax_fn must be callable"]),
    # against
    ("against unknown", _CHECKS, dict(against="finite-differences"), InvalidArgument,
     ["against must name oracles among", "'finite-differences'"]),
    ("against wrong case", _CHECKS, dict(against=["Numeric"]), InvalidArgument, ["'Numeric'"]),
    ("against None", _CHECKS, dict(against=None), InvalidArgumentType, ["against must be one of"]),
    ("against a number", _CHECKS, dict(against=3), InvalidArgumentType, ["against", "got 3"]),
    ("against empty", _CHECKS, dict(against=[]), InvalidArgument, ["against is empty"]),
    ("against repeated", _CHECKS, dict(against=("numeric", "numeric")), InvalidArgument,
     ["against names an oracle twice"]),
    ("against nested", _CHECKS, dict(against=[["numeric"]]), InvalidArgument, ["against"]),
    # tolerances and seed
    ("rtol a string", _CHECKS, dict(rtol="1e-3"), InvalidArgumentType, ["rtol", "real number"]),
    ("rtol an array", _CHECKS, dict(rtol=np.array([1e-3])), InvalidArgumentType, ["rtol"]),
    ("rtol True", _CHECKS, dict(rtol=True), InvalidArgumentType, ["rtol", "True"]),
    ("rtol negative", _CHECKS, dict(rtol=-1e-3), InvalidArgument, ["rtol must be finite and >= 0"]),
    ("rtol NaN", _CHECKS, dict(rtol=float("nan")), InvalidArgument, ["rtol", "nan"]),
    ("atol inf", _CHECKS, dict(atol=float("inf")), InvalidArgument, ["atol must be finite"]),
    ("atol complex", _CHECKS, dict(atol=1j), InvalidArgumentType, ["atol"]),
    ("seed a float", _CHECKS, dict(seed=1.5), InvalidArgumentType, ["seed must be an int >= 0"]),
    ("seed a string", _CHECKS, dict(seed="1"), InvalidArgumentType, ["seed", "'1'"]),
    ("seed True", _CHECKS, dict(seed=True), InvalidArgumentType, ["seed", "True"]),
    ("seed negative", _CHECKS, dict(seed=-1), InvalidArgument, ["seed must be an int >= 0", "-1"]),
    ("seed a Generator", _CHECKS, dict(seed=np.random.default_rng(0)), InvalidArgumentType,
     ["seed"]),
    # names
    ("names too many", _CHECKS, dict(names=["a", "b"]), InvalidArgument,
     ["names must give one name per input (1), got 2"]),
    ("names a string", _CHECKS, dict(names="x"), InvalidArgumentType,
     ["names must be a list or tuple of strings"]),
    ("names a number", _CHECKS, dict(names=5), InvalidArgumentType, ["names", "5"]),
    ("names not strings", _CHECKS, dict(names=[0]), InvalidArgumentType,
     ["names[0] must be a string"]),
]  # fmt: skip

def _table():
    for case_id, entries, changes, error, fragments in BAD_ARGUMENTS:
        for entry in entries:
            marks = []
            if entry == "torch_vjp":
                marks.append(pytest.mark.torch)
            if entry == "jax_vjp":
                marks.append(pytest.mark.jax)
            case = f"{entry}: {case_id}"
            yield pytest.param(entry, changes, error, fragments, id=case, marks=marks)


@pytest.mark.parametrize(("entry", "changes", "error", "fragments"), list(_table()))
def test_argument_validation(entry, changes, error, fragments):
    call = {"inputs": (_X,), "cotangent": _COT, **changes}
    if callable(call["inputs"]):
        call["inputs"] = call["inputs"]()
    with pytest.raises(error) as info:
        _call(entry, call.pop("inputs"), call.pop("cotangent"), **call)
    assert isinstance(info.value, OraclesError)
    message = str(info.value)
    # The checks call the cotangent ``direction=``; the oracle functions take ``cotangent``.
    direction = "direction" if entry in _CHECKS else "cotangent"
    for fragment in fragments:
        fragment = fragment.replace("{direction}", direction)
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- NaN and inf anywhere, any dtype: named with their index ----------------------------------


@settings(max_examples=40)
@given(
    x=hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
        elements=st.floats(-10, 10, width=16),
    ),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    data=st.data(),
)
def test_non_finite_input_elements_are_named_by_index(x, bad, data):
    flat = data.draw(st.integers(0, x.size - 1), label="position")
    x = x.copy()
    x.reshape(-1)[flat] = bad
    index = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    first_bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0]) if x.ndim else ()
    assert first_bad == index
    for run in (
        lambda: check_vjp(_square, _square_vjp, (x,)),
        lambda: numeric_vjp(_square, (x,), np.ones(x.shape)),
    ):
        with pytest.raises(InvalidArgument, match=r"inputs\[0\] contains NaN or inf") as info:
            run()
        assert f"first at index {index}" in str(info.value)
