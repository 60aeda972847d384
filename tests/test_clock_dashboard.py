"""The dashboard while the gateway's clock is a day behind and the data's time is in use (issue 22,
item 8): the status carries the banner's words, and trends end at the data's "now"."""

from __future__ import annotations

import time

import pytest

from appliance.core.timebase import GatewayClock
from tests.support.web import signed_in
from web.app import create_app

DAY = 86400.0


@pytest.fixture
def behind(book_appliance, store, accounts, monkeypatch):
    """The stand-in appliance with a clock a day behind its data (this process's clock plays the wrong one)."""
    clock = GatewayClock(synchronised=lambda: False)
    clock.observe("pump1", time.time() + DAY)
    plain = book_appliance.status
    monkeypatch.setattr(book_appliance, "status", lambda: {**plain(), "clock": clock.status()})
    return signed_in(create_app(book_appliance, store.path, accounts=accounts), "vic", "viewer")


def test_status_carries_the_banner(behind):
    clock = behind.get("/api/status").get_json()["clock"]
    assert clock["data_time"] and clock["synchronised"] is False
    assert clock["message"] == "gateway clock unsynchronised; using time from data (offset +24.0 h)"
    page = behind.get("/").get_data(as_text=True)
    assert 'id="clock-banner"' in page


def test_trend_ends_at_the_data_time(behind, book_appliance):
    true_now = time.time() + DAY
    for i in range(60):
        book_appliance.reading("pump1", "Current", true_now - 60 + i, float(i))
    book_appliance.flush()
    body = behind.get("/api/assets/pump1/trend?range=15m").get_json()
    assert body["until"] == pytest.approx(true_now, abs=60)
    assert len(body["sensors"]["Current"]["t"]) >= 30
    # Asked for the gateway's own (wrong) time, the same data is a day in its future: nothing to show.
    old = behind.get(f"/api/assets/pump1/trend?range=15m&until={time.time()}").get_json()
    assert old["sensors"]["Current"]["t"] == []
