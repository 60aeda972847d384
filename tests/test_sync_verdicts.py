"""Verdicts reach the cloud once: given while the alarm is open, after its episode went up, changed, and
across a restart of the uplink (a real TLS Mosquitto and the intake, as in tests/test_sync_uplink.py).

The decision tested here (see appliance/sync/episodes.py): each verdict the store holds
goes up as an item of its own, keyed by the episode and the verdict's seq in the store, and
the uplink's cursor over the store's verdicts is saved in the same transaction as the items
it queued, so nothing is queued twice and nothing is skipped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.store import Store
from appliance.store.output import StoreOutput
from appliance.sync.uplink import SyncUplink, build
from tests.support.cloud import Spawner, cloud_peer, plugin_env
from tests.support.plant import Plant
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud(tmp_path):
    yield from cloud_peer(tmp_path / "cloud")


class Gateway:
    """A store and an uplink fed by a simulated pump, on the test's event loop."""

    def __init__(self, tmp: Path, cloud, plant: Plant | None = None):
        self.store = Store(tmp / "store.db")
        self.store_out = StoreOutput(self.store)
        section = cloud.sync_config(queue={"path": str(tmp / "queue.db")}, context_after_s=5.0)
        self.uplink: SyncUplink = build(section, plugin_env(tmp / "store.db", tmp))
        self.spawner = Spawner()
        self.plant = plant or Plant([])
        self.plant.outputs = [self.store_out, self.uplink]

    async def start(self) -> None:
        await self.store_out.start(self.spawner.context())
        await self.uplink.start(self.spawner.context())

    async def stop(self) -> None:
        await self.spawner.drain()
        await self.uplink.stop()
        await self.store_out.stop()

    async def verdict(self, alarm_id: str, user: str, verdict: str, cause: str | None = None) -> None:
        """As the dashboard gives it: the store's command, answered once committed."""
        await self.store_out.commands()["set_verdict"](alarm_id=alarm_id, asset=self.plant.asset, user=user,
                                                       verdict=verdict, cause=cause)

    async def upload(self, cloud, verdicts: int) -> None:
        """Open a window and wait until the cloud holds ``verdicts`` verdict items and the queue is empty."""
        self.uplink.sync_now(60)
        up = self.uplink
        await wait_until_async(lambda: len(cloud.store.ids("verdict")) == verdicts and
                               up.status()["queue"]["items"] == 0 and up.queue.in_flight() == 0,
                               timeout=120, what=f"{verdicts} verdicts in the cloud and an empty queue",
                               detail=lambda: f"cloud {cloud.store.stats()}, uplink {up.status()['queue']}")


def test_verdicts_given_early_late_and_changed_reach_the_cloud_once(tmp_path, cloud):
    async def scenario():
        gw = Gateway(tmp_path, cloud)
        await gw.start()
        try:
            gw.plant.run(40)
            gw.plant.model.inject("bearing_wear")
            gw.plant.run(30, faulty=True)  # raised, still open
            assert gw.store.flush(60)
            alarm_id = gw.plant.alarm_ids[0]
            await gw.verdict(alarm_id, "ana", "fault", "bearing")  # given while the alarm is open
            gw.plant.model.clear_faults()
            gw.plant.run(40)
            assert gw.store.flush(60)
            await wait_until_async(lambda: not gw.uplink._closing and not gw.uplink._open_by_asset,
                                   timeout=60, what="the episode finalized into the queue")
            await gw.upload(cloud, 1)
            assert len(cloud.store.ids("episode")) == 1
            # After the episode went up: a colleague disagrees, and ana changes hers.
            await gw.verdict(alarm_id, "bo", "false_alarm")
            await gw.verdict(alarm_id, "ana", "maintenance")
            await gw.upload(cloud, 3)
        finally:
            await gw.stop()
        # A restart: the cursor was saved with the items; nothing goes up again.
        gw2 = Gateway(tmp_path, cloud, plant=gw.plant)
        await gw2.start()
        try:
            assert await gw2.uplink._forward_verdicts() == 0
            assert gw2.uplink.status()["verdicts_queued_up_to"] == 3
            await gw2.verdict(alarm_id, "bo", "fault", "sensor")
            await gw2.upload(cloud, 4)
        finally:
            await gw2.stop()
        got = sorted(cloud.store.items("verdict"), key=lambda v: v["seq"])
        assert [(v["episode"], v["user"], v["verdict"], v["cause"]) for v in got] == [
            (alarm_id, "ana", "fault", "bearing"), (alarm_id, "bo", "false_alarm", None),
            (alarm_id, "ana", "maintenance", None), (alarm_id, "bo", "fault", "sensor")]
        assert cloud.store.stats()["items_by_type"]["verdict"] == 4
        assert [e["id"] for e in cloud.store.episodes()] == [alarm_id]

    asyncio.run(scenario())
