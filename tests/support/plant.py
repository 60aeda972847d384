"""The simulated pump feeding an uplink: :mod:`rigs.plant`, shared with the sync benchmark."""

from rigs.plant import BLAME, T0, Plant  # noqa: F401
