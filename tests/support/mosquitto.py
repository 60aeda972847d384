"""Real-broker fixture: a private Mosquitto on a free loopback port per test."""

from __future__ import annotations

import pytest

from appliance.broker import Mosquitto, find_mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()
