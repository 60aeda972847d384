"""The cloud uplink against real parts: a TLS Mosquitto with client certificates, the intake, SQLite.

A simulated pump (``firmware-sim``'s PumpModel) goes through the same hooks the
runtime calls (the store first, then the uplink), with faults injected so the
alarm book raises and clears real alarms. Windows are seconds long; every wait
is for an outcome, with a message naming it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.core import MitigationAction, Reading
from appliance.store import Store, StoreReader
from appliance.store.output import StoreOutput
from appliance.sync.config import SyncConfig
from appliance.sync.uplink import SyncError, SyncUplink, build
from tests.support.cloud import Spawner, cloud_peer, plugin_env
from tests.support.plant import Plant
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cloud(tmp_path):
    """The cloud broker and intake (``tests/support/cloud.py``)."""
    yield from cloud_peer(tmp_path / "cloud")


class Harness:
    """A store and an uplink fed by a :class:`Plant`, on the test's event loop."""

    def __init__(self, tmp: Path, cloud, transport_wrapper=None, https_url: str | None = None, **overrides):
        self.tmp = tmp
        self.store_path = tmp / "store.db"
        self.store = Store(self.store_path)
        self.store_out = StoreOutput(self.store)
        overrides["queue"] = {"path": str(tmp / "queue.db")}
        self.section = (cloud.https_config(https_url, **overrides) if https_url
                        else cloud.sync_config(**overrides))
        self.uplink: SyncUplink = build(self.section, plugin_env(self.store_path, tmp))
        if transport_wrapper is not None:
            inner = self.uplink._transport_factory
            self.uplink._transport_factory = lambda: transport_wrapper(inner())
        self.spawner = Spawner()
        self.plant = Plant([self.store_out, self.uplink])

    async def start(self) -> None:
        ctx = self.spawner.context()
        await self.store_out.start(ctx)
        await self.uplink.start(ctx)

    async def stop(self) -> None:
        await self.spawner.drain()
        await self.uplink.stop()
        await self.store_out.stop()

    def feed(self, episodes: int, before: int = 40, fault: int = 60, after: int = 40) -> None:
        for _ in range(episodes):
            self.plant.episode(before, fault, after)
        # The hooks run without yielding; make the store's copy complete before the
        # uplink's finalizer (which reads it) gets the loop.
        assert self.store.flush(60), "the store did not commit the fed readings"

    async def queued(self) -> None:
        """Wait until every episode fed so far is finalized into the queue."""
        up = self.uplink
        def detail() -> str:
            waits = {a: {"closing_since": e.closing_since, "ready_at": e.ready_at, "end": e.end,
                         "finalizing": e.finalizing} for a, e in up._closing.items()}
            return (f"steady now {up._steady():.2f}, newest {up._newest}, closing {waits}, "
                    f"last error {up.last_error!r}, tasks {len(self.spawner.tasks)}; "
                    + json.dumps(up.status(), default=str)[:800])

        await wait_until_async(lambda: not up._closing and not up._open_by_asset and not self.spawner.tasks,
                               timeout=60, what="every episode finalized into the upload queue", detail=detail)

    async def drained(self, what: str = "the upload queue to drain") -> None:
        up = self.uplink
        def detail() -> str:
            st = up.status()
            return json.dumps({"state": st["state"], "transport": st["transport"], "queue": st["queue"],
                               "recent_windows": st["recent_windows"][-4:], "last_error": up.last_error,
                               "window": {k: v for k, v in st["window"].items() if k != "recent"}}, default=str)

        await wait_until_async(lambda: up.status()["queue"]["items"] == 0 and up.queue.in_flight() == 0,
                               timeout=120, what=what, detail=detail)


def expected_keys(queue_keys: list[str]) -> set[str]:
    return set(queue_keys)


