"""The Sparkplug B payload schema (Eclipse Sparkplug 3.0, ``org.eclipse.tahu.protobuf.Payload``), built at import.

The schema is declared here field by field, as the specification's protobuf
definition gives it (names, numbers, types, ``oneof`` groups), and turned into
message classes by the ``protobuf`` runtime's descriptor pool: no ``protoc``, no
generated module to keep in step with the runtime's version, the same classes on
protobuf 6 and 7. The wire format is what matters, and the interoperability tests
check it against Eclipse Tahu's own JavaScript encoder and decoder.

>>> p = Payload(seq=3, timestamp=1_700_000_000_000)
>>> m = p.metrics.add(name="temp", alias=1, datatype=10, double_value=21.5)
>>> back = Payload.FromString(p.SerializeToString())
>>> back.seq, back.metrics[0].name, back.metrics[0].WhichOneof("value"), back.metrics[0].double_value
(3, 'temp', 'double_value', 21.5)
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "org.eclipse.tahu.protobuf"
_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, message type or None, oneof name or None)
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_U32, _U64, _FLT, _DBL, _BOOL, _STR, _BYTES, _MSG = (_F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_FLOAT, _F.TYPE_DOUBLE,
                                                    _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE)


def _scalar_oneof(first: int, extension: str) -> list[tuple]:
    """The ``value`` oneof that templates' parameters, data set cells and property values share."""
    names = ["int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"]
    types = [_U32, _U64, _FLT, _DBL, _BOOL, _STR]
    fields = [(n, first + i, t, _OPT, None, "value") for i, (n, t) in enumerate(zip(names, types))]
    return fields + [("extension_value", first + len(names), _MSG, _OPT, extension, "value")]


