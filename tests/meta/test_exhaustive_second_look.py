"""The exhaustive screen's second look, its calibration and how it stores outputs.

An element whose truncation is larger than the calibration samples' misses
the screen by a small factor; it gets a second look (central differences at
twice and four times the step, a Richardson extrapolant whose two ``h^2``
estimates must agree) before the full ladder. The second look may only
settle correct elements: it never accepts a disagreement larger than the
screen's own bound, and kinks within its steps send the element to the
ladder. The constructions: sums of ``sin(a_j x_j) / a_j`` where a few
elements oscillate 10-60x faster than the rest (gradients of the same size,
third derivatives 100-3600x larger), at several sizes, input scales and
seeds; and outputs stored transposed in memory.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracles
from oracles.numerics import exhaustive
from oracles.numerics.exhaustive import exhaustive_partials
from oracles.numerics.objective import ScalarObjective


def _fast_few(n, seed, scale=1.0, k=6):
    """``fn(x) = sin(a x) / a`` elementwise; ``k`` elements have ``a`` 10-60x the others'."""
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=n)
    a = np.full(n, 1.0 / scale)
    fast = rng.choice(n, size=k, replace=False)
    a[fast] *= rng.uniform(10.0, 60.0, size=k)

    def fn(x):
        return np.sin(a * x) / a

    def vjp(g, x):
        return g * np.cos(a * x)

    return fn, vjp, x, fast


def _plant(vjp, j, rel):
    def wrong(g, x):
        d = np.array(vjp(g, x), dtype=np.float64, copy=True)
        d[j] = d[j] * (1.0 + rel) if d[j] != 0 else rel
        return d

    return wrong


def _failing(report):
    return sorted(e.index[0] for r in report.inputs for e in r.worst if not e.passed)


def _partials(fn, vjp, x, seed=3, cot=None):
    if cot is None:
        cot = np.random.default_rng(seed).standard_normal(x.shape)
    obj = ScalarObjective(fn, (x,), cot)
    grads = [vjp(cot, x)]
    return exhaustive_partials(obj, grads, [(0, np.arange(x.size))]), grads, cot


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [300, 2000])
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e5])
def test_near_misses_are_settled_by_the_second_look_not_the_ladder(n, scale, seed):
    fn, vjp, x, fast = _fast_few(n, seed, scale)
    (res, info), grads, _ = _partials(fn, vjp, x)
    assert info["screened"] + info["laddered"] == n
    # The samples, and nothing else, go to the ladder; the fast elements the samples
    # did not cover pass at the second look.
    assert info["laddered"] <= exhaustive.N_SAMPLE + exhaustive.MORE_SAMPLES, info
    assert info["second_look"] >= 1, info
    err = np.abs(res[0]["value"] - grads[0])
    assert np.all(err <= res[0]["error"]), float(np.max(err / res[0]["error"]))
    report = oracles.check_vjp(fn, vjp, (x,), mode="exhaustive")
    assert report.ok, str(report)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rel", [1e-5, 1e-6, 1e-7])
