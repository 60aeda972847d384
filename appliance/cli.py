"""The ``appliance`` command: run, demo, train, eval, config check."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from appliance.config import ConfigError, load_config

log = logging.getLogger("appliance")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    for noisy in ("paho", "werkzeug", "urllib3", "apscheduler", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # asyncua warns on every reconnect attempt and about its own defaults; our connector
    # logs what matters once.
    logging.getLogger("asyncua").setLevel(logging.ERROR)


def _load(path: str | None):
    try:
        return load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2)


def cmd_sync_now(args) -> int:
    """Ask the running appliance, through its dashboard API, to open a connectivity window now."""
    import urllib.error
    import urllib.request

    body = json.dumps({"duration_s": args.duration} if args.duration else {}).encode()
    req = urllib.request.Request(args.url.rstrip("/") + "/api/sync/now", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read() or b"{}").get("error", e.reason)
        except ValueError:
            why = e.reason
        print(f"sync now refused: {why}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"sync now: the appliance's dashboard at {args.url} did not answer: "
              f"{getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    print(f"sync now: window opened {json.dumps(answer.get('records', []))}")
    return 0


def cmd_config_check(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{args.file}: OK (site={cfg.site}, data_dir={cfg.data_dir})")
    if args.show:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def cmd_train(args) -> int:
    from pydantic import ValidationError

    from appliance.detector.train import TrainSettings, train_from_csv

    opts = {k: v for k, v in (("window", args.window), ("stride", args.stride),
                              ("period_s", args.period)) if v is not None}
    level_free = list(args.level_free or [])
    if args.no_trend_check:
        opts["trend_limit"] = None
    try:
        if args.level_free_from:
            from appliance.detector.features import drifting_sensors
            from appliance.detector.train import read_csv_rows
            sensors, _, rows = read_csv_rows(args.level_free_from)
            drifting, report = drifting_sensors(rows, sensors)
            print(f"drifting in {', '.join(args.level_free_from)}: {', '.join(drifting) or 'none'} "
                  f"(share of stretches: {report['drift_share']})")
            level_free += [s for s in drifting if s not in level_free]
        if args.from_store:
            out = _train_from_store(args, {**opts, "level_free": level_free})
        else:
            out = train_from_csv(args.data, args.out, TrainSettings(**opts, level_free=level_free))
    except ValidationError as e:
        # One line per refused setting, by name, instead of pydantic's multi-line report.
        for err in e.errors():
            print(f"appliance train: {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}", file=sys.stderr)
        return 2
    except ValueError as e:  # unreadable data, too few rows, a span that cannot be trained on, ...
        print(f"appliance train: {e}", file=sys.stderr)
        return 2
    from appliance.detector.bundle import load_bundle
    print(f"bundle written: {out} (level-free sensors: {', '.join(load_bundle(out).level_free) or 'none'})")
    return 0


def _time_arg(text: str | None, option: str) -> float | None:
    from appliance.detector.train import parse_time

    try:
        return None if text is None else parse_time(text, f"appliance train {option}")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _train_from_store(args, opts: dict):
    """Commission from the appliance's store, on the grid of its ``[windows]`` settings."""
    from appliance.commission import commission
    from appliance.detector.train import TrainSettings

    cfg = _load(args.config)
    since, until = _time_arg(args.since, "--since"), _time_arg(args.until, "--until")
    w = cfg.windows
    settings = TrainSettings(**{**opts, "period_s": opts.get("period_s") or w.period_s or 1.0,
                                "staleness_s": w.staleness_s, "lateness_s": w.lateness_s})
    return commission(cfg.path(cfg.store.path), args.from_store, args.out, settings, since=since, until=until,
                      last_s=args.last, sensors=args.sensors, allow_alarms=args.allow_alarms)


