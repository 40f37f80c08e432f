"""Orbax checkpoints: save, resume, refuse incompatible workdirs, restore for inference.

Layout: `WORKDIR/checkpoints/<step>/{state, meta}`. `state` is the whole `GANState` pytree (both
networks, batch statistics, optimizer states, step, base key, mean pixel); `meta` is JSON holding
the config and the mean pixel, so that `complete.py` needs nothing but the checkpoint.

Saves are asynchronous (training goes on while the arrays are written) and atomic: Orbax writes
into a temporary folder and renames it when complete, so a kill at any moment leaves the last
finished checkpoint restorable. A save that fails in the background (disk full) is noticed at the
next training step (`Checkpointer.poll`). A checkpoint damaged afterwards (truncated file, missing
metadata, an emptied folder) is skipped with one line for the newest one that reads back whole
(`restore_newest_intact`); training moves the damaged folder aside, never deletes it.

Orbax and tensorstore report through absl's logger: during training their messages go to
`WORKDIR/library.log`, not to the console (`library_log`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

from glcic_jax import checkpoint_files, config_lib, errors
from glcic_jax.checkpoint_files import checkpoint_dir, stored_structure
from glcic_jax.checkpoint_files import finished_steps_in as _finished_steps_in

# Config fields that change array shapes or the optimizer state's structure: a checkpoint made
# with other values cannot be resumed.
SHAPE_KEYS = (
    "data.image_size",
    "mask.local_size",
    "model.discriminator",
    "model.d_norm",
    "model.two_stage",
    "model.fill",
    "model.width",
    "optimizer.name",
    "model.input_norm",  # not a shape, but the weights only make sense with their input
)


class IncompatibleCheckpointError(errors.WorkdirError):
    """The workdir holds a checkpoint made with a config whose shapes differ."""


class CheckpointWriteError(errors.WorkdirError, OSError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class NoCheckpointError(errors.WorkdirError, FileNotFoundError):
    """A path holds no (finished) checkpoint, or not the step asked for."""


class NoIntactCheckpointError(NoCheckpointError):
    """Every checkpoint in a workdir is damaged (none reads back whole)."""


# Loggers of the libraries under the checkpoints (Orbax logs through absl; tensorstore's failed
# I/O surfaces as asyncio's "exception never retrieved"): one failed save prints hundreds of
# lines and tracebacks there. Our own messages use the root logger and are not affected.
LIBRARY_LOGGERS = ("absl", "asyncio", "glcic_jax.library")
LIBRARY_LOG = "library.log"

# Whether `library_log` keeps its routing when a failed save ends its block (see
# `library_log_kept_after_write_errors`).
_KEEP_AFTER_WRITE_ERROR = False


@contextlib.contextmanager
def library_log_kept_after_write_errors() -> Iterator[None]:
    """For a caller that ends its process when a checkpoint write fails (the command line):
    within this block, `library_log` leaves the libraries' noise routed to its file when a
    failed write ends it, instead of restoring the console.

    After a failed write, tensorstore's I/O threads go on completing into Orbax's closed event
    loop for a while (longer on a loaded machine), each printing a traceback; restored, the
    console would receive them between the failure and the command's one-line error, and
    interleaved with it. Other callers keep the default: the console comes back."""
    global _KEEP_AFTER_WRITE_ERROR
    saved, _KEEP_AFTER_WRITE_ERROR = _KEEP_AFTER_WRITE_ERROR, True
    try:
        yield
    finally:
        _KEEP_AFTER_WRITE_ERROR = saved


class _QuietFileHandler(logging.FileHandler):
    """A log file that, when it cannot be written (the disk that failed the save is full),
    drops the record instead of printing logging's own error report to the console."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass

    # Flushing and closing write the buffered records too: on the full disk they fail the same
    # way, and raised from `library_log`'s exit they would replace the run's own error (the
    # failed save's one line) with a traceback.
    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass


