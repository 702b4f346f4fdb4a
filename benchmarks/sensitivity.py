"""Sensitivity of gradient checkers, measured: the smallest planted error each one catches.

A correct hand-written VJP gets a planted error of relative size
``1e-3, 1e-4, ..., 1e-8``, either in one element of one input's gradient
(the element whose magnitude is the median of the non-zero gradient
entries: a typical element, neither the largest nor a negligible one) or in
every element (the whole VJP times ``1 + size``). Three checkers judge the
same planted VJP, each with its default settings:

* ``oracles.check_vjp`` (numeric oracle, default tolerances: the numeric
  error estimate only);
* ``torch.autograd.gradcheck`` on the VJP wrapped as a
  ``torch.autograd.Function`` (forward and backward call the NumPy code);
* ``jax.test_util.check_grads(f, args, order=1, modes=("rev",))`` on the
  VJP wrapped as a ``jax.custom_vjp`` whose forward and backward are
  ``jax.pure_callback`` calls into the NumPy code (64-bit mode on).

The false-alarm rows run each checker on a *correct* VJP at hard points
(ReLU with inputs exactly at 0, logits offset by 1e6, logits of scale 500,
saturated tanh); any failure there is a false alarm.

The rows of issue 13, each with the same three checkers side by side:

* **units**: ``S_out * softmax(x / S_in)`` for output scales ``1e-12 ..
  1e12`` and input scales ``1e-9 .. 1e9`` (the same function in other
  units: a checker independent of the units catches the same errors);
* **float32 inside**: functions that cast to float32 (or carry float32
  weights) and a correct float64 backward; sizes ``1e-2 .. 1e-6``;
* **tied maxima**: ``max`` and a 2x2 max-pool at ties, a correct backward
  (first maximum) and backwards that route to every tie or to none;
* **fast mode**: 6,000 elements, ``mode="fast"`` for check_vjp (the same
  tolerances for all three): two swapped gradient entries (10 random
  pairs), one element off by 1% under ``rtol=1e-6``, one off by ``3e-5``
  under ``atol=1e-8``.

A check_vjp run counts as flagging a VJP when its status is ``"failed"``; an
``"inconclusive"`` run (the check itself says it could not tell) is not
counted as a catch, and is marked in the tables where a correct VJP gets it.

Run from the repository root::

    OPENBLAS_NUM_THREADS=1 python benchmarks/sensitivity.py

It prints Markdown tables (for the README) and writes
``benchmarks/results/sensitivity.json``. ``--groups ops,scales,...`` runs a
subset. Several minutes on one core (torch's gradcheck on the 6,000-element
fast-mode rows is the slowest part).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import reference as R
from oracles import check_vjp
from reference import mlp
from reference.mnist import as_float_features, load_mnist

__all__ = ["SIZES", "main", "run"]

SIZES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
#: Tried, in order, only when a checker misses 1e-3: where does it start to see anything?
LARGER_SIZES = (1e-2, 1e-1)
TOOLS = ("oracles.check_vjp", "torch.autograd.gradcheck", "jax check_grads")
RESULTS = Path(__file__).resolve().parent / "results" / "sensitivity.json"


def _tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


# --- the cases ---------------------------------------------------------------------------------


def _mlp_case():
    """The MLP step 784-4-10 (tanh, cross-entropy) on 8 real digits, after 2 SGD steps."""
    images, labels = load_mnist()
    X, y = as_float_features(images[:8]), labels[:8].astype(np.int64)

    def fn(*p):
        return mlp.mlp_loss(X, y, *p)

    def vjp(g, *p):
        return mlp.mlp_loss_vjp(g, X, y, *p)

    params = mlp.init_params((784, 4, 10), seed=0)
    for _ in range(2):
        params = mlp.sgd_step(params, vjp(1.0, *params), 0.5)
    return fn, vjp, tuple(params)


def cases():
    """``{name: (fn, vjp, inputs)}``: the ops the sensitivity is measured on."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5)) * 3
    labels = rng.integers(0, 5, size=4)
    soft = rng.uniform(0, 1, size=(4, 5))
    return {
        "softmax": (R.softmax, R.softmax_vjp, (rng.normal(size=(4, 6)) * 3,)),
        "log_softmax": (R.log_softmax, R.log_softmax_vjp, (rng.normal(size=(4, 6)) * 3,)),
        "cross_entropy (labels)": (
            lambda a: R.cross_entropy(a, labels),
            lambda g, a: R.cross_entropy_vjp(g, a, labels),
            (z,),
        ),
        "cross_entropy (soft targets)": (
            lambda a: R.cross_entropy(a, soft),
            lambda g, a: R.cross_entropy_vjp(g, a, soft),
            (z,),
        ),
        "squared_error (mean)": (
            lambda p, t: R.squared_error(p, t, reduction="mean"),
            lambda g, p, t: R.squared_error_vjp(g, p, t, reduction="mean"),
            (rng.normal(size=(4, 3)), rng.normal(size=(4, 3))),
        ),
        "affine": (
            R.affine,
            R.affine_vjp,
            (rng.normal(size=(4, 5)), rng.normal(size=(5, 3)), rng.normal(size=3)),
        ),
        "tanh": (R.tanh, R.tanh_vjp, (rng.normal(size=(5, 4)) * 2,)),
        "sigmoid": (R.sigmoid, R.sigmoid_vjp, (rng.normal(size=(5, 4)) * 3,)),
        "MLP step 784-4-10, 8 digits": _mlp_case(),
    }


