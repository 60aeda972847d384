"""A gateway in the fleet: a Flower client training the detector's autoencoder on its own normal windows.

Raw rows never leave the gateway: the client sends back the autoencoder's weights
after ``epochs`` local passes (its update clipped to the norm the server's DP
wrapper asks for, :func:`clipped_when_asked`) and, when asked to evaluate, the mean held-back error and
the threshold it would calibrate on its own held-back windows (their errors
averaged over the model's horizon, as the live score is). Importing this
module imports flwr.

The rows are either given (CSV files: ``appliance fleet client --data``, the
benchmark) or read from the gateway's own store at each run
(:class:`~appliance.fleet.data.StoreSource`: its recent normal operation, alarms
left out). A SIGTERM makes the client leave the run at once, mid-round too
(:class:`WindowClosed`): the appliance sends it when the connectivity window
closes (:mod:`appliance.fleet.participant`).

:class:`GatewayClient` is what each gateway's SuperNode runs (the ClientApp of
:mod:`appliance.fleet.client_app`). :func:`run_client` is the one-process mode
(``appliance fleet client``: Flower's public, deprecated ``flwr.client.start_client``
over gRPC, for the CSV benchmark and hand runs), which the appliance's participant no longer uses
(``docs/fleet.md``).
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import sys
import time
from typing import Sequence

import numpy as np
import flwr.client
from flwr.client import NumPyClient

from appliance.detector.train import calibrate_threshold
from appliance.fleet.data import DATA_COUNTS, StoreSource
from appliance.fleet.model import (ModelSpec, autoencoder, averaged, client_windows, run_windows, train_local,
                                   update_norm)
from appliance.fleet.robust import clip_update

# The fit config key of the clipping norm that Flower's client-side DP wrapper
# (DifferentialPrivacyClientSideFixedClipping) sends (flwr 1.42, pinned in constraints.txt).
CLIPPING_NORM_KEY = "clipping_norm"

logger = logging.getLogger(__name__)


def peak_rss_kb() -> int:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class WindowClosed(BaseException):
    """The gateway's connectivity window closed: leave the run now.

    A BaseException, so neither Flower's handling of a failing ClientApp nor
    scikit-learn catches it: it unwinds to :func:`run_client`, closing the gRPC
    channel on its way (the server counts a round left mid-way as a failure).
    """


class GatewayClient(NumPyClient):
    """One gateway's normal rows behind Flower's NumPyClient.

    Either given (``sensors``, ``rows``, optional ``ts``) or read from the store
    (``source``) once the first instruction brings the model's sensors and grid.
    """

    def __init__(self, name: str, sensors: Sequence[str] = (), rows: np.ndarray | None = None,
                 ts: np.ndarray | None = None, *, source: StoreSource | None = None):
        if (rows is None) == (source is None):
            raise ValueError("give either rows or a store source")
        self.name, self.sensors, self.rows, self.ts, self.source = name, list(sensors), rows, ts, source
        self._windows: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        self.data_info: dict = {}
        self.rounds = 0  # rounds this gateway trained in

    def windows(self, config) -> tuple[ModelSpec, np.ndarray, np.ndarray]:
        spec = ModelSpec.from_json(str(config["spec"]))
        key = (str(config["spec"]), float(config["holdout"]))
        if key not in self._windows:
            if self.source is not None:
                grid, self.data_info = self.source.normal_grid(spec.sensors, spec.period_s)
                self._windows = {key: run_windows(spec, grid.values, grid.runs, float(config["holdout"]))}
            else:
                self._windows = {key: client_windows(spec, self.sensors, self.rows, self.ts,
                                                     float(config["holdout"]))}
        return spec, *self._windows[key]

    def fit(self, parameters, config):
        spec, X_train, _ = self.windows(config)
        logger.info("fleet client %s: fit round=%s begins windows=%d", self.name, config.get("round"), len(X_train))
        _flush()
        new, loss = train_local(spec, parameters, X_train, epochs=int(config["epochs"]),
                                mu=float(config.get("proximal_mu", 0.0)),
                                learning_rate=float(config["learning_rate"]),
                                batch_size=int(config["batch_size"]), seed=int(config["seed"]))
        metrics = {"name": self.name, "train_loss": loss, "update_norm": update_norm(new, spec.check(parameters)),
                   "peak_rss_kb": peak_rss_kb()}
        new = clipped_when_asked(new, parameters, config)
        if self.data_info:
            metrics |= {k: int(self.data_info[k]) for k in DATA_COUNTS}
        self.rounds += 1
        logger.info("fleet client %s: fit round=%s done loss=%.5g", self.name, config.get("round"), loss)
        _flush()
        return new, self._weight(len(X_train), config), metrics | {"train_windows": len(X_train)}

    @staticmethod
    def _weight(windows: int, config) -> int:
        """The weight this update counts with: its windows, or the server's ``max_weight`` (SecAgg+: uniform)."""
        if "max_weight" in config:
            return max(1, int(min(windows, float(config["max_weight"]))))
        return windows

    def evaluate(self, parameters, config):
        spec, _, X_held = self.windows(config)
        errors = autoencoder(spec, parameters).errors(X_held)
        threshold, _ = calibrate_threshold(averaged(spec, errors))
        return float(np.mean(errors)), len(X_held), {"name": self.name, "threshold": float(threshold)}


