"""Output plugin ``[outputs.history]``: InfluxDB behind a durable outbox, plus local history.

See ``README.md`` in this package for the configuration and the guarantees.
"""


def build(section, env):
    from appliance.history.output import HistoryOutput
    from appliance.history.sink import History

    return HistoryOutput(History(section, env.data_dir))
