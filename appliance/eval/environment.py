"""What produced a figure: Python, architecture and the versions of the libraries that shape it.

Written into the SKAB evaluation's JSON and every benchmark's results, so a number can be
traced to the onnxruntime, numpy and scikit-learn that produced it (constraints.txt pins
them for a release).

>>> sorted(environment())
['libraries', 'machine', 'python']
>>> "onnxruntime" in library_versions()
True
"""

from __future__ import annotations

import platform
from importlib import metadata

# The distributions whose version changes a score, a threshold or a timing.
LIBRARIES = ("edge-anomaly-appliance", "numpy", "scipy", "scikit-learn", "onnx", "onnxruntime", "orjson",
             "paho-mqtt", "asyncua", "cryptography")


def library_versions(extra: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """``{distribution: version}`` of :data:`LIBRARIES` and ``extra``; one not installed is left out."""
    found = {}
    for name in dict.fromkeys((*LIBRARIES, *extra)):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def environment() -> dict:
    """Python version, machine architecture and :func:`library_versions`."""
    return {"python": platform.python_version(), "machine": platform.machine(), "libraries": library_versions()}
