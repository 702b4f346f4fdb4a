"""Exhaustive mode on a real Dask cluster: a LocalCluster with 2 worker processes.

``Exhaustive(executor=client.get_executor())`` runs the chunks of elements on
the workers; the verdict, the elements named and the numbers reported must be
identical to the same check run in this process. The functions checked are
importable (``reference``'s own ops, and partials of them) because worker
processes unpickle them by reference.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import reference as R
from oracles import Exhaustive, check_vjp


@pytest.fixture(scope="module")
def dask_executor():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client.get_executor()


def _summary(report):
    """Everything the report says about each element it lists, and the verdict."""
    return (
        report.ok,
        [
            (
                e.input_name,
                e.index,
                e.analytic,
                e.reference,
                e.tolerance,
                e.passed,
            )
            for r in report.inputs
            for e in r.worst
        ],
        [(r.name, r.max_abs_error, r.max_rel_error) for r in report.inputs],
    )


def _softmax_case(rng):
    x = rng.standard_normal((40, 25)) * 3
    return R.softmax, R.softmax_vjp, (x,)


def _mlp_case(rng):
    images, labels = R.load_mnist()
    X = images[:8].reshape(8, -1).astype(np.float64) / 255.0
    y = labels[:8].astype(np.int64)
    params = tuple(R.mlp.init_params((784, 4, 10), seed=1))
    fn = functools.partial(R.mlp.mlp_loss, X, y)

    def vjp(g, *p):
        return R.mlp.mlp_loss_vjp(g, X, y, *p)

    return fn, vjp, params


@pytest.mark.slow
@pytest.mark.parametrize("case", [_softmax_case, _mlp_case], ids=["softmax", "mlp"])
def test_a_dask_cluster_gives_the_in_process_verdict_and_numbers(dask_executor, case):
    fn, vjp, inputs = case(np.random.default_rng(0))

    def first(grads):
        return grads[0] if isinstance(grads, tuple) else grads

    # The planted element: the largest gradient element of the first input (many are 0).
    direction = np.random.default_rng(0).standard_normal(np.shape(fn(*inputs)))
    where = int(np.argmax(np.abs(first(vjp(direction, *inputs)))))

    def planted(g, *xs):
        grads = vjp(g, *xs)
        grads = list(grads) if isinstance(grads, tuple) else [grads]
        grads[0] = np.array(grads[0], copy=True)
        grads[0].reshape(-1)[where] *= 1 + 1e-6
        return tuple(grads) if len(grads) > 1 else grads[0]

    for derivative in (vjp, planted):
        local = check_vjp(fn, derivative, inputs, mode=Exhaustive(chunk_size=128))
        remote = check_vjp(
            fn, derivative, inputs, mode=Exhaustive(executor=dask_executor, chunk_size=128)
        )
        assert _summary(remote) == _summary(local), (str(local), str(remote))
        assert remote.ok is (derivative is vjp), str(remote)
        assert not any("ran in this process" in n for n in remote.notes), str(remote)
    failing = [e.index for e in remote.inputs[0].worst if not e.passed]
    shape = inputs[0].shape
    assert failing == [tuple(int(i) for i in np.unravel_index(where, shape))]


@pytest.mark.slow
def test_the_progress_bar_works_with_a_remote_executor(dask_executor, capsys):
    fn, vjp, inputs = _softmax_case(np.random.default_rng(1))
    report = check_vjp(
        fn, vjp, inputs, mode=Exhaustive(executor=dask_executor, progress=True, chunk_size=100)
    )
    assert report.ok, str(report)
    assert "exhaustive check" in capsys.readouterr().err


SHIFT = {"value": 0.0}


def _shifted_sin(x):
    return np.sin(x) + SHIFT["value"]


def test_a_process_pool_worker_computing_another_fn_is_refused():
    """A module global changed after the workers started: the workers' fn is another one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from oracles.errors import UserFunctionError

    x = np.linspace(-1.0, 1.0, 600)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        assert check_vjp(
            _shifted_sin, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive(executor=pool)
        ).ok
        SHIFT["value"] = 1.0  # the parent changes; the forked workers keep 0.0
        try:
            with pytest.raises(UserFunctionError, match="computes something else on a worker"):
                check_vjp(
                    _shifted_sin, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive(executor=pool)
                )
        finally:
            SHIFT["value"] = 0.0


def _misaligned(payload):
    """On a worker: the arrays of the payload (fn's data, inputs, gradient) not 8-byte aligned."""
    import pickle

    if isinstance(payload, bytes):
        payload = pickle.loads(payload)  # what exhaustive._run_chunk does first
    fn, inputs, *_, grads, scales = payload
    arrays = [a for a in (*fn.args, *inputs, *grads, *scales) if isinstance(a, np.ndarray)]
    return [int(a.ctypes.data % 8) for a in arrays if a.ctypes.data % 8]


@pytest.mark.slow
def test_the_workers_get_aligned_arrays(dask_executor):
    """Dask deserializes a task's NumPy arguments in place, at any byte offset.

    A partial of the MLP loss whose data array came out 4 bytes off an
    8-byte boundary ran its forward pass 2.3x slower on the worker; the
    payload is therefore shipped pickled, and unpickled by each chunk.
    """
    from oracles.numerics.exhaustive import _Runner
    from oracles.numerics.objective import ScalarObjective

    fn, vjp, params = _mlp_case(np.random.default_rng(0))
    objective = ScalarObjective(fn, params, np.ones(()))
    grads = list(vjp(np.ones(()), *params))
    runner = _Runner(objective, dask_executor, [], grads)
    assert isinstance(runner.payload, bytes)
    assert dask_executor.submit(_misaligned, runner.payload).result() == []
