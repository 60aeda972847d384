"""A python-tuf fetcher that resumes a cut download: HTTPS with ``Range``, or a local folder.

python-tuf's ngclient downloads a target in one go into a temporary file and
forgets it on any error. A gateway online for half an hour a night cannot fetch
a large bundle that way. :class:`ResumableFetcher` keeps the bytes of a target
in a partial file under ``partial_dir`` and continues it with
``Range: bytes=<have>-`` after a cut, within one call (a dropped connection,
retried) and across calls (the window closed, the byte budget was spent, the
server went away: the next window goes on from the partial file).

Trust does not change: the complete file is handed to ngclient, which checks
its length and hashes against the signed targets metadata before anything uses
it. A partial file that turns out wrong (a server that answered a range with
other bytes) fails that check and is discarded, so the next call starts over.
Targets are fetched under consistent-snapshot names (``<sha256>.<name>``), so
a partial file is named by the content it must become, whatever the mirror.

Metadata (small, and refetched every window anyway) goes through the plain,
non-resumable path. ``file://`` URLs read a repository folder (a USB stick at
an air-gapped site) the same way, with offsets for resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Callable
from urllib import parse, request

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from appliance.connections.tls import client_context

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Statuses worth another attempt in the same call: the server or a proxy is
# briefly unwell, not refusing the request.
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# Where the fetcher's TLS files are configured: what a TlsFileError names.
TLS_KEYS = "outputs.sync.updates"


class DownloadPaused(exceptions.DownloadError):
    """The download stopped on purpose (window closed, byte budget spent); the partial file is kept."""


class DownloadInterrupted(exceptions.DownloadError):
    """The download failed after some attempts; the partial file is kept for the next call."""


class _RestartFromZero(Exception):
    """The server cannot continue the partial file (416, or another range than asked): start over."""


class ResumableFetcher(FetcherInterface):
    """ngclient fetcher with resumable target downloads (see the module docstring).

    ``ca_file`` is the CA bundle the repository host's certificate must chain
    to (None: the system's store); ``cert_file``/``key_file`` a client
    certificate if the host asks for one (a file that cannot be loaded: a
    :class:`~appliance.connections.tls.TlsFileError` naming the key). ``attempts`` bounds consecutive
    failures that bring no new bytes; a failure after progress does not count.
    Set :attr:`deadline` (a ``time.monotonic()`` value) and :attr:`byte_budget`
    before a call to stop cleanly at the end of a connectivity window.
    """

    def __init__(self, partial_dir: str | Path, *, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, socket_timeout_s: float = 30.0, chunk_size: int = 64 * 1024,
                 attempts: int = 3, retry_delay_s: float = 1.0, user_agent: str = "edge-anomaly-appliance",
                 sleep: Callable[[float], None] = time.sleep):
        self.partial_dir = Path(partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self.attempts = max(1, attempts)
        self.retry_delay_s = retry_delay_s
        self.socket_timeout_s = socket_timeout_s
        self._sleep = sleep
        self.deadline: float | None = None
        self.byte_budget: int | None = None
        self.bytes_received = 0
        self.resumed_from = 0
        self.restarts = 0
        ctx = client_context(ca_file, cert_file, key_file, keys=TLS_KEYS)
        # urllib3 retries connects itself; reads are ours (a retried read would start from byte 0).
        retries = urllib3.Retry(total=None, connect=2, read=0, status=0, other=0, redirect=5,
                                raise_on_redirect=True, raise_on_status=False)
        self._pool = urllib3.PoolManager(ssl_context=ctx, retries=retries,
                                         headers={"User-Agent": user_agent})

    def begin(self, deadline: float | None = None, byte_budget: int | None = None) -> None:
        """Start a new call's accounting: its deadline and byte budget for target data."""
        self.deadline, self.byte_budget = deadline, byte_budget
        self.bytes_received = 0
        self.resumed_from = 0
        self.restarts = 0

    # -- ngclient's interface ---------------------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Plain GET (metadata): the whole file, no resume."""
        self._check_deadline()
        _, chunks = self._open(url, 0)
        return chunks

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """Metadata: the base class's one-shot download."""
        with super().download_file(url, max_length) as f:
            return f.read()

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO]:
        """A target: continue the partial file until ``max_length`` bytes, then hand it to ngclient."""
        part = self.partial_path(url)
        with open(part, "a+b") as f:
            self._fill(f, url, max_length)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            try:
                yield f
            except exceptions.RepositoryError:
                # ngclient refused the bytes (length or hash): never resume from them.
                with contextlib.suppress(FileNotFoundError):
                    os.remove(part)
                raise
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)

    # -- partial files ----------------------------------------------------------------------------------------

    def partial_path(self, url: str) -> Path:
        name = parse.unquote(parse.urlparse(url).path.rsplit("/", 1)[-1]) or "download"
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]
        return self.partial_dir / f"{safe}.part"

    def partials(self) -> dict[str, int]:
        """Partial files kept for resume, with their sizes."""
        return {p.name[:-5]: p.stat().st_size for p in self.partial_dir.glob("*.part")}

    def discard_partials(self, keep: str | None = None) -> None:
        """Remove partial files of downloads no longer wanted (all but ``keep``'s)."""
        keep_path = self.partial_path(keep) if keep else None
        for p in self.partial_dir.glob("*.part"):
            if p != keep_path:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    # -- the transfer -----------------------------------------------------------------------------------------

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DownloadPaused("the connectivity window closed")

    def _budget_left(self) -> int | None:
        return None if self.byte_budget is None else self.byte_budget - self.bytes_received

    def _fill(self, f: IO, url: str, length: int) -> None:
        have = f.seek(0, os.SEEK_END)
        if have > length:
            f.truncate(0)
            have = 0
        self.resumed_from = have
        if have:
            logger.info("resuming download url=%s from=%d of=%d", url, have, length)
        failures = 0
        last: BaseException | str = "no attempt"
        while have < length:
            self._check_deadline()
            budget = self._budget_left()
            if budget is not None and budget <= 0:
                raise DownloadPaused(f"byte budget of {self.byte_budget} bytes spent ({have} of {length} kept)")
            before = have
            # Within a budget, ask for exactly what it allows; otherwise for the rest of the file
            # (open-ended, so a file longer than signed is noticed).
            limit = budget if budget is not None and budget < length - have else None
            try:
                start, chunks = self._open(url, have, limit)
                if start != have:
                    f.truncate(0)
                    f.seek(0)
                    have = start
                    self.restarts += 1
                for chunk in chunks:
                    if have + len(chunk) > length:
                        raise exceptions.DownloadLengthMismatchError(
                            f"{url}: more than the signed {length} bytes")
                    f.write(chunk)
                    have += len(chunk)
                    self.bytes_received += len(chunk)
                    self._check_deadline()
                if have < length and limit is None:
                    # A clean end of data short of the signed length: the file on the
                    # server is shorter. ngclient's length check says so.
                    return
            except _RestartFromZero:
                f.truncate(0)
                f.seek(0)
                have = 0
                self.restarts += 1
                failures += 1
                last = "the server could not continue the partial file"
            except (DownloadPaused, exceptions.DownloadLengthMismatchError):
                f.flush()
                raise
            except exceptions.DownloadHTTPError as e:
                f.flush()
                if e.status_code not in _TRANSIENT_STATUS:
                    raise
                failures = 0 if have > before else failures + 1
                last = e
            except (urllib3.exceptions.HTTPError, OSError, exceptions.DownloadError) as e:
                f.flush()
                failures = 0 if have > before else failures + 1
                last = e
                logger.info("download cut url=%s at=%d of=%d error=%s", url, have, length, describe_error(e))
            else:
                continue
            if failures >= self.attempts:
                why = last if isinstance(last, str) else describe_error(last)
                raise DownloadInterrupted(f"{have} of {length} bytes after {failures} failed attempts ({why}); "
                                          f"the rest follows next time")
            delay = self.retry_delay_s * min(2 ** max(failures - 1, 0), 8)
            if self.deadline is not None:
                delay = min(delay, max(0.0, self.deadline - time.monotonic()))
            self._sleep(delay)

    def _open(self, url: str, offset: int, limit: int | None = None) -> tuple[int, Iterator[bytes]]:
        """Start reading ``url`` at ``offset`` (at most ``limit`` bytes): (where the data really starts, chunks)."""
        scheme = parse.urlparse(url).scheme
        if scheme == "file":
            return offset, self._file_chunks(url, offset, limit)
        if scheme != "https":
            raise exceptions.DownloadError(f"{url}: only https:// and file:// repositories are allowed")
        headers = {}
        if offset or limit is not None:
            headers["Range"] = f"bytes={offset}-{'' if limit is None else offset + limit - 1}"
        try:
            resp = self._pool.request("GET", url, headers=headers, preload_content=False,
                                      timeout=urllib3.Timeout(self.socket_timeout_s))
        except urllib3.exceptions.MaxRetryError as e:
            raise exceptions.DownloadError(f"{url}: {describe_error(e.reason or e)}") from e
        if resp.status == 416:
            resp.release_conn()
            raise _RestartFromZero()
        if resp.status >= 400:
            resp.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        start = 0
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if m is None or int(m[1]) != offset:
                resp.release_conn()
                raise _RestartFromZero()
            start = offset
        # A 200 to a ranged request means the server ignores Range: the body is the whole file.
        return start, self._http_chunks(resp, limit)

    def _http_chunks(self, resp, limit: int | None) -> Iterator[bytes]:
        left = limit
        try:
            while left is None or left > 0:
                chunk = resp.read(self.chunk_size if left is None else min(self.chunk_size, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
            if left == 0 and (resp.length_remaining or 0) > 0:
                # Stopped before the server's end (it ignored the range): this connection is not reusable.
                resp.close()
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(str(e)) from e
        finally:
            resp.release_conn()

    def _file_chunks(self, url: str, offset: int, limit: int | None) -> Iterator[bytes]:
        path = request.url2pathname(parse.urlparse(url).path)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            # ngclient ends its walk through root versions on a 404.
            raise exceptions.DownloadHTTPError(f"{path}: not found", 404) from None
        left = limit
        with f:
            f.seek(offset)
            while left is None or left > 0:
                chunk = f.read(self.chunk_size if left is None else min(self.chunk_size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk


def describe_error(e: BaseException | None) -> str:
    """The innermost cause of a network error, in one line (a TLS failure says so)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "reason", None) if isinstance(e, urllib3.exceptions.MaxRetryError) else None
        nxt = inner or e.__cause__ or e.__context__
        if nxt is None or isinstance(nxt, str):
            break
        e = nxt
    text = str(e).strip() or type(e).__name__
    if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate not trusted ({getattr(e, 'verify_message', None) or text})"
    return text.splitlines()[0][:300]
