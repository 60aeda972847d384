"""Tie a simulator's life to the process that started it, through its standard input.

A parent that runs a simulator as a child keeps the child's stdin an open pipe
and never writes to it. However the parent ends - a clean exit, a crash, SIGKILL,
the OOM killer - the kernel closes that pipe, the child reads end of file and
stops cleanly. No signal handler in the parent is needed, and nothing is left
publishing into a broker nobody reads.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable


def watch_stdin_eof(on_eof: Callable[[], None]) -> threading.Thread:
    """Call ``on_eof()`` from a daemon thread once standard input reaches end of file."""
    def watch() -> None:
        try:
            fd = sys.stdin.fileno()
            # The raw descriptor, not sys.stdin: a daemon thread parked in a buffered read holds the
            # buffer's lock, and the interpreter aborts at exit when it cannot take that lock.
            while os.read(fd, 4096):
                pass
        except (OSError, ValueError, AttributeError):  # closed, unreadable or absent: the same as the end
            pass
        on_eof()

    th = threading.Thread(target=watch, name="stdin-eof-watch", daemon=True)
    th.start()
    return th
