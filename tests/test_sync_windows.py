"""Connectivity windows: the schedule arithmetic, APScheduler opening and closing them, sync now, the config."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from appliance.core.compat import tomllib
from appliance.sync.config import SyncConfig, SyncWindowConfig, parse_cron
from appliance.sync.windows import ConnectivityWindows, make_trigger, window_end
from tests.support.wait import wait_until_async

ROOT = Path(__file__).resolve().parents[1]


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def test_a_cron_window_contains_the_times_from_its_start_for_its_duration():
    w = SyncWindowConfig(cron="0 2 * * *", duration_s=1800)
    trigger = make_trigger(w, timezone.utc)
    start = utc(2026, 3, 1, 2, 0)
    assert window_end(trigger, 1800, start) == start + 1800
    assert window_end(trigger, 1800, start + 1799.9) == start + 1800
    assert window_end(trigger, 1800, start + 1800) is None
    assert window_end(trigger, 1800, start - 0.1) is None
    assert window_end(trigger, 1800, start + 86400 + 60) == start + 86400 + 1800


def test_overlapping_starts_merge_into_one_window():
    # A start every 10 s, each open for 25 s: always open, until 25 s after the latest start.
    trigger = make_trigger(SyncWindowConfig(cron="*/10 * * * * *", duration_s=25), timezone.utc)
    t = utc(2026, 3, 1, 2, 0, 3)
    assert window_end(trigger, 25, t) == utc(2026, 3, 1, 2, 0, 0) + 25


def test_a_cron_window_follows_its_time_zone():
    # 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
    trigger = make_trigger(SyncWindowConfig(cron="0 2 * * *", duration_s=600), ZoneInfo("Europe/Berlin"))
    assert window_end(trigger, 600, utc(2026, 1, 15, 1, 5)) == utc(2026, 1, 15, 1, 10)
    assert window_end(trigger, 600, utc(2026, 7, 15, 0, 5)) == utc(2026, 7, 15, 0, 10)
    assert window_end(trigger, 600, utc(2026, 7, 15, 1, 5)) is None


def test_interval_windows_are_aligned_on_the_epoch_so_a_restart_does_not_move_them():
    trigger = make_trigger(SyncWindowConfig(every_s=3600, duration_s=300))
    on_the_hour = utc(2026, 3, 1, 14, 0)
    assert window_end(trigger, 300, on_the_hour + 120) == on_the_hour + 300
    assert window_end(trigger, 300, on_the_hour + 301) is None
    # The same answer from a fresh trigger (a restarted appliance).
    assert window_end(make_trigger(SyncWindowConfig(every_s=3600, duration_s=300)), 300,
                      on_the_hour + 120) == on_the_hour + 300


def test_six_field_cron_has_seconds_first():
    t = parse_cron("*/10 * * * * *")
    base = utc(2026, 3, 1, 0, 0, 3)
    assert t.get_next_fire_time(None, datetime.fromtimestamp(base, timezone.utc)).timestamp() == base + 7


def test_scheduled_windows_open_and_close_on_the_event_loop():
    async def scenario():
        w = ConnectivityWindows([SyncWindowConfig(every_s=2, duration_s=1)])
        await w.start()
        try:
            await wait_until_async(lambda: sum(1 for x in w.history if x.closed_at) >= 2, timeout=60,
                                   what="two scheduled windows to open and close")
            assert w.status()["next_start"] is not None
        finally:
            await w.stop()
        return list(w.history)

    history = asyncio.run(scenario())
    done = [x for x in history if x.closed_at is not None and x.reason.startswith("schedule:")]
    assert done, history
    for x in done:
        # Scheduled starts fall on even seconds; a window ends its duration after its scheduled start
        # (a loop that opens it late does not move its end) and never closes early.
        scheduled = x.opened_at - x.opened_at % 2
        assert x.opened_at - scheduled < 0.5
        assert x.closes_at - scheduled == pytest.approx(1.0, abs=0.01)
        assert x.closed_at >= x.closes_at - 0.01
    # Windows never overlap: each one closed before the next opened.
    for a, b in zip(history, history[1:]):
        assert a.closed_at is not None and a.closed_at <= b.opened_at


def test_an_appliance_started_inside_a_window_opens_it_at_once_for_what_is_left():
    async def scenario():
        # Every minute, for an hour: any moment is inside a window.
        w = ConnectivityWindows([SyncWindowConfig(cron="* * * * *", duration_s=3600)], tz_name="UTC")
        await w.start()
        try:
            assert w.is_open()
            cur = w.status()["current"]
            assert cur["reason"] == "startup:0"
            # The latest start was on the last minute boundary: the merged window ends an hour after it.
            assert 3540 <= w.time_left() <= 3600
        finally:
            await w.stop()
        assert not w.is_open()

    asyncio.run(scenario())


def test_a_stepped_wall_clock_re_anchors_the_schedule_in_both_directions():
    """A gateway without RTC is stepped by NTP: the schedule follows the new time at once.

    APScheduler times its wake-up as a wall-clock delay; without the re-anchoring a
    clock stepped back would leave the next window asleep for the size of the step.
    The fake wall clock runs ahead of the real one, so every re-anchored start is in
    APScheduler's (real) future and nothing fires by itself during the test.
    """
    real = time.time()
    clock = {"offset": (1800 - real % 3600) % 3600 + 3600}  # fake now: half past some hour, outside the window

    def wall() -> float:
        return time.time() + clock["offset"]

    def hour_after(t: float) -> float:
        return t - t % 3600 + 3600

    async def scenario():
        w = ConnectivityWindows([SyncWindowConfig(every_s=3600, duration_s=600)], clock=wall)
        await w.start()
        try:
            assert not w.is_open()
            clock["offset"] += 2000  # forward into the first 600 s of the next hour
            await wait_until_async(lambda: w.is_open(), timeout=60, what="the window the new time falls inside")
            assert w.current.reason == "clock_step:0"
            assert 350 <= w.time_left() <= 401
            assert w.status()["clock_steps"] == 1
            assert w.next_start() == pytest.approx(hour_after(wall()), abs=1)
            w.end_window()
            clock["offset"] -= 2000  # and back: the next start moves back with it
            await wait_until_async(lambda: w.status()["clock_steps"] == 2, timeout=60, what="the backward step")
            assert w.next_start() == pytest.approx(hour_after(wall()), abs=1)
            assert not w.is_open()
        finally:
            await w.stop()

    asyncio.run(scenario())


def test_sync_now_opens_extends_and_then_closes():
    async def scenario():
        w = ConnectivityWindows([], sync_now_s=5)
        await w.start()
        assert not w.is_open() and w.status()["next_start"] is None
        w.sync_now(0.3)
        assert w.is_open()
        first = w.current.seq
        w.sync_now(1.0)  # extends the open window, does not start another
        assert w.current.seq == first
        w.sync_now(0.1)  # a shorter request never shortens it
        assert w.time_left() > 0.5
        assert await w.wait_closed(60)
        assert not w.is_open() and len(w.history) == 1
        win = w.history[0]
        assert win.closed_at - win.opened_at >= 1.0 - 0.01
        w.sync_now()
        assert w.current.seq == first + 1 and w.time_left() > 4
        w.end_window()
        assert not w.is_open()
        with pytest.raises(ValueError):
            w.sync_now(0)
        await w.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("section, key, message", [
    ({"windows": [{"cron": "0 2 * *"}]}, "windows.0.cron", "has 4 fields"),
    ({"windows": [{"cron": "0 25 * * *"}]}, "windows.0.cron", "cron '0 25 * * *'"),
    ({"windows": [{"cron": "0 2 * * *", "every_s": 60}]}, "windows.0", "exactly one of cron or every_s"),
    ({"windows": [{"duration_s": 60}]}, "windows.0", "exactly one of cron or every_s"),
    ({"windows": [{"every_s": 60, "duration_s": 0}]}, "windows.0.duration_s", "greater than or equal to 1"),
    ({"budget_bytes_per_window": 1000, "max_message_bytes": 4096}, "", "budget_bytes_per_window must be 0"),
    ({"enabled": True, "transport": "https"}, "", "needs https.url"),
    ({"https": {"url": "http://cloud.example/uplink"}}, "https.url", "https:// URL"),
    ({"mqtt": {"topic": "plant/#"}}, "mqtt.topic", "wildcards"),
    ({"mqtt": {"cert_file": "c.pem"}}, "mqtt", "given together"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
    ({"significant_digits": float("nan")}, "significant_digits", ""),
    ({"windos": []}, "windos", "Extra inputs"),
])
def test_a_bad_section_is_refused_naming_the_key(section, key, message):
    with pytest.raises(ValidationError) as e:
        SyncConfig.model_validate(section)
    errors = e.value.errors()
    locs = [".".join(str(p) for p in err["loc"]) for err in errors]
    assert any(loc == key or (key == "" and loc == "") for loc in locs), locs
    assert any(message in err["msg"] for err in errors), [err["msg"] for err in errors]


def test_the_readme_samples_are_valid_sections():
    text = (ROOT / "appliance" / "sync" / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        data = tomllib.loads(block)
        cfg = SyncConfig.model_validate(data["outputs"]["sync"])
        assert cfg.enabled
