"""oracles.verify.mnist: lockstep training with PyTorch and JAX, the training command, the plots."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from oracles.verify import mnist
from reference import mlp
from reference.mnist import load_mnist

pytestmark = [pytest.mark.torch, pytest.mark.jax]


@pytest.mark.parametrize(
    ("activation", "loss", "hidden", "lr"),
    [("tanh", "cross_entropy", 128, 0.1), ("sigmoid", "squared_error", 32, 0.5)],
)
def test_lockstep_100_steps_parameters_agree(activation, loss, hidden, lr):
    result = mnist.lockstep(100, hidden=hidden, activation=activation, loss=loss, batch=32, lr=lr)
    print(f"\n{result}\nlargest parameter gap over 100 steps: {result.max_gap:.3e}")
    assert result.gaps["torch"].shape == result.gaps["jax"].shape == (100,)
    assert result.max_gap < 1e-9
    assert np.max(result.gaps["torch-jax"]) < 1e-9
    for name in ("torch", "jax"):
        np.testing.assert_allclose(result.losses[name], result.losses["reference"], rtol=1e-12)
    # The run really trains: the loss of the last 10 steps is well below the first 10.
    curve = result.losses["reference"]
    assert curve[-10:].mean() < 0.8 * curve[:10].mean()


def test_lockstep_leaves_jax_64_bit_mode_as_it_was():
    import jax
    import jax.numpy as jnp

    before = jax.config.read("jax_enable_x64")
    mnist.lockstep(2, hidden=4, batch=4)
    assert jax.config.read("jax_enable_x64") == before
    assert jnp.ones(1).dtype == (jnp.float64 if before else jnp.float32)


def test_lockstep_sees_a_tiny_mistake_in_the_reference(monkeypatch):
    """A planted 1e-7 relative error in one bias gradient shows as a parameter gap."""
    honest = mlp.loss_and_grads

    def off_by_a_little(*args, **kwargs):
        value, grads = honest(*args, **kwargs)
        return value, (grads[0], grads[1] * (1 + 1e-7), *grads[2:])

    monkeypatch.setattr(mlp, "loss_and_grads", off_by_a_little)
    result = mnist.lockstep(5, hidden=16, batch=16)
    assert result.max_gap > 1e-11
    assert np.max(result.gaps["torch-jax"]) < 1e-14  # the frameworks still agree


def test_training_command_reaches_90_percent(capsys):
    status = mnist.main(["--no-plots", "--no-progress", "--lockstep-steps", "10"])
    out = capsys.readouterr().out
    print(out)
    assert status == 0
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy >= 90.0
    assert "max parameter gap" in out


def test_training_is_reproducible():
    a = mnist.train(hidden=16, epochs=1, batch_size=50, progress=False, seed=3)
    b = mnist.train(hidden=16, epochs=1, batch_size=50, progress=False, seed=3)
    np.testing.assert_array_equal(a["losses"], b["losses"])
    assert a["test_accuracy"] == b["test_accuracy"] > 0.8


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(0)
    curves = {name: np.linspace(2.3, 0.5, 50) + 1e-3 * rng.random(50) for name in ("a", "b")}
    errors = {"numeric": 10 ** rng.uniform(-14, -8, 500), "torch": np.r_[0.0, 1e-16, 1e-13]}
    tiles = {"numeric": rng.normal(0, 1e-13, (784, 8)), "torch": np.zeros((784, 8))}
    paths = [
        mnist.plot_loss_curves(curves, tmp_path / "loss.png"),
        mnist.plot_loss_curves(curves, tmp_path / "loss-gaps.png", gaps={"a": np.r_[0.0, 1e-16]}),
        mnist.plot_relative_error_histograms(errors, tmp_path / "hist.png"),
        mnist.plot_w1_error_tiles(tiles, tmp_path / "tiles.png", units=4),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\(784, hidden\)"):
        mnist.plot_w1_error_tiles({"x": np.zeros((10, 3))}, tmp_path / "bad.png")


def test_relative_errors_skip_exact_zero_references():
    got = mnist.relative_errors(
        [np.array([1.0, 5.0, 2.0]), np.array([3.0])], [np.array([1.0, 0.0, 4.0]), np.array([2.0])]
    )
    np.testing.assert_allclose(got, [0.0, 0.5, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps and batch must be >= 1"),
        ({"batch": 0}, "steps and batch must be >= 1"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"loss": "hinge"}, "loss must be one of"),
    ],
)
def test_lockstep_argument_validation(kwargs, message):
    from oracles.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=message):
        mnist.lockstep(**kwargs)


# --- the --images/--labels files reach every stage -----------------------------------------------


def _write_idx(path, array):
    """An uncompressed unsigned-byte IDX file (the format of :mod:`reference.idx`)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.tobytes())
    return str(path)


