"""What each choice did: the SKAB protocol re-run with one setting changed at a time.

Every variant goes through :func:`run_skab_eval` (same code path, same data);
the drift allowance is left out (it only rescales thresholds, reported by the
main run) so that each variant takes about three minutes on two cores::

    .venv/bin/python -m appliance.eval.ablations --out docs/ablations.json

These numbers are for reporting only. The defaults were fixed before, from
training rows and anomaly-free.csv; choosing among these variants by their test
score would be tuning on test labels.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from appliance.actions.config import DecisionConfig
from appliance.config import Config
from appliance.eval.datasets import skab_dir
from appliance.eval.skab import EvalSettings, run_skab_eval

VARIANTS: dict[str, dict] = {
    "default": {},
    "no level-free sensors (every sensor's level learned)": {"bundle": {"level_free": [], "trend_limit": None}},
    "level-free only by the per-file trend test (nothing from anomaly-free.csv)":
        {"settings": {"level_free_from_anomaly_free": False}},
    "level-free sensors scaled by their whole spread": {"bundle": {"level_free_scale": "overall"}},
    "accelerometers level-free too (drift share > 0.25 in anomaly-free.csv)":
        {"bundle": {"level_free": ["Thermocouple", "Accelerometer1RMS", "Accelerometer2RMS"]}},
    "threshold on held-back windows only (no out-of-fold)": {"bundle": {"calibration": "holdout"}},
    "newest rows held back (model fitted on the oldest)": {"bundle": {"holdout_at": "end"}},
    "window 10 rows": {"bundle": {"window": 10}},
    "window 60 rows": {"bundle": {"window": 60}},
    "wider autoencoder (128, 16)": {"bundle": {"hidden": (128, 16)}},
    "wider autoencoder (128, 32)": {"bundle": {"hidden": (128, 32)}},
    "no debounce (raise 1 of 1, clear after 1)": {"decision": {"raise_k": 1, "raise_n": 1, "clear_n": 1}},
    "INT8 calibrated on training windows only (no probes)": {"bundle": {"calibrate_probes": False}},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=skab_dir(), type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/ablations.json"))
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    for name, v in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cfg = Config()
        if "decision" in v:
            cfg = cfg.model_copy(update={"decision": DecisionConfig(**{**cfg.decision.model_dump(), **v["decision"]})})
        try:
            s = run_skab_eval(args.data, quiet=True,
                              settings=EvalSettings(bundle=v.get("bundle", {}), config=cfg, drift_budget=None,
                                                    **v.get("settings", {})))
        except Exception as e:  # noqa: BLE001 - a refused variant is a result too
            rows[name] = {"error": str(e)}
            print(f"{name:58s} not evaluated: {e}", flush=True)
        else:
            d = s["detectors"]
            rows[name] = {"ae_int8": {k: d["ae_int8"][k] for k in ("f1", "far", "mar", "mean_delay_s")},
                          "ae_fp32_f1": d["ae_fp32"]["f1"],
                          "int8_row_agreement": round(s["int8"]["row_agreement"], 4), "elapsed_s": s["elapsed_s"]}
            m = rows[name]["ae_int8"]
            print(f"{name:58s} F1 {m['f1']:.3f}  FAR {m['far']:6.2f}  MAR {m['mar']:6.2f}  "
                  f"INT8=FP32 rows {rows[name]['int8_row_agreement']:.2%}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
