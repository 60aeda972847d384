"""The fleet as a Flower App: the ServerApp the SuperLink runs and the ClientApp every SuperNode runs.

Flower's deployment runtime (``docs/fleet.md``): the engineer's SuperLink
(``appliance fleet superlink``) runs :data:`server_app` for each run submitted
with ``appliance fleet run`` (``flwr run`` of ``appliance/fleet/flower_app``);
each gateway's SuperNode (``appliance fleet node``, started by the participant
in its connectivity windows) runs :data:`client_app`. Only Flower's public API
is used (``flwr.serverapp``/``flwr.server`` workflows, ``flwr.clientapp``,
``flwr.client.mod``).

* **ServerApp**: the strategy of :mod:`appliance.fleet.server`
  (:func:`~appliance.fleet.server.fleet_strategy`, the same code path as the
  one-process server, so its bounds hold here too) driven by Flower's
  ``DefaultWorkflow``, whose fit rounds run ``SecAggPlusWorkflow`` when
  ``[fleet.secagg] enabled`` (the default). After the last round it writes the
  bundle and the run report (:mod:`appliance.fleet.outcome`), on the SuperLink's
  machine, for the signed release path.
* **ClientApp**: the gateway's :class:`~appliance.fleet.client.GatewayClient`
  (rows from its store, or CSV files for the benchmark), with Flower's
  ``secaggplus_mod`` (when the round is a SecAgg+ round; a gateway whose node
  config says ``secagg="required"``, the default, refuses a round without it) and
  ``fixedclipping_mod`` (when the server runs DP), and a mod counting the payload
  bytes each way (``traffic-file``, for the benchmark).

Importing this module imports flwr.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.client import Client
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from appliance.fleet.client import GatewayClient
from appliance.fleet.config import FleetConfig
from appliance.fleet.data import StoreSource

logger = logging.getLogger(__name__)

# Where Flower's messages carry what the mods look for (config-record keys of flwr 1.42, pinned):
# SecAggPlusWorkflow's stage configs, and the clipping norm the DP wrapper adds to a fit instruction.
SECAGG_RECORD = "secaggplus_configs"
CLIPPING_NORM_KEY = "clipping_norm"


# -- the ServerApp ----------------------------------------------------------------------------------


class _Delegating(Strategy):
    """A strategy that hands every call to ``inner`` (subclasses change one call)."""

    def __init__(self, inner: Strategy):
        super().__init__()
        self.inner = inner

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)


class UniformWeights(_Delegating):
    """Tells every gateway the weight its update counts with (SecAgg+ weighs on the client, before masking)."""

    def __init__(self, inner: Strategy, max_weight: float):
        super().__init__(inner)
        self.max_weight = max_weight

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        for _, ins in instructions:
            ins.config["max_weight"] = self.max_weight
        return instructions


def fit_workflow(cfg: FleetConfig):
    """SecAgg+ for the fit rounds (``[fleet.secagg]``), else Flower's default fit workflow."""
    s = cfg.secagg
    if not s.enabled:
        return None
    return SecAggPlusWorkflow(num_shares=s.num_shares, reconstruction_threshold=s.reconstruction_threshold,
                              max_weight=s.max_weight, clipping_range=s.clipping_range,
                              quantization_range=s.quantization_range, timeout=cfg.round_timeout_s)


def _released_weights(record, seed: list[np.ndarray]) -> list[np.ndarray]:
    """The weights of the last released round (the seed when none was)."""
    for r in sorted(record.rounds, reverse=True):
        w = record.rounds[r].get("released_weights")
        if w is not None:
            return list(w)
    return list(seed)


def run_fleet(grid: Grid, context: Context) -> dict:
    """The ServerApp's run: rounds from the seed bundle, then the bundle and report; returns the report."""
    from appliance.config import load_config
    from appliance.detector.train import read_csv_rows
    from appliance.fleet.model import seed_from_bundle
    from appliance.fleet.outcome import write_outcome
    from appliance.fleet.server import RunRecord, fleet_client_manager, fleet_strategy, report_of

    job = {k: str(context.run_config[k]) for k in ("fleet-config", "init", "reference", "out", "report")}
    cfg = load_config(job["fleet-config"]).fleet
    spec, weights = seed_from_bundle(job["init"])
    reference = read_csv_rows(job["reference"].split(os.pathsep))
    record = RunRecord()
    strategy = fleet_strategy(cfg, spec, weights, record)
    if cfg.secagg.enabled:
        strategy = UniformWeights(strategy, cfg.secagg.max_weight)
    legacy = LegacyContext(context=context, strategy=strategy, client_manager=fleet_client_manager(cfg),
                           config=ServerConfig(num_rounds=cfg.rounds, round_timeout=cfg.round_timeout_s))
    started = time.monotonic()
    DefaultWorkflow(fit_workflow=fit_workflow(cfg))(grid, legacy)
    final = _released_weights(record, weights)
    report = report_of(cfg, record)
    report["runtime"] = {"engine": "superlink", "run_id": int(context.run_id), "seconds": time.monotonic() - started,
                         "secagg": cfg.secagg.model_dump() if cfg.secagg.enabled else None}
    outcome = write_outcome(cfg, spec, final, report, init=job["init"], reference=reference, out=job["out"],
                            report_path=job["report"])
    logger.info("fleet run %s: %s", context.run_id, outcome.message)
    return report


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    run_fleet(grid, context)


