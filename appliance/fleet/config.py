"""``[fleet]``: how a gateway takes part in fleet learning and how the fleet server runs rounds.

Only the server reads the round, strategy and privacy keys; a client takes its
training settings from each round's instructions, so one file serves both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from appliance.settings import DAY_S, Section


class FleetDpConfig(Section):
    """Central differential privacy on client updates (Flower's client-side fixed clipping wrapper).

    Each client clips its update (new weights minus the round's global weights) to
    L2 norm ``clipping_norm``; the server adds Gaussian noise of standard deviation
    ``noise_multiplier * clipping_norm / clients`` to the average. The privacy
    spent is reported per round and in total for ``delta`` (``docs/fleet.md``).
    """

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0, le=1000, description="noise std / clipping norm (per client)")
    clipping_norm: float = Field(1.0, gt=0, le=1e6, description="L2 bound of one client's update")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta the epsilon is reported for")


class FleetRobustConfig(Section):
    """What the server allows one client's update (``appliance/fleet/robust.py``, ``README.md``).

    Checked on the server, where a client cannot skip it: each update is clipped to
    ``max_update_norm`` (with DP, to the smaller of it and ``dp.clipping_norm``),
    each client weighs ``equal`` or by its claimed windows up to ``max_windows``,
    and the fleet threshold stays within ``max_threshold_factor`` of the seed's.
    """

    max_update_norm: float = Field(1.0, gt=0, le=1e6, description="L2 bound of one client's update, on the server")
    weighting: Literal["equal", "windows"] = Field(
        "equal", description="equal: every client counts once; windows: by its claimed windows, capped")
    max_windows: int = Field(20_000, ge=1, le=10**9, description="weighting = windows: the most a client counts for")
    max_threshold_factor: float = Field(1.5, ge=1, le=100, description="the fleet threshold stays within "
                                                                       "[seed / f, seed * f]")


def wildcard_host(address: str) -> bool:
    """True when ``host:port`` listens on every interface (``0.0.0.0``, ``::``, ``[::]``, or no host)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]") in ("", "0.0.0.0", "::", "*")


class FleetSecAggConfig(Section):
    """SecAgg+ on the SuperLink runtime (``appliance fleet run``): the server sees only the sum of the updates.

    Flower's ``SecAggPlusWorkflow`` with ``secaggplus_mod`` on the gateways. Each
    gateway's parameters are clipped to ``[-clipping_range, clipping_range]`` per
    coordinate and quantized to ``quantization_range`` levels before masking, and
    its weight is ``num_examples / max_weight`` of one share; the fleet sends
    every gateway a weight of ``max_weight`` (uniform average), so no gateway's
    word on its window count weighs more (``docs/fleet.md``).

    Dropouts: a round survives ``k`` gateways lost next to each other on its
    ring when ``reconstruction_threshold <= num_shares - k``; the defaults (3, 2)
    survive one, (5, 3) two, (7, 4) three (``docs/fleet.md``).
    """

    enabled: bool = Field(True, description="SecAgg+ for every fit round of the SuperLink runtime")
    num_shares: int = Field(3, ge=3, le=100_000, description="shares each gateway's secrets are split into")
    reconstruction_threshold: int = Field(2, ge=2, le=100_000, description="shares that reconstruct a secret "
                                                                           "(of a gateway that dropped)")
    clipping_range: float = Field(8.0, gt=0, le=1e6, description="each parameter clipped to +-this before masking")
    quantization_range: int = Field(2**22, ge=2, le=2**30, description="levels a parameter is quantized to")
    max_weight: float = Field(1.0, gt=0, le=1e9, description="the weight of one gateway's update (uniform)")

    @model_validator(mode="after")
    def _shares(self):
        if self.reconstruction_threshold >= self.num_shares:
            raise ValueError("secagg.reconstruction_threshold must be < num_shares")
        return self


class FleetConfig(Section):
    server_address: str = Field("127.0.0.1:9092", min_length=3, description="host:port the server listens on")
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(0.1, ge=0, le=1000, description="FedProx: weight of the pull to the global model")
    rounds: int = Field(5, ge=1, le=10_000)
    clients: int = Field(2, ge=1, le=100_000, description="gateways the server waits for before a round starts")
    min_results: int = Field(1, ge=1, le=100_000, description="fewest replies a round is aggregated from")
    join_timeout_s: float = Field(600.0, gt=0, le=DAY_S, description="how long a round waits for `clients`")
    round_timeout_s: float = Field(600.0, gt=0, le=DAY_S, description="a client not done by then is dropped")
    local_epochs: int = Field(5, ge=1, le=10_000, description="passes over its windows a client makes per round")
    learning_rate: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    holdout: float = Field(0.2, gt=0, lt=1, description="oldest share of a client's rows kept for evaluation")
    threshold: Literal["median", "max"] = Field(
        "median", description="how the clients' own calibrated thresholds become the fleet model's")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random state of the fleet's training (numpy, scikit-learn)")
    # A gateway inside the appliance (`appliance run`): its client takes part only while a
    # connectivity window of [outputs.sync] is open, on the normal rows its own store recorded.
    participate: bool = Field(False, description="this gateway joins fleet runs in its connectivity windows")
    asset: str | None = Field(None, min_length=1, description="the asset whose recorded rows the gateway trains on")
    name: str | None = Field(None, min_length=1, description="this gateway's name in the server's report (site)")
    recent_s: float = Field(7 * DAY_S, gt=0, le=366 * DAY_S,
                            description="span of recent recorded operation a gateway trains on")
    alarm_margin_s: float = Field(300.0, ge=0, le=DAY_S,
                                  description="rows this long before an alarm's start and after its end are "
                                              "left out too (a fault begins before the alarm is raised)")
    leave_grace_s: float = Field(10.0, gt=0, le=600, description="a client still running this long after its "
                                                                 "window closed is killed")
    rejoin_timeout_s: float = Field(0.0, ge=0, le=DAY_S,
                                    description="server: how long a later round waits for gateways that left "
                                                "(their window closed) to come back; 0: go on with those there")
    # TLS for Flower's gRPC: the server presents cert_file/key_file; clients verify it against ca_file.
    # Without ca_file the traffic is plain gRPC (keep it inside the site's VPN then).
    ca_file: str | None = Field(None, min_length=1, description="PEM CA the server certificate is checked against")
    cert_file: str | None = Field(None, min_length=1, description="server only: PEM certificate")
    key_file: str | None = Field(None, min_length=1, description="server only: PEM private key")
    dp: FleetDpConfig = FleetDpConfig()
    robust: FleetRobustConfig = FleetRobustConfig()
    # Flower's one-process server cannot authenticate gateways: on every interface, anyone who
    # reaches the port could send updates. Allowed only when the site says so explicitly.
    allow_unauthenticated_bind: bool = Field(False, description="server: listen on 0.0.0.0/:: although "
                                                                "gateways are not authenticated")
    secagg: FleetSecAggConfig = FleetSecAggConfig()
    # The SuperLink runtime (appliance fleet superlink|run|node): node authentication.
    node_key: str | None = Field(None, min_length=1, description="gateway: its SuperNode private key (OpenSSH "
                                                                 "EC; appliance fleet keygen); the SuperLink "
                                                                 "admits only registered keys")
    node_runtime_port: int = Field(9094, ge=1, le=65535, description="gateway: loopback port of its SuperNode's "
                                                                     "own runtime API (Flower's default 9094)")

    @model_validator(mode="after")
    def _counts(self):
        if self.min_results > self.clients:
            raise ValueError(f"min_results ({self.min_results}) must be <= clients ({self.clients})")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the server's TLS certificate and its key)")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("a TLS server needs ca_file too (Flower hands it to gRPC with the certificate)")
        if wildcard_host(self.server_address) and not (self.allow_unauthenticated_bind or self.cert_file):
            raise ValueError(
                f"server_address {self.server_address!r} listens on every interface, but without TLS the fleet "
                "server cannot authenticate gateways: anyone who reaches the port could send updates. Give "
                "cert_file/key_file/ca_file (the SuperLink runtime then admits only registered gateway keys; "
                "`appliance fleet server`, the one-process mode, still refuses a wildcard without the opt-in), "
                "listen on the site VPN's or loopback address, or set allow_unauthenticated_bind = true")
        if self.participate and self.asset is None:
            raise ValueError("participate = true needs asset (whose recorded normal rows the gateway trains on)")
        return self
