"""`train_and_evaluate(config, workdir)`: GLCIC's three-phase training loop.

Data flows one way: host batches (uint8) -> global jax.Array sharded over the mesh's `data` axis
-> jitted step (masks drawn on the device) -> state. Only process 0 writes logs, samples and
TensorBoard; every process takes part in checkpointing (Orbax coordinates them).

Rerunning the same command resumes from the latest checkpoint: same step, same phase, the same
data stream position and the same mask stream.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import signal
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from glcic_jax import checkpointing, config_lib, distributed, errors, input_pipeline, masks
from glcic_jax import steps as steps_lib
from glcic_jax import state as state_lib
from glcic_jax import summary


class NonFiniteError(errors.UserError, FloatingPointError):
    """A loss or gradient became NaN/inf and nan_policy='stop'.

    A user error (one line, no traceback): a diverged run is an outcome of the config and the data
    (learning rate, loss weights, a bad image), not a fault our traceback could locate, and the
    message says what to change and which checkpoint is kept (if one was written). Our
    judgement."""


class _StopSignal:
    """SIGTERM / SIGINT: finish the current step, checkpoint, exit cleanly."""

    def __init__(self, received: str | None = None):
        self.received = received  # a signal already being honoured: the next Ctrl-C stops now
        self.interrupted = False  # a second Ctrl-C arrived: stop now, without saving
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            logging.warning("%s received: finishing this step, then checkpointing and exiting "
                            "(a second Ctrl-C stops at once, without saving).", name)
        elif signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
            # Recorded as well as raised: Python runs handlers between bytecodes of whatever
            # runs, and an exception raised inside a callback that swallows exceptions (JAX's
            # GC callback during compilation: "Exception ignored in: _xla_gc_callback") is
            # lost. `check()` after every step and before every save raises it again.
            self.interrupted = True
            raise KeyboardInterrupt
        else:
            # Launchers and schedulers forward SIGTERM to every process, sometimes more than once
            # (srun, a process-group kill plus a launcher's forwarding): never let a repeat cut
            # short the save the first one asked for.
            logging.warning("%s received again: already stopping after this step's checkpoint.",
                            name)

    def check(self) -> None:
        """Raise KeyboardInterrupt if a second Ctrl-C arrived (even if its raise was lost)."""
        if self.interrupted:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# Multi-process runs agree on a stop signal (SIGTERM reaches the processes at different steps)
# every this many steps: one tiny cross-process collective, not a per-step host sync.
STOP_SYNC_EVERY = 10


@contextlib.contextmanager
def _saves_finished_on_error(ckpt: checkpointing.Checkpointer):
    """When training stops with an error, let the asynchronous save in flight finish first:
    exiting the interpreter mid-save would lose the last good checkpoint."""
    try:
        yield
    except checkpointing.CheckpointWriteError:
        raise  # the failed save is the error: nothing left to finish, nothing more to report
    except BaseException:
        try:
            ckpt.wait()
        except Exception as e:  # report it, but the original error is the one to raise
            logging.error("%s", e)
        raise


def _kept(ckpt: checkpointing.Checkpointer | None) -> str:
    """Which checkpoint a run that stops now leaves to resume from, for its error message."""
    if ckpt is None:  # no checkpointer to ask (a caller outside the training loop)
        return "any earlier checkpoint is kept"
    try:
        ckpt.wait()  # a save still in flight belongs in the answer
    except checkpointing.CheckpointWriteError:
        pass
    done = ckpt.finished_steps()
    return (f"the last good checkpoint (step {done[-1]}) is kept" if done
            else "no checkpoint had been written yet (a rerun starts afresh)")


def fixed_eval_masks(config, num: int) -> masks.Masks:
    """Masks for the sample grid / evaluation batch, identical in every run and checkpoint
    (fixed crops of the mask files with mask.shape='files')."""
    size = int(config.data.image_size)
    if config.mask.shape == "files":
        holes = input_pipeline.fixed_file_masks(config, num)
        return masks.masks_from_holes(jnp.asarray(holes[..., None], jnp.float32),
                                      masks.MaskSpec.from_config(config.mask))
    return masks.fixed_eval_masks(config, num, size, size)


def _format_metrics(values: dict[str, float]) -> str:
    order = ("mse", "g_loss", "g_adv", "d_loss", "d_real", "d_fake", "gp", "perceptual")
    keys = [k for k in order if k in values] + sorted(set(values) - set(order) - {"nonfinite"})
    return " ".join(f"{k}={values[k]:.4g}" for k in keys)


def _window_updates(pending: list[tuple[int, str, dict]], config) -> str:
    """'phase 3 (joint)', or for a window over several kinds / phases e.g.
    'phases 1-2 (completion x2, discriminator x1)': what the logged averages are over."""
    counts = collections.Counter(name for _, name, _ in pending)
    phases = sorted({steps_lib.phase_of(step, config) for step, _, _ in pending})
    where = (f"phase {phases[-1]}" if len(phases) == 1
             else f"phases {phases[0]}-{phases[-1]}")
    kinds = (next(iter(counts)) if len(counts) == 1
             else ", ".join(f"{k} x{n}" for k, n in counts.items()))
    return f"{where} ({kinds})"


def itstime(step: int, every: int) -> bool:
    """Whether a periodic action (logging, samples, evaluation, checkpoints) is due after `step`
    steps, every `every` steps (0 = never)."""
    return every > 0 and step % every == 0


class Timer:
    """Images per second over a logging window, with pauses left out.

    A first call of a jitted function compiles it (30-60 s on a CPU for the joint step), and the
    first save and evaluation compile their own parts: counted in, they made the ETA after a
    compilation (or right after a resume) many times too long. `pause()` / `resume(steps)` (or
    `with timer.paused(steps):`) leave out that time and the steps taken meanwhile.
    """

    def __init__(self, batch_size: int, now: float | None = None):
        self.batch_size = batch_size
        self.restart(now)

    def restart(self, now: float | None = None) -> None:
        """A new window from `now`."""
        self.start = time.time() if now is None else now
        self.paused_s = 0.0
        self.paused_steps = 0
        self._since: float | None = None

    def pause(self, now: float | None = None) -> None:
        self._since = time.time() if now is None else now

    def resume(self, now: float | None = None, steps: int = 0) -> None:
        """End the pause; `steps` were taken during it (they leave the window too)."""
        now = time.time() if now is None else now
        self.paused_s += now - self._since
        self.paused_steps += steps
        self._since = None

    @contextlib.contextmanager
    def paused(self, steps: int = 0):
        self.pause()
        try:
            yield
        finally:
            self.resume(steps=steps)

    def rate(self, steps: int, now: float | None = None) -> float:
        """Images/s for `steps` steps ending at `now` (nan: nothing but pauses measured)."""
        now = time.time() if now is None else now
        n = steps - self.paused_steps
        seconds = now - self.start - self.paused_s
        if n <= 0 or seconds <= 0:
            return float("nan")
        return n * self.batch_size / seconds


# What compiles on the first call of each kind (logged, so that a minute of silence is not one).
_FIRST_CALL = {
    "completion": "the phase-1 completion step",
    "discriminator": "the phase-2 discriminator step",
    "joint": "the phase-3 joint step",
    "generator": "the phase-3 generator step",
    "sample grid": "the sample-grid completion",
    "eval": "",  # evaluate.TrainingEval says so itself
    "checkpoint": "",  # the finiteness check; Orbax's first save is slow too
}


_NOT_THE_LOSSES = "gradients or updated weights (the losses were finite)"


def _check_finite(pending: list[tuple[int, str, dict]], config,
                  ckpt: checkpointing.Checkpointer | None = None) -> dict[str, float]:
    """Fetch the pending per-step metrics; stop (or count) on non-finite values; return means.

    Each metric is the mean over the steps that produced it (finite values only): a window that
    spans phases, or phase 3 with n_critic / n_generator != 1, mixes steps that report different
    metrics (a discriminator step has no `mse`, a completion step no `d_loss`).
    """
    fetched = jax.device_get([m for _, _, m in pending])
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped = 0
    for (step, name, _), m in zip(pending, fetched):
        bad = sorted(k for k, v in m.items() if k != "nonfinite" and not np.isfinite(v))
        if m.get("nonfinite", 0.0) > 0 or bad:
            if config.nan_policy == "skip":
                skipped += 1
                logging.warning("Non-finite values at step %d (%s update): %s; update skipped "
                                "(nan_policy=skip).", step + 1, name,
                                ", ".join(bad) or _NOT_THE_LOSSES)
            else:
                raise NonFiniteError(
                    f"Non-finite values at step {step + 1} ({name} update): "
                    f"{', '.join(bad) or _NOT_THE_LOSSES}. The state of that step was not saved; "
                    f"{_kept(ckpt)}. Lower the learning rate, check the data, "
                    f"or set --config.nan_policy=skip to skip such updates."
                )
        for k, v in m.items():
            if np.isfinite(v):
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
    out = {k: v / counts[k] for k, v in sums.items()}
    out["skipped_updates"] = float(skipped)
    return out


@jax.jit
def _count_nonfinite(state) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(state)
    return sum(jnp.sum(~jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact))


def _check_state_finite(state, step: int, ckpt: checkpointing.Checkpointer | None = None) -> None:
    """Never checkpoint NaN/inf weights: an update can overflow although its losses were finite."""
    if int(jax.device_get(_count_nonfinite(state))):
        raise NonFiniteError(
            f"The parameters or optimizer state became non-finite at step {step} although the "
            f"losses were finite (an update overflowed). The state was not saved; "
            f"{_kept(ckpt)}. Lower the learning rate."
        )


# Settings that must be the same in a fine-tuning run and the workdir it starts from
# (`config.init_from`): they change the completion network's parameters (width, fill) or what
# its weights mean.
INIT_FROM_KEYS = ("model.two_stage", "model.padding", "model.input_norm", "model.width",
                  "model.fill")


def load_init_from(config):
    """The `inference.Completer` of `config.init_from`, checked against `config`.

    Raises inference.LoadError when it cannot be loaded and ConfigError when its model settings
    differ (one line each, naming every setting that differs, as a resume does).
    """
    from glcic_jax import inference

    source = inference.load(config.init_from)
    differ = [k for k in INIT_FROM_KEYS
              if checkpointing.setting(source.config, k) != checkpointing.setting(config, k)]
    if differ:
        named = "; ".join(f"{k}: checkpoint has {checkpointing.setting(source.config, k)!r}, "
                          f"config has {checkpointing.setting(config, k)!r}" for k in differ)
        add = " ".join(f"--config.{k}={checkpointing.setting(source.config, k)}" for k in differ)
        raise errors.ConfigError(
            f"init_from={config.init_from} was trained with other model settings ({named}): add "
            f"{add} (the weights only make sense with the settings they learned)."
        )
    return source


def start_step(config) -> int:
    """First step of a run that starts from `init_from`: the start of phase `init_phase`."""
    return config_lib.phase_starts(config)[int(config.init_phase) - 1]


def _replicated_array(value, sharding: NamedSharding) -> jax.Array:
    """A host value as an array replicated over the (possibly multi-host) mesh."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _start_from(config, state, source, nets, mesh: Mesh):
    """`state` (fresh) with `source`'s completion network, a fresh optimizer state for it, and
    the step set to the start of phase `config.init_phase`. D stays freshly initialised."""
    replicated = NamedSharding(mesh, P())
    g_params = source.variables["params"]
    g_stats = source.variables.get("batch_stats", {})
    for name, ours, theirs in (("params", state.g.params, g_params),
                               ("batch_stats", state.g.batch_stats, g_stats)):
        shapes = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), ours)
        if jax.tree_util.tree_structure(ours) != jax.tree_util.tree_structure(theirs) or (
                shapes != jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), theirs)):
            raise errors.ConfigError(f"init_from={config.init_from}: its completion network's "
                                     f"{name} do not fit this config's completion network.")
    put = functools.partial(_replicated_array, sharding=replicated)
    params = jax.tree_util.tree_map(put, jax.device_get(g_params))
    stats = jax.tree_util.tree_map(put, jax.device_get(g_stats))
    opt_state = distributed.init_replicated(nets.g_tx.init, mesh, params)
    step = start_step(config)
    logging.info("Starting from the completion network of %s (its step %d) with a fresh "
                 "discriminator, at step %d (phase %d); mean pixel %s.", config.init_from,
                 source.step, step, steps_lib.phase_of(step, config),
                 np.round(source.mean_pixel, 4).tolist())
    return state.replace(
        step=put(np.asarray(step, np.int32)),
        g=state_lib.ModelState(params=params, batch_stats=stats, opt_state=opt_state),
    )


