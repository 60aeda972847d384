"""Input plugins: each turns one protocol into readings (see base.Connector)."""
