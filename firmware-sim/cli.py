"""``appliance-sim``: the sensor simulators on the command line.

    appliance-sim pump --host H --port P --asset pump1 --rate 1.0 --fault bearing_wear --fault-at 30 --seconds N
    appliance-sim pump ... --sparkplug --group plant --edge-node pump-sim   (as a Sparkplug B edge node)
    appliance-sim replay FILE --host H --port P --asset pump1 --speed 50
    appliance-sim plc --port 4840              (OPC-UA PLC simulator, see plc.py)
    appliance-sim normal-csv --out FILE --rows 12000 --rate 10 --seed 7   (training data, see normal.py)
    appliance-sim cloud-intake --port 8883 --ca CA --cert C --key K --db FILE   (uplink's far side, cloud_intake.py)

Exit status: 0 when every message was acknowledged by the broker, 1 when some
were not, 2 on bad arguments or an unreadable file or broker.

A program that runs a simulator as a child process learns what it does from
single lines on standard output (logs go to standard error), and can tie the
child's life to its own with ``--stop-on-stdin-eof`` (keep the child's stdin a
pipe: however the parent ends, the pipe closes and the child stops cleanly)::

    appliance-sim pump: publishing asset=A rate_hz=R broker=H:P     first sample published
                                                  (+ sparkplug=spBv1.0/G/DDATA/N/A with --sparkplug)
    appliance-sim pump: fault_injected fault=F severity=S after_s=T
    appliance-sim pump: published=N acked=N ...                       at the end
    PLC simulator listening on opc.tcp://...                          plc: clients may connect
    PLC simulator: fault_injected fault=F severity=S after_s=T
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading

from .pump import FAULTS, SENSORS


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port (default 1883)")
    p.add_argument("--asset", default="pump1", help="asset name in the topic (default pump1)")
    p.add_argument("--topic", default="plant/{asset}/telemetry",
                   help="topic template; with a {sensor} level one message per sensor is sent "
                        "(default plant/{asset}/telemetry, multi-value)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CAs unless --tls-ca)")
    p.add_argument("--tls-ca", help="CA file that signed the broker's certificate")
    p.add_argument("--tls-insecure", action="store_true", help="do not verify the broker's certificate")
    p.add_argument("--client-id", help="MQTT client id (default: random)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--stop-on-stdin-eof", action="store_true",
                   help="also stop when standard input is closed (a supervising parent has ended)")


def _publisher_kw(args) -> dict:
    return dict(username=args.username, password=args.password, tls=args.tls, tls_ca=args.tls_ca,
                tls_insecure=args.tls_insecure, client_id=args.client_id)


def _stop_on_signals(args) -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if getattr(args, "stop_on_stdin_eof", False):
        from .lifeline import watch_stdin_eof

        watch_stdin_eof(stop.set)
    return stop


def _pump(args) -> int:
    from .publisher import run_pump

    sparkplug = (args.group, args.edge_node) if args.sparkplug else None

    def started(ts: float) -> None:
        how = f" sparkplug=spBv1.0/{args.group}/DDATA/{args.edge_node}/{args.asset}" if sparkplug else ""
        print(f"appliance-sim pump: publishing asset={args.asset} rate_hz={args.rate:g} "
              f"broker={args.host}:{args.port}{how}", flush=True)

    def fault_injected(after_s: float) -> None:
        print(f"appliance-sim pump: fault_injected fault={args.fault} severity={args.severity:g} "
              f"after_s={after_s:.2f}", flush=True)

    stats = run_pump(args.host, args.port, asset=args.asset, rate_hz=args.rate, seconds=args.seconds,
                     fault=args.fault, fault_at=args.fault_at, severity=args.severity,
                     fault_sensor=args.fault_sensor, seed=args.seed, speed=args.pump_speed,
                     valve=args.valve, topic=args.topic, stop_event=_stop_on_signals(args), sparkplug=sparkplug,
                     on_started=started, on_fault=fault_injected, **_publisher_kw(args))
    print(f"appliance-sim pump: {stats.summary()}", flush=True)
    return 0 if stats.complete else 1


def _normal_csv(args) -> int:
    from .normal import write_normal_csv

    path = write_normal_csv(args.out, rows=args.rows, rate_hz=args.rate, seed=args.seed)
    print(f"appliance-sim normal-csv: rows={args.rows} rate_hz={args.rate:g} seed={args.seed} out={path}",
          flush=True)
    return 0


def _replay(args) -> int:
    from .replay import replay_csv

    stats = replay_csv(args.file, args.host, args.port, asset=args.asset, speed=args.speed,
                       topic=args.topic, stop_event=_stop_on_signals(args), rebase=args.rebase,
                       exclude=tuple(args.exclude), **_publisher_kw(args))
    print(f"appliance-sim replay: {stats.summary()}", flush=True)
    return 0 if stats.complete else 1


def build_parser() -> argparse.ArgumentParser:
    from .replay import LABEL_COLUMNS, parse_speed

    parser = argparse.ArgumentParser(prog="appliance-sim", description="Sensor and PLC simulators.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pump", help="publish a simulated centrifugal pump (SKAB sensor set)")
    _broker_args(p)
    p.add_argument("--rate", type=float, default=1.0, help="samples per second (default 1)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run until killed)")
    p.add_argument("--fault", choices=FAULTS, help="fault to inject")
    p.add_argument("--fault-at", type=float, default=None, help="seconds after start (default: at once)")
    p.add_argument("--severity", type=float, default=1.0, help="fault severity, 0 < s <= 3 (default 1)")
    p.add_argument("--fault-sensor", choices=SENSORS, help="sensor for sensor_stuck / sensor_drift")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--pump-speed", type=float, default=1.0, help="speed, fraction of rated (default 1)")
    p.add_argument("--valve", type=float, default=1.0, help="valve opening 0..1 (default 1)")
    p.add_argument("--sparkplug", action="store_true",
                   help="publish as a Sparkplug B edge node (the asset is the device, each sensor a metric)")
    p.add_argument("--group", default="plant", help="Sparkplug group id (default plant)")
    p.add_argument("--edge-node", default="pump-sim", help="Sparkplug edge node id (default pump-sim)")
    p.set_defaults(func=_pump)

    p = sub.add_parser("replay", help="replay a CSV (SKAB or comma) with its original timestamps")
    p.add_argument("file")
    _broker_args(p)
    p.add_argument("--speed", type=parse_speed, default=1.0,
                   help="time factor: 1 = real time, 50 = 50x faster, max = no pacing (default 1)")
    p.add_argument("--exclude", action="append", default=list(LABEL_COLUMNS),
                   help=f"column not to publish (repeatable; default {', '.join(LABEL_COLUMNS)})")
    p.add_argument("--rebase", action="store_true",
                   help="shift timestamps so the file starts now and send it as live, not historical")
    p.set_defaults(func=_replay)

    p = sub.add_parser("normal-csv", help="write simulated normal operation (no faults) to a CSV for training")
    p.add_argument("--out", required=True, help="CSV file to write (replaced only once complete)")
    p.add_argument("--rows", type=_positive_int, default=12_000, help="samples to write (default 12000)")
    p.add_argument("--rate", type=_positive_float, default=10.0,
                   help="samples per second of simulated time (default 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.set_defaults(func=_normal_csv)

    from .cloud_intake import add_subcommand as add_cloud_intake_subcommand
    from .cloud_pki import add_subcommand as add_cloud_pki_subcommand
    add_cloud_intake_subcommand(sub)
    add_cloud_pki_subcommand(sub)

    try:
        from .plc import add_plc_subcommand
    except ImportError as e:  # asyncua missing: the MQTT simulators still work
        p = sub.add_parser("plc", help=f"OPC-UA PLC simulator (unavailable: {e})")
        p.set_defaults(func=lambda args, why=str(e): _unavailable(why))
    else:
        add_plc_subcommand(sub)
    return parser


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _unavailable(why: str) -> int:
    print(f"appliance-sim plc: unavailable: {why}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("pump", "replay"):
        logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "pump" and args.fault is not None:
        # Fail on a bad severity before connecting, with the model's own message.
        from .pump import PumpModel
        try:
            PumpModel(seed=0).inject(args.fault, args.severity, args.fault_sensor)
        except ValueError as e:
            print(f"appliance-sim pump: {e}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError) as e:
        print(f"appliance-sim {args.command}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # PublishError: broker unreachable or refused us
        print(f"appliance-sim {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
