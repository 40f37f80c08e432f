"""launch/local_multiprocess.sh: signals, failures, paths and log folders.

The launcher's own logic (what it forwards, when it gives up on a process, where it runs them) is
tested with tests/fake_launch_process.py standing in for the training processes, so these tests
take seconds. One slow test kills a real training process and checks that the survivor stops
within seconds with one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import procfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
FAKE = os.path.join(ROOT, "tests", "fake_launch_process.py")


def fake_python(tmp_path) -> str:
    """An interpreter for the launcher's PYTHON that runs the fake process instead of main."""
    path = tmp_path / "fake_python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    path.chmod(0o755)
    return str(path)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(tmp_path, mode: str, *flags: str, cwd=None, k: int = 2, **env_extra):
    out = tmp_path / "records"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHON=fake_python(tmp_path), FAKE_OUT=str(out), FAKE_MODE=mode,
               GLCIC_PORT="1", TMPDIR=str(tmp_path), **env_extra)
    # A shell cannot trap a signal that was ignored when it started (POSIX), and a test run
    # started in the background (`nohup pytest ... &`) ignores SIGINT: give the launcher the
    # default dispositions a terminal user's shell has.
    proc = subprocess.Popen(["bash", LAUNCHER, str(k), *flags], cwd=cwd or tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_signals)
    return proc, out


def records(out, k: int = 2) -> list[dict]:
    return [json.loads((out / f"process_{i}.json").read_text()) for i in range(k)]


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def finish(proc, timeout: float = 30) -> tuple[int, str, float]:
    t = time.time()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the launcher did not exit within {timeout} s:\n{out}")
    return proc.returncode, out, time.time() - t


def test_relative_paths_resolve_where_the_user_runs_it_and_logs_are_named(tmp_path):
    caller = tmp_path / "caller"
    caller.mkdir()
    proc, out = start(tmp_path, "record", "--config=configs/x.py", "--workdir=runs/rel",
                      cwd=caller)
    rc, text, _ = finish(proc)
    assert rc == 0, text
    for rec in records(out):
        assert rec["cwd"] == str(caller)  # not the repository: relative paths mean the caller's
        assert "--workdir=runs/rel" in rec["argv"]
        assert rec["pythonpath"].split(os.pathsep)[0] == ROOT  # the package is still found
    # The per-launch log folder is named, at the start and at the end.
    logs = re.findall(r"Logs of processes 1\.\.1: (\S+)/process_\*\.log", text)
    assert len(logs) == 2 and logs[0] == logs[1], text
    assert os.path.basename(logs[0]).startswith("glcic_local_mp.")
    assert "fake process 1 started" in (tmp_path / logs[0] / "process_1.log").read_text()


def test_ctrl_c_is_passed_on_as_ctrl_c_and_a_second_one_stops_at_once(tmp_path):
    # FAKE_STAY: after the first Ctrl-C the processes would go on for a minute (a long step), so
    # the run can only end here because the second one stopped them.
    proc, out = start(tmp_path, "train", "--workdir=w", FAKE_STAY="1")
    assert wait_for(lambda: all((out / f"process_{i}.json").exists() for i in range(2)), 30)
    proc.send_signal(signal.SIGINT)
    assert wait_for(lambda: all(r["events"] == ["SIGINT"] for r in records(out)), 10), \
        records(out)  # SIGINT, not SIGTERM: the processes can tell a first from a second Ctrl-C
    proc.send_signal(signal.SIGINT)
    rc, text, _ = finish(proc)
    assert rc == 130, text
    assert [r["events"] for r in records(out)] == [["SIGINT", "SIGINT"]] * 2
    assert "Ctrl-C again: stopping all processes now" in text


def test_sigterm_is_passed_on_as_sigterm(tmp_path):
    proc, out = start(tmp_path, "train", "--workdir=w")
    assert wait_for(lambda: all((out / f"process_{i}.json").exists() for i in range(2)), 30)
    proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: all(r["events"] == ["SIGTERM"] for r in records(out)), 10)
    rc, text, _ = finish(proc)
    assert rc == 0, text
    assert [r["events"] for r in records(out)] == [["SIGTERM"]] * 2


def test_a_dead_process_stops_the_stuck_survivor_within_seconds_with_one_line(tmp_path):
    workdir = tmp_path / "caller" / "w"
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    (workdir / "checkpoints" / "6").mkdir()
    (workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()
    proc, out = start(tmp_path, "die", "--workdir", "w", cwd=tmp_path / "caller",
                      GLCIC_STOP_GRACE="2")
    rc, text, _ = finish(proc)
    assert rc == 128 + signal.SIGKILL, text
    # The stuck survivor was asked to stop (SIGTERM), ignored it, and was killed: it never got
    # to leave by itself (EXIT, a minute later).
    assert records(out)[0]["events"] == ["SIGTERM"], records(out)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == ["error: process 1 was killed by SIGKILL; stopping the other processes; "
                      "the last complete checkpoint is w/checkpoints/6 (rerun the same command "
                      "to resume from it)."], text


@pytest.mark.slow
def test_a_killed_training_process_stops_its_peer_within_seconds_with_one_line(tmp_path):
    """Two real processes (`:tiny`, phase 1): SIGKILL process 1 mid-run; the launcher and the
    survivor stop within seconds, without a traceback, naming the last complete checkpoint."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHON=sys.executable, GLCIC_LOG_DIR=str(tmp_path / "logs"), JAX_PLATFORMS="cpu")
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        ["bash", LAUNCHER, "2", "--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
         "--config.num_train_steps=2000", "--config.schedule.tc=2000",
         "--config.checkpoint_every=2", "--config.sample_every=100000"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    log0 = tmp_path / "logs" / "process_0.log"
    try:
        # Kill once a checkpoint is complete on disk (saves are asynchronous: the step-2 save
        # may still be in flight when step 3 is logged), so that there is one to name.
        from glcic_jax import checkpointing

        assert wait_for(lambda: log0.exists() and "] step 3/2000" in log0.read_text()
                        and checkpointing.finished_steps(str(workdir)), 900), \
            log0.read_text() if log0.exists() else "no log"
        victim = [p for p in procfs.children(proc.pid) if "--process_id=1" in procfs.cmdline(p)]
        assert len(victim) == 1
        os.kill(victim[0], signal.SIGKILL)
        t_kill = time.time()
        rc, text, _ = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            for child in procfs.children(proc.pid):
                os.kill(child, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.time() - t_kill < 20, text  # seconds, not the old 30 s + hang
    assert rc == 128 + signal.SIGKILL, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: process 1 was killed by SIGKILL"), text
    assert re.search(r"the last complete checkpoint is \S+/checkpoints/\d+", errors[0]), text
    survivor = log0.read_text()
    assert "Traceback" not in survivor, survivor[-3000:]
