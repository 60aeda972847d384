"""The cloud the uplink tests talk to: :class:`rigs.cloud.CloudPeer` (a second Mosquitto with TLS and client
certificates, and the intake), with the ``[outputs.sync]`` sections the tests use.

The ``cloud`` fixture starts Mosquitto on a free loopback port with
``require_certificate true`` and the intake (``firmware-sim/cloud_intake.py``)
subscribed to it, and hands out :class:`Cloud`, which also builds validated
``[outputs.sync]`` sections that point at it.

Run as a program, this module is an uploader in a process of its own (the
kill -9 test)::

    python -m tests.support.cloud uploader --config sync.json --store S --queue Q --site SITE --window-s N

It prints ``uploader: window open`` once started and ``uploader: done {status}``
when its queue is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

from appliance.broker import find_mosquitto
from appliance.sync.config import SyncConfig
from rigs.cloud import CloudPeer
from rigs.outputs import Spawner, plugin_env  # noqa: F401  (the tests take them from here)

# The context the tests' episodes keep: short, so a test's plant runs a few minutes of simulated time.
TEST_CONTEXT = {"context_before_s": 30.0, "context_after_s": 10.0}


class Cloud(CloudPeer):
    """The cloud, with validated ``[outputs.sync]`` sections for the tests."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, client_id="appliance-test")

    def sync_config(self, **overrides) -> SyncConfig:
        """An ``[outputs.sync]`` section for this cloud (MQTT, the appliance's client certificate)."""
        return SyncConfig.model_validate(self.sync_section(**(TEST_CONTEXT | overrides)))

    def https_config(self, url: str, **overrides) -> SyncConfig:
        """An ``[outputs.sync]`` section sending to the HTTPS intake."""
        return SyncConfig.model_validate(self.https_section(url, **(TEST_CONTEXT | overrides)))


def cloud_peer(workdir: Path) -> Iterator[Cloud]:
    """Start the cloud in ``workdir``, hand it out, stop it (the body of the ``cloud`` fixture)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto)")
    c = Cloud(workdir)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def cloud(tmp_path):
    """A TLS Mosquitto requiring client certificates, with the intake subscribed: a :class:`Cloud`."""
    yield from cloud_peer(tmp_path / "cloud")


# -- an uplink in a process of its own (the kill -9 test) -------------------------------------

def uploader_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tests.support.cloud")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("uploader")
    u.add_argument("--config", required=True, help="JSON of an [outputs.sync] section")
    u.add_argument("--store", required=True)
    u.add_argument("--queue", required=True)
    u.add_argument("--site", default="test-site")
    u.add_argument("--window-s", type=float, default=600.0)
    args = p.parse_args(argv)

    from appliance.sync.uplink import build

    section = SyncConfig.model_validate(json.loads(Path(args.config).read_text())
                                        | {"queue": {"path": str(Path(args.queue).resolve())}})

    async def run() -> None:
        spawner = Spawner()
        uplink = build(section, plugin_env(Path(args.store), Path(args.queue).parent, args.site))
        await uplink.start(spawner.context())
        uplink.sync_now(args.window_s)
        print("uploader: window open", flush=True)
        while True:
            s = uplink.status()
            if s["queue"]["items"] == 0 and s["queue"]["in_flight"] == 0:
                break
            if not s["window"]["open"]:
                break
            await asyncio.sleep(0.05)
        await spawner.drain()
        status = uplink.status()
        await uplink.stop()
        print("uploader: done " + json.dumps({"queue": status["queue"], "uploaded": status["uploaded"]}),
              flush=True)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(uploader_main(sys.argv[1:]))