# Message path (under Payload) -> (fields, first field number of its extension range or None).
_MESSAGES: dict[str, tuple[list[tuple], int | None]] = {
    "Payload.Template.Parameter.ParameterValueExtension": ([], 1),
    "Payload.Template.Parameter": ([("name", 1, _STR, _OPT, None, None), ("type", 2, _U32, _OPT, None, None)]
                                   + _scalar_oneof(3, "Payload.Template.Parameter.ParameterValueExtension"), None),
    "Payload.Template": ([("version", 1, _STR, _OPT, None, None), ("metrics", 2, _MSG, _REP, "Payload.Metric", None),
                          ("parameters", 3, _MSG, _REP, "Payload.Template.Parameter", None),
                          ("template_ref", 4, _STR, _OPT, None, None), ("is_definition", 5, _BOOL, _OPT, None, None)],
                         6),
    "Payload.DataSet.DataSetValue.DataSetValueExtension": ([], 1),
    "Payload.DataSet.DataSetValue": (_scalar_oneof(1, "Payload.DataSet.DataSetValue.DataSetValueExtension"), None),
    "Payload.DataSet.Row": ([("elements", 1, _MSG, _REP, "Payload.DataSet.DataSetValue", None)], 2),
    "Payload.DataSet": ([("num_of_columns", 1, _U64, _OPT, None, None), ("columns", 2, _STR, _REP, None, None),
                         ("types", 3, _U32, _REP, None, None), ("rows", 4, _MSG, _REP, "Payload.DataSet.Row", None)],
                        5),
    "Payload.PropertyValue.PropertyValueExtension": ([], 1),
    "Payload.PropertyValue": ([("type", 1, _U32, _OPT, None, None), ("is_null", 2, _BOOL, _OPT, None, None)]
                              + _scalar_oneof(3, "Payload.PropertyValue.PropertyValueExtension")[:6]
                              + [("propertyset_value", 9, _MSG, _OPT, "Payload.PropertySet", "value"),
                                 ("propertysets_value", 10, _MSG, _OPT, "Payload.PropertySetList", "value"),
                                 ("extension_value", 11, _MSG, _OPT, "Payload.PropertyValue.PropertyValueExtension",
                                  "value")], None),
    "Payload.PropertySet": ([("keys", 1, _STR, _REP, None, None),
                             ("values", 2, _MSG, _REP, "Payload.PropertyValue", None)], 3),
    "Payload.PropertySetList": ([("propertyset", 1, _MSG, _REP, "Payload.PropertySet", None)], 2),
    "Payload.MetaData": ([("is_multi_part", 1, _BOOL, _OPT, None, None), ("content_type", 2, _STR, _OPT, None, None),
                          ("size", 3, _U64, _OPT, None, None), ("seq", 4, _U64, _OPT, None, None),
                          ("file_name", 5, _STR, _OPT, None, None), ("file_type", 6, _STR, _OPT, None, None),
                          ("md5", 7, _STR, _OPT, None, None), ("description", 8, _STR, _OPT, None, None)], 9),
    "Payload.Metric.MetricValueExtension": ([], 1),
    "Payload.Metric": ([("name", 1, _STR, _OPT, None, None), ("alias", 2, _U64, _OPT, None, None),
                        ("timestamp", 3, _U64, _OPT, None, None), ("datatype", 4, _U32, _OPT, None, None),
                        ("is_historical", 5, _BOOL, _OPT, None, None), ("is_transient", 6, _BOOL, _OPT, None, None),
                        ("is_null", 7, _BOOL, _OPT, None, None), ("metadata", 8, _MSG, _OPT, "Payload.MetaData", None),
                        ("properties", 9, _MSG, _OPT, "Payload.PropertySet", None),
                        ("int_value", 10, _U32, _OPT, None, "value"), ("long_value", 11, _U64, _OPT, None, "value"),
                        ("float_value", 12, _FLT, _OPT, None, "value"),
                        ("double_value", 13, _DBL, _OPT, None, "value"),
                        ("boolean_value", 14, _BOOL, _OPT, None, "value"),
                        ("string_value", 15, _STR, _OPT, None, "value"),
                        ("bytes_value", 16, _BYTES, _OPT, None, "value"),
                        ("dataset_value", 17, _MSG, _OPT, "Payload.DataSet", "value"),
                        ("template_value", 18, _MSG, _OPT, "Payload.Template", "value"),
                        ("extension_value", 19, _MSG, _OPT, "Payload.Metric.MetricValueExtension", "value")], None),
    "Payload": ([("timestamp", 1, _U64, _OPT, None, None), ("metrics", 2, _MSG, _REP, "Payload.Metric", None),
                 ("seq", 3, _U64, _OPT, None, None), ("uuid", 4, _STR, _OPT, None, None),
                 ("body", 5, _BYTES, _OPT, None, None)], 6),
}


def _message(path: str, fields: list[tuple], extensions_from: int | None) -> descriptor_pb2.DescriptorProto:
    msg = descriptor_pb2.DescriptorProto(name=path.rsplit(".", 1)[-1])
    oneofs: list[str] = []
    for name, number, ftype, label, type_name, oneof in fields:
        field = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            field.type_name = f".{PACKAGE}.{type_name}"
        if oneof:
            if oneof not in oneofs:
                oneofs.append(oneof)
                msg.oneof_decl.add(name=oneof)
            field.oneof_index = oneofs.index(oneof)
    if extensions_from is not None:
        msg.extension_range.add(start=extensions_from, end=536870912)  # "to max"
    return msg


def _file() -> descriptor_pb2.FileDescriptorProto:
    """The schema as one file descriptor, nested messages placed under their parents."""
    built = {path: _message(path, fields, ext) for path, (fields, ext) in _MESSAGES.items()}
    for path in sorted(built, key=lambda p: -p.count(".")):  # deepest first, so children are complete
        if "." in path:
            built[path.rsplit(".", 1)[0]].nested_type.append(built[path])
    return descriptor_pb2.FileDescriptorProto(name="appliance/sparkplug_b.proto", package=PACKAGE, syntax="proto2",
                                              message_type=[built["Payload"]])


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Payload = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Payload"))
Metric = Payload.Metric
