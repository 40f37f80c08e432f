"""Reliability: preemption, kill -9, non-finite losses, bad data, bad settings, full
disks.

Training runs go through the real command line (`python -m glcic_jax.main`) in subprocesses, as a
user or a cluster scheduler would start them, and are signalled or killed from outside. They all
use configs/quickstart.py:tiny (32x32 crops, batch 4) and share one JAX persistent compilation
cache, so only the first run compiles the steps (~60-90 s on 2 CPU cores); later runs start in
seconds. The cache is the one conftest.py sets (JAX_COMPILATION_CACHE_DIR), with every entry kept.

Environment:
  GLCIC_FAULT_ITERS=N   SIGKILLs in the fault-injection test (default 10; e.g. 50 for a long run)
  GLCIC_FAULT_SEED=S    seed for the kill moments (default 0)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from glcic_jax import checkpointing, config_lib, errors, input_pipeline, leftovers, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/quickstart.py:tiny"
FAULT_ITERS = int(os.environ.get("GLCIC_FAULT_ITERS", "10"))
FAULT_SEED = int(os.environ.get("GLCIC_FAULT_SEED", "0"))
# All three phases (2 + 2 + 4 steps at the default); an interrupted run advances ~0.5 steps.
FAULT_STEPS = max(8, FAULT_ITERS // 2 + 3)
# checkpoint_every=1: a checkpoint is being written most of the time, so kills land in writes.
FAULT_FLAGS = ("--config.checkpoint_every=1", "--config.sample_every=100000",
               f"--config.num_train_steps={FAULT_STEPS}")
TMP_SUFFIX = ".orbax-checkpoint-tmp"


# ------------------------------------------------------------------------------------------------
# Helpers


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device unless a test asks for more
    cache = env.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"glcic_jax_reliability_cache_{os.getuid()}")
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def main_cmd(workdir, *flags: str, script: str | None = None) -> list[str]:
    entry = [script] if script else ["-m", "glcic_jax.main"]
    return [sys.executable, *entry, CONFIG, f"--workdir={workdir}", *flags]


def run_cli(workdir, *flags: str, env: dict | None = None, script: str | None = None,
            shell_prefix: str = "", timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = main_cmd(workdir, *flags, script=script)
    if shell_prefix:  # e.g. "ulimit -f 1024": applied by a shell that then execs the command
        cmd = ["bash", "-c", f'{shell_prefix} && exec "$0" "$@"', *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def report(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" \
           f"{proc.stderr[-6000:]}"


def finished_steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def unfinished_saves(workdir) -> list[str]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(n for n in os.listdir(d) if TMP_SUFFIX in n) if os.path.isdir(d) else []


def restore_state(workdir, step: int | None = None):
    """The GANState of a checkpoint, restored in this process (host numpy arrays)."""
    path = str(workdir) if step is None else os.path.join(workdir, "checkpoints", str(step))
    _, _, state = checkpointing.restore_for_inference(path)
    return jax.device_get(state)


def assert_bit_identical(a, b) -> None:
    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    differ = [jax.tree_util.keystr(p) for (p, x), y in zip(leaves_a, leaves_b)
              if not np.array_equal(np.asarray(x), np.asarray(y))]
    assert not differ, f"{len(differ)} leaves differ, e.g. {differ[:5]}"


def all_finite(tree) -> bool:
    return all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def children_cpu_seconds() -> float:
    """CPU time (user + system) of finished subprocesses: comparable on a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def snapshot(root) -> dict[str, tuple]:
    """Every file and folder below root: (size, mtime_ns, sha1 of small files)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            digest = None
            if os.path.isfile(path) and st.st_size < (1 << 20):
                with open(path, "rb") as f:
                    digest = hashlib.sha1(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def error_and_other_lines(proc: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    """stderr's `error:` lines, and its lines that are neither those nor log records (such as a
    library's traceback)."""
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    other = [line for line in lines if not line.startswith("error:")
             and not re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line)]
    return errors, other


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


@contextlib.contextmanager
def small_disk(path, size_kib: int):
    """A tmpfs of `size_kib` KiB mounted at `path`: a disk that really fills up. Needs root
    (mount); skipped elsewhere. The RLIMIT_FSIZE tests below cover failing writes without it."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small tmpfs needs root (mount -t tmpfs)")
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_kib)}k", "tmpfs",
                              str(path)], capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def disk_usage_kib(root) -> int:
    return sum(os.stat(os.path.join(d, n)).st_blocks // 2 for d, _, files in os.walk(root)
               for n in files) + 4 * sum(len(dirs) + 1 for _, dirs, _ in os.walk(root))


class Training:
    """A training subprocess whose combined output is read line by line with timestamps."""

    def __init__(self, workdir, *flags: str, log_path: str):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(main_cmd(workdir, *flags), cwd=ROOT, env=cli_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self.log_path = log_path
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line))

    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def seen(self, pattern: str) -> float | None:
        """Seconds after launch at which a line matched `pattern` (None: not yet)."""
        for t, line in list(self.lines):
            if re.search(pattern, line):
                return t
        return None

    def wait_for(self, predicate, timeout: float, poll: float = 0.01) -> bool:
        """Poll until predicate() is true; False if the process ended or the time ran out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            if self.proc.poll() is not None:
                return bool(predicate())
            time.sleep(poll)
        return False

    def finish(self, kill: bool = False, timeout: float = 900) -> int:
        if kill and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        with open(self.log_path, "w") as f:
            f.write(self.text())
        return rc


