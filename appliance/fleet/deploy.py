"""The command lines of Flower's deployment runtime for the fleet: SuperLink, SuperNode and ``flwr``.

``appliance fleet superlink|node|run|register|revoke|nodes`` build these argv
from ``[fleet]`` and run Flower's own CLIs (``flower-superlink``,
``flower-supernode``, ``flwr``), so what runs is exactly what Flower documents.
Flower's CLIs start helpers of their own (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``) by name, so the environment puts this
Python's ``bin`` first on ``PATH``. Nothing here imports flwr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

FEDERATION = "fleet"  # the SuperLink connection's name in the flwr CLI's config


def flower_env(flwr_home: str | Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (os.environ) with this interpreter's bin first on PATH and ``FLWR_HOME`` (the flwr CLI's config)."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def tool(name: str) -> str:
    """The path of a Flower CLI installed beside this interpreter (else its bare name, found on PATH)."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r}: expected host:port")
    return host.strip("[]"), int(port)


def connect_address(address: str) -> str:
    """Where a client reaches a server listening on ``address`` (a wildcard host means this machine)."""
    host, port = split_address(address)
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else f"{host}:{port}"


@dataclass(frozen=True)
class SuperLinkTls:
    ca_file: str
    cert_file: str
    key_file: str


# Flower's in-memory state (``flower-superlink`` without ``--database``). A file database puts the LinkState and
# every message's payload (the ObjectStore) in one SQLite file behind a 5 s busy timeout (flwr 1.42): with 20
# SuperNodes polling on two loaded cores, writers waited longer and requests failed with HTTP 500 "database is
# locked", which cost SecAgg+ its shares (docs/fleet.md).
IN_MEMORY_STATE = ":flwr-in-memory:"


def superlink_argv(address: str, state_dir: str | Path, tls: SuperLinkTls | None, *, node_auth: bool = True,
                   persist: bool = False) -> list[str]:
    """``flower-superlink`` on ``address`` (Fleet, Control and Runtime APIs: one HTTPS port in flwr 1.42).

    ``tls`` None is plain HTTP: only for a test on loopback (Flower's node
    authentication needs TLS, so ``node_auth`` goes with it). The state (runs,
    messages, registered gateway keys) is held in memory, Flower's default;
    ``persist`` keeps it in ``state_dir/superlink.db`` instead, so registered
    keys survive a restart, at the price of SQLite lock contention under load.
    """
    host, port = split_address(address)
    database = str(Path(state_dir) / "superlink.db") if persist else IN_MEMORY_STATE
    argv = [tool("flower-superlink"), "--host", host, "--port", str(port),
            "--database", database, "--disable-runtime-dependency-installation"]
    if tls is None:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", tls.ca_file, "--ssl-certfile", tls.cert_file, "--ssl-keyfile", tls.key_file]
    if node_auth:
        argv.append("--enable-supernode-auth")
    return argv


def node_config_arg(values: Mapping[str, object]) -> str:
    """Flower's ``--node-config`` syntax: ``key="string" key=1.5`` (TOML values, space separated)."""
    parts = []
    for k, v in values.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v!r}")
        else:
            s = str(v)
            if '"' in s or "\\" in s:
                raise ValueError(f"node config {k}: quotes and backslashes are not allowed ({s!r})")
            parts.append(f'{k}="{s}"')
    return " ".join(parts)


def supernode_argv(superlink: str, node_config: Mapping[str, object], *, ca_file: str | None,
                   key_file: str | None, runtime_port: int, max_wait_s: float | None = None) -> list[str]:
    """``flower-supernode`` joining ``superlink`` with this gateway's key and node config."""
    argv = [tool("flower-supernode"), "--superlink", superlink, "--node-config", node_config_arg(node_config),
            "--port", str(runtime_port)]
    argv += ["--root-certificates", ca_file] if ca_file else ["--insecure"]
    if key_file:
        argv += ["--auth-supernode-private-key", key_file]
    if max_wait_s is not None:
        argv += ["--max-wait-time", repr(float(max_wait_s))]
    return argv


def write_flwr_home(home: str | Path, superlink: str, ca_file: str | None) -> Path:
    """The flwr CLI's ``config.toml`` with one SuperLink connection, :data:`FEDERATION`."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{FEDERATION}"', "", f"[superlink.{FEDERATION}]", f'address = "{superlink}"']
    lines += [f'root-certificates = "{Path(ca_file).resolve()}"'] if ca_file else ["insecure = true"]
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def app_dir() -> Path:
    """The fleet's Flower App project (its ``pyproject.toml`` names the ServerApp and ClientApp)."""
    return Path(str(resources.files("appliance.fleet") / "flower_app"))


def run_argv(run_config: Mapping[str, str]) -> list[str]:
    """``flwr run`` of the fleet's app on :data:`FEDERATION`, the job's paths as its run config, logs streamed."""
    cfg = " ".join(f'{k}="{v}"' for k, v in run_config.items())
    return [tool("flwr"), "run", str(app_dir()), FEDERATION, "--run-config", cfg, "--stream"]


def register_argv(public_key: str | Path, name: str | None = None) -> list[str]:
    argv = [tool("flwr"), "supernode", "register", str(public_key), FEDERATION, "--format", "json"]
    return argv + (["--name", name] if name else [])


def revoke_argv(node_id: int) -> list[str]:
    return [tool("flwr"), "supernode", "unregister", str(node_id), FEDERATION]


def list_argv() -> list[str]:
    return [tool("flwr"), "supernode", "list", FEDERATION, "--format", "json"]
