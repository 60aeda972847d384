"""What a finished fleet run leaves: the fleet model as a bundle (or why none) and the run report.

Shared by both runtimes (``appliance fleet server``, the one-process mode, and
the SuperLink's ServerApp in :mod:`appliance.fleet.server_app`), so either writes the
same bundle and report. The bundle then goes out only through the signed
release path (``appliance release add/publish``), like any other. Nothing here
imports flwr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.detector.bundle import BundleError, load_bundle
from appliance.detector.quantize import QuantizationCheckError
from appliance.fleet.config import FleetConfig
from appliance.fleet.export import write_fleet_bundle
from appliance.fleet.model import FleetModelError, ModelSpec


@dataclass(frozen=True)
class RunOutcome:
    ok: bool
    message: str


def last_thresholds(report: dict) -> tuple[list[float], list[str]]:
    """The clients' own thresholds and names from the last round that was evaluated."""
    last_eval = next((r["evaluation"] for r in reversed(report["rounds"]) if r["evaluation"]), [])
    return [e["threshold"] for e in last_eval], sorted({e["name"] for e in last_eval})


def write_outcome(cfg: FleetConfig, spec: ModelSpec, weights: Sequence[np.ndarray], report: dict, *,
                  init: str | Path, reference: tuple, out: str | Path, report_path: str | Path) -> RunOutcome:
    """Write the bundle (when a round was released) and the report; say what happened in one line."""
    from appliance.fleet.server import write_report

    ref_sensors, ref_ts, ref_rows = reference
    released = report["rounds_released"]
    thresholds, names = last_thresholds(report)
    try:
        if released == 0:
            raise FleetModelError("no round was released; the seed model is unchanged and no bundle is written")
        problem = (report.get("final_check") or {}).get("problem")
        if problem:
            raise FleetModelError(f"no bundle is written: {problem}")
        bundle = write_fleet_bundle(spec, weights, out, reference_rows=ref_rows, reference_sensors=ref_sensors,
                                    reference_ts=ref_ts, client_thresholds=thresholds,
                                    threshold_rule=cfg.threshold, seed=cfg.seed,
                                    current_threshold=load_bundle(init).thresholds["fp32"],
                                    max_threshold_factor=cfg.robust.max_threshold_factor,
                                    fleet_info={k: v for k, v in report.items() if k != "rounds"}
                                    | {"seed_bundle": str(init), "clients": names})
        report["bundle"] = str(bundle)
    except (BundleError, FleetModelError, QuantizationCheckError, ValueError) as e:
        report["bundle_error"] = str(e)
        write_report(report, report_path)
        return RunOutcome(False, str(e))
    write_report(report, report_path)
    line = f"fleet model written to {bundle}: {released} of {report['rounds_planned']} rounds released"
    if "privacy" in report:
        p = report["privacy"]
        line += f"; privacy spent epsilon={p['epsilon']:.3g} delta={p['delta']:g} ({p['rounds_accounted']} rounds)"
    return RunOutcome(True, line + f"; report {report_path}")