def false_alarm_cases():
    """``{name: (fn, vjp, inputs)}``: correct VJPs at hard points."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4))
    x[0, :3] = 0.0
    return {
        "ReLU, inputs exactly 0": (R.relu, R.relu_vjp, (x,)),
        "softmax, logits offset 1e6": (R.softmax, R.softmax_vjp, (1e6 + rng.normal(size=(3, 4)),)),
        "softmax, logits scale 500": (R.softmax, R.softmax_vjp, (500 * rng.normal(size=(3, 4)),)),
        "tanh, saturated (x ~ +-20)": (
            R.tanh,
            R.tanh_vjp,
            (rng.choice([-1.0, 1.0], size=(3, 4)) * rng.uniform(18, 22, size=(3, 4)),),
        ),
    }


# --- planting errors ---------------------------------------------------------------------------


def _median_element(fn, vjp, inputs):
    """(input number, flat index) of the median-magnitude non-zero gradient entry."""
    cot = np.random.default_rng(0).standard_normal(np.shape(fn(*inputs)))
    grads = _tuple(vjp(cot, *inputs))
    entries = [
        (abs(float(v)), i, j)
        for i, d in enumerate(grads)
        for j, v in enumerate(np.ravel(d))
        if v != 0
    ]
    entries.sort()
    _, i, j = entries[len(entries) // 2]
    return i, j


def planted(vjp, size, element=None):
    """``vjp`` with one element (``(input, flat index)``) or every element times ``1 + size``."""

    def wrong(g, *xs):
        grads = [np.array(d, dtype=np.float64, copy=True) for d in _tuple(vjp(g, *xs))]
        if element is None:
            return tuple(d * (1.0 + size) for d in grads)
        i, j = element
        grads[i].reshape(-1)[j] *= 1.0 + size
        return tuple(grads)

    return wrong


# --- the three checkers, each returning True when it flags the VJP -----------------------------


def flags_oracles(fn, vjp, inputs, **options):
    """Flagged means *failed*; an inconclusive report (the check says it could not tell) is not.

    ``last_status`` keeps the status of the last call, for the rows that
    report inconclusive runs.
    """
    status = check_vjp(fn, vjp, inputs, **options).status
    flags_oracles.last_status = status
    return status == "failed"


flags_oracles.last_status = None


def flags_torch(fn, vjp, inputs, **options):
    import importlib

    import torch

    # torch.autograd.gradcheck is the function; the module holds the error type.
    gradcheck_error = importlib.import_module("torch.autograd.gradcheck").GradcheckError

    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *ts):
            ctx.save_for_backward(*ts)
            out = fn(*[t.detach().numpy() for t in ts])
            return torch.from_numpy(np.array(out, dtype=np.float64))

        @staticmethod
        def backward(ctx, g):
            xs = [t.detach().numpy() for t in ctx.saved_tensors]
            grads = _tuple(vjp(g.detach().numpy().copy(), *xs))
            return tuple(torch.from_numpy(np.array(d, dtype=np.float64)) for d in grads)

    args = tuple(torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs)
    tol = {k: options[k] for k in ("rtol", "atol") if k in options}
    try:
        torch.autograd.gradcheck(Wrapped.apply, args, **tol)
    except gradcheck_error:
        return True
    return False


def flags_jax(fn, vjp, inputs, **options):
    import jax
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        out_shape = np.shape(fn(*inputs))
        f64 = np.float64

        def call_fn(*xs):
            return np.asarray(fn(*[np.asarray(x) for x in xs]), dtype=f64)

        def call_vjp(g, *xs):
            grads = _tuple(vjp(np.array(g, dtype=f64), *[np.asarray(x) for x in xs]))
            return tuple(np.asarray(d, dtype=f64) for d in grads)

        @jax.custom_vjp
        def f(*xs):
            return jax.pure_callback(call_fn, jax.ShapeDtypeStruct(out_shape, f64), *xs)

        def f_fwd(*xs):
            return f(*xs), xs

        def f_bwd(xs, g):
            shapes = tuple(jax.ShapeDtypeStruct(np.shape(x), f64) for x in xs)
            return jax.pure_callback(call_vjp, shapes, g, *xs)

        f.defvjp(f_fwd, f_bwd)
        args = tuple(jax.numpy.asarray(x, dtype=f64) for x in inputs)
        tol = {k: options[k] for k in ("rtol", "atol") if k in options}
        try:
            check_grads(f, args, order=1, modes=("rev",), **tol)
        except AssertionError:
            return True
    return False


CHECKERS = {
    "oracles.check_vjp": flags_oracles,
    "torch.autograd.gradcheck": flags_torch,
    "jax check_grads": flags_jax,
}


# --- measuring ---------------------------------------------------------------------------------


def _measure(flags, fn, vjp, inputs, element, sizes=SIZES):
    """Caught or not at every size; the smallest size caught along with every larger one.

    When the largest of ``sizes`` is missed, :data:`LARGER_SIZES` are tried
    upwards until one is caught.
    """
    caught = [bool(flags(fn, planted(vjp, s, element), inputs)) for s in sizes]
    smallest = None
    for size, hit in zip(sizes, caught, strict=True):
        if not hit:
            break
        smallest = size
    larger = {}
    if not caught[0]:
        for size in [v for v in LARGER_SIZES if v > sizes[0]]:
            larger[f"{size:.0e}"] = hit = bool(flags(fn, planted(vjp, size, element), inputs))
            if hit:
                smallest = size
                break
    return {"caught": caught, "larger_sizes": larger, "smallest_caught": smallest}


# --- rows of issue 13: units, reduced precision, ties, fast mode -------------------------------

#: Sizes tried in float32-computing code (its resolution is about 6e-8).
SIZES_32 = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Output scales and input scales of ``S_out * softmax(x / S_in)``.
OUTPUT_SCALES = (1e-12, 1e-6, 1.0, 1e6, 1e12)
INPUT_SCALES = (1e-9, 1e-3, 1.0, 1e3, 1e9)
#: Elements of the fast-mode rows (above the 5,000 where mode="auto" turns to fast).
FAST_N = 6000
#: Random pairs of swapped entries tried in fast mode (the first few only for gradcheck).
SWAP_PAIRS = 10
TORCH_SWAP_PAIRS = 3


def _scaled_softmax(s_out, s_in):
    def fn(x):
        return s_out * R.softmax(x / s_in)

    def vjp(g, x):
        return R.softmax_vjp(g, x / s_in) * (s_out / s_in)

    return fn, vjp


def scale_cases():
    """``{name: (fn, vjp, inputs)}``: one softmax (4 x 6 logits of scale 3) in other units."""
    z = np.random.default_rng(0).normal(size=(4, 6)) * 3
    out = {}
    for s in OUTPUT_SCALES:
        fn, vjp = _scaled_softmax(s, 1.0)
        out[f"softmax, output scale {s:.0e}"] = (fn, vjp, (z,))
    for s in INPUT_SCALES:
        fn, vjp = _scaled_softmax(1.0, s)
        out[f"softmax, input scale {s:.0e}"] = (fn, vjp, (z * s,))
    return out


#: Mode fast in other units: a softmax of this many rows of 5 (2,000 elements).
FAST_UNITS_ROWS = 400


def fast_units_cases():
    """``{name: (fn, vjp, inputs)}``: a 400 x 5 softmax in other units, for ``mode="fast"``."""
    z = np.random.default_rng(1).normal(size=(FAST_UNITS_ROWS, 5)) * 3
    out = {}
    for s_out, s_in in ((1.0, 1e-9), (1.0, 1.0), (1.0, 1e9), (1e-12, 1e9), (1e12, 1e-9)):
        fn, vjp = _scaled_softmax(s_out, s_in)
        out[f"fast, output {s_out:.0e}, input {s_in:.0e}"] = (fn, vjp, (z * s_in,))
    return out


def float32_cases():
    """``{name: (fn, vjp, inputs)}``: functions that compute in float32 inside."""
    f32 = np.float32
    rng = np.random.default_rng(2)
    W, b, V = rng.normal(size=(5, 3)), rng.normal(size=3), 0.5 * rng.normal(size=(3, 2))
    W32, b32, V32 = W.astype(f32), b.astype(f32), V.astype(f32)

    def softmax32(z):
        z = z.astype(f32)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def mlp32(x):
        return np.tanh(x.astype(f32) @ W32 + b32) @ V32

    def mlp_vjp(g, x):
        h = np.tanh(x @ W + b)
        return ((g @ V.T) * (1 - h**2)) @ W.T

    return {
        "tanh in float32": (
            lambda x: np.tanh(x.astype(f32)),
            lambda g, x: g * (1 - np.tanh(x) ** 2),
            (rng.normal(size=(4, 5)),),
        ),
        "affine, float32 weights": (
            lambda x: x.astype(f32) @ W32 + b32,
            lambda g, x: g @ W.T,
            (rng.normal(size=(4, 5)),),
        ),
        "softmax in float32": (softmax32, R.softmax_vjp, (2 * rng.normal(size=(3, 5)),)),
        "tanh MLP, float32 weights": (mlp32, mlp_vjp, (rng.normal(size=(4, 5)),)),
    }


def _first_max_vjp(g, x):
    """Route the gradient of max(x) to the first maximum: a subgradient at ties."""
    d = np.zeros_like(x)
    d.reshape(-1)[int(np.argmax(x))] = g
    return d


def _pool(x):
    return x.reshape(2, 2, 2, 2).max(axis=(1, 3))


def _pool_vjp(every):
    def vjp(g, x):
        blocks = x.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)
        d = np.zeros_like(blocks)
        for k in range(4):
            hit = blocks[k] == blocks[k].max()
            if not every:
                hit = np.arange(4) == int(np.argmax(blocks[k]))
            d[k, hit] = g.reshape(-1)[k]
        return d.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)

    return vjp


def _sort_in(dtype):
    def sort(x):
        return np.sort(x.astype(dtype)).astype(np.float64)

    return sort


def _sort_vjp(dtype):
    def vjp(g, x):
        d = np.zeros_like(x)
        d[np.argsort(x.astype(dtype), kind="stable")] = g
        return d

    return vjp


def _sort_duplicated(dtype):
    """The sort's VJP where one tied element gets another tied element's gradient."""

    def vjp(g, x):
        d = _sort_vjp(dtype)(g, x)
        values, counts = np.unique(x, return_counts=True)
        tied = np.flatnonzero(x == values[np.argmax(counts)])
        d[tied[0]] = d[tied[1]]
        return d

    return vjp


def tie_cases():
    """``{name: (fn, correct vjp, {wrong name: vjp}, inputs, cotangent)}`` at tied values.

    ``cotangent`` is the direction given to ``check_vjp`` (``None``: all ones);
    torch's gradcheck and jax's check_grads choose their own.
    """
    x = np.array([1.0, 1.0, 0.25, -0.5, 1.0])
    rng = np.random.default_rng(5)
    many = np.round(rng.uniform(-1.0, 1.0, 40) * 8) / 8
    many[rng.choice(40, 12, replace=False)] = 0.3
    integers = rng.integers(0, 5, 30).astype(np.float64)
    pairs = np.random.default_rng(6)  # its own stream: the other rows' draws stay as they were
    pair_a = pairs.integers(0, 3, 24).astype(np.float64)
    pair_b = pairs.integers(0, 3, 24).astype(np.float64)
    pair_cot = pairs.standard_normal(24)
    pixels = np.array([[3.0, 3.0, 1.0, 2.0], [0.0, 1.0, 2.0, 2.0], [5.0, 4.0, 0.0, 0.0],
                       [5.0, 5.0, 0.0, 0.0]])  # fmt: skip
    return {
        "max of [1, 1, 0.25, -0.5, 1]": (
            np.max,
            _first_max_vjp,
            {
                "to every tie": lambda g, x: g * (x == x.max()),
                "to no tie": lambda g, x: np.zeros_like(x),
            },
            (x,),
            None,
        ),
        "2x2 max-pool, integer pixels": (
            _pool,
            _pool_vjp(every=False),
            {"to every tie": _pool_vjp(every=True)},
            (pixels,),
            None,
        ),
        "sort of 40 values, 12 of them equal": (
            _sort_in(np.float64),
            _sort_vjp(np.float64),
            {"to a duplicate": _sort_duplicated(np.float64)},
            (many,),
            rng.standard_normal(40),
        ),
        "maximum(a, b) of integers 0..2, ties across the two inputs": (
            np.maximum,
            lambda g, a, b: (g * (a >= b), g * (a < b)),
            {
                "to both": lambda g, a, b: (g * (a >= b), g * (b >= a)),
                "to neither": lambda g, a, b: (g * (a > b), g * (b > a)),
            },
            (pair_a, pair_b),
            pair_cot,
        ),
        "sort of 30 integers 0..4, in float32": (
            _sort_in(np.float32),
            _sort_vjp(np.float32),
            {"to a duplicate": _sort_duplicated(np.float32)},
            (integers,),
            rng.standard_normal(30),
        ),
    }


def _fast_problem():
    x = np.random.default_rng(4).uniform(-1.5, 1.5, size=FAST_N)

    def fn(x):
        return np.sin(x) * np.exp(-0.1 * x)

    def vjp(g, x):
        return g * np.exp(-0.1 * x) * (np.cos(x) - 0.1 * np.sin(x))

    return fn, vjp, (x,)


def _swapped(vjp, i, j):
    def wrong(g, *xs):
        d = np.array(_tuple(vjp(g, *xs))[0], dtype=np.float64, copy=True)
        d[[i, j]] = d[[j, i]]
        return d

    return wrong


def _off(vjp, j, *, rel=0.0, add=0.0):
    def wrong(g, *xs):
        d = np.array(_tuple(vjp(g, *xs))[0], dtype=np.float64, copy=True)
        d[j] = d[j] * (1.0 + rel) + add
        return d

    return wrong


def _tool_options(tool, options):
    """check_vjp takes mode=; gradcheck and check_grads only the tolerances."""
    if tool == "oracles.check_vjp":
        return options
    return {k: v for k, v in options.items() if k in ("rtol", "atol")}


def _row(name, fn, vjp, inputs, tools, sizes, verbose, options=None):
    options = options or {}
    element = _median_element(fn, vjp, inputs)
    entry = {"element": {"input": element[0], "flat_index": element[1]}}
    for tool in tools:
        flags = CHECKERS[tool]
        opts = _tool_options(tool, options)

        def flags_with(fn_, vjp_, inputs_, flags=flags, opts=opts):
            return flags(fn_, vjp_, inputs_, **opts)

        t0 = time.perf_counter()
        row = {mode: _measure(flags_with, fn, vjp, inputs, el, sizes)
               for mode, el in (("one_element", element), ("everywhere", None))}  # fmt: skip
        row["correct_flagged"] = bool(flags_with(fn, vjp, inputs))
        if tool == "oracles.check_vjp":
            row["correct_status"] = flags_oracles.last_status
        row["seconds"] = round(time.perf_counter() - t0, 2)
        entry[tool] = row
        if verbose:
            fa = " FALSE ALARM" if row["correct_flagged"] else ""
            print(
                f"  {name:<34} {tool:<26} one element {_fmt(row['one_element'])}, "
                f"everywhere {_fmt(row['everywhere'])}{fa} ({row['seconds']} s)",
                flush=True,
            )
    return entry


def _ties(tools, verbose):
    out = {}
    for name, (fn, right, wrongs, inputs, cot) in tie_cases().items():
        cot = np.ones(np.shape(fn(*inputs))) if cot is None else cot
        entry = {}
        for tool in tools:
            flags = CHECKERS[tool]
            if tool == "oracles.check_vjp":

                def flags(f, v, xs, cot=cot):
                    return flags_oracles(f, v, xs, direction=cot)

            row = {"correct_flagged": bool(flags(fn, right, inputs))}
            for wname, wrong in wrongs.items():
                row[f"routed {wname} flagged"] = bool(flags(fn, wrong, inputs))
            entry[tool] = row
        out[name] = entry
        if verbose:
            print(f"  ties: {name}: {entry}", flush=True)
    return out


def _fast_mode(tools, verbose):
    fn, vjp, inputs = _fast_problem()
    x = inputs[0]
    cot = np.random.default_rng(0).standard_normal(x.shape)
    g = np.abs(vjp(cot, x))
    rng = np.random.default_rng(5)
    pairs = []
    while len(pairs) < SWAP_PAIRS:
        i, j = (int(v) for v in rng.choice(FAST_N, size=2, replace=False))
        if abs(g[i] - g[j]) > 1e-3 * max(g[i], g[j]):  # the swap changes the gradient
            pairs.append((i, j))
    j = int(np.argsort(g)[FAST_N // 2])
    rows = {
        f"swapped entries ({SWAP_PAIRS} random pairs)": [
            ({"mode": "fast"}, _swapped(vjp, a, b)) for a, b in pairs
        ],
        "rtol=1e-6: one element off by 1%": [
            ({"mode": "fast", "rtol": 1e-6}, _off(vjp, j, rel=1e-2))
        ],
        "atol=1e-8: one element off by 3e-5": [
            ({"mode": "fast", "atol": 1e-8}, _off(vjp, j, add=3e-5))
        ],
    }
    out = {}
    for name, trials in rows.items():
        entry = {}
        for tool in tools:
            t0 = time.perf_counter()
            # gradcheck builds the full 6,000 x 6,000 Jacobian (25-50 s a call here).
            mine = trials[:TORCH_SWAP_PAIRS] if tool == "torch.autograd.gradcheck" else trials
            flagged = sum(
                bool(CHECKERS[tool](fn, wrong, inputs, **_tool_options(tool, opts)))
                for opts, wrong in mine
            )
            opts = _tool_options(tool, trials[0][0])
            entry[tool] = {
                "flagged": flagged,
                "of": len(mine),
                "correct_flagged": bool(CHECKERS[tool](fn, vjp, inputs, **opts)),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        out[name] = entry
        if verbose:
            print(f"  fast mode: {name}: {entry}", flush=True)
    return out


def run(*, tools=TOOLS, verbose=True, groups=None):
    """Measure every case under every tool; return the results as a JSON-ready dict."""
    started = time.perf_counter()
    results = {
        "sizes": list(SIZES),
        "larger_sizes": list(LARGER_SIZES),
        "element": "median-magnitude non-zero entry of the gradient (cotangent: normal, seed 0)",
        "sizes_float32": list(SIZES_32),
        "ops": {},
        "false_alarms": {},
        "scales": {},
        "float32": {},
        "ties": {},
        "fast_mode": {},
        "fast_units": {},
    }
    groups = groups or ("ops", "scales", "fast_units", "float32", "ties", "fast_mode")
    for name, (fn, vjp, inputs) in (cases() if "ops" in groups else {}).items():
        element = _median_element(fn, vjp, inputs)
        entry = {"element": {"input": element[0], "flat_index": element[1]}}
        for tool in tools:
            flags = CHECKERS[tool]
            t0 = time.perf_counter()
            row = {}
            for mode, el in (("one_element", element), ("everywhere", None)):
                row[mode] = _measure(flags, fn, vjp, inputs, el)
            row["correct_flagged"] = bool(flags(fn, vjp, inputs))
            row["seconds"] = round(time.perf_counter() - t0, 2)
            entry[tool] = row
            if verbose:
                print(
                    f"  {name:<30} {tool:<26} one element {_fmt(row['one_element'])}, "
                    f"everywhere {_fmt(row['everywhere'])} ({row['seconds']} s)",
                    flush=True,
                )
        results["ops"][name] = entry
    for name, (fn, vjp, inputs) in (false_alarm_cases() if "ops" in groups else {}).items():
        results["false_alarms"][name] = {
            tool: bool(CHECKERS[tool](fn, vjp, inputs)) for tool in tools
        }
        # Not flagged is "passed" or "inconclusive" (saturated points: a zero gradient passes too).
        results.setdefault("statuses", {})[name] = check_vjp(fn, vjp, inputs).status
        if verbose:
            print(f"  false alarm? {name}: {results['false_alarms'][name]}", flush=True)
    if "scales" in groups:
        for name, (fn, vjp, inputs) in scale_cases().items():
            results["scales"][name] = _row(name, fn, vjp, inputs, tools, SIZES, verbose)
    if "fast_units" in groups:
        for name, (fn, vjp, inputs) in fast_units_cases().items():
            results["fast_units"][name] = _row(
                name, fn, vjp, inputs, tools, SIZES, verbose, options={"mode": "fast"}
            )
    if "float32" in groups:
        for name, (fn, vjp, inputs) in float32_cases().items():
            results["float32"][name] = _row(name, fn, vjp, inputs, tools, SIZES_32, verbose)
    if "ties" in groups:
        results["ties"] = _ties(tools, verbose)
    if "fast_mode" in groups:
        results["fast_mode"] = _fast_mode(tools, verbose)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["environment"] = _environment()
    return results


def _environment():
    import jax
    import torch

    return {
        "check_vjp default mode": inspect.signature(check_vjp).parameters["mode"].default,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "jax": jax.__version__,
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt(mode_result):
    s = mode_result["smallest_caught"]
    return f"> {LARGER_SIZES[-1]:.0e}" if s is None else f"{s:.0e}"


def _cell(row):
    text = f"{_fmt(row['one_element'])} / {_fmt(row['everywhere'])}"
    if row["correct_flagged"]:
        text += " **false alarm**"
    elif row.get("correct_status") == "inconclusive":
        text += " (inconclusive)"
    return text


def markdown(results, tools=TOOLS):
    """The README tables: smallest planted relative error caught, and false alarms."""
    lines = [_markdown_ops(results, tools)] if results["ops"] else []
    for group, title in (
        ("scales", "units"),
        ("fast_units", f"units, mode fast ({FAST_UNITS_ROWS} x 5 softmax)"),
        ("float32", "float32 inside"),
    ):
        if not results.get(group):
            continue
        lines += ["", f"| {title}: one element / everywhere | " + " | ".join(tools) + " |"]
        lines.append("|" + "---|" * (len(tools) + 1))
        for name, entry in results[group].items():
            lines.append(f"| {name} | " + " | ".join(_cell(entry[t]) for t in tools) + " |")
    if results["ties"]:
        lines += ["", "| tied values | " + " | ".join(tools) + " |"]
        lines.append("|" + "---|" * (len(tools) + 1))
        for name, entry in results["ties"].items():
            keys = [k for k in entry[tools[0]] if k != "correct_flagged"]
            cells = []
            for t in tools:
                row = entry[t]
                parts = ["**false alarm**" if row["correct_flagged"] else "correct passes"]
                parts += [f"{k.replace(' flagged', '')}: {'flagged' if row[k] else 'missed'}"
                          for k in keys]  # fmt: skip
                cells.append("; ".join(parts))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if results["fast_mode"]:
        lines += ["", f"| fast mode, {FAST_N} elements | " + " | ".join(tools) + " |"]
        lines.append("|" + "---|" * (len(tools) + 1))
        for name, entry in results["fast_mode"].items():
            cells = [
                f"{entry[t]['flagged']} of {entry[t]['of']} flagged"
                + ("; **false alarm**" if entry[t]["correct_flagged"] else "")
                for t in tools
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown_ops(results, tools):
    head = "| op | " + " | ".join(f"{t}: one element / everywhere" for t in tools) + " |"
    lines = [head, "|" + "---|" * (len(tools) + 1)]
    for name, entry in results["ops"].items():
        cells = [f"{_fmt(entry[t]['one_element'])} / {_fmt(entry[t]['everywhere'])}" for t in tools]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| correct VJP (false alarm?) | " + " | ".join(tools) + " |")
    lines.append("|" + "---|" * (len(tools) + 1))
    for name, row in results["false_alarms"].items():
        status = results.get("statuses", {}).get(name, "passed")
        cells = [
            "**false alarm**"
            if row[t]
            else (status if t == "oracles.check_vjp" and status == "inconclusive" else "passes")
            for t in tools
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument(
        "--groups",
        default="ops,scales,fast_units,float32,ties,fast_mode",
        help="comma-separated groups of rows: ops, scales, fast_units, float32, ties, fast_mode",
    )
    args = parser.parse_args(argv)
    results = run(groups=tuple(g.strip() for g in args.groups.split(",") if g.strip()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(
        "Smallest relative error planted in a correct VJP that each checker catches, with "
        f"default settings (sizes {SIZES[0]:.0e} down to {SIZES[-1]:.0e}, the smallest tried; "
        f"{', '.join(f'{s:.0e}' for s in LARGER_SIZES)} tried only when {SIZES[0]:.0e} is missed):"
    )
    print()
    print(markdown(results))
    print()
    print(f"wrote {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