@contextlib.contextmanager
def library_log(path: str | None) -> Iterator[None]:
    """Send the libraries' log records to the file `path` (appended) instead of the console;
    `path=None` discards them. Restored on exit."""
    handler: logging.Handler
    if path is None:
        handler = logging.NullHandler()
    else:
        try:
            handler = _QuietFileHandler(path, encoding="utf-8", delay=True)
        except OSError:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(name)s %(levelname)s %(threadName)s: %(message)s"))
    # tensorstore's I/O threads, completing into Orbax's event loop after a failed write, print
    # their tracebacks ("Event loop is closed") through sys.excepthook / sys.unraisablehook:
    # to the same file. The main thread's own uncaught errors leave this block first, so they
    # still reach the console.
    library = logging.getLogger("glcic_jax.library")
    hooks = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, tb):
        library.error("uncaught in a library callback", exc_info=(kind, value, tb))

    def unraisablehook(u):
        library.error("ignored in %r: %s", u.object, u.err_msg or "",
                      exc_info=(u.exc_type, u.exc_value, u.exc_traceback))

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, logger.level))
        logger.addHandler(handler)
        logger.propagate = False
        if path is None:
            logger.setLevel(logging.CRITICAL)
    keep = False
    try:
        yield
    except CheckpointWriteError:
        keep = _KEEP_AFTER_WRITE_ERROR  # the failed write's threads are still finishing
        raise
    finally:
        if not keep:
            sys.excepthook, sys.unraisablehook = hooks
            for logger, propagate, level in saved:
                logger.removeHandler(handler)
                logger.propagate = propagate
                logger.setLevel(level)
            handler.close()


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


