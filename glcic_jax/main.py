"""Entry point: `python -m glcic_jax.main --config=configs/celeba.py --workdir=DIR [--mode=...]`.

Only parses flags, sets up logging and the distributed runtime, and dispatches (flax examples'
convention). `cli.Command` turns errors a user can cause (`errors.UserError`) into one line and
exit 1, and Ctrl-C into exit 130; every other exception keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from glcic_jax import cli, cpu_memory

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/celeba.py or configs/places2.py:tiny.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and TensorBoard events.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (resuming from WORKDIR's latest checkpoint); eval: restore the "
                  "latest checkpoint and report held-out metrics against baselines.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-host: address:port of process 0 (auto-detected on Slurm and TPU).")
flags.DEFINE_integer("num_processes", None, "Multi-host: total number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.DEFINE_list("local_device_ids", None,
                  "Multi-host: the local GPU ids this process drives, e.g. 0,1,2,3,4,5,6,7 for one "
                  "process per node (on Slurm, jax otherwise gives each task the one GPU "
                  "SLURM_LOCALID names).")
flags.DEFINE_bool("distributed", None,
                  "Initialise jax.distributed (default: when a cluster or the flags above are "
                  "detected).")
flags.mark_flags_as_required(["config", "workdir"])


def _want_distributed() -> bool:
    if FLAGS.distributed is not None:
        return FLAGS.distributed
    if FLAGS.coordinator_address or FLAGS.num_processes or os.environ.get(
            "JAX_COORDINATOR_ADDRESS"):
        return True
    # Clusters jax.distributed.initialize() detects by itself: Slurm (srun) and Open MPI (mpirun).
    return any(int(os.environ.get(v, "1") or "1") > 1
               for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))


def _verbose() -> bool:
    """absl's --verbosity given on the command line: show every library's log lines."""
    return bool(FLAGS["verbosity"].present)


# Words in the runtime error a process sees when a collective's peer died (Gloo on CPU, NCCL or
# the coordination service on GPU): the run cannot go on, and its traceback says nothing useful.
_PEER_LOST = ("gloo", "connection", "peer", "socket", "unavailable", "heartbeat", "nccl",
              "coordination", "barrier", "deadline")


def _lost_peer(e: BaseException) -> bool:
    import jax

    if jax.process_count() < 2 or not isinstance(e, jax.errors.JaxRuntimeError):
        return False
    text = str(e).lower()
    return any(word in text for word in _PEER_LOST)


def _last_checkpoint_note(workdir: str) -> str:
    from glcic_jax import checkpointing

    done = checkpointing.finished_steps(workdir)
    return (f"the last complete checkpoint (step {done[-1]}) is intact: rerun the same command "
            f"to resume from it" if done else "no checkpoint had been written")


def _leave(status: int, at_once: bool = False) -> None:
    """Exit, output flushed. A multi-process run must not wait in jax.distributed's exit-time
    shutdown barrier for peers that died or are leaving too (it waits up to 5 min); `at_once`
    skips the interpreter's shutdown in one process too."""
    import jax

    sys.stdout.flush()
    sys.stderr.flush()
    logging.disable(logging.CRITICAL)
    if at_once or jax.process_count() > 1:
        logging.shutdown()
        os._exit(status)
    sys.exit(status)


def _interrupted(fv) -> str:
    """Ctrl-C before training started, or a second Ctrl-C during training (the first one finishes
    the step and checkpoints). Saves are atomic: an interrupted one is discarded."""
    return _last_checkpoint_note(fv.workdir) if fv.mode == "train" else ""


def _exit(status: int) -> None:
    # Ctrl-C: at once. A Ctrl-C that lands inside Orbax's save() leaves threads waiting for
    # signals that never come, and the interpreter's shutdown joins them (minutes). Finished saves
    # are complete by now (train waits for the one in flight); the interrupted one is a temporary
    # folder that the next run removes.
    if status == 0:
        sys.exit(0)
    _leave(status, at_once=status == 130)


COMMAND = cli.Command(
    "python -m glcic_jax.main", __doc__, lambda fv: None, _interrupted, absl_app=True,
    usage="python -m glcic_jax.main --config=configs/NAME.py[:tiny] --workdir=DIR "
          "[--mode=train|eval] [--config.FIELD=VALUE ...]",
    bad_flag_status=2, bad_flag_prefix="bad flag or config override: ", exit=_exit)


def _train_or_eval(fv) -> int:
    from glcic_jax import console

    # Keep TensorFlow (input pipeline only) away from the GPU and quiet.
    console.quiet_native_logs(_verbose())
    # Our lines only (--verbosity: all), set before jax's backends start and log.
    console.configure(_verbose(), logging.INFO)
    import jax

    if _want_distributed():
        jax.distributed.initialize(
            coordinator_address=fv.coordinator_address,
            num_processes=fv.num_processes,
            process_id=fv.process_id,
            local_device_ids=([int(i) for i in fv.local_device_ids]
                              if fv.local_device_ids else None),
        )
    from glcic_jax import checkpointing, train

    if jax.process_index() != 0 and not _verbose():  # the others: warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
    logging.info("JAX %s, %d process(es), devices: %s", jax.__version__, jax.process_count(),
                 jax.devices())
    try:
        # This process ends at a failed checkpoint write: the libraries' noise that follows it
        # stays in WORKDIR/library.log, away from the one-line error below.
        with checkpointing.library_log_kept_after_write_errors():
            if fv.mode == "train":
                train.train_and_evaluate(fv.config, fv.workdir)
            else:
                from glcic_jax import evaluate

                evaluate.evaluate(fv.config, fv.workdir)
    except checkpointing.CheckpointWriteError as e:
        # After a failed Orbax write (disk full), tensorstore's I/O threads still complete into
        # Orbax's closed event loop and print a traceback each at interpreter shutdown. The error
        # is reported and earlier checkpoints are intact: leave without that noise.
        sys.excepthook = sys.unraisablehook = lambda *a: None
        cli.error(str(e))
        logging.disable(logging.CRITICAL)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1)
    except jax.errors.JaxRuntimeError as e:
        if not _lost_peer(e):
            raise
        # Another process died (or was killed) while this one waited for it in a collective.
        first = " ".join(str(e).split())[:200]
        where = _last_checkpoint_note(fv.workdir) if fv.mode == "train" else ""
        cli.error(f"process {jax.process_index()} lost contact with the other processes of this "
                  f"run (one of them stopped: {first}); {where or 'stopping'}.")
        return 1
    return 0


def main(argv) -> None:
    """absl's main, once FLAGS are parsed: train or evaluate, then exit with the status."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    _exit(COMMAND.call(_train_or_eval, FLAGS))


def run() -> None:
    """The program (`python -m glcic_jax.main`, `glcic-train`): first restarted with huge pages
    for XLA's per-step memory where that helps (`cpu_memory`), then the command."""
    cpu_memory.relaunch_with_huge_pages()
    COMMAND.run(sys.argv, _train_or_eval)


if __name__ == "__main__":
    run()
