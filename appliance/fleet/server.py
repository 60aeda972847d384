"""The fleet server: Flower rounds over the gateways, then the fleet model as a bundle.

Runs Flower's gRPC server (``flwr.server.start_server``: the one-process mode,
deprecated by Flower in favour of SuperLink/SuperNode deployments but still
shipped in ``flwr.compat``) with FedAvg or FedProx, optionally wrapped by Flower's
``DifferentialPrivacyClientSideFixedClipping``. Importing this module imports flwr.

A client that drops out does not stall the fleet: a round waits at most
``round_timeout_s`` for replies and aggregates the ones it got (``accept_failures``)
when there are at least ``min_results``; later rounds go on with the gateways
still connected, or wait up to ``rejoin_timeout_s`` for those whose connectivity
window closed to come back. The first round waits (up to ``join_timeout_s``) for
all ``clients`` to join. With DP, Flower's wrapper discards a round that had a
failure (its privacy analysis assumes a fixed number of clipped updates); the
global model then stays as it was and the round spends no privacy.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server, ServerConfig, SimpleClientManager, start_server
from flwr.server.strategy import (DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx, Strategy)

from appliance.fleet.config import FleetConfig
from appliance.fleet.data import DATA_COUNTS
from appliance.fleet.model import ModelSpec, update_norm
from appliance.fleet.privacy import epsilon, gdp_mu, round_multiplier
from appliance.fleet.robust import (UpdateRejected, aggregate_problem, checked_weights, client_name, client_weight,
                                    clip_update, drift_problem, number, usable_threshold)

logger = logging.getLogger(__name__)


def _nbytes(p: Parameters) -> int:
    return int(sum(len(t) for t in p.tensors))


def _decoded(p: Parameters) -> list[np.ndarray]:
    """A client's weights from the wire; whatever a malformed message raises is that client's rejection."""
    try:
        return parameters_to_ndarrays(p)
    except Exception as e:  # untrusted bytes: np.load may raise ValueError, EOFError, OSError ...
        raise UpdateRejected(f"weights not readable: {type(e).__name__}: {e}") from None


def _evaluation_problem(res, dropped: bool) -> str | None:
    """Why a client's evaluation (its loss and the threshold it calibrated) is not used, or None."""
    if dropped:
        return "its update was dropped this round"  # a client that sent a broken model is not asked either
    if not isinstance(res.loss, (int, float)) or not math.isfinite(res.loss):
        return f"loss {res.loss!r}"
    if not isinstance(res.num_examples, int) or res.num_examples < 1:
        return f"claims {res.num_examples!r} windows"
    if usable_threshold((res.metrics or {}).get("threshold")) is None:
        return "no usable threshold"
    return None


def update_bound(cfg: FleetConfig) -> float:
    """The L2 norm the server clips each update to: ``[fleet.robust]``'s, with DP never above its clipping norm
    (so DP's sensitivity holds even for a client that skipped its own clipping)."""
    bound = cfg.robust.max_update_norm
    return min(bound, cfg.dp.clipping_norm) if cfg.dp.enabled else bound


def max_drift(cfg: FleetConfig, spec: ModelSpec, rounds_released: int) -> float:
    """How far the released rounds can move the seed: each at most ``update_bound``, plus DP's noise
    (its norm concentrates at ``std * sqrt(parameters)``; 1.5 x that is far beyond its spread)."""
    noise = 0.0
    if cfg.dp.enabled:
        std = cfg.dp.noise_multiplier * cfg.dp.clipping_norm / cfg.clients
        noise = 1.5 * std * math.sqrt(sum(math.prod(s) for s in spec.shapes()))
    return rounds_released * (update_bound(cfg) + noise)


