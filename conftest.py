"""Collecting the doctests of ``firmware-sim/``, whose folder name is not its package's.

The simulators install as the package ``firmware_sim`` from the folder ``firmware-sim``
(``[tool.setuptools.package-dir]`` in pyproject.toml). pytest would import
``firmware-sim/pump.py`` as a top-level module ``pump``, with the folder put on
``sys.path`` (a dash makes the folder no package to it), and every module with a relative
import (``from .pump import ...``) would fail to import. Here the doctests of that folder
are collected from the module as installed, ``firmware_sim.pump``, like any user imports it.

The fleet's Flower client and server (and its ServerApp and ClientApp) import flwr at the top; without the fleet extra
(Python 3.10, where Flower does not install) their doctests cannot be collected, and the
fleet tests skip themselves (``pytest.importorskip``).

The process settings of the whole suite (BLAS threads) stay in ``tests/conftest.py``;
nothing here imports numpy.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule

FIRMWARE_SIM = Path(__file__).resolve().parent / "firmware-sim"
PACKAGE = "firmware_sim"

collect_ignore = [] if importlib.util.find_spec("flwr") else [
    f"appliance/fleet/{name}.py" for name in ("client", "server", "client_app", "server_app")]


class InstalledDoctestModule(DoctestModule):
    """The doctests of a ``firmware-sim/`` file, found in ``firmware_sim.<name>``."""

    def _getobj(self):
        name = PACKAGE if self.path.stem == "__init__" else f"{PACKAGE}.{self.path.stem}"
        return importlib.import_module(name)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent):
    collected = yield
    if file_path.resolve().parent != FIRMWARE_SIM:
        return collected
    return [InstalledDoctestModule.from_parent(parent, path=file_path) if type(node) is DoctestModule else node
            for node in collected]
