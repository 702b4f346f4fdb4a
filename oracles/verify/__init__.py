"""The verification application: every reference derivation against every oracle.

The one part of :mod:`oracles` that imports :mod:`reference` (and the only
one that knows about it): the cases of every reference derivation
(:mod:`~oracles.verify.cases`), the same ops written with torch's and jax's
own operations (:mod:`~oracles.verify.native`), the MNIST training-step
verification (:mod:`~oracles.verify.mnist`) and the command line
(:mod:`~oracles.verify.cli`, run as ``python -m oracles report|mnist``).
Nothing else in :mod:`oracles` imports this package.
"""
