"""Rigs the tests and the benchmarks both drive: real peers and the harness around an output.

* ``cloud.py``: the cloud an uplink talks to (a TLS Mosquitto requiring client certificates,
  and the intake);
* ``victoria.py``: a VictoriaMetrics server on a free loopback port (the history's peer);
* ``tls_server.py``: a TLS static file server with a CA of its own (the model repository's host);
* ``browser.py``: Debian's headless Chromium and its arguments;
* ``outputs.py``, ``plant.py``, ``feeder.py``: an output run outside the runtime, a simulated
  pump feeding its hooks, a thread submitting readings as an input does;
* ``store_peek.py``: counting rows of a store another process writes;
* ``appliance.py``: a real appliance built from config, and a publisher feeding it;
* ``wait.py``: waiting for an outcome, never for a fixed time (the one ``wait_until``);
* ``tahu_edge.py``: Eclipse Tahu's Sparkplug B edge node (``tahu/edge_node.js``, Node.js) as a process;
* ``pump_rows.py``, ``fleet_attacker.py``: the pump-like rows the detector and fleet tests train
  on, and a fleet client that lies (NaN, shapes, 10^9 windows, a high threshold ...).

Not part of the product (not packaged; ``appliance/`` and ``web/`` never import it), and
never importing ``tests/``: ``tests/support/`` re-exports what the tests take from here
and adds the pytest fixtures, ``benchmarks/`` import it directly
(``tests/test_architecture.py`` checks both rules). The broker and ``free_port`` are the
appliance's own (``appliance/broker.py``, used by ``appliance demo``).
"""
