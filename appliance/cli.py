"""The ``appliance`` command: run, demo, train, score, eval, config check, audit verify."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

from appliance.config import ConfigError, load_config

log = logging.getLogger("appliance")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    from appliance.service import JournalFormatter, stderr_is_journal
    if stderr_is_journal():  # run by systemd: journald stamps the time and reads the priority
        logging.getLogger().handlers[0].setFormatter(JournalFormatter())
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
    """Ask the running appliance, through its dashboard API, to open a connectivity window now (as an engineer)."""
    status, answer = _ask_dashboard(args, "sync now", "POST", "/api/sync/now",
                                    {"duration_s": args.duration} if args.duration else {})
    if status != 200:
        return status
    print(f"sync now: window opened {json.dumps(answer.get('records', []))}")
    return 0


MODEL_ACTIONS = ("promote", "reject", "rollback")


def cmd_model(args) -> int:
    """The running appliance's model lifecycle through its dashboard API: ``status``, or an engineer's
    ``promote``/``reject`` of the candidate in shadow or ``rollback`` to the previous model."""
    what = f"model {args.sub}"
    if args.sub == "status":
        status, answer = _ask_dashboard(args, what, "GET", "/api/model")
        if status == 200:
            print(model_status_text(answer.get("model") or {}))
            return 0
        return status
    status, answer = _ask_dashboard(args, what, "POST", f"/api/model/{args.sub}", {"note": args.note or ""})
    if status != 200:
        return status
    print(f"{what}: now running {json.dumps(answer.get('records', []))}")
    return 0


def model_status_text(model: dict) -> str:
    """The lifecycle's state in a few lines: what runs, any candidate, the last update and refusal."""
    shadow, probation = model.get("shadow"), model.get("probation")
    update, refusal = model.get("last_update"), model.get("last_refusal")
    lines = [f"model {model.get('version')} (previous: {model.get('previous') or 'none'})",
             "shadow: " + (f"{shadow['candidate']} after {shadow['windows']} windows, {shadow['candidate_raises']} "
                           f"raises against {shadow['current_raises']}" if shadow else "none"),
             "probation: " + (f"{probation['raises']} of {probation['allowed']} raises" if probation else "none"),
             "last update: " + (update["line"] if update else "none since start"),
             "last refusal: " + (f"{refusal['stage']} ({refusal['kind']}): {refusal['reason']}" if refusal
                                 else "none since start")]
    return "\n".join(lines)


