"""Suite-wide configuration: Hypothesis profiles and the required-backends guard.

``ORACLES_REQUIRE_BACKENDS=torch,jax`` (set by tox.ini, hence by CI) makes the
run fail at once when a named backend cannot be imported: a torch or jax
check that cannot run is a missing check, never a skip. Without the variable,
tests marked ``torch`` / ``jax`` still run and fail with
:class:`oracles.BackendUnavailable` naming the extra to install; deselect them
with ``-m "not torch and not jax"`` if you mean to.
"""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    derandomize=True,
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=300)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)


def pytest_configure(config):
    required = [
        b.strip() for b in os.environ.get("ORACLES_REQUIRE_BACKENDS", "").split(",") if b.strip()
    ]
    missing = []
    for name in required:
        if name not in ("torch", "jax"):
            raise pytest.UsageError(
                f"ORACLES_REQUIRE_BACKENDS names {name!r}; the backends are 'torch' and 'jax'"
            )
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        raise pytest.UsageError(
            "ORACLES_REQUIRE_BACKENDS requires backends that cannot be imported: "
            + ", ".join(missing)
            + '. Install them with: pip install "backprop-oracles[all]"'
        )
