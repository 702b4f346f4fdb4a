"""Every element, at close to the cost of two forward passes each: a screened exhaustive check.

The step ladder of :mod:`oracles.numerics` spends 10-25 evaluations of ``fn``
per element. Almost all of them are wasted on correct code, where one central
difference at a good step already agrees with the analytic value to within
what rounding explains. So the exhaustive check runs in two stages:

1. **Screen** (2 evaluations per element). Per input, a few sample elements
   get the full ladder; the central difference of those samples at relative
   steps around the ones their ladders chose (each element's step is that
   relative step times its own scale, as in the ladder) is compared with the
   ladder's value; that fits a truncation model ``T_j`` (the tighter of an
   absolute and a relative bound in ``h_j^2``, :func:`_calibrate`) and picks
   the step with the smallest typical relative error bound. Then every
   element gets one central difference ``c`` at that step, with the error
   estimate ``noise(c) + T_j`` (``noise`` from the measured noise of the
   changed outputs, :meth:`oracles.numerics.objective.ScalarObjective.rung_noise`).
   An element passes the screen when
   ``|analytic - c| <= atol + rtol * |c| + noise(c) + T_j``.
2. **Ladder** (about 15 evaluations per element). Elements that fail the
   screen, sit at a kink, or were not finite, and every element of inputs too
   small to be worth sampling, get the full per-element ladder, which decides.

A screen failure only costs time: the ladder has the last word. A screen
pass on a wrong element would need the truncation error to mimic the
mistake, within the noise level, which does not happen by chance.

Chunks of elements run on any :class:`concurrent.futures.Executor`
(``executor=``): a :class:`~concurrent.futures.ProcessPoolExecutor`, a
thread pool, or a Dask/Ray executor. For a process pool ``fn`` must be
picklable (a module-level function, or :func:`functools.partial` of one; not
a lambda or a closure); when it is not, the check runs in-process and says
so in a note.
"""

from __future__ import annotations

import math
import pickle
import sys
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from oracles._validation import check_executor
from oracles.compare import Reference
from oracles.errors import InvalidArgument, InvalidArgumentType, UserFunctionError
from oracles.numerics.ladder import partials
from oracles.numerics.objective import (
    MAX_RUNGS,
    NOISE_SAFETY,
    T0,
    ScalarObjective,
    analytic_rounding,
)

__all__ = ["Exhaustive", "exhaustive_partials", "sharp_partials"]

#: Inputs with at most this many elements skip the screen (sampling would cost more).
SCREEN_MIN = 32
#: Elements per input whose full ladder calibrates the screen.
N_SAMPLE = 8
#: Candidate screen steps relative to the median step the sample ladders chose (times 4^k).
SCREEN_STEPS = tuple(4.0**k for k in range(-5, 2))
#: Safety factor on the truncation model fitted on the samples (:func:`_calibrate`).
TRUNCATION_SAFETY = 2.0
#: Show a progress bar (when ``progress=None``) for runs expected to take longer than this (s).
PROGRESS_AFTER = 5.0


@dataclass(frozen=True)
class Exhaustive:
    """The ``mode=`` of :func:`oracles.check_vjp` that checks every element.

    Parameters
    ----------
    executor : concurrent.futures.Executor, optional
        Runs chunks of elements (``None``: in this process). ``fn`` must be
        picklable for a process pool; otherwise the check runs in-process
        and the report says so.
    progress : bool, optional
        Progress bar (tqdm). ``None``: only for runs expected to take more
        than a few seconds, and only on a terminal.
    screen : bool
        ``True``: two-stage screen (see the module notes). ``False``: the full
        step ladder for every element (``mode="ladder"``).
    chunk_size : int, optional
        Elements per chunk (default: about 32 chunks, 256 .. 20,000 each).

    Examples
    --------
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> x = np.linspace(-1.0, 1.0, 50)
    >>> check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive()).ok
    True
    """

    executor: Executor | None = None
    progress: bool | None = None
    screen: bool = True
    chunk_size: int | None = None

    def __post_init__(self):
        if self.executor is not None and not isinstance(self.executor, Executor):
            raise InvalidArgumentType(
                "executor must be a concurrent.futures.Executor or None, got "
                f"{type(self.executor).__name__}"
            )
        if self.progress is not None and not isinstance(self.progress, bool):
            raise InvalidArgumentType(
                f"progress must be True, False or None, got {self.progress!r}"
            )
        if not isinstance(self.screen, bool):
            raise InvalidArgumentType(f"screen must be True or False, got {self.screen!r}")
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool)
            or not isinstance(self.chunk_size, (int, np.integer))
            or self.chunk_size < 1
        ):
            raise InvalidArgument(
                f"chunk_size must be a positive int or None, got {self.chunk_size!r}"
            )

    def reference(self, objective, grads, *, atol=0.0, rtol=0.0, seed=None, must_check=None):
        """Numeric reference for every element; see :func:`exhaustive_partials`.

        Returns ``(references, method, evaluations, notes)``: one
        :class:`~oracles.compare.Reference` per input.
        """
        indices = [(i, np.arange(x.size)) for i, x in enumerate(objective.work)]
        est, info = exhaustive_partials(
            objective,
            grads,
            indices,
            atol=atol,
            rtol=rtol,
            executor=self.executor,
            progress=self.progress,
            screen=self.screen,
            chunk_size=self.chunk_size,
        )
        out = [
            Reference(**{k: v.reshape(x.shape) for k, v in est[i].items()})
            for i, x in enumerate(objective.work)
        ]
        return out, info["method"], info["evaluations"], info["notes"]


