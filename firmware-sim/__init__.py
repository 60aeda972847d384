"""Simulated sensor firmware and PLC for the appliance (installed as ``firmware_sim``).

``pump`` is the process model, ``publisher``/``replay`` publish over MQTT,
``plc`` serves the model over OPC-UA, ``cli`` is the ``appliance-sim`` command.
"""
