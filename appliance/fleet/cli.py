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


def cmd_server(args) -> int:
    cfg = _config(args)
    _logging(cfg.log_level)
    if not _flwr():
        return 2
    from appliance.detector.bundle import BundleError
    from appliance.detector.train import read_csv_rows
    from appliance.fleet.model import FleetModelError, seed_from_bundle
    from appliance.fleet.outcome import write_outcome
    from appliance.fleet.server import run_server

    try:
        spec, weights = seed_from_bundle(args.init)
        ref_sensors, ref_ts, ref_rows = read_csv_rows(args.reference)
        _readable(cfg.fleet.ca_file, cfg.fleet.cert_file, cfg.fleet.key_file)
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
