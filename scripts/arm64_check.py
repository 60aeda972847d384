"""The Python half of ``scripts/arm64-check.sh``: SKAB bundles, replays and the x86_64-vs-aarch64 report.

The question is whether a gateway on a Raspberry Pi 4/5 or a Jetson Orin decides
every row as the PC the bundle was trained on does. So the bundles are trained
once on x86_64 (exactly as ``appliance eval skab`` trains its per-file bundles:
the first 400 rows of each file, the level-free sensors chosen on
anomaly-free.csv), and the same bundle directories are replayed through what
``appliance score`` runs (:func:`appliance.detector.replay.score_command`) on
x86_64 and, under qemu-user, on emulated Cortex-A72 and Cortex-A76 cores. A replay
keeps every row's score (full precision, NaN where there is none) and alarm.

Subcommands (each prints one line; ``--help`` for the arguments):

* ``bundles``  x86_64: train the per-file bundles into a directory, with a manifest;
* ``score``    any machine: replay every manifest file, save ``<file>.npz`` and ``platform.json``;
* ``report``   compare the replays with the x86_64 one, write the text and JSON report.

Emulated times are not reported as performance: only decisions are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
PLATFORM = "platform.json"
CPU_PROBE = "cpu.json"
# Goal of the check: at least this share of rows gets the same alarm state as on x86_64.
ROW_AGREEMENT_GOAL = 0.995


# ---------------------------------------------------------------- where we run

# Linux's AT_HWCAP bits on aarch64 (asm/hwcap.h), the ones that tell the Cortex-A generations apart.
HWCAP_NAMES = {0: "fp", 1: "asimd", 3: "aes", 4: "pmull", 5: "sha1", 6: "sha2", 7: "crc32", 8: "atomics",
               9: "fphp", 10: "asimdhp", 11: "cpuid", 12: "asimdrdm", 15: "lrcpc", 16: "dcpop", 20: "asimddp",
               22: "sve", 28: "ssbs"}
AT_HWCAP = 16
ARM_PARTS = {0xD03: "Cortex-A53", 0xD08: "Cortex-A72", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1",
             0xD41: "Cortex-A78", 0xD42: "Cortex-A78AE", 0xD4B: "Cortex-A78C"}


def hwcaps() -> list[str]:
    import ctypes

    bits = ctypes.CDLL(None).getauxval(ctypes.c_ulong(AT_HWCAP))
    return [name for bit, name in HWCAP_NAMES.items() if bits >> bit & 1]


def read_midr() -> int:
    """MIDR_EL1, read by ``mrs`` from user space (the kernel, or qemu-user, emulates it where HWCAP_CPUID is set).

    Under qemu-user /proc/cpuinfo is the host's, so this is how the emulated core is named.
    """
    import ctypes
    import mmap

    code = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")  # mrs x0, midr_el1; ret
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(address)())


def cpu_model() -> dict:
    """The core: on aarch64 its MIDR and HWCAP features, elsewhere /proc/cpuinfo's model name; and QEMU_CPU."""
    info: dict = {"machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU")}
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            info["proc_cpuinfo_model_name"] = m.group(1).strip()
    except OSError:
        pass
    if info["machine"] != "aarch64":
        info["name"] = info.get("proc_cpuinfo_model_name", "?")
        return info
    caps = hwcaps()
    info["hwcaps"] = caps
    if "cpuid" in caps:
        midr = read_midr()
        part = midr >> 4 & 0xFFF
        info["midr"] = f"0x{midr:08x}"
        info["name"] = ARM_PARTS.get(part, f"part 0x{part:03x}") if midr >> 24 == 0x41 else f"MIDR 0x{midr:08x}"
    return info


def cmd_platform(args) -> int:
    print(json.dumps(platform_info()))
    return 0


def platform_info() -> dict:
    import numpy
    import onnxruntime

    return {"python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers(), "libc": "-".join(platform.libc_ver()),
            "kernel": platform.release(), "cpu": cpu_model()}


def safe_name(rel: str) -> str:
    return rel.replace("/", "_").removesuffix(".csv")


# ---------------------------------------------------------------- bundles (x86_64)