# ------------------------------------------------------------------------------------------------
# A reference run, shared by the tests that need a finished workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of FAULT_STEPS steps (all three phases), checkpointing every step."""
    workdir = tmp_path_factory.mktemp("reliability") / "reference"
    t0, cpu0 = time.monotonic(), children_cpu_seconds()
    proc = run_cli(workdir, *FAULT_FLAGS)
    assert proc.returncode == 0, report(proc)
    print(f"\nreference run: {FAULT_STEPS} steps in {time.monotonic() - t0:.0f} s, "
          f"{children_cpu_seconds() - cpu0:.0f} CPU s")
    return workdir


# ------------------------------------------------------------------------------------------------
# Preemption and kills


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference, tmp_path):
    """kill -9 during startup, during steps and during checkpoint writes, FAULT_ITERS times;
    each rerun resumes from the last complete checkpoint and the end state equals an
    uninterrupted run's, bit for bit."""
    t_start, cpu_start = time.monotonic(), children_cpu_seconds()
    workdir = tmp_path / "killed"
    rng = random.Random(FAULT_SEED)
    kinds = (["startup", "step", "checkpoint"] * FAULT_ITERS)[:FAULT_ITERS]
    rng.shuffle(kinds)
    startup_estimate = 8.0  # seconds to "Training steps", refined by every run that gets there
    landed = {"startup": 0, "step": 0, "checkpoint write": 0}
    resumed_from, restarts_over_leftover_tmp = set(), 0
    for i, kind in enumerate(kinds):
        leftover = unfinished_saves(workdir)
        done = finished_steps(workdir)
        start = done[-1] if done else 0
        # The step line to wait for: one to three steps on, never the last step, so the run is
        # always killed before it could finish.
        target = min(start + rng.randint(1, 3), FAULT_STEPS - 1)
        if target <= start:
            kind = "startup"
        run = Training(workdir, *FAULT_FLAGS, log_path=str(tmp_path / f"run{i:02d}.log"))

        def training_started(run=run):
            return run.seen(r"Training steps") is not None

        if kind == "startup":
            # A random moment before training starts (imports, mean pixel, restore, compile).
            run.wait_for(training_started, timeout=rng.uniform(0.3, startup_estimate))
        elif kind == "step":
            # Inside this run's first training step, before its first save. Later on,
            # checkpoint_every=1 keeps a save in flight nearly all the time (saves outlast the tiny
            # steps), so a kill after a later step line lands in a checkpoint write.
            run.wait_for(training_started, timeout=600)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # as soon as the next Orbax temporary folder appears after the target step
            line = rf"\] step {target}/"
            run.wait_for(lambda run=run, line=line: run.seen(line) is not None, timeout=600)
            run.wait_for(lambda: bool(unfinished_saves(workdir)), timeout=600, poll=0.005)
            time.sleep(rng.uniform(0.0, 0.02))
        alive = run.proc.poll() is None
        phase = ("startup" if not training_started() else
                 "checkpoint write" if unfinished_saves(workdir) else "step")
        rc = run.finish(kill=True)
        assert alive and rc == -signal.SIGKILL, f"run {i} ended by itself:\n{run.text()[-4000:]}"
        landed[phase] += 1
        if (t := run.seen(r"Training steps")) is not None:
            startup_estimate = t
        if done and run.seen(r"Resuming from") is not None:  # from the last complete one
            assert run.seen(rf"Resuming from {re.escape(str(workdir))}/checkpoints/{start}\.")
            resumed_from.add(start)
        if leftover and training_started():
            restarts_over_leftover_tmp += 1
            assert run.seen(r"Removed .*orbax-checkpoint-tmp"), run.text()[-3000:]
        after = finished_steps(workdir)
        # A kill never takes away a finished checkpoint (only older ones are rotated out).
        assert (after[-1] if after else 0) >= start, (after, start)
        print(f"kill {i:2d} ({kind:10s} step {target:2d}): landed in {phase:16s} at "
              f"{time.monotonic() - run.t0:5.1f} s; complete checkpoints {after}, unfinished "
              f"{unfinished_saves(workdir)}")

    leftover = unfinished_saves(workdir)
    final = Training(workdir, *FAULT_FLAGS, log_path=str(tmp_path / "final.log"))
    rc = final.finish()
    assert rc == 0, final.text()[-6000:]
    if leftover:
        restarts_over_leftover_tmp += 1
        assert final.seen(r"Removed .*orbax-checkpoint-tmp"), final.text()[-3000:]
    assert not unfinished_saves(workdir)
    assert finished_steps(workdir)[-1] == FAULT_STEPS
    print(f"kills landed: {landed}; resumed from steps {sorted(resumed_from)}; restarts over a "
          f"leftover unfinished checkpoint: {restarts_over_leftover_tmp}; fault runs: "
          f"{time.monotonic() - t_start:.0f} s, {children_cpu_seconds() - cpu_start:.0f} CPU s")
    assert all(landed.values()), landed
    assert restarts_over_leftover_tmp >= 1

    assert_bit_identical(restore_state(reference), restore_state(workdir))


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_exits_0(tmp_path):
    workdir = tmp_path / "run"
    flags = ("--config.num_train_steps=8", "--config.checkpoint_every=1000",
             "--config.sample_every=100000")
    run = Training(workdir, *flags, log_path=str(tmp_path / "run.log"))
    assert run.wait_for(lambda: run.seen(r"\] step 2/8") is not None, timeout=600), run.text()
    run.proc.send_signal(signal.SIGTERM)
    # Launchers and schedulers may deliver SIGTERM twice (a process-group kill plus forwarding):
    # the repeat must not cut the save short.
    assert run.wait_for(lambda: run.seen(r"SIGTERM received:") is not None, timeout=60)
    run.proc.send_signal(signal.SIGTERM)
    rc = run.finish()
    log = run.text()
    assert rc == 0, log[-4000:]
    assert "SIGTERM received again: already stopping" in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    match = re.search(r"Stopped by SIGTERM at step (\d+); checkpoint saved", log)
    assert match, log[-4000:]
    step = int(match.group(1))
    assert 2 <= step < 8
    assert finished_steps(workdir) == [step] and not unfinished_saves(workdir)
    state = restore_state(workdir)
    assert int(state.step) == step and all_finite(state)