def restore_or_init(config, nets, mesh: Mesh, ckpt: checkpointing.Checkpointer):
    """Resume: `(state, mean_pixel, config it was trained with)` of the newest intact checkpoint
    (after a compatibility check; damaged newer ones are skipped with one line each), or
    `(None, None, None)` for a fresh run.
    """
    replicated = NamedSharding(mesh, P())

    def abstract_for(meta, step):
        abstract = jax.eval_shape(state_lib.state_initializer(
            config, nets, jax.random.PRNGKey(int(config.seed)), np.zeros(3, np.float32)))
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)

    found = ckpt.restore_newest_intact(
        abstract_for, check=lambda meta: checkpointing.check_compatible(meta["config"], config),
        move_aside=True)
    if found is None:
        return None, None, None
    step, meta, state = found
    logging.info("Resuming from %s/%d.", ckpt.directory, step)
    return state, np.asarray(meta["mean_pixel"], np.float32), meta["config"]


# The jitted steps of the runs in this process, by setup. A process that trains more than once (a
# sweep, a notebook, the test suite) reuses the steps of an identical setup instead of tracing and
# lowering them again: ~10 s per run for the tiny config on a CPU, more for the paper's networks.
# The key holds everything the steps read: the model and optimizer settings (what
# `state_lib.create_networks` builds from), the `StepSettings` and the mesh. A run with a
# perceptual loss builds its own (the VGG weights file is read when that loss is made).
_SETUPS: collections.OrderedDict = collections.OrderedDict()
_SETUPS_KEPT = 4