def test_errors_at_second_look_elements_are_named(rel, seed):
    """A mistake where the screen's model is too small: the second look must not hide it."""
    fn, vjp, x, fast = _fast_few(1000, seed)
    for j in fast[:3]:
        report = oracles.check_vjp(fn, _plant(vjp, int(j), rel), (x,), mode="exhaustive")
        assert _failing(report) == [int(j)], (int(j), rel, str(report))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_second_look_accepts_nothing_beyond_the_screens_bound(seed, monkeypatch):
    """Every element it settles agrees with its extrapolant within the screen's own bound."""
    fn, vjp, x, fast = _fast_few(1500, seed)
    seen = []
    original = exhaustive._second_look

    def spy(objective, runner, rechecks, *args):
        seen.extend(rechecks)
        return original(objective, runner, rechecks, *args)

    monkeypatch.setattr(exhaustive, "_second_look", spy)
    (res, info), grads, _ = _partials(fn, vjp, x)
    assert seen and info["second_look"] > 0
    for i, pos, c1, _n1, err1 in seen:
        settled = np.isfinite(res[i]["error"][pos]) & (res[i]["value"][pos] != c1)
        assert settled.any()
        a = grads[i][pos]
        assert np.all(np.abs(a - res[i]["value"][pos])[settled] <= err1[settled])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kinks_within_the_second_looks_steps_go_to_the_ladder(seed, monkeypatch):
    """``|x - k|`` kinks between 1.5 and 3.5 screen steps from the fast elements.

    The screen's own step does not reach them, its doubled and quadrupled
    steps do: the two ``h^2`` estimates disagree and the ladder decides. (The
    noise model is measured on the function without the kinks: measured on
    this one, its probe steps cross the kinks too and the outputs there read
    as noisy, a limit of the noise probe, not of the screen.)
    """
    fn0, vjp0, x, fast = _fast_few(800, seed)
    (_, info0), _, cot = _partials(fn0, vjp0, x)
    h = info0["steps"][0] * np.maximum(np.abs(x), np.sqrt(np.mean(x**2)))
    rng = np.random.default_rng(seed + 10)
    kinks = x.copy()
    kinks[fast] = x[fast] + rng.uniform(1.5, 3.5, size=fast.size) * h[fast]
    weight = np.zeros_like(x)
    weight[fast] = 0.3  # the other elements: no kink term at all

    def fn(x):
        return fn0(x) + weight * np.abs(x - kinks)

    def vjp(g, x):
        return vjp0(g, x) + weight * g * np.sign(x - kinks)

    looked, laddered = [], []
    second, ladder = exhaustive._second_look, exhaustive._ladder

    def spy_look(objective, runner, rechecks, *args):
        looked.extend(int(j) for _, pos, *_ in rechecks for j in pos)
        return second(objective, runner, rechecks, *args)

    def spy_ladder(objective, i, flat_idx, *args, **kwargs):
        laddered.extend(int(j) for j in flat_idx)
        return ladder(objective, i, flat_idx, *args, **kwargs)

    monkeypatch.setattr(exhaustive, "_second_look", spy_look)
    monkeypatch.setattr(exhaustive, "_ladder", spy_ladder)
    noise = ScalarObjective(fn0, (x,), cot).noise
    truth = vjp(cot, x)
    for rel in (0.0, 1e-6):
        looked.clear()
        laddered.clear()
        grads = [_plant(vjp, int(fast[0]), rel)(cot, x) if rel else truth]
        obj = ScalarObjective(fn, (x,), cot, noise=noise)
        res, info = exhaustive_partials(obj, grads, [(0, np.arange(x.size))])
        assert set(looked) & set(fast.tolist()), (looked, fast)
        assert set(looked) & set(fast.tolist()) <= set(laddered), (looked, laddered)
        assert np.all(np.abs(res[0]["value"] - truth) <= res[0]["error"])
        if rel:
            j = int(fast[0])
            assert abs(grads[0][j] - res[0]["value"][j]) > res[0]["error"][j]


def _calibration_picks(g):
    """The samples the calibration takes (its documented rule): the largest, then typical."""
    largest = np.argsort(-g, kind="stable")[: exhaustive.N_LARGEST]
    m = float(np.median(g[g > 0]))
    far = np.abs(g - m)
    far[largest] = np.inf
    typical = np.argsort(far, kind="stable")[: exhaustive.TYPICAL_SAMPLES]
    return largest, typical


