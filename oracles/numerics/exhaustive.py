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
   the step with the smallest typical relative error bound. The samples
   are the largest gradients (their ladders are their references) and the
   ones nearest the median magnitude, which are screened like every other
   element (their ladders decide only where the screen flags them) and
   whose ladders' errors are the full ladder's threshold at a typical
   element, for the report's sensitivity (:func:`_typical`). Then every
   element gets one central difference ``c`` at that step, with the error
   estimate ``noise(c) + T_j`` (``noise`` from the measured noise of the
   changed outputs, :meth:`oracles.numerics.objective.ScalarObjective.rung_noise`).
   An element passes the screen when
   ``|analytic - c| <= atol + rtol * |c| + noise(c) + T_j``.

   **Second look** (4 more evaluations). An element that misses the screen
   by a factor of at most :data:`RECHECK_WITHIN` (its truncation is larger
   than the samples', about 1% of the elements of ``tanh(x @ W)``) gets
   central differences at twice and four times the step: a Richardson
   extrapolant, accepted only where the two ``h^2`` estimates agree and the
   element agrees with it within the screen's own bound
   (:func:`_second_look`).
2. **Ladder** (about 15-40 evaluations per element). Elements that fail the
   screen and the second look, sit at a kink, or were not finite, and every
   element of inputs too small to be worth sampling, get the full
   per-element ladder, which decides.

A screen failure only costs time: the ladder has the last word. A screen
pass on a wrong element would need the truncation error to mimic the
mistake, within the noise level, which does not happen by chance.

The screen's cost per element is two calls of ``fn`` and little else: it
perturbs one element of the working arrays in place and hands them to ``fn``
directly (after a one-time test that ``fn`` neither writes into its
arguments nor answers from a reference it kept, :func:`calling`; otherwise
every call gets fresh copies), copies each output once, and judges a block
of elements at once, summing noise over the outputs that changed only. With
``Exhaustive(vectorized=True)`` a batch of perturbed points goes to ``fn``
in one call.

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
    EPS,
    MAX_RUNGS,
    NOISE_SAFETY,
    T0,
    ScalarObjective,
    analytic_rounding,
)

__all__ = ["Exhaustive", "exhaustive_partials", "sharp_partials"]

