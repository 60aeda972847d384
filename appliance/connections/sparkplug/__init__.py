"""Sparkplug B (Eclipse Sparkplug 3.0) shared by the Sparkplug input and output: payload schema, topics, values.

The input (``appliance.connectors.sparkplug``) reads edge nodes as a host
application; the output (``appliance.actions.sparkplug``) publishes the appliance
as an edge node. Both speak through these modules, so neither imports the other.
"""

from appliance.connections.sparkplug.metrics import DataType, numeric_value, quality_of
from appliance.connections.sparkplug.schema import Metric, Payload
from appliance.connections.sparkplug.topics import MessageType, Topic, TopicError, node_topic, parse_topic, state_topic

__all__ = ["DataType", "MessageType", "Metric", "Payload", "Topic", "TopicError", "node_topic", "numeric_value",
           "parse_topic", "quality_of", "state_topic"]
