"""The model's life on a gateway: one package that the runtime, the sync, the fleet and the CLI go through.

* ``life.py``: :class:`~appliance.lifecycle.life.ModelLifecycle`: shadow, promotion,
  probation, rollback, the engineer's model commands, the record of updates and
  refusals;
* ``shadow.py``: the shadow run's judgement (:class:`~appliance.lifecycle.shadow.ShadowRun`,
  :class:`~appliance.lifecycle.shadow.Probation`, ``[outputs.sync.shadow]`` bounds);
* ``active.py``: which bundle loads at the next start (``active_model.json``).

The runtime owns the live detector and swaps it when told; it forwards scored
windows and raises here. Nothing in this package trains (it is on the live path);
this file imports nothing, so a config check that reads ``ShadowBounds`` loads no more.
"""
