"""`train_and_evaluate(config, workdir)`: GLCIC's three-phase training loop.

Data flows one way: host batches (uint8) -> global jax.Array sharded over the mesh's `data` axis
-> jitted step (masks drawn on the device) -> state. Only process 0 writes logs, samples and
TensorBoard; every process takes part in checkpointing (Orbax coordinates them).

Rerunning the same command resumes from the latest checkpoint: same step, same phase, the same
data stream position and the same mask stream.
"""

from __future__ import annotations

import contextlib
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

from glcic_jax import checkpointing, config_lib, distributed, input_pipeline, masks
from glcic_jax import steps as steps_lib
from glcic_jax import state as state_lib
from glcic_jax import summary


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/inf and nan_policy='stop'."""


class _StopSignal:
    """SIGTERM / SIGINT: finish the current step, checkpoint, exit cleanly."""

    def __init__(self, received: str | None = None):
        self.received = received  # a signal already being honoured: the next Ctrl-C stops now
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
            raise KeyboardInterrupt
        else:
            # Launchers and schedulers forward SIGTERM to every process, sometimes more than once
            # (srun, a process-group kill plus a launcher's forwarding): never let a repeat cut
            # short the save the first one asked for.
            logging.warning("%s received again: already stopping after this step's checkpoint.",
                            name)

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
    except BaseException:
        try:
            ckpt.wait()
        except Exception as e:  # report it, but the original error is the one to raise
            logging.error("%s", e)
        raise


def make_mesh() -> Mesh:
    """One mesh over all devices (all hosts) with a single `data` axis (see distributed.py)."""
    return distributed.make_mesh()


def global_batch(images: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Assemble the global batch from this process's slice."""
    return distributed.global_batch(images, sharding)


def fixed_eval_masks(config, num: int) -> masks.Masks:
    """Masks for the sample grid / evaluation batch, identical in every run and checkpoint."""
    size = int(config.data.image_size)
    spec = masks.MaskSpec.from_config(config.mask)
    return masks.sample_masks(jax.random.PRNGKey(int(config.seed) + 2017), num, size, size, spec)


def _format_metrics(values: dict[str, float]) -> str:
    order = ("mse", "g_loss", "g_adv", "d_loss", "d_real", "d_fake", "gp", "perceptual")
    keys = [k for k in order if k in values] + sorted(set(values) - set(order) - {"nonfinite"})
    return " ".join(f"{k}={values[k]:.4g}" for k in keys)


_NOT_THE_LOSSES = "gradients or updated weights (the losses were finite)"


def _check_finite(pending: list[tuple[int, str, dict]], config) -> dict[str, float]:
    """Fetch the pending per-step metrics; stop (or count) on non-finite values; return means."""
    fetched = jax.device_get([m for _, _, m in pending])
    sums: dict[str, float] = {}
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
                    f"the last good checkpoint is kept. Lower the learning rate, check the data, "
                    f"or set --config.nan_policy=skip to skip such updates."
                )
        for k, v in m.items():
            if np.isfinite(v):
                sums[k] = sums.get(k, 0.0) + float(v)
    n = max(1, len(pending))
    out = {k: v / n for k, v in sums.items()}
    out["skipped_updates"] = float(skipped)
    return out


@jax.jit
def _count_nonfinite(state) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(state)
    return sum(jnp.sum(~jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact))


def _check_state_finite(state, step: int) -> None:
    """Never checkpoint NaN/inf weights: an update can overflow although its losses were finite."""
    if int(jax.device_get(_count_nonfinite(state))):
        raise NonFiniteError(
            f"The parameters or optimizer state became non-finite at step {step} although the "
            f"losses were finite (an update overflowed). The state was not saved; the last good "
            f"checkpoint is kept. Lower the learning rate."
        )


def restore_or_init(config, workdir: str, nets, mean_px, mesh: Mesh,
                    ckpt: checkpointing.Checkpointer) -> Any:
    """The latest checkpoint's state (after a compatibility check) or a fresh one."""
    replicated = NamedSharding(mesh, P())

    def init():
        return state_lib.create_state(config, nets, jax.random.PRNGKey(int(config.seed)), mean_px)

    latest = ckpt.latest_step()
    if latest is None:
        # Created replicated under jit: each process fills its own devices, nothing is copied.
        return distributed.init_replicated(init, mesh)
    checkpointing.check_compatible(ckpt.read_meta(latest)["config"], config)
    abstract = jax.eval_shape(init)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract
    )
    logging.info("Resuming from %s/%d.", ckpt.directory, latest)
    return ckpt.restore(abstract, latest)


