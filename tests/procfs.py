"""A running process's children and command line, read from Linux's /proc (for tests that
signal one process of a launched group)."""

from __future__ import annotations

import os


def children(pid: int) -> list[int]:
    """The pids of `pid`'s direct children (every thread's list)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def cmdline(pid: int) -> str:
    """`pid`'s command line, its arguments separated by spaces."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()