def test_signal_handler_defers_signals_and_only_a_second_ctrl_c_stops_now():
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with train._StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # no exception, just a flag
        time.sleep(0.01)
        assert stop.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM is not an emergency
        time.sleep(0.01)
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after a signal: stop now
            time.sleep(0.01)
    with train._StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C only sets the flag
        time.sleep(0.01)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    # The handler around the final save carries the first signal over: Ctrl-C there stops now.
    with train._StopSignal("SIGINT"), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_with_a_message_and_keeps_complete_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    flags = ("--config.num_train_steps=400", "--config.checkpoint_every=2",
             "--config.sample_every=100000")
    run = Training(workdir, *flags, log_path=str(tmp_path / "run.log"))
    assert run.wait_for(lambda: run.seen(r"\] step 4/400") is not None, timeout=600), run.text()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait_for(lambda: run.seen(r"SIGINT received:") is not None, timeout=60)
    run.proc.send_signal(signal.SIGINT)
    second = time.monotonic()
    rc = run.finish()
    log = run.text()
    assert rc == 130, log[-4000:]
    # At once: it used to hang for 5 min at exit, joining Orbax threads that a Ctrl-C inside
    # save() had left waiting (60 s: a loaded 2-core machine, not a measured bound).
    assert time.monotonic() - second < 60, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    done = finished_steps(workdir)
    assert done and done[-1] < 400
    assert (f"error: Interrupted (Ctrl-C); the last complete checkpoint (step {done[-1]}) is "
            "intact: rerun the same command to resume from it." in log), log[-4000:]
    state = restore_state(workdir)
    assert int(state.step) == done[-1] and all_finite(state)


# ------------------------------------------------------------------------------------------------
# Numerical faults


NAN_HELPER = os.path.join(ROOT, "tests", "nan_injection_main.py")


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_losses_and_keeps_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, "--config.num_train_steps=4", "--config.checkpoint_every=1",
                   script=NAN_HELPER, env=cli_env(GLCIC_NAN_AT_STEP="2"))
    assert proc.returncode == 1, report(proc)
    assert "Traceback" not in proc.stderr, report(proc)
    last = proc.stderr.strip().splitlines()[-1]
    expected = "error: Non-finite values at step 2 (completion update): g_loss, mse."
    assert last.startswith(expected), \
        report(proc)
    assert "last good checkpoint (step 1) is kept" in last and "nan_policy=skip" in last
    assert finished_steps(workdir) == [1] and not unfinished_saves(workdir)
    state = restore_state(workdir)
    assert int(state.step) == 1 and all_finite(state)


@pytest.mark.slow
def test_a_run_that_diverges_before_its_first_checkpoint_says_none_was_written(tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, "--config.optimizer.learning_rate=1e30", "--config.num_train_steps=4",
                   "--config.checkpoint_every=100", "--config.log_every=1")
    assert proc.returncode == 1, report(proc)
    errors_, other = error_and_other_lines(proc)
    assert len(errors_) == 1 and not other, report(proc)
    assert "no checkpoint had been written yet (a rerun starts afresh)" in errors_[0], errors_[0]
    assert "checkpoint is kept" not in errors_[0]
    assert finished_steps(workdir) == []


@pytest.mark.slow
def test_nan_policy_skip_counts_logs_and_keeps_the_old_state(tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, "--config.num_train_steps=3", "--config.checkpoint_every=1",
                   "--config.schedule.tc=3", "--config.nan_policy=skip",
                   script=NAN_HELPER, env=cli_env(GLCIC_NAN_AT_STEP="2"))
    assert proc.returncode == 0, report(proc)
    assert re.search(r"Non-finite values at step 2 \(completion update\): g_loss, mse; update "
                     r"skipped \(nan_policy=skip\)", proc.stderr), report(proc)
    assert re.search(r"step 2/3 .*skipped_updates=1\b", proc.stderr), report(proc)
    assert re.search(r"step 3/3 .*skipped_updates=0\b", proc.stderr), report(proc)
    assert finished_steps(workdir) == [1, 2, 3]
    s1, s2, s3 = (restore_state(workdir, k) for k in (1, 2, 3))
    assert (int(s1.step), int(s2.step), int(s3.step)) == (1, 2, 3)
    assert_bit_identical(s1.g, s2.g)  # the poisoned update was dropped entirely ...
    assert all_finite(s3) and not np.array_equal(  # ... and training went on after it
        jax.tree_util.tree_leaves(s2.g.params)[0], jax.tree_util.tree_leaves(s3.g.params)[0])


