"""Autodiff oracles: PyTorch and JAX adapters (imported lazily) and their rounding bound.

* :mod:`~oracles.backends.rounding`: the per-element rounding bound of autodiff results;
* :mod:`~oracles.backends.torch`: VJP, JVP and HVP by PyTorch autograd;
* :mod:`~oracles.backends.jax`: VJP, JVP and HVP by JAX.

Importing this package imports neither torch nor jax.
"""
