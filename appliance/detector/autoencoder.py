"""Window autoencoder trained with scikit-learn and exported to plain ONNX.

The model is a dense autoencoder over a flattened ``window x sensors`` block:
``Gemm -> Relu -> ... -> Gemm``. A dense decoder was chosen on purpose: every
layer is a Gemm, which ONNX Runtime runs fully in INT8 on CPU (a ConvTranspose
decoder would fall back to FP32), and scikit-learn's ``MLPRegressor`` trains it
on the gateway itself with no deep-learning framework.

Inputs are windows already scaled by the bundle's scaler, shape
``(n_windows, window, n_sensors)``. The anomaly score of a window is its mean
squared reconstruction error; per-sensor errors explain which sensor dominates.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> t = np.arange(600, dtype=np.float32)
>>> rows = np.stack([np.sin(t / 7), np.cos(t / 7), 0.1 * rng.standard_normal(600)], axis=1)
>>> X = np.stack([rows[i:i + 10] for i in range(0, 590)]).astype(np.float32)
>>> ae = WindowAutoencoder(hidden=(16, 4), max_iter=50, random_state=0).fit(X)
>>> ae.sensor_errors(X[:2]).shape
(2, 3)
>>> bad = X[:1].copy(); bad[0, :, 0] += 3.0
>>> bool(ae.errors(bad)[0] > ae.errors(X).max())
True
>>> bool(ae.predict(bad)[0] == -1)
True
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from appliance.detector.session import ONNX_INPUT, ONNX_OUTPUT

logger = logging.getLogger(__name__)

# BLAS threads while training (numpy/scipy/scikit-learn); ONNX Runtime sessions have their own setting.
TRAIN_BLAS_THREADS = 1

# Opset 17 is what onnxruntime >= 1.14 fully supports, including on aarch64 wheels.
ONNX_OPSET = 17


class _EpochMLP(MLPRegressor):
    """``MLPRegressor`` that calls ``self.on_epoch_(self)`` after every epoch; a true answer ends the fit.

    Hooking the per-epoch bookkeeping keeps scikit-learn's own training loop (and its
    results) unchanged, while adding progress reports and early stopping on windows
    chosen by time rather than by ``early_stopping``'s random split.
    """

    stopped_early_ = False

    def _update_no_improvement_count(self, *args, **kwargs):
        super()._update_no_improvement_count(*args, **kwargs)
        hook = getattr(self, "on_epoch_", None)
        if hook is not None and hook(self):
            self.stopped_early_ = True
            # Adam's trigger_stopping always stops once the count passes n_iter_no_change.
            self._no_improvement_count = self.n_iter_no_change + 1


def check_windows(X, name: str = "X", window: int | None = None,
                  n_sensors: int | None = None) -> np.ndarray:
    """Validate a window batch and return it as C-contiguous float32.

    >>> check_windows(np.zeros((2, 3, 4))).dtype
    dtype('float32')
    >>> check_windows(np.zeros((3, 4)))
    Traceback (most recent call last):
    ...
    ValueError: X must be 3-D (n_windows, window, n_sensors), got shape (3, 4)
    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"{name} must be 3-D (n_windows, window, n_sensors), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no windows")
    if window is not None and X.shape[1] != window:
        raise ValueError(f"{name} has windows of {X.shape[1]} rows, expected {window}")
    if n_sensors is not None and X.shape[2] != n_sensors:
        raise ValueError(f"{name} has {X.shape[2]} sensors, expected {n_sensors}")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