def setting(config, dotted: str):
    """A config's value for a dotted key, e.g. 'model.width'."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_compatible(stored: dict, config) -> None:
    """Raise IncompatibleCheckpointError naming every shape-relevant field that differs."""
    stored_cfg = config_lib.upgrade(stored)

    diffs = [
        f"{k}: checkpoint has {setting(stored_cfg, k)!r}, config has {setting(config, k)!r}"
        for k in SHAPE_KEYS
        if setting(stored_cfg, k) != setting(config, k)
    ]
    if diffs:
        raise IncompatibleCheckpointError(
            "The workdir holds a checkpoint from an incompatible config ("
            + "; ".join(diffs)
            + "). Nothing was overwritten: use a new --workdir, or set these back."
        )


def finished_steps(workdir: str) -> list[int]:
    """Steps with a complete checkpoint in WORKDIR/checkpoints ([] if there is none)."""
    return _finished_steps_in(checkpoint_dir(workdir))


def resume_note(workdir: str) -> str:
    """What rerunning the same command does, as the end of an error message: true in every case
    (a run that stops before its first checkpoint must not promise to resume from one)."""
    done = finished_steps(workdir)
    if done:
        return (f"training resumes from the last complete checkpoint (step {done[-1]}), which is "
                f"intact")
    return "training starts afresh (no checkpoint had been written)"


# Files an interrupted training run can leave in its workdir besides unfinished checkpoints:
# the temporary files of atomic writes (leftovers.py) and the fixed temporary names that earlier
# versions used for config.json and mean_pixel.json.
_OLD_TEMP_NAMES = ("config.json.tmp", "mean_pixel.json.tmp")


def remove_leftovers(workdir: str) -> list[str]:
    """Process 0, before training: delete what killed runs left unfinished in WORKDIR
    (unfinished saves, which Orbax never reads, and temporary files); returns their paths."""
    from glcic_jax import leftovers

    directory = checkpoint_dir(workdir)
    removed = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for name in names:
        if ".orbax-checkpoint-tmp" in name:
            path = os.path.join(directory, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    removed += leftovers.remove_abandoned(directory, (leftovers.PROBE,))
    removed += leftovers.remove_abandoned(workdir, (leftovers.TEMP_FILE, leftovers.PROBE),
                                          names=_OLD_TEMP_NAMES)
    removed += leftovers.remove_abandoned(os.path.join(workdir, "samples"),
                                          (leftovers.TEMP_FILE,))
    return removed


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with GLCIC's state and metadata."""

    def __init__(self, workdir: str, config=None, read_only: bool = False):
        config = config_lib.base_config() if config is None else config  # read-only: no deletes
        policies = [ocp_policies.LatestN(int(config.keep_checkpoints))]
        if config.keep_every:
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

    def restore_newest_intact(self, abstract_for: Callable[[dict, int], Any],
                              check: Callable[[dict], None] | None = None,
                              steps: list[int] | None = None, move_aside: bool = False,
                              partial: bool = False):
        """The newest checkpoint that reads back whole: `(step, meta, state)`, or None when there
        is no checkpoint at all.

        Newer checkpoints whose metadata or arrays cannot be read (a truncated file, an empty
        `meta/metadata`, a missing `_METADATA`, an emptied step folder) are skipped with one
        warning line each and left on disk; `self.damaged` lists `(step, reason)`. `check(meta)`
        runs on the chosen step's metadata before its arrays are read (e.g. the compatibility
        check); its errors propagate. `abstract_for(meta, step)` gives the state's abstract
        structure.
        Raises NoIntactCheckpointError when checkpoints exist but none can be read.
        `move_aside=True` (training) says in that line where `move_aside_damaged` will put it.
        `partial=True`: `abstract_for` gives a subset of the state (`restore_subset`).
        """
        self.damaged: list[tuple[int, str]] = []
        self._moving = move_aside
        candidates = sorted(self.all_steps() if steps is None else steps, reverse=True)
        with library_log(None):  # the failed reads' tracebacks say nothing more than the reason
            for step in candidates:
                try:
                    meta = self.read_meta(step)
                    if not isinstance(meta.get("config"), dict) or "mean_pixel" not in meta:
                        raise ValueError("its meta/metadata lacks the config or the mean pixel")
                except Exception as e:
                    self._skip(step, f"its metadata cannot be read: {_short(e, 200)}")
                    continue
                if check is not None:
                    check(meta)
                try:
                    restore = self.restore_subset if partial else self.restore
                    state = restore(abstract_for(meta, step), step)
                    jax.block_until_ready(state)
                except Exception as e:
                    self._skip(step, f"its arrays cannot be read: {_short(e, 200)}")
                    continue
                return step, meta, state
        if self.damaged:
            raise NoIntactCheckpointError(
                f"No checkpoint in {self.directory} can be read: "
                + "; ".join(f"step {s}: {why}" for s, why in self.damaged)
                + ". They were left as they are. Use a new --workdir, or restore the folder "
                "from a backup.")
        return None

    def _skip(self, step: int, why: str) -> None:
        self.damaged.append((step, why))
        fate = (f"it is moved to {self._aside_path(step)}, not deleted" if self._moving
                else "it is left on disk")
        logging.warning("Skipping the damaged checkpoint %s/%d (%s); %s. Using the newest intact "
                        "one instead.", self.directory, step, why, fate)

    def _aside_path(self, step: int) -> str:
        aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):
            target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        return target

    def move_aside_damaged(self) -> None:
        """Training, after `restore_newest_intact` skipped damaged steps: move their folders to
        WORKDIR/damaged_checkpoints/ (never deleted), so that new saves of those steps and
        Orbax's clean-up leave them alone. Process 0 only; then every process re-reads the steps."""
        damaged = getattr(self, "damaged", [])
        if not damaged:
            return
        if jax.process_index() == 0:
            for step, _ in damaged:
                target = self._aside_path(step)  # the path the warning line named
                try:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(os.path.join(self.directory, str(step)), target)
                except OSError as e:
                    raise self._write_error(f"{target} (moving damaged step {step} aside)",
                                            e) from e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("glcic_move_aside_damaged")
        self.manager.reload()

    def _write_error(self, what: str, e: BaseException) -> CheckpointWriteError:
        return CheckpointWriteError(
            f"Could not write {what} under {self.directory}: {_short(e)}. Free disk space or make "
            f"--workdir writable, then rerun the same command: "
            f"{resume_note(os.path.dirname(self.directory))}."
        )

    def prepare_for_writing(self) -> None:
        """Process 0, before training: fail now if the folder is not writable, and delete what
        killed runs left unfinished (`remove_leftovers`), saying so in one line."""
        from glcic_jax import leftovers

        try:
            fd, probe = leftovers.temp_file(self.directory, prefix=leftovers.PROBE)
            os.remove(probe)
            os.close(fd)
        except OSError as e:
            raise self._write_error("a test file", e) from e
        line = leftovers.describe(remove_leftovers(os.path.dirname(self.directory)),
                                  "unfinished checkpoint or file",
                                  "unfinished checkpoints and files")
        if line:
            logging.warning("%s", line)

    def save(self, step: int, state: Any, config, force: bool = True) -> bool:
        """Start an asynchronous save of `state` as `step` (waits for the previous one first).

        Raises CheckpointWriteError if this or the previous save failed (e.g. disk full)."""
        meta = {
            "step": int(step),
            "config": json.loads(config.to_json_best_effort()),
            "mean_pixel": [float(v) for v in np.asarray(jax.device_get(state.mean_pixel))],
        }
        self.poll(wait=True)  # a failure of the save before is named with its own step
        try:
            started = self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=force,
            )
        except Exception as e:  # orbax/tensorstore raise ValueError etc. for I/O failures
            raise self._write_error(f"the checkpoint of step {step}", e) from e
        if started:
            self._in_flight = step
        return started

    _in_flight: int | None = None

    def poll(self, wait: bool = False) -> None:
        """Raise CheckpointWriteError, naming its step, if the asynchronous save in flight has
        ended without producing its checkpoint (disk full). `wait=False`: only if it has ended
        by now; `wait=True`: wait for it to end first (training does so at the step after each
        save, so that a failed save stops the run there)."""
        step = self._in_flight
        if step is None or (not wait and self.manager.is_saving_in_progress()):
            return
        self._in_flight = None
        error: BaseException = RuntimeError("the save ended without writing it")
        try:  # blocks until it ended; Orbax's own error, for the message (its traceback goes to
            self.manager.wait_until_finished()  # library.log)
        except Exception as e:
            error = e
        if step in self.finished_steps():
            return
        raise self._write_error(f"the checkpoint of step {step}", error)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore the state at `step` (default latest) into the structure/shardings given."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return out["state"]

    def restore_subset(self, subset: dict, step: int | None = None) -> dict:
        """Only the arrays named by `subset` (nested dicts of the state's field names, with
        abstract arrays as leaves), as host numpy arrays; the rest of the checkpoint is not read.

        Inference needs the generator and the mean pixel: a few percent of a checkpoint that also
        holds the discriminator and both optimizer states (Orbax's partial restore).
        """
        step = self.latest_step() if step is None else step
        # Without the checkpoint's own tree metadata Orbax would take the structure from
        # `subset` and read on: such a checkpoint is damaged, as it is for a full restore.
        if not os.path.isfile(os.path.join(self.directory, str(step), "state", "_METADATA")):
            raise FileNotFoundError("its state/_METADATA is missing")
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                              subset)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=subset, restore_args=restore_args, partial_restore=True)))
        return out["state"]

    def wait(self) -> None:
        """Block until pending saves are written; CheckpointWriteError if one failed."""
        self.poll(wait=True)  # the save this object started, named with its step
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
    found = checkpoint_files.resolve(path)
    if found is not None:
        return found
    raise NoCheckpointError(
        f"No GLCIC checkpoint at {os.path.abspath(path)}: expected a training workdir (holding "
        f"checkpoints/), its checkpoints/ folder, or one checkpoints/STEP folder."
    )


