"""Collection rules for the doctests under appliance/ (``--doctest-modules``).

The fleet's Flower client and server import flwr at the top; without the fleet extra
(Python 3.10, where Flower 1.42 does not install) their doctests cannot be collected,
and the fleet tests skip themselves (``pytest.importorskip``).
"""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("flwr") else ["appliance/fleet/client.py", "appliance/fleet/server.py"]
