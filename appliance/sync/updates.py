"""The gateway's model updater: signed releases in through TUF, verified, installed beside the others.

:class:`ModelUpdater` runs one pass per call of :meth:`ModelUpdater.update`
(a connectivity window, or "sync now"):

1. refresh the TUF metadata with python-tuf's ngclient from the trusted root
   (shipped with the gateway) through any root rotations, from an
   ``https://`` repository or a local folder (a USB stick at an air-gapped
   site). TUF refuses wrong signatures, expired metadata (freeze), metadata
   older than already seen (rollback) and inconsistent sets (mix-and-match);
2. pick the newest model release (highest signed ``release`` serial, see
   :mod:`appliance.sync.trust`) and refuse it unless its version is above the
   installed one or it is a signed rollback;
3. download its archive resumably (:mod:`appliance.sync.tuf_fetcher`): a cut
   download continues from its partial file in the same call and in the next
   window; ngclient checks the complete file's length and sha256;
4. unpack it safely into a staging directory, check every decision value of
   ``bundle.json`` against the signed ones, load it with
   :func:`~appliance.detector.bundle.load_bundle`, keep the signed metadata
   beside it (:data:`~appliance.sync.trust.RELEASE_RECORD`) and move it into
   place as ``<bundles_dir>/<name>-<version>``.

Every pass ends in an :class:`UpdateResult` whose ``reason`` is one line;
nothing raises out of :meth:`ModelUpdater.update`.

Gateways without a real-time clock
----------------------------------
TUF's freeze protection is an expiry date checked against the local clock. A
gateway without a battery-backed clock may boot in 1970 (or at its last saved
time) until NTP or an operator sets it, and against such a clock expired
metadata looks fresh. The rule here:

* every piece of metadata the engineer's tool signs carries the time it was
  signed (:data:`~appliance.sync.trust.SIGNED_AT_FIELD`), under the signature;
* the updater keeps a *time floor*: the newest signed time it has verified
  (from the trusted root at first, then from every verified timestamp),
  persisted in its state file. The floor never comes from the system clock,
  so a clock once wrongly set ahead cannot lock updates out for years;
* if the system clock is earlier than the floor (less a tolerance, by
  default five minutes), the clock is wrong: the pass does not even contact
  the repository and ends ``deferred`` ("clock behind signed time"), and the
  status API says so. The same holds when a freshly verified timestamp was
  signed later than the clock says it is now. The installed model keeps
  running; updates resume as soon as the clock is right;
* a clock that runs ahead makes fresh metadata look expired: the pass is
  refused as ``expired`` and the line shows the gateway's time, so the
  technician sees which of the two is wrong.

An installed bundle is re-checked (:func:`~appliance.sync.trust.verify_installed`)
without expiry: a model installed from fresh metadata keeps running however
long the gateway stays offline.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from tuf.api import exceptions as tuf_errors

from appliance.core.durable import fsync_dir
from appliance.detector.bundle import BundleError, load_bundle
from appliance.sync.trust import (
    SIGNED_AT_FIELD,
    TARGET_DIR,
    Release,
    ReleaseCheckError,
    check_bundle_against,
    parse_release,
    unpack_archive,
    verify_installed,
    write_release_record,
)
from appliance.sync.tuf_fetcher import DownloadInterrupted, DownloadPaused, ResumableFetcher, describe_error

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
USER_AGENT = "edge-anomaly-appliance-updater"

# What a pass can end in. Only "installed" changes anything on disk beyond caches.
OUTCOMES = ("installed", "up_to_date", "no_release", "interrupted", "deferred", "unreachable", "refused")


@dataclass(frozen=True)
class UpdateResult:
    """How one update pass ended; ``reason`` is one line for logs, the status API and the CLI."""

    outcome: str
    reason: str
    kind: str = ""                    # for refusals: signature, expired, rollback, downgrade, tampered, values, ...
    version: int | None = None
    release: dict | None = None       # the release considered (trust.Release.summary())
    bundle_dir: str | None = None     # where it was installed
    bytes_received: int = 0           # archive bytes fetched in this pass
    resumed_from: int = 0             # bytes already on disk when the archive download (re)started

    @property
    def ok(self) -> bool:
        return self.outcome in ("installed", "up_to_date", "no_release")

    def line(self) -> str:
        return f"model update {self.outcome}: {self.reason}"


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime) -> str:
    return _utc(dt).astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def signed_at(metadata_bytes: bytes) -> datetime | None:
    """The signing time the engineer's tool put into a metadata file's signed part, if any."""
    try:
        doc = json.loads(metadata_bytes)
        return _parse_time(doc["signed"].get(SIGNED_AT_FIELD))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class ModelUpdater:
    """Finds, verifies and installs signed model releases (see the module docstring).

    ``source``: ``https://host/path`` of the published repository (its
    ``metadata/`` and ``targets/`` folders below), or a local folder holding
    one (absolute path or ``file://`` URL). ``trusted_root``: the root.json
    shipped with the gateway. ``state_dir`` holds the TUF metadata cache, the
    partial download and the state file; ``bundles_dir`` the installed bundles.
    ``clock`` returns the current UTC time (tests replace it).
    """

    def __init__(self, *, source: str, trusted_root: str | Path, state_dir: str | Path, bundles_dir: str | Path,
                 model_name: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, socket_timeout_s: float = 30.0, attempts: int = 3,
                 retry_delay_s: float = 1.0, chunk_size: int = 64 * 1024, max_archive_bytes: int = 512 << 20,
                 clock_tolerance_s: float = 300.0, clock: Callable[[], datetime] | None = None):
        self.source = source
        self.metadata_url, self.targets_url = self._urls(source)
        self.trusted_root = Path(trusted_root)
        self.state_dir = Path(state_dir)
        self.metadata_dir = self.state_dir / "metadata"
        self.downloads_dir = self.state_dir / "downloads"
        self.bundles_dir = Path(bundles_dir)
        for d in (self.metadata_dir, self.downloads_dir, self.bundles_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        self.max_archive_bytes = max_archive_bytes
        self.clock_tolerance = timedelta(seconds=clock_tolerance_s)
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self.fetcher = ResumableFetcher(self.downloads_dir, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                        socket_timeout_s=socket_timeout_s, chunk_size=chunk_size, attempts=attempts,
                                        retry_delay_s=retry_delay_s, user_agent=USER_AGENT)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg, data_dir: str | Path, **overrides) -> "ModelUpdater":
        """Build from a :class:`~appliance.sync.updates_config.ModelUpdatesConfig`; paths below ``data_dir``."""
        base = Path(data_dir)

        def path(p: str | None) -> str | None:
            return None if p is None else str(base / p)

        return cls(source=cfg.source, trusted_root=path(cfg.trusted_root), state_dir=path(cfg.state_dir),
                   bundles_dir=path(cfg.bundles_dir), model_name=cfg.model_name, ca_file=path(cfg.ca_file),
                   cert_file=path(cfg.cert_file), key_file=path(cfg.key_file),
                   socket_timeout_s=cfg.socket_timeout_s, attempts=cfg.attempts,
                   max_archive_bytes=int(cfg.max_archive_mb * (1 << 20)),
                   clock_tolerance_s=cfg.clock_tolerance_s, **overrides)

    @staticmethod
    def _urls(source: str) -> tuple[str, str]:
        if source.startswith("https://") or source.startswith("file://"):
            base = source.rstrip("/")
        elif source.startswith("/"):
            base = Path(source).resolve().as_uri()
        else:
            raise ValueError(f"model update source {source!r}: need https://..., file://... or an absolute folder")
        return f"{base}/metadata/", f"{base}/targets/"

    # -- state --------------------------------------------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def installed(self) -> dict | None:
        """The release installed last (version, release serial, target, bundle_dir, ...), or None."""
        return self._read_state().get("installed")

    def _root_bytes(self) -> bytes:
        return self.trusted_root.read_bytes()

    def time_floor(self) -> tuple[datetime | None, str]:
        """The newest signed time verified so far, and where it came from."""
        state = self._read_state()
        floor, source = _parse_time(state.get("time_floor")), state.get("time_floor_source", "")
        try:
            root_time = signed_at(self._root_bytes())
        except OSError:
            root_time = None
        if root_time is not None and (floor is None or root_time > floor):
            floor, source = root_time, f"trusted root {self.trusted_root.name}"
        return floor, source

    def _raise_floor(self, state: dict, when: datetime, source: str) -> None:
        floor = _parse_time(state.get("time_floor"))
        if floor is None or when > floor:
            state["time_floor"], state["time_floor_source"] = _iso(when), source

    def clock_problem(self, now: datetime | None = None) -> str | None:
        """Why the system clock cannot be trusted for expiry checks now, or None."""
        now = _utc(now or self._clock())
        floor, source = self.time_floor()
        if floor is not None and now < floor - self.clock_tolerance:
            return (f"system clock {_iso(now)} is before {_iso(floor)}, a time the repository signed ({source}): "
                    f"no real-time clock, or NTP has not set it yet; updates wait for a correct clock "
                    f"because metadata expiry cannot be checked against this one")
        return None

    # -- one pass -----------------------------------------------------------------------------------------------

    def update(self, deadline: float | None = None, max_bytes: int | None = None) -> UpdateResult:
        """One update pass. ``deadline`` (a ``time.monotonic()`` value) and ``max_bytes`` bound the download;
        a download stopped by either continues on the next call."""
        with self._lock:
            with self._process_lock() as got:
                if not got:
                    return UpdateResult("deferred", "another model update is running on this gateway", "busy")
                try:
                    result = self._update(deadline, max_bytes)
                except Exception as e:  # every refusal is one line; an unforeseen one too
                    logger.debug("model update failed", exc_info=True)
                    result = self._failure(e)
                state = self._read_state()
                state["last"] = {"at": _iso(self._clock()), **asdict(result)}
                self._write_state(state)
        log = logger.info if result.ok or result.outcome in ("interrupted", "deferred") else logger.warning
        log("%s", result.line())
        return result

    @contextlib.contextmanager
    def _process_lock(self):
        # ngclient's cache is single-instance: the running appliance and a "sync now" from the CLI must
        # not refresh it at the same time.
        with open(self.state_dir / "lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _update(self, deadline: float | None, max_bytes: int | None) -> UpdateResult:
        from tuf.ngclient import Updater, UpdaterConfig

        now = _utc(self._clock())
        problem = self.clock_problem(now)
        if problem:
            return UpdateResult("deferred", problem, "clock")
        self.fetcher.begin(deadline, max_bytes)
        try:
            updater = Updater(str(self.metadata_dir), self.metadata_url, str(self.downloads_dir), self.targets_url,
                              fetcher=self.fetcher, config=UpdaterConfig(app_user_agent=USER_AGENT),
                              bootstrap=self._root_bytes())
        except (OSError, tuf_errors.RepositoryError) as e:
            return UpdateResult("refused", f"trusted root {self.trusted_root} is not usable root metadata: {e}", "root")
        try:
            updater.refresh()
        except Exception as e:
            return self._failure(e, now)

        state = self._read_state()
        timestamp_bytes = (self.metadata_dir / "timestamp.json").read_bytes()
        ts_time = signed_at(timestamp_bytes)
        if ts_time is not None:
            self._raise_floor(state, ts_time, f"timestamp v{json.loads(timestamp_bytes)['signed']['version']}")
            self._write_state(state)
            if now < ts_time - self.clock_tolerance:
                return UpdateResult("deferred", self.clock_problem(now) or "clock behind signed time", "clock")

        targets_doc = json.loads((self.metadata_dir / "targets.json").read_bytes())
        picked = self._pick(targets_doc)
        if isinstance(picked, UpdateResult):
            return picked
        rel = picked
        verdict = self._against_installed(rel, state.get("installed"))
        if verdict is not None:
            return verdict
        if rel.length > self.max_archive_bytes:
            return UpdateResult("refused", f"{rel.target} is {rel.length} bytes, over the limit of "
                                f"{self.max_archive_bytes}", "size", rel.version, rel.summary())

        # The entry to download comes from ngclient's trusted set, not from the file read above.
        info = updater.get_targetinfo(rel.target)
        if info is None or info.hashes.get("sha256") != rel.sha256 or info.length != rel.length:
            return UpdateResult("refused", f"{rel.target}: trusted metadata changed during the pass", "repository",
                                rel.version, rel.summary())
        archive = self.downloads_dir / f"{rel.name}-{rel.version}.tar"
        self.fetcher.discard_partials(keep=self.targets_url + info.get_prefixed_paths()[0])
        try:
            path = updater.find_cached_target(info, str(archive)) or updater.download_target(info, str(archive))
        except Exception as e:
            return self._failure(e, now, rel)
        try:
            bundle_dir = self._install(Path(path), rel, targets_doc, now)
        except (ReleaseCheckError, BundleError) as e:
            kind = "values" if isinstance(e, ReleaseCheckError) else "bundle"
            return UpdateResult("refused", f"{rel.target}: {e}", kind, rel.version, rel.summary(),
                                bytes_received=self.fetcher.bytes_received)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(archive)
        state = self._read_state()
        state["installed"] = {**rel.summary(), "sha256": rel.sha256, "bundle_dir": str(bundle_dir),
                              "installed_at": _iso(now)}
        self._write_state(state)
        what = "rollback to" if rel.rollback else "installed"
        return UpdateResult("installed", f"{what} {rel.name} v{rel.version} (release {rel.release}) in {bundle_dir}",
                            "", rel.version, rel.summary(), str(bundle_dir), self.fetcher.bytes_received,
                            self.fetcher.resumed_from)

    def _pick(self, targets_doc: dict) -> Release | UpdateResult:
        """The newest release of this gateway's model, or the result saying why there is none."""
        good: list[Release] = []
        bad: list[tuple[int, str, str]] = []   # (serial, name, reason)
        for path, entry in (targets_doc.get("signed", {}).get("targets") or {}).items():
            if not path.startswith(TARGET_DIR + "/"):
                continue
            custom = entry.get("custom") if isinstance(entry, dict) else None
            try:
                good.append(parse_release(path, entry["length"], entry["hashes"], custom))
            except (ReleaseCheckError, KeyError, TypeError) as e:
                serial = custom.get("release") if isinstance(custom, dict) else None
                name = custom.get("name") if isinstance(custom, dict) else None
                bad.append((serial if isinstance(serial, int) else -1, name, str(e)))
        names = sorted({r.name for r in good})
        name = self.model_name
        if name is None:
            if len(names) > 1:
                return UpdateResult("refused", f"the repository has models {', '.join(names)}: "
                                    f"set model_name to the one this gateway runs", "config")
            name = names[0] if names else None
        mine = [r for r in good if r.name == name]
        if not mine:
            note = f" ({len(bad)} entries refused: {bad[0][2]})" if bad else ""
            return UpdateResult("no_release", f"no release of model {name or '(any)'} in the repository{note}")
        newest = max(mine, key=lambda r: r.release)
        worse = [b for b in bad if b[1] in (name, None) and b[0] > newest.release]
        if worse:
            return UpdateResult("refused", f"the newest release is not usable: {worse[0][2]}", "values")
        return newest

    @staticmethod
    def _against_installed(rel: Release, inst: dict | None) -> UpdateResult | None:
        """None if ``rel`` may be installed over ``inst``; else the result (up to date, or refused)."""
        if not inst:
            return None
        have = inst.get("version")
        if rel.version == have and rel.sha256 == inst.get("sha256"):
            if not Path(str(inst.get("bundle_dir"))).is_dir():
                return None  # the same signed release, but its directory is gone: install it again
            return UpdateResult("up_to_date", f"{rel.name} v{rel.version} (release {rel.release}) is installed",
                                version=rel.version, release=rel.summary(), bundle_dir=inst.get("bundle_dir"))
        if rel.version == have:
            return UpdateResult("refused", f"{rel.target}: same version v{rel.version} as installed but different "
                                f"content; a new model needs a new version", "downgrade", rel.version, rel.summary())
        if isinstance(have, int) and rel.version < have and not rel.rollback:
            return UpdateResult("refused", f"{rel.target}: v{rel.version} is not above the installed v{have} and "
                                f"is not a signed rollback (downgrade refused)", "downgrade", rel.version,
                                rel.summary())
        return None

    def _install(self, archive: Path, rel: Release, targets_doc: dict, now: datetime) -> Path:
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{rel.name}-{rel.version}-", dir=self.bundles_dir))
        try:
            os.chmod(staging, 0o755)  # like a bundle written by training; mkdtemp makes it private
            unpack_archive(archive, staging, rel)
            check_bundle_against(staging, rel)
            load_bundle(staging)
            write_release_record(staging, rel, targets_doc, self._root_chain(), _iso(now))
            # The loader's check, once here: never install a bundle that the loader would refuse.
            reason = verify_installed(staging, self._root_bytes())
            if reason:
                raise ReleaseCheckError(reason)
            final = self.bundles_dir / f"{rel.name}-{rel.version}"
            old = None
            if final.exists():
                old = self.bundles_dir / f".old-{final.name}-{os.getpid()}"
                shutil.rmtree(old, ignore_errors=True)
                os.rename(final, old)
            os.rename(staging, final)
            fsync_dir(self.bundles_dir, best_effort=False)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return final
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _root_chain(self) -> list[dict]:
        """The root versions after the trusted root, as ngclient verified and cached them."""
        base = json.loads(self._root_bytes())["signed"]["version"]
        chain = []
        for p in (self.metadata_dir / "root_history").glob("*.root.json"):
            version = int(p.name.split(".", 1)[0])
            if version > base:
                chain.append((version, json.loads(p.read_bytes())))
        return [doc for _, doc in sorted(chain, key=lambda t: t[0])]

    def _failure(self, e: BaseException, now: datetime | None = None, rel: Release | None = None) -> UpdateResult:
        """One line for an exception: what TUF (or the network, or the disk) refused, and why."""
        version, summary = (rel.version, rel.summary()) if rel else (None, None)
        got = dict(version=version, release=summary, bytes_received=self.fetcher.bytes_received,
                   resumed_from=self.fetcher.resumed_from)
        what = rel.target if rel else "repository metadata"
        clock = f"gateway clock {_iso(now)}" if now else ""
        if isinstance(e, (DownloadPaused, DownloadInterrupted)):
            kept = sum(self.fetcher.partials().values())
            return UpdateResult("interrupted", f"{what}: download stopped: {e}; {kept} bytes kept to resume",
                                "paused" if isinstance(e, DownloadPaused) else "network", **got)
        if isinstance(e, tuf_errors.ExpiredMetadataError):
            return UpdateResult("refused", f"expired metadata: {e} (the repository was not re-published in time, "
                                f"or old metadata is being replayed: a freeze attack; {clock})", "expired", **got)
        if isinstance(e, tuf_errors.UnsignedMetadataError):
            return UpdateResult("refused", f"bad signature: {e}; not signed by the keys the trusted root names "
                                f"(wrong key, or tampered metadata)", "signature", **got)
        if isinstance(e, tuf_errors.BadVersionNumberError):
            return UpdateResult("refused", f"metadata rollback: {e} (the repository offers older metadata than "
                                f"this gateway has already verified)", "rollback", **got)
        if isinstance(e, (tuf_errors.LengthOrHashMismatchError, tuf_errors.DownloadLengthMismatchError)):
            return UpdateResult("refused", f"tampered or corrupt {what}: {e}; it does not match the signed length "
                                f"and sha256 (partial download discarded)", "tampered", **got)
        if isinstance(e, tuf_errors.DownloadHTTPError):
            return UpdateResult("unreachable", f"{what}: {e}", "http", **got)
        if isinstance(e, tuf_errors.DownloadError):
            return UpdateResult("unreachable", f"{what}: cannot download: {describe_error(e)}", "network", **got)
        if isinstance(e, tuf_errors.RepositoryError):
            return UpdateResult("refused", f"repository metadata from {self.source} refused: {e}", "repository",
                                **got)
        if isinstance(e, OSError):
            return UpdateResult("refused", f"local file problem: {e}", "local", **got)
        return UpdateResult("refused", f"unexpected {type(e).__name__}: {e}", "internal", **got)

    # -- for the loader and the status API ----------------------------------------------------------------------

    def verify_installed(self, bundle_dir: str | Path) -> str | None:
        """Why the bundle in ``bundle_dir`` must not be loaded (edited since install, ...), or None."""
        return verify_installed(bundle_dir, self.trusted_root)

    def status(self) -> dict:
        state = self._read_state()
        floor, source = self.time_floor()
        now = _utc(self._clock())
        try:
            root_version = json.loads(self._root_bytes())["signed"]["version"]
        except (OSError, ValueError, KeyError, TypeError):
            root_version = None
        return {
            "source": self.source,
            "model_name": self.model_name,
            "installed": state.get("installed"),
            "last": state.get("last"),
            "partial_bytes": self.fetcher.partials(),
            "clock": {"system": _iso(now), "floor": _iso(floor) if floor else None, "floor_source": source,
                      "problem": self.clock_problem(now)},
            "trusted_root_version": root_version,
        }