def _setup_key(config, mesh: Mesh):
    import json

    def as_json(section):
        return json.dumps(section.to_dict(), sort_keys=True, default=repr)

    return (as_json(config.model), as_json(config.optimizer),
            steps_lib.StepSettings.from_config(config), mesh)


def _networks_and_steps(config, mesh: Mesh, perceptual_fn=None):
    """`(Networks, Steps)` for the config, the steps sharded over the mesh (reused; see _SETUPS)."""
    key = _setup_key(config, mesh) if perceptual_fn is None else None
    if key is not None and key in _SETUPS:
        _SETUPS.move_to_end(key)
        return _SETUPS[key]
    nets = state_lib.create_networks(config)
    # State replicated, batch split over the mesh; outputs pinned replicated (distributed.py).
    setup = nets, distributed.shard_steps(steps_lib.make_steps(config, nets, perceptual_fn), mesh)
    if key is not None:
        _SETUPS[key] = setup
        while len(_SETUPS) > _SETUPS_KEPT:
            _SETUPS.popitem(last=False)
    return setup


def train_and_evaluate(config, workdir: str) -> Any:
    """Train GLCIC as configured; checkpoints, samples and TensorBoard events go to `workdir`.

    Returns the final `GANState`.
    """
    mesh = distributed.make_mesh()
    config_lib.validate(config, num_devices=mesh.size)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    # Every check a user can fail that needs no workdir runs before anything is written to it:
    # a start that fails on its data or on init_from leaves no folder behind.
    source = _check_before_writing(config, workdir)
    if is_main:
        checkpointing.make_workdir(workdir)

    with contextlib.ExitStack() as library_noise:
        return _train(config, workdir, mesh, is_main, library_noise, source)


