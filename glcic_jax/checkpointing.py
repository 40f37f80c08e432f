"""Orbax checkpoints: save, resume, refuse incompatible workdirs, restore for inference.

Layout: `WORKDIR/checkpoints/<step>/{state, meta}`. `state` is the whole `GANState` pytree (both
networks, batch statistics, optimizer states, step, base key, mean pixel); `meta` is JSON holding
the config and the mean pixel, so that `complete.py` needs nothing but the checkpoint.

Saves are asynchronous (training goes on while the arrays are written) and atomic: Orbax writes
into a temporary folder and renames it when complete, so a kill at any moment leaves the last
finished checkpoint restorable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

# Config fields that change array shapes or the optimizer state's structure: a checkpoint made
# with other values cannot be resumed.
SHAPE_KEYS = (
    "data.image_size",
    "mask.local_size",
    "model.discriminator",
    "model.d_norm",
    "model.two_stage",
    "model.width",
    "optimizer.name",
)
# Values that checkpoints written before a key existed were made with.
SHAPE_DEFAULTS = {"model.width": 1.0}


class IncompatibleCheckpointError(ValueError):
    """The workdir holds a checkpoint made with a config whose shapes differ."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


def make_workdir(workdir: str) -> None:
    """Create WORKDIR (and parents) or fail with a message saying what to do."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise CheckpointWriteError(
            f"Cannot create --workdir {workdir} ({e.strerror or e}). Choose a folder you can "
            f"write to."
        ) from e


def _short(e: BaseException, limit: int = 400) -> str:
    """One line of an exception, led by the OS error it carries (tensorstore buries it as
    `os_error_code='28'` in a long message); long messages keep their start and end."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > limit:
        text = text[:150] + " ... " + text[-(limit - 155):]
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:
        return f"{os.strerror(int(code.group(1)))} ({text})"
    return text


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part] if part in node else None
        if node is None:
            return None
    return node


def check_compatible(stored: dict, config) -> None:
    """Raise IncompatibleCheckpointError naming every shape-relevant field that differs."""
    stored_cfg = ml_collections.ConfigDict(stored)

    def value(cfg, k):
        v = _get(cfg, k)
        return SHAPE_DEFAULTS.get(k) if v is None else v

    diffs = [
        f"{k}: checkpoint has {value(stored_cfg, k)!r}, config has {value(config, k)!r}"
        for k in SHAPE_KEYS
        if value(stored_cfg, k) != value(config, k)
    ]
    if diffs:
        raise IncompatibleCheckpointError(
            "The workdir holds a checkpoint from an incompatible config ("
            + "; ".join(diffs)
            + "). Nothing was overwritten: use a new --workdir, or set these back."
        )


def _finished_steps_in(directory: str) -> list[int]:
    """Unfinished saves are `*.orbax-checkpoint-tmp*` folders, which Orbax renames only once
    everything is written: the digit-only names are the complete checkpoints."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def finished_steps(workdir: str) -> list[int]:
    """Steps with a complete checkpoint in WORKDIR/checkpoints ([] if there is none)."""
    return _finished_steps_in(checkpoint_dir(workdir))


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with GLCIC's state and metadata."""

    def __init__(self, workdir: str, config, read_only: bool = False):
        policies = [ocp_policies.LatestN(int(config.get("keep_checkpoints", 3)))]
        if config.get("keep_every", 0):
            policies.append(ocp_policies.EveryNSteps(int(config.keep_every)))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp_policies.AnyPreservationPolicy(policies),
            enable_async_checkpointing=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def finished_steps(self) -> list[int]:
        """Steps with a complete checkpoint on disk."""
        return _finished_steps_in(self.directory)

    def _write_error(self, what: str, e: BaseException) -> CheckpointWriteError:
        done = self.finished_steps()
        resume = (f"training resumes from the last complete checkpoint (step {done[-1]}), which "
                  f"is intact" if done else "training starts afresh (no complete checkpoint yet)")
        return CheckpointWriteError(
            f"Could not write {what} under {self.directory}: {_short(e)}. Free disk space or make "
            f"--workdir writable, then rerun the same command: {resume}."
        )

    def prepare_for_writing(self) -> None:
        """Process 0, before training: fail now if the folder is not writable, and delete
        unfinished saves left by a killed run (Orbax never reads them; they only take space)."""
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=self.directory)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise self._write_error("a test file", e) from e
        for name in sorted(os.listdir(self.directory)):
            if ".orbax-checkpoint-tmp" in name:
                logging.warning("Removing %s: an unfinished checkpoint of an interrupted run.",
                                name)
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def save(self, step: int, state: Any, config, force: bool = True) -> bool:
        """Start an asynchronous save of `state` as `step` (waits for the previous one first).

        Raises CheckpointWriteError if this or the previous save failed (e.g. disk full)."""
        meta = {
            "step": int(step),
            "config": json.loads(config.to_json_best_effort()),
            "mean_pixel": [float(v) for v in np.asarray(jax.device_get(state.mean_pixel))],
        }
        try:
            return self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=force,
            )
        except Exception as e:  # orbax/tensorstore raise ValueError etc. for I/O failures
            raise self._write_error(f"the checkpoint of step {step} (or the one before)", e) from e

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore the state at `step` (default latest) into the structure/shardings given."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return out["state"]

    def wait(self) -> None:
        """Block until pending saves are written; CheckpointWriteError if one failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error("the latest checkpoint", e) from e

    def close(self) -> None:
        try:
            self.wait()
        except CheckpointWriteError:
            try:
                self.manager.close()
            except Exception:  # the same failure again: already reported
                pass
            raise
        self.manager.close()


def _resolve(path: str) -> tuple[str, int | None]:
    """Accept a workdir, its checkpoints/ folder, or one step folder; return (workdir, step)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path, None
    base = os.path.basename(path.rstrip(os.sep))
    parent = os.path.dirname(path.rstrip(os.sep))
    if base == "checkpoints":
        return parent, None
    if base.isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent), int(base)
    raise FileNotFoundError(
        f"No GLCIC checkpoint at {path}: pass --workdir=DIR of a training run, or "
        f"--checkpoint=DIR/checkpoints/STEP."
    )


def restore_for_inference(path: str, step: int | None = None):
    """Everything inference needs from a workdir or checkpoint path.

    Returns `(config, nets, state)`: the stored ConfigDict, the rebuilt `Networks` and the restored
    `GANState` (use `state.g` and `state.mean_pixel`).
    """
    from glcic_jax import state as state_lib  # local import: state imports models (flax)

    workdir, path_step = _resolve(path)
    step = path_step if step is None else step
    ckpt = Checkpointer(workdir, ml_collections.ConfigDict(), read_only=True)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"{checkpoint_dir(workdir)} holds no finished checkpoint.")
    if step is None:
        step = ckpt.latest_step()
    meta = ckpt.read_meta(step)
    config = ml_collections.ConfigDict(meta["config"])
    nets = state_lib.create_networks(config)
    abstract = jax.eval_shape(
        lambda: state_lib.create_state(config, nets, jax.random.PRNGKey(0), meta["mean_pixel"])
    )
    restored = ckpt.restore(abstract, step)
    ckpt.close()
    return config, nets, restored
