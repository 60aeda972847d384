"""A real appliance (built from config, as `appliance run` does): :mod:`rigs.appliance`, shared with the benchmarks."""

from rigs.appliance import Publisher, RunningAppliance, make_config, wait_online  # noqa: F401
