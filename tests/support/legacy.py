"""Bundles as older appliance versions wrote them, for compatibility tests."""

from __future__ import annotations

import numpy as np
import onnx


def with_window_shaped_io(path, window: int, n_sensors: int) -> None:
    """Rewrite a flat model the way format 1-2 bundles were exported: (N, window, sensors) in and out."""
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(str(path))
    g = model.graph
    w, s = window, n_sensors
    for node in g.node:
        node.input[:] = ["x_flat" if i == "x" else i for i in node.input]
        node.output[:] = ["recon_flat" if o == "recon" else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.array([-1, w * s], dtype=np.int64), "flat_shape"),
                          numpy_helper.from_array(np.array([-1, w, s], dtype=np.int64), "window_shape")])
    g.node.insert(0, helper.make_node("Reshape", ["x", "flat_shape"], ["x_flat"], name="flatten"))
    g.node.append(helper.make_node("Reshape", ["recon_flat", "window_shape"], ["recon"], name="unflatten"))
    for vi in (g.input[0], g.output[0]):
        del vi.type.tensor_type.shape.dim[:]
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, TensorProto.FLOAT, ["N", w, s]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

