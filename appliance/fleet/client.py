"""A gateway in the fleet: a Flower client training the detector's autoencoder on its own normal windows.

Raw rows never leave the gateway: the client sends back the autoencoder's weights
after ``epochs`` local passes (clipped by Flower's ``fixedclipping_mod`` when the
server runs with DP) and, when asked to evaluate, the mean held-back error and
the threshold it would calibrate on its own held-back windows. Importing this
module imports flwr.

Transport: Flower's one-process client (``flwr.compat``), over gRPC; the
SuperNode deployment Flower now recommends needs a SuperLink and app bundles (FABs),
more than a gateway in a connectivity window should run.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from typing import Sequence

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod
from flwr.compat.client.app import start_client_internal
from flwr.compat.common import recorddict_compat as compat
from flwr.app.message_type import MessageType
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from appliance.detector.train import calibrate_threshold
from appliance.fleet.model import ModelSpec, autoencoder, client_windows, train_local, update_norm

logger = logging.getLogger(__name__)


def peak_rss_kb() -> int:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class GatewayClient(NumPyClient):
    """One gateway's normal rows (``sensors``, ``rows``, optional ``ts``) behind Flower's NumPyClient."""

    def __init__(self, name: str, sensors: Sequence[str], rows: np.ndarray, ts: np.ndarray | None = None):
        self.name, self.sensors, self.rows, self.ts = name, list(sensors), rows, ts
        self._windows: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        self.rounds = 0  # rounds this gateway trained in

    def windows(self, config) -> tuple[ModelSpec, np.ndarray, np.ndarray]:
        spec = ModelSpec.from_json(str(config["spec"]))
        key = (str(config["spec"]), float(config["holdout"]))
        if key not in self._windows:
            self._windows = {key: client_windows(spec, self.sensors, self.rows, self.ts, float(config["holdout"]))}
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
        self.rounds += 1
        logger.info("fleet client %s: fit round=%s done loss=%.5g", self.name, config.get("round"), loss)
        _flush()
        return new, len(X_train), metrics

    def evaluate(self, parameters, config):
        spec, _, X_held = self.windows(config)
        errors = autoencoder(spec, parameters).errors(X_held)
        threshold, _ = calibrate_threshold(errors)
        return float(np.mean(errors)), len(X_held), {"name": self.name, "threshold": float(threshold)}


def clip_when_asked(msg, ctxt, call_next):
    """Flower's ``fixedclipping_mod`` on the rounds the server asks for clipping (its DP wrapper is on).

    The server decides whether DP is on, so a client configured differently can
    neither skip clipping nor fail a round that has none.
    """
    if msg.metadata.message_type == MessageType.TRAIN:
        config = compat.recorddict_to_fitins(msg.content, keep_input=True).config
        if KEY_CLIPPING_NORM in config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stderr.flush()


def run_client(client: GatewayClient, server_address: str, *, root_certificates: bytes | None = None,
               max_wait_s: float | None = None) -> None:
    """Take part in the fleet run at ``server_address`` until the server ends it."""
    import grpc

    app = ClientApp(client_fn=lambda context: client.to_client(), mods=[clip_when_asked])
    deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
    while True:
        try:
            start_client_internal(server_address=server_address, node_config={},
                                  load_client_app_fn=lambda *_: app, root_certificates=root_certificates,
                                  insecure=root_certificates is None, max_wait_time=max_wait_s,
                                  max_retries=None if max_wait_s is None else max(1, math.ceil(max_wait_s)))
            return
        except grpc.RpcError as e:
            # A gateway may open its window before the server listens: wait for it. Once this
            # gateway took part, a lost server ends its run (the server goes on without it).
            if client.rounds or (deadline is not None and time.monotonic() > deadline):
                raise
            logger.info("fleet client %s: server %s not reachable yet (%s); retrying", client.name,
                        server_address, e.code() if hasattr(e, "code") else e)
            time.sleep(1.0)
