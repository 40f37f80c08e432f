"""Data parallelism and multi-process training (CPU, offline).

* N devices compute what one device computes: the phase-1 and joint steps on a 4-device mesh
  (XLA's forced host device count) give the 1-device state, BatchNorm statistics included (they
  are means over the *global* batch), and the state stays replicated.
* Two processes on localhost (jax.distributed, gloo collectives) train the `:tiny` config
  through `launch/local_multiprocess.sh`: phase 1, a checkpoint written together, then both
  resume from it and train phase 2.
* A batch size the device count does not divide stops with a clear message before any work.

Multi-device runs need XLA_FLAGS set before jax starts, so they run in subprocesses (this pytest
process has jax initialised with one device). Every subprocess has a timeout: a hang in a
collective fails the test instead of hanging CI. The persistent compilation cache set up by
conftest.py travels to the subprocesses through the environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from glcic_jax import config_lib, distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "distributed_steps_helper.py")
LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """This environment with `devices` simulated CPU devices per process."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_bounded(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout stop it (TERM, then KILL) and fail."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the launcher passes it on to its processes
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])}... did not finish in {timeout:.0f} s "
                    f"(a hang?). Output:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# 4 devices == 1 device


@pytest.mark.slow
def test_four_devices_match_one_device(tiny_steps, tiny_state, tiny_images, tmp_path):
    # One device: this process (jax sees one CPU device), the same calls test_steps.py makes.
    reference = {
        name: jax.device_get(getattr(tiny_steps, name)(tiny_state, tiny_images))
        for name in ("completion", "joint")
    }
    leaves = jax.tree_util.tree_leaves(jax.device_get(tiny_state))
    np.savez(tmp_path / "in.npz", images=np.asarray(tiny_images),
             **{f"state_{i}": np.asarray(x) for i, x in enumerate(leaves)})

    # Four devices: a subprocess, the batch split 1 image per device.
    result = run_bounded([sys.executable, HELPER, str(tmp_path / "in.npz"),
                          str(tmp_path / "out.npz")], cpu_env(4), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    out = np.load(tmp_path / "out.npz")
    assert int(out["num_devices"]) == 4

    for name, (ref_state, ref_metrics) in reference.items():
        # The state (params, batch stats, optimizer state, step) stays replicated on all devices.
        assert bool(out[f"{name}_replicated"]), f"{name}: outputs not replicated over 4 devices"
        paths = jax.tree_util.tree_leaves_with_path(ref_state)
        for i, (path, ref) in enumerate(paths):
            where = f"{name} step, state{jax.tree_util.keystr(path)}"
            np.testing.assert_allclose(out[f"{name}_state_{i}"], ref, rtol=1e-4, atol=1e-5,
                                       err_msg=where)
        for k, ref in ref_metrics.items():
            np.testing.assert_allclose(out[f"{name}_metric_{k}"], ref, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} step, metric {k}")
    # BatchNorm statistics are those of the global batch: with one image per device, per-device
    # statistics would be far off. Make sure they were compared and moved.
    stats = [p for p, _ in jax.tree_util.tree_leaves_with_path(reference["joint"][0].d)
             if "batch_stats" in jax.tree_util.keystr(p)]
    assert stats, "the discriminator has no BatchNorm statistics to compare"
    assert not np.allclose(jax.tree_util.tree_leaves(reference["joint"][0].d.batch_stats)[0],
                           jax.tree_util.tree_leaves(jax.device_get(tiny_state.d.batch_stats))[0])


# ----------------------------------------------------------------------------------------------
# Two processes, one checkpoint, resume


def _launch(workdir: str, log_dir: str, *overrides: str, timeout: float):
    # No JAX_SHARE_BINARY_BETWEEN_HOSTS: on CPU the compilation cache keys differ per process,
    # so process 1 would wait forever for a binary process 0 publishes under another key.
    env = cpu_env(1, GLCIC_LOG_DIR=log_dir, GLCIC_PORT=str(free_port()), PYTHON=sys.executable)
    cmd = ["bash", LAUNCHER, "2", "--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
           *overrides]
    result = run_bounded(cmd, env, timeout)
    logs = []
    for i in range(2):
        with open(os.path.join(log_dir, f"process_{i}.log")) as f:
            logs.append(f.read())
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n--- process 0:\n{logs[0][-3000:]}" \
                                   f"\n--- process 1:\n{logs[1][-3000:]}"
    return logs


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    workdir = str(tmp_path / "run")
    # Run 1: phase 1 (steps 0..2) on a 2-process mesh, one checkpoint at the end (step 2).
    # Each CPU process compiles every step kind itself (the compilation cache keys differ per
    # process on CPU), so the runs stop before phase 3: the joint step's sharding is covered by
    # test_four_devices_match_one_device, and it shares the wrappers of the steps run here.
    logs = _launch(workdir, str(tmp_path / "logs1"), "--config.num_train_steps=2", timeout=900)
    assert "2 process(es)" in logs[0]
    assert "global batch 4 on 2 device(s)" in logs[0]
    assert "step 2/2 phase 1 (completion)" in logs[0]
    # Only process 0 logs (the other prints warnings and errors only).
    assert "step 2/2" not in logs[1] and "Training steps" not in logs[1]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    # Both processes wrote their part of the checkpoint.
    state_dir = os.path.join(workdir, "checkpoints", "2", "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))
    assert os.path.exists(os.path.join(workdir, "samples", "step_00000002.png"))

    # Run 2: a rerun with a longer schedule: both processes restore step 2 and train phase 2 to
    # the final step 4.
    logs = _launch(workdir, str(tmp_path / "logs2"), "--config.num_train_steps=4", timeout=900)
    assert "Resuming from" in logs[0] and "checkpoints/2" in logs[0]
    assert "Training steps 2..4" in logs[0]
    assert "step 4/4 phase 2 (discriminator)" in logs[0]
    assert "Traceback" not in logs[1], logs[1][-3000:]
    assert {"3", "4"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))
    assert os.path.exists(os.path.join(workdir, "samples", "step_00000004.png"))


# ----------------------------------------------------------------------------------------------
# Batch size vs device count


def test_validate_names_the_device_count():
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    config.batch_size = 6
    config_lib.validate(config, num_devices=3)
    with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by the 4 devices"):
        config_lib.validate(config, num_devices=4)


@pytest.mark.slow
def test_indivisible_batch_stops_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "glcic_jax.main", "--config=configs/quickstart.py:tiny",
           f"--workdir={workdir}", "--config.batch_size=6"]
    result = run_bounded(cmd, cpu_env(4), timeout=300)
    assert result.returncode == 1, result.stdout[-3000:]
    assert ("error: batch_size=6 is not divisible by the 4 devices; use a multiple of 4"
            in result.stdout)
    assert "Traceback" not in result.stdout
    assert not workdir.exists()  # stopped before creating the workdir or computing anything


def test_make_mesh_and_local_batch():
    mesh = distributed.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    axis_types = getattr(mesh, "axis_types", None)
    if axis_types is not None and hasattr(jax.sharding, "AxisType"):
        assert tuple(axis_types) == (jax.sharding.AxisType.Auto,)
    assert distributed.local_batch_size(8, mesh) == 8 * jax.local_device_count() // mesh.size
    assert distributed.any_process(True) and not distributed.any_process(False)
    np.testing.assert_array_equal(distributed.broadcast_from_main(np.arange(3.0)), np.arange(3.0))