def _restore_newest_intact(path: str, step: int | None, abstract_for, partial: bool = False):
    """`Checkpointer.restore_newest_intact` on a workdir or checkpoint path, read-only: the
    newest intact checkpoint (or `step`, which must be intact), as `(step, meta, state)`."""
    workdir, path_step = _resolve(path)
    step = path_step if step is None else step
    with library_log(None):  # Orbax's warnings that a read-only manager will not save
        ckpt = Checkpointer(workdir, read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise NoCheckpointError(f"{checkpoint_dir(workdir)} holds no finished checkpoint.")
        if step is not None and step not in steps:
            raise NoCheckpointError(f"{checkpoint_dir(workdir)} holds no checkpoint of step "
                                    f"{step} (it holds {', '.join(map(str, steps))}).")
        found = ckpt.restore_newest_intact(abstract_for, steps=None if step is None else [step],
                                           partial=partial)
    finally:
        with library_log(None):
            ckpt.close()
    if found is None:  # pragma: no cover - steps were listed above
        raise NoCheckpointError(f"{checkpoint_dir(workdir)} holds no finished checkpoint.")
    return found


def restore_for_inference(path: str, step: int | None = None):
    """Everything inference needs from a workdir or checkpoint path.

    Returns `(config, nets, state)`: the stored ConfigDict, the rebuilt `Networks` and the restored
    `GANState` (use `state.g` and `state.mean_pixel`). Given a workdir, damaged newer checkpoints
    are skipped (one warning line each) for the newest intact one; a step asked for by path or
    `step` must itself be intact.
    """
    from glcic_jax import state as state_lib  # local import: state imports models (flax)

    built = {}

    def abstract_for(meta, step):
        config = config_lib.upgrade(meta["config"])  # one from an older version too
        built["config"], built["nets"] = config, state_lib.create_networks(config)
        return jax.eval_shape(state_lib.state_initializer(
            config, built["nets"], jax.random.PRNGKey(0), meta["mean_pixel"]))

    found = _restore_newest_intact(path, step, abstract_for)
    return built["config"], built["nets"], found[2]


class GeneratorCheckpoint(NamedTuple):
    """What inference reads from a checkpoint (`restore_generator`)."""

    config: Any  # the stored ConfigDict (config_lib.upgrade)
    generator: Any  # the flax module
    variables: dict  # {'params', 'batch_stats'} of the generator, numpy arrays
    mean_pixel: np.ndarray  # float32 [3]
    step: int


def restore_generator(path: str, step: int | None = None,
                      on_structure: Callable[[Any, Any, dict], None] | None = None
                      ) -> GeneratorCheckpoint:
    """The completion network of a workdir or checkpoint path, and nothing else.

    As `restore_for_inference` (same paths, same skipping of damaged newer checkpoints, same
    errors), but reads only the generator's parameters and batch statistics and the mean pixel:
    neither the discriminator nor the optimizer states are read or even built, which makes a
    cold `complete` start several times faster.

    `on_structure(config, generator, abstract_variables)`, if given, is called as soon as a
    checkpoint's config is read, before its arrays are (again for an older checkpoint when a
    newer one turns out damaged): `inference.load` compiles the network meanwhile.
    """
    built = {}
    folder = checkpoint_dir(_resolve(path)[0])
    fields = checkpoint_files.GENERATOR_FIELDS

    def abstract_for(meta, step):
        config, generator = checkpoint_files.generator_of(meta)
        built["config"], built["generator"] = config, generator
        # The variables' structure as the checkpoint stored it; or, where that cannot be read,
        # from the module at a small input (shapes do not depend on the image size), whose
        # tracing was most of a load's time in a fresh process. Either way flax checks every
        # parameter's shape against the module when the network is applied.
        g = stored_structure(os.path.join(folder, str(step)), ("g",), fields)
        if g is None:
            g = jax.eval_shape(lambda: generator.init(
                jax.random.PRNGKey(0), jax.numpy.zeros((1, 16, 16, 4), jax.numpy.float32),
                train=False))
            g = {k: g[k] for k in fields if g.get(k)}
        if on_structure is not None:
            on_structure(config, generator, g)
        return {"g": g, "mean_pixel": jax.ShapeDtypeStruct((3,), np.float32)}

    found_step, _, subset = _restore_newest_intact(path, step, abstract_for, partial=True)
    return GeneratorCheckpoint(built["config"], built["generator"], subset["g"],
                               np.asarray(subset["mean_pixel"], np.float32), found_step)
