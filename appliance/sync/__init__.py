"""Cloud sync during scheduled connectivity windows (anomaly upload, signed model pull).

Not built yet: no issue for it is open. The local store already keeps what it
will upload (alarms with stable ids, scores), so adding it changes no other part.
"""
