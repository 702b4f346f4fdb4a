"""mode="exhaustive": the two-stage screen, executors, progress, agreement with the ladder."""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

import oracles
import reference as R
from oracles.errors import UserFunctionError
from oracles.numerics import exhaustive
from oracles.numerics.exhaustive import Exhaustive, exhaustive_partials
from oracles.numerics.objective import ScalarObjective
from reference import mlp, mnist
from reference.affine import affine, affine_vjp
from reference.pitfalls import CATALOG

NAMES = ("W1", "b1", "W2", "b2")


@pytest.fixture(scope="module")
def small_mlp():
    """A 784-8-10 MLP on 8 real digits: 6,370 parameters."""
    images, labels = mnist.load_mnist()
    X, y = mnist.as_float_features(images[:8]), labels[:8]
    params = mlp.init_params((784, 8, 10), seed=2)
    fn = functools.partial(mlp.mlp_loss, X, y)  # picklable: a partial of a module-level function
    return X, y, params, fn


def _vjp(X, y, plants=()):
    def vjp(g, *p):
        grads = [d.copy() for d in mlp.mlp_loss_vjp(g, X, y, *p)]
        for i, j, rel in plants:
            grads[i].reshape(-1)[j] *= 1 + rel
        return tuple(grads)

    return vjp


def _verdicts(report):
    return [r.ok for r in report.inputs]


def _failing(report):
    return sorted((e.input_name, e.index) for r in report.inputs for e in r.worst if not e.passed)


def _wrong_shape(p, vjp, inputs):
    g = np.ones(np.shape(p.fn(*inputs)))
    grads = vjp(g, *[np.array(x, copy=True) for x in inputs])
    grads = grads if isinstance(grads, tuple) else (grads,)
    return any(np.shape(a) != np.shape(x) for a, x in zip(grads, inputs, strict=False))


@pytest.mark.parametrize("p", CATALOG, ids=lambda p: p.name)
def test_screened_exhaustive_gives_the_ladders_verdicts_on_the_pitfalls(p, monkeypatch):
    monkeypatch.setattr(exhaustive, "SCREEN_MIN", 0)  # screen even these small inputs
    inputs = p.make_inputs(np.random.default_rng(11))
    for vjp in (p.wrong_vjp, p.correct_vjp):
        if _wrong_shape(p, vjp, inputs):
            # A gradient of the wrong shape (conv's [p:-p] at p = 0) is refused by both modes.
            for mode in ("exhaustive", "ladder"):
                with pytest.raises(UserFunctionError, match="with shape"):
                    oracles.check_vjp(p.fn, vjp, inputs, seed=0, mode=mode)
            continue
        screened = oracles.check_vjp(p.fn, vjp, inputs, seed=0, mode="exhaustive")
        ladder = oracles.check_vjp(p.fn, vjp, inputs, seed=0, mode="ladder")
        assert "screened" in screened.context["oracles"]
        assert _verdicts(screened) == _verdicts(ladder), f"{screened}\n{ladder}"
        assert screened.ok == ladder.ok


def test_screen_settles_almost_every_element_of_a_correct_mlp(small_mlp):
    X, y, params, fn = small_mlp
    grads = mlp.mlp_loss_vjp(1.0, X, y, *params)
    obj = ScalarObjective(fn, params, 1.0)
    n = sum(p.size for p in params)
    res, info = exhaustive_partials(
        obj, grads, [(i, np.arange(p.size)) for i, p in enumerate(params)]
    )
    assert info["screened"] + info["laddered"] == n
    assert info["laddered"] <= 0.01 * n
    # About 2 evaluations per element, not 10-25.
    assert info["evaluations"] < 2.3 * n
    for i, g in enumerate(grads):
        r = res[i]
        assert np.all(np.abs(r["value"] - g.ravel()) <= r["error"])
        assert np.max(r["error"]) < 1e-8