class FleetClientManager(SimpleClientManager):
    """Sampling that never waits longer than the connectivity windows allow.

    The first round waits up to ``join_timeout_s`` for ``expected`` gateways. A
    later round waits up to ``join_timeout_s`` for ``min_results`` of them and then,
    with ``rejoin_timeout_s > 0``, up to that long for the others to come back
    (gateways leave when their window closes and rejoin in the next one). Every
    round takes all gateways connected then, and is skipped (no clients) when
    fewer than ``min_results`` are there.
    """

    def __init__(self, expected: int, min_results: int, join_timeout_s: float, rejoin_timeout_s: float = 0.0):
        super().__init__()
        self.expected, self.min_results, self.join_timeout_s = expected, min_results, join_timeout_s
        self.rejoin_timeout_s = rejoin_timeout_s
        self._first = True

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        if self._first:
            self.wait_for(self.expected, timeout=self.join_timeout_s)
        else:
            self.wait_for(self.min_results, timeout=self.join_timeout_s)
            if self.rejoin_timeout_s > 0 and len(self) < self.expected:
                logger.info("%d of %d gateways connected; waiting up to %.0f s for the others to rejoin",
                            len(self), self.expected, self.rejoin_timeout_s)
                self.wait_for(self.expected, timeout=self.rejoin_timeout_s)
        self._first = False
        available = [cid for cid in self.clients if criterion is None or criterion.select(self.clients[cid])]
        if len(available) < self.min_results:
            logger.warning("round skipped: %d gateways connected, min_results=%d", len(available), self.min_results)
            return []
        return [self.clients[cid] for cid in available]