# --- one chunk of work: runs here or on an executor ---------------------------------------------


def _screen(objective, i, flat_idx, r):
    """One central difference at relative step ``r`` per element of input ``i``.

    Element ``j`` is stepped by ``r * s_j`` (its scale). Returns ``(value,
    noise, nonfinite)``: the quotient divided by the step actually taken, and
    its rounding-noise estimate (the measured noise of the changed outputs,
    the off-centre term when ``x +- h`` round unequally, and the rounding of
    the analytic value's own terms,
    :func:`~oracles.numerics.objective.analytic_rounding`).
    """
    work = objective.work
    flat = work[i].reshape(-1)
    cot = objective.cotangent
    f0 = objective.base_output
    noise = objective.noise
    n = len(flat_idx)
    value = np.empty(n)
    out_noise = np.empty(n)
    nonfinite = np.zeros(n, dtype=bool)
    h = r * objective.scales[i].reshape(-1)[np.asarray(flat_idx, dtype=np.intp)]
    evaluate = _fast_output(objective)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        _screen_loop(evaluate, flat, flat_idx, h, cot, f0, noise, value, out_noise, nonfinite)
    return value, out_noise, nonfinite


def _screen_loop(evaluate, flat, flat_idx, h, cot, f0, model, value, noise, nonfinite):
    scale = NOISE_SAFETY
    scalar = cot.size == 1
    c_abs = np.abs(cot)
    sigma = model.sigma.reshape(cot.shape)
    rel = model.relative.reshape(cot.shape)
    s0 = float(sigma.reshape(-1)[0]) if scalar else 0.0
    r0 = float(rel.reshape(-1)[0]) if scalar else 0.0
    for p, j in enumerate(flat_idx):
        x0 = flat[j]
        xp, xm = x0 + h[p], x0 - h[p]
        try:
            flat[j] = xp
            fp = evaluate()
            flat[j] = xm
            fm = evaluate()
        finally:
            flat[j] = x0
        if fp.shape != cot.shape or fm.shape != cot.shape:
            raise UserFunctionError(
                f"fn returned shape {fp.shape if fp.shape != cot.shape else fm.shape} at a "
                f"perturbed point but {cot.shape} at the evaluation point"
            )
        hp, hm = xp - x0, x0 - xm
        delta = xp - xm
        if not delta > 0:
            nonfinite[p], value[p], noise[p] = False, np.nan, np.inf
            continue
        if scalar:
            a, b, z = float(fp), float(fm), float(f0)
            if not (math.isfinite(a) and math.isfinite(b)):
                nonfinite[p], value[p], noise[p] = True, np.nan, np.inf
                continue
            c = float(cot)
            num = c * (a - b)
            moved = a != b or a != z or b != z  # both sides can move to the same value
            level = (max(s0, r0 * abs(a)) + max(s0, r0 * abs(b))) * abs(c) if moved else 0.0
            terms = abs(c) * abs(a - b)
            fwd, bwd = c * (a - z) / hp, c * (z - b) / hm
        else:
            if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
                nonfinite[p], value[p], noise[p] = True, np.nan, np.inf
                continue
            num = float(np.vdot(cot, fp - fm))
            changed = (fp != fm) | (fp != f0) | (fm != f0)  # both sides can move to one value
            sc, rc = sigma[changed], rel[changed]
            level = float(
                np.sum(
                    c_abs[changed]
                    * (
                        np.maximum(sc, rc * np.abs(fp[changed]))
                        + np.maximum(sc, rc * np.abs(fm[changed]))
                    )
                )
            )
            terms = float(np.vdot(c_abs[changed], np.abs(fp[changed] - fm[changed])))
            fwd = float(np.vdot(cot, fp - f0)) / hp if hp != hm else 0.0
            bwd = float(np.vdot(cot, f0 - fm)) / hm if hp != hm else 0.0
        value[p] = num / delta
        center = abs(fwd - bwd) / (0.5 * (hp + hm)) * abs(hp - hm)
        noise[p] = scale * level / delta + center + float(analytic_rounding(terms / delta))


