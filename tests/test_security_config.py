"""Finite but absurd settings, and quoted scalars, are refused by ``appliance config check`` (issue 24 item 8).

Each case is one file with one bad key: the check fails with exit code 2 and a
line naming that key. Before, every one of them was accepted (a quoted value was
coerced: ``enabled = "true"`` turned PLC writes on).
"""

from __future__ import annotations

import pytest

from appliance.cli import main

TARGET = '[[outputs.mitigation.targets]]\nnode = "ns=2;s=Pump1.ValvePosition"\n'

ABSURD = [
    (TARGET + "min = -1e308\nmax = 1e308\n", "outputs.mitigation.targets.0.min"),
    (TARGET + "min = 0.0\nmax = 1e308\n", "outputs.mitigation.targets.0.max"),
    (TARGET + "min = 0.0\nmax = 1000.0\n", "outputs.mitigation.targets.0"),  # outside the default 0..100
    (TARGET + "min = 0.0\nmax = 10.0\nengineering_range = [0.0, 1e300]\n", "outputs.mitigation.targets.0"),
    ('[web]\ntrusted_hosts = [".com"]\n', "web.trusted_hosts"),
    ("[watchdog]\nsilence_s = 1e-300\n", "watchdog.silence_s"),
    ('[detector]\nbundle = "/etc"\n', "detector.bundle"),
    ('data_dir = "/proc/self"\n', "data_dir"),
    ('data_dir = "/"\n', "data_dir"),
    ('[store]\npath = "/etc/appliance.db"\n', "store.path"),
    ('[outputs.mitigation]\naudit_db = "/usr/lib/audit.db"\n', "outputs.mitigation.audit_db"),
    ("[inputs.mqtt]\nmax_abs_value = 1e300\n", "inputs.mqtt.max_abs_value"),
    ("[inputs.mqtt.ranges]\nCurrent = [-1e300, 1e300]\n", "inputs.mqtt.ranges"),
    ("[outputs.sync.updates]\nmax_archive_mb = 16384\n", "outputs.sync.updates.max_archive_mb"),
    ('[inputs.mqtt]\nenabled = "yes"\n', "inputs.mqtt.enabled"),
    ('[connections.mqtt]\nport = "1883"\n', "connections.mqtt.port"),
    ('[outputs.mitigation]\nenabled = "true"\n', "outputs.mitigation.enabled"),
    ('[decision]\nclear_ratio = "0.5"\n', "decision.clear_ratio"),
]


@pytest.mark.parametrize("toml, key", ABSURD, ids=[k for _, k in ABSURD])
def test_config_check_refuses_with_a_line_naming_the_key(tmp_path, capsys, toml, key):
    f = tmp_path / "absurd.toml"
    f.write_text(toml)
    assert main(["config", "check", str(f)]) == 2
    lines = [ln.strip() for ln in capsys.readouterr().err.splitlines() if ln.strip().startswith(key)]
    assert len(lines) == 1, capsys.readouterr()
    assert ":" in lines[0]


def test_quoted_scalars_are_refused_saying_so(tmp_path, capsys):
    f = tmp_path / "quoted.toml"
    f.write_text('[outputs.mitigation]\nenabled = "true"\n')
    assert main(["config", "check", str(f)]) == 2
    assert "not the quoted text 'true' (write it without quotes)" in capsys.readouterr().err


@pytest.mark.parametrize("toml", [
    'data_dir = "/var/lib/appliance"\n[detector]\nbundle = "/usr/share/appliance/model"\n',
    '[web]\ntrusted_hosts = [".plant.example.com", "gateway", "10.0.0.5"]\n',
    "[watchdog]\nsilence_s = 2\n",  # an integer is a float
    TARGET + "min = 200\nmax = 2900\nengineering_range = [0, 3000]\nmax_step = 100\n",
    "[inputs.mqtt.ranges]\nCurrent = [0, 50]\n",
])
def test_sane_values_still_pass(tmp_path, toml):
    f = tmp_path / "sane.toml"
    f.write_text(toml)
    assert main(["config", "check", str(f)]) == 0
