"""The fast mode against its goals (issue 17), with torch's and jax's checkers as anchors.

Workload: the MNIST MLP 784-H-10, **sigmoid**, mean cross-entropy, float64, 64
real digits from the bundled sample (``reference.load_mnist()``), parameters
``reference.mlp.init_params(seed=0)``; H = 128 (101,770 parameters) and
H = 1280 (1,017,610). The VJP under test is this project's hand derivation,
with elements of dW1 planted wrong at typical elements (the median |gradient|
of the nonzero ones). ``oracles.check_vjp`` runs with its defaults (``mode``
"auto", which is the fast mode at these sizes), end to end.

Rows:

* correct VJP: seconds (goal: < 0.2 s at H=128, < 1 s at H=1280);
* one element off by a relative 1e-7 (and 1e-8), over several sites and
  seeds: named or not, seconds (goal: named in < 0.3 s at H=128, < 2 s at
  H=1280);
* two elements each off by 1e-6: both named (goal);
* a gradient wrong everywhere (1% on every element of every parameter) on
  the 784-12-10 MLP (9,550 parameters) and the 784-128-10 (101,770), and on
  ``x / (1 + x^2)`` over 1e4 and 1e5 elements in 1 to 50 inputs:
  evaluations of ``fn`` per element (goal: at most about 3 plus a constant)
  and the report's "wrong formula" note.

Anchors, timed in the same process on the same function: the forward pass,
``torch.autograd.gradcheck(fast_mode=True)`` and
``jax.test_util.check_grads(modes=("rev",), order=1)`` on the correct VJP
(wrapped as a ``torch.autograd.Function`` and a ``jax.custom_vjp``, so they
check *our* VJP), and whether they detect the 1e-7 element. Timings on a
shared machine are noisy, so every time is also printed as a ratio to those
anchors and in forward passes.

Run (from the repository root)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/fast_mode.py            # H=128 and 1280
    OPENBLAS_NUM_THREADS=1 python benchmarks/fast_mode.py --quick    # H=128 only

Writes ``benchmarks/results/fast_mode.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import oracles  # noqa: E402
from oracles.numerics import fast as fast_module  # noqa: E402
from reference import mlp, mnist  # noqa: E402

ACTIVATION = "sigmoid"
NAMES = ("W1", "b1", "W2", "b2")
RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {
    128: {"correct": 0.2, "localize": 0.3},
    1280: {"correct": 1.0, "localize": 2.0},
}


def workload(hidden):
    images, labels = mnist.load_mnist()
    X = mnist.as_float_features(images[:64])
    y = labels[:64]
    params = mlp.init_params((784, hidden, 10), seed=0)
    fn = functools.partial(mlp.mlp_loss, X, y, activation=ACTIVATION)
    grads = mlp.mlp_loss_vjp(1.0, X, y, *params, activation=ACTIVATION)
    a = np.abs(grads[0]).ravel()
    nonzero = np.flatnonzero(a)
    order = nonzero[np.argsort(a[nonzero], kind="stable")]
    mid = order.size // 2
    sites = [int(j) for j in order[mid - 3 : mid + 4]]  # seven typical elements
    return X, y, params, fn, sites


def vjp_with(X, y, plants=(), everywhere=0.0):
    """Our VJP, ``dW1.flat[j] *= 1 + rel`` per ``(j, rel)``, every element ``*= 1 + everywhere``."""

    def vjp(g, *params):
        grads = [d.copy() for d in mlp.mlp_loss_vjp(g, X, y, *params, activation=ACTIVATION)]
        for j, rel in plants:
            grads[0].reshape(-1)[j] *= 1 + rel
        if everywhere:
            grads = [d * (1 + everywhere) for d in grads]
        return tuple(grads)

    return vjp


#: (seconds, evaluations) of every fast_partials call: the fast mode itself, inside check_vjp.
FAST_CALLS = []


def _timed_fast_partials(*args, _inner=fast_module.fast_partials, **kwargs):
    t = time.perf_counter()
    res = _inner(*args, **kwargs)
    FAST_CALLS.append((time.perf_counter() - t, res.evaluations))
    return res


fast_module.fast_partials = _timed_fast_partials


def run_ours(fn, vjp, params, seed=0):
    """``(seconds, failing (input, flat index) pairs, report)``; the report gets ``fast_s``."""
    FAST_CALLS.clear()
    t = time.perf_counter()
    report = oracles.check_vjp(fn, vjp, params, direction=1.0, names=NAMES, seed=seed)
    seconds = time.perf_counter() - t
    report.context["fast mode seconds"] = sum(c[0] for c in FAST_CALLS)
    report.context["fast mode evaluations"] = sum(c[1] for c in FAST_CALLS)
    failing = set()
    for r in report.inputs:
        for e in r.checks["numeric"].worst:
            if not e.passed:
                shape = params[r.number].shape
                failing.add((r.number, int(np.ravel_multi_index(e.index, shape))))
    return seconds, failing, report


# --- the anchors ---------------------------------------------------------------------------------


def forward_seconds(fn, params, repeats=20):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*params)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_function(X, y, vjp):
    import torch

    class HandMLP(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *params):
            ctx.save_for_backward(*params)
            arrays = [p.detach().numpy() for p in params]
            value = mlp.mlp_loss(X, y, *arrays, activation=ACTIVATION)
            return torch.as_tensor(value, dtype=torch.float64)

        @staticmethod
        def backward(ctx, g):
            arrays = [p.detach().numpy() for p in ctx.saved_tensors]
            return tuple(torch.as_tensor(d) for d in vjp(float(g), *arrays))

    return HandMLP.apply


def run_gradcheck(X, y, vjp, params):
    """``(seconds, detected)`` for ``torch.autograd.gradcheck(fast_mode=True)``."""
    import torch

    fn = torch_function(X, y, vjp)
    inputs = tuple(torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = torch.autograd.gradcheck(fn, inputs, fast_mode=True, raise_exception=False)
    return time.perf_counter() - t, not ok


def jax_function(X, y, vjp):
    import jax
    import jax.numpy as jnp

    from oracles.verify.mnist import jax_mlp_loss

    forward = jax_mlp_loss(X, y, activation=ACTIVATION)

    @jax.custom_vjp
    def f(*params):
        return forward(*params)

    def f_fwd(*params):
        return forward(*params), params

    def f_bwd(params, g):
        shapes = tuple(jax.ShapeDtypeStruct(p.shape, jnp.float64) for p in params)

        def host(g, *ps):
            return tuple(
                np.asarray(d, dtype=np.float64) for d in vjp(float(g), *map(np.asarray, ps))
            )

        return jax.pure_callback(host, shapes, g, *params)

    f.defvjp(f_fwd, f_bwd)
    return f


def run_check_grads(X, y, vjp, params):
    """``(seconds, detected)`` for ``jax.test_util.check_grads(modes=("rev",), order=1)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.test_util import check_grads

    f = jax_function(X, y, vjp)
    args = tuple(jnp.asarray(p) for p in params)
    t = time.perf_counter()
    try:
        check_grads(f, args, order=1, modes=("rev",))
        detected = False
    except AssertionError:
        detected = True
    return time.perf_counter() - t, detected


