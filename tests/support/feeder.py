"""A thread submitting readings through the runtime's sink: :mod:`rigs.feeder`, shared with the sync benchmark."""

from rigs.feeder import Feeder  # noqa: F401