def _fast_output(objective):
    """``objective.output`` of the working arrays, minus per-call overhead.

    The floating-point error state is set up once per chunk instead of once
    per call; ``fn`` still gets fresh copies of the working arrays on every
    call (see :class:`~oracles.numerics.objective.ScalarObjective`).
    """
    work = objective.work
    fn = objective.fn

    def evaluate():
        objective.calls += 1
        # A copy: an fn that writes into and returns one buffer must not change f0.
        return np.array(fn(*[x.copy() for x in work]), dtype=np.float64, copy=True)

    return evaluate


def sharp_partials(objective, elements, grads, *, sharpen=True, steps=False):
    """:func:`oracles.numerics.ladder.partials`, then again from just above the chosen step.

    The ladder widens its error estimate to any disagreement between its
    rungs. When the largest steps cross a kink near ``x`` (ReLU units whose
    pre-activation is 1e-2 from zero), that widens the estimate to 1e-5 ..
    1e-3 although the small rungs agree to 1e-11. Each element whose ladder
    chose a step below the largest is therefore run once more with the
    ladder starting ``16 x`` above the chosen step (same smallest step), and
    the result with the smaller error estimate is kept (the kink test runs on
    both). Returns a dict of flat arrays ``value, error, kink, left, right,
    nonfinite``, one entry per element (and ``step``, the chosen step
    relative to the element's scale, when ``steps`` is True).

    Examples
    --------
    >>> import numpy as np
    >>> from oracles.numerics.objective import ScalarObjective
    >>> x = np.array([0.5, 2.0])
    >>> obj = ScalarObjective(np.exp, [x], np.ones(2))
    >>> out = sharp_partials(obj, [(0, 0), (0, 1)], [np.exp(x)])
    >>> bool(np.allclose(out["value"], np.exp(x), rtol=1e-11))
    True
    """
    est = partials(objective, elements, grads=grads)
    out = {
        "value": est.value,
        "error": est.error,
        "kink": est.kink,
        "left": est.left,
        "right": est.right,
        "nonfinite": est.nonfinite,
    }
    if steps:
        out["step"] = est.step
    if not sharpen:
        return out
    for p, element in enumerate(elements):
        step = est.step[p]
        if not np.isfinite(step) or 16.0 * step >= T0:
            continue
        drop = int(round(np.log2(T0 / (16.0 * step))))
        again = partials(
            objective,
            [element],
            grads=grads,
            t0=T0 * 2.0**-drop,
            n_rungs=max(6, MAX_RUNGS - drop),
        )
        if again.error[0] < out["error"][p]:
            for key in out:
                out[key][p] = getattr(again, key)[0]
    return out


def _ladder(objective, i, flat_idx, grads, sharpen=True, steps=False):
    return sharp_partials(
        objective, [(i, int(j)) for j in flat_idx], grads, sharpen=sharpen, steps=steps
    )


def _run_chunk(payload, kind, i, flat_idx, arg):
    """Module-level (picklable) entry point of one chunk on an executor.

    ``payload = (fn, inputs, cotangent, noise, output)``; a fresh objective
    is built here (with the parent's measured noise) so that chunks running
    at the same time never share working arrays, and its ``fn`` must give the
    parent's ``output`` at the evaluation point, bitwise. Returns ``(result, evaluations,
    notes)``.
    """
    fn, inputs, cotangent, noise, parent_output = payload
    objective = ScalarObjective(fn, inputs, cotangent, noise=noise)
    if not np.array_equal(objective.base_output, parent_output, equal_nan=True):
        # A worker that computes another function (a module global changed after
        # the workers started, another version of the code) would judge every
        # element of its chunks against the wrong derivative.
        diff = np.abs(objective.base_output - parent_output)
        raise UserFunctionError(
            "fn computes something else on a worker of the executor than in this process: "
            f"at the evaluation point its output differs by up to {float(np.nanmax(diff)):.3g} "
            "(module-level state changed after the workers started, or the workers import "
            "another version of the code); the chunks' verdicts would not be about this fn"
        )
    calls0 = objective.calls
    if kind == "screen":
        result = _screen(objective, i, flat_idx, arg)
    else:
        result = _ladder(objective, i, flat_idx, *arg)
    return result, objective.calls - calls0, list(objective.notes)