# -- the ClientApp ----------------------------------------------------------------------------------


class SecAggRequired(RuntimeError):
    """A fit round without SecAgg+ reached a gateway whose node config requires it."""


_gateways: dict[tuple, GatewayClient] = {}


def gateway_of(node_config: dict[str, Any]) -> GatewayClient:
    """This SuperNode's gateway (its rows read once per ClientApp process), from the node config."""
    key = tuple(sorted(node_config.items()))
    if key not in _gateways:
        name = str(node_config.get("name", "gateway"))
        if "data" in node_config:
            from appliance.detector.train import read_csv_rows

            sensors, ts, rows = read_csv_rows(str(node_config["data"]).split(os.pathsep))
            _gateways[key] = GatewayClient(name, sensors, rows, ts)
        else:
            source = StoreSource(db_path=Path(str(node_config["store"])), asset=str(node_config["asset"]),
                                 recent_s=float(node_config["recent-s"]),
                                 margin_s=float(node_config["alarm-margin-s"]),
                                 staleness_s=float(node_config["staleness-s"]),
                                 lateness_s=float(node_config["lateness-s"]))
            source.check()
            _gateways[key] = GatewayClient(name, source=source)
    return _gateways[key]


def _client_fn(context: Context) -> Client:
    return gateway_of(dict(context.node_config)).to_client()


def _asks(msg: Message, key: str) -> bool:
    return any(key in rec for rec in msg.content.config_records.values())


def secagg_when_asked(msg: Message, ctxt: Context, call_next):
    """Flower's ``secaggplus_mod`` on SecAgg+ rounds; a plain fit round is refused unless the node allows it."""
    if msg.metadata.message_type == MessageType.TRAIN:
        if SECAGG_RECORD in msg.content.config_records:
            return secaggplus_mod(msg, ctxt, call_next)
        if str(ctxt.node_config.get("secagg", "required")) == "required":
            raise SecAggRequired("a fit round without SecAgg+: this gateway sends its update only masked "
                                 "(node config secagg=\"required\")")
    return call_next(msg, ctxt)


def clip_when_asked(msg: Message, ctxt: Context, call_next):
    """Flower's ``fixedclipping_mod`` on the rounds the server asks for clipping (its DP wrapper is on).

    Inside ``secaggplus_mod``: the update is clipped before it is masked.
    """
    if msg.metadata.message_type == MessageType.TRAIN and _asks(msg, CLIPPING_NORM_KEY):
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def payload_bytes(msg: Message) -> int:
    """Bytes of a message's arrays and config values (Flower's framing, HTTP and TLS not counted)."""
    if not msg.has_content():
        return 0
    c = msg.content
    total = sum(len(a.data) for rec in c.array_records.values() for a in rec.values())
    for rec in c.config_records.values():
        for v in rec.values():
            for item in (v if isinstance(v, list) else [v]):
                total += len(item) if isinstance(item, bytes) else len(item.encode()) if isinstance(item, str) else 8
    total += 8 * sum(len(rec) for rec in c.metric_records.values())
    return total


def count_traffic(msg: Message, ctxt: Context, call_next):
    """Append the payload bytes in and out of each message to the node's ``traffic-file`` (when configured)."""
    path = ctxt.node_config.get("traffic-file")
    if not path:
        return call_next(msg, ctxt)
    down = payload_bytes(msg)
    reply = call_next(msg, ctxt)
    line = {"t": time.time(), "type": msg.metadata.message_type, "group": msg.metadata.group_id,
            "down": down, "up": payload_bytes(reply)}
    with open(str(path), "a") as out:
        out.write(json.dumps(line) + "\n")
    return reply


client_app = ClientApp(client_fn=_client_fn, mods=[count_traffic, secagg_when_asked, clip_when_asked])
