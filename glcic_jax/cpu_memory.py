"""Transparent huge pages for the large blocks that XLA's CPU runtime allocates for every call.

XLA's CPU runtime allocates each call's temporary buffer with malloc and frees it when the call
ends (84 MB for a quickstart phase-1 step). glibc's malloc maps a block that large afresh every
time, so every training step faulted that memory back in one 4 KiB page at a time: about 21,000
page faults per quickstart step, against PyTorch's 4,500-4,800; the step's memory-bound copies
ran 2-3 times slower than alone, probably from that (docs/cpu_speed.md). With glibc's tunable
`glibc.malloc.hugetlb=1`, malloc asks the kernel for transparent huge pages for such blocks
(`madvise(MADV_HUGEPAGE)`): some 750-1,000 faults per step, and the quickstart's steps took about
a fifth less time on a 2-core AMD EPYC. PyTorch's CPU allocator has the same switch
(`THP_MEM_ALLOC_ENABLE`). Keeping the memory between calls instead (glibc's other tunables, or
JAX computing on the calling thread) was tried and not kept (docs/cpu_speed.md).

glibc reads its tunables once, when a process starts. `relaunch_with_huge_pages()` therefore
starts the command again in its own process (`os.execve`: the same PID, arguments and
environment, plus the tunable) before it has done anything, and only where the tunable changes
something (`huge_pages_environment`): Linux with glibc 2.35 or later, and the kernel's
transparent huge pages in `madvise` mode (in `always` mode large mappings get them anyway, in
`never` mode not at all). A `GLIBC_TUNABLES` that already names the tunable is left as it is, so
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns this off. Results are unchanged: only the size of
the memory's pages differs. For the commands that run many XLA calls on the CPU (training and
evaluation, the web server); a one-shot `complete` is left alone.
"""

from __future__ import annotations

import os
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
FIRST_GLIBC = (2, 35)  # the first release with the tunable
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_release() -> tuple[int, int] | None:
    """(2, 36) for glibc 2.36; None for another C library or none known."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):  # not a GNU system
        return None
    m = re.fullmatch(r"glibc (\d+)\.(\d+).*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ('always', 'madvise' or 'never'), None unknown."""
    try:
        with open(path) as f:
            m = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def huge_pages_environment(environ, glibc: tuple[int, int] | None,
                           mode: str | None) -> dict | None:
    """The environment to start the command again with, or None where nothing would change."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (glibc is None or glibc < FIRST_GLIBC or mode != "madvise"
            or TUNABLE in tunables):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))}


def relaunch_with_huge_pages() -> None:
    """Start this command again with `glibc.malloc.hugetlb=1` where that changes something (the
    module docstring); returns only where it does not (or where the restart failed: the command
    then runs as it is). Call it first thing in a command's entry point: whatever ran before it
    runs again in the restarted process."""
    env = huge_pages_environment(os.environ, glibc_release(), thp_mode())
    if env is None or not sys.orig_argv or not sys.executable:  # orig_argv: empty if embedded
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return
