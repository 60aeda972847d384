"""The engineer's side of model updates: a TUF repository of signed model releases.

:mod:`appliance.release.repo` keeps the repository with python-tuf's metadata
API (init, add, publish, rotate a key, list, copy to a USB stick);
:mod:`appliance.release.keys` the Ed25519 keys, which stay on the engineer's
machines; :mod:`appliance.release.archive` packs a bundle deterministically;
:mod:`appliance.release.cli` is ``appliance release ...``. What a release
promises, and how a gateway checks it, is :mod:`appliance.sync.trust`.

Importing this package loads neither python-tuf nor the detector.
"""

from appliance.release.cli import add_release_commands

__all__ = ["add_release_commands"]