def train_one(rel: str, path: str, settings, out_dir: str) -> tuple[str, str]:
    """The bundle ``appliance eval skab`` trains for one file: its first ``train_rows`` rows on the live grid."""
    from appliance.detector.train import read_csv, train_grid
    from appliance.detector.windowing import grid_rows, rows_as_readings

    sensors, ts, rows, _ = read_csv(path)
    # probe_reach 3.0: the INT8 check reaches three thresholds, as the eval's without a drift allowance.
    train = settings.train_settings(probe_reach=3.0)
    n = settings.train_rows
    grid = grid_rows(rows_as_readings(rel, sensors, ts[:n], rows[:n]), sensors, train.period_s,
                     train.staleness_s, train.lateness_s)
    bundle = train_grid(grid, Path(out_dir) / safe_name(rel), train, prior_rows=settings.prior_rows)
    return rel, str(bundle)


def cmd_bundles(args) -> int:
    from appliance.eval.common import EvalSettings, experiment_files, with_level_free
    from appliance.eval.skab import run_jobs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings, level_free = with_level_free(args.data, EvalSettings())
    todo = [(rel, p) for rel, p in experiment_files(args.data) if not args.files or rel in args.files]
    started = time.monotonic()
    done = run_jobs([(train_one, (rel, str(p), settings, str(out))) for rel, p in todo], args.workers)
    manifest = {"data": str(Path(args.data).resolve()), "level_free": level_free and level_free["sensors"],
                "trained_on": platform_info(),
                "files": {rel: {"csv": str(Path(args.data) / rel), "bundle": Path(b).name} for rel, b in done}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    print(f"bundles: {len(done)} trained in {time.monotonic() - started:.0f} s into {out}")
    return 0


# ---------------------------------------------------------------- replays (any machine)

def interleaved(rels) -> list[str]:
    """Files taken from each folder in turn: a replay cut short still covers every kind of experiment.

    >>> interleaved(["a/0.csv", "a/1.csv", "b/0.csv"])
    ['a/0.csv', 'b/0.csv', 'a/1.csv']
    """
    by_folder: dict[str, list[str]] = {}
    for rel in rels:
        by_folder.setdefault(rel.split("/")[0], []).append(rel)
    columns = list(by_folder.values())
    return [c[i] for i in range(max(map(len, columns), default=0)) for c in columns if i < len(c)]


def write_platform(out: Path, record: dict, files: dict) -> None:
    (out / PLATFORM).write_text(json.dumps({**platform_info(), **record, "files": files}, indent=1))


def cmd_score(args) -> int:
    from appliance.detector.replay import score_command

    bundles, out = Path(args.bundles), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((bundles / MANIFEST).read_text())
    data = Path(args.data) if args.data else None
    summary: dict[str, str] = {}
    record = {"precision": args.precision, "appliance_tree": args.appliance_tree, "complete": False}
    write_platform(out, record, summary)  # first, so that a replay cut short still says where it ran
    for rel in interleaved(r for r in manifest["files"] if not args.files or r in args.files):
        entry = manifest["files"][rel]
        csv = data / rel if data else Path(entry["csv"])
        (r,), line = score_command(bundles / entry["bundle"], [csv], out / f"{safe_name(rel)}.csv",
                                   precision=args.precision)
        np.savez(out / f"{safe_name(rel)}.npz", score=r.score, alarm=r.alarm, ts=r.ts)
        summary[rel] = line
        print(f"score {rel}: {line}", flush=True)
    write_platform(out, {**record, "complete": True}, summary)
    print(f"score: {len(summary)} file(s) replayed into {out}")
    return 0


# ---------------------------------------------------------------- report

def compare_file(ref: dict, run: dict) -> dict:
    """Rows decided alike, rows with a score on one side only, and the score differences where both have one."""
    alike = ref["alarm"] == run["alarm"]
    a, b = ref["score"], run["score"]
    both = np.isfinite(a) & np.isfinite(b)
    one_sided = int((np.isfinite(a) != np.isfinite(b)).sum())
    rel = np.abs(a[both] - b[both]) / np.maximum(np.abs(a[both]), 1e-12)
    return {"rows": int(len(alike)), "rows_alike": int(alike.sum()), "alarm_rows_ref": int(ref["alarm"].sum()),
            "alarm_rows": int(run["alarm"].sum()), "scored_rows": int(both.sum()), "score_one_sided": one_sided,
            "rel_diff": rel}


def compare_run(ref_dir: Path, run_dir: Path) -> dict:
    files = {}
    for npz in sorted(run_dir.glob("*.npz")):
        ref_npz = ref_dir / npz.name
        if ref_npz.exists():
            files[npz.stem] = compare_file(dict(np.load(ref_npz)), dict(np.load(npz)))
    if not files:
        return {"files": 0}
    rel = np.concatenate([f.pop("rel_diff") for f in files.values()])
    rows = sum(f["rows"] for f in files.values())
    alike = sum(f["rows_alike"] for f in files.values())
    return {"files": len(files), "rows": rows, "rows_alike": alike, "row_agreement": alike / rows,
            "goal_met": alike / rows >= ROW_AGREEMENT_GOAL,
            "alarm_rows_x86_64": sum(f["alarm_rows_ref"] for f in files.values()),
            "alarm_rows": sum(f["alarm_rows"] for f in files.values()),
            "scored_rows": int(len(rel)), "score_one_sided": sum(f["score_one_sided"] for f in files.values()),
            "score_rel_diff": {"max": float(rel.max()) if len(rel) else None,
                               "p99": float(np.quantile(rel, 0.99)) if len(rel) else None,
                               "median": float(np.median(rel)) if len(rel) else None,
                               "exact_share": float((rel == 0).mean()) if len(rel) else None},
            "files_with_differences": {k: f for k, f in files.items() if f["rows_alike"] < f["rows"]},
            "platform": run_platform(run_dir)}


def run_platform(run_dir: Path) -> dict | None:
    """Where a replay ran; the CPU from a later probe (``cpu.json``) where the replay's own record lacks its name."""
    if not (run_dir / PLATFORM).exists():
        return None
    p = json.loads((run_dir / PLATFORM).read_text())
    if "name" not in p["cpu"] and (run_dir / CPU_PROBE).exists():
        p["cpu"] = json.loads((run_dir / CPU_PROBE).read_text())["cpu"]
    return p


def cpu_name(p: dict) -> str:
    return p["cpu"].get("name") or p["cpu"].get("model_name") or "?"


def fast_lane_outcome(log: Path) -> dict:
    """The counts of pytest's last summary line, or how far it got if it has none (still running, cut).

    ``fast-lane.json`` beside the log names the commit, the emulated CPU and the start.
    """
    if not log.exists():
        return {"state": "not run"}
    meta = log.with_suffix(".json")
    out: dict = json.loads(meta.read_text()) if meta.exists() else {}
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed)", ln) and " in " in ln), None)
    if summary is None:
        done = sum(len(re.match(r"[.FEsxX]*", ln)[0]) for ln in lines)
        failed = sum(re.match(r"[.FEsxX]*", ln)[0].count("F") for ln in lines)
        progress = re.findall(r"\[\s*(\d+)%\]", text)
        return {**out, "state": "unfinished", "tests_reported": done, "failed_so_far": failed,
                "percent_done": int(progress[-1]) if progress else None,
                "last_line": lines[-1] if lines else ""}
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?)",
                                               summary)}
    return {**out, "state": "finished", "summary": summary.strip("= "), "counts": counts,
            "failed_tests": re.findall(r"^FAILED (\S+)", text, re.M)}


