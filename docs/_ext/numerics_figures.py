"""The figures of the numerics page, drawn from the real step ladder of :mod:`oracles.numerics`.

Every number plotted is computed here, at build time: the rungs come from the
calls that :func:`oracles.numerics.ladder.partials` makes to ``fn`` (recorded
by wrapping ``fn``), the chosen rung, the value and the error estimate from the
:class:`~oracles.numerics.objective.Estimate` it returns, and the true
derivatives from closed forms or from the hand derivations in :mod:`reference`.

Run on its own: ``python docs/_ext/numerics_figures.py OUTDIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from oracles.numerics.ladder import partials
from oracles.numerics.objective import N_RUNGS, T0, ScalarObjective

__all__ = ["build"]

FIXED_STEPS = {"1e-5 (a NumPy loop)": 1e-5, "1e-6 (torch gradcheck)": 1e-6}


class _Recorder:
    """``fn`` of one scalar input, recording every ``(x, fn(x))`` the ladder asks for."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __call__(self, x):
        y = self.fn(x)
        self.calls.append(
            (float(np.asarray(x).reshape(-1)[0]), float(np.asarray(y).reshape(-1)[0]))
        )
        return y


def ladder_run(fn, x0):
    """Run the ladder on ``fn`` at the scalar ``x0``; return the estimate and the rungs seen.

    ``rungs`` is a list of ``(step, x+, x-, f+, f-)`` in the order the ladder
    evaluated them; ``base`` is ``fn(x0)``.
    """
    rec = _Recorder(fn)
    est = partials(ScalarObjective(rec, [np.array([x0])], np.ones(1)), [(0, 0)])
    (_, base), *pairs = rec.calls
    rungs = []
    for k, ((xp, fp), (xm, fm)) in enumerate(zip(pairs[0::2], pairs[1::2], strict=True)):
        rungs.append((T0 * 2.0**-k, xp, xm, fp, fm))
    return est, rungs, base


def _style(ax):
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")