# --- orchestration ------------------------------------------------------------------------------


def _picklable(obj):
    try:
        pickle.dumps(obj)
    except Exception:  # any failure to pickle means: not usable on a process pool
        return False
    return True


def _needs_pickling(executor):
    from concurrent.futures import ThreadPoolExecutor

    return not isinstance(executor, ThreadPoolExecutor)


class _Runner:
    """Runs chunks in-process or on an executor, with an optional progress bar."""

    def __init__(self, objective, executor, notes):
        self.objective = objective
        self.executor = executor
        self.evaluations = 0
        self.notes = notes
        if executor is not None:
            check_executor(executor)  # shut down or broken: a clear error before any chunk
        if executor is not None and _needs_pickling(executor):
            if not _picklable(objective.fn):
                notes.append(
                    f"fn ({getattr(objective.fn, '__name__', type(objective.fn).__name__)}) "
                    "cannot be pickled, so the chunks ran in this process instead of on the "
                    f"{type(executor).__name__}; pass a module-level function (or a "
                    "functools.partial of one) to use a process pool"
                )
                self.executor = None
        self.payload = (
            objective.fn,
            [x.copy() for x in objective.work],
            objective.cotangent,
            objective.noise,
            objective.base_output,
        )

    def run(self, kind, chunks, arg_of, bar=None):
        """``chunks``: list of ``(i, flat_idx)``; returns results in the same order."""
        results = [None] * len(chunks)
        if self.executor is None:
            for c, (i, idx) in enumerate(chunks):
                calls0 = self.objective.calls
                if kind == "screen":
                    results[c] = _screen(self.objective, i, idx, arg_of(i))
                else:
                    results[c] = _ladder(self.objective, i, idx, *arg_of(i))
                self.evaluations += self.objective.calls - calls0
                if bar is not None:
                    bar.update(len(idx))
            return results
        from concurrent.futures import as_completed

        futures = {
            self.executor.submit(_run_chunk, self.payload, kind, i, idx, arg_of(i)): c
            for c, (i, idx) in enumerate(chunks)
        }
        for fut in as_completed(futures):
            c = futures[fut]
            results[c], n_eval, notes = fut.result()
            self.evaluations += n_eval
            for note in notes:
                if note not in self.notes:
                    self.notes.append(note)
            if bar is not None:
                bar.update(len(chunks[c][1]))
        return results


def _chunks(i, idx, size):
    return [(i, idx[s : s + size]) for s in range(0, len(idx), size)]


def _truncation(h, c, model):
    """The screen's truncation bound per element: ``2 h^2 min(C, D |c|)`` (:func:`_calibrate`)."""
    big_c, big_d = model
    with np.errstate(invalid="ignore", over="ignore"):
        rel = np.where(np.isfinite(big_d), big_d * np.abs(c), np.inf)
        return TRUNCATION_SAFETY * h * h * np.minimum(big_c, rel)


