"""History: InfluxDB sink behind a durable store-and-forward outbox, plus local history.

See ``README.md`` in this package for the configuration and the guarantees.
"""

from appliance.history.lineproto import Kind
from appliance.history.sink import History, HistoryError

__all__ = ["History", "HistoryError", "Kind"]