def train_outcome(bundle: Path) -> dict:
    """The INT8 check of the bundle trained on aarch64 (training refuses a bundle whose check fails)."""
    meta_path = bundle / "bundle.json"
    if not meta_path.exists():
        return {"state": "no bundle", "path": str(bundle)}
    meta = json.loads(meta_path.read_text())
    check = meta.get("int8_check", {})
    return {"state": "trained", "model_version": meta.get("model_version"), "sensors": len(meta.get("sensors", [])),
            "thresholds": meta.get("thresholds"), "int8_check": check,
            "platform": json.loads((bundle.parent / PLATFORM).read_text())
            if (bundle.parent / PLATFORM).exists() else None}


def report_text(report: dict) -> str:
    ref = report["reference"]
    lines = [f"aarch64 check under qemu-user (scripts/arm64-check.sh, commit {report['commit']}): "
             "decisions, not times",
             f"reference: x86_64 {cpu_name(ref)}, Python {ref['python']}, "
             f"numpy {ref['numpy']}, onnxruntime {ref['onnxruntime']}",
             f"bundles: {report['bundles']} SKAB per-file bundles trained on x86_64 (appliance eval skab's "
             f"protocol), replayed by appliance score's code path at each precision, compared row by row "
             f"with the x86_64 replay at the same precision"]
    for name, run in report["runs"].items():
        if not run.get("files"):
            lines.append(f"{name}: no replay")
            continue
        p, d = run["platform"], run["score_rel_diff"]
        lines.append(f"{name}: {p['cpu'].get('machine')} {cpu_name(p)} (QEMU_CPU={p['cpu'].get('qemu_cpu')}, "
                     f"MIDR {p['cpu'].get('midr', '?')}), Python {p['python']}, numpy {p['numpy']}, "
                     f"onnxruntime {p['onnxruntime']}")
        lines.append(f"  {run['files']} of {report['bundles']} files, {run['rows']} rows: {run['rows_alike']} decided alike "
                     f"({run['row_agreement']:.3%}; goal {ROW_AGREEMENT_GOAL:.1%}: "
                     f"{'met' if run['goal_met'] else 'NOT met'}); rows in alarm {run['alarm_rows']} "
                     f"(x86_64: {run['alarm_rows_x86_64']})")
        lines.append(f"  scores on {run['scored_rows']} rows: max relative difference {d['max']:.3g}, "
                     f"p99 {d['p99']:.3g}, identical {d['exact_share']:.1%}; "
                     f"scored on one side only: {run['score_one_sided']} rows")
    t = report["train"]
    if t["state"] == "trained":
        h = t["int8_check"].get("holdout", {})
        lines.append(f"training on aarch64: bundle {t['model_version']} ({t['sensors']} sensors), INT8 check passed"
                     f" (holdout error correlation {h.get('error_correlation', float('nan')):.4f})")
    else:
        lines.append(f"training on aarch64: {t['state']}")
    f = report["fast_lane"]
    where = f"QEMU_CPU={f.get('qemu_cpu')}, commit {f.get('commit')}"
    if f["state"] == "finished":
        lines.append(f"fast lane on aarch64 ({where}): {f['summary']}")
        lines += [f"  FAILED {name}" for name in f["failed_tests"]]
    elif f["state"] == "unfinished":
        lines.append(f"fast lane on aarch64 ({where}): UNFINISHED when reported: {f['tests_reported']} tests "
                     f"done (pytest's progress: {f['percent_done']} %), {f['failed_so_far']} of them failed; "
                     f"the partial log is arm64-check-fast-lane.log")
    else:
        lines.append(f"fast lane on aarch64: {f['state']}")
    return "\n".join(lines)