def _calibrate(objective, i, flat_idx, grads, rng):
    """Screen step and truncation model for input ``i`` from a few full ladders.

    The truncation error of one central difference at step ``h`` is ``h^2``
    times a third derivative over 6. On the samples, the deviation of the
    screen's value from the ladder's, beyond the ladder's error, gives per
    sample ``C_s = excess / h_s^2`` and, relative to the derivative, ``D_s =
    C_s / |v_s|``; an element's truncation bound is ``2 h_j^2 min(max C, max
    D |c_j|)`` (:func:`_truncation`): the tighter of an absolute and a
    relative model, so that elements with small derivatives do not inherit
    the truncation of the largest ones. An element whose truncation is larger
    than the samples' fails the screen and gets the ladder (a screen failure
    only costs time). The relative step that minimizes the third quartile of
    the samples' relative error bounds is kept.

    Returns ``(step, model, sample_idx, sample_result)``; ``step`` (relative
    to each element's scale) is ``None`` when no candidate step gave a usable
    screen (then every element of the input gets the ladder).
    """
    g = np.abs(np.asarray(grads[i], dtype=np.float64).reshape(-1)[flat_idx])
    n_big = N_SAMPLE // 2
    largest = flat_idx[np.argsort(-g, kind="stable")[:n_big]]
    rest = np.setdiff1d(flat_idx[g > 0], largest)
    if rest.size < N_SAMPLE - n_big:
        rest = np.setdiff1d(flat_idx, largest)
    sample = np.concatenate(
        [largest, rng.choice(rest, size=min(N_SAMPLE - n_big, rest.size), replace=False)]
    )
    ladder = _ladder(objective, i, sample, grads, steps=True)
    chosen = ladder.pop("step")
    usable = np.isfinite(ladder["value"]) & ~ladder["kink"] & np.isfinite(chosen)
    best = None
    if np.any(usable):
        v = ladder["value"][usable]
        v_err = ladder["error"][usable]
        scales = objective.scales[i].reshape(-1)[sample[usable]]
        nz = np.abs(v) > 0
        # Steps around the ones the ladders chose (the geometric median), never above T0.
        center = 2.0 ** float(np.round(np.median(np.log2(chosen[usable]))))
        candidates = sorted({min(T0, center * f) for f in SCREEN_STEPS}, reverse=True)
        for r in candidates:
            c, noise, nonfinite = _screen(objective, i, sample[usable], r)
            if np.any(nonfinite) or not np.all(np.isfinite(c)):
                continue
            h = r * scales
            # All of the deviation may be truncation (below the noise, the
            # samples only bound it): h^2 grows faster than noise shrinks
            # over the elements' steps.
            excess = np.maximum(np.abs(c - v) - v_err, 0.0)
            per_c = excess / (h * h)
            model = (
                float(np.max(per_c)),
                float(np.max(per_c[nz] / np.abs(v[nz]))) if nz.any() else np.inf,
            )
            bound = noise + _truncation(h, v, model)
            rel = bound[nz] / np.abs(v[nz]) if nz.any() else bound
            score = float(np.quantile(rel, 0.75))
            if best is None or score < best[0]:
                best = (score, r, model)
    if best is None:
        return None, None, sample, ladder
    return best[1], best[2], sample, ladder