def assert_exactly_once(cloud, plant: Plant, store_path: Path, digits: int = SyncConfig().significant_digits) -> None:
    """Every alarm of the plant is upstream once, complete, with its readings as recorded."""
    episodes = cloud.store.episodes()
    assert [e["id"] for e in episodes] == plant.alarm_ids
    # A raised notice goes up only if a window came before its episode was complete.
    assert set(cloud.store.ids("raised")) <= {f"{a}:raised" for a in plant.alarm_ids}
    reader = StoreReader(store_path)
    for ep in episodes:
        assert cloud.store.complete(ep["id"]), f"episode {ep['id']} is missing context items"
        assert ep["asset"] == plant.asset and ep["end"] > ep["start"]
        kinds = [e["kind"] for e in ep["events"]]
        # An unacknowledged alarm that returned to normal is superseded by the next raise on its asset.
        assert kinds[0] == "raised" and "cleared" in kinds and set(kinds) <= {"raised", "cleared", "superseded"}
        assert ep["model_versions"] == ["m-1"] and ep["scores"]["n"] > 0
        top = max(ep["scores"]["contributions"].items(), key=lambda kv: kv[1]["mean"])[0]
        assert top == "Accelerometer1RMS"
        got = cloud.store.readings(ep["id"])
        ctx = ep["context"]
        recorded = list(reader.asset_readings(plant.asset, ctx["from"], ctx["to"]))
        assert sum(len(v) for v in got.values()) == len(recorded) == ctx["readings"]
        by_sensor: dict[str, list[Reading]] = {}
        for r in recorded:
            by_sensor.setdefault(r.sensor, []).append(r)
        for sensor, rows in by_sensor.items():
            up = got[sensor]
            assert len(up) == len(rows)
            scale = max(abs(r.value) for r in rows)
            for (ts, value), r in zip(up, rows):
                assert abs(ts - r.ts) <= 0.0005
                # digits significant digits of the column's largest magnitude
                assert abs(value - r.value) <= 0.5 * 10 ** (math.floor(math.log10(scale)) - digits + 1) + 1e-12
        assert cloud.store.scores(ep["id"]), "no score series"


# -- tests ------------------------------------------------------------------------------------------

