"""Output plugin ``[outputs.sparkplug]``: the appliance as a Sparkplug B edge node (see README.md)."""


def build(section, env):
    from appliance import __version__
    from appliance.actions.sparkplug.output import SparkplugOutput

    return SparkplugOutput(section, section.broker or env.config.connections.mqtt,
                           bdseq_path=env.path(section.bdseq_file),
                           store_path=env.path(env.config.store.path),
                           appliance_version=__version__, model_version=env.model_version)
