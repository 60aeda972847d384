"""Waiting for an outcome, never for a fixed time: :mod:`rigs.wait`, shared with the benchmarks."""

from rigs.wait import DEFAULT_INTERVAL_S, DEFAULT_TIMEOUT_S, wait_until, wait_until_async  # noqa: F401
