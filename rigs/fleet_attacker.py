"""A fleet client that lies: the updates issue 27 tried against the fleet server, as a separate process.

``python -m rigs.fleet_attacker --mode MODE --data CSV --name NAME --server HOST:PORT``
trains honestly on its rows (the gateway's own :class:`~appliance.fleet.client.GatewayClient`),
then spoils what it sends back:

* ``nan``        every weight NaN
* ``shape``      the first weight array transposed (a model of another shape)
* ``dtype``      the weights as int64
* ``windows``    the round's global weights plus a nudge of ``--nudge`` L2 norm (a fixed random
                 direction), claiming 10^9 training windows so that a weighted mean is all its own
* ``threshold``  honest weights, but evaluation reports ``--threshold-factor`` x its own threshold
* ``metrics``    honest weights with garbage metrics (a bytes name, a text loss) and an
                 evaluation that claims 0 windows, a NaN loss and no threshold

Used by ``tests/test_fleet_robust.py`` and ``benchmarks/fleet_poisoning.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from appliance.detector.train import read_csv_rows
from appliance.fleet.client import GatewayClient, run_client

MODES = ("nan", "shape", "dtype", "windows", "threshold", "metrics")
CLAIMED_WINDOWS = 10**9


def nudge(weights: list[np.ndarray], norm: float, seed: int = 27) -> list[np.ndarray]:
    """``weights`` moved by ``norm`` along one fixed random direction."""
    rng = np.random.default_rng(seed)
    direction = [rng.standard_normal(w.shape) for w in weights]
    length = float(np.sqrt(sum(float(np.sum(d ** 2)) for d in direction)))
    return [(w + norm * d / length).astype(np.float32) for w, d in zip(weights, direction)]


class Attacker(GatewayClient):
    def __init__(self, mode: str, nudge_norm: float, threshold_factor: float, *args, **kw):
        super().__init__(*args, **kw)
        self.mode, self.nudge_norm, self.threshold_factor = mode, nudge_norm, threshold_factor

    def fit(self, parameters, config):
        new, n, metrics = super().fit(parameters, config)
        if self.mode == "nan":
            new = [np.full_like(w, np.nan) for w in new]
        elif self.mode == "shape":
            new = [np.ascontiguousarray(new[0].T), *new[1:]]
        elif self.mode == "dtype":
            new = [np.ones(w.shape, np.int64) for w in new]
        elif self.mode == "windows":
            new, n = nudge([np.asarray(p, np.float64) for p in parameters], self.nudge_norm), CLAIMED_WINDOWS
        elif self.mode == "metrics":
            metrics = {"name": b"\xff" * 10, "train_loss": "lots", "peak_rss_kb": "none"}
        return new, n, metrics

    def evaluate(self, parameters, config):
        loss, n, metrics = super().evaluate(parameters, config)
        if self.mode == "threshold":
            metrics = dict(metrics, threshold=metrics["threshold"] * self.threshold_factor)
        elif self.mode == "metrics":
            return float("nan"), 0, {"name": "x" * 10_000}
        return loss, n, metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--data", required=True, nargs="+")
    ap.add_argument("--name", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--nudge", type=float, default=1.0, help="windows: L2 norm of the nudge")
    ap.add_argument("--threshold-factor", type=float, default=2.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sensors, ts, rows = read_csv_rows(args.data)
    client = Attacker(args.mode, args.nudge, args.threshold_factor, args.name, sensors, rows, ts)
    run_client(client, args.server, max_wait_s=300.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