def test_a_planted_relative_1e6_error_is_named_exactly(small_mlp):
    X, y, params, fn = small_mlp
    grads = mlp.mlp_loss_vjp(1.0, X, y, *params)
    j = int(np.argmax(np.abs(grads[0])))
    report = oracles.check_vjp(
        fn, _vjp(X, y, [(0, j, 1e-6)]), params, direction=1.0, mode="exhaustive", names=NAMES
    )
    where = tuple(int(k) for k in np.unravel_index(j, params[0].shape))
    assert _failing(report) == [("W1", where)], str(report)
    assert report.input("W1").checks["numeric"].n_checked == params[0].size


def test_array_output_screen_matches_the_ladder():
    rng = np.random.default_rng(4)
    x, W, b = rng.standard_normal((6, 9)), rng.standard_normal((9, 7)), rng.standard_normal(7)
    cot = rng.standard_normal((6, 7))
    grads = affine_vjp(cot, x, W, b)
    obj = ScalarObjective(affine, (x, W, b), cot)
    idx = [(i, np.arange(a.size)) for i, a in enumerate((x, W, b))]
    screened, info = exhaustive_partials(obj, grads, idx)
    assert info["screened"] > 0
    for i, g in enumerate(grads):
        np.testing.assert_allclose(screened[i]["value"], g.ravel(), rtol=0, atol=1e-9)
        assert np.all(np.abs(screened[i]["value"] - g.ravel()) <= screened[i]["error"])


def _serial_reference(fn, params, grads):
    obj = ScalarObjective(fn, params, 1.0)
    idx = [(i, np.arange(p.size)) for i, p in enumerate(params)]
    return exhaustive_partials(obj, grads, idx, chunk_size=500)


def test_thread_pool_gives_the_same_numbers_as_serial(small_mlp):
    X, y, params, fn = small_mlp
    grads = mlp.mlp_loss_vjp(1.0, X, y, *params)
    serial, _ = _serial_reference(fn, params, grads)
    with ThreadPoolExecutor(max_workers=2) as pool:
        obj = ScalarObjective(fn, params, 1.0)
        idx = [(i, np.arange(p.size)) for i, p in enumerate(params)]
        threaded, info = exhaustive_partials(obj, grads, idx, executor=pool, chunk_size=500)
    for i in range(len(params)):
        np.testing.assert_array_equal(threaded[i]["value"], serial[i]["value"])
        np.testing.assert_array_equal(threaded[i]["error"], serial[i]["error"])
    assert info["evaluations"] >= 2 * sum(p.size for p in params)
    assert not info["notes"]


def test_process_pool_on_a_picklable_function(small_mlp):
    X, y, params, fn = small_mlp
    grads = mlp.mlp_loss_vjp(1.0, X, y, *params)
    serial, _ = _serial_reference(fn, params, grads)
    ctx = multiprocessing.get_context(
        "spawn"
    )  # no fork of a process that may hold torch/jax threads
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        report = oracles.check_vjp(
            fn,
            _vjp(X, y, [(2, 3, 1e-5)]),
            params,
            direction=1.0,
            mode=Exhaustive(executor=pool, chunk_size=1000),
            names=NAMES,
        )
        obj = ScalarObjective(fn, params, 1.0)
        idx = [(i, np.arange(p.size)) for i, p in enumerate(params)]
        remote, info = exhaustive_partials(obj, grads, idx, executor=pool, chunk_size=1000)
    assert _failing(report) == [("W2", (0, 3))], str(report)
    assert not any("pickled" in n for n in report.notes)
    for i in range(len(params)):
        np.testing.assert_array_equal(remote[i]["value"], serial[i]["value"])
    # Work done in the workers is counted.
    assert info["evaluations"] >= 2 * sum(p.size for p in params)


