"""``appliance release ...``: the engineer's commands for publishing signed model releases.

Hooked into the ``appliance`` command by :func:`add_release_commands`. Each
command prints what it did, or one line saying why not (exit status 2).
python-tuf is imported only when a release command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

KEYS_ENV = "APPLIANCE_RELEASE_KEYS"


def _days(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < v <= 3660:
        raise argparse.ArgumentTypeError(f"{text} days: must be above 0 and at most 3660")
    return v


def _keys(args) -> list[str]:
    keys = args.keys or ([os.environ[KEYS_ENV]] if os.environ.get(KEYS_ENV) else [])
    if not keys:
        raise SystemExit(f"appliance release {args.release_cmd}: give --keys KEYS_DIR (or set {KEYS_ENV})")
    return keys


def _run(args, action) -> int:
    from appliance.release.errors import ReleaseError

    try:
        out = action()
    except ReleaseError as e:
        print(f"appliance release {args.release_cmd}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing directory, a read-only medium: one line, not a traceback
        print(f"appliance release {args.release_cmd}: {e}", file=sys.stderr)
        return 2
    if out:
        print(out)
    return 0


def cmd_init(args) -> int:
    from appliance.release.repo import init_repository

    def act():
        days = {"root": args.root_expires, "targets": args.targets_expires, "snapshot": args.snapshot_expires,
                "timestamp": args.timestamp_expires}
        root = init_repository(args.repo, _keys(args), root_keys=args.root_keys, root_threshold=args.root_threshold,
                               days={k: v for k, v in days.items() if v is not None})
        return (f"repository created in {args.repo}; keys in {_keys(args)[0]} (keep them off the repository host "
                f"and the gateways)\ninstall on each gateway as its trusted root: {root}")
    return _run(args, act)


def cmd_add(args) -> int:
    from appliance.release.repo import add_release

    def act():
        r = add_release(args.repo, args.bundle, args.version, _keys(args), name=args.name, rollback=args.rollback,
                        precision=args.precision, targets_days=args.targets_expires)
        what = "rollback to" if r["rollback"] else "added"
        return (f"{what} {r['target']} (model {r['name']} v{r['version']}, release {r['release']}, "
                f"{r['length']} bytes); gateways see it after `appliance release publish`")
    return _run(args, act)


def cmd_publish(args) -> int:
    from appliance.release.repo import publish

    def act():
        v = publish(args.repo, _keys(args), snapshot_days=args.snapshot_expires,
                    timestamp_days=args.timestamp_expires, timestamp_only=args.timestamp_only,
                    renew_root_days=args.renew_root)
        return (f"published: root v{v['root']}, snapshot v{v['snapshot']}, timestamp v{v['timestamp']} "
                f"(expires {v['timestamp_expires']}); copy metadata/ and targets/ to the host, timestamp.json last")
    return _run(args, act)


def cmd_rotate(args) -> int:
    from appliance.release.repo import rotate_key

    def act():
        r = rotate_key(args.repo, _keys(args), args.role, keyid=args.keyid, root_days=args.root_expires,
                       snapshot_days=args.snapshot_expires, timestamp_days=args.timestamp_expires)
        return (f"{r['role']} key {r['old_keyid'][:12]} replaced by {r['new_keyid'][:12]} in root "
                f"v{r['root_version']}; old key moved to {r['retired_to']}")
    return _run(args, act)


def cmd_list(args) -> int:
    from appliance.release.repo import list_releases

    return _run(args, lambda: json.dumps(list_releases(args.repo), indent=2))


def cmd_copy(args) -> int:
    from appliance.release.repo import copy_repository

    return _run(args, lambda: f"copied to {copy_repository(args.repo, args.dest)} (timestamp.json last)")


def add_release_commands(subparsers) -> None:
    """Add ``release`` with its subcommands to the ``appliance`` command's subparsers."""
    r = subparsers.add_parser("release", help="publish signed model releases (TUF repository, engineer's side)")
    rsub = r.add_subparsers(dest="release_cmd", required=True)

    def keys_arg(p):
        p.add_argument("--keys", action="append", metavar="KEYS_DIR",
                       help=f"directory of private keys, never inside the repository (repeatable; "
                            f"default ${KEYS_ENV})")

    def expiry_args(p, roles):
        for role in roles:
            p.add_argument(f"--{role}-expires", type=_days, metavar="DAYS", help=f"{role} metadata lifetime")

    p = rsub.add_parser("init", help="create a repository and its Ed25519 keys")
    p.add_argument("repo", metavar="REPO_DIR")
    keys_arg(p)
    p.add_argument("--root-keys", type=int, default=1, help="number of root keys (default 1)")
    p.add_argument("--root-threshold", type=int, default=1, help="root signatures required (default 1)")
    expiry_args(p, ("root", "targets", "snapshot", "timestamp"))
    p.set_defaults(fn=cmd_init)

    p = rsub.add_parser("add", help="add a model bundle as a signed release (visible after publish)")
    p.add_argument("repo", metavar="REPO_DIR")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--version", type=int, required=True, help="release version: a whole number that only goes up")
    p.add_argument("--name", help="model name (default: the bundle directory's name)")
    p.add_argument("--rollback", action="store_true", help="an older version on purpose: a signed rollback")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                   help="the precision gateways should run (signed)")
    keys_arg(p)
    expiry_args(p, ("targets",))
    p.set_defaults(fn=cmd_add)

    p = rsub.add_parser("publish", help="new snapshot and timestamp: make added releases visible")
    p.add_argument("repo", metavar="REPO_DIR")
    keys_arg(p)
    expiry_args(p, ("snapshot", "timestamp"))
    p.add_argument("--timestamp-only", action="store_true",
                   help="only a fresh timestamp (needs only the timestamp key): the periodic job")
    p.add_argument("--renew-root", type=_days, metavar="DAYS", help="also sign a new root version expiring in DAYS")
    p.set_defaults(fn=cmd_publish)

    p = rsub.add_parser("rotate-key", help="replace a role's key; gateways follow the new root")
    p.add_argument("repo", metavar="REPO_DIR")
    p.add_argument("--role", required=True, choices=("root", "targets", "snapshot", "timestamp"))
    p.add_argument("--keyid", help="the key to replace (prefix), when the role has several")
    keys_arg(p)
    expiry_args(p, ("root", "snapshot", "timestamp"))
    p.set_defaults(fn=cmd_rotate)

    p = rsub.add_parser("list", help="releases and metadata expiry of a repository")
    p.add_argument("repo", metavar="REPO_DIR")
    p.set_defaults(fn=cmd_list)

    p = rsub.add_parser("copy", help="copy the published repository to a folder (a USB stick), timestamp last")
    p.add_argument("repo", metavar="REPO_DIR")
    p.add_argument("dest", metavar="DEST_DIR")
    p.set_defaults(fn=cmd_copy)