def _ask_dashboard(args, what: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """Sign in as ``args.user`` and send one request: ``(200, answer)``, or ``(1, {})`` when refused and
    ``(2, {})`` when the appliance did not answer, with the line already printed."""
    from web.client import DashboardClient, DashboardError

    client = DashboardClient(args.url)
    try:
        password = _password(args, confirm=False)
        client.login(args.user, password)
        status, answer = client.get(path) if method == "GET" else client.post(path, body)
    except DashboardError as e:
        if e.status is None:
            print(f"{what}: {e}", file=sys.stderr)
            return 2, {}
        print(f"{what} refused: {e}", file=sys.stderr)
        return 1, {}
    if status != 200:
        why = answer.get("error", status) if isinstance(answer, dict) else status
        print(f"{what} refused: {why}", file=sys.stderr)
        return 1, {}
    return 200, answer if isinstance(answer, dict) else {}


def _password(args, confirm: bool) -> str:
    """The password from ``--password-file`` (its first line), else asked for on the terminal."""
    import getpass

    if getattr(args, "password_file", None):
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise SystemExit(f"cannot read the password file: {e}") from None
    if not sys.stdin.isatty():
        raise SystemExit("no terminal to ask for the password on: give --password-file FILE")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise SystemExit("the two passwords differ; nothing changed")
    return password


def cmd_user(args) -> int:
    """Dashboard accounts in the accounts file beside the store (or at [web] accounts)."""
    from appliance.accounts import AccountError, Accounts, default_path

    cfg = _load(args.config)
    path = default_path(cfg)
    accounts = Accounts(path)
    try:
        if args.sub == "add":
            accounts.add_user(args.name, args.role, _password(args, confirm=True))
            print(f"user {args.name} added with role {args.role} ({path})")
        elif args.sub == "passwd":
            accounts.set_password(args.name, _password(args, confirm=True))
            print(f"password of {args.name} changed; their sessions are ended")
        elif args.sub == "role":
            accounts.set_role(args.name, args.role)
            print(f"{args.name} is now {args.role}")
        elif args.sub == "remove":
            accounts.remove_user(args.name)
            print(f"user {args.name} removed; their sessions are ended")
        else:  # list
            users = accounts.users()
            if not users:
                print(f"no users yet ({path}); add one with: appliance user add NAME --role engineer")
            for u in users:
                last = time.strftime("%Y-%m-%d %H:%M", time.localtime(u["last_login"])) if u["last_login"] else "never"
                print(f"{u['name']:<24} {u['role']:<11} last sign-in {last}, {u['sessions']} session(s)")
    except AccountError as e:
        print(f"appliance user {args.sub}: {e}", file=sys.stderr)
        return 2
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


def _settings_object(text: str, command: str) -> dict | None:
    """``--settings``: a JSON object of TrainSettings fields; None (after saying why on stderr) if it is not one."""
    try:
        value = json.loads(text)
    except ValueError as e:
        print(f"{command}: --settings is not JSON: {e}", file=sys.stderr)
        return None
    if not isinstance(value, dict):
        print(f"{command}: --settings must be a JSON object of TrainSettings fields", file=sys.stderr)
        return None
    return value


def cmd_train(args) -> int:
    from pydantic import ValidationError

    opts = {k: v for k, v in (("window", args.window), ("horizon", args.horizon), ("stride", args.stride),
                              ("period_s", args.period), ("staleness_s", args.staleness),
                              ("lateness_s", args.lateness), ("max_iter", args.max_epochs)) if v is not None}
    if args.early_stopping:
        opts["early_stopping"] = True
    for member in ("pca_member", "distance_member", "spread_member"):
        if getattr(args, member) is not None:
            opts[member] = getattr(args, member)
    if args.settings:
        extra = _settings_object(args.settings, "appliance train")
        if extra is None:
            return 2
        opts.update(extra)
    # Sensors named by --level-free, --level-free-from and --settings' "level_free" all count.
    given = opts.pop("level_free", None)
    if isinstance(given, str) or not isinstance(given, (list, tuple, type(None))):
        print(f"appliance train: level_free must be a list of sensor names, got {given!r}", file=sys.stderr)
        return 2
    level_free = list(dict.fromkeys([*(args.level_free or []), *(given or [])]))
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
            out = _train_from_csv_files(args, opts, level_free)
    except ValidationError as e:
        # One line per refused setting, by name, instead of pydantic's multi-line report.
        for err in e.errors():
            print(f"appliance train: {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}", file=sys.stderr)
        return 2
    except ValueError as e:  # unreadable data, too few rows, a span that cannot be trained on, ...
        print(f"appliance train: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the INT8 check refused every model tried (QuantizationCheckError)
        print(f"appliance train: {e}; no bundle written", file=sys.stderr)
        return 2
    from appliance.detector.bundle import load_bundle
    bundle = load_bundle(out)
    print(f"bundle written: {out} (level-free sensors: {', '.join(bundle.level_free) or 'none'})")
    verdict_ok = True
    if args.from_store:
        verdict_ok = _commissioned_on_history(args, out)
    for name, member in bundle.meta.get("members", {}).items():
        what = (f"{member['components']} components of the {member['inputs']} "
                f"({100 * member['explained_variance']:.1f} % of their variance)" if member["kind"] == "pca_q"
                else f"each sensor's low-band energy over {member['span']} rows" if member["kind"] == "spread"
                else f"whitened distance of the {member['inputs']}")
        print(f"{name} member: {what}, threshold {bundle.member_thresholds[name]:.4g}; "
              "the score is the largest ratio of a model to its own threshold")
    model = bundle.meta["training"]["model"]
    if model.get("converged") is False:
        print(f"note: the model hit the epoch cap ({model['max_iter']} epochs) before its training loss settled; "
              "it is usable (its threshold is calibrated on it) but --max-epochs higher or --early-stopping "
              "may fit better", file=sys.stderr)
    return 0 if verdict_ok else 1


def _commissioned_on_history(args, out) -> bool:
    """Say whether the gateway takes the new bundle in shadow, and how it does on the store's labelled history
    beside the running model; False when a release of it would be rejected by the back-test."""
    from appliance.commission import backtest_bundle, going_live

    cfg = _load(args.config)
    print(going_live(cfg, out))
    if not cfg.outputs.sync.backtest.enabled:
        return True
    report, _ = backtest_bundle(cfg, out)
    if report.ok is False:
        print(f"a release of this bundle would be rejected by the gateway's back-test: {report.reason}; "
              f"details: appliance backtest --bundle {out}", file=sys.stderr)
        return False
    print(f"back-test: {report.reason}")
    return True


def _train_from_csv_files(args, opts: dict, level_free: list[str]):
    """Train from CSV files: the period from the timestamps unless given, progress on a terminal."""
    from appliance.detector.progress import TerminalProgress
    from appliance.detector.train import TrainSettings, infer_period, read_csv_rows, train_bundle

    sensors, ts, rows = read_csv_rows(args.data)
    if "period_s" not in opts:
        opts = {**opts, "period_s": infer_period(ts)}
        print(f"period: {opts['period_s']:g} s (median spacing of the timestamps; --period overrides)")
    settings = TrainSettings(**opts, level_free=level_free)
    averaged = (f", score averaged over {settings.horizon} windows "
                f"({(settings.window + settings.horizon - 1) * settings.period_s:g} s)" if settings.horizon > 1 else "")
    print(f"grid: window {settings.window} rows ({settings.window * settings.period_s:g} s){averaged}, staleness "
          f"{settings.staleness_s:g} s, lateness {settings.lateness_s:g} s; {len(rows)} rows of {len(sensors)} sensors")
    with TerminalProgress(sys.stderr) as progress:
        return train_bundle(rows, sensors, args.out, settings, ts=ts, progress=progress)


def _time_arg(text: str | None, option: str, command: str = "appliance train") -> float | None:
    from appliance.detector.tables import parse_time

    try:
        return None if text is None else parse_time(text, f"{command} {option}")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _train_from_store(args, opts: dict):
    """Commission from the appliance's store, on the grid of its ``[windows]`` settings."""
    from appliance.commission import commission_with_labels
    from appliance.detector.train import TrainSettings

    cfg = _load(args.config)
    since, until = _time_arg(args.since, "--since"), _time_arg(args.until, "--until")
    w = cfg.windows
    settings = TrainSettings(**{"staleness_s": w.staleness_s, "lateness_s": w.lateness_s, **opts,
                                "period_s": opts.get("period_s") or w.period_s or 1.0})
    out, labels = commission_with_labels(cfg.path(cfg.store.path), args.from_store, args.out, settings, since=since,
                                         until=until, last_s=args.last, sensors=args.sensors,
                                         allow_alarms=args.allow_alarms)
    print(labels.line())
    return out


async def _run_async(cfg) -> int:
    from appliance.runtime import build, start_web
    from appliance.service import Notifier, announce, ping_watchdog, watchdog_interval

    notifier = Notifier.from_env()  # systemd (Type=notify); does nothing elsewhere
    notifier.status("starting: loading the model")
    app = build(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    web = None
    interval = watchdog_interval()
    service = [asyncio.create_task(ping_watchdog(notifier, interval))] if interval else []
    await app.start()
    try:
        if cfg.web.enabled:
            web = start_web(app, cfg.web.host, cfg.web.port)
        service.append(asyncio.create_task(announce(app, notifier)))
        await stop.wait()
    finally:
        notifier.notify("STOPPING=1", "STATUS=stopping: draining and closing the store")
        for task in service:
            task.cancel()
        if web is not None:
            web.stop()
        await app.shutdown()
        notifier.close()
    return 0


def cmd_run(args) -> int:
    cfg = _load(args.config)
    setup_logging(cfg.log_level)
    from appliance.core import PluginError
    from appliance.detector.bundle import BundleError

    try:
        return asyncio.run(_run_async(cfg))
    except (FileNotFoundError, PluginError, BundleError) as e:
        # One line: a refused bundle or a missing file is the operator's to fix, not a crash.
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def cmd_audit_verify(args) -> int:
    """Check the mitigation audit log: its keyed chain, its anchored head and ``--anchor`` (a head the cloud got)."""
    from pathlib import Path

    from appliance.actions.mitigation.audit import AuditKeyError, AuditLog

    cfg = _load(args.config)
    section = cfg.outputs.mitigation
    path = Path(cfg.path(section.audit_db))
    anchor = None
    if args.anchor:
        seq, _, digest = args.anchor.partition(":")
        if not (seq.isdigit() and len(digest) == 64):
            print(f"error: --anchor {args.anchor!r}: expected SEQ:HASH (a row number and 64 hex digits)",
                  file=sys.stderr)
            return 2
        anchor = (int(seq), digest)
    if not path.exists():
        print(f"error: no audit log at {path} (outputs.mitigation.audit_db)", file=sys.stderr)
        return 2
    try:
        log = AuditLog(path, section.audit_key, cfg.path("."))
    except AuditKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        problem = log.problem(anchor)
        head = log.head()
    finally:
        log.close()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"audit log intact: {head.seq} rows, head {head.text()}, keyed from seq {head.keyed_from}"
          + (f", extends the anchor {anchor[0]}:{anchor[1]}" if anchor else ""))
    return 0


def cmd_demo(args) -> int:
    from appliance.demo import run_demo

    cfg = _load(args.config)
    setup_logging("WARNING" if args.seconds else cfg.log_level)
    return run_demo(cfg, seconds=args.seconds, fault_at=args.fault_at, fault=args.fault, cloud=not args.no_cloud,
                    sparkplug=args.sparkplug)


def cmd_score(args) -> int:
    """Replay recorded CSV data through the live path (window builder, ONNX session, debounce, hysteresis)."""
    from appliance.detector.bundle import BundleError
    from appliance.detector.replay import score_command

    decision = windows = None
    if args.config:
        cfg = _load(args.config)
        decision, windows = cfg.decision, cfg.windows
    try:
        _, line = score_command(args.bundle, args.data, args.out, precision=args.precision, decision=decision,
                                windows=windows)
    except (BundleError, ValueError, OSError) as e:  # a bad bundle, unreadable data, sensors missing, ...
        print(f"appliance score: {e}", file=sys.stderr)
        return 2
    print(line + (f"; scores in {args.out}" if args.out else ""))
    return 0


def cmd_backtest(args) -> int:
    """Replay the store's recorded history through a bundle (and the running one) and judge it on the verdicts."""
    from appliance.commission import backtest_bundle
    from appliance.detector.bundle import BundleError

    cfg = _load(args.config)
    since = _time_arg(args.since, "--since", "appliance backtest")
    until = _time_arg(args.until, "--until", "appliance backtest")
    try:
        report, text = backtest_bundle(cfg, args.bundle, current=args.current, since=since, until=until,
                                       assets=args.assets)
    except (BundleError, ValueError, OSError) as e:  # a bad bundle, no store, sensors missing, ...
        print(f"appliance backtest: {e}", file=sys.stderr)
        return 2
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"report in {args.json}")
    return 1 if report.ok is False else 0


def cmd_eval(args) -> int:
    from appliance.eval.datasets import skab_dir
    from appliance.eval.skab import EvalSettings, run_skab_eval

    if args.learn_from_anomaly_free and args.mode != "protocol":
        print("appliance eval skab: --learn-from-anomaly-free is a protocol-mode variant "
              "(stream mode already trains on anomaly-free.csv)", file=sys.stderr)
        return 2
    bundle = {}
    if args.settings:
        bundle = _settings_object(args.settings, "appliance eval skab")
        if bundle is None:
            return 2
    settings = EvalSettings(prior_from_anomaly_free=args.learn_from_anomaly_free, bundle=bundle)
    run_skab_eval(args.data or skab_dir(), mode=args.mode, predictions_out=args.predictions_out,
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
    d.add_argument("--no-cloud", action="store_true",
                   help="no cloud broker, no sync window, no model update (the gateway alone)")
    d.add_argument("--sparkplug", action="store_true",
                   help="the pump publishes as a Sparkplug B edge node, read by the Sparkplug input")
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
                   help="with --from-store: train even if the span has alarm episodes without a verdict "
                        "(left out, like faults and maintenance; false alarms are kept)")
    t.add_argument("--out", required=True, help="bundle directory to write")
    t.add_argument("--window", type=int, help="rows per window (default: about 30 s of data, 3 to 30 rows)")
    t.add_argument("--horizon", type=int,
                   help="average the score over this many consecutive windows (default: from the period)")
    t.add_argument("--stride", type=int)
    t.add_argument("--period", type=float,
                   help="sampling period of the data in seconds (default: median spacing of the timestamps); "
                        "window, staleness and lateness follow from it unless given")
    t.add_argument("--staleness", type=float, metavar="SECONDS",
                   help="a held value older than this is missing (default: 5 periods)")
    t.add_argument("--lateness", type=float, metavar="SECONDS",
                   help="how long a grid row waits for late readings (default: 2 periods)")
    t.add_argument("--max-epochs", type=int, help="training epoch cap (default 200)")
    t.add_argument("--early-stopping", action="store_true",
                   help="stop when the loss on held-back normal rows stops improving; keep the best epoch")
    t.add_argument("--pca-member", action=argparse.BooleanOptionalAction, default=None,
                   help="a linear PCA-Q member of the row-to-row changes beside the autoencoder (default: on "
                        "where the score is averaged over several windows, i.e. slow processes; docs/detector.md)")
    t.add_argument("--distance-member", action=argparse.BooleanOptionalAction, default=None,
                   help="a member scoring the whitened distance of the row-to-row changes (a disturbance more "
                        "lively than in training; default: on where --pca-member is)")
    t.add_argument("--spread-member", action=argparse.BooleanOptionalAction, default=None,
                   help="a member scoring each sensor's low-band energy over the scored span (a disturbance "
                        "that wanders further than in training; default: on where --pca-member is)")
    t.add_argument("--settings", metavar="JSON",
                   help='any other training settings as a JSON object, e.g. \'{"threshold_rule": "pooled"}\' '
                        "(fields of appliance.detector.train.TrainSettings; for ablations)")
    t.add_argument("--level-free", action="append", metavar="SENSOR",
                   help="sensor whose slow level is not learned, only its shape within a window (repeatable)")
    t.add_argument("--level-free-from", nargs="+", metavar="CSV",
                   help="long normal record(s): sensors whose level drifts there become level-free")
    t.add_argument("--no-trend-check", action="store_true",
                   help="do not make sensors that trend within the training rows level-free")
    t.set_defaults(fn=cmd_train)

    sc = sub.add_parser("score", help="replay recorded data through a model bundle as the live appliance would")
    sc.add_argument("--bundle", required=True, help="model bundle directory")
    sc.add_argument("--data", nargs="+", required=True, help="CSV recordings (each replayed on its own)")
    sc.add_argument("--out", help="CSV to write: timestamp,score,threshold,alarm,unseen per input row")
    sc.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    sc.add_argument("--config", "-c",
                    help="appliance config whose [windows] and [decision] to use (default: the bundle's grid "
                         "and the default decision settings)")
    sc.set_defaults(fn=cmd_score)

    bt = sub.add_parser("backtest", help="replay this gateway's recorded history through a bundle and judge it "
                                         "on the technicians' verdicts, beside the running model")
    bt.add_argument("--bundle", required=True, help="the candidate model bundle")
    bt.add_argument("--config", "-c", help="the appliance's config (store, [windows], [decision], "
                                           "[outputs.sync.backtest]; default: embedded)")
    bt.add_argument("--current", help="bundle to compare with (default: the one the appliance runs)")
    bt.add_argument("--since", help="start of the history (ISO 8601 or epoch s; default: the last "
                                    "outputs.sync.backtest.days of each asset's record)")
    bt.add_argument("--until", help="end of the history (default: the newest scored window)")
    bt.add_argument("--assets", nargs="+", help="assets to replay (default: every asset the store has scores of)")
    bt.add_argument("--json", metavar="FILE", help="write the whole report as JSON")
    bt.set_defaults(fn=cmd_backtest)

    e = sub.add_parser("eval", help="evaluate the detector")
    esub = e.add_subparsers(dest="bench", required=True)
    sk = esub.add_parser("skab", help="SKAB benchmark (published protocol)")
    sk.add_argument("--data", help="the SKAB folder (default: the repository's data/skab, or $SKAB_DIR)")
    sk.add_argument("--mode", choices=("protocol", "stream"), default="protocol")
    sk.add_argument("--predictions-out")
    sk.add_argument("--json-out")
    sk.add_argument("--settings", metavar="JSON",
                    help="TrainSettings fields for every bundle, e.g. '{\"pca_member\": true}' (variants only)")
    sk.add_argument("--learn-from-anomaly-free", action="store_true",
                    help="variant, not the leaderboard protocol: every bundle also learns from all of "
                         "anomaly-free.csv (scaled on its own); no drift allowance")
    sk.set_defaults(fn=cmd_eval)

    au = sub.add_parser("audit", help="the mitigation audit log")
    ausub = au.add_subparsers(dest="sub", required=True)
    av = ausub.add_parser("verify", help="check the keyed chain and its anchored head (exit 1 if broken)")
    av.add_argument("--config", "-c", help="the appliance's config (audit_db, audit_key)")
    av.add_argument("--anchor", metavar="SEQ:HASH",
                    help="a head the cloud received (an episode's audit_seq:audit_hash): the log must extend it")
    av.set_defaults(fn=cmd_audit_verify)

    sy = sub.add_parser("sync", help="cloud sync of a running appliance")
    sysub = sy.add_subparsers(dest="sub", required=True)
    sn = sysub.add_parser("now", help="open a connectivity window now (through the dashboard API)")
    sn.add_argument("--url", default="http://127.0.0.1:8080", help="the appliance's dashboard")
    sn.add_argument("--duration", type=float, help="seconds the window stays open (default: sync_now_s)")
    sn.add_argument("--user", required=True, help="an engineer's dashboard account")
    sn.add_argument("--password-file", help="file whose first line is the password (default: asked for)")
    sn.set_defaults(fn=cmd_sync_now)

    mo = sub.add_parser("model", help="the running appliance's model: status, promote, reject, roll back")
    mosub = mo.add_subparsers(dest="sub", required=True)
    for name, text in (("status", "what runs, any candidate in shadow, the last update and refusal"),
                       ("promote", "promote the candidate in shadow now (engineer)"),
                       ("reject", "reject the candidate in shadow (engineer)"),
                       ("rollback", "roll back to the previous model (engineer)")):
        mp = mosub.add_parser(name, help=text)
        mp.add_argument("--url", default="http://127.0.0.1:8080", help="the appliance's dashboard")
        mp.add_argument("--user", required=True, help="a dashboard account (an engineer's, but for status)")
        mp.add_argument("--password-file", help="file whose first line is the password (default: asked for)")
        if name in MODEL_ACTIONS:
            mp.add_argument("--note", help="why, kept in the model's history")
        mp.set_defaults(fn=cmd_model)

    u = sub.add_parser("user", help="dashboard accounts (viewer, technician, engineer)")
    usub = u.add_subparsers(dest="sub", required=True)
    for name, text in (("add", "add a user"), ("passwd", "change a user's password (ends their sessions)"),
                       ("role", "change a user's role"), ("remove", "remove a user (ends their sessions)"),
                       ("list", "list the users")):
        up = usub.add_parser(name, help=text)
        up.add_argument("--config", "-c", help="the appliance's config (where the accounts file is)")
        if name != "list":
            up.add_argument("name")
        if name in ("add", "role"):
            up.add_argument("--role", required=True, choices=("viewer", "technician", "engineer"))
        if name in ("add", "passwd"):
            up.add_argument("--password-file", help="file whose first line is the password (default: asked twice)")
        up.set_defaults(fn=cmd_user)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="sub", required=True)
    ck = csub.add_parser("check", help="validate a config file")
    ck.add_argument("file")
    ck.add_argument("--show", action="store_true", help="print the effective config")
    ck.set_defaults(fn=cmd_config_check)

    from appliance.release import add_release_commands  # tuf is imported only when a release command runs
    add_release_commands(sub)
    from appliance.fleet.cli import add_fleet_commands  # flwr is imported only when a fleet command runs
    add_fleet_commands(sub)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