def test_unpicklable_function_runs_in_process_with_a_note():
    x = np.linspace(0.1, 1.0, 200)
    scale = 3.0
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        report = oracles.check_vjp(
            lambda x: np.sin(scale * x),
            lambda g, x: g * scale * np.cos(scale * x),
            (x,),
            mode=Exhaustive(executor=pool),
        )
    assert report.ok, str(report)
    assert any("cannot be pickled" in n and "ProcessPoolExecutor" in n for n in report.notes)


def test_progress_bar_on_request_and_silent_by_default(capsys):
    x = np.linspace(0.1, 1.0, 400)
    oracles.check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive(progress=True))
    assert "exhaustive check" in capsys.readouterr().err
    oracles.check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), mode="exhaustive")
    assert capsys.readouterr().err == ""


def test_ladder_mode_is_the_plain_ladder_for_every_element():
    x = np.linspace(0.1, 1.0, 100)
    report = oracles.check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), mode="ladder")
    assert report.ok
    assert report.context["oracles"] == (
        "numeric (central differences per element, step ladder + Richardson)"
    )
    assert int(report.context["fn evaluations"]) > 8 * x.size


def test_wrong_formula_every_element_fails_screen_then_ladder():
    rng = np.random.default_rng(5)
    x, W, b = rng.standard_normal((5, 40)), rng.standard_normal((40, 30)), rng.standard_normal(30)

    def wrong(g, x, W, b):
        dx, dW, db = affine_vjp(g, x, W, b)
        return dx, 2 * dW, db

    report = oracles.check_vjp(affine, wrong, (x, W, b), mode="exhaustive")
    assert report.failed_inputs == ["W"]
    assert report.input("W").checks["numeric"].n_failed == W.size


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"executor": "pool"}, oracles.InvalidArgumentType, "executor must be"),
        ({"progress": 1}, oracles.InvalidArgumentType, "progress must be"),
        ({"screen": "yes"}, oracles.InvalidArgumentType, "screen must be"),
        ({"chunk_size": 0}, oracles.InvalidArgument, "chunk_size must be"),
        ({"chunk_size": True}, oracles.InvalidArgument, "chunk_size must be"),
        ({"vectorized": 1}, oracles.InvalidArgumentType, "vectorized must be True or False"),
        ({"vectorized": None}, oracles.InvalidArgumentType, "vectorized must be True or False"),
    ],
)
def test_exhaustive_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        Exhaustive(**kwargs)


def test_module_exports():
    assert set(exhaustive.__all__) == {"Exhaustive", "exhaustive_partials", "sharp_partials"}


def _one_off(vjp, j, rel):
    def wrong(g, x):
        d = np.array(vjp(g, x), dtype=np.float64, copy=True)
        d.reshape(-1)[j] *= 1.0 + rel
        return d

    return wrong


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["softmax", "sin"])
def test_the_screen_names_small_errors_in_typical_elements(name, seed):
    """Per-element steps and truncation bounds: 1e-7 at every quartile, 1e-8 at the median."""
    rng = np.random.default_rng(seed)
    if name == "softmax":
        fn, vjp, x = R.softmax, R.softmax_vjp, 3.0 * rng.normal(size=(40, 5))
    else:
        fn, vjp, x = np.sin, (lambda g, x: g * np.cos(x)), rng.normal(size=300)
    right = oracles.check_vjp(fn, vjp, (x,), mode="exhaustive")
    assert right.status == "passed" and "screened" in right.context["oracles"]
    assert int(right.context["fn evaluations"]) < 2.6 * x.size + 400
    g = np.abs(vjp(np.random.default_rng(0).standard_normal(x.shape), x)).ravel()
    order = np.argsort(g, kind="stable")
    for q, rel in ((0.25, 1e-7), (0.5, 1e-7), (0.75, 1e-7), (0.5, 1e-8)):
        j = int(order[int(q * (g.size - 1))])
        report = oracles.check_vjp(fn, _one_off(vjp, j, rel), (x,), mode="exhaustive")
        where = tuple(int(i) for i in np.unravel_index(j, x.shape))
        assert _failing(report) == [("x", where)], (q, rel, str(report))
