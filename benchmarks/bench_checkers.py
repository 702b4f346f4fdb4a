"""Gradient checkers side by side on one workload, in one process.

Workload: the MNIST MLP 784-h-10 (tanh, mean cross-entropy), float64, a batch
of 64 real digits from the bundled sample, parameters from
``reference.mlp.init_params(seed=0)``; ``h`` in {28, 128} (22,270 and
101,770 parameters). The VJP under test is always this project's hand
derivation (``reference.mlp.mlp_loss_vjp``), wrapped as a
``torch.autograd.Function`` and a ``jax.custom_vjp`` so that torch's and
jax's checkers check *our* VJP, not their own autodiff.

Planted mistakes: one element of dW1 multiplied by ``1 + rel`` for ``rel`` in
1e-3 .. 1e-7, at elements whose |gradient| is the median of the nonzero ones
(a typical element, not an easy large one). Checkers that judge every element
on its own (this project's exhaustive mode, the NumPy loop) are run once with
all five mistakes planted at five different elements: each element's verdict
is its own, and every other element that fails is a false alarm. Checkers
that return one verdict (gradcheck, check_grads) or look along random
directions (this project's fast mode) are run once per level, plus once on
the correct VJP.

Further sections (issue 17), each timed against anchors measured in the same
run:

* ``cheap``: exhaustive mode on cheap functions (``tanh(x @ W)`` with 3,000 ..
  6,000 elements, an im2col convolution with 5,200), with and without
  ``Exhaustive(vectorized=True)``, as a ratio to the plain central-difference
  loop (``x[j] += h; f; x[j] -= 2h; f; ...``) timed before and after it, and where
  the time goes: the CPU time of each stage of one more check (the noise probe, the
  calibration, the screen, the second look, the ladders, the rest) and of the loop's 2N
  bare calls of ``fn``, in plain loops' worth (:func:`cheap_stages`);
* ``fast``: the fast (default) mode on the 784-H-10 *sigmoid* MLP (H = 128 and
  1280; the workload of ``benchmarks/fast_mode.py``): a correct VJP, one
  element off by 1e-7, two off by +-1e-6, with gradcheck(fast_mode=True) and
  check_grads on the same function as anchors;
* ``memory``: the peak resident memory of a check of ``0.5 sum(tanh(x)^2)`` at
  N = 1e6 and 1e7 elements (a child process per size), in copies of the input
  above what the user's ``fn`` and ``vjp`` hold themselves (and above ``fn``
  alone);
* ``dask``: exhaustive mode at h=28 on a ``dask.distributed`` LocalCluster with
  2 workers (Dask's defaults, and the workers' profiler off) and on a 2-process
  pool, against the serial run.

Run (from the repository root)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_checkers.py          # every section
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_checkers.py --full   # + gradcheck slow and
                                                                        #   the NumPy loop at h=128
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_checkers.py --sections cheap fast

Writes ``benchmarks/results/checkers.json`` (``checkers-partial.json`` for a
subset of the sections) and ``checkers.png`` and prints a table with the date,
machine, load and commit.
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
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import oracles  # noqa: E402
from oracles import Exhaustive  # noqa: E402
from reference import mlp, mnist  # noqa: E402

LEVELS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
NAMES = ("W1", "b1", "W2", "b2")
RESULTS = Path(__file__).resolve().parent / "results"
#: torch.autograd.gradcheck (slow mode) at h=128, measured on this machine while issue 7 was
#: written (2 cores, float64). Printed, clearly labelled, when this run skips it.
GRADCHECK_SLOW_128_PREVIOUS = 92.0


# --- the workload --------------------------------------------------------------------------------


def workload(hidden):
    images, labels = mnist.load_mnist()
    X = mnist.as_float_features(images[:64])
    y = labels[:64]
    params = mlp.init_params((784, hidden, 10), seed=0)
    fn = functools.partial(mlp.mlp_loss, X, y)  # picklable, for the process-pool run
    grads = mlp.mlp_loss_vjp(1.0, X, y, *params)
    a = np.abs(grads[0]).ravel()
    nonzero = np.flatnonzero(a)
    order = nonzero[np.argsort(a[nonzero], kind="stable")]
    mid = order.size // 2
    sites = [int(j) for j in order[mid - 2 : mid + 3]]  # five typical elements, one per level
    return X, y, params, fn, sites


def planted_vjp(X, y, plants):
    """Our VJP with ``dW1.flat[j] *= 1 + rel`` for every ``(j, rel)`` in ``plants``."""

    def vjp(g, *params):
        grads = [d.copy() for d in mlp.mlp_loss_vjp(g, X, y, *params)]
        for j, rel in plants:
            grads[0].reshape(-1)[j] *= 1 + rel
        return tuple(grads)

    return vjp


def floor_seconds(fn, params, calls):
    t = time.perf_counter()
    for _ in range(calls):
        fn(*params)
    return time.perf_counter() - t


# --- cheap functions (exhaustive overhead) -------------------------------------------------


def tanh_mm(x, W):
    """``tanh(x @ W)``; any leading batch axes broadcast (``vectorized=True`` works as is)."""
    return np.tanh(x @ W)


def tanh_mm_vjp(g, x, W):
    d = g * (1 - np.tanh(x @ W) ** 2)
    return d @ W.T, x.T @ d


def im2col(x, kh, kw):
    """Patches of ``x`` (n, c, h, w) as rows (n * oh * ow, c * kh * kw), as textbooks write it."""
    n, c, h, w = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i : i + oh, j : j + ow]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)


def conv(x, W, b):
    """Valid 2-D convolution (cross-correlation) by im2col: (n, c, h, w) * (f, c, kh, kw) + b."""
    n = x.shape[0]
    f, _, kh, kw = W.shape
    oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = im2col(x, kh, kw) @ W.reshape(f, -1).T + b
    return out.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)


def conv_vjp(g, x, W, b):
    n, c = x.shape[:2]
    f, _, kh, kw = W.shape
    oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    cols = im2col(x, kh, kw)
    d = g.transpose(0, 2, 3, 1).reshape(-1, f)
    dW = (d.T @ cols).reshape(W.shape)
    dcols = (d @ W.reshape(f, -1)).reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    dx = np.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + oh, j : j + ow] += dcols[:, :, i, j]
    return dx, dW, d.sum(0)


def half_tanh_sq(x):
    """``0.5 * sum(tanh(x)^2)``: a scalar loss of one large input (the memory benchmark)."""
    return 0.5 * np.sum(np.tanh(x) ** 2)


def half_tanh_sq_vjp(g, x):
    t = np.tanh(x)
    return g * t * (1 - t * t)


def cheap_cases():
    """``(name, fn, vjp, inputs, vectorizable)``: 2,000 .. 6,000 elements, 13-150 us a call."""
    rng = np.random.default_rng(0)
    out = []
    for m, k, n in [(20, 40, 30), (20, 50, 40), (40, 50, 40), (40, 60, 50), (30, 100, 30)]:
        x = rng.standard_normal((m, k))
        W = rng.standard_normal((k, n)) / np.sqrt(k)
        out.append((f"tanh(x @ W), x {m}x{k}, W {k}x{n}", tanh_mm, tanh_mm_vjp, (x, W), True))
    x = rng.standard_normal((2, 4, 24, 24))
    W = rng.standard_normal((16, 4, 3, 3)) / 6
    b = rng.standard_normal(16)
    out.append(("im2col conv, x 2x4x24x24, W 16x4x3x3, b 16", conv, conv_vjp, (x, W, b), False))
    return out


def plain_loop(fn, inputs, cotangent, step=1e-6):
    """The loop every student writes: ``x[j] += h; f; x[j] -= 2h; f; ...``, contracted."""
    work = [x.copy() for x in inputs]
    out = []
    for x in work:
        flat = x.reshape(-1)
        g = np.empty(flat.size)
        for j in range(flat.size):
            x0 = flat[j]
            flat[j] = x0 + step
            fp = fn(*work)
            flat[j] = x0 - step
            fm = fn(*work)
            flat[j] = x0
            g[j] = np.vdot(cotangent, fp - fm) / (2 * step)
        out.append(g)
    return out


# --- the checkers --------------------------------------------------------------------------------


def run_ours(mode, fn, vjp, params):
    """(seconds, failing (input, flat index) set, report)."""
    t = time.perf_counter()
    report = oracles.check_vjp(fn, vjp, params, direction=1.0, mode=mode, names=NAMES)
    seconds = time.perf_counter() - t
    failing = set()
    for r in report.inputs:
        check = r.checks["numeric"]
        if check.n_failed > len([e for e in check.worst if not e.passed]):
            failing.add((r.number, "more than listed"))
        for e in check.worst:
            if not e.passed:
                shape = params[r.number].shape
                failing.add((r.number, int(np.ravel_multi_index(e.index, shape))))
    return seconds, failing, report


def run_numpy_loop(fn, vjp, params, *, step=1e-5, rtol=1e-5, atol=1e-8):
    """The loop people write: central difference per element, np.allclose's default tolerances."""
    t = time.perf_counter()
    analytic = vjp(1.0, *params)
    work = [p.copy() for p in params]
    failing = set()
    for i, (p, a) in enumerate(zip(work, analytic, strict=True)):
        flat, a = p.reshape(-1), a.reshape(-1)
        for j in range(flat.size):
            x0 = flat[j]
            flat[j] = x0 + step
            fp = float(fn(*work))
            flat[j] = x0 - step
            fm = float(fn(*work))
            flat[j] = x0
            num = (fp - fm) / (2 * step)
            if abs(a[j] - num) > atol + rtol * abs(num):
                failing.add((i, j))
    return time.perf_counter() - t, failing


