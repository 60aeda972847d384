"""``appliance fleet server|client``: fleet learning rounds (Flower), hooked in by :func:`add_fleet_commands`.

flwr is imported only when one of these commands runs; without the ``fleet``
extra the command says how to install it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

EXTRA_HINT = "flwr is not installed: pip install 'edge-anomaly-appliance[fleet]' (or .[fleet] from the source tree)"


def _config(args):
    from appliance.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2)


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    # flwr logs through its own console handler; without this every line of it came out twice.
    logging.getLogger("flwr").propagate = False


def _flwr() -> bool:
    try:
        import flwr  # noqa: F401
    except ImportError:
        print(f"appliance fleet: {EXTRA_HINT}", file=sys.stderr)
        return False
    return True


def _readable(*paths: str | None) -> None:
    """Fail before any round starts, naming the file, when a configured TLS file cannot be read."""
    for p in paths:
        if p is not None:
            with open(p, "rb"):
                pass


def _bind_allowed(address: str | None, fleet) -> None:
    """The one-process server (no gateway authentication, TLS or not) listens on a wildcard host only with
    ``allow_unauthenticated_bind``; ``address`` is ``--address`` or ``[fleet] server_address``."""
    from appliance.fleet.config import wildcard_host

    if address is not None and wildcard_host(address) and not fleet.allow_unauthenticated_bind:
        raise ValueError(f"--address {address!r} listens on every interface, but this fleet server cannot "
                         "authenticate gateways; give the VPN's or loopback address, or set "
                         "[fleet] allow_unauthenticated_bind = true")


def cmd_server(args) -> int:
    cfg = _config(args)
    _logging(cfg.log_level)
    if not _flwr():
        return 2
    from appliance.detector.bundle import BundleError, load_bundle
    from appliance.detector.train import read_csv_rows
    from appliance.fleet.model import FleetModelError, seed_from_bundle
    from appliance.fleet.outcome import write_outcome
    from appliance.fleet.server import run_server

    try:
        spec, weights = seed_from_bundle(args.init)
        ref_sensors, ref_ts, ref_rows = read_csv_rows(args.reference)
        _readable(cfg.fleet.ca_file, cfg.fleet.cert_file, cfg.fleet.key_file)
        _bind_allowed(args.address or cfg.fleet.server_address, cfg.fleet)
        load_bundle(args.init)  # its threshold bounds the fleet's (write_outcome): a broken seed fails here
    except (BundleError, FleetModelError, ValueError, OSError) as e:
        print(f"appliance fleet server: {e}", file=sys.stderr)
        return 2
    result = run_server(cfg.fleet, spec, weights, address=args.address)
    outcome = write_outcome(cfg.fleet, spec, result.weights, result.report, init=args.init,
                            reference=(ref_sensors, ref_ts, ref_rows), out=args.out, report_path=args.report)
    if not outcome.ok:
        print(f"appliance fleet server: {outcome.message}", file=sys.stderr)
        return 2
    print(outcome.message)
    _next_steps(args.init, args.out)
    return 0


def _next_steps(init, out) -> None:
    """How the gateways will take the fleet model: the signed release path, then their shadow run."""
    from appliance.lifecycle.shadow import hot_swap_check

    why = hot_swap_check(init, out)  # as each gateway running the seed model will judge it
    print(f"note: gateways running the seed model need a restart for it: {why}" if why else
          "gateways running the seed model take it through their shadow run, without a restart")
    print(f"next: appliance release add REPO {out} --version N --keys KEYS && appliance release publish REPO "
          f"--keys KEYS")


def _store_source(args, cfg):
    from appliance.fleet.data import StoreSource

    f, w = cfg.fleet, cfg.windows
    return StoreSource(db_path=Path(args.store) if args.store else cfg.path(cfg.store.path), asset=args.from_store,
                       recent_s=args.recent if args.recent is not None else f.recent_s,
                       margin_s=args.alarm_margin if args.alarm_margin is not None else f.alarm_margin_s,
                       staleness_s=args.staleness if args.staleness is not None else w.staleness_s,
                       lateness_s=args.lateness if args.lateness is not None else w.lateness_s)


def cmd_client(args) -> int:
    cfg = _config(args)
    _logging(args.log_level or cfg.log_level)
    if not _flwr():
        return 2
    from appliance.commission import CommissionError
    from appliance.detector.train import read_csv_rows
    from appliance.fleet.client import GatewayClient, run_client

    ca_file = args.ca_file or cfg.fleet.ca_file
    name = args.name or cfg.fleet.name or cfg.site
    try:
        _readable(ca_file)
        ca = open(ca_file, "rb").read() if ca_file else None
        if args.from_store:
            source = _store_source(args, cfg)
            source.check()
            client = GatewayClient(name, source=source)
        else:
            sensors, ts, rows = read_csv_rows(args.data)
            client = GatewayClient(name, sensors, rows, ts)
    except (CommissionError, ValueError, OSError) as e:
        print(f"appliance fleet client: {e}", file=sys.stderr)
        return 2
    max_wait = args.max_wait if args.max_wait is not None else cfg.fleet.join_timeout_s
    how = run_client(client, args.server or cfg.fleet.server_address, root_certificates=ca, max_wait_s=max_wait)
    if how == "left":
        print(f"fleet client {client.name}: left the run (window closed) after {client.rounds} rounds")
    else:
        print(f"fleet client {client.name}: run ended by the server")
    return 0


# -- Flower's deployment runtime: SuperLink (engineer), SuperNode (gateway), flwr run ---------------------------


def _superlink_tls(f):
    from appliance.fleet.deploy import SuperLinkTls

    if f.cert_file is None:
        return None
    return SuperLinkTls(str(Path(f.ca_file).resolve()), str(Path(f.cert_file).resolve()),
                        str(Path(f.key_file).resolve()))


def _exec(argv: list[str], env: dict) -> int:
    """Become Flower's CLI (signals, exit code and logs are then exactly Flower's)."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def cmd_superlink(args) -> int:
    cfg = _config(args)
    if not _flwr():
        return 2
    from appliance.fleet.deploy import flower_env, superlink_argv

    f = cfg.fleet
    tls = _superlink_tls(f)
    if tls is None and not args.insecure:
        print("appliance fleet superlink: [fleet] cert_file/key_file/ca_file are required (node authentication "
              "needs TLS); --insecure runs plain HTTP without node authentication, for a loopback test only",
              file=sys.stderr)
        return 2
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    argv = superlink_argv(args.address or f.server_address, state, tls, node_auth=tls is not None,
                          persist=args.persist_state)
    return _exec(argv, flower_env(state / "flwr-home"))