@pytest.fixture(scope="module")
def reversed_digits(tmp_path_factory):
    """The bundled 10,000 digits in reverse order, as IDX files: other batches, other losses."""
    images, labels = load_mnist()
    d = tmp_path_factory.mktemp("digits")
    return {
        "images_path": _write_idx(d / "images.idx", images[::-1]),
        "labels_path": _write_idx(d / "labels.idx", labels[::-1]),
    }


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("stage", "kwargs"),
    [
        ("train", {"hidden": 2, "epochs": 1, "progress": False}),
        ("lockstep", {"steps": 1, "hidden": 2, "batch": 2}),
        ("gradient_errors", {"hidden": 1, "batch": 2}),
    ],
)
def test_every_stage_loads_the_given_files(monkeypatch, stage, kwargs):
    seen = []

    def spy(images_path=None, labels_path=None):
        seen.append((images_path, labels_path))
        raise _Stop

    monkeypatch.setattr(mnist, "load_mnist", spy)
    with pytest.raises(_Stop):
        getattr(mnist, stage)(images_path="img.idx", labels_path="lab.idx", **kwargs)
    assert seen == [("img.idx", "lab.idx")]


def test_lockstep_trains_on_the_given_files(reversed_digits):
    """The first loss is that of the initial parameters on the first batch of the files' digits."""
    given = mnist.lockstep(2, hidden=4, batch=4, **reversed_digits)
    assert given.max_gap < 1e-12
    params = mlp.init_params((784, 4, 10), seed=0)
    rows = np.random.default_rng(0).permutation(8000)[:4]
    first = {}
    for name, data in (("given", reversed_digits), ("bundled", {})):
        X, y, _, _ = mnist._digits(**data)
        first[name], _ = mlp.loss_and_grads(params, X[rows], y[rows])
    assert given.losses["reference"][0] == pytest.approx(first["given"], rel=1e-12)
    assert first["given"] != pytest.approx(first["bundled"], rel=1e-6)