def test_an_overflowing_update_is_never_checkpointed(tiny_state):
    """Finite losses can still produce inf weights (e.g. a huge learning rate); the save guard
    refuses them."""
    train._check_state_finite(tiny_state, 7)
    leaves, tree = jax.tree_util.tree_flatten(tiny_state.g.params)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(np.inf)
    bad = tiny_state.replace(g=tiny_state.g.replace(params=jax.tree_util.tree_unflatten(tree,
                                                                                         leaves)))
    with pytest.raises(train.NonFiniteError, match="non-finite at step 7"):
        train._check_state_finite(bad, 7)


def test_training_refuses_to_checkpoint_an_overflowed_state(tmp_path, monkeypatch):
    """Training itself calls the guard: a step whose losses are finite but whose new weights
    are not stops the run before that state is saved, and nothing is checkpointed. The step is
    a stand-in (no compilation): it advances the counter and turns one weight infinite."""
    from test_train import load_config

    config = load_config("quickstart")
    config.num_train_steps, config.checkpoint_every, config.sample_every = 3, 1, 1000

    def overflowing_step(st, images):
        leaves, tree = jax.tree_util.tree_flatten(st.g.params)
        leaves[0] = leaves[0] * np.float32(np.inf)
        g = st.g.replace(params=jax.tree_util.tree_unflatten(tree, leaves))
        metrics = {"mse": np.float32(0.01), "g_loss": np.float32(0.01),
                   "nonfinite": np.float32(0.0)}  # the step's own check saw nothing
        return st.replace(step=st.step + 1, g=g), metrics

    monkeypatch.setattr(train.steps_lib, "step_fn_for",
                        lambda step, cfg, fns: ("completion", overflowing_step))
    with pytest.raises(train.NonFiniteError, match="non-finite at step 1 although the losses"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert checkpointing.finished_steps(str(tmp_path / "run")) == []


# ------------------------------------------------------------------------------------------------
# Bad data


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(5 * (yy * rng.random() + xx * rng.random()) + c) for c in range(3)], -1)
    return ((img * 0.5 + 0.5) * 255).astype(np.uint8)


def write_messy_folder(root) -> dict[str, list[str]]:
    """Photos in every awkward format, plus files that cannot be decoded at all."""
    os.makedirs(root, exist_ok=True)
    rgb = _photo(48, 64, 0)
    good = {
        "rgb.jpg": Image.fromarray(rgb),
        "rgb.png": Image.fromarray(_photo(70, 50, 1)),
        "gray.png": Image.fromarray(_photo(50, 60, 2)).convert("L"),
        "rgba.png": Image.fromarray(_photo(60, 60, 3)).convert("RGBA"),
        "palette.png": Image.fromarray(_photo(44, 52, 4)).convert("P"),
        "cmyk.jpg": Image.fromarray(_photo(56, 40, 5)).convert("CMYK"),
        "bilevel.png": Image.fromarray(_photo(40, 40, 6)).convert("1"),
        "tiny_8x6.png": Image.fromarray(_photo(6, 8, 7)),  # smaller than the 32x32 crop
        "sub/rgb2.bmp": Image.fromarray(_photo(40, 90, 8)),
        "sub/rgb3.webp": Image.fromarray(_photo(64, 48, 9)),
    }
    for name, img in good.items():
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        img.save(os.path.join(root, name))
    g16 = (np.linspace(0, 65535, 50 * 40).reshape(40, 50)).astype(np.uint16)
    Image.fromarray(g16).save(os.path.join(root, "gray16.png"))  # mode I;16
    Image.fromarray(np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)).save(
        os.path.join(root, "float.tif"))  # mode F, values in [0, 1]
    good["gray16.png"] = good["float.tif"] = None
    with open(os.path.join(root, "rgb.jpg"), "rb") as f:
        jpeg = f.read()
    bad = {"truncated.jpg": jpeg[: len(jpeg) // 2],
           "corrupt.jpg": np.random.default_rng(0).bytes(3000),
           "empty.png": b""}
    for name, data in bad.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    return {"good": sorted(good), "bad": sorted(bad)}


def test_every_awkward_image_format_becomes_rgb_uint8(tmp_path):
    files = write_messy_folder(tmp_path)
    for name in files["good"]:
        img = input_pipeline.load_image(str(tmp_path / name))
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, name
        assert img.std() > 0, name  # not a blank conversion
    gray = input_pipeline.load_image(str(tmp_path / "gray.png"))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    g16 = input_pipeline.load_image(str(tmp_path / "gray16.png"))
    assert g16.min() == 0 and g16.max() == 255  # 0..65535 mapped to the full 8-bit range
    dark16 = Image.fromarray(np.full((8, 8), 200, np.uint16))  # 16-bit, dark: stays dark
    assert input_pipeline.to_rgb_uint8(dark16).max() == 1
    f32 = input_pipeline.load_image(str(tmp_path / "float.tif"))
    assert f32.min() == 0 and f32.max() == 255
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.all(input_pipeline.to_rgb_uint8(transparent) == 255)  # over white
    cmyk = input_pipeline.load_image(str(tmp_path / "cmyk.jpg"))
    assert cmyk.shape == (56, 40, 3)
    # Smaller than the crop: upscaled by the shortest-side resize, then cropped.
    small = input_pipeline.load_image(str(tmp_path / "tiny_8x6.png"))
    out = input_pipeline.augment(small, np.random.default_rng(0), 32, 32, 40, True)
    assert out.shape == (32, 32, 3)
    for name in files["bad"]:
        with pytest.raises(OSError):  # PIL's UnidentifiedImageError is an OSError too
            input_pipeline.load_image(str(tmp_path / name))


def test_unreadable_files_are_skipped_with_a_count(tmp_path, caplog):
    files = write_messy_folder(tmp_path)
    names = files["bad"] + files["good"]
    source = input_pipeline.IndexedSource(
        names, lambda i: input_pipeline.load_image(str(tmp_path / names[i])), "test folder")
    with caplog.at_level("WARNING"):
        images = [source.load(i) for i in range(len(names))]
    assert all(img.ndim == 3 for img in images)
    assert set(source.skipped) == set(files["bad"])
    assert "3 skipped so far" in caplog.text
    assert all(f"Skipping unreadable image {n}" in caplog.text for n in files["bad"])

    only_bad = input_pipeline.IndexedSource(
        files["bad"], lambda i: input_pipeline.load_image(str(tmp_path / files["bad"][i])),
        "test folder")
    with pytest.raises(input_pipeline.DataError, match="None of the 3 images"):
        only_bad.load(0)


@pytest.mark.slow
def test_training_on_a_messy_folder_converts_and_skips_without_crashing(tmp_path):
    files = write_messy_folder(tmp_path / "photos")
    proc = run_cli(tmp_path / "run", "--config.data.source=folder",
                   f"--config.data.path={tmp_path / 'photos'}", "--config.num_train_steps=1",
                   "--config.data.mean_pixel_images=64")
    assert proc.returncode == 0, report(proc)
    assert "Traceback" not in proc.stderr, report(proc)
    skipped = set(re.findall(r"Skipping unreadable image (\S+) \(", proc.stderr))
    assert skipped == set(files["bad"]), report(proc)
    assert "skipped so far" in proc.stderr
    assert finished_steps(tmp_path / "run") == [1]


@pytest.mark.slow
def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "photos" / "nested").mkdir(parents=True)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    proc = run_cli(tmp_path / "run", "--config.data.source=folder",
                   f"--config.data.path={tmp_path / 'photos'}")
    assert proc.returncode == 1, report(proc)
    assert "Traceback" not in proc.stderr
    assert "No images" in proc.stderr and str(tmp_path / "photos") in proc.stderr