def reference_of(run_dir: Path, reference_dir: Path) -> Path:
    """``<cpu>-<precision>`` is compared with ``x86_64-<precision>``.

    >>> reference_of(Path("runs/cortex-a72-fp32"), Path("runs")).as_posix()
    'runs/x86_64-fp32'
    """
    return reference_dir / f"x86_64-{run_dir.name.rsplit('-', 1)[1]}"


def cmd_report(args) -> int:
    ref_dir = Path(args.reference_dir)
    manifest = json.loads((Path(args.bundles) / MANIFEST).read_text())
    runs = [Path(d) for d in args.runs if Path(d).is_dir()]
    report = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": args.commit,
              "reference": json.loads((reference_of(runs[0], ref_dir) / PLATFORM).read_text()),
              "bundles": len(manifest["files"]), "level_free": manifest["level_free"],
              "row_agreement_goal": ROW_AGREEMENT_GOAL,
              "runs": {d.name: compare_run(reference_of(d, ref_dir), d) for d in runs},
              "train": train_outcome(Path(args.train_bundle)),
              "fast_lane": fast_lane_outcome(Path(args.fast_lane_log))}
    text = report_text(report)
    Path(args.out_json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    Path(args.out_txt).write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(required=True)
    b = sub.add_parser("bundles", help="train the SKAB per-file bundles (x86_64)")
    b.add_argument("--data", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--files", nargs="*", help="relative names, e.g. valve1/0.csv (default: all)")
    b.add_argument("--workers", type=int, default=2)
    b.set_defaults(fn=cmd_bundles)
    s = sub.add_parser("score", help="replay the manifest's files through their bundles")
    s.add_argument("--bundles", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data", help="the SKAB folder here (default: the manifest's paths)")
    s.add_argument("--files", nargs="*")
    s.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    s.add_argument("--appliance-tree", help="git tree of appliance/ replayed (a kept replay is reused only for it)")
    s.set_defaults(fn=cmd_score)
    pl = sub.add_parser("platform", help="print versions and the CPU as JSON")
    pl.set_defaults(fn=cmd_platform)
    r = sub.add_parser("report", help="compare replays with the x86_64 one, write the report")
    r.add_argument("--bundles", required=True)
    r.add_argument("--reference-dir", required=True, help="holds x86_64-<precision> beside the runs")
    r.add_argument("--runs", nargs="+", required=True, help="<cpu>-<precision> replay directories")
    r.add_argument("--train-bundle", required=True)
    r.add_argument("--fast-lane-log", required=True)
    r.add_argument("--commit", help="the commit installed in the root")
    r.add_argument("--out-txt", required=True)
    r.add_argument("--out-json", required=True)
    r.set_defaults(fn=cmd_report)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