def torch_function(X, y, vjp):
    import torch

    class HandMLP(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *params):
            ctx.save_for_backward(*params)
            arrays = [p.detach().numpy() for p in params]
            return torch.as_tensor(mlp.mlp_loss(X, y, *arrays), dtype=torch.float64)

        @staticmethod
        def backward(ctx, g):
            arrays = [p.detach().numpy() for p in ctx.saved_tensors]
            grads = vjp(float(g), *arrays)
            return tuple(torch.as_tensor(d) for d in grads)

    return HandMLP.apply


def run_gradcheck(X, y, vjp, params, fast_mode):
    import torch

    fn = torch_function(X, y, vjp)
    inputs = tuple(torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = torch.autograd.gradcheck(fn, inputs, fast_mode=fast_mode, raise_exception=False)
    return time.perf_counter() - t, not ok


def jax_function(X, y, vjp):
    import jax
    import jax.numpy as jnp

    from oracles.verify.mnist import jax_mlp_loss

    forward = jax_mlp_loss(X, y)

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


# --- orchestration -------------------------------------------------------------------------------


def machine():
    info = {
        "uname": " ".join(platform.uname()),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - the benchmark needs torch
        pass
    try:
        import jax

        info["jax"] = jax.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        model = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        info["cpu"] = model[0] if model else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    return info


def load():
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "unknown"


def per_level(run, X, y, params, sites):
    """Run a single-verdict checker once correct and once per level: ({level: verdict}, ...)."""
    seconds, flagged = run(lambda g, *p: mlp.mlp_loss_vjp(g, X, y, *p))
    detected = {}
    timings = {}
    for level, j in zip(LEVELS, sites, strict=True):
        t, hit = run(planted_vjp(X, y, [(j, level)]))
        timings[f"{level:g}"] = t
        detected[f"{level:g}"] = "detected (not localized)" if hit else "missed"
    return seconds, flagged, detected, timings


def bench(hidden, full, log):
    X, y, params, fn, sites = workload(hidden)
    n = sum(p.size for p in params)
    plants = list(zip(sites, LEVELS, strict=True))
    rows = []
    log(f"\n== 784-{hidden}-10: {n} parameters, 64 digits; planted at W1 flat {sites}; {load()}")

    # This project's fast mode: correct, then once per level.
    t_ok, failing_ok, rep = run_ours(
        "fast", fn, lambda g, *p: mlp.mlp_loss_vjp(g, X, y, *p), params
    )
    detected, timings = {}, {}
    for level, j in plants_by_level(sites):
        t, failing, _ = run_ours("fast", fn, planted_vjp(X, y, [(j, level)]), params)
        timings[f"{level:g}"] = t
        detected[f"{level:g}"] = (
            "named" if failing == {(0, j)} else ("detected" if failing else "missed")
        )
    rows.append(
        row(
            "oracles mode=fast (3 Rademacher directions + bisection)",
            hidden,
            t_ok,
            detected,
            bool(failing_ok),
            timings,
        )
    )
    log(f"  fast: {t_ok:.3f} s correct; planted {timings}; {detected}")

    # This project's exhaustive mode, with the 2N-forward floor measured around it.
    # Wall time is what the table shows; CPU time of this process is recorded too, because on a
    # shared machine the load of other processes moves wall-time ratios by +-20%.
    c0 = time.process_time()
    floor_a = floor_seconds(fn, params, n)
    c1 = time.process_time()
    t_ex, failing, rep = run_ours("exhaustive", fn, planted_vjp(X, y, plants), params)
    c2 = time.process_time()
    floor_b = floor_seconds(fn, params, n)
    c3 = time.process_time()
    floor = floor_a + floor_b
    cpu_ratio = (c2 - c1) / ((c1 - c0) + (c3 - c2))
    detected = {f"{lv:g}": ("named" if (0, j) in failing else "missed") for j, lv in plants}
    false = failing - {(0, j) for j in sites}
    rows.append(
        row(
            "oracles mode=exhaustive (screened, serial)",
            hidden,
            t_ex,
            detected,
            bool(false),
            extra={
                "floor_2N_forward_s": floor,
                "ratio_to_floor": t_ex / floor,
                "cpu_seconds": c2 - c1,
                "floor_2N_forward_cpu_s": (c1 - c0) + (c3 - c2),
                "cpu_ratio_to_floor": cpu_ratio,
                "fn_evaluations": int(rep.context["fn evaluations"]),
                "method": rep.context["oracles"],
            },
        )
    )
    log(
        f"  exhaustive: {t_ex:.2f} s, floor (2N forward calls) {floor:.2f} s, "
        f"ratio {t_ex / floor:.3f} (CPU time ratio {cpu_ratio:.3f}); {detected}; "
        f"false alarms {len(false)}; {rep.context['fn evaluations']} fn evaluations"
    )

    if hidden == 28 or full:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            t0 = time.perf_counter()
            list(pool.map(abs, [1, 2]))  # start the workers outside the timing
            startup = time.perf_counter() - t0
            t_pp, failing, _ = run_ours(
                Exhaustive(executor=pool), fn, planted_vjp(X, y, plants), params
            )
        detected = {f"{lv:g}": ("named" if (0, j) in failing else "missed") for j, lv in plants}
        false = failing - {(0, j) for j in sites}
        rows.append(
            row(
                "oracles mode=exhaustive on a 2-process pool",
                hidden,
                t_pp,
                detected,
                bool(false),
                extra={"pool_startup_s": startup, "ratio_to_floor": t_pp / floor},
            )
        )
        log(
            f"  exhaustive, 2 processes: {t_pp:.2f} s (+{startup:.2f} s pool start), "
            f"ratio to serial floor {t_pp / floor:.3f}"
        )

    # torch.autograd.gradcheck, slow (default) and fast mode.
    if hidden == 28 or full:
        s, flagged, detected, timings = per_level(
            lambda v: run_gradcheck(X, y, v, params, fast_mode=False), X, y, params, sites
        )
        rows.append(
            row("torch.autograd.gradcheck (slow, default)", hidden, s, detected, flagged, timings)
        )
        log(f"  gradcheck slow: {s:.2f} s; {detected}")
    else:
        rows.append(
            row(
                "torch.autograd.gradcheck (slow, default)",
                hidden,
                GRADCHECK_SLOW_128_PREVIOUS,
                {f"{lv:g}": "not run" for lv in LEVELS},
                None,
                extra={
                    "measured_in_this_run": False,
                    "note": "NOT MEASURED IN THIS RUN (about 90 s per call): the figure is the "
                    "one measured on this machine for issue 7; run with --full to "
                    "measure it",
                },
            )
        )
        log(
            f"  gradcheck slow: skipped (previously measured ~{GRADCHECK_SLOW_128_PREVIOUS:.0f} s, "
            "not measured in this run; --full measures it)"
        )
    s, flagged, detected, timings = per_level(
        lambda v: run_gradcheck(X, y, v, params, fast_mode=True), X, y, params, sites
    )
    rows.append(
        row("torch.autograd.gradcheck(fast_mode=True)", hidden, s, detected, flagged, timings)
    )
    log(f"  gradcheck fast: {s:.3f} s; {detected}")

    # jax.test_util.check_grads, reverse mode, first order.
    s, flagged, detected, timings = per_level(
        lambda v: run_check_grads(X, y, v, params), X, y, params, sites
    )
    rows.append(
        row(
            'jax.test_util.check_grads(modes=("rev",), order=1)',
            hidden,
            s,
            detected,
            flagged,
            timings,
        )
    )
    log(f"  check_grads: {s:.3f} s; {detected}")

    # The NumPy per-element loop.
    if hidden == 28 or full:
        s, failing = run_numpy_loop(fn, planted_vjp(X, y, plants), params)
        detected = {f"{lv:g}": ("named" if (0, j) in failing else "missed") for j, lv in plants}
        false = failing - {(0, j) for j in sites}
        rows.append(
            row(
                "NumPy loop: central difference per element (step 1e-5, allclose tols)",
                hidden,
                s,
                detected,
                bool(false),
                extra={"false_alarms": len(false)},
            )
        )
        log(f"  numpy loop: {s:.2f} s; {detected}; false alarms {len(false)}")

    slow = next(r for r in rows if r["checker"].startswith("torch.autograd.gradcheck (slow"))
    for r in rows:
        r["ratio_to_gradcheck_slow"] = r["seconds"] / slow["seconds"]
        r["gradcheck_slow_measured_in_this_run"] = slow.get("measured_in_this_run", True)
    return rows


def _min_time(run, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
    return best, out


def _min_times(run, repeats):
    """``(wall, cpu, out)``: the smallest wall and process CPU time over ``repeats`` runs."""
    wall, cpu, out = np.inf, np.inf, None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = run()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu, out


#: Stages of an exhaustive check timed by :func:`cheap_stages`: (module, function, label).
CHEAP_STAGES = (
    ("oracles.numerics.objective", "measure_noise", "noise probe"),
    ("oracles.numerics.exhaustive", "calling", "calling test"),
    ("oracles.numerics.exhaustive", "_calibrate", "calibration"),
    ("oracles.numerics.exhaustive", "_screen", "screen"),
    ("oracles.numerics.exhaustive", "_second_look", "second look"),
    ("oracles.numerics.exhaustive", "_ladder", "ladders"),
    ("oracles.numerics.exhaustive", "_typical", "typical"),
)


def cheap_stages(run):
    """``(cpu, {stage: cpu seconds})`` of one ``run()``: process CPU time of each stage.

    Each function of :data:`CHEAP_STAGES` is wrapped for the run (its outermost calls only:
    the calibration's own screens and ladders count as calibration); the rest of the check
    (the pipeline around, the orchestration) is ``cpu`` minus their sum.
    """
    import importlib

    spent, depth, saved = {}, [0], []

    def timed(f, label):
        @functools.wraps(f)
        def inner(*args, **kwargs):
            if depth[0]:
                return f(*args, **kwargs)
            depth[0] += 1
            c = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - c
                depth[0] -= 1

        return inner

    for module, name, label in CHEAP_STAGES:
        mod = importlib.import_module(module)
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, timed(getattr(mod, name), label))
    try:
        c = time.process_time()
        run()
        cpu = time.process_time() - c
    finally:
        for mod, name, f in saved:
            setattr(mod, name, f)
    return cpu, spent


def bench_cheap(log, repeats=3):
    """Exhaustive mode on cheap functions, as ratios to the plain loop timed around it.

    The loop and the check alternate (loop, check, loop, check, ..., loop) and
    each keeps its fastest run, in wall time and in process CPU time: on a
    shared machine the CPU-time ratio is the steadier one (another job on the
    same core stretches wall times, not this process's CPU time).
    """
    rows = []
    log(f"\n== exhaustive mode on cheap functions (ratio to the plain loop); {load()}")
    for name, fn, vjp, inputs, vectorizable in cheap_cases():
        n = sum(x.size for x in inputs)
        cot = np.random.default_rng(1).standard_normal(fn(*inputs).shape)
        t_call, _ = _min_time(lambda fn=fn, inputs=inputs: [fn(*inputs) for _ in range(200)], 3)
        modes = [("exhaustive", Exhaustive())] + (
            [("exhaustive, vectorized=True", Exhaustive(vectorized=True))] if vectorizable else []
        )

        def loop(fn=fn, inputs=inputs, cot=cot):
            return plain_loop(fn, inputs, cot)

        def bare(fn=fn, inputs=inputs, n=n):
            for _ in range(2 * n):
                fn(*inputs)

        loop_wall, loop_cpu, bare_cpu = [], [], []
        runs = {label: (np.inf, np.inf, None) for label, _ in modes}
        for _ in range(repeats):
            w, c, _ = _min_times(loop, 1)
            loop_wall.append(w)
            loop_cpu.append(c)
            bare_cpu.append(_min_times(bare, 1)[1])
            for label, mode in modes:
                w, c, rep = _min_times(
                    lambda fn=fn, vjp=vjp, inputs=inputs, cot=cot, mode=mode: oracles.check_vjp(
                        fn, vjp, inputs, direction=cot, mode=mode
                    ),
                    1,
                )
                best_w, best_c, _ = runs[label]
                runs[label] = (min(best_w, w), min(best_c, c), rep)
        w, c, _ = _min_times(loop, 1)
        loop_wall.append(w)
        loop_cpu.append(c)
        loop_w, loop_c, bare_c = min(loop_wall), min(loop_cpu), min(bare_cpu)
        # Where the time goes, in plain loops' worth (CPU time; one more run, the fastest of
        # 2, with each stage timed; the loop's own 2N bare calls of fn as a floor).
        staged = min(
            (
                cheap_stages(
                    lambda fn=fn, vjp=vjp, inputs=inputs, cot=cot: oracles.check_vjp(
                        fn, vjp, inputs, direction=cot, mode=Exhaustive()
                    )
                )
                for _ in range(2)
            ),
            key=lambda got: got[0],
        )
        stages = {k: v / loop_c for k, v in staged[1].items()}
        stages["rest (pipeline, orchestration)"] = (staged[0] - sum(staged[1].values())) / loop_c
        log(
            f"  {name}: where the time goes, in plain loops' worth (CPU): "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
            + f"; total {staged[0] / loop_c:.2f} (2N bare calls of fn: {bare_c / loop_c:.2f})"
        )
        for label, (t, cpu, rep) in runs.items():
            row_ = {
                "section": "cheap",
                "function": name,
                "elements": n,
                "call_us": t_call / 200 * 1e6,
                "checker": f"oracles mode={label}",
                "seconds": t,
                "cpu_seconds": cpu,
                "plain_loop_s": loop_w,
                "plain_loop_cpu_s": loop_c,
                "ratio_to_plain_loop": t / loop_w,
                "cpu_ratio_to_plain_loop": cpu / loop_c,
                "ok": rep.ok,
                "fn_evaluations": int(rep.context["fn evaluations"]),
            }
            if label == "exhaustive":
                row_["stages_in_plain_loops"] = stages
                row_["bare_2n_calls_in_plain_loops"] = bare_c / loop_c
            rows.append(row_)
            log(
                f"  {name}: {n} elements, {t_call / 200 * 1e6:.0f} us a call; plain loop "
                f"{loop_w:.3f} s; {label} {t:.3f} s = {t / loop_w:.2f}x the loop (CPU time "
                f"{cpu / loop_c:.2f}x; {row_['fn_evaluations']} evaluations = "
                f"{row_['fn_evaluations'] / (2 * n):.2f}x 2N; ok={rep.ok})"
            )
    return rows


def bench_fast(hiddens, log, seeds=(0, 1, 2)):
    """The fast (default) mode's goals on the sigmoid MLP, with torch's and jax's checkers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fast_mode as fm

    rows = []
    goals = {128: (0.2, 0.3), 1280: (1.0, 2.0)}
    for hidden in hiddens:
        X, y, params, fn, sites = fm.workload(hidden)
        n = sum(p.size for p in params)
        log(f"\n== fast mode, 784-{hidden}-10 sigmoid, {n} parameters; {load()}")
        right = fm.vjp_with(X, y)
        fm.run_gradcheck(X, y, right, params)  # the first calls import and compile: untimed
        fm.run_check_grads(X, y, right, params)
        fm.run_ours(fn, right, params)
        t_gc, gc_false = fm.run_gradcheck(X, y, right, params)
        t_cg, cg_false = fm.run_check_grads(X, y, right, params)
        forward = fm.forward_seconds(fn, params)
        anchors = {"gradcheck_fast_s": t_gc, "check_grads_s": t_cg, "forward_s": forward}

        def ratios(t, anchors=anchors):
            return {
                "vs_gradcheck_fast": t / anchors["gradcheck_fast_s"],
                "vs_check_grads": t / anchors["check_grads_s"],
                "forward_passes": t / anchors["forward_s"],
            }

        correct = [fm.run_ours(fn, right, params, seed=k) for k in seeds]
        t_ok = float(np.median([c[0] for c in correct]))
        ok_all = all(c[2].ok for c in correct)
        evals_ok = [int(c[2].context["fn evaluations"]) for c in correct]
        fast_ok = [int(c[2].context["fast mode evaluations"]) for c in correct]
        single, evals_single, fast_single = [], [], []
        for k, j in enumerate(sites[: len(seeds)]):
            t, failing, rep = fm.run_ours(fn, fm.vjp_with(X, y, [(j, 1e-7)]), params, seed=k)
            single.append((t, failing == {(0, j)}))
            evals_single.append(int(rep.context["fn evaluations"]))
            fast_single.append(int(rep.context["fast mode evaluations"]))
        t_single = float(np.median([t for t, _ in single]))
        pair = (sites[0], sites[-1])
        t_two, failing, _ = fm.run_ours(
            fn, fm.vjp_with(X, y, [(pair[0], 1e-6), (pair[1], -1e-6)]), params
        )
        gc_t, gc_hit = fm.run_gradcheck(X, y, fm.vjp_with(X, y, [(sites[0], 1e-7)]), params)
        cg_t, cg_hit = fm.run_check_grads(X, y, fm.vjp_with(X, y, [(sites[0], 1e-7)]), params)
        goal_ok, goal_loc = goals[hidden]
        row_ = {
            "section": "fast",
            "hidden": hidden,
            "parameters": n,
            "anchors": anchors,
            "correct_s_median": t_ok,
            "correct_pass": ok_all,
            "correct_ratios": ratios(t_ok),
            "goal_correct_s": goal_ok,
            "single_1e-7_s_median": t_single,
            "single_1e-7_named": f"{sum(h for _, h in single)}/{len(single)}",
            "single_ratios": ratios(t_single),
            "goal_localize_s": goal_loc,
            "two_1e-6_named_both": {(0, pair[0]), (0, pair[1])} <= failing,
            "two_1e-6_s": t_two,
            "correct_evaluations": evals_ok,
            "correct_fast_mode_evaluations": fast_ok,
            "single_1e-7_evaluations": evals_single,
            "single_1e-7_fast_mode_evaluations": fast_single,
            "gradcheck_fast_detects_1e-7": gc_hit,
            "check_grads_detects_1e-7": cg_hit,
            "anchors_false_alarm": bool(gc_false or cg_false),
        }
        rows.append(row_)
        log(
            f"  anchors: forward {forward * 1e3:.2f} ms, gradcheck(fast_mode=True) {t_gc:.3f} s, "
            f"check_grads {t_cg:.3f} s; on 1e-7: gradcheck {'detects' if gc_hit else 'misses'} "
            f"({gc_t:.3f} s), check_grads {'detects' if cg_hit else 'misses'} ({cg_t:.3f} s)"
        )
        log(
            f"  correct: {t_ok:.3f} s median of {len(seeds)} (pass: {ok_all}) = "
            f"{t_ok / t_gc:.1f}x gradcheck fast, {t_ok / t_cg:.1f}x check_grads, "
            f"{t_ok / forward:.0f} forward passes; calls of fn {evals_ok} (the fast mode's "
            f"{fast_ok}); goal < {goal_ok} s"
        )
        log(
            f"  one element off by 1e-7: named {row_['single_1e-7_named']}, {t_single:.3f} s "
            f"median = {t_single / t_gc:.1f}x gradcheck fast, {t_single / forward:.0f} forward "
            f"passes; calls of fn {evals_single} (the fast mode's {fast_single}); "
            f"goal < {goal_loc} s"
        )
        log(
            f"  two elements off by +-1e-6: both named {row_['two_1e-6_named_both']} "
            f"({t_two:.3f} s)"
        )
        # A wrong formula: 1% off in every element of every parameter.
        t_all, _, rep = fm.run_ours(fn, fm.vjp_with(X, y, everywhere=0.01), params)
        evals_all = int(rep.context["fn evaluations"])
        row_["everywhere_1pct"] = {
            "seconds": t_all,
            "failed": not rep.ok,
            "evaluations": evals_all,
            "per_element": evals_all / n,
            "ratios": ratios(t_all),
        }
        log(
            f"  every element off by 1%: {'failed' if not rep.ok else 'PASSED (wrong)'} in "
            f"{t_all:.3f} s = {t_all / forward:.0f} forward passes, {evals_all} calls of fn = "
            f"{evals_all / n:.3f} per element; goal <= ~3 per element + a constant"
        )
    return rows


MEMORY_CHILD = """
import resource, sys, time
import numpy as np
sys.path.insert(0, {bench!r})


def reset_peak():
    # ru_maxrss is inherited across fork and exec (Linux keeps the parent's high-water
    # mark): the peak is read from VmHWM instead, reset to the current RSS first.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


n = int(float(sys.argv[1]))
x = np.random.default_rng(0).uniform(-2.0, 2.0, n)
import oracles
from bench_checkers import half_tanh_sq, half_tanh_sq_vjp
half_tanh_sq(x)
half_tanh_sq_vjp(1.0, x)
reset_peak()
half_tanh_sq(x)
base_fn = peak_bytes()
reset_peak()
half_tanh_sq(x)
half_tanh_sq_vjp(1.0, x)
base = peak_bytes()
exact = reset_peak()
t = time.perf_counter()
ok = oracles.check_vjp(half_tanh_sq, half_tanh_sq_vjp, (x,), mode=sys.argv[2]).ok
seconds = time.perf_counter() - t
peak = peak_bytes()
print(base_fn, base, peak, ok, seconds, exact)
"""


def bench_memory(sizes, log):
    """Peak resident memory of a check beyond the input and the user's code (child per size).

    Two baselines, both taken in the child before the check: the peak after
    ``fn(x)`` alone, and after ``vjp(1, x)`` as well (the user's VJP holds
    four arrays of the input's size at once: ``tanh(x)``, its square, the
    product and the result). What the check holds while it calls the user's
    code comes on top of what that code allocates itself: the second figure is
    the check's own, the first includes the VJP's temporaries.
    """
    rows = []
    log(f"\n== memory: check_vjp of 0.5 sum(tanh(x)^2), one input of N float64; {load()}")
    code = MEMORY_CHILD.format(bench=str(Path(__file__).resolve().parent))
    for n in sizes:
        for mode in ("auto",):
            done = subprocess.run(
                [sys.executable, "-c", code, str(n), mode],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
            )
            if done.returncode != 0:
                log(f"  N={n:.0e}: child failed: {done.stderr.strip()[-300:]}")
                continue
            base_fn, base, peak, ok, seconds, exact = done.stdout.split()
            size = 8 * n
            above_fn = (int(peak) - int(base_fn)) / size
            above_user = (int(peak) - int(base)) / size
            rows.append(
                {
                    "section": "memory",
                    "elements": n,
                    "mode": mode,
                    "input_MB": size / 1e6,
                    "rss_after_fn_MB": int(base_fn) / 1e6,
                    "rss_after_fn_and_vjp_MB": int(base) / 1e6,
                    "rss_peak_MB": int(peak) / 1e6,
                    "extra_MB": (int(peak) - int(base_fn)) / 1e6,
                    "extra_in_input_copies": above_fn,
                    "extra_above_user_code_in_input_copies": above_user,
                    "goal_copies": 4,
                    "peak_from": "VmHWM, reset before each measure"
                    if exact == "True"
                    else "ru_maxrss (includes the parent's high-water mark)",
                    "ok": ok == "True",
                    "seconds": float(seconds),
                }
            )
            log(
                f"  N={n:.0e} (input {size / 1e6:.0f} MB), mode={mode}: peak RSS "
                f"{int(peak) / 1e6:.0f} MB = {above_user:.2f} input copies above the user's "
                f"code (fn and vjp run once before), {above_fn:.2f} above fn alone; goal <= 4; "
                f"ok={ok}; {float(seconds):.1f} s"
            )
    return rows


def bench_dask(log):
    """Exhaustive mode at h=28 on 2 workers (Dask LocalCluster, a process pool) vs serial.

    The Dask clusters run 2 worker processes of 1 thread each, once with
    Dask's defaults and once with the workers' statistical profiler off
    (``distributed.worker.profile.enabled``: it samples the running thread's
    stack every 10 ms, which cost a chunk of this check up to 40% more CPU
    time in one measurement). The CPU seconds of this process and of the
    workers are recorded too: on a machine that other jobs load, they say
    what 2 free cores would give. The verdicts (elements flagged) must be
    the serial run's.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - the benchmark says so
        log("\n== dask: distributed is not installed; skipped")
        return []
    X, y, params, fn, sites = workload(28)
    plants = list(zip(sites, LEVELS, strict=True))
    vjp = planted_vjp(X, y, plants)
    log(f"\n== exhaustive mode on 2 workers (Dask LocalCluster, process pool), h=28; {load()}")
    n = sum(p.size for p in params)
    c = time.process_time()
    t_serial, failing_serial, report = run_ours("exhaustive", fn, vjp, params)
    cpu_serial = time.process_time() - c
    # The 2N-forward floor, from 500 calls timed right after (wall and CPU).
    t, c = time.perf_counter(), time.process_time()
    floor_seconds(fn, params, 500)
    floor_wall = (time.perf_counter() - t) / 500 * 2 * n
    floor_cpu = (time.process_time() - c) / 500 * 2 * n
    evaluations = int(report.context["fn evaluations"])
    log(
        f"  serial {t_serial:.2f} s (CPU {cpu_serial:.2f} s) = {t_serial / floor_wall:.2f}x the "
        f"2N-forward floor (CPU {cpu_serial / floor_cpu:.2f}x; {evaluations} evaluations = "
        f"{evaluations / (2 * n):.2f}x 2N); {load()}"
    )
    out = {
        "section": "dask",
        "hidden": 28,
        "serial_s": t_serial,
        "serial_cpu_s": cpu_serial,
        "floor_s": floor_wall,
        "floor_cpu_s": floor_cpu,
        "serial_ratio_to_floor": t_serial / floor_wall,
        "serial_cpu_ratio_to_floor": cpu_serial / floor_cpu,
        "fn_evaluations": evaluations,
        "load_at_start": load(),
    }
    same = True
    for label, config in (
        ("dask_2_workers", {}),
        ("dask_2_workers_profiler_off", {"distributed.worker.profile.enabled": False}),
    ):
        with (
            dask.config.set(config),
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            executor = client.get_executor()
            workers0, parent0 = client.run(time.process_time), time.process_time()
            t, failing, _ = run_ours(Exhaustive(executor=executor), fn, vjp, params)
            parent_cpu = time.process_time() - parent0
            workers1 = client.run(time.process_time)
            workers_cpu = sum(workers1[k] - workers0[k] for k in workers0)
        same &= failing == failing_serial
        out[f"{label}_s"] = t
        out[f"{label}_speedup"] = t_serial / t
        # CPU seconds do not depend on the other jobs on the machine: with 2 free cores the
        # wall time would be about parent + workers / 2.
        out[f"{label}_parent_cpu_s"] = parent_cpu
        out[f"{label}_workers_cpu_s"] = workers_cpu
        out[f"{label}_speedup_on_free_cores"] = cpu_serial / (parent_cpu + workers_cpu / 2)
        log(
            f"  {label.replace('_', ' ')}: {t:.2f} s, speedup {t_serial / t:.2f}x; CPU: this "
            f"process {parent_cpu:.1f} s, the workers {workers_cpu:.1f} s (serial {cpu_serial:.1f}"
            f" s: {cpu_serial / (parent_cpu + workers_cpu / 2):.2f}x on 2 free cores); same "
            f"elements flagged: {failing == failing_serial}; {load()}"
        )
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(int, 0).result()  # started before the clock
        t, failing, _ = run_ours(Exhaustive(executor=pool), fn, vjp, params)
    same &= failing == failing_serial
    out["process_pool_2_s"] = t
    out["process_pool_2_speedup"] = t_serial / t
    log(
        f"  process pool (2, spawn): {t:.2f} s, speedup {t_serial / t:.2f}x; same elements "
        f"flagged: {failing == failing_serial}; {load()}"
    )
    out["speedup"] = out["dask_2_workers_speedup"]  # the key of earlier runs: Dask's defaults
    out["same_verdicts"] = same
    out["load_at_end"] = load()
    return [out]


def plants_by_level(sites):
    return list(zip(LEVELS, sites, strict=True))


def row(checker, hidden, seconds, detected, false_alarm, timings=None, extra=None):
    out = {
        "checker": checker,
        "hidden": hidden,
        "seconds": seconds,
        "detected": detected,
        "false_alarm_on_correct_vjp": false_alarm,
    }
    if timings:
        out["seconds_per_planted_run"] = timings
    out.update(extra or {})
    return out


def table(rows):
    short = {
        "named": "named",
        "missed": "-",
        "detected": "yes",
        "not run": "n/a",
        "detected (not localized)": "yes",
    }
    head = (
        f"{'checker':<58} {'h':>4} {'seconds':>9} {'/slow':>7}  "
        + " ".join(f"{lv:>6g}" for lv in LEVELS)
        + "  false alarm"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = (
            "n/a"
            if r["false_alarm_on_correct_vjp"] is None
            else ("YES" if r["false_alarm_on_correct_vjp"] else "no")
        )
        secs = f"{r['seconds']:.3f}" if r["seconds"] < 10 else f"{r['seconds']:.1f}"
        if r.get("measured_in_this_run") is False:
            secs = f"({r['seconds']:.0f})*"
        lines.append(
            f"{r['checker'][:58]:<58} {r['hidden']:>4} {secs:>9} "
            f"{r['ratio_to_gradcheck_slow']:>7.3f}  "
            + " ".join(f"{short[r['detected'][f'{lv:g}']]:>6}" for lv in LEVELS)
            + f"  {flag}"
        )
    if any(r.get("measured_in_this_run") is False for r in rows):
        lines.append(
            f"* NOT measured in this run: gradcheck slow at h=128 takes ~90 s per call; the figure "
            f"({GRADCHECK_SLOW_128_PREVIOUS:.0f} s) is the one measured earlier on this machine "
            "(issue 7). Ratios at h=128 use it. Run with --full to measure it."
        )
    lines.append(
        "Columns 1e-3 .. 1e-7: relative size of a single-element mistake in dW1. named = the "
        "checker pointed at the wrong element; yes = it failed without saying where; - = missed."
    )
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), sharey=True)
    checkers = list(dict.fromkeys(r["checker"] for r in rows))
    for ax, hidden in zip(axes, (28, 128), strict=True):
        sub = {r["checker"]: r for r in rows if r["hidden"] == hidden}
        ys, xs, colors, labels = [], [], [], []
        for k, c in enumerate(checkers):
            r = sub.get(c)
            if r is None:
                continue
            found = [
                lv
                for lv in LEVELS
                if r["detected"][f"{lv:g}"] in ("named", "detected", "detected (not localized)")
            ]
            smallest = f"finds {min(found):g}" if found else "finds none"
            if any(r["detected"][f"{lv:g}"] == "not run" for lv in LEVELS):
                smallest = "not run (earlier figure)"
            named = all(r["detected"][f"{lv:g}"] != "detected (not localized)" for lv in found)
            ys.append(k)
            xs.append(r["seconds"])
            colors.append(
                "#999999"
                if r.get("measured_in_this_run") is False
                else ("#1b7837" if found and named else "#b2182b")
            )
            label = smallest + (" (named)" if found and named else "")
            planted = r.get("seconds_per_planted_run", {}).get("1e-06")
            if planted is not None and "fast" in c and "oracles" in c:
                label += f"; {planted:.2f} s to name a 1e-6 mistake"
            labels.append(label)
        ax.barh(ys, xs, color=colors)
        for yv, xv, lab in zip(ys, xs, labels, strict=True):
            ax.text(xv * 1.1, yv, f"{xv:.3g} s, {lab}", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 3e3)
        ax.set_title(f"784-{hidden}-10 MLP, 64 digits, float64")
        ax.set_xlabel("wall time (s, log scale)")
    axes[0].set_yticks(range(len(checkers)))
    axes[0].set_yticklabels([_wrap(c) for c in checkers], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(
        "Gradient checkers on the same hand-written VJP: time, and smallest single-element "
        "mistake (relative) found",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text, width=40):
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


SECTIONS = ("mlp", "cheap", "fast", "memory", "dask")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="also gradcheck slow, the process pool and the NumPy loop at h=128 "
        "(adds about 5 minutes)",
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[28, 128], choices=[28, 128])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="mlp: the checkers side by side; cheap: exhaustive mode against the plain loop on "
        "cheap functions; fast: the fast mode's goals (sigmoid MLP, H=128 and 1280); memory: "
        "peak RSS at N=1e6 and 1e7; dask: a 2-worker LocalCluster",
    )
    parser.add_argument("--fast-hidden", type=int, nargs="+", default=[128, 1280])
    parser.add_argument("--memory-sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import jax
    import torch

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)

    started = datetime.datetime.now(datetime.UTC)
    info = machine()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"bench_checkers: {started:%Y-%m-%d %H:%M} UTC; {info['uname']}; commit {commit}")
    print(
        f"  CPU: {info.get('cpu')}; {info['cpu_count']} logical CPUs; python {info['python']}, "
        f"numpy {info['numpy']}, torch {info.get('torch')}, jax {info.get('jax')}"
    )
    print(f"  load: {load()}")

    def log(line):
        print(line, flush=True)

    rows, extra = [], []
    if "mlp" in args.sections:
        for hidden in args.hidden:
            rows += bench(hidden, args.full, log)
    if "cheap" in args.sections:
        extra += bench_cheap(log)
    if "fast" in args.sections:
        extra += bench_fast(args.fast_hidden, log)
    if "memory" in args.sections:
        extra += bench_memory([int(n) for n in args.memory_sizes], log)
    if "dask" in args.sections:
        extra += bench_dask(log)
    if rows:
        print()
        print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "date_utc": started.isoformat(timespec="seconds"),
        "commit": commit,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": info,
        "load_at_start": None,
        "load_at_end": load(),
        "workload": "MLP 784-h-10 tanh, mean cross-entropy, float64, 64 bundled MNIST digits, "
        "init_params(seed=0); mistakes planted in dW1 at elements of median |grad|",
        "levels": [f"{lv:g}" for lv in LEVELS],
        "results": rows,
        "sections": extra,
    }
    name = "checkers.json" if set(args.sections) == set(SECTIONS) else "checkers-partial.json"
    (args.out / name).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if rows and {28, 128} <= set(args.hidden):
        plot(rows, args.out / "checkers.png")
    print(f"\nwrote {args.out / name}")


if __name__ == "__main__":
    main()
