"""oracles.verify.mnist: lockstep training with PyTorch and JAX, the training command, the plots."""

from __future__ import annotations

import numpy as np
import pytest

from oracles.verify import mnist
from reference import mlp

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
