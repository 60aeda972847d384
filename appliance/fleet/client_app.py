"""The fleet's Flower ClientApp: each gateway's SuperNode (``appliance fleet node``) runs it.

The gateway's :class:`~appliance.fleet.client.GatewayClient` (rows from its
store, or CSV files for the benchmark, as the node config says) behind Flower's
mods: ``secaggplus_mod`` on SecAgg+ rounds (a gateway whose node config says
``secagg="required"``, the default, refuses a fit round without it, so its
update never leaves unmasked) and a mod counting the payload bytes each way
(``traffic-file``, for the benchmark). When the server runs DP the gateway's
own fit clips its update (``client.clipped_when_asked``), inside
``secaggplus_mod``: clipped before it is masked. Flower starts a
ClientApp process per message, so this module imports little: the training
code only when a message needs the model. Only Flower's public API is used.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

# Where Flower's messages carry SecAggPlusWorkflow's stage configs (a config-record key of flwr 1.42, pinned).
SECAGG_RECORD = "secaggplus_configs"


class SecAggRequired(RuntimeError):
    """A fit round without SecAgg+ reached a gateway whose node config requires it."""


_gateways: dict[tuple, Any] = {}


def gateway_of(node_config: dict[str, Any]):
    """This SuperNode's gateway (its rows read once per ClientApp process), from the node config."""
    from appliance.fleet.client import GatewayClient
    from appliance.fleet.data import StoreSource

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


def _client_fn(context: Context):
    return gateway_of(dict(context.node_config)).to_client()


def secagg_when_asked(msg: Message, ctxt: Context, call_next):
    """Flower's ``secaggplus_mod`` on SecAgg+ rounds; a plain fit round is refused unless the node allows it."""
    if msg.metadata.message_type == MessageType.TRAIN:
        if SECAGG_RECORD in msg.content.config_records:
            return secaggplus_mod(msg, ctxt, call_next)
        if str(ctxt.node_config.get("secagg", "required")) == "required":
            raise SecAggRequired("a fit round without SecAgg+: this gateway sends its update only masked "
                                 "(node config secagg=\"required\")")
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


client_app = ClientApp(client_fn=_client_fn, mods=[count_traffic, secagg_when_asked])