def _check_before_writing(config, workdir: str):
    """The data source (found, not empty) and, for a run that does not resume, `init_from`
    (loadable, with this config's model settings): the loaded source, or None."""
    input_pipeline.check_source(config)
    if config.init_from and not checkpointing.finished_steps(workdir):
        return load_init_from(config)
    return None


def _train(config, workdir: str, mesh: Mesh, is_main: bool,
           library_noise: contextlib.ExitStack, source=None) -> Any:
    """`source`: fine-tuning, the `init_from` workdir (inference.Completer) loaded before any
    write (None: a fresh start, or a resume, which does not use it again)."""
    ckpt = checkpointing.Checkpointer(workdir, config)
    perceptual_fn = None
    if config.loss.perceptual_weight:
        from glcic_jax import perceptual  # optional variant (VGG-16 features)

        perceptual_fn = perceptual.make_perceptual_loss(config.loss.vgg_weights)
    nets, steps = _networks_and_steps(config, mesh, perceptual_fn)
    # Refuses an incompatible workdir before any write; skips damaged newer checkpoints.
    # resumed_config: the config the checkpoint was trained with (config.json records changes).
    state, mean_px, resumed_config = restore_or_init(config, nets, mesh, ckpt)
    if is_main:  # fail now on an unwritable workdir; delete unfinished saves of killed runs
        ckpt.prepare_for_writing()
    ckpt.move_aside_damaged()  # so that saving those steps again cannot collide with them
    # From here on (the workdir accepted: nothing above writes to it), Orbax's and tensorstore's
    # messages go to WORKDIR/library.log, not the console.
    library_noise.enter_context(checkpointing.library_log(
        os.path.join(workdir, checkpointing.LIBRARY_LOG) if is_main else None))
    if state is None:
        state = _fresh_state(config, workdir, mesh, nets, is_main, source)
    elif config.init_from:
        logging.info("Resuming this workdir's own checkpoint; init_from is not used again.")
    start, total = int(jax.device_get(state.step)), int(config.num_train_steps)
    if start >= total:
        logging.info("Already trained to step %d (num_train_steps=%d): nothing to do.", start,
                     total)
        ckpt.close()
        return state
    _, tc, t3 = config_lib.phase_starts(config)
    logging.info("Training steps %d..%d (phase 1 < %d <= phase 2 < %d <= phase 3), global batch "
                 "%d on %d device(s).", start, total, tc, t3, config.batch_size, mesh.size)
    logging.info("Preparing TensorBoard and the fixed held-out batch for the sample grids...")
    writer = summary.Writer(workdir, enabled=is_main)
    # A run that stops with an error closes TensorBoard's files here, quietly: their own exit
    # hook would otherwise retry a failed write (disk full) and print its traceback.
    library_noise.callback(writer.close, quiet=True)
    # config.json is the config in force; a resume with other overrides is recorded.
    writer.write_config(config, step=start, previous=resumed_config if start else None)
    loop = _Loop(config, mesh, nets, steps, ckpt, writer, is_main)
    data: Iterator[np.ndarray] = input_pipeline.train_iterator(
        config, distributed.local_batch_size(config.batch_size, mesh), start,
        jax.process_index(), jax.process_count())
    with _StopSignal() as stop, _saves_finished_on_error(ckpt):
        state, step = loop.run(state, start, data, stop)
    # A SIGTERM now must not cut the last save short; a second Ctrl-C still stops at once.
    with _StopSignal(stop.received) as last:
        ckpt.close()
        last.check()
    tensorboard = writer.tensorboard
    writer.close()
    if hasattr(data, "close"):
        data.close()
    if config.final_eval and step == total:
        report_final(config, workdir, loop.grid_path, tensorboard)
    return state


