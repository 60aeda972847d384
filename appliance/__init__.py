"""Industrial IoT anomaly-detection appliance."""

__version__ = "0.1.0"