#: Inputs with at most this many elements skip the screen (sampling would cost more).
SCREEN_MIN = 32
#: Elements nearest the median magnitude whose full ladder's error is reported as the ladder's
#: threshold at a typical element (:func:`_typical`); in a screened input they are calibration
#: samples too, screened like every other element (:class:`_Pending`).
TYPICAL_SAMPLES = 4
#: Calibration samples of the largest gradients, whose ladders are their references.
N_LARGEST = 2
#: Elements per input whose full ladder calibrates the screen: the largest, and typical ones.
#: (Samples cost a full ladder, about 0.2 ms of Python per rung; an element the model fitted on
#: them does not cover costs 4 evaluations in the second look, :func:`_second_look`.)
N_SAMPLE = N_LARGEST + TYPICAL_SAMPLES
#: Further random samples when fewer than ``MIN_USABLE`` were usable (kinks, not finite).
MORE_SAMPLES = 4
MIN_USABLE = 3
#: Candidate screen steps relative to the median step the sample ladders chose (times 4^k).
SCREEN_STEPS = tuple(4.0**k for k in range(-5, 2))
#: Safety factor on the truncation model fitted on the samples (:func:`_calibrate`).
TRUNCATION_SAFETY = 2.0
#: Steps of the second look at the screen's near misses, times the screen's (:func:`_second_look`).
RECHECK_STEPS = (2.0, 4.0)
#: Near misses: elements within this factor of the screen's bound get the second look.
RECHECK_WITHIN = 2.0**16
#: Most elements per chunk of work (the per-element arrays of a chunk are held at once).
MAX_CHUNK = 20000
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
    vectorized : bool
        ``True`` says that ``fn`` accepts a leading batch axis on every
        input and returns one output per row: for inputs of shapes
        ``(B,) + x_k.shape``, ``fn`` returns shape ``(B,) + out.shape``,
        and row ``b`` of the result is ``fn`` of row ``b`` of the inputs
        (NumPy broadcasting gives that for free in ``np.tanh(x @ W)``). The
        screen then evaluates up to 1024 perturbed points per call, as
        many as fit in about 2^17 floats (1 MB) of inputs and outputs: a
        larger batch runs out of the processor's cache, and for a function
        whose cost is its arithmetic (not Python's per-call overhead)
        batching gains little (0.8-1.0x the time of one point per call on
        ``tanh(x @ W)`` at 2,000-6,000 elements). Inputs that are not
        perturbed in a batch are passed
        as read-only broadcast views: ``fn`` must not write into its
        arguments. The convention is that of ``scipy.differentiate``'s
        batched evaluation, with the batch axis first. Checked once on two
        rows before any is used (:class:`~oracles.errors.InvalidArgument`
        if the output has the wrong shape or a row is not ``fn`` of that
        row). The step ladder (samples and elements the screen cannot
        settle) still calls ``fn`` one point at a time. Verdicts are those
        of ``vectorized=False``.

    Notes
    -----
    On a cluster: the screen and the ladder run in chunks of elements on the
    executor's workers; the noise model, the calibration ladders and the
    second look's bookkeeping run here. What the chunks need (``fn``, the
    inputs, the cotangent, the noise model, the analytic gradient) is pickled
    once per check and unpickled by each chunk, so ``fn`` must be picklable
    by reference (a module-level function, or a :func:`functools.partial`
    of one, importable on the workers), and the workers must compute the
    same ``fn`` bitwise (checked on every chunk). With Dask::

        from distributed import Client
        client = Client("tcp://scheduler:8786")        # or Client(LocalCluster(...))
        report = check_vjp(fn, vjp, inputs, mode=Exhaustive(executor=client.get_executor()))

    One worker thread per core (``--nthreads 1``) and
    ``OPENBLAS_NUM_THREADS=1`` (Dask's nanny sets it) keep the workers from
    competing for cores. Dask's workers sample the running thread's stack
    every 10 ms for their profiler; on chunks that are mostly Python (the
    per-element loop around a cheap ``fn``) that cost up to 40% more CPU
    time per chunk in one measurement (within the noise of a loaded machine
    in others): where speed matters, start the workers with
    ``distributed.worker.profile.enabled: false`` (in their environment:
    ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``). The progress bar
    (``progress=True``) counts elements as their chunks come back, from any
    executor. Any other :class:`concurrent.futures.Executor` (a Ray or
    MPI pool that implements the interface) works the same way.

    Examples
    --------
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> x = np.linspace(-1.0, 1.0, 50)
    >>> check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive()).ok
    True

    A function written for one point that also evaluates a batch of them:

    >>> W = np.linspace(-1.0, 1.0, 12).reshape(4, 3)
    >>> def layer(x, W):
    ...     return np.tanh(x @ W)      # x (..., 5, 4) @ W (..., 4, 3): batches broadcast
    >>> def layer_vjp(g, x, W):
    ...     d = g * (1 - np.tanh(x @ W) ** 2)
    ...     return d @ W.T, x.T @ d
    >>> xs = (np.linspace(-2.0, 2.0, 20).reshape(5, 4), W)
    >>> check_vjp(layer, layer_vjp, xs, mode=Exhaustive(vectorized=True)).ok
    True
    """

    executor: Executor | None = None
    progress: bool | None = None
    screen: bool = True
    chunk_size: int | None = None
    vectorized: bool = False

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
        if not isinstance(self.vectorized, bool):
            raise InvalidArgumentType(f"vectorized must be True or False, got {self.vectorized!r}")
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
            vectorized=self.vectorized,
        )
        out = [
            _ScreenedReference(
                **{k: v.reshape(x.shape) for k, v in est[i].items()},
                typical=info["typical"][i],
            )
            for i, x in enumerate(objective.work)
        ]
        return out, info["method"], info["evaluations"], info["notes"]


@dataclass
class _ScreenedReference(Reference):
    """A :class:`~oracles.compare.Reference` of the exhaustive mode, with the ladder's threshold.

    ``typical``: ``(flat indices, errors)``, the full ladder's error
    estimate at a few typical elements (nearest the median magnitude) of
    this input, or ``None``. An element the screen flags gets the full
    ladder, which decides; so the smallest error the check catches in a
    typical element is the ladder's threshold wherever that is the larger
    (the report's sensitivity, ``_ladder_thresholds`` in
    :mod:`oracles._pipeline`). Measured on the calibration's own samples,
    it costs no evaluation of its own.
    """

    typical: tuple | None = None


# --- one chunk of work: runs here or on an executor ---------------------------------------------


#: Relative step (times the element's scale) of the one-time tests of how ``fn`` may be called.
PROBE_STEP = 2.0**-12
#: Floats per block of outputs the screen holds at once (``2^17``: 1 MB per array). The rows of
#: both sides and f(x) tiled, 3 MB, are read back from the cache after the calls: on
#: ``tanh(x @ W)`` with 2,000 .. 6,000 inputs the screen took 2-14% less time than at ``2^18``
#: (``2^16`` about the same as ``2^17``, ``2^15`` more: 27 us a block of fixed cost).
BLOCK_FLOATS = 2**17
#: Outputs above which the screen keeps only those that changed (:func:`_sparse_rows`), while
#: at most ``SPARSE_SHARE`` of them change (then it goes back to rows).
SPARSE_OUTPUTS = 4096
SPARSE_SHARE = 0.25
#: Most rows of one batched call of a vectorized ``fn`` (:attr:`Exhaustive.vectorized`).
MAX_BATCH = 1024
#: Most floats of inputs and outputs in one batched call (``2^17``: 1 MB). On ``tanh(x @ W)`` with
#: 2,000 inputs and 1,600 outputs, the screen of an input in batches of 2^19 floats took 1.15-1.3x
#: the time of one point per call, 2^16 .. 2^17 floats 0.9-0.97x, 2^13 1.4x (more calls).
BATCH_FLOATS = 2**17


def _raw(fn):
    """The user's function inside the pipeline's guard (``Guarded``), or ``fn`` itself."""
    from oracles._guards import Guarded

    return fn.fn if isinstance(fn, Guarded) else fn


def _nudged(objective):
    """Copies of the working arrays with one element of every input moved by ``PROBE_STEP``."""
    moved = []
    for w, s in zip(objective.work, objective.scales, strict=True):
        v = w.copy()
        if v.size:
            v.reshape(-1)[0] += PROBE_STEP * s.reshape(-1)[0]
        moved.append(v)
    return moved


def _same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def calling(objective, vectorized=False):
    """How the screen may call ``fn``: ``"vectorized"``, ``"direct"`` or ``"copies"``.

    ``"direct"`` hands ``fn`` the objective's working arrays themselves (one
    element perturbed in place and restored), instead of a fresh copy of
    every input on every call; what ``fn`` returns is copied at once, so an
    output that is a view of the input (``fn = lambda x: x``) is safe. That
    is only done after a test, once per check (3 calls): ``fn`` must leave
    its arguments unchanged, and must give bitwise the same output on the
    working arrays, perturbed, as on a fresh copy of them (an ``fn`` that
    keeps a reference to its last argument and returns a cached result
    when it is handed the same object again fails that). Otherwise every
    call gets fresh copies (``"copies"``). ``"vectorized"``
    (:attr:`Exhaustive.vectorized`) is checked in :func:`_check_batched`.
    """
    if vectorized:
        _check_batched(objective)
        return "vectorized"
    work = objective.work
    fn = objective.fn
    pristine = [x.copy() for x in work]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        objective.calls += 1
        base = np.array(fn(*work), dtype=np.float64, copy=True)
        if not all(_same(w, p) for w, p in zip(work, pristine, strict=True)):
            for w, p in zip(work, pristine, strict=True):
                w[...] = p
            return "copies"
        for w, v in zip(work, _nudged(objective), strict=True):  # one element of every input
            w[...] = v
        try:
            objective.calls += 2
            direct = np.array(fn(*work), dtype=np.float64, copy=True)
            fresh = np.array(fn(*[w.copy() for w in work]), dtype=np.float64, copy=True)
        except Exception:  # noqa: BLE001 - fn failed there: the screen will say so, on copies
            direct, fresh = None, np.zeros(0)
        finally:
            changed = [not _same(w, p) for w, p in zip(work, pristine, strict=True)]
            for w, p in zip(work, pristine, strict=True):
                w[...] = p
    if direct is None or not _same(base, objective.base_output) or not _same(direct, fresh):
        return "copies"
    if sum(changed) != sum(1 for w in work if w.size):  # fn wrote into an argument
        return "copies"
    return "direct"


def _check_batched(objective):
    """Raise :class:`InvalidArgument` unless ``fn`` evaluates a leading batch row by row.

    Two rows: the evaluation point and a point with one element of every
    input moved. Row ``b`` of the output must be ``fn`` of row ``b`` of the
    inputs, to within the measured rounding noise of ``fn`` (a batched
    matrix product may round differently from an unbatched one).
    """
    work, f0 = objective.work, objective.base_output
    moved = _nudged(objective)
    single = objective.output(moved)
    try:
        out = _batched_call(
            objective, [np.stack([w, v]) for w, v in zip(work, moved, strict=True)], 2
        )
    except UserFunctionError as exc:
        raise InvalidArgument(
            "Exhaustive(vectorized=True): fn must accept inputs with a leading batch axis (every "
            f"input of shape (B,) + its shape), but on a batch of 2 points it failed: {exc}"
        ) from exc
    noise = objective.noise
    for row, want, where in ((0, f0, "the evaluation point"), (1, single, "a perturbed point")):
        diff = np.abs(out[row] - want)
        slack = NOISE_SAFETY * 2.0 * noise.level(want) + 4.0 * EPS * np.abs(want)
        if not np.all((diff <= slack) | (np.isnan(out[row]) & np.isnan(want))):
            raise InvalidArgument(
                "Exhaustive(vectorized=True): fn must evaluate a leading batch axis row by row "
                f"(row b of fn(*batched inputs) = fn(*row b of the inputs)); row {row}, "
                f"{where}, differs from fn's unbatched output there by up to "
                f"{float(np.nanmax(diff)):.3g}"
            )


def _batched_call(objective, stacked, rows):
    """``fn(*stacked)`` for a batch of ``rows`` points: ``(rows,) + output shape``, float64."""
    from oracles._guards import call_user

    objective.calls += rows
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = call_user(_raw(objective.fn), stacked, "fn (called with a batch, vectorized=True)")
    try:
        arr = np.array(out, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            "Exhaustive(vectorized=True): fn must return one real array for a batch of inputs, "
            f"got {type(out).__name__}"
        ) from exc
    want = (rows,) + objective.base_output.shape
    if arr.shape != want:
        raise InvalidArgument(
            "Exhaustive(vectorized=True): fn must accept inputs with a leading batch axis and "
            f"return one output per row: for a batch of {rows} it returned shape {arr.shape}, "
            f"expected {want}"
        )
    return arr


def _screen(objective, i, flat_idx, r, how="copies"):
    """One central difference at relative step ``r`` per element of input ``i``.

    Element ``j`` is stepped by ``r * s_j`` (its scale; ``r`` a float, or
    one per element of ``flat_idx``, which may repeat one). Returns ``(value,
    noise, nonfinite)``: the quotient divided by the step actually taken, and
    its rounding-noise estimate (the measured noise of the changed outputs,
    the off-centre term when ``x +- h`` round unequally, and the rounding of
    the analytic value's own terms,
    :func:`~oracles.numerics.objective.analytic_rounding`). ``how`` says how
    ``fn`` is called (:func:`calling`). The outputs of a block of elements
    are kept, and everything after the calls is computed for the block at
    once.
    """
    flat_idx = np.asarray(flat_idx, dtype=np.intp)
    n = flat_idx.size
    h = r * objective.scales[i].reshape(-1)[flat_idx]
    value = np.empty(n)
    noise = np.empty(n)
    nonfinite = np.zeros(n, dtype=bool)
    x0 = objective.work[i].reshape(-1)[flat_idx]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        xp, xm = x0 + h, x0 - h
    m = max(1, objective.base_output.size)
    size = max(1, objective.work[i].size)
    rows = max(1, BLOCK_FLOATS // m)
    bufs = _row_buffers(objective, min(rows, n), objective.base_output.size)
    done, perm = 0, False
    sparse = how != "vectorized" and m > SPARSE_OUTPUTS and np.isfinite(objective.base_output).all()
    block = rows  # the first sparse block holds what a block of rows would; then as many
    # elements as BLOCK_FLOATS changed outputs at the rate seen (memory stays a block's)
    while sparse and done < n:
        part = slice(done, min(n, done + block))
        b = part.stop - part.start
        at, cols, a, z, perm = _sparse_rows(
            objective, i, flat_idx[part], xp[part], xm[part], how == "direct", perm, bufs
        )

        def finite_row(p, at=at, a=a, z=z):
            return bool(np.isfinite(a[at == p]).all() and np.isfinite(z[at == p]).all())

        value[part], noise[part], nonfinite[part] = _gathered_stats(
            objective, b, at, cols, a, z, x0[part], xp[part], xm[part], finite_row, perm, bufs
        )
        done = part.stop
        sparse = cols.size <= SPARSE_SHARE * b * m  # most outputs move: rows cost less
        block = max(rows, min(MAX_CHUNK, int(BLOCK_FLOATS * b / max(1, cols.size))))
    for s in range(done, n, rows):
        part = slice(s, min(n, s + rows))
        if how == "vectorized":
            # Calls of at most BATCH_FLOATS floats of inputs and outputs (a cache's worth),
            # into the rows of one block.
            batch = max(1, min(MAX_BATCH, BATCH_FLOATS // (2 * (size + m))))
            fp, fm = _rows_batched(objective, i, flat_idx[part], xp[part], xm[part], bufs, batch)
            perm = None
        else:
            fp, fm, perm = _rows(
                objective, i, flat_idx[part], xp[part], xm[part], how == "direct", bufs
            )
        value[part], noise[part], nonfinite[part] = _block_stats(
            objective, fp, fm, x0[part], xp[part], xm[part], perm, bufs
        )
    return value, noise, nonfinite


def _layout(out):
    """The axis order in which ``out`` is C-contiguous (``None``: C order or no such order).

    A transposed output (an im2col convolution returns ``(n, oh, ow, f)``
    transposed to ``(n, f, oh, ow)``) costs a strided copy per call when its
    rows are stored in C order: 26 us of 145 for 15,488 outputs. Stored in
    the order of its memory, the copy is contiguous.
    """
    if out.flags.c_contiguous or out.ndim < 2:
        return None
    perm = tuple(int(k) for k in np.argsort([-st for st in out.strides], kind="stable"))
    return perm if out.transpose(perm).flags.c_contiguous else None


def _row_buffers(objective, rows, m):
    """``(rows, m)`` buffers for :func:`_rows` and :func:`_block_stats`, kept and reused.

    Two of float64 (the outputs on either side), two of bool (where they
    changed), and per order of the outputs in memory what :func:`_block_stats`
    reads in that order (:func:`_columns`, :func:`_base_rows`, made when first
    needed), and the work arrays of the gathered values (:func:`_work`), kept
    on the objective.

    A fresh 1 MB block per call of :func:`_rows` is fresh memory from the
    operating system each time, and touching it costs page faults: on
    ``tanh(x @ W)`` with 600 outputs and 15 us calls, 6 us per call (a third
    of the plain loop's cost). The rows are consumed by :func:`_block_stats`
    before the next block overwrites them.
    """
    have = objective.__dict__.get("_exhaustive_rows")
    if have is None or have[0].shape[0] < rows or have[0].shape[1] != m:
        have = (
            np.empty((rows, m)),
            np.empty((rows, m)),
            np.empty((rows, m), dtype=bool),
            np.empty((rows, m), dtype=bool),
            {},
            {},
            [None],
        )
        objective.__dict__["_exhaustive_rows"] = have
    return have


def _columns(objective, perm, bufs=None):
    """The cotangent, ``f(x)`` and the noise model's ``sigma`` and ``relative``, flat, in the
    outputs' memory order ``perm`` (:func:`_layout`; ``None``: C order), and that order.

    Returns ``(order, cot, f0, sigma, rel)``; ``order[k]`` is the C-order
    position of column ``k`` (``None``: C order). Kept in ``bufs``
    (:func:`_row_buffers`): gathering four arrays of 15,488 outputs in the
    order of a transposed output took 6 us a row when done for every block
    of 16 rows.
    """
    cache = bufs[4] if bufs is not None else {}
    got = cache.get(perm)
    if got is None:
        model = objective.noise
        cot = objective.cotangent.reshape(-1)
        f0 = objective.base_output.reshape(-1)
        sigma, rel = model.sigma.reshape(-1), model.relative.reshape(-1)
        order = None
        if perm is not None:
            shape = objective.base_output.shape
            order = np.arange(f0.size).reshape(shape).transpose(perm).reshape(-1)
            cot, f0, sigma, rel = cot[order], f0[order], sigma[order], rel[order]
        got = (order, cot, f0, sigma, rel)
        if bufs is not None:
            cache.clear()  # one order per check in practice
            cache[perm] = got
    return got


def _base_rows(bufs, f0, perm, b):
    """``f(x)`` (flat, in the outputs' order ``perm``) on each of ``b`` rows, kept in ``bufs``.

    Comparing a block of rows with one stored block of ``f(x)`` is twice as
    fast as comparing it with ``f(x)`` broadcast along the rows (0.6 against
    1.2 ns an output).
    """
    tiles = bufs[5]
    tile = tiles.get(perm)
    if tile is None or tile.shape[0] < b:
        tiles.clear()  # one order per check in practice: never more than one tile
        tile = np.tile(f0, (max(b, bufs[0].shape[0]), 1))
        tiles[perm] = tile
    return tile[:b]


def _work(bufs, k):
    """Eight float64 arrays of ``k`` elements for :func:`_block_stats`, kept in ``bufs``."""
    slot = [None] if bufs is None else bufs[6]
    if slot[0] is None or slot[0].shape[1] < k:
        slot[0] = np.empty((8, max(k, 1024)))
    return tuple(slot[0][:, :k])


def _rows(objective, i, idx, xp, xm, direct, bufs=None):
    """Outputs at ``x +- h`` of the elements ``idx`` of input ``i``, one call per point.

    Behind the pipeline's guard (``Guarded``), the user's function is called
    directly, and a float64 array of the right shape is taken as it is;
    anything else (an exception, another type or shape) goes through the
    guard, which converts it or raises the error that names the perturbed
    element. Returns ``(fp, fm, perm)``: rows of ``(b, m)``, in the memory
    order ``perm`` of ``fn``'s first output (:func:`_layout`; ``None``: C
    order; :func:`_columns` gives the position of each column). ``bufs``: buffers
    to write them into (:func:`_row_buffers`; the rows returned are views of
    them, valid until the next call). The loop around the calls does what
    the plain loop does (set the element, call, copy the output) and
    nothing else: everything that can be is decided before it.
    """
    work = objective.work
    flat = work[i].reshape(-1)
    shape = objective.base_output.shape
    m = objective.base_output.size
    f64 = np.dtype(np.float64)
    ndarray = np.ndarray
    b = idx.size
    if b == 0:
        return np.empty((0, m)), np.empty((0, m)), None
    call, slow, raw = _caller(objective, direct)
    idx_l, xp_l, xm_l = idx.tolist(), xp.tolist(), xm.tolist()
    j = idx_l[0]
    x0 = flat[j]
    with np.errstate(**_fn_errstate(objective)):
        try:
            # The first element: the outputs' memory order, and the rows laid out in it.
            flat[j] = xp_l[0]
            out = call()
            perm = _layout(out)
            rows_shape = (b,) + (shape if perm is None else out.transpose(perm).shape)
            if bufs is not None and bufs[0].shape[0] >= b:
                fp = bufs[0][:b].reshape(rows_shape)
                fm = bufs[1][:b].reshape(rows_shape)
            else:
                fp, fm = np.empty(rows_shape), np.empty(rows_shape)
            # Copied at once: fn's output may be a view of its input, or a buffer it reuses.
            fp[0] = out if perm is None else out.transpose(perm)
            flat[j] = xm_l[0]
            out = call()
            fm[0] = out if perm is None else out.transpose(perm)
            flat[j] = x0
            if direct and perm is None:
                # The common case, as lean as the plain loop (a failure, or an output of
                # another type or shape, takes the guarded path of call()).
                for p in range(1, b):
                    j = idx_l[p]
                    x0 = flat[j]
                    flat[j] = xp_l[p]
                    try:
                        out = raw(*work)
                    except Exception:  # noqa: BLE001 - the guard calls it again, names it
                        out = slow(work, failed=True)
                    if type(out) is not ndarray or out.dtype is not f64 or out.shape != shape:
                        out = slow(work, out)
                    fp[p] = out
                    flat[j] = xm_l[p]
                    try:
                        out = raw(*work)
                    except Exception:  # noqa: BLE001 - as above
                        out = slow(work, failed=True)
                    if type(out) is not ndarray or out.dtype is not f64 or out.shape != shape:
                        out = slow(work, out)
                    fm[p] = out
                    flat[j] = x0
            else:
                for p in range(1, b):
                    j = idx_l[p]
                    x0 = flat[j]
                    flat[j] = xp_l[p]
                    out = call()
                    fp[p] = out if perm is None else out.transpose(perm)
                    flat[j] = xm_l[p]
                    out = call()
                    fm[p] = out if perm is None else out.transpose(perm)
                    flat[j] = x0
        finally:
            flat[j] = x0
    objective.calls += 2 * b
    return fp.reshape(b, -1), fm.reshape(b, -1), perm


def _fn_errstate(objective):
    """The NumPy error state the screen calls ``fn`` under, around a block of calls.

    Behind the pipeline's guard (``Guarded``), the user's own (its warnings
    off), as every guarded call of ``fn`` has it: a raise at a perturbed
    point takes the guard's path (not finite there), and an ``fn`` that
    reads ``np.geterr()`` sees the caller's state. Otherwise warnings off
    for ``divide``, ``over`` and ``invalid``.
    """
    from oracles._guards import Guarded

    if isinstance(objective.fn, Guarded):
        return objective.fn.errstate
    return {"invalid": "ignore", "divide": "ignore", "over": "ignore"}


def _caller(objective, direct):
    """``(call, slow, raw)``: how :func:`_rows` and :func:`_sparse_rows` call ``fn``.

    ``call()`` evaluates ``fn`` at the working arrays (``direct``) or at fresh
    copies of them: a float64 array of the right shape as it is; anything
    else (an exception, another type or shape) through the pipeline's guard
    (``slow(xs, out, failed)``), which converts it or raises the error that
    names the perturbed element. ``raw``: the user's function itself.
    """
    from oracles._guards import Guarded

    work = objective.work
    shape = objective.base_output.shape
    guard = objective.fn if isinstance(objective.fn, Guarded) else None
    raw = _raw(objective.fn)
    f64 = np.dtype(np.float64)
    ndarray = np.ndarray

    def slow(xs, out=None, failed=False):
        if guard is None:
            return _checked(raw(*xs) if failed else out, shape)
        return _checked(guard(*xs) if failed else guard.check(out, xs), shape)

    def call():
        xs = work if direct else [x.copy() for x in work]
        try:
            out = raw(*xs)
        except Exception:  # noqa: BLE001 - the guard calls it again, names the element
            return slow(xs, failed=True)
        # float64 is one dtype object (another float64, e.g. byte-swapped, takes the slow path).
        if type(out) is ndarray and out.dtype is f64 and out.shape == shape:
            return out
        return slow(xs, out)

    return call, slow, raw


def _sparse_rows(objective, i, idx, xp, xm, direct, perm=False, bufs=None):
    """:func:`_rows` for large outputs: only the outputs that changed, gathered.

    The outputs of each call are compared with ``f(x)`` at once, in their
    memory order (:func:`_layout`, taken from the first call when ``perm`` is
    False), and only those that differ on either side are kept: one element
    of an im2col convolution's input moves 144 of its 15,488 outputs, and
    copying every output of every call into rows, to compare them later,
    cost a fifth of the plain loop's time. Returns ``(rows, cols, a, z,
    perm)`` as :func:`_block_stats` gathers them from dense rows, bitwise:
    per element (``rows``, in order), the changed outputs' positions in
    that order (``cols``, ascending) and their values on either side
    (where one side equals ``f(x)``, ``f(x)``). For an ``f(x)`` whose
    outputs are all finite (elsewhere an unchanged infinite output makes a
    row not finite, which the gathered outputs do not show).
    """
    work = objective.work
    flat = work[i].reshape(-1)
    call = _caller(objective, direct)[0]
    f0 = neq = None
    b = idx.size
    if b == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), empty, empty, None
    got = []  # per element: (cols, a, z)

    def side(value):
        nonlocal perm, f0, neq
        flat[j] = value
        out = call()
        if perm is False:
            perm = _layout(out)
        if f0 is None:
            f0 = _columns(objective, perm, bufs)[2]
            neq = np.empty(f0.size, dtype=bool)
        o = (out if perm is None else out.transpose(perm)).reshape(-1)
        np.not_equal(o, f0, out=neq)
        pos = neq.nonzero()[0]  # np.flatnonzero of the 1-D mask, without its Python wrappers
        return pos, o[pos]  # a copy: fn's output may be a view of its input, or a reused buffer

    with np.errstate(**_fn_errstate(objective)):
        for j, up, down in zip(idx.tolist(), xp.tolist(), xm.tolist(), strict=True):
            x0 = flat[j]
            try:
                pos_p, a = side(up)
                pos_m, z = side(down)
            finally:
                flat[j] = x0
            if pos_p.size != pos_m.size or not (pos_p == pos_m).all():
                # Both sides, where either moved; the other side is f(x) there.
                cols = np.union1d(pos_p, pos_m)
                a_all, z_all = f0[cols], f0[cols]
                a_all[np.searchsorted(cols, pos_p)] = a
                z_all[np.searchsorted(cols, pos_m)] = z
                pos_p, a, z = cols, a_all, z_all
            got.append((pos_p, a, z))
    objective.calls += 2 * b
    sizes = [g[0].size for g in got]
    rows = np.repeat(np.arange(b), sizes)
    cols, a, z = (np.concatenate([g[k] for g in got]) for k in range(3))
    return rows, cols, a, z, None if perm is False else perm


def _checked(out, shape):
    out = np.asarray(out, dtype=np.float64)
    if out.shape != shape:
        raise UserFunctionError(
            f"fn returned shape {out.shape} at a perturbed point but {shape} at the evaluation "
            "point"
        )
    return out


def _rows_batched(objective, i, idx, xp, xm, bufs=None, batch=MAX_BATCH):
    """The same as :func:`_rows` in calls of a vectorized ``fn`` of ``2 batch`` rows each.

    The perturbed copies of input ``i`` are written into one kept buffer
    (copied afresh from the input before every call: ``fn`` may not write
    into them, but if it does, no later call sees it); the others are
    passed as read-only broadcast views.
    """
    work = objective.work
    b = idx.size
    m = objective.base_output.size
    if bufs is not None and bufs[0].shape[0] >= b:
        fp, fm = bufs[0][:b], bufs[1][:b]
    else:
        fp, fm = np.empty((b, m)), np.empty((b, m))
    batch = max(1, min(batch, b))
    base = work[i].reshape(1, -1)
    x = np.empty((2 * batch, base.shape[1]))
    for s in range(0, b, batch):
        k = min(batch, b - s)
        rows = 2 * k
        xs = x[:rows]
        np.copyto(xs, base)
        xs[np.arange(k), idx[s : s + k]] = xp[s : s + k]
        xs[np.arange(k, rows), idx[s : s + k]] = xm[s : s + k]
        stacked = [
            xs.reshape((rows,) + w.shape) if q == i else np.broadcast_to(w, (rows,) + w.shape)
            for q, w in enumerate(work)
        ]
        out = _batched_call(objective, stacked, rows).reshape(rows, -1)
        fp[s : s + k] = out[:k]
        fm[s : s + k] = out[k:]
    return fp, fm


def _block_stats(objective, fp, fm, x0, xp, xm, perm=None, bufs=None):
    """Quotients, noise and non-finiteness of a block of central differences (rows).

    Everything runs over the outputs that changed only (their flat positions
    found once, the values gathered, then summed per row with ``bincount``):
    one element of ``x`` in ``x @ W`` moves one row of the output, and an
    output equal to ``f(x)`` on both sides contributes exactly 0 to the
    difference, to the one-sided differences and to the noise. Beyond the
    calls, a row costs two comparisons with ``f(x)`` and the gathers.
    ``perm`` (from :func:`_rows`): the order of the columns (:func:`_columns`);
    ``bufs``: scratch masks (:func:`_row_buffers`).
    """
    f0 = _columns(objective, perm, bufs)[2]
    b, m = fp.shape
    # Both sides can move to the same value: an output changed where either side differs
    # from f0 (NaN differs from everything). The flat positions, then rows and columns:
    # np.nonzero of a 2-D mask is 10-20x slower.
    if bufs is not None and bufs[2].shape[0] >= b and bufs[2].shape[1] == m:
        changed, other = bufs[2][:b], bufs[3][:b]
        base = _base_rows(bufs, f0, perm, b)
        np.not_equal(fp, base, out=changed)
        np.not_equal(fm, base, out=other)
        changed |= other
    else:
        changed = fp != f0
        changed |= fm != f0
    where = changed.ravel().nonzero()[0]  # np.flatnonzero, without its Python wrappers
    rows = where // m
    cols = where - rows * m
    # The gathered values and what is computed from them go into kept work arrays (a, z, w,
    # d, and four more): fresh temporaries of this size, freed block after block, made glibc
    # hand their pages back and fault them in again (half the time of this function on
    # tanh(x @ W)). The arithmetic is that of the formulas in the comments, term by term.
    work = _work(bufs, where.size)
    fp.reshape(-1).take(where, out=work[0], mode="clip")
    fm.reshape(-1).take(where, out=work[1], mode="clip")

    def finite_row(p):
        return bool(np.isfinite(fp[p]).all() and np.isfinite(fm[p]).all())

    return _gathered_stats(objective, b, rows, cols, None, None, x0, xp, xm, finite_row, perm,
                           bufs, work)  # fmt: skip


def _gathered_stats(
    objective, b, rows, cols, a, z, x0, xp, xm, finite_row, perm=None, bufs=None, work=None
):
    """:func:`_block_stats` from the changed outputs of a block of ``b`` elements, gathered.

    ``rows`` (ascending) and ``cols``: the element and the position (in the
    outputs' order ``perm``) of each; ``a`` and ``z`` their values at ``x +
    h`` and ``x - h``; ``finite_row(p)``: whether element ``p``'s outputs
    are all finite on both sides (asked where their contraction is not).
    ``work``: :func:`_work` arrays of ``bufs`` whose first two hold ``a`` and
    ``z`` already (then ``a`` and ``z`` are not used).
    """
    _, cot, f0, sigma, rel = _columns(objective, perm, bufs)
    hp, hm = xp - x0, x0 - xm
    delta = xp - xm
    if work is None:
        work = _work(bufs, cols.size)
        np.copyto(work[0], a)
        np.copyto(work[1], z)
    a, z, w, d, t4, t5, t6, t7 = work
    cot.take(cols, out=w, mode="clip")  # ndarray.take: np.take without its Python wrapper
    np.subtract(a, z, out=d)
    num = np.bincount(rows, weights=np.multiply(w, d, out=t4), minlength=b)
    # A non-finite output on either side makes num non-finite (or num overflowed).
    finite = np.isfinite(num)
    for p in np.flatnonzero(~finite):
        finite[p] = finite_row(p)
    # lvl = max(s_c, r_c |a|) + max(s_c, r_c |z|), s_c and r_c sigma and relative at cols
    s_c = sigma.take(cols, out=t4, mode="clip")
    r_c = rel.take(cols, out=t5, mode="clip")
    lvl = np.multiply(np.abs(a, out=t6), r_c, out=t6)
    np.maximum(s_c, lvl, out=lvl)
    other_side = np.multiply(np.abs(z, out=t7), r_c, out=t7)
    np.maximum(s_c, other_side, out=other_side)
    lvl += other_side
    w_abs = np.abs(w, out=t5)
    level = np.bincount(rows, weights=np.multiply(lvl, w_abs, out=lvl), minlength=b)
    terms_w = np.multiply(np.abs(d, out=t7), w_abs, out=t7)  # |w| |d|
    terms = np.bincount(rows, weights=terms_w, minlength=b)
    center = np.zeros(b)
    skew = hp != hm
    if skew.any():
        # Rounding x +- h left the two steps unequal: the difference is centred
        # off x, by curvature times half the difference of the steps. Summed over
        # the rows that need it only (each row's sum is the same either way), and
        # computed on their outputs only (about 1% of the rows of tanh(x @ W)).
        if skew.all():
            g0 = f0.take(cols, out=t4, mode="clip")
            fwd_w = np.multiply(w, np.subtract(a, g0, out=t5), out=t5)  # w (a - g0)
            bwd_w = np.multiply(w, np.subtract(g0, z, out=t6), out=t6)  # w (g0 - z)
        else:
            sel = np.flatnonzero(skew[rows])
            rows, w_s = rows[sel], w[sel]
            g0 = f0[cols[sel]]
            fwd_w = w_s * (a[sel] - g0)  # w (a - g0)
            bwd_w = w_s * (g0 - z[sel])  # w (g0 - z)
        fwd = np.bincount(rows, weights=fwd_w, minlength=b)
        bwd = np.bincount(rows, weights=bwd_w, minlength=b)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            off = np.abs(fwd / hp - bwd / hm) / (0.5 * (hp + hm)) * np.abs(hp - hm)
        center[skew] = off[skew]
    # A step that did not move x (delta 0: stuck, below) or an output that
    # overflowed (num inf) are set apart right after: no warning for them.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        value = num / delta
        noise = (
            NOISE_SAFETY * level / delta
            + center
            + analytic_rounding(terms / delta, objective.noise.kind)
        )
    stuck = ~(delta > 0)  # the step does not move x (or left the float64 range)
    if finite.all() and not stuck.any():
        return value, noise, np.zeros(b, dtype=bool)
    value[~finite] = np.nan
    noise[~finite] = np.inf
    value[stuck] = np.nan
    noise[stuck] = np.inf
    return value, noise, ~finite & ~stuck


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
        out["scale"] = est.scale
    _sharpen(objective, elements, grads, out, est.step, sharpen)
    return out


def _sharpen(objective, elements, grads, out, chosen, which=True):
    """The second ladder of :func:`sharp_partials`, for the elements ``which`` selects.

    ``which``: True (every element), False (none), or a boolean mask over
    ``elements``; ``chosen`` the steps the first ladders chose. ``out`` is
    updated in place where the second ladder's estimate is the smaller.
    """
    if which is False:
        return
    mask = np.ones(len(elements), dtype=bool) if which is True else np.asarray(which, dtype=bool)
    for p, element in enumerate(elements):
        if not mask[p]:
            continue
        step = chosen[p]
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
        q = 0.0 if again.quantum is None else float(again.quantum[0])
        if q > 0.0 and np.isfinite(step) and again.scale is not None:
            # The second ladder measured a rounding of phi's values that the first
            # did not see: it applies to the first's step too (GELU's tanh form at
            # x ~ -6.6, whose quanta the first ladder's rungs happened to straddle
            # evenly, read as a slope known to 1e-17).
            out["error"][p] = max(out["error"][p], 2.0 * q / (step * float(again.scale[0])))
        if out["kink"][p] and not again.kink[0]:
            # A kink at the chosen step is one at x (its jump held there, and the
            # second ladder's steps start above it): where the second saw none, its
            # smaller steps met fn's resolution (SELU at 0, whose slopes below
            # 1e-13 step with the quanta of exp(-t) near 1), not a smooth point.
            continue
        if again.error[0] < out["error"][p]:
            for key in out:
                out[key][p] = getattr(again, key)[0]


def _ladder(objective, i, flat_idx, grads, sharpen=True, steps=False):
    return sharp_partials(
        objective, [(i, int(j)) for j in flat_idx], grads, sharpen=sharpen, steps=steps
    )


def _run_chunk(payload, kind, i, flat_idx, arg):
    """Module-level (picklable) entry point of one chunk on an executor.

    ``payload = (fn, inputs, cotangent, noise, output, grads, scales)``, or those
    pickled (bytes: see :class:`_Runner`); a fresh objective is built here
    (with the parent's measured noise) so that chunks running at the same
    time never share working arrays, and its ``fn`` must give the parent's
    ``output`` at the evaluation point, bitwise. ``arg``: the screen's
    ``(step, how)``, or the ladder's ``(sharpen,)``. Returns ``(result,
    evaluations, notes)``.
    """
    if isinstance(payload, bytes):
        payload = pickle.loads(payload)  # noqa: S301 - pickled by this module's _Runner
    fn, inputs, cotangent, noise, parent_output, grads, scales = payload
    objective = ScalarObjective(fn, inputs, cotangent, noise=noise, scales=scales)
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
        result = _screen(objective, i, flat_idx, *arg)
    else:
        result = _ladder(objective, i, flat_idx, grads, *arg)
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
    """Runs chunks in-process or on an executor, with an optional progress bar.

    What every chunk needs (``fn``, the inputs, the cotangent, the noise
    model, ``fn``'s output and the analytic gradient) is pickled once, here,
    and shipped as bytes: an executor that pickles the arguments of every
    task pickles bytes cheaply, and the worker's ``pickle.loads`` allocates
    the arrays afresh. Dask deserializes NumPy arrays in place, out of its
    network frames, at any byte offset: a ``functools.partial`` of the MLP
    loss whose data array came out at an address 35 bytes past a multiple of
    64 (not even 8-byte aligned) ran its forward pass 2.3x slower (0.93 ms
    against 0.41), and a 2-worker cluster ran the exhaustive check at 0.6-0.9x
    the serial speed.
    """

    def __init__(self, objective, executor, notes, grads=None):
        self.objective = objective
        self.executor = executor
        self.grads = grads
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
        # The inputs as they are now (the working arrays are perturbed in place while chunks
        # run here); no copy when the chunks run in this process.
        self.payload = None
        if self.executor is not None:
            self.payload = (
                objective.fn,
                [x.copy() for x in objective.work],
                objective.cotangent,
                objective.noise,
                objective.base_output,
                grads,
                objective.scales,
            )
            if _needs_pickling(self.executor):
                self.payload = pickle.dumps(self.payload, protocol=pickle.HIGHEST_PROTOCOL)

    @property
    def local(self):
        """Whether the chunks run in this process."""
        return self.executor is None

    def run(self, kind, chunks, arg_of, bar=None):
        """``chunks``: list of ``(i, flat_idx)``; returns results in the same order."""
        results = [None] * len(chunks)
        if self.executor is None:
            for c, (i, idx) in enumerate(chunks):
                calls0 = self.objective.calls
                if kind == "screen":
                    results[c] = _screen(self.objective, i, idx, *arg_of(i))
                else:
                    results[c] = _ladder(self.objective, i, idx, self.grads, *arg_of(i))
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


#: A sample whose ladder chose a step this far below the samples' median is left out of the model.
OUTLIER_STEP = 2.0**-6


def _smallest(keys, k):
    """``np.argsort(keys, kind="stable")[:k]`` in O(n): the k smallest keys, ties by position."""
    k = min(int(k), keys.size)
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if keys.size > 4 * k:
        kth = keys[np.argpartition(keys, k - 1)[:k]].max()
        below = np.flatnonzero(keys < kth)
        chosen = np.concatenate([below, np.flatnonzero(keys == kth)[: k - below.size]])
    else:
        chosen = np.arange(keys.size)
    return chosen[np.argsort(keys[chosen], kind="stable")][:k]


def _upper_quartile(values):
    """``float(np.quantile(values, 0.75))`` (NumPy's default, linear method), for a few values.

    NumPy's own steps (the same partition of a copy, NaN if the largest is
    NaN, its ``_lerp`` between the order statistics around ``0.75 (n - 1)``)
    without the 80 us of Python it spends per call: the calibration scores
    every candidate step of every input with it.
    """
    arr = np.array(values, dtype=np.float64).reshape(-1)
    n = arr.size
    if n == 0:
        return float(np.quantile(arr, 0.75))
    virtual = (n - 1) * 0.75
    below, above = (-1, -1) if virtual >= n - 1 else (math.floor(virtual), math.floor(virtual) + 1)
    arr.partition(np.unique(np.array([0, -1, below, above], dtype=np.intp)))
    if math.isnan(arr[-1]):
        return float(arr[-1])
    gamma = virtual - below
    a, b = float(arr[below]), float(arr[above])
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def _best_step(candidates, screened, v, v_err, scales, nz):
    """The candidate screen step whose samples' relative error bounds are the smallest.

    ``screened``: :func:`_screen` of the ``k`` usable samples at every step of
    ``candidates`` (step-major), ``v`` and ``v_err`` their ladders' values and
    errors, ``scales`` their scales, ``nz`` where ``v`` is nonzero. Returns
    ``(score, step, model, bound)`` of the first candidate with the smallest
    third quartile of ``bound / |v|`` (``model``: ``(C, D)`` of
    :func:`_truncation`, ``bound``: noise plus truncation per sample), or
    ``None`` when no candidate screened finitely. Every candidate is a row of
    one array: the arithmetic of one candidate at a time, elementwise, in the
    time of one (the calibration's Python was a tenth of the check on
    ``tanh(x @ W)`` with 2,000 inputs).
    """
    n = len(candidates)
    c, noise, nonfinite = (np.asarray(a).reshape(n, -1) for a in screened)
    scored = ~np.any(nonfinite, axis=1) & np.all(np.isfinite(c), axis=1)
    r = np.asarray(candidates, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = r * scales
        # All of the deviation may be truncation (below the noise, the
        # samples only bound it): h^2 grows faster than noise shrinks
        # over the elements' steps.
        excess = np.maximum(np.abs(c - v) - v_err, 0.0)
        # h^2 underflows to 0 at inputs near 1e-170; no deviation means no model.
        per_c = np.where(excess > 0, excess / (h * h), 0.0)
        big_c = np.max(per_c, axis=1)
        if nz.any():
            big_d = np.max(per_c[:, nz] / np.abs(v[nz]), axis=1)
        else:
            big_d = np.full(n, np.inf)
        bound = noise + _truncation(h, v, (big_c[:, None], big_d[:, None]))
        rel = bound[:, nz] / np.abs(v[nz]) if nz.any() else bound
    best = None
    for q, step in enumerate(candidates):
        if not scored[q]:
            continue
        score = _upper_quartile(rel[q])
        if best is None or score < best[0]:
            best = (score, step, (float(big_c[q]), float(big_d[q])), bound[q])
    return best


class _Pending:
    """Full ladders run at calibration on typical samples, used only if the screen flags them.

    A typical element (of the median magnitude) that is a calibration sample
    is screened like any other: its reference is the screen's unless the
    screen (and the second look) flag it, and then the ladder already run
    decides, completed with the sharpening ladder where that did not run
    (:meth:`take`), exactly as the ladder of stage 2 would have. Its
    ladder's error is the full ladder's threshold at a typical element
    either way (:func:`_typical`).
    """

    def __init__(self, flat, ladder, chosen, sharpened, grads, i):
        self.flat, self.ladder, self.chosen = flat, ladder, chosen
        self.sharpened, self.grads, self.i = sharpened, grads, i

    def _at(self, flat):
        order = np.argsort(self.flat, kind="stable")
        return order[np.searchsorted(self.flat, flat, sorter=order)]

    def errors(self, flat):
        """The ladders' error estimates at the flat indices ``flat`` (among ``self.flat``)."""
        return self.ladder["error"][self._at(flat)]

    def take(self, objective, flat):
        """The completed ladders at the flat indices ``flat`` (all of them among ``self.flat``)."""
        at = self._at(flat)
        todo = at[~self.sharpened[at]]
        if todo.size:
            sub = {k: a[todo] for k, a in self.ladder.items()}
            elements = [(self.i, int(j)) for j in self.flat[todo]]
            _sharpen(objective, elements, self.grads, sub, self.chosen[todo], True)
            for k, a in sub.items():
                self.ladder[k][todo] = a
            self.sharpened[todo] = True
        return {k: a[at] for k, a in self.ladder.items() if k != "step"}


#: How far above ``T0`` the screen of a reduced-precision fn may step (its ladders climb
#: where fn moves by only a few of its units at ``T0``: float32 outputs of 1 that inputs of
#: scale 1e-6 move by 1e-7).
SCREEN_UP = 2.0**12


def _screen_top(objective, i):
    """The largest relative screen step of input ``i``: ``T0``, or ``T0 SCREEN_UP``.

    Above ``T0`` only where fn is coarse (a reduced type inside, or noise far above
    float64's) and input ``i`` holds no tied values: ties mark a piecewise fn (a sort, a
    max), whose ladders climb over its pieces at float16's noise (a float16 sort of values
    two units apart chose steps of 16 times their scale), where a screen must not follow.
    """
    noise = objective.noise
    if not (noise.kind is not None or noise.coarse):
        return T0
    x = np.asarray(objective.point[i]).reshape(-1)
    if np.unique(x).size < x.size:
        return T0
    return T0 * SCREEN_UP


def _calibrate(objective, i, flat_idx, grads, rng, how="copies"):
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

    Returns ``(step, model, sample_idx, sample_result, pending)``: the
    samples whose ladders are their references and those results; ``pending``
    (:class:`_Pending`) the typical samples, to be screened like any other
    element. ``step`` (relative to each element's scale) is ``None`` when
    no candidate step gave a usable screen (then every element of the input
    gets the ladder, and every sample's ladder is its reference).
    """
    g = np.abs(np.asarray(grads[i], dtype=np.float64).reshape(-1)[flat_idx])
    n = g.size
    n_big = N_LARGEST
    big = _smallest(-g, n_big)
    rest = np.ones(n, dtype=bool)
    rest[big] = False
    # The others of the median magnitude (nonzero where possible): typical elements.
    n_typ = N_SAMPLE - n_big
    pool = rest & (g > 0)
    if np.count_nonzero(pool) < n_typ:
        pool = rest
    nonzero = g[g > 0]
    m = float(np.median(nonzero)) if nonzero.size else 0.0
    del nonzero
    far = np.abs(g - m)
    far[~pool] = np.inf
    typ = _smallest(far, min(n_typ, int(np.count_nonzero(pool))))
    del far
    rest[typ] = False
    # Random spares (nonzero gradients first) in a random order, if too few are usable.
    pool = rest & (g > 0)
    rest = np.flatnonzero(pool if np.count_nonzero(pool) >= MORE_SAMPLES else rest)
    del pool
    spare = flat_idx[rng.choice(rest, size=min(MORE_SAMPLES, rest.size), replace=False)]
    sample = np.concatenate([flat_idx[big], flat_idx[typ]])
    typical = np.zeros(sample.size, dtype=bool)
    typical[big.size :] = True
    # The ladders of the largest samples (and spares) are their references too; the typical
    # samples are screened like every other element, and their ladders decide only if the
    # screen flags them. The second, sharpening ladder of sharp_partials runs only where it
    # can matter: at samples the screen could not have judged as sharply (see the end).
    ladder = _ladder(objective, i, sample, grads, sharpen=False, steps=True)

    def usable_of(lad):
        return np.isfinite(lad["value"]) & ~lad["kink"] & np.isfinite(lad["step"])

    if np.count_nonzero(usable_of(ladder)) < MIN_USABLE and spare.size:
        more = _ladder(objective, i, spare, grads, sharpen=False, steps=True)
        sample = np.concatenate([sample, spare])
        typical = np.concatenate([typical, np.zeros(spare.size, dtype=bool)])
        ladder = {key: np.concatenate([ladder[key], more[key]]) for key in ladder}
    chosen = ladder["step"].copy()
    usable = usable_of(ladder)
    best = None
    # Above T0 only where no sample sits at a kink: a screen step that far crosses the
    # kinks of a piecewise fn (a float16 sort, values two units apart).
    top = T0 if np.any(ladder["kink"]) else _screen_top(objective, i)
    if top > T0:
        # Steps relative to the input's scales (a ladder that climbed far measured its
        # step on the scale it climbed to).
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            own = chosen * ladder["scale"] / objective.scales[i].reshape(-1)[sample]
    else:
        own = chosen
    ladder.pop("scale")
    if np.any(usable):
        # Steps around the ones the ladders chose (the geometric median), never above T0
        # (above it, up to :func:`_screen_top`, for a reduced-precision fn).
        center = 2.0 ** float(np.round(np.median(np.log2(own[usable]))))
        # A sample whose ladder went far below the others' steps (a kink near it, not at it:
        # abs(x - c) with c 1e-6 away) does not follow the h^2 model at the screen's steps;
        # in the model it would widen every element's bound to its kink. Left out, the
        # screen is only stricter (an element like it fails the screen and gets the ladder).
        usable &= own >= center * OUTLIER_STEP
        v = ladder["value"][usable]
        v_err = ladder["error"][usable]
        scales = objective.scales[i].reshape(-1)[sample[usable]]
        nz = np.abs(v) > 0
        candidates = sorted({min(top, center * f) for f in SCREEN_STEPS}, reverse=True)
        # Every candidate step in one screen (one block of rows, not one per step).
        k = int(np.count_nonzero(usable))
        screened = _screen(
            objective, i, np.tile(sample[usable], len(candidates)),
            np.repeat(np.asarray(candidates), k), how,
        )  # fmt: skip
        best = _best_step(candidates, screened, v, v_err, scales, nz)
    # A sample whose first ladder is already as sharp as the screen's bound there needs no
    # second ladder; every other one (kinks, unusable samples, an input left unscreened) gets it.
    sharpen = np.ones(sample.size, dtype=bool)
    if best is not None:
        sharpen[usable] = ~(ladder["error"][usable] <= best[3])
    if best is None:
        typical[:] = False  # nothing is screened: every sample's ladder is its reference
    elements = [(i, int(j)) for j in sample]
    _sharpen(objective, elements, grads, ladder, chosen, sharpen & ~typical)
    # A typical sample the screen flags gets the rest of the ladder then (:func:`_Pending`).
    pending = _Pending(sample[typical], {k: a[typical] for k, a in ladder.items()},
                       chosen[typical], sharpen[typical], grads, i)  # fmt: skip
    keep = ~typical
    sample = sample[keep]
    ladder = {k: a[keep] for k, a in ladder.items()}
    ladder.pop("step")
    if best is None:
        return None, None, sample, ladder, pending
    return best[1], best[2], sample, ladder, pending


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
    vectorized=False,
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
    executor, progress, screen, chunk_size, vectorized
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
        stage; ``second_look``: how many of the screened ones passed only
        at the second look, :func:`_second_look`), ``steps`` (screen step
        per input, relative to each element's scale; ``None`` where
        unscreened).

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
    runner = _Runner(objective, executor, notes, grads)
    rng = np.random.default_rng(0)
    screens = screen and any(np.size(idx) > SCREEN_MIN for _, idx in indices)
    how = calling(objective, vectorized) if screens else "copies"
    results, screen_of, laddered, pending = {}, {}, {}, {}
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
        h, model, sample, ladder, pending[i] = _calibrate(objective, i, idx, grads, rng, how)
        steps[i] = h
        # Positions of the samples within idx (a dict of every element costs 12x the input).
        order = np.argsort(idx, kind="stable")
        sample_pos = order[np.searchsorted(idx, sample, sorter=order)]
        for key, arr in ladder.items():
            results[i][key][sample_pos] = arr
        laddered[i] = [sample_pos]
        del order
        rest = np.ones(n, dtype=bool)
        rest[sample_pos] = False
        if h is None:
            to_ladder.append((i, np.flatnonzero(rest)))
        else:
            screen_of[i] = (h, model, np.flatnonzero(rest))
    runner.evaluations += objective.calls - calls_before

    # Stage 1: the screen.
    size = chunk_size or int(min(MAX_CHUNK, max(256, math.ceil(n_total / 32))))
    n_screen = sum(len(pos) for _, _, pos in screen_of.values())
    elapsed = time.perf_counter() - started
    per_eval = elapsed / max(runner.evaluations, 1)
    expected = per_eval * 2 * n_screen
    bar = _progress_bar(progress, expected, n_screen)
    # Chunks serve an executor and the progress bar; without either, the largest (fewer
    # blocks of rows: on tanh(x @ W) with 2,000 elements, chunks of 256 cost 2-8% more).
    screen_size = MAX_CHUNK if chunk_size is None and bar is None and runner.local else size
    chunks, owners = [], []
    idx_of = {i: np.asarray(idx, dtype=np.intp) for i, idx in indices}
    for i, (_, _, pos) in screen_of.items():
        for c in _chunks(i, pos, screen_size):
            chunks.append((i, idx_of[i][c[1]]))
            owners.append((i, c[1]))
    try:
        outs = runner.run("screen", chunks, lambda i: (screen_of[i][0], how), bar)
    finally:
        if bar is not None:
            bar.close()
    n_screened = 0
    rechecks = []  # (i, positions, c, noise, error) of the screen's near misses
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
            # Near misses get a second look (4 evaluations) before the ladder (about 40).
            near = ~ok & ~nonfinite & np.isfinite(value)
            with np.errstate(invalid="ignore", over="ignore"):
                near &= np.abs(a - value) <= RECHECK_WITHIN * (atol + rtol * np.abs(value) + err)
            if np.any(near):
                rechecks.append((i, pos[near], value[near], noise[near], err[near]))
            if not np.all(ok | near):
                to_ladder.append((i, pos[~ok & ~near]))

    # Stage 1b: the near misses, extrapolated over the screen's step doubled and quadrupled.
    n_rescreened = 0
    if rechecks:
        n_rescreened = _second_look(
            objective, runner, rechecks, idx_of, screen_of, grads, how, size, atol, rtol,
            results, to_ladder,
        )  # fmt: skip
    n_screened += n_rescreened

    # Stage 2: the ladder for whatever the screen could not settle (typical samples: their own).
    chunks, owners = [], []
    lsize = max(1, size // 8)
    calls0, n_pending = objective.calls, 0
    for i, pos in to_ladder:
        laddered.setdefault(i, []).append(pos)
        if i in pending and pending[i].flat.size:
            hit = np.isin(idx_of[i][pos], pending[i].flat)
            if np.any(hit):
                for key, arr in pending[i].take(objective, idx_of[i][pos[hit]]).items():
                    results[i][key][pos[hit]] = arr
                n_pending += int(np.count_nonzero(hit))
                pos = pos[~hit]
        for c in _chunks(i, pos, lsize):
            chunks.append((i, idx_of[i][c[1]]))
            owners.append((i, c[1]))
    runner.evaluations += objective.calls - calls0
    n_ladder = sum(len(c[1]) for c in chunks)
    bar = _progress_bar(progress, per_eval * 16 * n_ladder, n_ladder)
    try:
        outs = runner.run("ladder", chunks, lambda i: (screen,), bar)
    finally:
        if bar is not None:
            bar.close()
    for (i, pos), res in zip(owners, outs, strict=True):
        for key, arr in res.items():
            results[i][key][pos] = arr

    # The full ladder's threshold at typical elements (what the report says the check catches).
    typical = {i: None for i, _ in indices}
    if screen:
        calls0 = objective.calls
        for i, _ in indices:
            done = np.concatenate(laddered.get(i, []) + [np.zeros(0, dtype=np.intp)])
            typical[i] = _typical(
                objective, i, results[i], idx_of[i], done, grads, pending.get(i)
            )
        runner.evaluations += objective.calls - calls0
    n_ladder += n_pending
    n_sampled = n_total - n_screened - n_ladder
    if screen:
        method = (
            "central differences per element: one step per input chosen on sampled full ladders "
            f"({n_screened} screened at 2 evaluations each), step ladder + Richardson "
            f"for {n_ladder + n_sampled} (samples, screen failures, kinks, small inputs)"
        )
    else:
        method = "central differences per element, step ladder + Richardson"
    notes = list(dict.fromkeys(notes + list(objective.notes)))
    return results, {
        "method": method,
        "evaluations": runner.evaluations,
        "notes": notes,
        "screened": n_screened,
        "second_look": n_rescreened,
        "laddered": n_ladder + n_sampled,
        "steps": steps,
        "typical": typical,
    }


def _typical(objective, i, res, idx, laddered, grads, pending=None):
    """The full ladder's error at typical elements of input ``i``: ``(flat indices, errors)``.

    An element the screen flags gets the full ladder, which decides; so the
    smallest error the check catches in a typical element is the ladder's
    threshold wherever that is the larger (the report's sensitivity). It is
    measured at the :data:`TYPICAL_SAMPLES` elements nearest the median
    magnitude of the references (finite, nonzero, not at a kink), in this
    run's objective (its noise model measured once). Where the ladder ran
    at such an element already (a typical calibration sample, ``pending``;
    or its reference is the ladder's, ``laddered``: positions within
    ``idx``), that is its error; elsewhere the first ladder runs, and the
    second, sharpening one (:func:`sharp_partials`) only where the first is
    less sharp than the element's own reference: a threshold at or below
    that one cannot raise the figure above the element's own. ``(empty,
    empty)`` for inputs of at most :data:`TYPICAL_SAMPLES` such elements.
    """
    value = res["value"]
    mag = np.abs(np.where(np.isfinite(value), value, 0.0))
    mag[res["kink"]] = 0.0
    nz = np.flatnonzero(mag > 0)
    if nz.size <= TYPICAL_SAMPLES:
        return idx[:0], np.zeros(0)
    m = float(np.median(mag[nz]))
    pos = nz[_smallest(np.abs(mag[nz] - m), TYPICAL_SAMPLES)]
    del mag, nz
    error = res["error"][pos].copy()
    todo = ~np.isin(pos, laddered)
    if pending is not None and pending.flat.size:
        ran = np.isin(idx[pos], pending.flat)
        if np.any(ran):
            flat = idx[pos[ran]]
            # The sharpening ladder where the first is less sharp than the element's reference.
            blunt = pending.errors(flat) > error[ran]
            if np.any(blunt):
                pending.take(objective, flat[blunt])
            error[ran] = pending.errors(flat)
            todo &= ~ran
    if np.any(todo):
        flat = idx[pos[todo]]
        lad = _ladder(objective, i, flat, grads, sharpen=False, steps=True)
        elements = [(i, int(j)) for j in flat]
        _sharpen(objective, elements, grads, lad, lad["step"], ~(lad["error"] <= error[todo]))
        error[todo] = lad["error"]
    return idx[pos], error


def _second_look(
    objective, runner, rechecks, idx_of, screen_of, grads, how, size, atol, rtol, results, to_ladder
):
    """The screen's near misses, with a Richardson extrapolant of their own: 4 more evaluations.

    The truncation model of the screen is fitted on a few samples; an element
    whose third derivative is larger than theirs misses the screen by a small
    factor (about 1% of the elements of ``tanh(x @ W)``, 2 to 5 times the
    bound), and the full ladder costs about 40 evaluations. Here central
    differences at twice and four times the screen's step, ``c2`` and
    ``c4``, give two estimates of the ``h^2`` term of the screen's ``c``:
    ``ta = (c2 - c) / 3`` and ``tb = (c4 - c2) / 12``. They must agree (to
    half the larger, beyond their noise; a kink within the steps or large
    higher-order terms break that, and such elements go to the ladder). The
    extrapolant ``R = c - ta`` then has truncation ``(4/15) (tb - ta)``
    (the ``h^4`` term); its error is the noise of ``R`` plus ``|tb - ta|``.

    An element passes when ``|analytic - R|`` is within the tolerance plus
    the *smaller* of that error and the screen's own bound at this element:
    the second look never accepts a disagreement the screen's bound would
    not have, so what the screen can catch (and the sensitivity the report
    states from it) does not get worse; it only replaces ``c`` by a better
    value. The reference of an element that passes is ``R`` with its own
    error. The others go to the ladder. Returns the number that passed.
    """
    by_input = {}
    for i, *parts in rechecks:
        by_input.setdefault(i, []).append(parts)
    rechecks = [
        (i, *[np.concatenate(column) for column in zip(*parts, strict=True)])
        for i, parts in by_input.items()
    ]
    chunks, owners = [], []
    for n, (i, pos, *_rest) in enumerate(rechecks):
        for c in _chunks(i, pos, size):
            chunks.append((i, idx_of[i][c[1]]))
            owners.append(n)
    looks = {}
    for factor in RECHECK_STEPS:
        outs = runner.run("screen", chunks, lambda i, f=factor: (f * screen_of[i][0], how))
        looks[factor] = outs
    mine = [[] for _ in rechecks]
    for c, n in enumerate(owners):
        mine[n].append(c)
    passed = 0
    for n, (i, pos, c1, n1, err1) in enumerate(rechecks):

        def gather(factor, k, chunks_of=mine[n]):
            return np.concatenate([looks[factor][c][k] for c in chunks_of])

        c2, n2, bad2 = gather(2.0, 0), gather(2.0, 1), gather(2.0, 2)
        c4, n4, bad4 = gather(4.0, 0), gather(4.0, 1), gather(4.0, 2)
        a = np.asarray(grads[i], dtype=np.float64).reshape(-1)[idx_of[i][pos]]
        with np.errstate(invalid="ignore", over="ignore"):
            ta, tb = (c2 - c1) / 3.0, (c4 - c2) / 12.0
            n_ta, n_tb = (n1 + n2) / 3.0, (n2 + n4) / 12.0
            agree = np.abs(tb - ta) <= 0.5 * np.maximum(np.abs(ta), np.abs(tb)) + n_ta + n_tb
            value = c1 - ta
            error = n1 + n_ta + np.abs(tb - ta)
            ok = agree & ~bad2 & ~bad4 & np.isfinite(value) & np.isfinite(error)
            ok &= np.abs(a - value) <= atol + rtol * np.abs(value) + np.minimum(error, err1)
        res = results[i]
        res["value"][pos[ok]] = value[ok]
        res["error"][pos[ok]] = error[ok]
        passed += int(np.count_nonzero(ok))
        if not np.all(ok):
            to_ladder.append((i, pos[~ok]))
    return passed


def _progress_bar(progress, expected_seconds, total):
    if progress is False or total == 0:
        return None
    if progress is None and (expected_seconds < PROGRESS_AFTER or not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="el", desc="exhaustive check", leave=False)