@dataclass
class RunRecord:
    """What happened in each round; written as the run report (JSON)."""

    rounds: dict[int, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def round(self, r: int) -> dict:
        with self.lock:
            return self.rounds.setdefault(r, {"round": r, "clients": [], "failures": 0, "released": False,
                                              "evaluation": []})


def _strategy_class(base: type):
    class FleetStrategy(base):
        """``base`` (FedAvg or FedProx) that sends the model spec and local settings, and records each round."""

        def __init__(self, *, cfg: FleetConfig, spec: ModelSpec, record: RunRecord, uniform: bool, **kw):
            super().__init__(**kw)
            self.cfg, self.spec, self.record, self.uniform = cfg, spec, record, uniform
            self._global: dict[int, list[np.ndarray]] = {}
            self._dropped: dict[int, set[str]] = {}  # per round, the clients whose update was dropped

        def _settings(self, server_round: int) -> dict:
            c = self.cfg
            return {"spec": self.spec.to_json(), "round": server_round, "epochs": c.local_epochs,
                    "learning_rate": c.learning_rate, "batch_size": c.batch_size, "holdout": c.holdout,
                    "seed": c.seed + server_round}

        def configure_fit(self, server_round, parameters, client_manager):
            instructions = super().configure_fit(server_round, parameters, client_manager)
            self._global[server_round] = parameters_to_ndarrays(parameters)
            rec = self.record.round(server_round)
            rec["sampled"] = len(instructions)
            rec["bytes_down_per_client"] = _nbytes(parameters)
            for _, ins in instructions:
                ins.config.update(self._settings(server_round))
                if base is FedAvg:
                    ins.config["proximal_mu"] = 0.0
            return instructions

        def aggregate_fit(self, server_round, results, failures):
            rec = self.record.round(server_round)
            rec["failures"] = len(failures)
            start = self._global.pop(server_round)
            rec["update_bound"] = bound = update_bound(self.cfg)
            fixed = [a for a in (self._accepted(server_round, p, res, start, bound) for p, res in results) if a]
            if len(fixed) < self.cfg.min_results:
                logger.warning("round %d: %d results < min_results=%d; the model is kept", server_round,
                               len(fixed), self.cfg.min_results)
                return None, {}
            params, metrics = super().aggregate_fit(server_round, fixed, failures)
            if params is not None:
                rec["noise_free"] = parameters_to_ndarrays(params)
                rec["aggregate_update_norm"] = update_norm(rec["noise_free"], start)
                why = aggregate_problem(rec["noise_free"], start, bound)
                if why is not None:
                    logger.warning("round %d: aggregate refused, the model is kept: %s", server_round, why)
                    rec["aggregate_refused"] = why
                    return None, {}
            return params, metrics

        def _accepted(self, server_round: int, proxy, res: FitRes, start: list[np.ndarray], bound: float):
            """``res`` checked, clipped to ``bound`` and weighed (``robust.py``); None when dropped (logged)."""
            m, rec = res.metrics or {}, self.record.round(server_round)
            name = client_name(m, proxy.cid)
            try:
                arrays = checked_weights(_decoded(res.parameters), self.spec.shapes())
                # DP's sensitivity analysis holds for a plain average of clipped updates.
                weight = 1.0 if self.uniform else client_weight(res.num_examples, self.cfg.robust.weighting,
                                                                self.cfg.robust.max_windows)
            except UpdateRejected as e:
                self._dropped.setdefault(server_round, set()).add(proxy.cid)
                rec.setdefault("rejected", []).append({"name": name, "reason": str(e)})
                logger.warning("round %d: update of %s dropped: %s", server_round, name, e)
                return None
            clipped, received_norm = clip_update(arrays, start, bound)
            rec["clients"].append({
                "name": name, "bytes_up": _nbytes(res.parameters), "update_norm": received_norm,
                "clipped_by_server": received_norm > bound, "weight": weight,
                "update_norm_before_clip": number(m, "update_norm"), "train_loss": number(m, "train_loss"),
                "train_windows": int(res.num_examples), "peak_rss_kb": int(np.nan_to_num(number(m, "peak_rss_kb")))}
                | {k: int(number(m, k)) for k in DATA_COUNTS if math.isfinite(number(m, k))})
            params = ndarrays_to_parameters([a.astype(np.float32) for a in clipped])
            return proxy, FitRes(res.status, params, max(1, int(weight)), res.metrics)

        def configure_evaluate(self, server_round, parameters, client_manager):
            instructions = super().configure_evaluate(server_round, parameters, client_manager)
            for _, ins in instructions:
                ins.config.update(self._settings(server_round))
            return instructions

        def aggregate_evaluate(self, server_round, results, failures):
            rec = self.record.round(server_round)
            kept = [(p, r) for p, r in results if self._evaluation_usable(server_round, p, r)]
            rec["evaluation"] = [{"name": client_name(r.metrics or {}, p.cid), "loss": float(r.loss),
                                  "threshold": usable_threshold((r.metrics or {}).get("threshold")),
                                  "windows": r.num_examples} for p, r in kept]
            return super().aggregate_evaluate(server_round, kept, failures)

        def _evaluation_usable(self, server_round: int, proxy, res) -> bool:
            """A usable evaluation (:func:`_evaluation_problem`), its windows capped; else dropped (logged)."""
            why = _evaluation_problem(res, dropped=proxy.cid in self._dropped.get(server_round, ()))
            if why is not None:
                name = client_name(res.metrics or {}, proxy.cid)
                self.record.round(server_round).setdefault("evaluation_rejected", []).append(
                    {"name": name, "reason": why})
                logger.warning("round %d: evaluation of %s dropped: %s", server_round, name, why)
                return False
            res.num_examples = min(res.num_examples, self.cfg.robust.max_windows)
            return True

    return FleetStrategy


class Delegating(Strategy):
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


class _Released(Delegating):
    """Delegates to the real strategy and keeps what each round released (after any DP noise)."""

    def __init__(self, inner: Strategy, record: RunRecord):
        super().__init__(inner)
        self.record = record

    def aggregate_fit(self, server_round, results, failures):
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        rec = self.record.round(server_round)
        rec["released"] = params is not None
        if params is not None:
            rec["released_weights"] = parameters_to_ndarrays(params)
        return params, metrics


@dataclass
class FleetResult:
    weights: list[np.ndarray]
    report: dict


def run_server(cfg: FleetConfig, spec: ModelSpec, weights: Sequence[np.ndarray], address: str | None = None
               ) -> FleetResult:
    """Run ``cfg.rounds`` Flower rounds from ``weights``; return the final weights and the run report."""
    weights = spec.check(weights)
    record = RunRecord()
    strategy = fleet_strategy(cfg, spec, weights, record)
    manager = fleet_client_manager(cfg)
    server = Server(client_manager=manager, strategy=strategy)
    certificates = None
    if cfg.cert_file is not None:
        certificates = tuple(Path(p).read_bytes() for p in (cfg.ca_file, cfg.cert_file, cfg.key_file))
    start_server(server_address=address or cfg.server_address, server=server, certificates=certificates,
                 config=ServerConfig(num_rounds=cfg.rounds, round_timeout=cfg.round_timeout_s))
    final = parameters_to_ndarrays(server.parameters) if server.parameters.tensors else weights
    report = _report(cfg, record)
    return FleetResult(weights=with_final_check(cfg, spec, weights, final, report), report=report)


def fleet_client_manager(cfg: FleetConfig) -> FleetClientManager:
    """The client manager both runtimes sample through (join, rejoin and ``min_results`` waits)."""
    return FleetClientManager(cfg.clients, cfg.min_results, cfg.join_timeout_s, cfg.rejoin_timeout_s)


def fleet_strategy(cfg: FleetConfig, spec: ModelSpec, weights: Sequence[np.ndarray], record: RunRecord) -> Strategy:
    """The fleet's strategy from ``weights`` (FedAvg/FedProx, DP wrapper, released-round record).

    One code path for the one-process server and the SuperLink's ServerApp
    (:mod:`appliance.fleet.server_app`), so what bounds aggregation here bounds both.
    """
    base = FedProx if cfg.strategy == "fedprox" else FedAvg
    kw = dict(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=cfg.min_results,
              min_evaluate_clients=cfg.min_results, min_available_clients=cfg.min_results, accept_failures=True,
              initial_parameters=ndarrays_to_parameters(weights))
    if base is FedProx:
        kw["proximal_mu"] = cfg.proximal_mu
    strategy: Strategy = _strategy_class(base)(cfg=cfg, spec=spec, record=record, uniform=cfg.dp.enabled, **kw)
    if cfg.dp.enabled:
        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=cfg.dp.noise_multiplier,
                                                              clipping_norm=cfg.dp.clipping_norm,
                                                              num_sampled_clients=cfg.clients)
    return _Released(strategy, record)


