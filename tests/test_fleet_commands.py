"""The deployment runtime's command lines and gateway keys (no flwr, no processes).

``appliance fleet superlink|node|run|register|revoke`` run Flower's own CLIs with
the argv ``appliance/fleet/deploy.py`` builds from ``[fleet]``; the real
processes are in ``tests/test_fleet_deploy.py``. Checked here: the SuperLink
always gets TLS and node authentication together, the SuperNode its key and
CA, node configs are quoted the way Flower parses them, and a gateway's key
pair is what Flower's node authentication loads (OpenSSH EC, private 0600).
"""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.fleet import deploy
from appliance.fleet.keys import public_key_line, write_node_key


def test_the_superlink_runs_with_tls_and_node_authentication(tmp_path):
    tls = deploy.SuperLinkTls("/ca.pem", "/sl.pem", "/sl.key")
    argv = deploy.superlink_argv("0.0.0.0:9092", tmp_path, tls)
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "9092"
    assert argv[argv.index("--ssl-ca-certfile") + 1] == "/ca.pem"
    assert argv[argv.index("--ssl-certfile") + 1] == "/sl.pem" and argv[argv.index("--ssl-keyfile") + 1] == "/sl.key"
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert "--disable-runtime-dependency-installation" in argv  # nothing installed at run time
    # Flower's in-memory state by default (a SQLite file locked up under 20 SuperNodes); a file on request.
    assert argv[argv.index("--database") + 1] == deploy.IN_MEMORY_STATE
    kept = deploy.superlink_argv("0.0.0.0:9092", tmp_path, tls, persist=True)
    assert kept[kept.index("--database") + 1] == str(tmp_path / "superlink.db")  # registered keys survive a restart
    plain = deploy.superlink_argv("127.0.0.1:9092", tmp_path, None, node_auth=False)
    assert "--insecure" in plain and "--enable-supernode-auth" not in plain


def test_a_supernode_joins_with_its_key_its_ca_and_its_node_config():
    argv = deploy.supernode_argv("fleet.example:9092", {"name": "hall 3", "recent-s": 60.0, "x": True},
                                 ca_file="/ca.pem", key_file="/gw.key", runtime_port=9100, max_wait_s=30)
    assert argv[argv.index("--superlink") + 1] == "fleet.example:9092"
    assert argv[argv.index("--root-certificates") + 1] == "/ca.pem" and "--insecure" not in argv
    assert argv[argv.index("--auth-supernode-private-key") + 1] == "/gw.key"
    assert argv[argv.index("--node-config") + 1] == 'name="hall 3" recent-s=60.0 x=true'
    assert argv[argv.index("--max-wait-time") + 1] == "30.0" and argv[argv.index("--port") + 1] == "9100"
    with pytest.raises(ValueError, match="quotes"):
        deploy.node_config_arg({"name": 'a"b'})


def test_clients_reach_a_wildcard_listener_on_this_machine():
    assert deploy.connect_address("0.0.0.0:9092") == "127.0.0.1:9092"
    assert deploy.connect_address("fleet.example:9092") == "fleet.example:9092"
    with pytest.raises(ValueError):
        deploy.split_address("9092")


def test_the_flwr_cli_config_names_one_superlink_with_the_fleet_ca(tmp_path):
    from appliance.core.compat import tomllib  # Python 3.10: tomli

    path = deploy.write_flwr_home(tmp_path / "home", "127.0.0.1:9092", str(tmp_path / "ca.pem"))
    cfg = tomllib.loads(path.read_text())
    assert cfg["superlink"]["default"] == deploy.FEDERATION
    conn = cfg["superlink"][deploy.FEDERATION]
    assert conn == {"address": "127.0.0.1:9092", "root-certificates": str(tmp_path / "ca.pem")}
    assert (deploy.app_dir() / "pyproject.toml").is_file()


def test_a_gateway_key_pair_is_openssh_ec_and_its_private_half_stays_private(tmp_path):
    private, public = write_node_key(tmp_path / "gw.key", comment="hall-3")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ") and public.read_text().strip().endswith("hall-3")
    assert public_key_line(private) == public_key_line(public)
    with pytest.raises(FileExistsError):
        write_node_key(private)  # a new key would be a new gateway identity


def test_secagg_goes_on_without_a_gateway_lost_before_it_shared_its_keys():
    pytest.importorskip("flwr", reason="the fleet extra (pip install .[fleet]) is not installed")
    from types import SimpleNamespace

    from appliance.fleet.server_app import DropoutTolerantSecAggPlus

    workflow = DropoutTolerantSecAggPlus(num_shares=3, reconstruction_threshold=2)
    ring = [1, 2, 3, 4, 5]  # each gateway's shares: itself and its two neighbours on the round's ring
    neighbours = {n: {ring[i - 1], n, ring[(i + 1) % 5]} for i, n in enumerate(ring)}
    state = SimpleNamespace(sampled_node_ids=set(ring), active_node_ids={1, 2, 3, 4}, nid_to_neighbours=neighbours,
                            threshold=2)
    # Gateway 5 left before sharing its keys: the round goes on with the four, each with >= 2 share holders.
    assert workflow._forget_the_lost(state) is True and state.sampled_node_ids == {1, 2, 3, 4}
    # Two more lost next to each other: gateway 2 keeps a single holder (itself), the round halts.
    state.active_node_ids = {2, 4}
    assert workflow._forget_the_lost(state) is False
    state.sampled_node_ids, state.active_node_ids = {1, 2}, set()
    assert workflow._forget_the_lost(state) is False  # nobody left: no round
