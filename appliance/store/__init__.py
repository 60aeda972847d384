"""The local store (SQLite, WAL): the gateway's source of truth, and the output that fills it.

It owns its schema: every other part reads and writes through :class:`Store`'s
methods, never with SQL of its own. See README.md.
"""

from appliance.store.comments import AlarmComment, CommentError
from appliance.store.store import Store, StoreReader, StoreUnavailable, import_comments, open_reader

__all__ = ["AlarmComment", "CommentError", "Store", "StoreReader", "StoreUnavailable", "import_comments", "open_reader"]