async def _run_async(cfg) -> int:
    from appliance.runtime import build, start_web

    app = build(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    web = None
    await app.start()
    try:
        if cfg.web.enabled:
            web = start_web(app, cfg.web.host, cfg.web.port)
        await stop.wait()
    finally:
        if web is not None:
            web.stop()
        await app.shutdown()
    return 0


def cmd_run(args) -> int:
    cfg = _load(args.config)
    setup_logging(cfg.log_level)
    from appliance.core import PluginError

    try:
        return asyncio.run(_run_async(cfg))
    except (FileNotFoundError, PluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_demo(args) -> int:
    from appliance.demo import run_demo

    cfg = _load(args.config)
    setup_logging("WARNING" if args.seconds else cfg.log_level)
    return run_demo(cfg, seconds=args.seconds, fault_at=args.fault_at, fault=args.fault)


def cmd_eval(args) -> int:
    from appliance.eval.skab import EvalSettings, run_skab_eval

    if args.learn_from_anomaly_free and args.mode != "protocol":
        print("appliance eval skab: --learn-from-anomaly-free is a protocol-mode variant "
              "(stream mode already trains on anomaly-free.csv)", file=sys.stderr)
        return 2
    settings = EvalSettings(prior_from_anomaly_free=args.learn_from_anomaly_free)
    run_skab_eval(args.data, mode=args.mode, predictions_out=args.predictions_out,
                  json_out=args.json_out, settings=settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="appliance", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the appliance")
    r.add_argument("--config", "-c", help="TOML config file (default: embedded defaults)")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="broker + simulator + appliance; inject a fault and show the alarm")
    d.add_argument("--config", "-c")
    d.add_argument("--seconds", type=float, default=None, help="run headless for N seconds, then summarise")
    d.add_argument("--fault-at", type=float, default=None, help="seconds after start to inject the fault")
    d.add_argument("--fault", default="bearing_wear")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="train a model bundle on normal data")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", help="CSV files of normal operation")
    src.add_argument("--from-store", metavar="ASSET",
                     help="the asset's readings recorded by this appliance (commissioning, see --since/--last)")
    t.add_argument("--config", "-c", help="with --from-store: the appliance's config (default: embedded)")
    t.add_argument("--since", help="with --from-store: start of the normal span (ISO 8601 or epoch s)")
    t.add_argument("--until", help="with --from-store: end of the span (default: newest reading)")
    t.add_argument("--last", type=float, metavar="SECONDS",
                   help="with --from-store: the last N seconds before the newest recorded reading")
    t.add_argument("--sensors", nargs="+", help="with --from-store: sensors to use (default: all recorded)")
    t.add_argument("--allow-alarms", action="store_true",
                   help="with --from-store: train even if the asset was in alarm during the span")
    t.add_argument("--out", required=True, help="bundle directory to write")
    t.add_argument("--window", type=int)
    t.add_argument("--stride", type=int)
    t.add_argument("--period", type=float, help="sampling period of the data in seconds")
    t.add_argument("--level-free", action="append", metavar="SENSOR",
                   help="sensor whose slow level is not learned, only its shape within a window (repeatable)")
    t.add_argument("--level-free-from", nargs="+", metavar="CSV",
                   help="long normal record(s): sensors whose level drifts there become level-free")
    t.add_argument("--no-trend-check", action="store_true",
                   help="do not make sensors that trend within the training rows level-free")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate the detector")
    esub = e.add_subparsers(dest="bench", required=True)
    sk = esub.add_parser("skab", help="SKAB benchmark (published protocol)")
    sk.add_argument("--data", default="../shared/datasets/skab")
    sk.add_argument("--mode", choices=("protocol", "stream"), default="protocol")
    sk.add_argument("--predictions-out")
    sk.add_argument("--json-out")
    sk.add_argument("--learn-from-anomaly-free", action="store_true",
                    help="variant, not the leaderboard protocol: every bundle also learns from all of "
                         "anomaly-free.csv (scaled on its own); no drift allowance")
    sk.set_defaults(fn=cmd_eval)

    sy = sub.add_parser("sync", help="cloud sync of a running appliance")
    sysub = sy.add_subparsers(dest="sub", required=True)
    sn = sysub.add_parser("now", help="open a connectivity window now (through the dashboard API)")
    sn.add_argument("--url", default="http://127.0.0.1:8080", help="the appliance's dashboard")
    sn.add_argument("--duration", type=float, help="seconds the window stays open (default: sync_now_s)")
    sn.set_defaults(fn=cmd_sync_now)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="sub", required=True)
    ck = csub.add_parser("check", help="validate a config file")
    ck.add_argument("file")
    ck.add_argument("--show", action="store_true", help="print the effective config")
    ck.set_defaults(fn=cmd_config_check)

    from appliance.release import add_release_commands  # tuf is imported only when a release command runs
    add_release_commands(sub)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
