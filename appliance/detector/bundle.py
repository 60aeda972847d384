"""The model bundle: one directory with everything the detector needs to score.

::

    BUNDLE/
      model.int8.onnx   static-INT8 autoencoder (what the gateway runs)
      model.fp32.onnx   the same model in FP32 (reference, fallback)
                        (format 3: windows in and out flattened, [N, window * sensors])
      model.pca.onnx    formats 4-5: the linear PCA-Q member (FP32 in both precisions)
      model.distance.onnx  format 5: the whitened distance of the row-to-row changes (FP32)
      model.spread.onnx    format 5: each sensor's low-band energy over the whole span (FP32; it takes
                           [N, span * sensors] and gives per-sensor errors [N, sensors], see
                           appliance.detector.spread)
      bundle.json       metadata below

``bundle.json`` keys: ``format_version``, ``model_version`` (UTC time + content
hash), ``created_at``, ``sensors`` (ordered), ``window`` (rows), ``stride``,
``period_s``, ``staleness_s`` and ``lateness_s`` (the grid the model was trained on;
optional, older bundles lack them), ``scaler`` (robust per-sensor ``center``/``scale``), ``level_free``
(sensors shown to the model with their window mean removed; format 2),
``training.prior`` (another normal record the model also learned from, if any),
``threshold`` (INT8) with ``thresholds`` per precision and ``threshold_calibration``
(how), ``training`` (data sha256, row count, window counts, model settings),
``int8_check`` (INT8-vs-FP32 results), ``files`` (sha256 of each ONNX file).
Format 4 adds ``members``: models scored beside the autoencoder on the same
input (``{"pca": {"file": "model.pca.onnx", "kind": "pca_q", ...}}``), each
with its own threshold in ``thresholds`` under its name (``thresholds.pca``), so
the signed release's decision values cover it; the detector's score is the
autoencoder's threshold times the largest ratio of a member's error to its
own threshold (see :mod:`appliance.detector.scorer`).
Format 5 adds ``horizon``: the score is the mean error of that many consecutive
model windows (stride 1), so the live windows span ``window + horizon - 1``
rows (:attr:`Bundle.span`) and the thresholds are calibrated on errors averaged
the same way; ``members`` become optional; and an optional ``frozen``
(``{"allowed_run": {sensor: rows}}``, see :mod:`appliance.detector.frozen`):
sensors whose value may not repeat for longer than that.
Any format may carry ``envelope`` (see :mod:`appliance.detector.envelope`): the
window levels training saw; a live window outside it puts the asset in
"operating point not seen in training". An appliance that ignores it only raises
more alarms, so it needs no new format.

:func:`load_bundle` validates all of it and fails with :class:`BundleError`
naming the file and the problem, so a half-copied or hand-edited bundle is
refused at start rather than producing silent nonsense. The values that decide
what alarms must also be sane (:data:`MAX_THRESHOLD` and the scaler bounds, the
ones ``appliance release add`` signs within): a threshold of 1e12 or a scale of
1e30, which would never alarm, is refused in any bundle, signed or not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from appliance.core.durable import fsync_dir
from appliance.detector.envelope import OperatingEnvelope
from appliance.detector.frozen import FrozenCheck
from appliance.detector.session import ONNX_INPUT, ONNX_OUTPUT

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
# Bundles with members beside the autoencoder (a PCA-Q model) are written as format 4, so an
# appliance that does not know members refuses them instead of silently scoring without them;
# bundles without members stay format 3, readable by every appliance since format 3.
MEMBERS_FORMAT_VERSION = 4
# Bundles that average the error over several consecutive model windows (``horizon`` > 1) are
# format 5: their thresholds are calibrated on averaged errors, and an appliance that ignored
# the horizon would score single windows against them. Members are optional in format 5.
HORIZON_FORMAT_VERSION = 5
# Version 1 bundles predate ``level_free``; they load with no level-free sensors.
# Versions 1-2 models take (N, window, sensors); version 3 models take windows
# flattened to (N, window * sensors), which spares ONNX Runtime an output copy.
READABLE_VERSIONS = (1, 2, 3, 4, 5)
META_FILE = "bundle.json"
MODEL_FILES = {"int8": "model.int8.onnx", "fp32": "model.fp32.onnx"}
# Members a bundle may carry, by name: their ONNX file (FP32, used by both precisions) and kinds.
MEMBER_FILES = {"pca": "model.pca.onnx", "distance": "model.distance.onnx", "relation": "model.relation.onnx",
                "spread": "model.spread.onnx"}
MEMBER_KINDS = {"pca": "pca_q", "distance": "mahalanobis", "relation": "relation", "spread": "spread"}
# Members that take the whole scored span (``Bundle.span`` rows) and give per-sensor errors under this
# output name, instead of a reconstruction of each model window.
SPAN_MEMBERS = {"spread": "errors"}

# Sanity bounds on the values that decide what alarms, for every bundle the appliance loads
# (configured, commissioned or from a signed release) and every release the engineer's tool
# signs (appliance.sync.trust.check_sane uses the same numbers).
# The score is the mean squared error of the scaled window: around 0.01-1 for normal data of
# most processes, but real ones go far above (SKAB valve1/1's first 400 rows, a sensor nearly
# still while training: normal windows at 3e4, threshold 5.2e4). A bound must never refuse what
# training produced; 1e9 is a 30,000-sigma error on every cell of the window, which no fault
# reaches, so above it a model could never alarm.
MAX_THRESHOLD = 1e9
# Scaler bounds generous for any physical unit (Pa, rpm, mA) yet far below the values that
# switch a detector off (a scale of 1e30 turns every reading into 0).
MAX_ABS_CENTER = 1e12
MIN_SCALE, MAX_SCALE = 1e-9, 1e12
MAX_WINDOW = 100_000
MAX_PERIOD_S = 86400.0


class BundleError(ValueError):
    """A model bundle is missing, incomplete or inconsistent."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_sha256(sensors, rows: np.ndarray) -> str:
    """Fingerprint of training data: sensor names plus the float64 row matrix.

    >>> data_sha256(["a"], np.zeros((2, 1))) == data_sha256(["a"], np.zeros((2, 1), dtype=np.float32))
    True
    """
    h = hashlib.sha256()
    h.update("\x1f".join(sensors).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Scaler:
    """Robust per-sensor scaling: ``(x - center) / scale``."""

    center: np.ndarray
    scale: np.ndarray
    kind: str = "robust"

    @classmethod
    def fit(cls, rows: np.ndarray, min_scale: float = 1e-6) -> "Scaler":
        """Median and IQR/1.349 (the normal-consistent IQR); sensors with a flat IQR
        fall back to the standard deviation, and a constant sensor to 1.

        >>> s = Scaler.fit(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]]))
        >>> s.center.tolist(), np.round(s.scale, 4).tolist()
        ([2.5, 5.0], [1.1119, 1.0])
        """
        rows = np.asarray(rows, dtype=np.float64)
        center = np.median(rows, axis=0)
        q75, q25 = np.percentile(rows, [75, 25], axis=0)
        scale = (q75 - q25) / 1.349
        std = rows.std(axis=0)
        scale = np.where(scale > min_scale, scale, std)
        # Relative floor: a sensor whose spread is below its own resolution is treated as constant.
        floor = np.maximum(min_scale, 1e-9 * np.abs(center))
        scale = np.where(scale > floor, scale, 1.0)
        return cls(center=center, scale=scale)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, dtype=np.float64) - self.center) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "center": [float(v) for v in self.center],
                "scale": [float(v) for v in self.scale]}


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle (see the module docstring for the layout)."""

    path: Path
    meta: dict
    sensors: tuple[str, ...]
    window: int
    stride: int
    period_s: float
    scaler: Scaler
    thresholds: dict[str, float]
    model_version: str
    models: dict[str, Path] = field(default_factory=dict)
    level_free: tuple[str, ...] = ()
    # The grid tolerances the model was trained with; None for bundles older than them.
    staleness_s: float | None = None
    lateness_s: float | None = None
    # Format 4: members scored beside the autoencoder (name -> ONNX file) and their thresholds.
    members: dict[str, Path] = field(default_factory=dict)
    member_thresholds: dict[str, float] = field(default_factory=dict)
    # Format 5: the score is the mean error of ``horizon`` consecutive model windows.
    horizon: int = 1
    # Format 5, optional: the sensors watched for a frozen value and their allowed runs.
    frozen: FrozenCheck | None = None
    # Optional in any format: the training operating envelope (None: every operating point is judged).
    envelope: OperatingEnvelope | None = None

    @property
    def span(self) -> int:
        """Rows of the windows the detector scores: ``horizon`` model windows, stride 1, overlapping."""
        return self.window + self.horizon - 1

    def threshold(self, precision: str = "int8") -> float:
        return self.thresholds[precision]


def _require(meta: dict, key: str, kind: type | tuple, where: str, check: Callable[[Any], bool] | None = None,
             why: str = "") -> Any:
    if key not in meta:
        raise BundleError(f"{where}: missing key {key!r}")
    v = meta[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise BundleError(f"{where}: key {key!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    if check is not None and not check(v):
        raise BundleError(f"{where}: key {key!r}={v!r} is invalid ({why})")
    return v


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Load and validate a bundle directory; raise :class:`BundleError` on any problem."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle directory not found")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing (not a model bundle?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{meta_path}: unreadable: {e}") from None
    where = str(meta_path)
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: must hold a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BundleError(f"{where}: format_version {version!r} is not supported "
                          f"(this appliance reads {', '.join(map(str, READABLE_VERSIONS))})")
    sensors = _require(meta, "sensors", list, where, lambda v: len(v) > 0 and all(
        isinstance(s, str) and s for s in v) and len(set(v)) == len(v), "non-empty unique names")
    window = _require(meta, "window", int, where, lambda v: 2 <= v <= MAX_WINDOW, f"2 to {MAX_WINDOW} rows")
    stride = _require(meta, "stride", int, where, lambda v: 1 <= v <= window, "1 to window rows")
    period_s = _require(meta, "period_s", (int, float), where,
                        lambda v: _finite_positive(v) and v <= MAX_PERIOD_S, f"finite, > 0 and <= {MAX_PERIOD_S:g}")
    model_version = _require(meta, "model_version", str, where, bool, "non-empty")
    tolerances = {}
    for key in ("staleness_s", "lateness_s"):
        if key in meta:
            tolerances[key] = float(_require(meta, key, (int, float), where,
                                             lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"))
    horizon = 1
    if version >= HORIZON_FORMAT_VERSION:
        horizon = _require(meta, "horizon", int, where, lambda v: v >= 1, "at least 1 window")
    for key in ("horizon", "frozen"):
        if version < HORIZON_FORMAT_VERSION and key in meta:
            raise BundleError(f"{where}: key {key!r} needs format_version >= {HORIZON_FORMAT_VERSION} "
                              f"(this bundle says {version}; an older appliance would ignore it)")
    frozen = _load_frozen(meta, sensors, where) if "frozen" in meta else None
    envelope = _load_envelope(meta["envelope"], sensors, where) if "envelope" in meta else None
    level_free = ()
    if version >= 2:
        level_free = tuple(_require(meta, "level_free", list, where, lambda v: all(
            isinstance(s, str) for s in v) and set(v) <= set(sensors) and len(set(v)) == len(v),
            "unique names of the bundle's sensors"))
    sc = _require(meta, "scaler", dict, where)
    try:
        center = np.asarray(sc["center"], dtype=np.float64)
        scale = np.asarray(sc["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: scaler must have numeric 'center' and 'scale' lists ({e})") from None
    if center.shape != (len(sensors),) or scale.shape != (len(sensors),):
        raise BundleError(f"{where}: scaler has {center.size}/{scale.size} entries for {len(sensors)} sensors")
    _check_scaler(center, scale, where)
    th = _require(meta, "thresholds", dict, where)
    thresholds = {}
    for precision in MODEL_FILES:
        thresholds[precision] = _threshold(th.get(precision), f"thresholds.{precision}", where)
    if "threshold" in meta:
        _threshold(meta["threshold"], "threshold", where)
    files = _require(meta, "files", dict, where)
    models = {}
    for precision, name in MODEL_FILES.items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{p}: missing model file")
        if verify_hashes:
            expected = files.get(name)
            if expected != sha256_file(p):
                raise BundleError(f"{p}: sha256 does not match bundle.json (corrupt or replaced file)")
        _check_model_shape(p, [window * len(sensors)] if version >= 3 else [window, len(sensors)])
        models[precision] = p
    members, member_thresholds = _load_members(root, meta, version, th, files, window * len(sensors),
                                               verify_hashes, where, ((window + horizon - 1) * len(sensors),
                                                                      len(sensors)))
    return Bundle(path=root, meta=meta, sensors=tuple(sensors), window=window, stride=stride,
                  period_s=float(period_s), scaler=Scaler(center, scale, str(sc.get("kind", "robust"))),
                  thresholds=thresholds, model_version=model_version, models=models, level_free=level_free,
                  members=members, member_thresholds=member_thresholds, horizon=horizon, frozen=frozen,
                  envelope=envelope, **tolerances)


def _threshold(v: Any, key: str, where: str) -> float:
    """A decision threshold within (0, MAX_THRESHOLD]: beyond it a model alarms on everything or never."""
    if not _finite_positive(v):
        raise BundleError(f"{where}: {key} must be finite and > 0, got {v!r}")
    if v > MAX_THRESHOLD:
        raise BundleError(f"{where}: {key} {v!r} is above {MAX_THRESHOLD:g}: such a model can never alarm")
    return float(v)


def _check_scaler(center: np.ndarray, scale: np.ndarray, where: str) -> None:
    """Finite scaler values within the bounds; a huge scale or centre would switch the detector off."""
    if not (np.isfinite(center).all() and np.isfinite(scale).all()):
        raise BundleError(f"{where}: scaler values must be finite")
    for i, c in enumerate(center.tolist()):
        if abs(c) > MAX_ABS_CENTER:
            raise BundleError(f"{where}: scaler.center[{i}] {c:g} is beyond ±{MAX_ABS_CENTER:g}")
    for i, v in enumerate(scale.tolist()):
        if not MIN_SCALE <= v <= MAX_SCALE:
            raise BundleError(f"{where}: scaler.scale[{i}] {v:g} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}]: "
                              f"such a scale switches the sensor off")


def _load_frozen(meta: dict, sensors: list[str], where: str) -> FrozenCheck:
    spec = _require(meta, "frozen", dict, where)
    allowed = spec.get("allowed_run")
    if not isinstance(allowed, dict) or not all(
            s in sensors and isinstance(v, int) and not isinstance(v, bool) and v >= 2 for s, v in allowed.items()):
        raise BundleError(f"{where}: frozen.allowed_run must map the bundle's sensors to runs of at least 2 rows, "
                          f"got {allowed!r}")
    return FrozenCheck(dict(allowed))


def _load_envelope(spec: Any, sensors: list[str], where: str) -> OperatingEnvelope:
    try:
        return OperatingEnvelope.from_dict(spec, sensors)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: {e}") from None


def _load_members(root: Path, meta: dict, version: int, th: dict, files: dict, per_window: int,
                  verify_hashes: bool, where: str,
                  span_shapes: tuple[int, int] = (0, 0)) -> tuple[dict[str, Path], dict[str, float]]:
    """``members``, each with its file, kind and threshold checked: none before format 4, at least
    one in format 4, any number from format 5."""
    if version < MEMBERS_FORMAT_VERSION:
        if "members" in meta:
            raise BundleError(f"{where}: key 'members' needs format_version >= {MEMBERS_FORMAT_VERSION} "
                              f"(this bundle says {version}; an older appliance would ignore its members)")
        return {}, {}
    if version > MEMBERS_FORMAT_VERSION and "members" not in meta:
        return {}, {}
    declared = _require(meta, "members", dict, where, lambda v: len(v) > 0 or version > MEMBERS_FORMAT_VERSION,
                        "at least one member in format 4")
    members, thresholds = {}, {}
    for name, spec in declared.items():
        if name not in MEMBER_FILES:
            raise BundleError(f"{where}: unknown member {name!r} (this appliance knows {sorted(MEMBER_FILES)})")
        if not isinstance(spec, dict) or spec.get("file") != MEMBER_FILES[name] \
                or spec.get("kind") != MEMBER_KINDS[name]:
            raise BundleError(f"{where}: members.{name} must name file {MEMBER_FILES[name]!r} and kind "
                              f"{MEMBER_KINDS[name]!r}, got {spec!r}")
        v = _threshold(th.get(name), f"thresholds.{name}", where)
        p = root / MEMBER_FILES[name]
        if not p.is_file():
            raise BundleError(f"{p}: missing member model file")
        if verify_hashes and files.get(p.name) != sha256_file(p):
            raise BundleError(f"{p}: sha256 does not match bundle.json (corrupt or replaced file)")
        if name in SPAN_MEMBERS:  # the whole span in, per-sensor errors out
            if version < HORIZON_FORMAT_VERSION:
                raise BundleError(f"{where}: member {name!r} needs format_version >= {HORIZON_FORMAT_VERSION}")
            _check_model_shape(p, [span_shapes[0]], (SPAN_MEMBERS[name], [span_shapes[1]]))
        else:
            _check_model_shape(p, [per_window])
        members[name], thresholds[name] = p, v
    return members, thresholds


def _check_model_shape(path: Path, per_window: list[int], output: tuple[str, list[int]] | None = None) -> None:
    """Input ``x`` (and output ``recon``, or ``output``'s name) shaped ``[N, *per_window]``."""
    out_name, out_dims = output or (ONNX_OUTPUT, per_window)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises several unrelated types for a damaged file
        raise BundleError(f"{path}: not a readable ONNX model ({e})") from None
    for kind, vis, name, want in (("input", model.graph.input, ONNX_INPUT, per_window),
                                  ("output", model.graph.output, out_name, out_dims)):
        match = [v for v in vis if v.name == name]
        if not match:
            raise BundleError(f"{path}: no {kind} named {name!r}")
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in match[0].type.tensor_type.shape.dim]
        if dims[1:] != want:
            raise BundleError(f"{path}: {kind} {name!r} has shape {dims}, bundle.json says "
                              f"[N, {', '.join(map(str, want))}]")


def write_bundle(out_dir: str | Path, meta: dict, model_files: dict[str, Path],
                 member_files: dict[str, Path] | None = None) -> Path:
    """Write a bundle atomically: build it in a temp dir beside ``out_dir``, then rename.

    ``member_files``: member name -> ONNX file (see :data:`MEMBER_FILES`), for format 4.

    An existing bundle at ``out_dir`` is moved aside first and removed only after
    the new one is in place, so a crash leaves either the old or the new bundle
    (plus a ``.old`` directory to clean), never a half-written one under the name.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta = dict(meta)
        meta["files"] = {}
        copies = [(model_files[p], name) for p, name in MODEL_FILES.items()]
        copies += [(src, MEMBER_FILES[m]) for m, src in (member_files or {}).items()]
        for src, name in copies:
            shutil.copyfile(src, tmp / name)
            meta["files"][name] = sha256_file(tmp / name)
        data = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        with open(tmp / META_FILE, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for _, name in copies:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        load_bundle(tmp)  # never publish a bundle the loader would refuse
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(out, old)
        os.rename(tmp, out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("bundle written path=%s model_version=%s", out, meta.get("model_version"))
    return out
