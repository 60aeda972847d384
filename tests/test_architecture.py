"""The shape of the house, checked: who may import whom.

The import graph is read from the source (every ``import`` statement, also those
inside functions), so a rule broken in a rarely used code path still fails here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.core import Input, Output
from appliance.core.compat import tomllib
from appliance.registry import INPUTS, OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "web")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every appliance/web/firmware_sim module ``path`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in (*PACKAGES, "firmware_sim")}


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    g = {}
    for name, path in modules.items():
        # "from a.b import c" names module a.b.c only when c is a module; keep what exists.
        g[name] = {m for m in imports_of(path) if m in modules and m != name}
    return g


GRAPH = graph()


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in GRAPH.get(m, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_no_import_cycles():
    # Importing a.b.c also runs a/__init__.py, so a package's own __init__ reaching
    # its submodules is not a cycle; any other way back to a module is.
    def own_packages(m):
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}

    cycles = [m for m in GRAPH if any(m in reachable(n) for n in GRAPH[m] if n not in own_packages(m))]
    assert cycles == [], f"modules on an import cycle: {sorted(cycles)}"


def test_the_core_imports_no_other_part():
    assert {m for m in reachable("appliance.core") if not m.startswith("appliance.core")} == set()


@pytest.mark.parametrize("output_pkg", ["appliance.actions", "appliance.history", "appliance.store",
                                        "appliance.connections", "appliance.sync", "appliance.fleet",
                                        "appliance.release", "web"])
def test_no_output_or_shared_connection_imports_an_input(output_pkg):
    offenders = {m: sorted(n for n in GRAPH[m] if n.startswith("appliance.connectors"))
                 for m in GRAPH if m.startswith(output_pkg)}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_plugins_do_not_import_each_other():
    # A plugin's folder is where its README is (the sync's factory is appliance.sync.uplink, its folder
    # appliance/sync/); what one needs of another comes through its registry entry (Plugin.needs).
    folders = {".".join(Path(p.readme).parent.parts) for p in INPUTS + OUTPUTS}

    def inside(m, folder):
        return m == folder or m.startswith(folder + ".")

    for a in folders:
        for m in (m for m in GRAPH if inside(m, a)):
            others = {n for n in GRAPH[m] for b in folders if b != a and inside(n, b)}
            assert others == set(), f"{m} imports another plugin: {sorted(others)}"


# The live path: windowing, the ONNX Runtime session, scoring, decisions, alarms, the runtime and every
# plugin the registry can build (their factories are imported by name, so they are roots of their own).
LIVE_ROOTS = ("appliance.runtime", "appliance.detector.windowing", "appliance.detector.session",
              "appliance.detector.scorer", "appliance.actions.decide", "appliance.actions.alarms",
              "appliance.registry", *(p.factory.partition(":")[0] for p in INPUTS + OUTPUTS))
TRAINING_SIDE = ("appliance.detector.train", "appliance.detector.calibration", "appliance.detector.quantize",
                 "appliance.detector.autoencoder",
                 "appliance.eval", "appliance.commission", "appliance.fleet.client", "appliance.fleet.server",
                 "appliance.fleet.model", "appliance.fleet.export", "appliance.fleet.client_app",
                 "appliance.fleet.server_app", "appliance.fleet.outcome", "firmware_sim")
TRAINING_LIBRARIES = ("onnxruntime.quantization", "sklearn", "flwr")


def external_imports(module: str) -> set[str]:
    """Full names of the modules outside appliance/web ``module`` imports (``onnxruntime.quantization``)."""
    return external_imports_of(source_of(module))


def external_imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] not in PACKAGES}


@pytest.mark.parametrize("root", LIVE_ROOTS)
def test_the_live_path_never_imports_training_or_quantization(root):
    # Read from the source, imports inside functions too; tests/test_detector_live_path.py checks the
    # same in a running interpreter that really scores.
    assert root in GRAPH, f"{root} is not a module (a renamed live-path module or plugin factory?)"
    modules = reachable(root) | {root}
    assert sorted(m for m in modules if m.startswith(TRAINING_SIDE)) == []
    libraries = {m: sorted(n for n in external_imports(m) if n.startswith(TRAINING_LIBRARIES)) for m in modules}
    assert {m: v for m, v in libraries.items() if v} == {}


def test_the_appliance_package_never_imports_the_simulator():
    offenders = {m: sorted(n for n in GRAPH[m] | imports_of_path(m) if n.startswith("firmware_sim"))
                 for m in GRAPH if m.startswith("appliance")}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_benchmarks_and_rigs_never_import_the_tests():
    # What a benchmark shares with the tests (a real peer, a harness) lives in rigs/, which tests/support
    # re-exports: a benchmark importing tests/ would depend on test code (and pytest) for its figures.
    offenders = {}
    for folder in ("benchmarks", "rigs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found = sorted(n for n in external_imports_of(path) if n.split(".")[0] in ("tests", "benchmarks")
                           and not (folder == "benchmarks" and n.startswith("benchmarks")))
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_product_never_imports_the_rigs():
    # rigs/ is not packaged: an import of it works in the tree and fails on an installed gateway.
    sources = [p for pkg in (*PACKAGES, "firmware-sim") for p in (ROOT / pkg).rglob("*.py")]
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in external_imports_of(p) if n.split(".")[0] == "rigs")
                 for p in sources}
    assert {p: v for p, v in offenders.items() if v} == {}


def imports_of_path(module: str) -> set[str]:
    return imports_of(source_of(module))


def test_only_the_parts_that_own_a_database_speak_sql():
    # The store owns the appliance's tables; history owns its outbox and local history
    # files; mitigation owns its append-only audit log; sync owns its upload queue; the
    # dashboard's accounts own their file (users, sessions, sign-in log). Nobody else opens SQLite;
    # core.sqlite_pages is the page-size rewrite those owners share, on a connection they hand it.
    owners = ("appliance.store", "appliance.history", "appliance.actions.mitigation.audit", "appliance.sync.queue",
              "appliance.accounts", "appliance.core.sqlite_pages")
    users = sorted(m for m in GRAPH if "sqlite3" in imports_of_any(m) and not m.startswith(owners))
    assert users == []
    # Nor does anybody else write SQL for someone else's connection (the dashboard and commissioning
    # read the store through StoreReader's methods).
    statement = re.compile(r"\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX))\b")
    speakers = sorted(m for m in GRAPH if not m.startswith(owners) and any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and statement.match(n.value)
        for n in ast.walk(ast.parse(source_of(m).read_text()))))
    assert speakers == []


def source_of(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of_any(module: str) -> set[str]:
    """Top-level names of everything ``module`` imports (standard library included)."""
    names = set()
    for node in ast.walk(ast.parse(source_of(module).read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_registered_plugin_builds_the_right_kind_and_has_its_folder():
    for plugins, kind in ((INPUTS, Input), (OUTPUTS, Output)):
        for p in plugins:
            folder = ROOT / Path(p.readme).parent
            assert (folder / "config.py").exists() and (folder / "__init__.py").exists(), folder
            assert getattr(p.config(), p.switch) in (True, False)
    # The interfaces are what the plugins really are, not a protocol nothing checks.
    from appliance.actions.mitigation.output import MitigationOutput
    from appliance.actions.mqtt_alarm.notifier import MqttAlarmNotifier
    from appliance.connectors.mqtt.connector import MqttConnector
    from appliance.connectors.opcua.connector import OpcuaConnector
    from appliance.history.output import HistoryOutput
    from appliance.store.output import StoreOutput
    assert all(issubclass(c, Input) for c in (MqttConnector, OpcuaConnector))
    from appliance.fleet.participant import FleetParticipant
    from appliance.sync.uplink import SyncUplink
    assert all(issubclass(c, Output) for c in (MitigationOutput, MqttAlarmNotifier, HistoryOutput, StoreOutput,
                                               SyncUplink, FleetParticipant))


def test_what_a_plugin_needs_comes_from_an_output_built_before_it():
    # build_outputs goes in registry order; a need on a later (or unknown) output could never be met.
    for i, p in enumerate(OUTPUTS):
        for source in p.needs.values():
            key, _, attribute = source.partition(".")
            assert key in {q.key for q in OUTPUTS[:i]} and attribute, f"{p.key} needs {source}"


def test_an_output_that_needs_another_is_refused_without_it_by_the_config_check():
    from appliance.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"fleet.participate: needs \[outputs.sync\] enabled \(for its windows\)"):
        parse_config({"fleet": {"participate": True, "asset": "pump"}, "outputs": {"sync": {"enabled": False}}})
    assert parse_config({"fleet": {"participate": True, "asset": "pump"},
                         "outputs": {"sync": {"enabled": True}}}).fleet.participate


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_packaged():
    # An explicit list: a new folder left out of it imports in the tree and fails on an installed gateway.
    packaged = set(pyproject()["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for pkg in PACKAGES
               for p in (ROOT / pkg).rglob("__init__.py")}
    assert sorted(folders - packaged) == []


# Distribution names whose import name differs.
IMPORT_NAMES = {"scikit-learn": "sklearn", "paho-mqtt": "paho", "flask-wtf": "flask_wtf", "argon2-cffi": "argon2",
                "influxdb-client": "influxdb_client", "prometheus-client": "prometheus_client", "python-dateutil": "dateutil",
                "protobuf": "google"}


def test_every_declared_dependency_is_imported():
    sources = [p for folder in (*PACKAGES, "firmware-sim") for p in (ROOT / folder).rglob("*.py")]
    used = {n.split(".")[0] for path in sources for n in external_imports_of(path)}
    declared = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in pyproject()["project"]["dependencies"]}
    assert sorted(d for d in declared if IMPORT_NAMES.get(d, d) not in used) == []


def test_importing_the_appliance_loads_no_simulator_code():
    # The static graph above cannot see an import made by name at run time; a fresh interpreter can.
    code = ("import sys, appliance.demo, appliance.runtime, appliance.detector.train\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'firmware_sim'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_the_config_loads_no_plugin_code():
    code = ("import sys; from appliance.config import load_config; load_config('config/appliance.example.toml'); "
            "heavy = [m for m in ('paho', 'asyncua', 'influxdb_client', 'onnxruntime', 'sklearn', 'flask') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the tests' own house rules -------------------------------------------------------------------------------

TEST_MODULES = sorted((ROOT / "tests").glob("test_*.py"))

# What makes a test module an integration test: a fixture that starts a real peer or trains on SKAB,
# or a name that starts one (a broker, a PLC or VictoriaMetrics process, Chromium, the whole appliance).
PEER_FIXTURES = {"mosquitto", "victoria", "plc", "fresh_plc", "skab_bundle", "tuf_server"}
PEER_NAMES = {"Mosquitto", "PlcSim", "VictoriaMetrics", "RunningAppliance", "sync_api", "sync_playwright",
              "TlsStaticServer"}


def test_no_test_module_imports_another():
    # What tests share lives in tests/support/ (fixtures registered in tests/conftest.py): importing a
    # test module runs its module-level code and collects its tests a second time under another name.
    offenders = {}
    for path in TEST_MODULES:
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("tests.test_"))
            elif isinstance(node, ast.ImportFrom):
                mod = ("tests." if node.level else "") + (node.module or "")
                if mod.startswith("tests.test_"):
                    found.add(mod)
                elif mod in ("tests", "tests."):
                    found.update(f"tests.{a.name}" for a in node.names if a.name.startswith("test_"))
        if found:
            offenders[path.name] = sorted(found)
    assert offenders == {}


def is_marked_integration(tree: ast.Module) -> bool:
    """Whether the module sets ``pytestmark`` to (a list holding) ``pytest.mark.integration``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return any(ast.unparse(v) == "pytest.mark.integration" for v in values)
    return False


def test_modules_that_start_a_real_peer_are_marked_integration():
    # scripts/test.sh --fast deselects the integration marker: a module missing it would start
    # servers (or train on SKAB) in the fast lane.
    unmarked = {}
    for path in TEST_MODULES:
        tree = ast.parse(path.read_text(), str(path))
        # A peer fixture may also be taken by a test marked integration on its own.
        uses = {a.arg for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                and not any(ast.unparse(d) == "pytest.mark.integration" for d in f.decorator_list)
                for a in f.args.args} & PEER_FIXTURES
        uses |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & PEER_NAMES
        if uses and not is_marked_integration(tree):
            unmarked[path.name] = sorted(uses)
    assert unmarked == {}