def exhaustive_partials(
    objective,
    grads,
    indices,
    *,
    atol=0.0,
    rtol=0.0,
    executor=None,
    progress=None,
    screen=True,
    chunk_size=None,
):
    """Per-element numeric derivatives of ``objective`` for the given elements.

    Parameters
    ----------
    objective : oracles.numerics.objective.ScalarObjective
    grads : sequence of ndarray
        The analytic gradient, one array per input (finite): the screen's
        reference and the noise model's gradient estimate.
    indices : sequence of (input_number, flat_indices)
        The elements to differentiate, per input.
    atol, rtol : float
        Tolerances of the comparison (an element passes the screen when
        ``|analytic - c| <= atol + rtol * |c| + error``).
    executor, progress, screen, chunk_size
        See :class:`Exhaustive`.

    Returns
    -------
    results : dict
        ``results[i]`` for every input ``i`` named in ``indices``: a dict of
        flat arrays ``value, error, kink, left, right, nonfinite`` over
        ``indices``' elements of that input, in that order.
    info : dict
        ``method`` (str), ``evaluations`` (int), ``notes`` (list of str),
        ``screened`` / ``laddered`` (numbers of elements decided by each
        stage), ``steps`` (screen step per input, relative to each element's
        scale; ``None`` where unscreened).

    Examples
    --------
    >>> import numpy as np
    >>> from oracles.numerics.objective import ScalarObjective
    >>> x = np.linspace(0.1, 2.0, 40)
    >>> obj = ScalarObjective(np.log, (x,), np.ones(40))
    >>> res, info = exhaustive_partials(obj, [1 / x], [(0, np.arange(40))])
    >>> bool(np.all(np.abs(res[0]["value"] - 1 / x) <= res[0]["error"]))
    True
    >>> info["screened"] + info["laddered"]
    40
    """
    notes = []
    started = time.perf_counter()
    calls_before = objective.calls
    objective.noise  # noqa: B018 - measured once, in this process, before any chunk runs
    runner = _Runner(objective, executor, notes)
    rng = np.random.default_rng(0)
    results, screen_of = {}, {}
    to_ladder = []  # (i, positions within indices[i])
    steps = {}
    n_total = sum(len(idx) for _, idx in indices)

    for i, idx in indices:
        idx = np.asarray(idx, dtype=np.intp)
        n = idx.size
        results[i] = {
            "value": np.full(n, np.nan),
            "error": np.full(n, np.inf),
            "kink": np.zeros(n, dtype=bool),
            "left": np.full(n, np.nan),
            "right": np.full(n, np.nan),
            "nonfinite": np.zeros(n, dtype=bool),
        }
        if not screen or n <= SCREEN_MIN:
            steps[i] = None
            to_ladder.append((i, np.arange(n)))
            continue
        h, model, sample, ladder = _calibrate(objective, i, idx, grads, rng)
        steps[i] = h
        pos_of = {int(j): p for p, j in enumerate(idx)}
        sample_pos = np.array([pos_of[int(j)] for j in sample], dtype=np.intp)
        for key, arr in ladder.items():
            results[i][key][sample_pos] = arr
        rest = np.ones(n, dtype=bool)
        rest[sample_pos] = False
        if h is None:
            to_ladder.append((i, np.flatnonzero(rest)))
        else:
            screen_of[i] = (h, model, np.flatnonzero(rest))
    runner.evaluations += objective.calls - calls_before

    # Stage 1: the screen.
    size = chunk_size or int(min(20000, max(256, math.ceil(n_total / 32))))
    chunks, owners = [], []
    idx_of = {i: np.asarray(idx, dtype=np.intp) for i, idx in indices}
    for i, (_, _, pos) in screen_of.items():
        for c in _chunks(i, pos, size):
            chunks.append((i, idx_of[i][c[1]]))
            owners.append((i, c[1]))
    n_screen = sum(len(c[1]) for c in chunks)
    elapsed = time.perf_counter() - started
    per_eval = elapsed / max(runner.evaluations, 1)
    expected = per_eval * 2 * n_screen
    bar = _progress_bar(progress, expected, n_screen)
    try:
        outs = runner.run("screen", chunks, lambda i: screen_of[i][0], bar)
    finally:
        if bar is not None:
            bar.close()
    n_screened = 0
    for (i, pos), (value, noise, nonfinite) in zip(owners, outs, strict=True):
        r, model = screen_of[i][0], screen_of[i][1]
        a = np.asarray(grads[i], dtype=np.float64).reshape(-1)[idx_of[i][pos]]
        h = r * objective.scales[i].reshape(-1)[idx_of[i][pos]]
        err = noise + _truncation(h, value, model)
        with np.errstate(invalid="ignore"):
            ok = np.abs(a - value) <= atol + rtol * np.abs(value) + err
        ok &= ~nonfinite
        res = results[i]
        res["value"][pos[ok]] = value[ok]
        res["error"][pos[ok]] = err[ok]
        n_screened += int(np.count_nonzero(ok))
        if not np.all(ok):
            to_ladder.append((i, pos[~ok]))

    # Stage 2: the ladder for whatever the screen could not settle.
    chunks, owners = [], []
    lsize = max(1, size // 8)
    for i, pos in to_ladder:
        for c in _chunks(i, pos, lsize):
            chunks.append((i, idx_of[i][c[1]]))
            owners.append((i, c[1]))
    n_ladder = sum(len(c[1]) for c in chunks)
    bar = _progress_bar(progress, per_eval * 16 * n_ladder, n_ladder)
    try:
        outs = runner.run("ladder", chunks, lambda i: (grads, screen), bar)
    finally:
        if bar is not None:
            bar.close()
    for (i, pos), res in zip(owners, outs, strict=True):
        for key, arr in res.items():
            results[i][key][pos] = arr

    n_sampled = n_total - n_screened - n_ladder
    if screen:
        method = (
            "central differences per element: one step per input chosen on sampled full ladders "
            f"({n_screened} screened at 2 evaluations each), step ladder + Richardson for "
            f"{n_ladder + n_sampled} (samples, screen failures, kinks, small inputs)"
        )
    else:
        method = "central differences per element, step ladder + Richardson"
    notes = list(dict.fromkeys(notes + list(objective.notes)))
    return results, {
        "method": method,
        "evaluations": runner.evaluations,
        "notes": notes,
        "screened": n_screened,
        "laddered": n_ladder + n_sampled,
        "steps": steps,
    }


def _progress_bar(progress, expected_seconds, total):
    if progress is False or total == 0:
        return None
    if progress is None and (expected_seconds < PROGRESS_AFTER or not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="el", desc="exhaustive check", leave=False)
