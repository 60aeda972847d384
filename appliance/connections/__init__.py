"""Connections an input and an output share: one MQTT broker, one OPC-UA endpoint.

The MQTT input and the MQTT alarm notifier speak to the same broker; the OPC-UA
input and PLC mitigation speak to the same PLC. Their settings
(``[connections.mqtt]``, ``[connections.opcua]``) and the code that opens a
session from them live here, so no output imports an input.
"""
