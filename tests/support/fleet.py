"""A fleet run with honest and lying clients as processes: :mod:`rigs.fleet_run`, shared with the poisoning benchmark."""

from rigs.fleet_run import FleetRun  # noqa: F401
from rigs.pump_rows import operating_point, write_csv  # noqa: F401