@pytest.mark.parametrize("n", [200, 400, 1500])
def test_fewer_usable_samples_draw_more(monkeypatch, n):
    """Samples at kinks are not usable: more random ones are drawn (the screen stays on)."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    w = rng.uniform(-0.9, 0.9, size=n)
    g = 1.0 + w  # the gradient below, under an all-ones cotangent
    largest, typical = _calibration_picks(g)
    # The largest samples and all typical ones but one sit at ReLU kinks: one usable sample.
    # (Linear beside the kinks: one-sided slopes without truncation, exactly w and 1 + w.)
    at_kink = np.concatenate([largest, typical[1:]])
    c = np.full(n, -100.0)
    c[at_kink] = x[at_kink]

    def fn(x):
        return np.maximum(x - c, 0.0) + w * x

    def vjp(g, x):
        return g * ((x - c >= 0) + w)

    calls = []
    original = exhaustive._ladder

    def spy(objective, i, flat_idx, *args, **kwargs):
        calls.append(len(flat_idx))
        return original(objective, i, flat_idx, *args, **kwargs)

    monkeypatch.setattr(exhaustive, "_ladder", spy)
    (res, info), grads, _ = _partials(fn, vjp, x, cot=np.ones(x.shape))
    assert np.array_equal(np.abs(grads[0]), g)
    assert calls[:2] == [exhaustive.N_SAMPLE, exhaustive.MORE_SAMPLES], calls
    assert info["steps"][0] is not None
    assert np.all(res[0]["kink"][at_kink])
    # The ladder decides at the largest samples, the spares, and the typical samples the
    # screen flags (those at kinks); the usable typical sample passes the screen.
    want = exhaustive.N_LARGEST + exhaustive.MORE_SAMPLES + typical.size - 1
    assert info["laddered"] == want, info
    assert oracles.check_vjp(fn, vjp, (x,), direction=np.ones(x.shape), mode="exhaustive").ok


def _transposed(x, W):
    return np.tanh(x @ W).T  # a view: F-ordered in memory


def _transposed_vjp(g, x, W):
    d = g.T * (1 - np.tanh(x @ W) ** 2)
    return d @ W.T, x.T @ d


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(30, 20, 15), (4, 50, 40)])
def test_outputs_stored_in_their_memory_order_give_the_same_numbers(shape, seed):
    m, k, n = shape
    rng = np.random.default_rng(seed)
    xs = (rng.normal(size=(m, k)), rng.normal(size=(k, n)) / np.sqrt(k))
    out = _transposed(*xs)
    assert exhaustive._layout(out) == (1, 0)
    cot = rng.standard_normal(out.shape)
    grads = list(_transposed_vjp(cot, *xs))
    idx = [(i, np.arange(x.size)) for i, x in enumerate(xs)]
    res_t, info_t = exhaustive_partials(ScalarObjective(_transposed, xs, cot), grads, idx)

    def contiguous(x, W):
        return np.ascontiguousarray(_transposed(x, W))

    res_c, info_c = exhaustive_partials(ScalarObjective(contiguous, xs, cot), grads, idx)
    assert info_t["steps"] == info_c["steps"]
    for i in range(2):
        np.testing.assert_allclose(res_t[i]["value"], res_c[i]["value"], rtol=1e-12, atol=0)
        np.testing.assert_allclose(res_t[i]["error"], res_c[i]["error"], rtol=1e-6)
        assert np.all(np.abs(res_t[i]["value"] - grads[i].ravel()) <= res_t[i]["error"])
    j = int(np.argsort(np.abs(grads[1]).ravel())[grads[1].size // 2])

    def wrong(g, x, W):
        dx, dW = _transposed_vjp(g, x, W)
        dW = dW.copy()
        dW.reshape(-1)[j] *= 1 + 1e-7
        return dx, dW

    report = oracles.check_vjp(_transposed, wrong, xs, direction=cot, mode="exhaustive")
    named = [(r.name, e.index) for r in report.inputs for e in r.worst if not e.passed]
    assert named == [("W", tuple(int(v) for v in np.unravel_index(j, xs[1].shape)))], str(report)


def test_a_pickled_payload_gives_the_numbers_of_the_tuple():
    """What a process pool or Dask receives (bytes) and what a thread pool shares (objects)."""
    import pickle

    fn, vjp, x, _ = _fast_few(200, 0)
    cot = np.random.default_rng(0).standard_normal(x.shape)
    obj = ScalarObjective(np.sin, (x,), cot)
    grads = [np.cos(x) * cot]
    payload = (np.sin, [x.copy()], cot, obj.noise, obj.base_output, grads, obj.scales)
    idx = np.arange(50, 90)
    for kind, arg in (("screen", (2.0**-12, "direct")), ("ladder", (True,))):
        a = exhaustive._run_chunk(payload, kind, 0, idx, arg)
        b = exhaustive._run_chunk(pickle.dumps(payload), kind, 0, idx, arg)
        assert pickle.dumps(a) == pickle.dumps(b)


@pytest.mark.parametrize("how", ["direct", "copies"])
@pytest.mark.parametrize("shape", [(30, 20, 15), (3, 40, 1)])
def test_reused_row_buffers_leave_no_stale_rows(shape, how, monkeypatch):
    """Blocks of rows reuse one buffer: any block size, any order, same numbers as fresh."""
    m, k, n = shape
    rng = np.random.default_rng(7)
    xs = (rng.normal(size=(m, k)), rng.normal(size=(k, n)) / np.sqrt(k))
    fn = _transposed
    cot = rng.standard_normal(fn(*xs).shape)
    monkeypatch.setattr(exhaustive, "BLOCK_FLOATS", 7 * fn(*xs).size)  # blocks of 7 rows
    shared = ScalarObjective(fn, xs, cot)
    for i, idx in ((0, np.arange(xs[0].size)), (1, np.arange(5)), (0, np.arange(3, 40, 3))):
        again = exhaustive._screen(shared, i, idx, 2.0**-12, how)
        fresh = exhaustive._screen(ScalarObjective(fn, xs, cot), i, idx, 2.0**-12, how)
        for a, b in zip(again, fresh, strict=True):
            np.testing.assert_array_equal(a, b)
