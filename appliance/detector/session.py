"""The ONNX Runtime side of a model: sessions and reconstructions, nothing that trains or quantizes.

This module is on the live scoring path (:mod:`appliance.detector.scorer`) and
is shared with training and the INT8 check (:mod:`appliance.detector.quantize`),
so it imports ONNX Runtime's inference API only: never scikit-learn, never
``onnxruntime.quantization``. The gateway then loads neither the training
stack nor the quantization toolchain just to score windows.

>>> from onnx import TensorProto, helper
>>> graph = helper.make_graph([helper.make_node("Identity", [ONNX_INPUT], [ONNX_OUTPUT])], "id",
...     [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["N", 6])],
...     [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["N", 6])])
>>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
>>> model.ir_version = 8
>>> session = make_session(model.SerializeToString())
>>> takes_flat_windows(session)
True
>>> windows = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
>>> sensor_errors(session, windows).tolist()
[[0.0, 0.0], [0.0, 0.0]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

# Names of the model's input and output in every bundle's ONNX graphs.
ONNX_INPUT = "x"
ONNX_OUTPUT = "recon"


def make_session(model: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session for the gateway: fixed thread count, sequential, no spinning.

    Spinning threads would burn the second core of a 2-core gateway that the
    ingest and the broker need.
    """
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])


def takes_flat_windows(session: ort.InferenceSession) -> bool:
    """Format-3 models take ``(n, window * sensors)``; older bundles ``(n, window, sensors)``."""
    return len(session.get_inputs()[0].shape) == 2


def reconstruct(session: ort.InferenceSession, windows: np.ndarray, flat: bool) -> np.ndarray:
    """The model's reconstruction of C-contiguous float32 ``(n, window, sensors)`` windows."""
    feed = windows.reshape(len(windows), -1) if flat else windows
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: feed})[0].reshape(windows.shape)


def run_reconstruction(session: ort.InferenceSession, windows: np.ndarray,
                       batch: int = 4096) -> np.ndarray:
    """:func:`reconstruct` over any number of windows, in batches (bounded memory per ``run``)."""
    flat = takes_flat_windows(session)
    windows = np.ascontiguousarray(windows, dtype=np.float32)
    out = np.empty_like(windows)
    for i in range(0, len(windows), batch):
        out[i:i + batch] = reconstruct(session, windows[i:i + batch], flat)
    return out


def sensor_errors(session: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    """Per-window, per-sensor mean squared error of scaled windows."""
    windows = np.ascontiguousarray(windows, dtype=np.float32)
    return ((windows - run_reconstruction(session, windows)) ** 2).mean(axis=1)