def clipped_when_asked(new, start, config) -> list[np.ndarray]:
    """The update clipped to the norm the server's DP asks for (its config carries it when DP is on).

    Done here, in the gateway's own fit, on both runtimes: the server decides
    whether DP is on, so a gateway configured differently can neither skip the
    clipping nor fail a round that has none; under SecAgg+ the reply is masked
    after this (``secaggplus_mod`` wraps the fit), so the update is clipped
    before it is masked.
    """
    if CLIPPING_NORM_KEY not in config:
        return new
    out, _ = clip_update(new, start, float(config[CLIPPING_NORM_KEY]))
    return [o.astype(np.asarray(n).dtype) for o, n in zip(out, new)]


def _flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stderr.flush()


def _leave_on_sigterm() -> None:
    def leave(signum, frame):
        raise WindowClosed()

    signal.signal(signal.SIGTERM, leave)


def run_client(client: GatewayClient, server_address: str, *, root_certificates: bytes | None = None,
               max_wait_s: float | None = None, leave_on_sigterm: bool = True) -> str:
    """Take part in the fleet run at ``server_address``; return ``"ended"`` (by the server) or ``"left"``.

    ``leave_on_sigterm``: a SIGTERM (the connectivity window closed) makes this
    gateway leave at once, the gRPC channel closed, and returns ``"left"``.
    """
    import grpc

    if leave_on_sigterm:
        _leave_on_sigterm()
    deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
    try:
        while True:
            try:
                # Flower's public one-process client (flwr.client.start_client, deprecated since flwr 1.13 in
                # favour of flower-supernode, which cannot reach this server's gRPC): no Flower internal.
                flwr.client.start_client(server_address=server_address, client_fn=lambda context: client.to_client(),
                                         root_certificates=root_certificates, insecure=root_certificates is None,
                                         max_wait_time=max_wait_s,
                                         max_retries=None if max_wait_s is None else max(1, math.ceil(max_wait_s)))
                return "ended"
            except grpc.RpcError as e:
                # A gateway may open its window before the server listens: wait for it. Once this
                # gateway took part, a lost server ends its run (the server goes on without it).
                if client.rounds or (deadline is not None and time.monotonic() > deadline):
                    raise
                logger.info("fleet client %s: server %s not reachable yet (%s); retrying", client.name,
                            server_address, e.code() if hasattr(e, "code") else e)
                time.sleep(1.0)
    except WindowClosed:
        logger.info("fleet client %s: left the run (connectivity window closed) after %d rounds", client.name,
                    client.rounds)
        _flush()
        return "left"