def test_damaged_mean_pixel_cache_is_recomputed(tmp_path):
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    config.data.source = "skimage"
    good = input_pipeline.mean_pixel(config, str(tmp_path))
    path = tmp_path / "mean_pixel.json"
    path.write_text(path.read_text().replace(str(float(good[0])), "NaN"))
    again = input_pipeline.mean_pixel(config, str(tmp_path))
    np.testing.assert_array_equal(again, good)


# ------------------------------------------------------------------------------------------------
# Bad settings: fail before training starts, say what to change, no traceback


@pytest.mark.slow
@pytest.mark.parametrize("flags, env, expected", [
    (["--config.batch_sise=8"], {}, ["batch_sise", 'Did you mean "batch_size"']),
    (["--config.mask.hole_max=20"], {},
     ["mask.hole_max (20) is larger than the local crop mask.local_size (16)"]),
    (["--config.mask.local_size=40", "--config.mask.hole_max=36"], {},
     ["mask.local_size (40) is larger than the image (32x32)", "raise data.image_size"]),
    (["--config.batch_size=3"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
     ["batch_size=3 is not divisible by the 2 devices", "--config.batch_size=2"]),
], ids=["unknown-key", "hole-larger-than-local-crop", "local-crop-larger-than-image",
        "batch-not-divisible"])
def test_bad_settings_fail_before_training_with_what_to_change(tmp_path, flags, env, expected):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, *flags, env=cli_env(**env))
    assert proc.returncode != 0, report(proc)
    assert "Traceback" not in proc.stderr, report(proc)
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error, report(proc)
    for text in expected:
        assert text in proc.stderr, report(proc)
    assert not workdir.exists()  # nothing was started


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory) -> str:
    """A workdir with one untrained `:tiny` checkpoint (test_complete's, no training)."""
    from test_complete import make_workdir

    return make_workdir(str(tmp_path_factory.mktemp("init_from") / "source"))


def _bad_start(case: str, tmp_path, tiny_workdir):
    """A `:tiny` config that cannot start, and the words its error must hold."""
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    config.data.source = "skimage"
    if case == "data-path-missing":
        config.data.source, config.data.path = "folder", str(tmp_path / "no_such_folder")
        return config, ["no_such_folder", "is not a folder"]
    if case == "data-path-empty":
        (tmp_path / "photos").mkdir()
        (tmp_path / "photos" / "notes.txt").write_text("not an image")
        config.data.source, config.data.path = "folder", str(tmp_path / "photos")
        return config, ["No images", "photos"]
    if case == "tfds-unknown":
        config.data.source, config.data.name = "tfds", "no_such_dataset_xyz"
        return config, ["Unknown tfds dataset data.name='no_such_dataset_xyz'"]
    if case == "init-from-missing":
        config.init_from = str(tmp_path / "no_such_workdir")
        return config, ["no_such_workdir"]
    if case == "init-from-empty":
        (tmp_path / "empty").mkdir()
        config.init_from = str(tmp_path / "empty")
        return config, ["empty"]
    source = tmp_path / "source"
    shutil.copytree(tiny_workdir, source)
    config.init_from = str(source)
    if case == "init-from-damaged":
        os.remove(source / "checkpoints" / "0" / "state" / "_METADATA")
        return config, ["source"]
    if case == "init-from-other-width":
        config.model.width = 0.5
        return config, ["model.width: checkpoint has 0.25, config has 0.5",
                        "--config.model.width=0.25"]
    assert case == "init-from-other-fill"
    config.model.fill = "learned"
    return config, ["model.fill: checkpoint has 'mean', config has 'learned'"]