def report_of(cfg: FleetConfig, record: RunRecord) -> dict:
    """The run report (JSON-able) of what ``record`` saw."""
    return _report(cfg, record)


def with_final_check(cfg: FleetConfig, spec: ModelSpec, seed: Sequence[np.ndarray], final: Sequence[np.ndarray],
                     report: dict) -> list[np.ndarray]:
    """Record in ``report["final_check"]`` how far ``final`` moved from ``seed`` against the run's bound.

    Checked before the weights can become a bundle (both runtimes): :func:`appliance.fleet.outcome.write_outcome`
    writes none when it fails. Returns the weights to keep (unchecked when they are refused).
    """
    bound = max_drift(cfg, spec, report["rounds_released"])
    problem = drift_problem(final, seed, bound)
    report["final_check"] = {"drift": update_norm(final, seed), "max_drift": bound, "problem": problem}
    return list(final) if problem else spec.check(final)


def _report(cfg: FleetConfig, record: RunRecord) -> dict:
    rounds, multipliers = [], []
    for r in sorted(record.rounds):
        rec = dict(record.rounds[r])
        noise_free, released = rec.pop("noise_free", None), rec.pop("released_weights", None)
        if cfg.dp.enabled:
            dp = {"noise_multiplier": cfg.dp.noise_multiplier, "clipping_norm": cfg.dp.clipping_norm,
                  "noise_std": cfg.dp.noise_multiplier * cfg.dp.clipping_norm / cfg.clients}
            if rec["released"]:
                z = round_multiplier(cfg.dp.noise_multiplier, cfg.clients, len(rec["clients"]))
                multipliers.append(z)
                mu = gdp_mu([z])
                dp.update(effective_noise_multiplier=z, mu=mu, epsilon=epsilon(mu, cfg.dp.delta), delta=cfg.dp.delta)
                if noise_free is not None and released is not None:
                    dp["noise_l2"] = update_norm(released, noise_free)
                    dp["parameters"] = int(sum(a.size for a in released))
            else:
                dp.update(epsilon=0.0, delta=0.0, note="not released: no privacy spent")
            rec["dp"] = dp
        losses = [(e["loss"], e["windows"]) for e in rec["evaluation"]]
        rec["eval_loss"] = (sum(v * n for v, n in losses) / sum(n for _, n in losses)) if losses else None
        rounds.append(rec)
    report: dict = {"strategy": cfg.strategy, "proximal_mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
                    "rounds_planned": cfg.rounds, "rounds_released": sum(1 for r in rounds if r["released"]),
                    "rounds": rounds}
    if cfg.dp.enabled:
        mu = gdp_mu(multipliers)
        report["privacy"] = {"accountant": "Gaussian DP (Dong, Roth, Su 2019), client-level, no sampling "
                                           "amplification", "delta": cfg.dp.delta, "mu": mu,
                             "epsilon": epsilon(mu, cfg.dp.delta) if multipliers else 0.0,
                             "rounds_accounted": len(multipliers)}
    return report


def write_report(report: dict, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return p
