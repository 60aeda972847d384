"""Training progress on a terminal: stage, epoch, loss and an upper bound of the time left.

Training on a busy gateway can take minutes; a silent terminal looks hung. The
reports come from :func:`appliance.detector.train.train_bundle`'s ``progress``
callback. On a terminal one status line is rewritten in place (at most a few
times a second); on a pipe or a log file nothing is written per epoch, so logs
stay readable.

>>> import io
>>> out = io.StringIO()
>>> p = TerminalProgress(out, tty=True, min_interval_s=0.0)
>>> p({"stage": "model", "epoch": 3, "max_epochs": 200, "loss": 0.25, "elapsed_s": 1.5, "left_s": 98.0})
>>> p.close()
>>> out.getvalue().strip()
'training model: epoch 3/200, loss 0.25, 2 s elapsed, at most 1 min 38 s left'
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds} s"


class TerminalProgress:
    """A ``progress`` callback that keeps one status line up to date on a terminal."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, min_interval_s: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.min_interval_s = min_interval_s
        self._last = -float("inf")
        self._width = 0

    def __call__(self, info: dict) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < self.min_interval_s and info["epoch"] < info["max_epochs"]:
            return
        self._last = now
        line = (f"training {info['stage']}: epoch {info['epoch']}/{info['max_epochs']}, loss {info['loss']:.4g}"
                + (f", held-back loss {info['val_loss']:.4g}" if "val_loss" in info else "")
                + f", {_duration(info['elapsed_s'])} elapsed, at most {_duration(info['left_s'])} left")
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> "TerminalProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
