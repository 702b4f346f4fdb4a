"""The drop-ins against the frameworks' own checkers, on custom gradients (issue 16).

In one process: custom ``torch.autograd.Function``\\ s through
``oracles.torch.gradcheck`` and ``torch.autograd.gradcheck`` (both in their
default mode and with ``fast_mode=True``), and ``jax.custom_vjp`` functions
through ``oracles.jax.check_grads`` and ``jax.test_util.check_grads``, all
with the same arguments. The five kernels of :mod:`oracles.verify.kernels`
(affine, softmax-cross-entropy, layer norm, a ReLU at exact zeros, a
float32-only kernel), each correct and with one element of one gradient off
by a relative 1e-3, 1e-4, ..., 1e-8. For each checker and function: whether
the correct version passes (a *false alarm* if not), the smallest planted
error caught, and the median time of ``--repeats`` checks of the correct
version, the checkers taking turns (with the ratio to the framework's own
checker in the same mode, measured in the same process).

The first four run in float64 (JAX's 64-bit mode on in a scope). The
kernel runs only in float32: torch's kernel refuses any other dtype, jax's
casts to float32 inside; the drop-ins get ``reference_func=`` (the same math
without the kernel), the frameworks' checkers run it as it is.

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_frameworks.py | tee
benchmarks/results/frameworks.txt`` (a few minutes on 2 cores; ``--size``
sets the kernels' rows, default 6). Writes
``benchmarks/results/frameworks.json`` and ``frameworks.png`` and prints the
table of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from oracles.verify import kernels

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ERRORS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
FUNCTIONS = kernels.NAMES


# --- the kernels (oracles.verify.kernels), each with a planted error ------------------------------


def _torch_functions(torch, size):
    """``{name: (make(err) -> func, inputs, reference_func)}``, ``err`` planted in one element
    (of median magnitude among the nonzero ones, for an all-ones cotangent)."""
    out = {}
    for name in FUNCTIONS:
        dtype = torch.float32 if name == "float32_kernel" else torch.float64
        inputs = kernels.torch_inputs(name, seed=1, size=size, dtype=dtype)
        leaves = [t for t in inputs if t.requires_grad]
        y = kernels.torch_function(name).apply(*inputs)
        g = torch.autograd.grad(y, leaves, torch.ones_like(y))[kernels.PLANTED[name]]
        index = kernels.plant_index(g.detach().numpy())

        def make(err, name=name, index=index):
            return kernels.torch_function(name, err, index).apply

        reference = kernels.float32_kernel_reference if name == "float32_kernel" else None
        out[name] = (make, inputs, reference)
    return out


def _jax_functions(jax, jnp, size):
    """As :func:`_torch_functions`, for jax ``custom_vjp`` rules (64-bit mode on)."""
    out = {}
    for name in FUNCTIONS:
        inputs = kernels.kernel_inputs(name, seed=1, size=size)
        labels = None
        if name == "softmax_ce":
            inputs, labels = inputs[:1], inputs[1]
        if name == "float32_kernel":
            inputs = tuple(a.astype(np.float32) for a in inputs)
        y, pullback = jax.vjp(kernels.jax_rule(name, labels=labels), *inputs)
        index = kernels.plant_index(pullback(jnp.ones_like(y))[kernels.PLANTED[name]])

        def make(err, name=name, index=index, labels=labels):
            return kernels.jax_rule(name, err, index, labels=labels)

        reference = kernels.float32_kernel_reference if name == "float32_kernel" else None
        out[name] = (make, inputs, reference)
    return out


# --- running -------------------------------------------------------------------------------------


def _verdict(call):
    """``(passed, seconds, error)``: ``passed`` None when the checker raised something else."""
    started = time.perf_counter()
    try:
        ok = call()
        passed = ok is None or bool(ok)
        error = None
    except AssertionError:  # GradientMismatch, InconclusiveCheck, jax's check_close
        passed, error = False, None
    except Exception as exc:  # noqa: BLE001 - the checker's own refusal, recorded
        passed, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return passed, time.perf_counter() - started, error


def _row(checker, name, run, seconds):
    """Correct version, then every planted error: the row of the results.

    ``seconds``: the median time of the correct version's check, measured by :func:`_times`.
    """
    ok, _, error = _verdict(lambda: run(0.0))
    caught = {}
    for err in ERRORS:
        passed, _, e = _verdict(lambda err=err: run(err))
        caught[f"{err:g}"] = None if passed is None else not passed
        error = error or e
    # Caught down to: every planted error at least this large failed the check. A checker that
    # fails the correct version too (a false alarm) catches nothing: its failures mean nothing.
    smallest = None
    for e in ERRORS:
        if ok is not True or not caught[f"{e:g}"]:
            break
        smallest = e
    row = {
        "checker": checker,
        "function": name,
        "correct_passes": ok,
        "false_alarm": ok is False,
        "caught": caught,
        "smallest_caught": smallest,
        "seconds": seconds,
        "error": error,
    }
    verdict = "pass" if ok else "FALSE ALARM" if ok is False else "error"
    print(
        f"  {checker:<40} {name:<15} correct: {verdict:<11}"
        f"  smallest caught: {smallest if smallest is not None else '-':<8}  {seconds:7.3f} s"
        + (f"  ({error})" if error else ""),
        flush=True,
    )
    return row


def _times(checkers, repeats):
    """Median seconds of each checker's check of the correct version, the checkers taking
    turns (``repeats`` rounds, the order reversed every other round) so that a change of
    the machine's load falls on all of them alike. Each call builds the function anew
    (a fresh Function class, a fresh custom_vjp): nothing is cached from a previous check."""
    times = {c: [] for c in checkers}
    for k in range(repeats):
        for c in checkers if k % 2 == 0 else list(reversed(checkers)):
            times[c].append(_verdict(lambda c=c: checkers[c](0.0))[1])
    return {c: float(np.median(t)) for c, t in times.items()}


def _rows(name, checkers, repeats):
    seconds = _times(checkers, repeats)
    return [_row(c, name, run, seconds[c]) for c, run in checkers.items()]


def run_torch(size, repeats):
    import torch

    import oracles.torch as ot

    warm = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(torch.sin, (warm,))  # first calls pay for imports and caches
    ot.gradcheck(torch.sin, (warm,))
    rows = []
    for name, (make, inputs, reference) in _torch_functions(torch, size).items():

        def theirs(err, make=make, inputs=inputs, fast=False):
            return torch.autograd.gradcheck(
                make(err), inputs, raise_exception=False, fast_mode=fast
            )

        def ours(err, make=make, inputs=inputs, reference=reference, fast=False):
            return ot.gradcheck(make(err), inputs, reference_func=reference, fast_mode=fast)

        checkers = {
            "torch.autograd.gradcheck": theirs,
            "oracles.torch.gradcheck": ours,
            "torch.autograd.gradcheck(fast_mode=True)": lambda e, f=theirs: f(e, fast=True),
            "oracles.torch.gradcheck(fast_mode=True)": lambda e, f=ours: f(e, fast=True),
        }
        rows += _rows(name, checkers, repeats)
    return rows


def run_jax(size, repeats):
    import jax
    import jax.numpy as jnp
    import jax.test_util

    import oracles.jax as oj
    from oracles.backends.jax import x64_enabled

    rows = []
    with x64_enabled(jax):
        warm = np.linspace(-1.0, 1.0, 5)
        jax.test_util.check_grads(jnp.sin, (warm,), 1, modes=("rev",))
        oj.check_grads(jnp.sin, (warm,), 1, modes=("rev",))
        for name, (make, args, reference) in _jax_functions(jax, jnp, size).items():

            def theirs(err, make=make, args=args):
                return jax.test_util.check_grads(make(err), args, 1, modes=("rev",))

            def ours(err, make=make, args=args, reference=reference):
                return oj.check_grads(make(err), args, 1, modes=("rev",), reference_func=reference)

            checkers = {"jax.test_util.check_grads": theirs, "oracles.jax.check_grads": ours}
            rows += _rows(name, checkers, repeats)
    return rows


#: Each drop-in's time is given as a multiple of its framework's checker (same mode).
ANCHORS = {
    "oracles.torch.gradcheck": "torch.autograd.gradcheck",
    "oracles.torch.gradcheck(fast_mode=True)": "torch.autograd.gradcheck(fast_mode=True)",
    "oracles.jax.check_grads": "jax.test_util.check_grads",
}


def _ratios(rows):
    seconds = {(r["checker"], r["function"]): r["seconds"] for r in rows}
    for r in rows:
        anchor = seconds.get((ANCHORS.get(r["checker"]), r["function"]))
        r["time_vs_framework"] = None if anchor is None else r["seconds"] / anchor


#: The checkers of the table, in its order.
CHECKERS = (
    "torch.autograd.gradcheck",
    "oracles.torch.gradcheck",
    "torch.autograd.gradcheck(fast_mode=True)",
    "oracles.torch.gradcheck(fast_mode=True)",
    "jax.test_util.check_grads",
    "oracles.jax.check_grads",
)


def table(rows):
    """The README table: per checker and function, false alarm or smallest caught, and time."""

    def cell(r):
        if r["correct_passes"] is None:
            return "error"
        ratio = f" ({r['time_vs_framework']:.1f}x)" if r.get("time_vs_framework") else ""
        time_ = f"{r['seconds']:.3f} s{ratio}"
        if r["false_alarm"]:
            return f"**false alarm**; {time_}"
        small = f"{r['smallest_caught']:.0e}" if r["smallest_caught"] is not None else "none"
        return f"{small}; {time_}"

    lines = [
        "| checker | " + " | ".join(FUNCTIONS) + " |",
        "|---|" + "---|" * len(FUNCTIONS),
    ]
    for c in CHECKERS:
        cells = []
        for name in FUNCTIONS:
            match = [r for r in rows if r["checker"] == c and r["function"] == name]
            cells.append(cell(match[0]) if match else "-")
        if any(cell != "-" for cell in cells):
            lines.append(f"| `{c}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checkers = [c for c in CHECKERS if any(r["checker"] == c for r in rows)]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    grid = np.full((len(FUNCTIONS), len(checkers)), np.nan)
    for r in rows:
        i, j = FUNCTIONS.index(r["function"]), checkers.index(r["checker"])
        grid[i, j] = -np.log10(r["smallest_caught"]) if r["smallest_caught"] else 2.0
    im = ax.imshow(grid, cmap="viridis", vmin=2, vmax=8, aspect="auto")
    for r in rows:
        i, j = FUNCTIONS.index(r["function"]), checkers.index(r["checker"])
        text = f"{r['smallest_caught']:.0e}" if r["smallest_caught"] else "none"
        if r["false_alarm"]:
            text = "FALSE\nALARM"
        ax.text(
            j, i, text, ha="center", va="center", fontsize=8, color="k" if grid[i, j] > 5 else "w"
        )
    labels = [c.replace("(fast_mode=True)", "\n(fast_mode=True)") for c in checkers]
    ax.set_xticks(range(len(checkers)), labels, rotation=0, fontsize=7)
    ax.set_yticks(range(len(FUNCTIONS)), FUNCTIONS, fontsize=8)
    ax.set_title(
        "caught down to: relative error planted in one element (1e-3 .. 1e-8); none = not 1e-3",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="-log10(smallest caught)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _commit():
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    parser.add_argument("--only", choices=("torch", "jax"), default=None)
    parser.add_argument("--size", type=int, default=6, help="rows of the kernels' inputs")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed checks of each correct version (median)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    started = time.perf_counter()
    rows = []
    if args.only in (None, "torch"):
        print("torch (float64; the kernel float32):", flush=True)
        rows += run_torch(args.size, args.repeats)
    if args.only in (None, "jax"):
        print("jax (64-bit mode in a scope; the kernel float32):", flush=True)
        rows += run_jax(args.size, args.repeats)
    _ratios(rows)
    total = time.perf_counter() - started
    import jax
    import torch

    meta = {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            ["OPENBLAS_NUM_THREADS=1 python benchmarks/bench_frameworks.py"]
            + list(sys.argv[1:] if argv is None else argv)
        ),
        "size": args.size,
        "repeats": args.repeats,
        "commit": _commit(),
        "machine": f"{platform.system()} {platform.machine()} {_cpu_model()}".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
        "seconds_total": total,
        "errors_planted": list(ERRORS),
        "planted_in": (
            "one element of one gradient (dW, dz, dx, dx, dx; oracles.verify.kernels.PLANTED): "
            "the element of median magnitude among the nonzero ones for an all-ones cotangent"
        ),
    }
    out = {"meta": meta, "rows": rows}
    tmp = args.out / "frameworks.json.tmp"
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.out / "frameworks.json")
    plot(rows, args.out / "frameworks.png")
    print()
    print(table(rows))
    print(f"\n{total:.0f} s in all; load average {load0[0]:.1f} at the start", file=sys.stderr)


if __name__ == "__main__":
    main()
