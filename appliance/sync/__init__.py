"""Cloud sync during scheduled connectivity windows (anomaly upload, signed model pull).

Not built yet (issue 11). It will be an output (the cloud uplink) and a model
updater of its own, plugged in through :mod:`appliance.registry` like the others.
"""
