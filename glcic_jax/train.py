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
    """Masks for the sample grid / evaluation batch, identical in every run and checkpoint."""
    size = int(config.data.image_size)
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


class _Throughput:
    """Images per second over a logging window, without the time spent compiling.

    The first call of each jitted function compiles it (30-60 s on a CPU for the joint step):
    counted in, it made the ETA after a compilation (or right after a resume) many times too long.
    Such calls are timed to completion and left out, time and step alike.
    """

    def __init__(self, batch_size: int, now: float):
        self.batch_size = batch_size
        self.start = now
        self.excluded_s = 0.0
        self.excluded_steps = 0

    def exclude(self, seconds: float, steps: int = 0) -> None:
        self.excluded_s += seconds
        self.excluded_steps += steps

    def rate(self, steps: int, now: float) -> float:
        """Images/s for `steps` steps ending at `now` (nan: nothing but compilation measured)."""
        n = steps - self.excluded_steps
        seconds = now - self.start - self.excluded_s
        if n <= 0 or seconds <= 0:
            return float("nan")
        return n * self.batch_size / seconds

    def restart(self, now: float) -> None:
        self.__init__(self.batch_size, now)


_FIRST_CALL = {
    "completion": "the phase-1 completion step",
    "discriminator": "the phase-2 discriminator step",
    "joint": "the phase-3 joint step",
    "generator": "the phase-3 generator step",
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
    tc, td = int(config.schedule.tc), int(config.schedule.td)
    return {1: 0, 2: tc, 3: tc + td}[int(config.get("init_phase", 2))]


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

    def abstract_for(meta):
        abstract = jax.eval_shape(lambda: state_lib.create_state(
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
    if config.get("init_from", "") and not checkpointing.finished_steps(workdir):
        return load_init_from(config)
    return None


def _train(config, workdir: str, mesh: Mesh, is_main: bool,
           library_noise: contextlib.ExitStack, source=None) -> Any:
    hosts, host = jax.process_count(), jax.process_index()
    local_batch = distributed.local_batch_size(config.batch_size, mesh)
    batch_sharding = distributed.batch_sharded(mesh)

    ckpt = checkpointing.Checkpointer(workdir, config)
    perceptual_fn = None
    if config.loss.get("perceptual_weight", 0.0):
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
    # source: fine-tuning, the `init_from` workdir (inference.Completer) loaded before any write
    if state is not None:  # resumed: the checkpoint's own mean pixel
        source = None
        if config.get("init_from", ""):
            logging.info("Resuming this workdir's own checkpoint; init_from is not used again.")
    elif config.get("init_from", ""):
        # Fine-tuning: the network keeps the mean pixel it was trained with.
        source = source or load_init_from(config)
        mean_px = source.mean_pixel
    elif hosts == 1:
        mean_px = input_pipeline.mean_pixel(config, workdir)
    else:
        # Process 0 computes (or reads) and caches it; the others take its value, so every
        # replica of the state holds the same mean pixel and the work is done once.
        mean_px = (input_pipeline.mean_pixel(config, workdir) if is_main
                   else np.zeros(3, np.float32))
        mean_px = distributed.broadcast_from_main(mean_px).astype(np.float32)

    if state is None:
        # Created replicated under jit: each process fills its own devices, nothing is copied.
        state = distributed.init_replicated(lambda: state_lib.create_state(
            config, nets, jax.random.PRNGKey(int(config.seed)), mean_px), mesh)
        if source is not None:
            state = _start_from(config, state, source, nets, mesh)
    start = int(jax.device_get(state.step))
    total = int(config.num_train_steps)
    if start >= total:
        logging.info("Already trained to step %d (num_train_steps=%d): nothing to do.", start,
                     total)
        ckpt.close()
        return state

    writer = summary.Writer(workdir, enabled=is_main)
    # A run that stops with an error closes TensorBoard's files here, quietly: their own exit
    # hook would otherwise retry a failed write (disk full) and print its traceback.
    library_noise.callback(writer.close, quiet=True)
    # config.json is the config in force; a resume with other overrides is recorded.
    writer.write_config(config, step=start, previous=resumed_config if start else None)
    periodic_eval = None
    if int(config.get("eval_every", 0)) > 0:  # held-out metrics for TensorBoard (evaluate.py)
        from glcic_jax import evaluate

        periodic_eval = evaluate.TrainingEval(config, nets, mesh)
    if is_main:
        input_pipeline.describe_split(config)
    eval_imgs = input_pipeline.eval_images(config, int(config.data.num_eval_images))
    # Host (numpy) copies: the evaluate step places them replicated on the global mesh.
    eval_masks = jax.device_get(fixed_eval_masks(config, len(eval_imgs)))
    data: Iterator[np.ndarray] = input_pipeline.train_iterator(config, local_batch, start, host,
                                                              hosts)
    logging.info("Training steps %d..%d (phase 1 < %d <= phase 2 < %d <= phase 3), global batch "
                 "%d on %d device(s).", start, total, config.schedule.tc,
                 config.schedule.tc + config.schedule.td, config.batch_size, mesh.size)

    pending: list[tuple[int, str, dict]] = []
    throughput = _Throughput(int(config.batch_size), time.time())
    step_last = start
    compiled: set[str] = set()
    grid_path = None
    step = start
    with _StopSignal() as stop, _saves_finished_on_error(ckpt):
        while step < total:
            images = distributed.global_batch(next(data), batch_sharding)
            name, fn = steps_lib.step_fn_for(step, config, steps)
            first_call = name not in compiled
            if first_call:  # a silent minute otherwise (GLCIC's networks, on a CPU)
                logging.info("Compiling %s (first time only)...", _FIRST_CALL.get(name, name))
                t_compile = time.time()
            state, metrics = fn(state, images)
            if first_call:
                jax.block_until_ready(metrics)
                throughput.exclude(time.time() - t_compile, steps=1)
                compiled.add(name)
            stop.check()
            # The save of the step before (if any) has had this step to finish in the
            # background; a failed one (disk full) stops the run here, named with its step.
            ckpt.poll(wait=True)
            pending.append((step, name, metrics))
            step += 1
            done = step == total
            stopping = stop.received is not None
            if hosts > 1:  # decide together, at steps every process checks (see STOP_SYNC_EVERY)
                stopping = step % STOP_SYNC_EVERY == 0 and distributed.any_process(stopping)
            save_now = done or stopping or step % int(config.checkpoint_every) == 0
            if save_now or step % int(config.log_every) == 0:
                values = _check_finite(pending, config, ckpt)  # raises before a bad save
                updates = _window_updates(pending, config)
                pending.clear()
                now = time.time()
                rate = throughput.rate(step - step_last, now)
                eta = (total - step) * config.batch_size / rate if rate > 0 else float("nan")
                phase = steps_lib.phase_of(step - 1, config)
                rate_text = f"{rate:.1f} img/s" if math.isfinite(rate) else "n/a img/s (compiling)"
                logging.info("step %d/%d %s %s | %s | ETA %s", step, total, updates,
                             _format_metrics(values), rate_text, _fmt_time(eta))
                writer.scalars(step, {**values, "phase": phase,
                                      **({"images_per_sec": rate} if math.isfinite(rate) else {})})
                throughput.restart(now)
                step_last = step
            if done or step % int(config.sample_every) == 0:
                t_eval = time.time()
                if "sample grid" not in compiled:
                    logging.info("Compiling the sample-grid completion (first time only)...")
                out = steps.evaluate(state, eval_imgs, eval_masks.mask, eval_masks.corners)
                grid_path = writer.sample_grid(step, eval_imgs, jax.device_get(out))
                if "sample grid" not in compiled:
                    throughput.exclude(time.time() - t_eval)
                    compiled.add("sample grid")
            if periodic_eval is not None and step % int(config.eval_every) == 0:
                t_eval = time.time()
                held_out = periodic_eval(state)
                logging.info("step %d held-out: hole PSNR %.2f dB, hole L1 %.2f", step,
                             held_out["eval/psnr_hole"], held_out["eval/l1_hole"])
                writer.scalars(step, held_out)
                if "eval" not in compiled:
                    throughput.exclude(time.time() - t_eval)
                    compiled.add("eval")
            if save_now:
                t_save = time.time()
                _check_state_finite(state, step, ckpt)
                stop.check()
                ckpt.save(step, state, config)
                if "checkpoint" not in compiled:  # its check compiles; Orbax's first save is slow
                    throughput.exclude(time.time() - t_save)
                    compiled.add("checkpoint")
            if stopping:
                logging.warning("Stopped by %s at step %d; checkpoint saved. Rerun the same "
                                "command to resume.", stop.received or "another process's signal",
                                step)
                break
    # A SIGTERM now must not cut the last save short; a second Ctrl-C still stops at once.
    with _StopSignal(stop.received) as last:
        ckpt.close()
        last.check()
    tensorboard = writer._tb is not None
    writer.close()
    if hasattr(data, "close"):
        data.close()
    if config.get("final_eval", False) and step == total:
        report_final(config, workdir, grid_path, tensorboard)
    return state


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

