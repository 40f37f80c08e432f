"""Temporary files and folders that a kill can leave behind, and their removal by the next run.

Every write that takes more than one step (an output image, a JSON file, a converted workdir)
goes to a temporary name beside its target and is renamed when complete. A SIGKILL (or a power
cut) between the two leaves the temporary item. So that the next run can tell such a leftover
from the temporary item of another run still writing (two `complete` commands into one folder),
the writing process holds an advisory lock (`flock`) on the item for as long as it exists; the
kernel drops the lock when the process dies, however it dies. `remove_abandoned` removes the
items whose lock is free, and nothing else; there are no lock files that could go stale.
Items from versions that did not lock are free too, so they are removed as well.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from typing import Iterable

# Prefixes of the temporary items that glcic_jax creates through this module.
TEMP_FILE = ".tmp-"
PROBE = ".write-probe-"
CONVERTING = ".converting-"


# What `tempfile` appends to a prefix: 8 characters of its alphabet, then the suffix. Only such
# names are ever removed, never a user's own file that happens to start like one.
_RANDOM_PART = re.compile(r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?")


def _ours(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(p) and _RANDOM_PART.fullmatch(name[len(p):]) for p in prefixes)


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def temp_file(folder: str, prefix: str = TEMP_FILE, suffix: str = "") -> tuple[int, str]:
    """`(fd, path)` of a new, locked temporary file in `folder` (as `tempfile.mkstemp`). The lock
    lasts until `fd` is closed."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        _lock(fd)
    except OSError:  # a file system without flock: the item is still written and renamed
        pass
    return fd, path


def temp_folder(parent: str, prefix: str) -> tuple[str, int]:
    """`(path, fd)` of a new temporary folder in `parent`, locked until `fd` is closed."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    fd = os.open(path, os.O_RDONLY)
    try:
        _lock(fd)
    except OSError:
        pass
    return path, fd


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (a locked temporary file, then a rename). On failure
    (disk full) the temporary file is removed and the target left as it was."""
    fd, tmp = temp_file(os.path.dirname(os.path.abspath(path)), suffix=".json")
    try:
        with os.fdopen(fd, "w", closefd=False) as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        os.close(fd)


def write_json(path: str, payload, **kwargs) -> None:
    write_text(path, json.dumps(payload, **kwargs))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def abandoned(path: str) -> bool:
    """Whether no living process holds the lock of the temporary item `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or not ours to read
        return False
    try:
        _lock(fd)
    except BlockingIOError:
        return False
    except OSError:  # no flock on this file system: only a killed run leaves these names
        return True
    finally:
        os.close(fd)  # also releases the lock just taken
    return True


def remove_abandoned(folder: str, prefixes: Iterable[str] = (TEMP_FILE, PROBE),
                     names: Iterable[str] = ()) -> list[str]:
    """Remove the temporary items in `folder` (names starting with one of `prefixes`, plus the
    fixed `names` older versions used) that no living process holds; returns their paths."""
    prefixes, names = tuple(prefixes), set(names)
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for name in entries:
        if not (_ours(name, prefixes) or name in names):
            continue
        path = os.path.join(folder, name)
        if abandoned(path):
            try:
                _remove(path)
            except OSError:  # left for a later run; never a reason to fail this one
                continue
            removed.append(path)
    return removed


def describe(removed: list[str], one: str, several: str) -> str | None:
    """One line naming what `remove_abandoned` removed (None if nothing); `one` / `several`:
    what they are, e.g. 'unfinished output file' / 'unfinished output files'."""
    if not removed:
        return None
    shown = ", ".join(removed[:3]) + (f" and {len(removed) - 3} more" if len(removed) > 3 else "")
    what = one if len(removed) == 1 else several
    return f"Removed {len(removed)} {what} left by an interrupted run: {shown}."
