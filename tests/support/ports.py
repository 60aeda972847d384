"""Loopback ports for the peers a test starts: the appliance's own helpers (``appliance/broker.py``), one for all."""

from appliance.broker import free_port, wait_port  # noqa: F401