@pytest.mark.parametrize("case", ["data-path-missing", "data-path-empty", "tfds-unknown",
                                  "init-from-missing", "init-from-empty", "init-from-damaged",
                                  "init-from-other-width", "init-from-other-fill"])
def test_a_start_that_fails_on_its_data_or_init_from_writes_nothing(case, tmp_path,
                                                                    tiny_workdir):
    config, expected = _bad_start(case, tmp_path, tiny_workdir)
    workdir = tmp_path / "run"
    with pytest.raises(errors.UserError) as info:
        train.train_and_evaluate(config, str(workdir))
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(message) < 600, message[:3000]
    for text in expected:
        assert text in message, message
    assert not workdir.exists()  # checked before anything was written


@pytest.mark.slow
def test_incompatible_workdir_is_refused_and_left_untouched(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    os.makedirs(workdir / "checkpoints" / f"{FAULT_STEPS + 1}{TMP_SUFFIX}")  # even this stays
    before = snapshot(workdir)
    assert {"mean_pixel.json", "config.json"} <= set(before)
    proc = run_cli(workdir, "--config.optimizer.name=adam", "--config.mask.local_size=20")
    assert proc.returncode == 1, report(proc)
    assert "Traceback" not in proc.stderr, report(proc)
    for text in ("incompatible config",
                 "optimizer.name: checkpoint has 'adadelta', config has 'adam'",
                 "mask.local_size: checkpoint has 16, config has 20",
                 "Nothing was overwritten", "new --workdir"):
        assert text in proc.stderr, report(proc)
    assert snapshot(workdir) == before


# ------------------------------------------------------------------------------------------------
# Full disk, unwritable workdir


@pytest.mark.slow
def test_failing_checkpoint_write_is_a_clear_error_and_keeps_the_last_checkpoint(reference,
                                                                                 tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    last = FAULT_STEPS
    before = snapshot(workdir / "checkpoints" / str(last))
    # A file-size limit makes writes fail with EFBIG as a full disk fails them with ENOSPC, and
    # unlike file permissions it also stops root (Python ignores SIGXFSZ, so write() returns the
    # error). Small files (logs, sample PNGs, JSON) still fit; the checkpoint's arrays do not.
    proc = run_cli(workdir, *FAULT_FLAGS[:-1], f"--config.num_train_steps={last + 1}",
                   shell_prefix="ulimit -f 1024")  # 1 MiB
    assert proc.returncode == 1, report(proc)
    # Orbax's and tensorstore's I/O threads may print tracebacks of their own while the save
    # fails (their partial lines can precede ours), but one line says what happened and what to
    # do, written whole.
    marker = "error: Could not write the "
    assert proc.stderr.count(marker) == 1, report(proc)
    error = proc.stderr[proc.stderr.index(marker):].split("\n", 1)[0]
    assert "File too large" in error and "Free disk space" in error, error
    assert f"resumes from the last complete checkpoint (step {last}), which is intact" in error
    assert finished_steps(workdir) == finished_steps(reference)  # nothing rotated out
    assert snapshot(workdir / "checkpoints" / str(last)) == before
    assert_bit_identical(restore_state(reference), restore_state(workdir))


@pytest.mark.slow
def test_a_full_disk_mid_run_stops_at_once_with_one_line_and_no_library_noise(reference,
                                                                              tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    last = FAULT_STEPS
    # Saves at last+2 and last+4: the first fails in the background (1 MiB file-size limit).
    # Before, that was noticed only when the second one was started, after pages of Orbax's
    # tracebacks; now right after the next step.
    proc = run_cli(workdir, "--config.checkpoint_every=2", "--config.sample_every=100000",
                   f"--config.num_train_steps={last + 6}", shell_prefix="ulimit -f 1024")
    assert proc.returncode == 1, report(proc)
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, report(proc)
    # Named as soon as it is known: after the next step, or, where the tiny steps outrun the
    # background write (the failure lands after step last+3 ended), at the save of last+4, which
    # then names both.
    assert (f"the checkpoint of step {last + 2}" in errors[0]
            or f"the checkpoint of step {last + 4} (or the one before)" in errors[0]), errors[0]
    assert f"last complete checkpoint (step {last}), which is intact" in errors[0]
    assert f"step {last + 5}/" not in output, report(proc)  # stopped long before
    assert "Traceback" not in output and "absl" not in output, report(proc)
    assert (workdir / checkpointing.LIBRARY_LOG).exists()  # Orbax's detail went there
    assert finished_steps(workdir) == finished_steps(reference)


@pytest.mark.slow  # ~15-25 s on 2 cores
def test_a_fresh_run_on_a_full_disk_fails_in_one_true_line_and_leaves_no_temporary_file(
        tmp_path):
    with small_disk(tmp_path / "disk", 64) as disk:
        (disk / "filler").write_bytes(b"\0" * (60 << 10))  # 4 KiB left
        proc = run_cli(disk / "run", "--config.num_train_steps=4")
        left = files_under(disk / "run")
    assert proc.returncode == 1, report(proc)
    errors_, other = error_and_other_lines(proc)
    assert len(errors_) == 1 and not other, report(proc)  # no tensorboardX exit traceback
    assert "No space left on device" in errors_[0], errors_[0]
    assert "training starts afresh (no checkpoint had been written)" in errors_[0], errors_[0]
    assert "resumes" not in errors_[0]
    assert not [name for name in left if ".tmp" in name], left


@pytest.mark.parametrize("command_line", [False, True])
def test_library_noise_after_a_failed_write_stays_in_its_file_for_the_command_line(
        tmp_path, capsys, monkeypatch, command_line):
    """After a failed save, tensorstore's I/O threads go on printing tracebacks (through
    sys.excepthook) and Orbax goes on logging, after the error has left the training loop. The
    command line, which ends there, keeps them in library.log (on a loaded machine they reached
    the console between the failure and the one-line error); an in-process caller gets its
    console back."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(checkpointing, "_KEEP_AFTER_WRITE_ERROR", False)
    loggers = [logging.getLogger(name) for name in checkpointing.LIBRARY_LOGGERS]
    before = [(lg, lg.propagate, lg.level, list(lg.handlers)) for lg in loggers]
    hooks = sys.excepthook, sys.unraisablehook
    path = tmp_path / "library.log"
    try:
        with pytest.raises(checkpointing.CheckpointWriteError):
            with (checkpointing.library_log_kept_after_write_errors() if command_line
                  else contextlib.nullcontext()):
                with checkpointing.library_log(str(path)):
                    raise checkpointing.CheckpointWriteError("No space left on device")
        assert checkpointing._KEEP_AFTER_WRITE_ERROR is False  # the block's setting only
        try:  # what a library thread does after the failure
            raise RuntimeError("Event loop is closed")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        logging.getLogger("absl").error("a late library note")
        for lg in loggers:
            for handler in lg.handlers:
                handler.flush()
        text = path.read_text() if path.exists() else ""
        err = capsys.readouterr().err
        if command_line:
            assert "Event loop is closed" in text and "a late library note" in text, text
            assert "Event loop is closed" not in err and "a late library note" not in err, err
        else:
            assert (sys.excepthook, sys.unraisablehook) == hooks
            assert "Event loop is closed" not in text and "a late library note" not in text, text
            assert "Event loop is closed" in err  # the console's hook again
    finally:
        for lg, propagate, level, handlers in before:
            for handler in set(lg.handlers) - set(handlers):
                lg.removeHandler(handler)
                handler.close()
            lg.propagate, lg.level = propagate, level


def test_a_library_log_on_the_full_disk_never_replaces_the_runs_error(tmp_path):
    """The library log shares the disk that failed the save: its last records cannot be
    flushed when the block ends. That must not turn the run's error into an OSError traceback
    (it did, on a loaded machine, when records were still buffered)."""

    class FullDisk(io.StringIO):
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        close = flush

    absl_logger = logging.getLogger("absl")
    assert checkpointing._KEEP_AFTER_WRITE_ERROR is False  # no caller's setting left behind
    with pytest.raises(checkpointing.CheckpointWriteError, match="the save's own error"):
        with checkpointing.library_log(str(tmp_path / "library.log")):
            absl_logger.error("a library note")  # opens the file
            (handler,) = [h for h in absl_logger.handlers
                          if isinstance(h, checkpointing._QuietFileHandler)]
            handler.stream.close()
            handler.stream = FullDisk()
            absl_logger.error("a buffered record")
            raise checkpointing.CheckpointWriteError("the save's own error")
    assert not [h for h in absl_logger.handlers if isinstance(h, checkpointing._QuietFileHandler)]


@pytest.mark.slow
def test_a_save_that_fails_on_a_full_disk_stops_the_run_at_the_next_step_naming_its_step(
        reference, tmp_path):
    last = FAULT_STEPS
    one_checkpoint = disk_usage_kib(reference / "checkpoints" / str(last))
    # Room for everything but half a checkpoint more: the save of step last+1 fails.
    with small_disk(tmp_path / "disk", disk_usage_kib(reference) + one_checkpoint // 2) as disk:
        workdir = disk / "run"
        shutil.copytree(reference, workdir)
        proc = run_cli(workdir, "--config.checkpoint_every=1", "--config.sample_every=100000",
                       "--config.log_every=1", f"--config.num_train_steps={last + 6}")
        done = finished_steps(workdir)
    assert proc.returncode == 1, report(proc)
    errors_, other = error_and_other_lines(proc)
    assert len(errors_) == 1 and not other, report(proc)
    assert f"Could not write the checkpoint of step {last + 1} under" in errors_[0], errors_[0]
    assert "or the one before" not in errors_[0]
    assert f"last complete checkpoint (step {last}), which is intact" in errors_[0]
    assert f"step {last + 1}/" in proc.stderr  # the failed save's step ran ...
    assert f"step {last + 2}/" not in proc.stderr  # ... and the run stopped in the next one
    assert done == finished_steps(reference)


def test_workdir_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_cli(tmp_path / "a_file" / "run")
    assert proc.returncode == 1, report(proc)
    assert "Traceback" not in proc.stderr, report(proc)
    assert "Cannot create --workdir" in proc.stderr and "Not a directory" in proc.stderr


def without_permission_override(cmd: list[str]) -> list[str]:
    """`cmd` run without the capabilities that let root ignore permission bits (CI runs the
    tests as root): setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding
    set before exec, so permission bits bind the command as they bind any user. Not a switch
    to another uid (setpriv --reuid, os.setuid): the interpreter may live where only root can
    reach it (e.g. under /root/.pyenv). Unchanged when the tests do not run as root."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")  # util-linux
    if setpriv is None:
        pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]


def run_cli_unprivileged(workdir, *flags: str) -> subprocess.CompletedProcess:
    """run_cli without the privilege to ignore permission bits, so that a read-only folder
    really is read-only."""
    return subprocess.run(without_permission_override(main_cmd(workdir, *flags)), cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=900,
                          check=False)


def test_dropping_the_override_makes_root_obey_permission_bits(tmp_path):
    """The helper above is what makes the read-only tests meaningful as root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    code = f"open({str(folder / 'x')!r}, 'w')"
    proc = subprocess.run(without_permission_override([sys.executable, "-c", code]),
                          capture_output=True, text=True, timeout=60, check=False)
    os.chmod(folder, 0o755)
    assert proc.returncode == 1 and "PermissionError" in proc.stderr, proc.stderr


def test_read_only_workdir_is_refused_before_training_even_for_a_fresh_run(tmp_path):
    """The write probe before training: a workdir the user cannot write stops the run with one
    line, before any step and without touching the folder."""
    workdir = str(tmp_path / "run")
    try:
        os.makedirs(os.path.join(workdir, "checkpoints"))
        for d in (workdir, os.path.join(workdir, "checkpoints")):
            os.chmod(d, 0o555)
        before = snapshot(workdir)
        proc = run_cli_unprivileged(workdir, "--config.num_train_steps=2")
        assert proc.returncode == 1, report(proc)
        assert "Traceback" not in proc.stderr, report(proc)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Could not write" in errors[0], report(proc)
        assert "Permission denied" in errors[0], report(proc)
        assert "Compiling" not in proc.stderr, report(proc)  # stopped before the first step
        assert snapshot(workdir) == before
    finally:
        for d in (workdir, os.path.join(workdir, "checkpoints")):
            os.chmod(d, 0o755)


@pytest.mark.slow
def test_read_only_workdir_fails_before_training_and_keeps_checkpoints(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for d in (workdir, workdir / "checkpoints"):
        os.chmod(d, 0o555)
    try:
        before = snapshot(workdir)
        proc = run_cli_unprivileged(workdir, *FAULT_FLAGS[:-1],
                                    f"--config.num_train_steps={FAULT_STEPS + 1}")
        assert proc.returncode == 1, report(proc)
        assert "Traceback" not in proc.stderr, report(proc)
        assert "Could not write" in proc.stderr and "Permission denied" in proc.stderr
        assert snapshot(workdir) == before
    finally:
        for d in (workdir, workdir / "checkpoints"):
            os.chmod(d, 0o755)


# ------------------------------------------------------------------------------------------------
# What killed runs leave behind


def test_a_rerun_removes_what_killed_runs_left_and_says_so_in_one_line(tmp_path, caplog):
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    workdir = tmp_path / "run"
    ckpt = checkpointing.Checkpointer(str(workdir), config)
    (workdir / "samples").mkdir()
    left = [workdir / "checkpoints" / f"3{TMP_SUFFIX}",  # an unfinished save (a folder)
            workdir / "checkpoints" / ".write-probe-ab12cd34",
            workdir / "config.json.tmp",  # the names of earlier versions
            workdir / "mean_pixel.json.tmp",
            workdir / ".tmp-0a1b2c3d.json",
            workdir / "samples" / ".tmp-k9x8y7w6.png"]  # a sample grid being written
    left[0].mkdir()
    for path in left[1:]:
        path.write_text("partial")
    kept = [workdir / ".tmp-notes.txt", workdir / "config.json", workdir / "samples" / "a.png"]
    for path in kept:
        path.write_text("the user's")
    fd, busy = leftovers.temp_file(str(workdir / "samples"), suffix=".png")  # a live writer's
    try:
        with caplog.at_level("WARNING"):
            ckpt.prepare_for_writing()
        assert os.path.exists(busy)
    finally:
        os.close(fd)
        ckpt.close()
    lines = [r.getMessage() for r in caplog.records if "interrupted run" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Removed 6 unfinished checkpoints and files left by an "
                               "interrupted run: "), lines[0]
    assert not [path for path in left if os.path.exists(path)]
    assert all(path.exists() for path in kept)


SIGKILL_HELPER = os.path.join(ROOT, "tests", "sigkill_main.py")


@pytest.mark.slow
def test_training_killed_while_writing_a_sample_grid_is_cleaned_up_by_the_rerun(tmp_path):
    workdir = tmp_path / "run"
    flags = ("--config.num_train_steps=2", "--config.sample_every=1",
             "--config.checkpoint_every=1")
    # SIGKILL as the first sample grid (step 1) is being written, into its temporary file.
    proc = run_cli(workdir, *flags, script=SIGKILL_HELPER, env=cli_env(
        GLCIC_SIGKILL_MODULE="glcic_jax.main", GLCIC_SIGKILL_ENTRY="run",
        GLCIC_SIGKILL_IN="PIL.Image:Image.save"))
    assert proc.returncode == -signal.SIGKILL, report(proc)
    left = [name for name in files_under(workdir) if ".tmp-" in name]
    assert len(left) == 1 and left[0].startswith("samples/"), files_under(workdir)

    proc = run_cli(workdir, *flags)
    assert proc.returncode == 0, report(proc)
    lines = [line for line in proc.stderr.splitlines() if "interrupted run" in line]
    assert len(lines) == 1 and lines[0].endswith(
        f"Removed 1 unfinished checkpoint or file left by an interrupted run: "
        f"{workdir / left[0]}."), report(proc)
    assert not [name for name in files_under(workdir) if ".tmp" in name], files_under(workdir)
    assert finished_steps(workdir) == [1, 2]
