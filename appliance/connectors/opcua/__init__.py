"""Input plugin ``[inputs.opcua]``: subscriptions to a PLC's variables (see README.md)."""


def build(section, env):
    from appliance.connectors.opcua.connector import OpcuaConnector

    return OpcuaConnector(section, env.config.connections.opcua, base_dir=env.data_dir, clock=env.clock)