def _flwr_cli_env(args, cfg):
    """The flwr CLI's environment: a FLWR_HOME with the one SuperLink connection this fleet uses."""
    import tempfile

    from appliance.fleet.deploy import connect_address, flower_env, write_flwr_home

    home = Path(args.flwr_home) if args.flwr_home else Path(tempfile.mkdtemp(prefix="fleet-flwr-"))
    write_flwr_home(home, args.superlink or connect_address(cfg.fleet.server_address), cfg.fleet.ca_file)
    return flower_env(home)


def _flwr_cli(argv: list[str], env: dict) -> int:
    import subprocess

    return subprocess.run(argv, env=env).returncode


def cmd_keygen(args) -> int:
    from appliance.fleet.keys import write_node_key

    try:
        private, public = write_node_key(args.key, comment=args.name or "")
    except (FileExistsError, OSError) as e:
        print(f"appliance fleet keygen: {e}", file=sys.stderr)
        return 2
    print(f"private key {private} (stays on this gateway); public key {public} (to the engineer: "
          f"appliance fleet register {public.name})")
    return 0


def cmd_register(args) -> int:
    cfg = _config(args)
    if not _flwr():
        return 2
    from appliance.fleet.deploy import register_argv

    return _flwr_cli(register_argv(args.public_key, args.name), _flwr_cli_env(args, cfg))


