"""The drop-ins against the frameworks' own checkers, on custom gradients (issue 16).

In one process: custom ``torch.autograd.Function``\\ s through
``oracles.torch.gradcheck`` and ``torch.autograd.gradcheck``, and
``jax.custom_vjp`` functions through ``oracles.jax.check_grads`` and
``jax.test_util.check_grads``, all with the same arguments. Five functions
(affine, softmax-cross-entropy, layer norm, a ReLU at exact zeros, a
float32-only kernel), each correct and with one element of one gradient off
by a relative 1e-3, 1e-4, ..., 1e-8. For each checker and function: whether
the correct version passes (a *false alarm* if not), the smallest planted
error caught, and the time of the check of the correct version (with its
ratio to the framework's own checker, measured in the same process).

The first four run in float64 (JAX's 64-bit mode on in a scope). The
kernel runs only in float32: torch's kernel refuses any other dtype, jax's
casts to float32 inside; the drop-ins get ``reference_func=`` (the same math
without the kernel), the frameworks' checkers run it as it is.

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_frameworks.py`` (a few
minutes on 2 cores). Writes ``benchmarks/results/frameworks.json`` and
``frameworks.png`` and prints the table of the README.
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

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ERRORS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
FUNCTIONS = ("affine", "softmax_ce", "layernorm", "relu_at_zeros", "float32_kernel")


# --- torch ---------------------------------------------------------------------------------------


def _torch_functions(torch):
    """``{name: (make(err) -> func, inputs, reference_func)}``, ``err`` planted in one element."""

    def planted(g, err, where):
        if not err:
            return g
        g = g.clone()
        g.view(-1)[where[0]] = g.view(-1)[where[0]] * (1 + err)
        return g

    where = [1]  # set below: a typical element of the planted gradient

    def affine(err):
        class Affine(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, W, b):
                ctx.save_for_backward(x, W)
                return x @ W + b

            @staticmethod
            def backward(ctx, g):
                x, W = ctx.saved_tensors
                return g @ W.T, planted(x.T @ g, err, where), g.sum(0)

        return Affine.apply

    def softmax_ce(err):
        class SoftmaxCE(torch.autograd.Function):
            @staticmethod
            def forward(ctx, z, y):
                m = z.amax(dim=1, keepdim=True)
                lse = m + torch.log(torch.exp(z - m).sum(1, keepdim=True))
                ctx.save_for_backward(torch.exp(z - lse), y)
                return (lse.squeeze(1) - z.gather(1, y[:, None]).squeeze(1)).mean()

            @staticmethod
            def backward(ctx, g):
                p, y = ctx.saved_tensors
                d = p.clone()
                d[torch.arange(len(y)), y] -= 1
                return planted(d * g / len(y), err, where), None

        return SoftmaxCE.apply

    def layernorm(err):
        class LayerNorm(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, gamma, beta):
                mu = x.mean(-1, keepdim=True)
                rstd = 1 / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
                xh = (x - mu) * rstd
                ctx.save_for_backward(xh, rstd, gamma)
                return xh * gamma + beta

            @staticmethod
            def backward(ctx, g):
                xh, rstd, gamma = ctx.saved_tensors
                gx = g * gamma
                dx = rstd * (gx - gx.mean(-1, keepdim=True) - xh * (gx * xh).mean(-1, keepdim=True))
                return planted(dx, err, where), (g * xh).sum(0), g.sum(0)

        return LayerNorm.apply

    def relu(err):
        class Relu(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x.clamp(min=0)

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return planted(g * (x > 0).to(g.dtype), err, where)

        return Relu.apply

    def kernel(err):
        class Kernel(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                if x.dtype != torch.float32 or w.dtype != torch.float32:
                    raise TypeError("this kernel is compiled for float32 only")
                ctx.save_for_backward(x, w)
                return torch.tanh(x @ w)

            @staticmethod
            def backward(ctx, g):
                x, w = ctx.saved_tensors
                d = g * (1 - torch.tanh(x @ w) ** 2)
                return planted(d @ w.T, err, where), x.T @ d

        return Kernel.apply

    gen = torch.Generator().manual_seed(1)

    def r(*shape, dtype=torch.float64):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    x[x.abs() < 0.5] = 0.0  # about a third of the elements exactly at the kink
    cases = {
        "affine": (affine, (r(8, 6), r(6, 4), r(4)), None, 1),
        "softmax_ce": (softmax_ce, (r(8, 10), torch.randint(0, 10, (8,), generator=gen)), None, 0),
        "layernorm": (layernorm, (r(6, 8), r(8), r(8)), None, 0),
        "relu_at_zeros": (relu, (x.requires_grad_(),), None, 0),
        "float32_kernel": (
            kernel,
            (r(8, 6, dtype=torch.float32), r(6, 4, dtype=torch.float32)),
            lambda x, w: torch.tanh(x @ w),
            0,
        ),
    }
    out = {}
    for name, (make, inputs, reference, piece) in cases.items():
        # Plant into the element of median magnitude among the nonzero ones (all-ones cotangent).
        leaves = [t for t in inputs if t.requires_grad]
        y = make(0.0)(*inputs)
        g = torch.autograd.grad(y, leaves, torch.ones_like(y))[piece].detach().abs().reshape(-1)
        nonzero = torch.nonzero(g > 0).reshape(-1)
        order = nonzero[torch.argsort(g[nonzero])]
        index = int(order[len(order) // 2])

        def bound(err, make=make, index=index):
            where[0] = index
            return make(err)

        out[name] = (bound, inputs, reference)
    return out


# --- jax -----------------------------------------------------------------------------------------


def _jax_functions(jax, jnp):
    where = [1]  # set below: a typical element of the planted gradient

    def planted(g, err, _):
        if not err:
            return g
        return jnp.asarray(g).reshape(-1).at[where[0]].multiply(1 + err).reshape(g.shape)

    def affine(err):
        @jax.custom_vjp
        def f(x, W, b):
            return x @ W + b

        f.defvjp(
            lambda x, W, b: (x @ W + b, (x, W)),
            lambda res, g: (g @ res[1].T, planted(res[0].T @ g, err, 1), g.sum(0)),
        )
        return f

    labels = jnp.asarray(np.random.default_rng(2).integers(0, 10, 8))

    def softmax_ce(err):
        @jax.custom_vjp
        def f(z):
            lse = jax.nn.logsumexp(z, axis=1)
            return jnp.mean(lse - jnp.take_along_axis(z, labels[:, None], 1)[:, 0])

        def fwd(z):
            return f(z), jnp.exp(z - jax.nn.logsumexp(z, axis=1, keepdims=True))

        def bwd(p, g):
            d = p.at[jnp.arange(len(labels)), labels].add(-1.0)
            return (planted(d * g / len(labels), err, 1),)

        f.defvjp(fwd, bwd)
        return f

    def layernorm(err):
        def normalize(x):
            mu = x.mean(-1, keepdims=True)
            rstd = 1 / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
            return (x - mu) * rstd, rstd

        @jax.custom_vjp
        def f(x, gamma, beta):
            return normalize(x)[0] * gamma + beta

        def fwd(x, gamma, beta):
            xh, rstd = normalize(x)
            return xh * gamma + beta, (xh, rstd, gamma)

        def bwd(res, g):
            xh, rstd, gamma = res
            gx = g * gamma
            dx = rstd * (gx - gx.mean(-1, keepdims=True) - xh * (gx * xh).mean(-1, keepdims=True))
            return planted(dx, err, 1), (g * xh).sum(0), g.sum(0)

        f.defvjp(fwd, bwd)
        return f

    def relu(err):
        @jax.custom_vjp
        def f(x):
            return jnp.maximum(x, 0.0)

        f.defvjp(lambda x: (f(x), x), lambda x, g: (planted(g * (x > 0), err, 1),))
        return f

    def kernel(err):
        @jax.custom_vjp
        def f(x, w):
            return jnp.tanh(x.astype(jnp.float32) @ w.astype(jnp.float32))

        def fwd(x, w):
            return f(x, w), (x.astype(jnp.float32), w.astype(jnp.float32))

        def bwd(res, g):
            x, w = res
            d = g * (1 - jnp.tanh(x @ w) ** 2)
            return planted(d @ w.T, err, where), x.T @ d

        f.defvjp(fwd, bwd)
        return f

    rng = np.random.default_rng(1)

    def r(*shape, dtype=np.float64):
        return rng.standard_normal(shape).astype(dtype)

    x = rng.standard_normal((6, 5))
    x[np.abs(x) < 0.5] = 0.0
    cases = {
        "affine": (affine, (r(8, 6), r(6, 4), r(4)), None, 1),
        "softmax_ce": (softmax_ce, (r(8, 10),), None, 0),
        "layernorm": (layernorm, (r(6, 8), r(8), r(8)), None, 0),
        "relu_at_zeros": (relu, (x,), None, 0),
        "float32_kernel": (
            kernel,
            (r(8, 6, dtype=np.float32), r(6, 4, dtype=np.float32)),
            lambda x, w: jnp.tanh(x @ w),
            0,
        ),
    }
    out = {}
    for name, (make, args, reference, piece) in cases.items():
        # Plant into the element of median magnitude among the nonzero ones (all-ones cotangent).
        y, pullback = jax.vjp(make(0.0), *args)
        g = np.abs(np.asarray(pullback(jnp.ones_like(y))[piece])).reshape(-1)
        nonzero = np.flatnonzero(g > 0)
        index = int(nonzero[np.argsort(g[nonzero])][len(nonzero) // 2])

        def bound(err, make=make, index=index):
            where[0] = index
            return make(err)

        out[name] = (bound, args, reference)
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


def _row(checker, name, run):
    """Correct version, then every planted error: the row of the results."""
    ok, seconds, error = _verdict(lambda: run(0.0))
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
        f"  {checker:<28} {name:<15} correct: {verdict}"
        f"  smallest caught: {smallest if smallest is not None else '-':<8}  {seconds:7.3f} s"
        + (f"  ({error})" if error else ""),
        flush=True,
    )
    return row


def run_torch():
    import torch

    import oracles.torch as ot

    warm = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(torch.sin, (warm,))  # first calls pay for imports and caches
    ot.gradcheck(torch.sin, (warm,))
    rows = []
    for name, (make, inputs, reference) in _torch_functions(torch).items():

        def theirs(err, make=make, inputs=inputs):
            return torch.autograd.gradcheck(make(err), inputs, raise_exception=False)

        def ours(err, make=make, inputs=inputs, reference=reference):
            return ot.gradcheck(make(err), inputs, reference_func=reference)

        rows.append(_row("torch.autograd.gradcheck", name, theirs))
        rows.append(_row("oracles.torch.gradcheck", name, ours))
    return rows


def run_jax():
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
        functions = _jax_functions(jax, jnp)
        for name, (make, args, reference) in functions.items():

            def theirs(err, make=make, args=args):
                return jax.test_util.check_grads(make(err), args, 1, modes=("rev",))

            def ours(err, make=make, args=args, reference=reference):
                return oj.check_grads(make(err), args, 1, modes=("rev",), reference_func=reference)

            rows.append(_row("jax.test_util.check_grads", name, theirs))
            rows.append(_row("oracles.jax.check_grads", name, ours))
    return rows


def _ratios(rows):
    anchors = {
        ("oracles.torch.gradcheck", r["function"]): r["seconds"]
        for r in rows
        if r["checker"] == "torch.autograd.gradcheck"
    }
    anchors.update(
        {
            ("oracles.jax.check_grads", r["function"]): r["seconds"]
            for r in rows
            if r["checker"] == "jax.test_util.check_grads"
        }
    )
    for r in rows:
        anchor = anchors.get((r["checker"], r["function"]))
        r["time_vs_framework"] = None if anchor is None else r["seconds"] / anchor


def table(rows):
    """The README table: per function, each checker's false alarm / smallest caught / time."""

    def cell(r):
        if r["correct_passes"] is None:
            return "error"
        ratio = f" ({r['time_vs_framework']:.0f}x)" if r.get("time_vs_framework") else ""
        if r["false_alarm"]:
            return f"**false alarm** (fails the correct version); {r['seconds']:.2f} s{ratio}"
        small = f"{r['smallest_caught']:.0e}" if r["smallest_caught"] is not None else "none"
        return f"catches {small}; {r['seconds']:.2f} s{ratio}"

    checkers = [
        "torch.autograd.gradcheck",
        "oracles.torch.gradcheck",
        "jax.test_util.check_grads",
        "oracles.jax.check_grads",
    ]
    lines = [
        "| function | " + " | ".join(f"`{c}`" for c in checkers) + " |",
        "|---|" + "---|" * len(checkers),
    ]
    for name in FUNCTIONS:
        cells = []
        for c in checkers:
            match = [r for r in rows if r["checker"] == c and r["function"] == name]
            cells.append(cell(match[0]) if match else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checkers = list(dict.fromkeys(r["checker"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 3.8))
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
    ax.set_xticks(range(len(checkers)), checkers, rotation=12, fontsize=8)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    parser.add_argument("--only", choices=("torch", "jax"), default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    started = time.perf_counter()
    rows = []
    if args.only in (None, "torch"):
        print("torch (float64; the kernel float32):", flush=True)
        rows += run_torch()
    if args.only in (None, "jax"):
        print("jax (64-bit mode in a scope; the kernel float32):", flush=True)
        rows += run_jax()
    _ratios(rows)
    total = time.perf_counter() - started
    import jax
    import torch

    meta = {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "OPENBLAS_NUM_THREADS=1 python benchmarks/bench_frameworks.py",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
        "seconds_total": total,
        "errors_planted": list(ERRORS),
        "planted_in": (
            "one element of one gradient (dW, dz, dx, dx, dx): the element of median magnitude "
            "among the nonzero ones for an all-ones cotangent"
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
