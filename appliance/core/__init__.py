"""The small typed core every part of the appliance shares: records and plugin interfaces.

Nothing here imports another part of the appliance, so every part can import it.
Timestamps (``ts``) are UNIX seconds (UTC, float) taken from the source.
"""

from appliance.core.detector import BundleInfo, Detector
from appliance.core.plugins import (HOOKS, AckCallback, IngestSink, Input, ModelDesk, Output, OutputContext,
                                    PluginEnv, PluginError, overrides)
from appliance.core.records import (Alarm, AlarmEvent, AlarmState, Counters, DeadLetter, DeadLetterCode,
                                    EventKind, Level, MitigationAction, ModeChange, ModelChange, OperatingPointChange,
                                    PointMode, Quality,
                                    Reading, Score, SensorHealth, Window)

__all__ = [
    "HOOKS", "AckCallback", "Alarm", "AlarmEvent", "AlarmState", "BundleInfo", "Counters", "DeadLetter",
    "DeadLetterCode", "Detector", "EventKind", "IngestSink", "Input", "Level", "MitigationAction", "ModeChange",
    "ModelChange", "ModelDesk", "OperatingPointChange", "Output", "OutputContext", "PluginEnv", "PluginError", "PointMode", "Quality", "Reading", "Score", "SensorHealth", "Window", "overrides",
]
