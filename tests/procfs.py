"""A running process's children and command line, read from Linux's /proc (for tests that
signal one process of a launched group).

A launcher's short-lived children (a `sleep` in its watch loop, a subshell) can exit between
listing and reading: a process or thread that is gone is skipped, not an error."""

from __future__ import annotations

import os


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
        return None


def children(pid: int) -> list[int]:
    """The pids of `pid`'s direct children (every thread's list); [] if `pid` is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    out = []
    for task in tasks:
        listed = _read(f"/proc/{pid}/task/{task}/children")
        out += [int(p) for p in (listed or b"").split()]
    return out


def cmdline(pid: int) -> str:
    """`pid`'s command line, its arguments separated by spaces; "" if it has exited."""
    return (_read(f"/proc/{pid}/cmdline") or b"").replace(b"\0", b" ").decode()
