"""``appliance fleet server|client``: fleet learning rounds (Flower), hooked in by :func:`add_fleet_commands`.

flwr is imported only when one of these commands runs; without the ``fleet``
extra the command says how to install it.
"""

from __future__ import annotations

import logging
import sys

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
    from appliance.detector.quantize import QuantizationCheckError
    from appliance.detector.train import read_csv_rows
    from appliance.fleet.export import write_fleet_bundle
    from appliance.fleet.model import FleetModelError, seed_from_bundle
    from appliance.fleet.server import run_server, write_report

    try:
        spec, weights = seed_from_bundle(args.init)
        ref_sensors, ref_ts, ref_rows = read_csv_rows(args.reference)
        _readable(cfg.fleet.ca_file, cfg.fleet.cert_file, cfg.fleet.key_file)
    except (BundleError, FleetModelError, ValueError, OSError) as e:
        print(f"appliance fleet server: {e}", file=sys.stderr)
        return 2
    result = run_server(cfg.fleet, spec, weights, address=args.address)
    report = result.report
    released = report["rounds_released"]
    last_eval = next((r["evaluation"] for r in reversed(report["rounds"]) if r["evaluation"]), [])
    thresholds = [e["threshold"] for e in last_eval]
    try:
        if released == 0:
            raise FleetModelError("no round was released; the seed model is unchanged and no bundle is written")
        out = write_fleet_bundle(spec, result.weights, args.out, reference_rows=ref_rows, reference_sensors=ref_sensors,
                                 reference_ts=ref_ts, client_thresholds=thresholds,
                                 threshold_rule=cfg.fleet.threshold, seed=cfg.fleet.seed,
                                 fleet_info={k: v for k, v in report.items() if k != "rounds"}
                                 | {"seed_bundle": str(args.init), "clients": sorted({e["name"] for e in last_eval})})
        report["bundle"] = str(out)
    except (FleetModelError, QuantizationCheckError, ValueError) as e:
        report["bundle_error"] = str(e)
        write_report(report, args.report)
        print(f"appliance fleet server: {e}", file=sys.stderr)
        return 2
    write_report(report, args.report)
    line = f"fleet model written to {out}: {released} of {report['rounds_planned']} rounds released"
    if "privacy" in report:
        p = report["privacy"]
        line += f"; privacy spent epsilon={p['epsilon']:.3g} delta={p['delta']:g} ({p['rounds_accounted']} rounds)"
    print(line + f"; report {args.report}")
    print(f"next: appliance release add REPO {out} --version N --keys KEYS && appliance release publish REPO "
          f"--keys KEYS")
    return 0


def cmd_client(args) -> int:
    cfg = _config(args)
    _logging(cfg.log_level)
    if not _flwr():
        return 2
    from appliance.detector.train import read_csv_rows
    from appliance.fleet.client import GatewayClient, run_client

    try:
        sensors, ts, rows = read_csv_rows(args.data)
        _readable(cfg.fleet.ca_file)
        ca = open(cfg.fleet.ca_file, "rb").read() if cfg.fleet.ca_file else None
    except (ValueError, OSError) as e:
        print(f"appliance fleet client: {e}", file=sys.stderr)
        return 2
    client = GatewayClient(args.name or cfg.site, sensors, rows, ts)
    run_client(client, args.server or cfg.fleet.server_address, root_certificates=ca,
               max_wait_s=cfg.fleet.join_timeout_s)
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
    c.add_argument("--config", "-c", help="TOML config (site, [fleet].server_address)")
    c.add_argument("--data", required=True, nargs="+", help="CSV files of this gateway's normal operation")
    c.add_argument("--name", help="this gateway's name in reports (default: site)")
    c.add_argument("--server", help="host:port of the fleet server (default: fleet.server_address)")
    c.set_defaults(fn=cmd_client)
