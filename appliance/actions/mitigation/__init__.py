"""Output plugin ``[outputs.mitigation]``: guarded, audited PLC writes (see README.md)."""

import logging

log = logging.getLogger(__name__)


def build(section, env):
    """A mitigation output writing over its own OPC-UA session.

    The PLC is ``section.plc``, else ``[connections.opcua]``; relative certificate
    paths resolve against ``data_dir``.
    """
    from appliance.actions.mitigation.mitigator import Mitigator
    from appliance.actions.mitigation.output import MitigationOutput
    from appliance.connections.opcua import PlcSession

    plc = section.plc or env.config.connections.opcua
    return MitigationOutput(Mitigator(section, env.data_dir, PlcSession(plc, base_dir=env.data_dir),
                                      close_writer=True))
