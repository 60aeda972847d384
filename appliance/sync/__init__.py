"""Cloud sync in scheduled connectivity windows: anomalies up, signed models in.

* ``uplink.py`` is the ``[outputs.sync]`` output: alarm episodes with their context,
  queued durably (``queue.py``, ``episodes.py``) and sent only inside the windows of
  ``windows.py``, over MQTT/TLS or HTTPS (``transports.py``; batches as ``framing.py``
  packs them; README.md).
* ``updates.py``, ``tuf_fetcher.py`` and ``trust.py`` take signed model releases
  (The Update Framework); ``models.py`` hands a verified one, and every update pass
  and refusal, to the model's lifecycle (``appliance/lifecycle/``, docs/updates.md).
  The engineer's side is ``appliance/release/``.
"""