def _fresh_state(config, workdir: str, mesh: Mesh, nets, is_main: bool, source=None):
    """The state of a new run: initialised networks, or `init_from`'s completion network (the
    `source` loaded before any write); the mean pixel computed (and cached) from the data, or
    the one `init_from` was trained with."""
    if config.init_from:
        # Fine-tuning: the network keeps the mean pixel it was trained with.
        source = source or load_init_from(config)
        mean_px = source.mean_pixel
    elif jax.process_count() == 1:
        mean_px = input_pipeline.mean_pixel(config, workdir)
    else:
        # Process 0 computes (or reads) and caches it; the others take its value, so every
        # replica of the state holds the same mean pixel and the work is done once.
        mean_px = (input_pipeline.mean_pixel(config, workdir) if is_main
                   else np.zeros(3, np.float32))
        mean_px = distributed.broadcast_from_main(mean_px).astype(np.float32)
    # The longest silent wait before the first step otherwise: XLA compiles the initialisation
    # of both networks and the optimizer states before it runs (once per process and setup).
    logging.info("Initialising the networks and the optimizer (compiled first; up to a minute "
                 "on a CPU)...")
    # Created replicated under jit: each process fills its own devices, nothing is copied.
    state = distributed.init_replicated(state_lib.state_initializer(
        config, nets, jax.random.PRNGKey(int(config.seed)), mean_px), mesh)
    if source is not None:
        state = _start_from(config, state, source, nets, mesh)
    return state