# --- the rows ------------------------------------------------------------------------------------


def load():
    try:
        done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
        return done.stdout.strip()
    except OSError:
        return "unknown"


def commit():
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "oracles"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        return done.stdout.strip() + (" (oracles/ modified)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def bench(hidden, seeds, log):
    X, y, params, fn, sites = workload(hidden)
    n = sum(p.size for p in params)
    log(f"\n== 784-{hidden}-10 {ACTIVATION}: {n} parameters, 64 digits; {load()}")
    out = {"hidden": hidden, "parameters": n, "sites": sites}
    correct = vjp_with(X, y)
    fn(*params)  # warm caches
    fwd = forward_seconds(fn, params)
    run_gradcheck(X, y, correct, params)  # the first calls import and compile
    run_check_grads(X, y, correct, params)
    t_gc, flag_gc = run_gradcheck(X, y, correct, params)
    t_cg, flag_cg = run_check_grads(X, y, correct, params)
    run_ours(fn, correct, params)  # warm up
    out["anchors"] = {
        "forward_s": fwd,
        "gradcheck_fast_s": t_gc,
        "gradcheck_fast_false_alarm": flag_gc,
        "check_grads_s": t_cg,
        "check_grads_false_alarm": flag_cg,
    }
    log(
        f"  anchors: forward {fwd * 1e3:.2f} ms; gradcheck(fast_mode=True) {t_gc:.3f} s"
        f"{' FALSE ALARM' if flag_gc else ''}; check_grads(rev) {t_cg:.3f} s"
        f"{' FALSE ALARM' if flag_cg else ''}"
    )

    def describe(seconds):
        # Anchors again, right before: the load of a shared machine moves during a run.
        fwd_now = forward_seconds(fn, params, repeats=5)
        gc_now = run_gradcheck(X, y, correct, params)[0]
        cg_now = run_check_grads(X, y, correct, params)[0]
        return (
            f"{seconds:.3f} s = {seconds / gc_now:.2f}x gradcheck fast, "
            f"{seconds / cg_now:.2f}x check_grads, {seconds / fwd_now:.0f} forward passes"
        )

    goals = GOALS.get(hidden, {})
    rows = []
    for seed in seeds:
        t, failing, rep = run_ours(fn, correct, params, seed=seed)
        rows.append(
            {
                "seed": seed,
                "seconds": t,
                "ok": rep.ok,
                "evaluations": rep.context["fn evaluations"],
                "fast_s": rep.context["fast mode seconds"],
                "fast_evaluations": rep.context["fast mode evaluations"],
            }
        )
    med = statistics.median([r["seconds"] for r in rows])
    med_fast = statistics.median([r["fast_s"] for r in rows])
    out["correct"] = {"runs": rows, "median_s": med, "median_fast_s": med_fast}
    goal = goals.get("correct")
    log(
        f"  correct: {sum(r['ok'] for r in rows)}/{len(rows)} pass; check_vjp median "
        + describe(med)
        + f"; the fast mode itself {describe(med_fast)}"
        + f"; evaluations {[r['evaluations'] for r in rows]} (fast mode "
        + f"{[r['fast_evaluations'] for r in rows]})"
        + (f"; goal < {goal} s: {'met' if med < goal else 'NOT met'}" if goal else "")
    )

    for rel in (1e-7, 1e-8):
        rows = []
        for k, j in enumerate(sites):
            seed = seeds[k % len(seeds)]
            t, failing, rep = run_ours(fn, vjp_with(X, y, [(j, rel)]), params, seed=seed)
            rows.append(
                {
                    "site": j,
                    "seed": seed,
                    "seconds": t,
                    "named": failing == {(0, j)},
                    "false": sorted(failing - {(0, j)}),
                    "evaluations": rep.context["fn evaluations"],
                    "fast_s": rep.context["fast mode seconds"],
                    "fast_evaluations": rep.context["fast mode evaluations"],
                }
            )
        named = [r for r in rows if r["named"]]
        med = statistics.median([r["seconds"] for r in named]) if named else float("nan")
        med_fast = statistics.median([r["fast_s"] for r in named]) if named else float("nan")
        out[f"single_{rel:g}"] = {
            "runs": rows,
            "named": len(named),
            "median_named_s": med,
            "median_named_fast_s": med_fast,
        }
        goal = goals.get("localize") if rel == 1e-7 else None
        log(
            f"  one element off by {rel:g}: named {len(named)}/{len(rows)}, other elements "
            f"flagged {sum(len(r['false']) for r in rows)}; check_vjp median (named) "
            + (describe(med) if named else "-")
            + (f"; the fast mode itself {describe(med_fast)}" if named else "")
            + f"; evaluations {[r['evaluations'] for r in rows]} (fast mode "
            + f"{[r['fast_evaluations'] for r in rows]})"
            + (
                f"; goal named in < {goal} s: "
                + ("met" if named and len(named) == len(rows) and med < goal else "NOT met")
                if goal
                else ""
            )
        )
    t_gc7, det_gc = run_gradcheck(X, y, vjp_with(X, y, [(sites[0], 1e-7)]), params)
    t_cg7, det_cg = run_check_grads(X, y, vjp_with(X, y, [(sites[0], 1e-7)]), params)
    out["anchors"]["gradcheck_fast_detects_1e-7"] = det_gc
    out["anchors"]["check_grads_detects_1e-7"] = det_cg
    log(
        f"  the anchors on one element off by 1e-7: gradcheck fast "
        f"{'detects it (no location)' if det_gc else 'misses it'} ({t_gc7:.3f} s), check_grads "
        f"{'detects it (no location)' if det_cg else 'misses it'} ({t_cg7:.3f} s)"
    )

    rows = []
    pairs = [(sites[0], sites[-1]), (sites[1], sites[-2]), (sites[2], sites[3])]
    for k, (a, b) in enumerate(pairs):
        seed = seeds[k % len(seeds)]
        t, failing, rep = run_ours(fn, vjp_with(X, y, [(a, 1e-6), (b, -1e-6)]), params, seed)
        rows.append(
            {
                "sites": [a, b],
                "seed": seed,
                "seconds": t,
                "both_named": failing == {(0, a), (0, b)},
                "evaluations": rep.context["fn evaluations"],
                "fast_s": rep.context["fast mode seconds"],
            }
        )
    both = sum(r["both_named"] for r in rows)
    out["two_1e-6"] = {"runs": rows, "both_named": both}
    log(
        f"  two elements off by +1e-6 and -1e-6: both named {both}/{len(rows)}; seconds "
        f"{[round(r['seconds'], 3) for r in rows]}; goal both named: "
        f"{'met' if both == len(rows) else 'NOT met'}"
    )
    return out


def wrong_everywhere(hidden, log):
    X, y, params, fn, _ = workload(hidden)
    n = sum(p.size for p in params)
    fwd = forward_seconds(fn, params)
    t, failing, rep = run_ours(fn, vjp_with(X, y, everywhere=0.01), params)
    evals = int(rep.context["fn evaluations"])
    notes = [note for note in rep.notes if "wrong formula" in note]
    log(
        f"  784-{hidden}-10 ({n} elements), every element off by 1%: "
        f"{'FAILED (right)' if not rep.ok else 'PASSED (wrong)'} in {t:.2f} s "
        f"({t / fwd:.0f} forward passes), {evals} evaluations = {evals / n:.3f} per element; "
        f"'wrong formula' notes: {len(notes)}; goal <= ~3 per element + a constant: "
        f"{'met' if evals <= 3 * n + 5000 else 'NOT met'}"
    )
    return {
        "hidden": hidden,
        "elements": n,
        "failed": not rep.ok,
        "seconds": t,
        "forward_s": fwd,
        "evaluations": evals,
        "per_element": evals / n,
        "notes": notes,
    }


def many_inputs(n, n_inputs, log):
    """A wrong formula (1% everywhere) over ``n`` elements split into ``n_inputs`` inputs.

    ``x / (1 + x^2)`` of every input, concatenated: the cost of the "errors
    everywhere" branch must not grow with the number of inputs (it was 68
    evaluations per element over 50 inputs of 200).
    """
    rng = np.random.default_rng(n_inputs)
    xs = tuple(rng.uniform(-1.5, 1.5, n // n_inputs) for _ in range(n_inputs))

    def fn(*xs):
        return np.concatenate([x / (1.0 + x * x) for x in xs])

    def vjp(g, *xs):
        out, o = [], 0
        for x in xs:
            out.append(1.01 * g[o : o + x.size] * (1.0 - x * x) / (1.0 + x * x) ** 2)
            o += x.size
        return tuple(out)

    fwd = forward_seconds(fn, xs)
    FAST_CALLS.clear()
    t = time.perf_counter()
    rep = oracles.check_vjp(fn, vjp, xs, seed=0)
    t = time.perf_counter() - t
    evals = int(rep.context["fn evaluations"])
    log(
        f"  {n_inputs} inputs of {n // n_inputs} ({n} elements), every element off by 1%: "
        f"{'FAILED (right)' if not rep.ok else 'PASSED (wrong)'} in {t:.2f} s "
        f"({t / fwd:.0f} forward passes), {evals} evaluations = {evals / n:.3f} per element; "
        f"goal <= ~3 per element + a constant: {'met' if evals <= 3 * n + 5000 else 'NOT met'}"
    )
    return {
        "elements": n,
        "inputs": n_inputs,
        "failed": not rep.ok,
        "seconds": t,
        "forward_s": fwd,
        "evaluations": evals,
        "per_element": evals / n,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H=128 only")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the directions")
    args = parser.parse_args(argv)
    lines = []

    def log(line):
        print(line, flush=True)
        lines.append(line)

    started = datetime.datetime.now(datetime.UTC)
    log(
        f"fast_mode.py {started:%Y-%m-%d %H:%M UTC}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, NumPy {np.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, commit {commit()}"
    )
    seeds = list(range(args.seeds))
    results = {
        "started": started.isoformat(),
        "commit": commit(),
        "load_start": load(),
        "runs": [],
    }
    for hidden in (128,) if args.quick else (128, 1280):
        results["runs"].append(bench(hidden, seeds, log))
    log("\n== a gradient wrong everywhere")
    results["everywhere"] = [wrong_everywhere(h, log) for h in (12, 128)]
    results["everywhere_many_inputs"] = [
        many_inputs(n, k, log) for n, k in ((10**4, 1), (10**4, 50), (10**5, 1), (10**5, 20))
    ]
    results["load_end"] = load()
    results["log"] = lines
    log(f"\nload at the end: {results['load_end']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fast_mode.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
