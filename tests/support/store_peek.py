"""Counting rows of a store another process writes: :mod:`rigs.store_peek`, shared with the benchmarks."""

from rigs.store_peek import count_rows  # noqa: F401