class _Loop:
    """The training loop's parts: the periodic logging, sample grids, held-out evaluation and
    checkpoints, and the timer that leaves their first (compiling) calls out of the rate."""

    def __init__(self, config, mesh: Mesh, nets, steps: steps_lib.Steps,
                 ckpt: checkpointing.Checkpointer, writer: summary.Writer, is_main: bool):
        self.config, self.mesh, self.steps, self.ckpt, self.writer = (config, mesh, steps, ckpt,
                                                                      writer)
        self.periodic_eval = None
        if config.eval_every > 0:  # held-out metrics for TensorBoard (evaluate.py)
            from glcic_jax import evaluate

            self.periodic_eval = evaluate.TrainingEval(config, nets, mesh)
        if is_main:
            input_pipeline.describe_split(config)
        self.eval_imgs = input_pipeline.eval_images(config, int(config.data.num_eval_images))
        # Host (numpy) copies: the evaluate step places them replicated on the global mesh.
        self.eval_masks = jax.device_get(fixed_eval_masks(config, len(self.eval_imgs)))
        self.timer = Timer(int(config.batch_size))
        self.compiled: set[str] = set()
        self.pending: list[tuple[int, str, dict]] = []
        self.grid_path: str | None = None

    @contextlib.contextmanager
    def first_call(self, name: str, steps: int = 0):
        """Around a call that compiles the first time (`name`): say so, and pause the timer."""
        first = name not in self.compiled
        if not first:
            yield False
            return
        what = _FIRST_CALL.get(name, name)
        if what:  # a silent minute otherwise (GLCIC's networks, on a CPU)
            logging.info("Compiling %s (first time only)...", what)
        with self.timer.paused(steps):
            yield True
        self.compiled.add(name)

    def run(self, state, step: int, data: Iterator[np.ndarray], stop: _StopSignal):
        """Train from `step` to num_train_steps (or a stop signal); returns (state, step)."""
        c, total = self.config, int(self.config.num_train_steps)
        batch_sharding = distributed.batch_sharded(self.mesh)
        step_last = step
        while step < total:
            images = distributed.global_batch(next(data), batch_sharding)
            name, fn = steps_lib.step_fn_for(step, c, self.steps)
            with self.first_call(name, steps=1) as first:
                state, metrics = fn(state, images)
                if first:
                    jax.block_until_ready(metrics)
            stop.check()
            # The save of the step before (if any) has had this step to finish in the
            # background; a failed one (disk full) stops the run here, named with its step.
            self.ckpt.poll(wait=True)
            self.pending.append((step, name, metrics))
            step += 1
            done = step == total
            stopping = stop.received is not None
            if jax.process_count() > 1:  # decided together, at steps every process checks
                stopping = itstime(step, STOP_SYNC_EVERY) and distributed.any_process(stopping)
            save_now = done or stopping or itstime(step, int(c.checkpoint_every))
            if save_now or itstime(step, int(c.log_every)):
                self.log(step, step - step_last)
                step_last = step
            if done or itstime(step, int(c.sample_every)):
                self.sample_grid(step, state)
            if self.periodic_eval is not None and itstime(step, int(c.eval_every)):
                self.held_out(step, state)
            if save_now:
                self.save(step, state, stop)
            if stopping:
                logging.warning("Stopped by %s at step %d; checkpoint saved. Rerun the same "
                                "command to resume.", stop.received or "another process's signal",
                                step)
                break
        return state, step

    def log(self, step: int, steps: int) -> None:
        """The console line and TensorBoard scalars for the `steps` steps ending at `step`."""
        # Raises before a bad state is saved.
        values = _check_finite(self.pending, self.config, self.ckpt)
        updates = _window_updates(self.pending, self.config)
        self.pending.clear()
        now = time.time()
        rate = self.timer.rate(steps, now)
        total = int(self.config.num_train_steps)
        eta = (total - step) * self.config.batch_size / rate if rate > 0 else float("nan")
        rate_text = f"{rate:.1f} img/s" if math.isfinite(rate) else "n/a img/s (compiling)"
        logging.info("step %d/%d %s %s | %s | ETA %s", step, total, updates,
                     _format_metrics(values), rate_text, _fmt_time(eta))
        self.writer.scalars(step, {**values, "phase": steps_lib.phase_of(step - 1, self.config),
                                   **({"images_per_sec": rate} if math.isfinite(rate) else {})})
        self.timer.restart(now)

    def sample_grid(self, step: int, state) -> None:
        with self.first_call("sample grid"):
            out = self.steps.evaluate(state, self.eval_imgs, self.eval_masks.mask,
                                      self.eval_masks.corners)
            self.grid_path = self.writer.sample_grid(
                step, self.eval_imgs, {**jax.device_get(out), "hole": self.eval_masks.mask})

    def held_out(self, step: int, state) -> None:
        with self.first_call("eval"):
            held_out = self.periodic_eval(state)
        logging.info("step %d held-out: hole PSNR %.2f dB, hole L1 %.2f", step,
                     held_out["eval/psnr_hole"], held_out["eval/l1_hole"])
        self.writer.scalars(step, held_out)

    def save(self, step: int, state, stop: _StopSignal) -> None:
        with self.first_call("checkpoint"):
            _check_state_finite(state, step, self.ckpt)
            stop.check()
            self.ckpt.save(step, state, self.config)


def report_final(config, workdir: str, grid_path: str | None, tensorboard: bool) -> None:
    """`config.final_eval`: --mode=eval's table for the finished run, and where its outputs are."""
    from glcic_jax import evaluate

    evaluate.evaluate(config, workdir)  # prints the table (process 0)
    if jax.process_index() == 0:
        if grid_path:
            print(f"Sample grid (original | input with holes | completed): {grid_path}")
        if tensorboard:
            print(f"TensorBoard logs: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"

