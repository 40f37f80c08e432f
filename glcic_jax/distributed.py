"""Data parallelism over one device mesh, on one host or many: mesh, shardings, host agreement.

GLCIC trains data-parallel: one `jax.sharding.Mesh` over every device of every process with a
single `data` axis; the global batch is split along it and the state (both networks, their batch
statistics and optimizer states) is replicated. There is no `pmap` and no `axis_name`: the steps
are plain `jax.jit` functions, and XLA inserts the all-reduces that make gradients *and*
BatchNorm statistics global-batch quantities (a mean over the batch axis of a sharded array is a
mean over the whole global batch), so N devices compute what one device would on the same batch.

Multi-host: `main.py` calls `jax.distributed.initialize()`; each process then reads its own slice
of the data (`input_pipeline.train_iterator(..., host, hosts)`) and `global_batch` assembles the
global `jax.Array` from the slices. Values every process needs on the host (metrics, the step,
sample grids) are kept fully replicated by the steps' `out_shardings`, so fetching them with
`jax.device_get` works on every process.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from glcic_jax import conv_forms

DATA = "data"  # the mesh axis the batch is split along


def make_mesh(devices=None) -> Mesh:
    """One mesh over `devices` (default: all devices of all processes) with a `data` axis.

    The axis is marked `AxisType.Auto` (sharding decided by XLA's propagation, as the steps
    expect) where the installed jax has axis types; older versions are Auto implicitly.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is not None:
        try:
            return Mesh(devices, (DATA,), axis_types=(axis_type.Auto,))
        except TypeError:  # a jax whose Mesh takes no axis_types
            pass
    return Mesh(devices, (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (the training state, metrics, sample batches)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) dimension across the `data` axis."""
    return NamedSharding(mesh, P(DATA))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Rows of the global batch this process supplies: its devices' share of the mesh."""
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    return global_batch_size * local // mesh.size


def global_batch(images: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global batch [B, ...] from this process's slice [B * local_devices / devices, ...]."""
    return jax.make_array_from_process_local_data(sharding, images)


def shard_steps(steps: Any, mesh: Mesh) -> Any:
    """`steps_lib.Steps` with the training steps pinned to (replicated state, sharded batch).

    Output shardings are fixed to replicated: the new state stays replicated step after step
    (rather than whatever XLA's propagation would pick), and the metrics, a replicated scalar
    each, can be fetched by every process. The wrapped steps keep donating the state.
    """
    rep, batch = replicated(mesh), batch_sharded(mesh)
    options = steps.compiler_options

    def train_step(fn):
        # The step's own function (`make_steps` jits it): compiler options go on the outermost
        # jit only.
        return jax.jit(getattr(fn, "__wrapped__", fn), in_shardings=(rep, batch),
                       out_shardings=(rep, rep), donate_argnums=(0,), compiler_options=options)

    return steps._replace(
        completion=train_step(steps.completion),
        discriminator=train_step(steps.discriminator),
        joint=train_step(steps.joint),
        generator=train_step(steps.generator),
        # The fixed sample batch is small and not necessarily divisible by the device count:
        # replicated in and out (every process can then fetch the grid).
        evaluate=jax.jit(getattr(steps.evaluate, "__wrapped__", steps.evaluate),
                         in_shardings=rep, out_shardings=rep,
                         compiler_options=steps.evaluate_compiler_options),
    )


def init_replicated(fn, mesh: Mesh, *args) -> Any:
    """Run `fn(*args)` (e.g. state creation) under jit with replicated outputs, compiled with
    `conv_forms.run_once_compiler_options` (it runs once; JAX takes the options of the
    outermost jit only).

    Each process computes its own replicas on its own devices: no host-to-device transfer of the
    state and no cross-process copy (every process holds the same arguments).
    """
    return jax.jit(fn, out_shardings=replicated(mesh),
                   compiler_options=conv_forms.run_once_compiler_options())(*args)


def broadcast_from_main(value: np.ndarray) -> np.ndarray:
    """Process 0's `value` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return np.asarray(value)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (all processes must call it together)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
    return bool(np.any(flags))
