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

Run (from the repository root)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_checkers.py          # ~4 minutes
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_checkers.py --full   # + gradcheck slow and
                                                                        #   the NumPy loop at h=128

Writes ``benchmarks/results/checkers.json`` and ``checkers.png`` and prints a
table with the date and machine.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="also gradcheck slow, the process pool and the NumPy loop at h=128 "
        "(adds about 5 minutes)",
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[28, 128], choices=[28, 128])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import jax
    import torch

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)

    started = datetime.datetime.now(datetime.UTC)
    info = machine()
    print(f"bench_checkers: {started:%Y-%m-%d %H:%M} UTC; {info['uname']}")
    print(
        f"  CPU: {info.get('cpu')}; {info['cpu_count']} logical CPUs; python {info['python']}, "
        f"numpy {info['numpy']}, torch {info.get('torch')}, jax {info.get('jax')}"
    )
    print(f"  load: {load()}")
    rows = []
    for hidden in args.hidden:
        rows += bench(hidden, args.full, lambda s: print(s, flush=True))
    print()
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": info,
        "load_at_end": load(),
        "workload": "MLP 784-h-10 tanh, mean cross-entropy, float64, 64 bundled MNIST digits, "
        "init_params(seed=0); mistakes planted in dW1 at elements of median |grad|",
        "levels": [f"{lv:g}" for lv in LEVELS],
        "results": rows,
    }
    (args.out / "checkers.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(rows, args.out / "checkers.png")
    print(f"\nwrote {args.out / 'checkers.json'} and {args.out / 'checkers.png'}")


if __name__ == "__main__":
    main()
