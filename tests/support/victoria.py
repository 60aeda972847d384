"""The ``victoria`` fixture: a real VictoriaMetrics server (:mod:`rigs.victoria`) on a free loopback port per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from rigs.victoria import VICTORIA, VictoriaMetrics, count_points  # noqa: F401  (count_points: the tests' name)


@pytest.fixture
def victoria(tmp_path):
    if not Path(VICTORIA).exists():
        pytest.fail("victoria-metrics is not installed (apt-get install -y victoria-metrics)")
    vm = VictoriaMetrics(tmp_path / "vm").start()
    try:
        yield vm
    finally:
        vm.stop()
