"""Debian's headless Chromium and its arguments: :mod:`rigs.browser`, shared with the benchmarks."""

from rigs.browser import CHROMIUM, HEADLESS_ARGS  # noqa: F401
