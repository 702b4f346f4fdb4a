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

Run from the repository root::

    OPENBLAS_NUM_THREADS=1 python benchmarks/sensitivity.py

It prints a Markdown table (for the README) and writes
``benchmarks/results/sensitivity.json``. About a minute on one core.
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


def flags_oracles(fn, vjp, inputs):
    return not check_vjp(fn, vjp, inputs).ok


def flags_torch(fn, vjp, inputs):
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
    try:
        torch.autograd.gradcheck(Wrapped.apply, args)
    except gradcheck_error:
        return True
    return False


def flags_jax(fn, vjp, inputs):
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
        try:
            check_grads(f, args, order=1, modes=("rev",))
        except AssertionError:
            return True
    return False


CHECKERS = {
    "oracles.check_vjp": flags_oracles,
    "torch.autograd.gradcheck": flags_torch,
    "jax check_grads": flags_jax,
}


# --- measuring ---------------------------------------------------------------------------------


def _measure(flags, fn, vjp, inputs, element):
    """Caught or not at every size; the smallest size caught along with every larger one.

    When 1e-3 is missed, :data:`LARGER_SIZES` are tried upwards until one is caught.
    """
    caught = [bool(flags(fn, planted(vjp, s, element), inputs)) for s in SIZES]
    smallest = None
    for size, hit in zip(SIZES, caught, strict=True):
        if not hit:
            break
        smallest = size
    larger = {}
    if not caught[0]:
        for size in LARGER_SIZES:
            larger[f"{size:.0e}"] = hit = bool(flags(fn, planted(vjp, size, element), inputs))
            if hit:
                smallest = size
                break
    return {"caught": caught, "larger_sizes": larger, "smallest_caught": smallest}


def run(*, tools=TOOLS, verbose=True):
    """Measure every case under every tool; return the results as a JSON-ready dict."""
    started = time.perf_counter()
    results = {
        "sizes": list(SIZES),
        "larger_sizes": list(LARGER_SIZES),
        "element": "median-magnitude non-zero entry of the gradient (cotangent: normal, seed 0)",
        "ops": {},
        "false_alarms": {},
    }
    for name, (fn, vjp, inputs) in cases().items():
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
    for name, (fn, vjp, inputs) in false_alarm_cases().items():
        results["false_alarms"][name] = {
            tool: bool(CHECKERS[tool](fn, vjp, inputs)) for tool in tools
        }
        if verbose:
            print(f"  false alarm? {name}: {results['false_alarms'][name]}", flush=True)
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


def markdown(results, tools=TOOLS):
    """The README table: smallest planted relative error caught, and false alarms."""
    head = "| op | " + " | ".join(f"{t}: one element / everywhere" for t in tools) + " |"
    lines = [head, "|" + "---|" * (len(tools) + 1)]
    for name, entry in results["ops"].items():
        cells = [f"{_fmt(entry[t]['one_element'])} / {_fmt(entry[t]['everywhere'])}" for t in tools]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| correct VJP (false alarm?) | " + " | ".join(tools) + " |")
    lines.append("|" + "---|" * (len(tools) + 1))
    for name, row in results["false_alarms"].items():
        cells = ["**false alarm**" if row[t] else "passes" for t in tools]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    results = run()
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