def test_a_window_sends_every_anomaly_exactly_once_and_nothing_outside(tmp_path, cloud, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55word-never-logged"
    pw = tmp_path / "mqtt.password"
    pw.write_text(secret + "\n")
    pw.chmod(0o600)

    async def scenario():
        h = Harness(tmp_path, cloud, mqtt={"username": "appliance-test", "password_file": str(pw)})
        await h.start()
        try:
            h.feed(3)
            await h.queued()
            queued = h.uplink.queue.keys()
            assert set(h.plant.alarm_ids) <= set(queued) and len(h.plant.alarm_ids) == 3
            # No window yet: nothing goes up, however long it waits.
            await asyncio.sleep(2.0)
            assert cloud.store.stats()["batches"] == 0 and h.uplink.status()["uploaded"]["bytes"] == 0
            h.uplink.sync_now(60)
            await h.drained()
            await wait_until_async(lambda: set(cloud.store.ids()) == set(queued), timeout=60,
                                   what="every queued item stored by the intake")
            stats = cloud.store.stats()
            assert stats["duplicates"] == 0 and stats["stored"] == len(queued)
            status = h.uplink.status()
            assert status["uploaded"]["items"] == len(queued)
            assert status["uploaded"]["messages"] == stats["batches"]
            # The account is the MQTT packets: payloads plus each PUBLISH's header.
            assert stats["bytes"] < status["uploaded"]["bytes"] < stats["bytes"] + 200 * stats["batches"]
            assert status["observed"]["readings"] == h.plant.readings
            assert status["observed"]["raw_bytes"] == h.plant.raw_bytes
            # A second window has nothing to send and sends nothing twice.
            h.uplink.windows.end_window()
            await h.uplink.windows.wait_closed()
            h.uplink.sync_now(2)
            await h.uplink.windows.wait_closed()
            assert cloud.store.stats()["deliveries"] == stats["deliveries"]
        finally:
            await h.stop()
        assert_exactly_once(cloud, h.plant, h.store_path)

    asyncio.run(scenario())
    assert secret not in caplog.text


def test_scheduled_windows_send_only_while_open_and_resume_across_windows(tmp_path, cloud):
    publishes: list[tuple[bool, int]] = []
    state = {}

    class Recording:
        """The real transport, noting whether a window was open at each publish."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def send(self, payload, batch):
            publishes.append((state["uplink"].windows.is_open(), len(payload)))
            return await self.inner.send(payload, batch)

    async def scenario():
        # Windows of 1.5 s every 4 s, paced so the queue needs several of them.
        h = Harness(tmp_path, cloud, transport_wrapper=Recording, windows=[{"every_s": 4, "duration_s": 1.5}],
                    max_message_bytes=4096, budget_bytes_per_window=0, max_rate_bytes_per_s=1000,
                    close_grace_s=0.5)
        state["uplink"] = h.uplink
        await h.start()
        try:
            h.feed(3)
            await h.queued()
            # Windows run meanwhile: what is upstream already plus what waits is everything.
            expected = set(h.uplink.queue.keys()) | set(cloud.store.ids())
            await h.drained("the queue to drain through the scheduled windows")
            await wait_until_async(lambda: set(cloud.store.ids()) == expected, timeout=60,
                                   what="every queued item stored by the intake",
                                   detail=lambda: f"{cloud.store.stats()} {sorted(expected ^ set(cloud.store.ids()))}")
            recent = [w for w in h.uplink.status()["recent_windows"] if w["messages"]]
            assert len(recent) >= 2, f"expected the upload to span several windows, got {recent}"
            assert all(w["reason"].startswith(("schedule:", "startup:", "clock_step:")) for w in recent)
            assert sum(w["items"] for w in recent) == len(expected)
        finally:
            await h.stop()
        assert publishes and all(open_ for open_, _ in publishes), "a batch was published outside a window"
        assert cloud.store.stats()["duplicates"] == 0
        assert_exactly_once(cloud, h.plant, h.store_path)

    asyncio.run(scenario())


def test_broker_killed_mid_upload_the_next_window_completes(tmp_path, cloud, capsys):
    async def scenario():
        h = Harness(tmp_path, cloud, max_message_bytes=4096, budget_bytes_per_window=0, max_rate_bytes_per_s=4000,
                    close_grace_s=1.0)
        await h.start()
        try:
            h.feed(8)
            await h.queued()
            queued = h.uplink.queue.keys()
            h.uplink.sync_now(600)
            await wait_until_async(lambda: 0 < cloud.store.stats()["stored"], timeout=60,
                                   what="the first batches to arrive")
            cloud.kill_broker()
            stored_at_cut = cloud.store.stats()["stored"]
            assert stored_at_cut < len(queued), "the upload finished before the cut; pace it slower"
            await wait_until_async(lambda: not h.uplink.status()["transport"].get("connected"), timeout=60,
                                   what="the uplink to notice the cut")
            h.uplink.windows.end_window()
            await wait_until_async(lambda: h.uplink.status()["state"] == "waiting", timeout=60,
                                   what="the window to wind down")
            assert h.uplink.queue.in_flight() == 0 and h.uplink.queue.waiting() > 0
            cloud.start_broker()
            cloud.wait_ready()
            resumed = time.monotonic()
            h.uplink.sync_now(600)
            await h.drained("the next window to send the rest")
            with capsys.disabled():
                print(f"\nsync uplink, broker cut: {stored_at_cut}/{len(queued)} items stored at the cut; the next "
                      f"window finished the rest in {time.monotonic() - resumed:.2f} s "
                      f"(paced at {h.section.max_rate_bytes_per_s} B/s)")
            await wait_until_async(lambda: set(cloud.store.ids()) >= set(queued), timeout=60,
                                   what="every queued item stored by the intake")
        finally:
            await h.stop()
        assert set(cloud.store.ids()) == set(queued)
        assert_exactly_once(cloud, h.plant, h.store_path)

    asyncio.run(scenario())


def test_uploader_killed_with_sigkill_resumes_with_nothing_lost_or_twice(tmp_path, cloud, capsys):
    async def fill():
        h = Harness(tmp_path, cloud)
        await h.start()
        try:
            h.feed(8)
            await h.queued()
            return h, h.uplink.queue.keys()
        finally:
            await h.stop()

    h, queued = asyncio.run(fill())
    assert len(queued) >= 3 * 8
    section = cloud.sync_config(max_message_bytes=4096, budget_bytes_per_window=0, max_rate_bytes_per_s=4000)
    cfg = tmp_path / "sync.json"
    cfg.write_text(section.model_dump_json())
    cmd = [sys.executable, "-m", "tests.support.cloud", "uploader", "--config", str(cfg), "--store", str(h.store_path),
           "--queue", str(tmp_path / "queue.db"), "--window-s", "600"]

    def start():
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    first = start()
    try:
        wait_until(lambda: cloud.store.stats()["stored"] > 0 or first.poll() is not None, timeout=120,
                   what="the uploader process to deliver its first batches")
        assert first.poll() is None, f"uploader exited early: {first.communicate()}"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    stored_at_kill = cloud.store.stats()["stored"]
    assert 0 < stored_at_kill < len(queued), "the upload finished before the kill; pace it slower"
    second = start()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert "uploader: done" in out, out + err[-2000:]
    done = json.loads(out.split("uploader: done ", 1)[1].splitlines()[0])
    assert done["queue"]["items"] == 0
    wait_until(lambda: set(cloud.store.ids()) >= set(queued), timeout=60,
               what="every queued item stored by the intake after the restart")
    assert set(cloud.store.ids()) == set(queued)
    stats = cloud.store.stats()
    # At most the batches in flight at the kill come twice; the intake keeps one of each.
    assert stats["stored"] == len(queued)
    with capsys.disabled():
        print(f"\nsync uplink, kill -9: {stored_at_kill}/{len(queued)} items stored at the kill; after the restart "
              f"{stats['duplicates']} item(s) arrived twice and were stored once")
    assert_exactly_once(cloud, h.plant, h.store_path)


def test_a_window_budget_is_respected_and_alarms_go_first(tmp_path, cloud):
    budget = 8192
    async def scenario():
        h = Harness(tmp_path, cloud, max_message_bytes=4096, budget_bytes_per_window=budget)
        await h.start()
        try:
            h.feed(6)
            await h.queued()
            queued = h.uplink.queue.keys()
            total = h.uplink.status()["queue"]["bytes"]
            windows = 0
            while h.uplink.queue.waiting():
                windows += 1
                h.uplink.sync_now(600)
                await wait_until_async(lambda: h.uplink.status()["state"] in ("budget_exhausted", "window_idle"),
                                       timeout=60, what=f"window {windows} to spend its budget or empty the queue")
                sent = h.uplink.status()["window"]["sent_bytes"]
                assert 0 < sent <= budget
                if windows == 1:
                    # Alarms before context: every summary went in the first window, not all the context.
                    await wait_until_async(lambda: len(cloud.store.ids("episode")) == len(h.plant.alarm_ids),
                                           timeout=60, what="the episode summaries in the first window")
                    assert cloud.store.stats()["stored"] < len(queued)
                h.uplink.windows.end_window()
                await wait_until_async(lambda: h.uplink.status()["state"] == "waiting", timeout=60,
                                       what="the window to close")
            # The budget, not the queue, set the pace: it took as many windows as the bytes need.
            assert windows >= max(2, math.ceil(total / budget))
            per_window = [w["sent_bytes"] for w in h.uplink.status()["recent_windows"]]
            assert max(per_window) <= budget
        finally:
            await h.stop()
        assert set(cloud.store.ids()) == set(queued)
        assert_exactly_once(cloud, h.plant, h.store_path)

    asyncio.run(scenario())


def test_bytes_uploaded_against_raw_bytes_observed_on_a_simulated_hour(tmp_path, cloud, capsys):
    defaults = SyncConfig()

    async def scenario():
        # The shipped context and precision, not the short ones of the other tests.
        h = Harness(tmp_path, cloud, context_before_s=defaults.context_before_s,
                    context_after_s=defaults.context_after_s)
        await h.start()
        try:
            # One hour at 8 sensors x 1 Hz with three 2-minute faults.
            h.plant.hour()
            assert h.store.flush(60)
            await h.queued()
            h.uplink.sync_now(120)
            await h.drained()
            await wait_until_async(lambda: len(cloud.store.ids("episode")) == 3, timeout=60,
                                   what="the three episodes upstream")
            return h, h.uplink.status()
        finally:
            await h.stop()

    h, status = asyncio.run(scenario())
    raw, up = status["observed"]["raw_bytes"], status["uploaded"]["bytes"]
    assert status["observed"]["readings"] == 3600 * 8 == h.plant.readings and raw == h.plant.raw_bytes
    ratio = up / raw
    assert status["upload_ratio"] == pytest.approx(ratio)
    with capsys.disabled():
        print(f"\nsync uplink, simulated hour: raw_bytes={raw} uploaded_bytes={up} ratio={ratio:.4%} "
              f"messages={status['uploaded']['messages']} items={status['uploaded']['items']}")
    # The design papers promise a 95 % cut; the issue asks for under 1 % of the raw bytes.
    assert 0 < ratio < 0.01
    # The account reaches /metrics as the runtime merges it (outputs.<name> of the status).
    from web.metrics import render, status_registry

    text = render(status_registry(lambda: {"outputs": {"sync": status}})).decode()
    for key, value in (("upload_ratio", ratio), ("uploaded_bytes", up), ("observed_raw_bytes", raw)):
        line = f'appliance_component_stat{{component="output",key="{key}",name="sync"}} '
        assert line in text, text[-2000:]
        assert float(text.split(line, 1)[1].split()[0]) == pytest.approx(value)
    assert_exactly_once(cloud, h.plant, h.store_path)


def test_late_notes_and_actions_go_up_as_notes(tmp_path, cloud):
    async def scenario():
        h = Harness(tmp_path, cloud, context_after_s=5.0)
        await h.start()
        try:
            h.feed(1, after=20)
            alarm_id = h.plant.alarm_ids[0]
            # During the episode: a mitigation, audited as row 7 of the keyed chain (its head).
            h.uplink.on_action(MitigationAction("p-1", h.plant.t, "mitigate", "written", "system", "slow-down",
                                                h.plant.asset, alarm_id, "ns=2;s=Speed", 1.0, 0.6, "vibration",
                                                audit_seq=7, audit_hash="a" * 64))
            await h.queued()
            # Return-to-normal unacknowledged, then acknowledged with a note; then a revert is recorded.
            for event in h.plant.book.acknowledge(h.plant.asset, "ana", note="bearing replaced"):
                h.uplink.on_alarm_event(event)
            h.uplink.on_action(MitigationAction("p-1", h.plant.t, "revert", "written", "system", "slow-down",
                                                h.plant.asset, alarm_id, "ns=2;s=Speed", 0.6, 1.0, "alarm cleared",
                                                audit_seq=8, audit_hash="b" * 64))
            await h.spawner.drain()
            h.uplink.sync_now(60)
            await h.drained()
            await wait_until_async(lambda: len(cloud.store.ids("note")) == 2, timeout=60, what="two late notes")
        finally:
            await h.stop()
        notes = {n["kind"]: n["entry"] for n in cloud.store.items("note")}
        assert notes["acknowledged"]["note"] == "bearing replaced" and notes["acknowledged"]["user"] == "ana"
        assert notes["action"]["status"] == "written" and notes["action"]["kind"] == "revert"
        # The audit chain's head leaves the gateway: with each action, and in the episode.
        assert (notes["action"]["audit_seq"], notes["action"]["audit_hash"]) == (8, "b" * 64)
        (episode,) = cloud.store.items("episode")
        assert episode["audit_head"] == {"seq": 7, "hash": "a" * 64}
        assert episode["actions"][0]["audit_seq"] == 7

    asyncio.run(scenario())


def test_a_restart_resumes_an_open_episode(tmp_path, cloud):
    async def scenario():
        h = Harness(tmp_path, cloud)
        await h.start()
        h.plant.run(40)
        h.plant.model.inject("bearing_wear")
        h.plant.run(30, faulty=True)   # raised, still open
        assert h.store.flush(60)
        await h.spawner.drain()
        await h.stop()
        # The same plant (its alarm book keeps the open alarm, as the runtime restores it) and a new uplink.
        h2 = Harness(tmp_path, cloud)
        h2.plant = h.plant
        h2.plant.outputs = [h2.store_out, h2.uplink]
        await h2.store_out.start(h2.spawner.context())
        await h2.uplink.start(h2.spawner.context(open_alarm_ids={h.plant.alarm_ids[0]}))
        try:
            assert h2.uplink.status()["episodes"]["open"] == 1
            h2.plant.run(30, faulty=True)
            h2.plant.model.clear_faults()
            h2.plant.run(40)
            assert h2.store.flush(60)
            await h2.queued()
            h2.uplink.sync_now(60)
            await h2.drained()
            await wait_until_async(lambda: len(cloud.store.ids("episode")) == 1, timeout=60, what="the episode")
        finally:
            await h2.stop()
        assert_exactly_once(cloud, h2.plant, h2.store_path)

    asyncio.run(scenario())


def test_a_key_file_readable_by_others_is_refused_with_one_line(tmp_path, cloud):
    cloud.pki.client_key.chmod(0o644)
    try:
        with pytest.raises(SyncError) as e:
            build(cloud.sync_config(), plugin_env(tmp_path / "store.db", tmp_path))
    finally:
        cloud.pki.client_key.chmod(0o600)
    msg = str(e.value)
    assert "\n" not in msg and "outputs.sync.mqtt.key_file" in msg and "chmod 600" in msg and "0644" in msg
    assert "PRIVATE KEY" not in msg


def test_an_untrusted_client_certificate_is_reported_and_nothing_is_lost(tmp_path, cloud):
    async def scenario():
        h = Harness(tmp_path, cloud, mqtt={"cert_file": str(cloud.pki.rogue_cert),
                                           "key_file": str(cloud.pki.rogue_key)})
        await h.start()
        try:
            h.feed(1)
            await h.queued()
            waiting = h.uplink.queue.waiting()
            h.uplink.sync_now(60)
            await wait_until_async(lambda: h.uplink.status()["errors"] > 0, timeout=60,
                                   what="the refused connection to be reported")
            status = h.uplink.status()
            assert "127.0.0.1" in status["last_error"]
            assert h.uplink.queue.waiting() == waiting and cloud.store.stats()["batches"] == 0
        finally:
            await h.stop()

    asyncio.run(scenario())


def test_https_batches_carry_an_idempotency_key_and_arrive_once(tmp_path, cloud):
    url = cloud.start_https()
    sent: list[tuple[bytes, list]] = []

    class Keeping:
        """The real HTTPS transport, keeping each batch it sent."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def send(self, payload, batch):
            await self.inner.send(payload, batch)
            sent.append((payload, batch))

    async def scenario():
        h = Harness(tmp_path, cloud, transport_wrapper=Keeping, https_url=url, max_message_bytes=4096)
        await h.start()
        try:
            h.feed(3)
            await h.queued()
            queued = h.uplink.queue.keys()
            h.uplink.sync_now(60)
            await h.drained()
            assert set(cloud.store.ids()) == set(queued)
            # The same batch again (a lost answer, a retry): answered from its key, nothing stored twice.
            payload, batch = sent[0]
            await h.uplink._transport_factory().send(payload, batch)
        finally:
            await h.stop()
        assert cloud.https.replays == 1
        assert cloud.store.stats()["duplicates"] == 0
        assert h.uplink.status()["transport"]["kind"] == "https"
        assert_exactly_once(cloud, h.plant, h.store_path)

    asyncio.run(scenario())


def test_mqtt_5_with_a_session_expiry_delivers_too(tmp_path, cloud):
    async def scenario():
        h = Harness(tmp_path, cloud, mqtt={"protocol": "5", "session_expiry_s": 3600})
        await h.start()
        try:
            h.feed(1)
            await h.queued()
            h.uplink.sync_now(60)
            await h.drained()
            await wait_until_async(lambda: len(cloud.store.ids("episode")) == 1, timeout=60, what="the episode")
        finally:
            await h.stop()
        assert_exactly_once(cloud, h.plant, h.store_path)

    asyncio.run(scenario())


def test_the_intake_reads_both_batch_encodings_and_refuses_damage():
    from firmware_sim.cloud_intake import unpack
    from appliance.sync.episodes import compress
    from appliance.sync.queue import Item
    from appliance.sync.uplink import frame

    docs = [{"id": f"ep:r:{i}", "type": "readings", "sensors": {"Current": {"dv": [1, 2, 3]}}} for i in range(3)]
    items = [Item(d["id"], 1, "readings", "ep", compress(d)) for d in docs]
    joint, single = frame(items), frame(items, room=1)
    assert joint[:4] == b"AEU2" and single[:4] == b"AEU1" and len(joint) < len(single)
    for payload in (joint, single):
        assert unpack(payload) == [(d["id"], d) for d in docs]
    with pytest.raises(ValueError, match="zlib"):
        unpack(b"AEU2" + b"\x00not zlib")
    with pytest.raises(ValueError, match="truncated"):
        unpack(single[:-3])
    with pytest.raises(ValueError, match="magic"):
        unpack(b"XXXX")


def test_bytes_paho_resends_after_a_reconnect_count_against_the_window():
    import ssl

    from appliance.sync.config import SyncMqttConfig
    from appliance.sync.uplink import MqttTransport

    async def scenario():
        t = MqttTransport(SyncMqttConfig(host="127.0.0.1", port=8883), "gw-1", "anomalies/gw-1",
                          ssl.create_default_context())
        t._loop = asyncio.get_running_loop()
        resent: list[int] = []
        t.on_resend = resent.append
        t._connected(True, "Success", False)          # the first connection: nothing to resend
        t._wire = {7: 1200, 8: 800}                     # two PUBLISHes without PUBACK
        t._disconnected("keepalive timeout")
        t._connected(True, "Success", True)            # paho sends both again now
        t._wire.pop(7)
        t._disconnected("again")
        t._connected(True, "Success", True)
        return resent, t.disconnects

    resent, disconnects = asyncio.run(scenario())
    assert resent == [2000, 800] and disconnects == 2
