"""The MNIST end-to-end case: train the reference MLP, run it in lockstep with torch and JAX, plot.

``python -m oracles mnist [--out DIR]`` (or :func:`main`) does three things:

1. trains the reference MLP (:mod:`reference.mlp`, 784-128-10, tanh,
   cross-entropy, minibatch SGD) on the first 8,000 bundled digits and
   prints its accuracy on the other 2,000 and the time taken;
2. runs :func:`lockstep`: the same initial parameters trained for 100 SGD
   steps by the reference MLP, by a PyTorch model (``nn.Linear`` layers,
   native losses, ``torch.optim.SGD``) and by a JAX model (``jax.grad``), all
   in float64, and prints the largest parameter gap seen;
3. writes PNG plots (needs matplotlib, the ``plot`` extra) into ``--out``
   (default ``oracles-report/``, created if missing), each through
   :func:`oracles._files.open_atomic` (a temporary file moved into place; a
   symlink planted at a plot's path is replaced, never followed):

   - ``mnist-lockstep-loss.png``: the three loss curves overlaid, and below
     them the largest parameter gap after each step (log scale);
   - ``mnist-gradient-relative-errors.png``: a histogram of per-element
     relative errors of the hand gradient against each oracle (numeric,
     torch, jax) for one full MLP step on real digits;
   - ``mnist-w1-gradient-error.png``: ``|error|`` of the W1 gradient per
     oracle, as 28 x 28 tiles for a few hidden units (one pixel per input).

``--html PATH`` also judges the full-step gradient with :func:`oracles.check_vjp`
(:func:`gradient_report`: every element against numeric, torch and jax) and
writes one self-contained HTML page (:func:`write_html_report`): the lockstep
curves, the W1 tiles, the relative-error histograms, and the gradient check's
verdict, the sensitivity of each parameter, its error per element over the
tolerance and, on failure, the diagnosis; the exit status is then 1 unless
that check passed. ``--html`` with ``--no-plots`` is a usage error.

With ``--images``/``--labels`` every stage (training, lockstep, gradient
check) uses those files instead of the bundled sample. Every option is
checked before any work is done: a size, count or step number below 1, a
negative seed, a learning rate that is not a positive finite number, only one
of ``--images``/``--labels`` or files that are not MNIST with at least 10,000
digits, an ``--out`` that is not a directory that can be written, an
``--html`` file that cannot be written, or a
missing torch/jax/matplotlib is a usage error (exit status 2) up front, not
after training.

The plot functions take plain arrays, so the data may come from anywhere
(for instance the per-input results of :func:`oracles.check_vjp`).

No function here changes global state: torch's and NumPy's global random
generators, NumPy's error state, ``warnings.filters`` and JAX's 64-bit flag
are as they were after every call (third-party modules imported for the first
time may add their own warning filters).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oracles._files import open_atomic, output_dir_problem
from oracles.errors import InvalidArgument
from oracles.verify.cli import _import_jax, _int_at_least, _output_file
from reference import mlp
from reference.mnist import as_float_features, load_mnist, train_test_split

__all__ = [
    "LockstepResult",
    "gradient_errors",
    "gradient_report",
    "jax_mlp_loss",
    "lockstep",
    "main",
    "plot_loss_curves",
    "plot_relative_error_histograms",
    "plot_w1_error_tiles",
    "relative_errors",
    "torch_mlp_loss",
    "train",
    "write_html_report",
]

LOSS_PLOT = "mnist-lockstep-loss.png"
HISTOGRAM_PLOT = "mnist-gradient-relative-errors.png"
TILES_PLOT = "mnist-w1-gradient-error.png"


N_TRAIN, N_TEST = 8000, 2000


def _digits(images_path=None, labels_path=None):
    """The first 8,000 digits to train, the next 2,000 to test (bundled sample or the files)."""
    images, labels = load_mnist(images_path, labels_path)
    if images.shape[0] < N_TRAIN + N_TEST:
        raise InvalidArgument(
            f"the MNIST files must hold at least {N_TRAIN + N_TEST} digits ({N_TRAIN} to train, "
            f"{N_TEST} to test), {images_path} holds {images.shape[0]}"
        )
    X = as_float_features(images)
    return train_test_split(X, labels.astype(np.int64), n_train=N_TRAIN, n_test=N_TEST)


def _check_options(activation, loss):
    if activation not in mlp.ACTIVATIONS:
        raise InvalidArgument(f"activation must be one of {mlp.ACTIVATIONS}, got {activation!r}")
    if loss not in mlp.LOSSES:
        raise InvalidArgument(f"loss must be one of {mlp.LOSSES}, got {loss!r}")


def _check_counts(**counts):
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise InvalidArgument(f"{name} must be an int >= 1, got {value!r}")


def _sizes(hidden):
    hidden = (hidden,) if isinstance(hidden, int | np.integer) else tuple(hidden)
    if not all(isinstance(h, int | np.integer) and h >= 1 for h in hidden):
        raise InvalidArgument(f"hidden must be an int >= 1 or a sequence of them, got {hidden!r}")
    return (784, *hidden, 10)


# --- native framework versions of the MLP loss ---------------------------------------------------


def _torch_loss_of_logits(logits, y, loss):
    """The two losses in native torch: ``F.cross_entropy``, or MSE on softmax, batch-mean."""
    import torch
    import torch.nn.functional as F

    if loss == "cross_entropy":
        return F.cross_entropy(logits, y)
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.mse_loss(torch.softmax(logits, dim=1), onehot, reduction="sum") / logits.shape[0]


def torch_mlp_loss(X, y, *, activation="tanh", loss="cross_entropy"):
    """The MLP loss of :func:`reference.mlp.mlp_loss` built from native torch ops.

    Returns ``fn(W_1, b_1, ..., W_L, b_L) -> scalar tensor`` (``W`` in the
    reference layout ``(n_in, n_out)``), for :func:`oracles.check_vjp`'s
    ``torch_fn``. Cross-entropy is ``F.cross_entropy`` (mean over the batch);
    squared error is ``F.mse_loss(softmax(z), onehot(y), reduction="sum") / N``.

    Examples
    --------
    >>> import torch
    >>> fn = torch_mlp_loss(np.zeros((2, 4)), np.array([0, 1]))
    >>> params = [torch.zeros(4, 3), torch.zeros(3), torch.zeros(3, 2), torch.zeros(2)]
    >>> round(float(fn(*params)), 6)
    0.693147
    """
    import torch
    import torch.nn.functional as F

    _check_options(activation, loss)
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}[activation]
    X_t = torch.as_tensor(np.asarray(X, dtype=np.float64))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.int64))

    def fn(*params):
        h = X_t.to(params[0].dtype)
        for i in range(0, len(params), 2):
            z = F.linear(h, params[i].mT, params[i + 1])
            h = act(z) if i + 2 < len(params) else z
        return _torch_loss_of_logits(h, y_t, loss)

    return fn


def _jax_loss(params, X, y, activation, loss):
    """The MLP loss in native jax, with the batch as (traceable) arguments."""
    import jax
    import jax.numpy as jnp

    act = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}[activation]
    h = X
    for i in range(0, len(params), 2):
        z = h @ params[i] + params[i + 1]
        h = act(z) if i + 2 < len(params) else z
    if loss == "cross_entropy":
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h, axis=1), y[:, None], axis=1))
    onehot = jax.nn.one_hot(y, h.shape[1], dtype=h.dtype)
    return jnp.sum((jax.nn.softmax(h, axis=1) - onehot) ** 2) / h.shape[0]


def jax_mlp_loss(X, y, *, activation="tanh", loss="cross_entropy"):
    """The MLP loss of :func:`reference.mlp.mlp_loss` built from native jax ops.

    Returns ``fn(W_1, b_1, ..., W_L, b_L) -> scalar`` for
    :func:`oracles.check_vjp`'s ``jax_fn`` (or ``jax.grad``). Cross-entropy
    is ``-mean(log_softmax(z)[n, y_n])``; squared error is
    ``sum((softmax(z) - one_hot(y))**2) / N``. ``X`` is converted when ``fn``
    is called, so the caller's 64-bit mode applies.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> fn = jax_mlp_loss(np.zeros((2, 4)), np.array([0, 1]))
    >>> round(float(fn(jnp.zeros((4, 3)), jnp.zeros(3), jnp.zeros((3, 2)), jnp.zeros(2))), 5)
    0.69315
    """
    import jax.numpy as jnp

    _check_options(activation, loss)
    X_np = np.asarray(X, dtype=np.float64)
    y_np = np.asarray(y, dtype=np.int64)

    def fn(*params):
        return _jax_loss(params, jnp.asarray(X_np, dtype=params[0].dtype), y_np, activation, loss)

    return fn


# --- (a) training --------------------------------------------------------------------------------


def train(
    *,
    hidden=128,
    activation="tanh",
    loss="cross_entropy",
    lr=0.1,
    epochs=10,
    batch_size=32,
    seed=0,
    progress=True,
    images_path=None,
    labels_path=None,
):
    """Train the reference MLP with minibatch SGD on 8,000 digits; test on the other 2,000.

    Each epoch visits the training digits in a new seeded order. The whole
    run is the reference code only: :func:`reference.mlp.loss_and_grads` and
    :func:`reference.mlp.sgd_step`. ``images_path``/``labels_path``: MNIST
    IDX files to use instead of the bundled sample (both or neither; the
    first 8,000 digits train, the next 2,000 test).

    Returns
    -------
    dict
        ``params``, ``test_accuracy``, ``train_accuracy``, ``seconds``,
        ``losses`` (the minibatch loss of every step).

    Examples
    --------
    >>> out = train(hidden=16, epochs=1, batch_size=100, progress=False)
    >>> out["test_accuracy"] > 0.8
    True
    """
    from tqdm.auto import tqdm

    _check_options(activation, loss)
    _check_counts(epochs=epochs, batch_size=batch_size)
    sizes = _sizes(hidden)
    X_train, y_train, X_test, y_test = _digits(images_path=images_path, labels_path=labels_path)
    rng = np.random.default_rng(seed)
    params = mlp.init_params(sizes, seed=seed)
    n = X_train.shape[0]
    steps_per_epoch = -(-n // batch_size)
    losses = []
    start = time.perf_counter()
    with tqdm(
        total=epochs * steps_per_epoch, desc="train", unit="step", disable=not progress
    ) as bar:
        for epoch in range(epochs):
            order = rng.permutation(n)
            for s in range(steps_per_epoch):
                rows = order[s * batch_size : (s + 1) * batch_size]
                value, grads = mlp.loss_and_grads(
                    params, X_train[rows], y_train[rows], activation=activation, loss=loss
                )
                params = mlp.sgd_step(params, grads, lr)
                losses.append(value)
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-steps_per_epoch:]):.4f}")
    seconds = time.perf_counter() - start
    return {
        "params": params,
        "test_accuracy": mlp.accuracy(params, X_test, y_test, activation=activation),
        "train_accuracy": mlp.accuracy(params, X_train, y_train, activation=activation),
        "seconds": seconds,
        "losses": np.asarray(losses),
    }


# --- (b) lockstep --------------------------------------------------------------------------------


@dataclass
class LockstepResult:
    """Per-step record of a lockstep run (see :func:`lockstep`).

    Attributes
    ----------
    losses : dict of str to ndarray
        ``"reference"``, ``"torch"``, ``"jax"``: the minibatch loss at each
        step, before that step's update.
    gaps : dict of str to ndarray
        ``"torch"``, ``"jax"``: after each step, the largest absolute
        difference between any parameter of that model and the reference;
        ``"torch-jax"``: between the two frameworks.
    config : dict
        The arguments of the run.
    """

    losses: dict = field(default_factory=dict)
    gaps: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def max_gap(self):
        """The largest parameter gap of any model to the reference, over all steps."""
        return float(max(np.max(self.gaps["torch"]), np.max(self.gaps["jax"])))

    def __str__(self):
        c = self.config
        return (
            f"lockstep {c['steps']} SGD steps, sizes {c['sizes']}, {c['activation']}, "
            f"{c['loss']}, batch {c['batch']}, lr {c['lr']}: max parameter gap "
            f"torch {np.max(self.gaps['torch']):.3g}, jax {np.max(self.gaps['jax']):.3g}, "
            f"torch-jax {np.max(self.gaps['torch-jax']):.3g}; final loss "
            f"{self.losses['reference'][-1]:.6f}"
        )


def _max_gap(a_params, b_params):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(a_params, b_params, strict=True))


def _torch_model(params, activation):
    import torch
    from torch import nn

    layers = []
    for i in range(0, len(params), 2):
        W, b = params[i], params[i + 1]
        # skip_init: no random initialisation, so torch's global generator is not drawn from.
        linear = nn.utils.skip_init(nn.Linear, W.shape[0], W.shape[1], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))  # nn.Linear stores (n_out, n_in)
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(linear)
        if i + 2 < len(params):
            layers.append({"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation]())
    return nn.Sequential(*layers)


def _torch_params(model):
    from torch import nn

    out = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            out += [layer.weight.detach().numpy().T, layer.bias.detach().numpy()]
    return out


def lockstep(
    steps=100,
    *,
    hidden=128,
    activation="tanh",
    loss="cross_entropy",
    batch=32,
    lr=0.1,
    seed=0,
    images_path=None,
    labels_path=None,
):
    """Train the same initial MLP with the reference, PyTorch and JAX side by side.

    All three start from :func:`reference.mlp.init_params` and see the same
    minibatches of real digits (a seeded order over the 8,000 training
    digits). Each step:

    - reference: :func:`reference.mlp.loss_and_grads` then
      :func:`reference.mlp.sgd_step`;
    - PyTorch: an ``nn.Sequential`` of ``nn.Linear`` (weights copied,
      transposed to torch's layout) and ``nn.Tanh``/``nn.Sigmoid``/``nn.ReLU``,
      the loss of :func:`torch_mlp_loss`'s conventions (``F.cross_entropy``;
      ``F.mse_loss(softmax, one-hot, reduction="sum") / N``),
      ``loss.backward()`` and ``torch.optim.SGD``;
    - JAX: ``jax.value_and_grad`` of :func:`jax_mlp_loss`, jitted, with the
      update ``p - lr * g``.

    Everything is float64; JAX's 64-bit mode is switched on for this call
    only. After each step the largest parameter difference to the reference
    is recorded.

    Parameters
    ----------
    steps : int
    hidden : int or sequence of int
        Hidden layer widths (784 in, 10 out around them).
    activation, loss : str
        As for :func:`reference.mlp.forward`.
    batch : int
        Minibatch size.
    lr : float
    seed : int
        Seeds the initial parameters and the minibatch order.
    images_path, labels_path : str or os.PathLike, optional
        MNIST IDX files to take the 8,000 training digits from instead of the
        bundled sample (both or neither), as for :func:`train`.

    Returns
    -------
    LockstepResult

    Notes
    -----
    The torch model is built without drawing from torch's global random
    generator (``torch.nn.utils.skip_init``, then the reference parameters
    are copied in), so ``torch.get_rng_state()`` is the same after the call.

    Examples
    --------
    >>> result = lockstep(3, hidden=8, batch=4)
    >>> result.max_gap < 1e-12, result.losses["jax"].shape
    (True, (3,))
    """
    import torch

    from oracles.backends.jax import x64_enabled

    jax = _import_jax()

    _check_options(activation, loss)
    if steps < 1 or batch < 1:
        raise InvalidArgument(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    sizes = _sizes(hidden)
    X_train, y_train, _, _ = _digits(images_path=images_path, labels_path=labels_path)
    params = mlp.init_params(sizes, seed=seed)
    order = np.random.default_rng(seed).permutation(X_train.shape[0])
    batches = [
        np.take(order, np.arange(s * batch, (s + 1) * batch), mode="wrap") for s in range(steps)
    ]

    model = _torch_model(params, activation)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    losses = {"reference": [], "torch": [], "jax": []}
    gaps = {"torch": [], "jax": [], "torch-jax": []}
    with x64_enabled(jax):
        import jax.numpy as jnp

        @jax.jit
        def jax_step(p, Xb, yb):
            value, grads = jax.value_and_grad(_jax_loss)(p, Xb, yb, activation, loss)
            return value, tuple(q - lr * g for q, g in zip(p, grads, strict=True))

        jax_params = tuple(jnp.asarray(p) for p in params)
        ref_params = params
        for rows in batches:
            Xb, yb = X_train[rows], y_train[rows]

            value, grads = mlp.loss_and_grads(ref_params, Xb, yb, activation=activation, loss=loss)
            ref_params = mlp.sgd_step(ref_params, grads, lr)

            optimizer.zero_grad()
            t_loss = _torch_loss_of_logits(model(torch.from_numpy(Xb)), torch.from_numpy(yb), loss)
            t_loss.backward()
            optimizer.step()

            j_loss, jax_params = jax_step(jax_params, jnp.asarray(Xb), jnp.asarray(yb))

            t_params = _torch_params(model)
            j_params = [np.asarray(p) for p in jax_params]
            losses["reference"].append(value)
            losses["torch"].append(float(t_loss.detach()))
            losses["jax"].append(float(j_loss))
            gaps["torch"].append(_max_gap(ref_params, t_params))
            gaps["jax"].append(_max_gap(ref_params, j_params))
            gaps["torch-jax"].append(_max_gap(t_params, j_params))
    config = {
        "steps": steps,
        "sizes": sizes,
        "activation": activation,
        "loss": loss,
        "batch": batch,
        "lr": lr,
        "seed": seed,
    }
    return LockstepResult(
        losses={k: np.asarray(v) for k, v in losses.items()},
        gaps={k: np.asarray(v) for k, v in gaps.items()},
        config=config,
    )


# --- (c) gradient errors and plots ---------------------------------------------------------------


def _gradient_point(hidden, batch, activation, loss, seed, *, images_path, labels_path):
    """``(params, X, y)``: the initial parameters after three SGD steps, ``batch`` test digits."""
    _check_options(activation, loss)
    _check_counts(batch=batch)
    sizes = _sizes(hidden)
    X_train, y_train, X_test, y_test = _digits(images_path=images_path, labels_path=labels_path)
    params = mlp.init_params(sizes, seed=seed)
    for s in range(3):
        rows = slice(s * 32, (s + 1) * 32)
        _, grads = mlp.loss_and_grads(
            params, X_train[rows], y_train[rows], activation=activation, loss=loss
        )
        params = mlp.sgd_step(params, grads, 0.1)
    return params, X_test[:batch], y_test[:batch]


def gradient_report(
    *,
    hidden=8,
    batch=8,
    activation="tanh",
    loss="cross_entropy",
    seed=0,
    images_path=None,
    labels_path=None,
):
    """The full-step gradient of :func:`gradient_errors` judged by :func:`oracles.check_vjp`.

    The same point (parameters and digits) as :func:`gradient_errors`; the
    hand VJP :func:`reference.mlp.mlp_loss_vjp` against the numeric oracle
    (every element, ``mode="exhaustive"``), :func:`torch_mlp_loss` and
    :func:`jax_mlp_loss`. The inputs are named ``W1, b1, W2, b2, ...``.

    Returns
    -------
    oracles.report.Report

    Examples
    --------
    >>> report = gradient_report(hidden=1, batch=2)
    >>> report.status, [r.name for r in report.inputs]
    ('passed', ['W1', 'b1', 'W2', 'b2'])
    """
    from oracles import check_vjp

    params, X, y = _gradient_point(
        hidden, batch, activation, loss, seed, images_path=images_path, labels_path=labels_path
    )
    options = {"activation": activation, "loss": loss}

    def mlp_loss(*p):
        return mlp.mlp_loss(X, y, *p, **options)

    def mlp_loss_vjp(g, *p):
        return mlp.mlp_loss_vjp(g, X, y, *p, **options)

    names = [f"{'Wb'[k % 2]}{k // 2 + 1}" for k in range(len(params))]
    return check_vjp(
        mlp_loss,
        mlp_loss_vjp,
        tuple(params),
        names=names,
        against=("numeric", "torch", "jax"),
        torch_fn=torch_mlp_loss(X, y, **options),
        jax_fn=jax_mlp_loss(X, y, **options),
        mode="exhaustive",
    )


def gradient_errors(
    *,
    hidden=8,
    batch=8,
    activation="tanh",
    loss="cross_entropy",
    seed=0,
    images_path=None,
    labels_path=None,
):
    """Hand gradients of one MLP step on real digits, and each oracle's gradients.

    The parameters are :func:`reference.mlp.init_params` moved by three SGD
    steps (so the biases are not zero), at the first ``batch`` test digits.
    The oracles, each on every element: central differences
    (:func:`oracles.numerics.ladder.partials` with the step ladder, given the
    analytic gradient as :func:`oracles.check_vjp` does),
    :func:`oracles.torch_vjp` of :func:`torch_mlp_loss` and
    :func:`oracles.jax_vjp` of :func:`jax_mlp_loss`. ``images_path`` and
    ``labels_path`` are as for :func:`train`.

    Returns
    -------
    analytic : tuple of ndarray
        ``(dW_1, db_1, ...)`` from :func:`reference.mlp.mlp_loss_vjp`.
    oracles : dict of str to tuple of ndarray
        ``"numeric"``, ``"torch"``, ``"jax"``: the same gradients by each oracle.

    Examples
    --------
    >>> analytic, by = gradient_errors(hidden=1, batch=2)
    >>> sorted(by), analytic[0].shape
    (['jax', 'numeric', 'torch'], (784, 1))
    """
    from oracles import jax_vjp, torch_vjp
    from oracles.numerics.ladder import partials
    from oracles.numerics.objective import ScalarObjective

    params, X, y = _gradient_point(
        hidden, batch, activation, loss, seed, images_path=images_path, labels_path=labels_path
    )
    options = {"activation": activation, "loss": loss}
    analytic = mlp.mlp_loss_vjp(1.0, X, y, *params, **options)

    objective = ScalarObjective(lambda *p: mlp.mlp_loss(X, y, *p, **options), params, 1.0)
    indices = [(i, j) for i, p in enumerate(params) for j in range(p.size)]
    flat = partials(objective, indices, grads=analytic).value
    numeric, start = [], 0
    for p in params:
        numeric.append(flat[start : start + p.size].reshape(p.shape))
        start += p.size
    by_oracle = {
        "numeric": tuple(numeric),
        "torch": torch_vjp(torch_mlp_loss(X, y, **options), params, 1.0),
        "jax": jax_vjp(jax_mlp_loss(X, y, **options), params, 1.0),
    }
    return analytic, by_oracle


def relative_errors(analytic, reference):
    """Per-element ``|a - r| / |r|`` over all arrays, for the elements with ``r != 0``.

    Elements whose reference value is exactly zero (a pixel that is blank in
    every digit of the batch gives a W1 gradient of exactly 0) have no
    relative error and are left out.

    Examples
    --------
    >>> relative_errors([np.array([1.0, 0.0, 2.0])], [np.array([1.0, 0.0, 4.0])]).tolist()
    [0.0, 0.5]
    """
    out = []
    for a, r in zip(analytic, reference, strict=True):
        a, r = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(r, dtype=np.float64))
        keep = r != 0
        out.append(np.abs(a[keep] - r[keep]) / np.abs(r[keep]))
    return np.concatenate(out) if out else np.zeros(0)


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        from oracles.errors import BackendUnavailable

        raise BackendUnavailable(
            'plots need matplotlib, which is not installed: pip install "backprop-oracles[plot]"'
        ) from exc
    # A bare Figure renders with the Agg canvas and touches no global pyplot state.
    return Figure(**kwargs)


def _save(fig, path):
    """Write ``fig`` to ``path`` through :func:`oracles._files.open_atomic`.

    The format is the one the suffix names (``.png``, ``.svg``, ``.pdf``...;
    PNG without a suffix), as ``savefig(path)`` would choose, but the file is
    written whole to a temporary file and moved into place: a symlink at
    ``path`` is replaced, not followed.
    """
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with open_atomic(path, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=110)
    return path


def plot_loss_curves(losses, path, *, gaps=None, title="Lockstep training: loss per SGD step"):
    """Overlay loss curves (one per implementation) and save a PNG.

    Parameters
    ----------
    losses : dict of str to 1-D array
        E.g. :attr:`LockstepResult.losses`.
    path : str or os.PathLike
    gaps : dict of str to 1-D array, optional
        E.g. :attr:`LockstepResult.gaps`: drawn in a second panel, log scale.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "loss.png"
    >>> plot_loss_curves({"reference": [2.3, 1.1], "torch": [2.3, 1.1]}, out).stat().st_size > 0
    True
    """
    return _save(_loss_figure(losses, gaps, title), path)


def _loss_figure(losses, gaps=None, title="Lockstep training: loss per SGD step"):
    fig = _figure(figsize=(7, 6.2 if gaps else 4.2), layout="constrained")
    axes = fig.subplots(2 if gaps else 1, 1, squeeze=False, sharex=True)[:, 0]
    ax = axes[0]
    styles = [("-", 4.0, 0.35), ("--", 2.0, 0.9), (":", 2.0, 1.0)]
    for i, (name, curve) in enumerate(losses.items()):
        ls, lw, alpha = styles[i % len(styles)]
        ax.plot(np.arange(1, len(curve) + 1), curve, ls, lw=lw, alpha=alpha, label=name)
    ax.set_ylabel("minibatch loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if gaps:
        tiny = float(np.finfo(np.float64).tiny)
        for name, gap in gaps.items():
            gap = np.asarray(gap, dtype=np.float64)
            axes[1].semilogy(np.arange(1, len(gap) + 1), np.maximum(gap, tiny), label=name)
        axes[1].set_ylabel("max |parameter gap|")
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("SGD step")
    return fig


def plot_relative_error_histograms(errors, path, *, title=None):
    """Histogram (log10 axis) of per-element relative errors, one per oracle.

    Parameters
    ----------
    errors : dict of str to 1-D array
        Relative errors per oracle, e.g. from :func:`relative_errors`. Exact
        zeros are counted in the legend and drawn at the left edge.
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "hist.png"
    >>> errs = {"numeric": np.array([1e-12, 3e-11, 0.0]), "torch": np.array([1e-16, 2e-15])}
    >>> plot_relative_error_histograms(errs, out).exists()
    True
    """
    return _save(_histogram_figure(errors, title), path)


def _histogram_figure(errors, title=None):
    floor = 1e-18
    fig = _figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    bins = np.linspace(np.log10(floor), 0, 73)
    for name, err in errors.items():
        err = np.asarray(err, dtype=np.float64).ravel()
        exact = int(np.sum(err == 0))
        logs = np.log10(np.clip(err, floor, 1.0))
        label = f"{name} ({err.size} elements, {exact} exact, max {err.max():.1e})"
        ax.hist(logs, bins=bins, histtype="step", lw=1.8, label=label)
    ax.set_xlabel("log10 relative error  |hand - oracle| / |oracle|")
    ax.set_ylabel("elements")
    ax.set_title(title or "Hand-written MLP gradient against each oracle")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_w1_error_tiles(errors, path, *, units=6, title=None):
    """``|error|`` of the W1 gradient as 28 x 28 tiles: rows are oracles, columns hidden units.

    Parameters
    ----------
    errors : dict of str to array, shape ``(784, hidden)``
        Per oracle, the elementwise error of ``dW1`` (hand minus oracle);
        column ``j`` is hidden unit ``j``, whose 784 input weights form a
        28 x 28 image.
    path : str or os.PathLike
    units : int
        Number of hidden units shown (the first ones).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "tiles.png"
    >>> err = np.random.default_rng(0).normal(size=(784, 4)) * 1e-13
    >>> plot_w1_error_tiles({"numeric": err}, out, units=2).exists()
    True
    """
    return _save(_tiles_figure(errors, units, title), path)


def _tiles_figure(errors, units=6, title=None):
    names = list(errors)
    arrays = [np.abs(np.asarray(errors[n], dtype=np.float64)) for n in names]
    for name, a in zip(names, arrays, strict=True):
        if a.ndim != 2 or a.shape[0] != 784:
            raise InvalidArgument(f"errors[{name!r}] must have shape (784, hidden), got {a.shape}")
    units = min(units, min(a.shape[1] for a in arrays))
    floor = 1e-20
    logs = [np.log10(np.maximum(a, floor)) for a in arrays]
    vmax = max(float(np.max(x)) for x in logs)
    vmin = max(np.log10(floor), vmax - 8)
    fig = _figure(figsize=(1.6 * units + 1.2, 1.7 * len(names) + 0.8), layout="constrained")
    axes = fig.subplots(len(names), units, squeeze=False)
    image = None
    for r, (name, x) in enumerate(zip(names, logs, strict=True)):
        for c in range(units):
            ax = axes[r][c]
            image = ax.imshow(x[:, c].reshape(28, 28), cmap="magma", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"unit {c}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name)
    fig.colorbar(image, ax=axes, shrink=0.8, label="log10 |dW1 error|")
    fig.suptitle(title or "W1 gradient error per input pixel (black: exact or below range)")
    return fig


def write_html_report(path, step, analytic, by_oracle, report, *, lines=(), command=None):
    """Write the MNIST page: one self-contained HTML file (see :mod:`oracles._html`).

    The page shows the lockstep loss curves with the parameter gaps, the W1
    gradient error as 28 x 28 tiles, the histogram of relative errors per
    oracle, and the row of the full-step gradient check (its verdict, the
    sensitivity of each parameter, the error per element over its tolerance,
    and on failure the diagnosis). Plots are embedded; nothing is loaded from
    elsewhere.

    Parameters
    ----------
    path : str or os.PathLike
        The file written (atomically; a symlink there is replaced).
    step : LockstepResult
        From :func:`lockstep`.
    analytic, by_oracle
        From :func:`gradient_errors`.
    report : oracles.report.Report
        From :func:`gradient_report`.
    lines : sequence of str
        The command's summary lines, listed under the title.
    command : str, optional
        The command line, listed first.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> rng = np.random.default_rng(0)
    >>> step = LockstepResult(
    ...     losses={"reference": np.array([2.3, 2.1]), "torch": np.array([2.3, 2.1])},
    ...     gaps={"torch": np.zeros(2), "jax": np.zeros(2), "torch-jax": np.zeros(2)},
    ... )
    >>> analytic = (rng.normal(size=(784, 2)), rng.normal(size=2))  # stand-ins
    >>> by = {"torch": tuple(a * (1 + 1e-15) for a in analytic)}
    >>> from oracles import check_vjp
    >>> report = check_vjp(np.tanh, lambda g, x: g * (1 - np.tanh(x) ** 2), (analytic[1],))
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "mnist.html"
    >>> page = write_html_report(out, step, analytic, by, report).read_text()
    >>> page.count("<img"), page.count('<tr class="derivation passed"')
    (5, 1)
    """
    from oracles._html import summarize, write_html

    rel = {name: relative_errors(analytic, grads) for name, grads in by_oracle.items()}
    figures = [
        (
            "Lockstep training: the reference MLP, PyTorch and JAX from the same parameters on "
            "the same minibatches; below, the largest parameter gap to the reference per step.",
            _loss_figure(
                step.losses,
                gaps={
                    "torch - reference": step.gaps["torch"],
                    "jax - reference": step.gaps["jax"],
                    "torch - jax": step.gaps["torch-jax"],
                },
            ),
        ),
        (
            "W1 gradient error per input pixel: |hand - oracle| for the first hidden units, "
            "each a 28 x 28 tile (one pixel per input weight).",
            _tiles_figure({name: analytic[0] - grads[0] for name, grads in by_oracle.items()}),
        ),
        (
            "Relative error of every element of the hand gradient against each oracle.",
            _histogram_figure(rel),
        ),
    ]
    meta = [("command", command)] if command else []
    meta += [("", line) for line in lines]
    sizes = "-".join(str(r.shape[-1] if r.shape else 1) for r in report.inputs[::2])
    label = f"MLP training step: gradient of the loss (784-{sizes}) on real digits"
    return write_html(
        path,
        [summarize(report, label, group="reference.mlp.mlp_loss_vjp")],
        title="backprop-oracles: MNIST, the reference MLP on real digits",
        subtitle="Training, lockstep with PyTorch and JAX, and the full-step gradient checked "
        "against numeric, torch and jax",
        meta=meta,
        figures=figures,
    )


# --- command line --------------------------------------------------------------------------------


def _positive_finite(text):
    """An argparse ``type``: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m oracles mnist",
        description=(
            "Train the reference MLP on 8,000 bundled MNIST digits and test on 2,000; run it in "
            "lockstep with PyTorch and JAX; write plots."
        ),
    )
    count = _int_at_least(1)
    parser.add_argument("--out", default="oracles-report", help="plot directory (%(default)s)")
    parser.add_argument("--hidden", type=count, default=128, help="hidden units (%(default)s)")
    parser.add_argument("--activation", choices=mlp.ACTIVATIONS, default="tanh")
    parser.add_argument("--loss", choices=mlp.LOSSES, default="cross_entropy")
    parser.add_argument(
        "--lr", type=_positive_finite, default=0.1, help="SGD learning rate (%(default)s)"
    )
    parser.add_argument("--epochs", type=count, default=10, help="training epochs (%(default)s)")
    parser.add_argument("--batch-size", type=count, default=32, help="minibatch (%(default)s)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0)
    parser.add_argument("--lockstep-steps", type=count, default=100, help="(%(default)s)")
    parser.add_argument("--images", help="an MNIST images IDX file instead of the sample")
    parser.add_argument("--labels", help="the matching labels IDX file")
    parser.add_argument("--no-plots", action="store_true", help="skip the gradient check and plots")
    parser.add_argument(
        "--html",
        metavar="PATH",
        type=_output_file,
        help="also judge the full-step gradient with check_vjp and write one self-contained "
        "HTML page: the lockstep curves, the W1 tiles, the verdict, sensitivity and error plots",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check_before_work(parser, args):
    """Every usage error ``parse_args`` cannot see alone; ``parser.error`` (exit 2) on the first."""
    if (args.images is None) != (args.labels is None):
        parser.error(
            "argument --images/--labels: give both files or neither (neither: the bundled "
            f"sample), got --images {args.images!r} and --labels {args.labels!r}"
        )
    if args.images is not None:
        try:
            _digits(images_path=args.images, labels_path=args.labels)
        except (OSError, ValueError) as exc:  # IDXFormatError, too few digits, unreadable
            parser.error(f"argument --images/--labels: {exc}")
    if args.html is not None and args.no_plots:
        parser.error(
            "argument --html: the page is made of the gradient check and the plots, which "
            "--no-plots skips; drop one of them"
        )
    needed = {"torch": "torch", "jax": "jax"}
    if not args.no_plots:
        problem = output_dir_problem(args.out)
        if problem:
            parser.error(f"argument --out: cannot write the plots there: {problem}")
        needed["matplotlib"] = "plot"
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        extras = ",".join(needed[name] for name in missing)
        parser.error(
            f'{" and ".join(missing)} not installed: pip install "backprop-oracles[{extras}]"'
            + (" (or pass --no-plots)" if missing == ["matplotlib"] else "")
        )


def main(argv=None):
    """Run the MNIST report; return the exit status (0: accuracy >= 90% and lockstep gap < 1e-9).

    With ``--html`` the full-step gradient is also judged by
    :func:`gradient_report`, and the status is 1 unless it passed.

    Every option is checked first (see the module docstring); a usage error
    exits with status 2 before any training.

    Examples
    --------
    >>> main(["--help"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: 0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    _check_before_work(parser, args)
    options = {"activation": args.activation, "loss": args.loss}
    data = {"images_path": args.images, "labels_path": args.labels}
    result = train(
        hidden=args.hidden,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        **data,
        **options,
    )
    lines = []

    def say(line):
        print(line)
        lines.append(line)

    source = "bundled digits" if args.images is None else f"digits of {args.images}"
    say(
        f"reference MLP 784-{args.hidden}-10 ({args.activation}, {args.loss}), "
        f"{args.epochs} epochs of SGD (lr {args.lr}, batch {args.batch_size}) on {N_TRAIN} "
        f"{source}: test accuracy {result['test_accuracy']:.2%} on {N_TEST} digits "
        f"(train {result['train_accuracy']:.2%}) in {result['seconds']:.1f} s"
    )
    ok = result["test_accuracy"] >= 0.90

    start = time.perf_counter()
    step = lockstep(
        args.lockstep_steps,
        hidden=args.hidden,
        batch=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        **data,
        **options,
    )
    say(f"{step} ({time.perf_counter() - start:.1f} s)")
    ok = ok and step.max_gap < 1e-9

    if not args.no_plots:
        out = Path(args.out)
        start = time.perf_counter()
        analytic, by_oracle = gradient_errors(seed=args.seed, **data, **options)
        rel = {name: relative_errors(analytic, grads) for name, grads in by_oracle.items()}
        say(
            "full-step gradient 784-8-10 on 8 test digits, every element, max relative error "
            "of the hand gradient: "
            + ", ".join(f"{name} {err.max():.2e}" for name, err in rel.items())
            + f" ({time.perf_counter() - start:.1f} s)"
        )
        out.mkdir(parents=True, exist_ok=True)
        written = [
            plot_loss_curves(
                step.losses,
                out / LOSS_PLOT,
                gaps={
                    "torch - reference": step.gaps["torch"],
                    "jax - reference": step.gaps["jax"],
                    "torch - jax": step.gaps["torch-jax"],
                },
            ),
            plot_relative_error_histograms(rel, out / HISTOGRAM_PLOT),
            plot_w1_error_tiles(
                {name: analytic[0] - grads[0] for name, grads in by_oracle.items()},
                out / TILES_PLOT,
            ),
        ]
        for path in written:
            print(f"wrote {path}")
        if args.html:
            start = time.perf_counter()
            report = gradient_report(seed=args.seed, **data, **options)
            say(f"{report.verdict} ({time.perf_counter() - start:.1f} s)")
            ok = ok and report.ok
            command = "python -m oracles mnist " + " ".join(argv if argv is not None else [])
            write_html_report(
                args.html, step, analytic, by_oracle, report, lines=lines, command=command.strip()
            )
            print(f"HTML report written to {args.html}")
    return 0 if ok else 1
