"""Real-broker fixture: a private Mosquitto on a free loopback port per test."""

from __future__ import annotations

import os

import pytest

from appliance.broker import Mosquitto, find_mosquitto, free_port, wait_port  # noqa: F401

# Started as root, mosquitto drops to user 'mosquitto', which cannot write its
# persistence file into a root-owned tmp dir ("Error: Permission denied" in its
# log); sessions and queued messages would then not survive restart() and the
# persistence tests would prove nothing. Append to any extra_conf.
RUN_AS = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""


@pytest.fixture
def mosquitto(tmp_path):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=RUN_AS).start()
    yield broker
    broker.stop()