def cmd_revoke(args) -> int:
    cfg = _config(args)
    if not _flwr():
        return 2
    from appliance.fleet.deploy import revoke_argv

    return _flwr_cli(revoke_argv(args.node_id), _flwr_cli_env(args, cfg))


def cmd_nodes(args) -> int:
    cfg = _config(args)
    if not _flwr():
        return 2
    from appliance.fleet.deploy import list_argv

    return _flwr_cli(list_argv(), _flwr_cli_env(args, cfg))


def cmd_run(args) -> int:
    """Submit the fleet's app to the SuperLink (``flwr run``), wait for it, then say what it wrote."""
    import json
    import os

    cfg = _config(args)
    _logging(cfg.log_level)
    if not _flwr():
        return 2
    from appliance.fleet.deploy import run_argv

    job = {"fleet-config": str(Path(args.config).resolve()) if args.config else "",
           "init": str(Path(args.init).resolve()),
           "reference": os.pathsep.join(str(Path(p).resolve()) for p in args.reference),
           "out": str(Path(args.out).resolve()), "report": str(Path(args.report).resolve())}
    if not job["fleet-config"]:
        print("appliance fleet run: --config is required (the ServerApp reads [fleet] from it)", file=sys.stderr)
        return 2
    report_path = Path(job["report"])
    report_path.unlink(missing_ok=True)
    rc = _flwr_cli(run_argv(job), _flwr_cli_env(args, cfg))
    if rc != 0 or not report_path.exists():
        print(f"appliance fleet run: the run did not finish (flwr run exited {rc}; no report {report_path})",
              file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    if "bundle" not in report:
        print(f"appliance fleet run: {report.get('bundle_error', 'no bundle written')}", file=sys.stderr)
        return 2
    print(f"fleet model written to {report['bundle']}: {report['rounds_released']} of {report['rounds_planned']} "
          f"rounds released; report {report_path}")
    _next_steps(args.init, report["bundle"])
    return 0


def node_config(args, cfg) -> dict:
    """This gateway's SuperNode node config: its name and where its ClientApp reads its rows."""
    import os

    f, w = cfg.fleet, cfg.windows
    values: dict = {"name": args.name or f.name or cfg.site, "secagg": "optional" if args.allow_plain else "required"}
    if args.data:
        values["data"] = os.pathsep.join(str(Path(p).resolve()) for p in args.data)
    else:
        values |= {"store": str(Path(args.store).resolve() if args.store else cfg.path(cfg.store.path)),
                   "asset": args.from_store,
                   "recent-s": float(args.recent if args.recent is not None else f.recent_s),
                   "alarm-margin-s": float(args.alarm_margin if args.alarm_margin is not None else f.alarm_margin_s),
                   "staleness-s": float(args.staleness if args.staleness is not None else w.staleness_s),
                   "lateness-s": float(args.lateness if args.lateness is not None else w.lateness_s)}
    if args.traffic_file:
        values["traffic-file"] = str(Path(args.traffic_file).resolve())
    return values


def cmd_node(args) -> int:
    """Become this gateway's SuperNode (``flower-supernode``) until the SuperLink ends it or a SIGTERM."""
    cfg = _config(args)
    if not _flwr():
        return 2
    from appliance.commission import CommissionError
    from appliance.fleet.deploy import flower_env, supernode_argv

    f = cfg.fleet
    ca_file, key_file = args.ca_file or f.ca_file, args.key or f.node_key
    try:
        _readable(ca_file, key_file)
        if args.from_store:
            _store_source(args, cfg).check()
        values = node_config(args, cfg)
    except (CommissionError, ValueError, OSError) as e:
        print(f"appliance fleet node: {e}", file=sys.stderr)
        return 2
    argv = supernode_argv(args.server or f.server_address, values, ca_file=ca_file, key_file=key_file,
                          runtime_port=args.runtime_port or f.node_runtime_port, max_wait_s=args.max_wait)
    return _exec(argv, flower_env())


def _add_deployment_commands(fsub) -> None:
    k = fsub.add_parser("keygen", help="a gateway: make its SuperNode key pair (private key stays here)")
    k.add_argument("key", help="private key file to write (the public key goes to KEY.pub)")
    k.add_argument("--name", help="a comment in the public key (the gateway's name)")
    k.set_defaults(fn=cmd_keygen)

    sl = fsub.add_parser("superlink", help="the engineer: run Flower's SuperLink with the fleet's TLS and "
                                           "node authentication")
    sl.add_argument("--config", "-c", help="TOML with [fleet] (server_address, ca_file, cert_file, key_file)")
    sl.add_argument("--state", required=True, help="folder of the SuperLink's files (flwr home; with "
                                                   "--persist-state its database)")
    sl.add_argument("--persist-state", action="store_true",
                    help="keep the state (registered gateway keys) in STATE/superlink.db across restarts "
                         "(SQLite; default: in memory, the keys registered again after a restart)")
    sl.add_argument("--address", help="host:port to listen on (default: fleet.server_address)")
    sl.add_argument("--insecure", action="store_true",
                    help="no TLS and no node authentication (a loopback test only)")
    sl.set_defaults(fn=cmd_superlink)

    def control(p):
        p.add_argument("--config", "-c", help="TOML with [fleet] (server_address, ca_file)")
        p.add_argument("--superlink", help="host:port of the SuperLink (default: fleet.server_address)")
        p.add_argument("--flwr-home", help="folder for the flwr CLI's config (default: a temporary one)")

    rg = fsub.add_parser("register", help="the engineer: admit a gateway's public key to the SuperLink")
    rg.add_argument("public_key", help="the gateway's KEY.pub")
    rg.add_argument("--name", help="the gateway's name in the SuperLink's list")
    control(rg)
    rg.set_defaults(fn=cmd_register)

    rv = fsub.add_parser("revoke", help="the engineer: refuse a registered gateway from its next request on")
    rv.add_argument("node_id", type=int, help="its node id (appliance fleet nodes)")
    control(rv)
    rv.set_defaults(fn=cmd_revoke)

    ls = fsub.add_parser("nodes", help="the engineer: list the registered gateways")
    control(ls)
    ls.set_defaults(fn=cmd_nodes)

    r = fsub.add_parser("run", help="the engineer: submit a fleet run to the SuperLink and write the fleet model")
    control(r)
    r.add_argument("--init", required=True, metavar="BUNDLE", help="the bundle the fleet starts from")
    r.add_argument("--reference", required=True, nargs="+", metavar="CSV",
                   help="normal rows at the engineer for the INT8 calibration and check")
    r.add_argument("--out", required=True, help="bundle directory to write (on the SuperLink's machine)")
    r.add_argument("--report", required=True, help="JSON run report to write (on the SuperLink's machine)")
    r.set_defaults(fn=cmd_run)

    n = fsub.add_parser("node", help="a gateway: run its SuperNode (the participant does, in connectivity windows)")
    n.add_argument("--config", "-c", help="TOML config (site, store, [windows], [fleet])")
    data = n.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", nargs="+", help="CSV files of this gateway's normal operation")
    data.add_argument("--from-store", metavar="ASSET", help="train on ASSET's recent normal rows in the store")
    n.add_argument("--store", help="--from-store: the store file (default: the config's store.path)")
    n.add_argument("--recent", type=float, metavar="S", help="--from-store: seconds of recent operation")
    n.add_argument("--alarm-margin", type=float, metavar="S", help="--from-store: seconds left out around alarms")
    n.add_argument("--staleness", type=float, metavar="S", help="--from-store: grid staleness")
    n.add_argument("--lateness", type=float, metavar="S", help="--from-store: grid lateness")
    n.add_argument("--name", help="this gateway's name in reports (default: fleet.name, else site)")
    n.add_argument("--server", help="host:port of the SuperLink (default: fleet.server_address)")
    n.add_argument("--ca-file", help="PEM CA of the SuperLink's certificate (default: fleet.ca_file)")
    n.add_argument("--key", help="this gateway's private key (default: fleet.node_key)")
    n.add_argument("--max-wait", type=float, metavar="S", help="give up reaching the SuperLink after S seconds")
    n.add_argument("--runtime-port", type=int,
                   help="loopback port of the SuperNode's own runtime API (default: fleet.node_runtime_port, 9094)")
    n.add_argument("--allow-plain", action="store_true",
                   help="also take fit rounds without SecAgg+ (default: refuse them)")
    n.add_argument("--traffic-file", help="append the payload bytes of each message (the benchmark)")
    n.set_defaults(fn=cmd_node)


def add_fleet_commands(subparsers) -> None:
    """Add ``fleet`` with ``server`` and ``client`` to the ``appliance`` command's subparsers."""
    f = subparsers.add_parser("fleet", help="fleet learning with Flower: gateways train one model together")
    fsub = f.add_subparsers(dest="fleet_cmd", required=True)

    s = fsub.add_parser("server", help="run the rounds ([fleet]) and write the fleet model as a bundle")
    s.add_argument("--config", "-c", help="TOML config with a [fleet] section (default: embedded defaults)")
    s.add_argument("--init", required=True, metavar="BUNDLE",
                   help="the bundle the fleet starts from (its sensors, window, scaler, layers and weights)")
    s.add_argument("--reference", required=True, nargs="+", metavar="CSV",
                   help="normal rows at the engineer for the INT8 calibration and check (never sent to gateways)")
    s.add_argument("--out", required=True, help="bundle directory to write")
    s.add_argument("--report", required=True, help="JSON run report to write (rounds, bytes, privacy)")
    s.add_argument("--address", help="host:port to listen on (default: fleet.server_address)")
    s.set_defaults(fn=cmd_server)

    c = fsub.add_parser("client", help="take part in a fleet run with this gateway's normal data")
    c.add_argument("--config", "-c", help="TOML config (site, store, [windows], [fleet])")
    data = c.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", nargs="+", help="CSV files of this gateway's normal operation")
    data.add_argument("--from-store", metavar="ASSET",
                      help="train on ASSET's recent normal rows in this gateway's store (alarms left out)")
    c.add_argument("--store", help="--from-store: the store file (default: the config's store.path)")
    c.add_argument("--recent", type=float, metavar="S", help="--from-store: seconds of recent operation "
                                                             "(default: fleet.recent_s)")
    c.add_argument("--alarm-margin", type=float, metavar="S",
                   help="--from-store: also leave out S seconds around each alarm (default: fleet.alarm_margin_s)")
    c.add_argument("--staleness", type=float, metavar="S", help="--from-store: grid staleness (windows.staleness_s)")
    c.add_argument("--lateness", type=float, metavar="S", help="--from-store: grid lateness (windows.lateness_s)")
    c.add_argument("--name", help="this gateway's name in reports (default: fleet.name, else site)")
    c.add_argument("--server", help="host:port of the fleet server (default: fleet.server_address)")
    c.add_argument("--ca-file", help="PEM CA of the server's TLS certificate (default: fleet.ca_file)")
    c.add_argument("--max-wait", type=float, metavar="S",
                   help="give up connecting after S seconds (default: fleet.join_timeout_s)")
    c.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: the config's")
    c.set_defaults(fn=cmd_client)
    _add_deployment_commands(fsub)