class WindowAutoencoder(BaseEstimator):
    """Dense autoencoder over ``window x sensors`` blocks (scikit-learn style).

    Parameters
    ----------
    hidden : encoder layer widths, the last one being the bottleneck; the
        decoder mirrors them, so ``(64, 16)`` gives ``in-64-16-64-in``.
    alpha : L2 penalty (keeps weights small, which also keeps INT8 ranges tight).
    noise : standard deviation of Gaussian input noise for denoising training
        (0 disables); a denoising AE generalises better from few normal rows.
    max_iter, batch_size, learning_rate_init, tol : Adam training settings;
        training stops when the training loss has not improved by ``tol`` for
        10 epochs, or at ``max_iter`` epochs (``stopped_`` says which).
    patience : with validation windows given to :meth:`fit` (``X_val``, normal
        windows the model does not learn from), stop once their loss has not
        improved for this many epochs and keep the weights of the best epoch
        (early stopping on held-back data). None: never.
    threshold_quantile : quantile of training errors used as the default
        ``offset_`` for :meth:`decision_function` and :meth:`predict`. The
        appliance calibrates its real threshold on held-back windows instead.
    random_state : seed; the same data and seed give the same weights.
    """

    def __init__(self, hidden: Sequence[int] = (64, 16), alpha: float = 1e-4, noise: float = 0.0,
                 max_iter: int = 200, batch_size: int = 128, learning_rate_init: float = 1e-3,
                 tol: float = 1e-5, threshold_quantile: float = 0.99, random_state: int = 0,
                 patience: int | None = None):
        self.hidden = hidden
        self.alpha = alpha
        self.noise = noise
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.tol = tol
        self.threshold_quantile = threshold_quantile
        self.random_state = random_state
        self.patience = patience

    def _validate_params(self) -> tuple[int, ...]:
        try:
            hidden = tuple(int(h) for h in self.hidden)
        except (TypeError, ValueError):
            raise ValueError(f"hidden must be a sequence of positive ints, got {self.hidden!r}") from None
        if not hidden or any(h < 1 for h in hidden) or any(
                float(h) != float(g) for h, g in zip(hidden, self.hidden)):
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {self.hidden!r}")
        checks = [
            ("alpha", self.alpha, lambda v: v >= 0),
            ("noise", self.noise, lambda v: v >= 0),
            ("learning_rate_init", self.learning_rate_init, lambda v: v > 0),
            ("tol", self.tol, lambda v: v >= 0),
            ("threshold_quantile", self.threshold_quantile, lambda v: 0 < v < 1),
        ]
        for name, v, ok in checks:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or not ok(v):
                raise ValueError(f"{name}={v!r} is out of range")
        for name in ("max_iter", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.random_state, (int, np.integer)) or isinstance(self.random_state, bool):
            raise ValueError(f"random_state must be an int, got {self.random_state!r}")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer))
                                          or isinstance(self.patience, bool) or self.patience < 1):
            raise ValueError(f"patience must be None or a positive int, got {self.patience!r}")
        return hidden

    def fit(self, X, y=None, *, X_val=None, progress: Callable[[dict], None] | None = None) -> "WindowAutoencoder":
        """Fit on windows ``X``; ``X_val``: held-back normal windows for early stopping (see ``patience``).

        ``progress`` is called after every epoch with ``epoch``, ``max_epochs``,
        ``loss`` (training) and, with ``X_val``, ``val_loss``.
        """
        hidden = self._validate_params()
        X = check_windows(X)
        n, w, s = X.shape
        if n < 2:
            raise ValueError(f"need at least 2 windows to fit, got {n}")
        val = None
        if X_val is not None:
            val = check_windows(X_val, "X_val", window=w, n_sensors=s).reshape(len(X_val), w * s)
        flat = X.reshape(n, w * s)
        layers = hidden + tuple(reversed(hidden[:-1]))
        self.mlp_ = _EpochMLP(
            hidden_layer_sizes=layers, activation="relu", solver="adam", alpha=self.alpha,
            batch_size=min(self.batch_size, n), learning_rate_init=self.learning_rate_init,
            max_iter=self.max_iter, tol=self.tol, n_iter_no_change=10, shuffle=True,
            random_state=self.random_state)
        inputs = flat
        if self.noise > 0:
            # One fixed noisy copy per window (seeded): denoising without a custom training loop.
            rng = np.random.default_rng(self.random_state)
            inputs = flat + rng.normal(0.0, self.noise, flat.shape).astype(np.float32)
        best = {"loss": np.inf, "epoch": 0, "weights": None}
        self.val_loss_curve_: list[float] = []

        def on_epoch(mlp: MLPRegressor) -> bool:
            info = {"epoch": int(mlp.n_iter_), "max_epochs": self.max_iter, "loss": float(mlp.loss_)}
            stop = False
            if val is not None:
                val_loss = float(((mlp.predict(val) - val) ** 2).mean())
                self.val_loss_curve_.append(val_loss)
                info["val_loss"] = val_loss
                if val_loss < best["loss"]:
                    best.update(loss=val_loss, epoch=int(mlp.n_iter_),
                                weights=([c.copy() for c in mlp.coefs_], [b.copy() for b in mlp.intercepts_]))
                stop = self.patience is not None and mlp.n_iter_ - best["epoch"] >= self.patience
            if progress is not None:
                progress(info)
            return stop

        self.mlp_.on_epoch_ = on_epoch
        # One BLAS thread: each Adam step multiplies small matrices, where more threads only add
        # hand-offs, and on a loaded 2-core machine spinning BLAS threads wait for each other
        # (a CLI training test took over 600 s instead of 20 s with the default pool).
        with warnings.catch_warnings(), threadpool_limits(limits=TRAIN_BLAS_THREADS):
            # Stopping at max_iter is the intended budget on a small gateway, not a fault.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp_.fit(inputs, flat)
            del self.mlp_.on_epoch_  # a closure over the data; the fitted model must not hold it
            self.n_iter_ = int(self.mlp_.n_iter_)
            if self.mlp_.stopped_early_:
                self.stopped_ = "held-back loss"
            elif self.n_iter_ < self.max_iter:
                self.stopped_ = "tolerance"
            else:
                self.stopped_ = "epoch cap"
            self.converged_ = self.stopped_ != "epoch cap"
            self.best_epoch_ = self.n_iter_
            if val is not None and best["weights"] is not None and self.patience is not None:
                self.mlp_.coefs_, self.mlp_.intercepts_ = best["weights"]
                self.best_epoch_ = best["epoch"]
            self.window_, self.n_sensors_ = w, s
            train_err = self.errors(X)
        self.offset_ = -float(np.quantile(train_err, self.threshold_quantile))
        logger.debug("autoencoder fitted windows=%d window=%d sensors=%d layers=%s iters=%d best=%d stopped=%s "
                     "loss=%.5g", n, w, s, layers, self.n_iter_, self.best_epoch_, self.stopped_, self.mlp_.loss_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "mlp_"):
            raise ValueError("this WindowAutoencoder is not fitted yet; call fit(X) first")

    def reconstruct(self, X) -> np.ndarray:
        self._check_fitted()
        X = check_windows(X, window=self.window_, n_sensors=self.n_sensors_)
        n = X.shape[0]
        return self.mlp_.predict(X.reshape(n, -1)).reshape(X.shape).astype(np.float32)

    def sensor_errors(self, X) -> np.ndarray:
        """Mean squared error per window and sensor, shape ``(n_windows, n_sensors)``."""
        X = check_windows(X)
        return ((X - self.reconstruct(X)) ** 2).mean(axis=1)

    def errors(self, X) -> np.ndarray:
        """Mean squared reconstruction error per window (higher is more anomalous)."""
        return self.sensor_errors(X).mean(axis=1)

    def score_samples(self, X) -> np.ndarray:
        """Negated error, so that higher means more normal (scikit-learn convention)."""
        return -self.errors(X)

    def decision_function(self, X) -> np.ndarray:
        """Negative for windows beyond the training-error quantile ``offset_``."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for normal windows, -1 for anomalous ones."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def to_onnx(self, name: str = "window_autoencoder") -> onnx.ModelProto:
        """Export as ``x[N, window * sensors] -> recon[N, window * sensors]`` (Gemm/Relu).

        Windows go in and come out flattened row by row (``windows.reshape(n, -1)``,
        free in numpy). Reshapes inside the graph would cost a copy of the whole
        reconstruction per call, since ONNX Runtime gives a graph output its own buffer.
        """
        self._check_fitted()
        w, s = self.window_, self.n_sensors_
        nodes, inits = [], []
        last = len(self.mlp_.coefs_) - 1
        current = ONNX_INPUT
        for i, (W, b) in enumerate(zip(self.mlp_.coefs_, self.mlp_.intercepts_)):
            # Weights stored transposed ([out, in], transB=1) so per-channel quantization
            # runs along axis 0, one scale per output unit.
            inits.append(numpy_helper.from_array(np.ascontiguousarray(W.T, dtype=np.float32), f"W{i}"))
            inits.append(numpy_helper.from_array(b.astype(np.float32), f"b{i}"))
            out = ONNX_OUTPUT if i == last else f"z{i}"
            nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [out],
                                          name=f"dense{i}", transB=1))
            if i < last:
                nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
                out = f"a{i}"
            current = out
        graph = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["N", w * s])],
            [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["N", w * s])],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                  producer_name="appliance.detector")
        # IR version 8 is readable by every onnxruntime that supports opset 17.
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
