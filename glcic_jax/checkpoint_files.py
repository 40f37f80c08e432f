"""A checkpoint folder's layout and its small JSON files, read without Orbax.

`WORKDIR/checkpoints/<step>/{state, meta}` (`checkpointing.py` writes them through Orbax): `meta`
holds the config and the mean pixel as JSON, `state/_METADATA` Orbax's tree metadata. Importing
Orbax takes about 0.2 s of a cold `complete` on a 2-core CPU. What `inference.load` needs first
(the newest finished step, its config and the generator's array shapes) is read here from those
files, so that it traces, lowers and starts compiling the network before Orbax is imported; the
import then runs beside the compilation. Orbax still reads the arrays and stays the judge of
which checkpoint is intact (`checkpointing.restore_generator`).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np


# The generator's arrays in a checkpoint's state, under "g": all that inference reads.
GENERATOR_FIELDS = ("params", "batch_stats")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def finished_steps_in(directory: str) -> list[int]:
    """Unfinished saves are `*.orbax-checkpoint-tmp*` folders, which Orbax renames only once
    everything is written: the digit-only names are the complete checkpoints."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def resolve(path: str) -> tuple[str, int | None] | None:
    """A workdir, its checkpoints/ folder, or one step folder, as (workdir, step or None);
    None for anything else."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path, None
    base = os.path.basename(path.rstrip(os.sep))
    parent = os.path.dirname(path.rstrip(os.sep))
    if base == "checkpoints":
        return parent, None
    if base.isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent), int(base)
    return None


def read_meta(step_dir: str) -> dict | None:
    """A checkpoint's `meta` (the config and the mean pixel), None where it cannot be read."""
    try:
        with open(os.path.join(step_dir, "meta", "metadata")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("config"), dict) else None


def newest_meta(path: str, step: int | None = None) -> tuple[str, dict] | None:
    """(step folder, meta) of the checkpoint a restore of `path` (and `step`) tries first: the
    step asked for, or the newest finished one. None where there is none or it cannot be read;
    whether its arrays are intact is not checked here."""
    found = resolve(path)
    if found is None:
        return None
    workdir, path_step = found
    step = path_step if step is None else step
    folder = checkpoint_dir(workdir)
    steps = finished_steps_in(folder)
    if step is None and steps:
        step = steps[-1]
    if step not in steps:
        return None
    step_dir = os.path.join(folder, str(step))
    meta = read_meta(step_dir)
    return None if meta is None else (step_dir, meta)


def stored_structure(step_dir: str, prefix: tuple[str, ...], fields: tuple[str, ...],
                     dtype=np.float32) -> dict | None:
    """The float32 arrays under `prefix` + one of `fields` in a checkpoint's state, as nested
    dicts of `jax.ShapeDtypeStruct`, read from Orbax's tree metadata (`state/_METADATA`, a few
    kilobytes of JSON) rather than traced from the module; None where that file is absent, in
    another layout (another Orbax version) or holds anything but dict keys and array shapes there.

    Orbax's own metadata API opens every array for its dtype, slower than tracing; this file
    does not record dtypes: every parameter and statistic this project saves is float32.
    """
    try:
        with open(os.path.join(step_dir, "state", "_METADATA")) as f:
            tree = json.load(f)["tree_metadata"]
        out: dict = {}
        for entry in tree.values():
            keys = entry["key_metadata"]
            path = tuple(k["key"] for k in keys)
            if path[:len(prefix)] != prefix or len(path) <= len(prefix) + 1 \
                    or path[len(prefix)] not in fields:
                continue
            value = entry["value_metadata"]
            if any(k.get("key_type") != 2 for k in keys) or value.get("skip_deserialize") \
                    or "write_shape" not in value:  # 2: a dict key
                return None
            node = out
            for key in path[len(prefix):-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = jax.ShapeDtypeStruct(tuple(int(d) for d in value["write_shape"]),
                                                  dtype)
        return out or None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def generator_of(meta: dict):
    """(config, generator module) that a checkpoint's `meta` describes; a config of an older
    version is upgraded first."""
    from glcic_jax import config_lib, models  # local imports: flax

    config = config_lib.upgrade(meta["config"])
    return config, models.make_generator(config.model)