def test_training_command_uses_the_files_in_every_stage_and_replaces_planted_symlinks(
    tmp_path, monkeypatch, capsys, reversed_digits
):
    """``mnist --images --labels --out``: each stage loads the files; plots are written whole.

    The plots' paths hold symlinks to a file outside the output directory; after
    the run that file is unchanged and each plot is a regular PNG file. The
    gradient check is replaced by a quick stand-in (the real one takes ~20 s)
    that records what it was given.
    """
    loaded, given = [], []
    real_load = mnist.load_mnist

    def load_spy(images_path=None, labels_path=None):
        loaded.append((images_path, labels_path))
        return real_load(images_path, labels_path)

    def gradient_errors_stand_in(**kwargs):
        given.append(kwargs)
        rng = np.random.default_rng(0)
        analytic = (rng.normal(size=(784, 8)), rng.normal(size=8))
        return analytic, {name: tuple(a * (1 + 1e-12) for a in analytic) for name in ("numeric",)}

    monkeypatch.setattr(mnist, "load_mnist", load_spy)
    monkeypatch.setattr(mnist, "gradient_errors", gradient_errors_stand_in)
    out = tmp_path / "report"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    names = (mnist.LOSS_PLOT, mnist.HISTOGRAM_PLOT, mnist.TILES_PLOT)
    for name in names:
        os.symlink(outside, out / name)
    files = [reversed_digits["images_path"], reversed_digits["labels_path"]]
    status = mnist.main(
        ["--hidden", "4", "--epochs", "1", "--batch-size", "500", "--lockstep-steps", "2"]
        + ["--images", files[0], "--labels", files[1], "--out", str(out), "--no-progress"]
    )
    captured = capsys.readouterr().out
    assert status == 1  # 4 hidden units, one epoch: below 90%, and that is the verdict
    assert f"digits of {files[0]}" in captured
    assert loaded and all(paths == tuple(files) for paths in loaded)
    assert len(loaded) == 3  # the check before any work, training, lockstep
    assert given == [
        {
            "seed": 0,
            "images_path": files[0],
            "labels_path": files[1],
            "activation": "tanh",
            "loss": "cross_entropy",
        }
    ]
    assert outside.read_text() == "not yours"
    for name in names:
        path = out / name
        assert not path.is_symlink() and path.is_file()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out)) == sorted(names)  # no temporary file left behind


@pytest.mark.parametrize(
    ("plot", "args"),
    [
        (mnist.plot_loss_curves, ({"a": [2.0, 1.0]},)),
        (mnist.plot_relative_error_histograms, ({"numeric": np.array([1e-12, 1e-10])},)),
        (mnist.plot_w1_error_tiles, ({"numeric": np.full((784, 2), 1e-13)},)),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_plots_replace_a_planted_symlink_instead_of_following_it(tmp_path, plot, args):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    path = tmp_path / "out" / "plot.png"
    path.parent.mkdir()
    os.symlink(outside, path)
    assert plot(*args, path) == path
    assert outside.read_bytes() == b"keep"
    assert not path.is_symlink() and path.read_bytes()[:4] == b"\x89PNG"
    assert os.listdir(path.parent) == ["plot.png"]


def test_plot_format_follows_the_suffix(tmp_path):
    path = mnist.plot_loss_curves({"a": [2.0, 1.0]}, tmp_path / "loss.svg")
    assert b"<svg" in path.read_bytes()[:500]


# --- no global state changes ---------------------------------------------------------------------


def _random_and_error_state():
    import jax
    import torch

    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what is checked)
    return {
        "torch rng": torch.get_rng_state().numpy().tobytes(),
        "numpy rng": (np_state[0], np_state[1].tobytes(), *np_state[2:]),
        "numpy errstate": np.geterr(),
        "torch default dtype": torch.get_default_dtype(),
        "torch grad mode": torch.is_grad_enabled(),
        "jax x64": jax.config.read("jax_enable_x64"),
    }


def _changed(before, after):
    return [name for name in before if after[name] != before[name]]


def test_lockstep_changes_no_global_state():
    """torch's and NumPy's generators, NumPy's error state, warnings.filters: all as before.

    The first call may be the one that imports torch's lazily loaded modules
    (sympy adds a warning filter of its own on import), so the filters are
    compared around a second call; the generators and the error state around
    both.
    """
    before = _random_and_error_state()
    mnist.lockstep(2, hidden=4, batch=4)
    assert _changed(before, _random_and_error_state()) == []
    filters = list(warnings.filters)
    mnist.lockstep(2, hidden=4, batch=4, activation="relu", loss="squared_error")
    assert _changed(before, _random_and_error_state()) == []
    assert list(warnings.filters) == filters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"epochs": -1}, "epochs must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"hidden": 0}, "hidden must be an int >= 1"),
        ({"hidden": (16, -1)}, "hidden must be an int >= 1"),
        ({"activation": "gelu"}, "activation must be one of"),
    ],
)
def test_train_argument_validation(kwargs, message):
    from oracles.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=message):
        mnist.train(progress=False, **kwargs)