def figure_ladder(path):
    """Error of central differences against the step, and the rung the ladder chooses."""
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.3), constrained_layout=True)

    # (a) a smooth function at a moderate point
    x0 = 0.7
    f = lambda x: np.exp(x) * np.sin(x)  # noqa: E731
    true = float(np.exp(x0) * (np.sin(x0) + np.cos(x0)))
    est, rungs, _ = ladder_run(f, x0)
    steps = T0 * 2.0 ** -np.arange(0, 48)
    with np.errstate(divide="ignore", invalid="ignore"):
        plain = np.array([(f(x0 + t) - f(x0 - t)) / ((x0 + t) - (x0 - t)) for t in steps])
    err_plain = np.abs(plain - true)
    ax.plot(
        steps,
        np.where(err_plain > 0, err_plain, np.nan),
        color="0.6",
        lw=1,
        label="central difference, every step",
    )
    t_rung = np.array([r[0] for r in rungs])
    c = np.array([(fp - fm) / (xp - xm) for _, xp, xm, fp, fm in rungs])
    ax.plot(
        t_rung,
        np.abs(c - true),
        "o",
        color="C0",
        ms=4,
        label=f"rungs the ladder evaluated ({len(rungs)} of {N_RUNGS})",
    )
    # Richardson between neighbouring rungs: c_k + (c_k - c_{k-1}) / (r^2 - 1), r = 2.
    rich = c[1:] + (c[1:] - c[:-1]) / 3.0
    ax.plot(
        t_rung[1:],
        np.maximum(np.abs(rich - true), 1e-17),
        "s",
        color="C1",
        ms=4,
        label="Richardson extrapolants",
    )
    value, error, step = float(est.value[0]), float(est.error[0]), float(est.step[0])
    ax.axhline(error, color="C3", ls="--", lw=1, label=f"error estimate {error:.1e}")
    ax.plot(
        [step],
        [max(abs(value - true), 1e-17)],
        "*",
        color="C3",
        ms=14,
        label=f"chosen rung t = {step:.1e}: true error {abs(value - true):.1e}",
    )
    for (label, t), marker in zip(FIXED_STEPS.items(), ("v", "^"), strict=True):
        e = abs((f(x0 + t) - f(x0 - t)) / ((x0 + t) - (x0 - t)) - true)
        ax.plot([t], [e], marker, color="k", ms=7, mfc="none", label=f"fixed step {label}")
    _style(ax)
    ax.set_xlabel("step t")
    ax.set_ylabel("absolute error of the derivative")
    ax.set_title(r"(a) $f(x) = e^x \sin x$ at $x = 0.7$")
    ax.legend(fontsize=7.5, loc="lower left")

    # (b) dividing by the step actually taken, at x = 1e6
    x0 = 1e6
    true = float(np.cos(x0))
    ts = np.logspace(-1, -9, 49)
    nominal = np.array([(np.sin(x0 + t) - np.sin(x0 - t)) / (2 * t) for t in ts])
    actual = np.array([(np.sin(x0 + t) - np.sin(x0 - t)) / ((x0 + t) - (x0 - t)) for t in ts])
    bx.plot(ts, np.abs(nominal - true), color="C4", lw=1.2, label="divided by 2t (nominal step)")
    bx.plot(
        ts,
        np.maximum(np.abs(actual - true), 1e-17),
        color="C0",
        lw=1.2,
        label="divided by (x + t) - (x - t) (step taken)",
    )
    est, _, _ = ladder_run(np.sin, x0)
    value, error = float(est.value[0]), float(est.error[0])
    bx.axhline(
        max(abs(value - true), 1e-17),
        color="C3",
        lw=1,
        label=f"the ladder's result: error {abs(value - true):.1e}",
    )
    bx.axhline(error, color="C3", ls="--", lw=1, label=f"its error estimate {error:.1e}")
    _style(bx)
    bx.set_xlabel("step t (decimal steps, not exactly representable at 1e6)")
    bx.set_title(r"(b) $f(x) = \sin x$ at $x = 10^6$")
    bx.legend(fontsize=7.5, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_kinks(path):
    """The jump between one-sided slopes: constant at a kink, halving at a smooth point."""
    import matplotlib.pyplot as plt

    f = lambda x: np.abs(x) + x**2  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for x0, color in ((0.0, "C3"), (0.3, "C0")):
        est, rungs, base = ladder_run(f, x0)
        t = np.array([r[0] for r in rungs])
        fwd = np.array([(fp - base) / (xp - x0) for _, xp, _, fp, _ in rungs])
        bwd = np.array([(base - fm) / (x0 - xm) for _, _, xm, _, fm in rungs])
        jump = np.abs(fwd - bwd)
        if est.kink[0]:
            verdict = f"kink: subgradients [{est.left[0]:.3g}, {est.right[0]:.3g}] accepted"
        else:
            verdict = f"smooth: derivative {est.value[0]:.6g} +- {est.error[0]:.1e}"
        ax.plot(
            t,
            np.where(jump > 0, jump, np.nan),
            "o-",
            color=color,
            ms=4,
            lw=1,
            label=f"x = {x0}: {verdict}",
        )
    _style(ax)
    ax.set_xlabel("step t")
    ax.set_ylabel("|forward slope - backward slope|")
    ax.set_title(r"$f(x) = |x| + x^2$: the kink test on the rungs the ladder evaluated")
    ax.legend(fontsize=8, loc="center left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _estimate_cases():
    """``(label, fn, vjp, inputs)`` for the estimate-against-error figure: reference ops."""
    import reference as r

    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 6))
    labels = rng.integers(0, 6, size=4)
    x = rng.normal(size=(3, 5))
    W, b = rng.normal(size=(5, 4)), rng.normal(size=4)
    return [
        ("softmax", r.softmax, r.softmax_vjp, (z,)),
        ("softmax, logits x 30", r.softmax, r.softmax_vjp, (30 * z,)),
        ("log_softmax, logits + 1e4", r.log_softmax, r.log_softmax_vjp, (z + 1e4,)),
        ("tanh", r.tanh, r.tanh_vjp, (3 * x,)),
        ("sigmoid", r.sigmoid, r.sigmoid_vjp, (3 * x,)),
        (
            "cross_entropy (labels)",
            lambda q: r.cross_entropy(q, labels),
            lambda g, q: r.cross_entropy_vjp(g, q, labels),
            (z,),
        ),
        ("affine", r.affine, r.affine_vjp, (x, W, b)),
    ]


def figure_estimates(path):
    """True error of every numeric partial against its own error estimate."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    rng = np.random.default_rng(1)
    total = below = 0
    lo, hi = np.inf, 0.0
    floor = 1e-18
    for k, (label, fn, vjp, inputs) in enumerate(_estimate_cases()):
        cot = rng.normal(size=np.shape(fn(*inputs)))
        grads = vjp(cot, *inputs)
        grads = grads if isinstance(grads, tuple) else (grads,)
        objective = ScalarObjective(fn, inputs, cot)
        idx = [(i, j) for i, x in enumerate(inputs) for j in range(np.size(x))]
        est = partials(objective, idx, grads=grads)
        analytic = np.concatenate([np.ravel(g) for g in grads])
        err = np.abs(est.value - analytic)
        total += err.size
        below += int(np.sum(err <= est.error))
        lo, hi = min(lo, float(est.error.min())), max(hi, float(est.error.max()))
        ax.plot(
            est.error,
            np.maximum(err, floor),
            ".",
            color=f"C{k}",
            ms=5,
            alpha=0.8,
            label=f"{label} ({err.size})",
        )
    line = np.array([lo / 3, hi * 3])
    ax.plot(line, line, "k-", lw=1, label="true error = estimate")
    _style(ax)
    ax.set_xlabel("error estimate of the numeric partial")
    ax.set_ylabel(f"|numeric - hand derivation| (shown at {floor:.0e} when 0)")
    ax.set_title(f"{below} of {total} partials within their own estimate")
    ax.legend(fontsize=7.5, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {
    "ladder.png": figure_ladder,
    "kinks.png": figure_kinks,
    "estimates.png": figure_estimates,
}


def build(outdir):
    """Draw every figure into ``outdir``; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    outdir = Path(outdir)
    written = []
    for name, draw in FIGURES.items():
        draw(outdir / name)
        written.append(outdir / name)
    return written


if __name__ == "__main__":
    for p in build(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(p)