def train_and_evaluate(config, workdir: str) -> Any:
    """Train GLCIC as configured; checkpoints, samples and TensorBoard events go to `workdir`.

    Returns the final `GANState`.
    """
    mesh = make_mesh()
    config_lib.validate(config, num_devices=mesh.size)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        checkpointing.make_workdir(workdir)
    hosts, host = jax.process_count(), jax.process_index()
    local_batch = distributed.local_batch_size(config.batch_size, mesh)
    batch_sharding = distributed.batch_sharded(mesh)

    ckpt = checkpointing.Checkpointer(workdir, config)
    if ckpt.latest_step() is not None:
        # Refuse an incompatible workdir before any work or any write.
        checkpointing.check_compatible(ckpt.read_meta()["config"], config)
    if is_main:  # fail now on an unwritable workdir; delete unfinished saves of killed runs
        ckpt.prepare_for_writing()
    if ckpt.latest_step() is not None:
        mean_px = np.asarray(ckpt.read_meta()["mean_pixel"], np.float32)
    elif hosts == 1:
        mean_px = input_pipeline.mean_pixel(config, workdir)
    else:
        # Process 0 computes (or reads) and caches it; the others take its value, so every
        # replica of the state holds the same mean pixel and the work is done once.
        mean_px = (input_pipeline.mean_pixel(config, workdir) if is_main
                   else np.zeros(3, np.float32))
        mean_px = distributed.broadcast_from_main(mean_px).astype(np.float32)

    nets = state_lib.create_networks(config)
    perceptual_fn = None
    if config.loss.get("perceptual_weight", 0.0):
        from glcic_jax import perceptual  # optional variant (VGG-16 features)

        perceptual_fn = perceptual.make_perceptual_loss(config.loss.vgg_weights)
    # State replicated, batch split over the mesh; outputs pinned replicated (distributed.py).
    steps = distributed.shard_steps(steps_lib.make_steps(config, nets, perceptual_fn), mesh)
    state = restore_or_init(config, workdir, nets, mean_px, mesh, ckpt)
    start = int(jax.device_get(state.step))
    total = int(config.num_train_steps)
    if start >= total:
        logging.info("Already trained to step %d (num_train_steps=%d): nothing to do.", start,
                     total)
        ckpt.close()
        return state

    writer = summary.Writer(workdir, enabled=is_main)
    if start == 0 and is_main:
        writer.write_config(config)
    periodic_eval = None
    if int(config.get("eval_every", 0)) > 0:  # held-out metrics for TensorBoard (evaluate.py)
        from glcic_jax import evaluate

        periodic_eval = evaluate.TrainingEval(config, nets, mesh)
    eval_imgs = input_pipeline.eval_images(config, int(config.data.num_eval_images))
    # Host (numpy) copies: the evaluate step places them replicated on the global mesh.
    eval_masks = jax.device_get(fixed_eval_masks(config, len(eval_imgs)))
    data: Iterator[np.ndarray] = input_pipeline.train_iterator(config, local_batch, start, host,
                                                              hosts)
    logging.info("Training steps %d..%d (phase 1 < %d <= phase 2 < %d <= phase 3), global batch "
                 "%d on %d device(s).", start, total, config.schedule.tc,
                 config.schedule.tc + config.schedule.td, config.batch_size, mesh.size)

    pending: list[tuple[int, str, dict]] = []
    grid_path = None
    t_last, step_last = time.time(), start
    step = start
    with _StopSignal() as stop, _saves_finished_on_error(ckpt):
        while step < total:
            images = global_batch(next(data), batch_sharding)
            name, fn = steps_lib.step_fn_for(step, config, steps)
            state, metrics = fn(state, images)
            pending.append((step, name, metrics))
            step += 1
            done = step == total
            stopping = stop.received is not None
            if hosts > 1:  # decide together, at steps every process checks (see STOP_SYNC_EVERY)
                stopping = step % STOP_SYNC_EVERY == 0 and distributed.any_process(stopping)
            save_now = done or stopping or step % int(config.checkpoint_every) == 0
            if save_now or step % int(config.log_every) == 0:
                values = _check_finite(pending, config)  # raises before a bad state is saved
                pending.clear()
                now = time.time()
                rate = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
                eta = (total - step) * config.batch_size / max(rate, 1e-9)
                phase = steps_lib.phase_of(step - 1, config)
                logging.info("step %d/%d phase %d (%s) %s | %.1f img/s | ETA %s", step, total,
                             phase, name, _format_metrics(values), rate, _fmt_time(eta))
                writer.scalars(step, {**values, "phase": phase, "images_per_sec": rate})
                t_last, step_last = now, step
            if done or step % int(config.sample_every) == 0:
                out = steps.evaluate(state, eval_imgs, eval_masks.mask, eval_masks.corners)
                grid_path = writer.sample_grid(step, eval_imgs, jax.device_get(out))
            if periodic_eval is not None and step % int(config.eval_every) == 0:
                held_out = periodic_eval(state)
                logging.info("step %d held-out: hole PSNR %.2f dB, hole L1 %.2f", step,
                             held_out["eval/psnr_hole"], held_out["eval/l1_hole"])
                writer.scalars(step, held_out)
            if save_now:
                _check_state_finite(state, step)
                ckpt.save(step, state, config)
            if stopping:
                logging.warning("Stopped by %s at step %d; checkpoint saved. Rerun the same "
                                "command to resume.", stop.received or "another process's signal",
                                step)
                break
    # A SIGTERM now must not cut the last save short; a second Ctrl-C still stops at once.
    with _StopSignal(stop.received):
        ckpt.close()
    writer.close()
    if hasattr(data, "close"):
        data.close()
    if config.get("final_eval", False) and step == total:
        report_final(config, workdir, grid_path, writer._tb is not None)
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

