"""Input plugins: one folder each (code, ``config.py``, README.md); interface :class:`appliance.core.Input`."""
