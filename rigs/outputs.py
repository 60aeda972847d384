"""Running an output outside the runtime, as the uplink's tests and the sync benchmark do.

:class:`Spawner` is ``OutputContext.spawn`` as the runtime does it; :func:`plugin_env`
the part of a :class:`~appliance.core.PluginEnv` an output's factory reads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from appliance.core import OutputContext, PluginEnv


class Spawner:
    """``OutputContext.spawn`` as the runtime does it: tasks kept until they finish, awaited at the end."""

    def __init__(self):
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def context(self, open_alarm_ids=frozenset()) -> OutputContext:
        return OutputContext(open_alarm_ids=frozenset(open_alarm_ids), publish_action=lambda action: None,
                             spawn=self.spawn)


def plugin_env(store_path: Path, data_dir: Path, site: str = "test-site") -> PluginEnv:
    """The part of a PluginEnv the uplink's factory reads: the site and the store's path."""
    config = SimpleNamespace(site=site, store=SimpleNamespace(path=str(store_path)))
    return PluginEnv(config=config, data_dir=data_dir, sensors=())
