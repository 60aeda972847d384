"""The fleet's Flower ServerApp: the SuperLink runs it for each run submitted with ``appliance fleet run``.

Flower's deployment runtime (``docs/fleet.md``): the engineer's SuperLink
(``appliance fleet superlink``) runs :data:`server_app` (``flwr run`` of
``appliance/fleet/flower_app``). The strategy is
:func:`appliance.fleet.server.fleet_strategy`, the same code path as the
one-process server, so whatever bounds its aggregation bounds this runtime too;
Flower's ``DefaultWorkflow`` drives it, with ``SecAggPlusWorkflow`` as the fit
workflow when ``[fleet.secagg] enabled`` (the default). After the last round it
writes the bundle and the run report (:mod:`appliance.fleet.outcome`) on the
SuperLink's machine, for the signed release path. Only Flower's public API is
used. Importing this module imports flwr.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from appliance.fleet.config import FleetConfig
from appliance.fleet.server import Delegating

logger = logging.getLogger(__name__)


class UniformWeights(Delegating):
    """Tells every gateway the weight its update counts with (SecAgg+ weighs on the client, before masking)."""

    def __init__(self, inner: Strategy, max_weight: float):
        super().__init__(inner)
        self.max_weight = max_weight

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        for _, ins in instructions:
            ins.config["max_weight"] = self.max_weight
        return instructions


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    """Flower's ``SecAggPlusWorkflow``, which also survives a gateway lost before it shared its keys.

    In flwr 1.42 the unmask stage asks for ``reconstruction_threshold`` shares of
    every gateway sampled for the round, also of one that dropped during the
    setup or share-keys stage: nobody holds shares of it, so the round halted
    ("Not enough shares to recover secret in unmask vectors stage") although
    that gateway never added a mask to anyone's vector (a gateway masks only
    with the neighbours whose key shares reached it). After the share-keys
    stage the round's participants are those that distributed their shares;
    a gateway lost later is unmasked from its neighbours' shares as Flower
    does. Uses the workflow's documented stage methods and its state's
    ``sampled_node_ids``/``active_node_ids``/``nid_to_neighbours``/``threshold``
    (flwr pinned in constraints.txt).
    """

    def setup_stage(self, grid, context, state) -> bool:
        super().setup_stage(grid, context, state)
        return self._forget_the_lost(state)

    def share_keys_stage(self, grid, context, state) -> bool:
        super().share_keys_stage(grid, context, state)
        return self._forget_the_lost(state)

    def _forget_the_lost(self, state) -> bool:
        """The round's participants are those still there; enough of them hold each one's shares?"""
        lost = state.sampled_node_ids - state.active_node_ids
        if lost:
            logger.warning("SecAgg+: %d gateway(s) left before sharing their keys; the round goes on without "
                           "them", len(lost))
        state.sampled_node_ids = set(state.active_node_ids)
        return bool(state.active_node_ids) and enough_share_holders(state)


def enough_share_holders(state) -> bool:
    """Every participant's secrets still have ``threshold`` holders among those left (Flower's own check)."""
    for nid in state.sampled_node_ids:
        if len(state.nid_to_neighbours[nid] & state.active_node_ids) < state.threshold:
            logger.error("SecAgg+: gateway %s has fewer than %d share holders left; the round halts", nid,
                         state.threshold)
            return False
    return True


def fit_workflow(cfg: FleetConfig):
    """SecAgg+ for the fit rounds (``[fleet.secagg]``), else Flower's default fit workflow."""
    s = cfg.secagg
    if not s.enabled:
        return None
    return DropoutTolerantSecAggPlus(num_shares=s.num_shares, reconstruction_threshold=s.reconstruction_threshold,
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
    from appliance.fleet.server import (RunRecord, fleet_client_manager, fleet_strategy, report_of,
                                        with_final_check)

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
    final = with_final_check(cfg, spec, weights, final, report)
    outcome = write_outcome(cfg, spec, final, report, init=job["init"], reference=reference, out=job["out"],
                            report_path=job["report"])
    logger.info("fleet run %s: %s", context.run_id, outcome.message)
    return report


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    run_fleet(grid, context)
