"""What a user sees: TensorBoard that starts, quiet and truthful console lines, tools
that fail in one line.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from glcic_jax import config_lib, input_pipeline, summary, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    return config_lib.shrink_to_tiny(config_lib.base_config())


# ----------------------------------------------------------------------------------------------
# TensorBoard


def tensorboard_command() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    return beside if os.path.exists(beside) else shutil.which("tensorboard")


def test_requirements_install_the_tensorboard_command():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        names = [re.split(r"[<>=\[ ]", line.strip())[0].lower() for line in f
                 if line.strip() and not line.startswith("#")]
    assert "tensorboard" in names  # tensorflow-cpu >= 2.16 no longer pulls it in
    assert importlib.util.find_spec("tensorboard") is not None
    assert tensorboard_command(), "pip install -r requirements.txt gives no `tensorboard` command"


@pytest.mark.slow
def test_the_readmes_tensorboard_command_starts_and_serves_a_run(tmp_path):
    writer = summary.Writer(str(tmp_path / "run"))
    writer.write_config(tiny_config())
    writer.scalars(1, {"mse": 0.5})
    writer.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([tensorboard_command(), "--logdir", str(tmp_path), "--host",
                             "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, runs = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = r.read().decode()
                if "run" in runs:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert runs is not None and "run" in runs, runs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------
# Quiet console


def test_console_shows_our_records_only_unless_verbose():
    from glcic_jax import console

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    saved = root.level, logging.getLogger("absl").level
    root.addHandler(handler)
    try:
        console.configure(verbose=False)
        logging.info("ours")
        logging.getLogger("glcic_jax.x").info("ours too")
        logging.getLogger("absl").warning("Given directory is read only")
        logging.getLogger("jax._src.xla_bridge").warning("Unable to initialize backend 'tpu'")
        assert stream.getvalue().splitlines() == ["ours", "ours too"]
        handler.filters.clear()
        stream.truncate(0), stream.seek(0)
        console.configure(verbose=True)  # --verbosity given: absl's levels, every logger
        logging.getLogger("absl").warning("Given directory is read only")
        assert stream.getvalue().splitlines() == ["Given directory is read only"]
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("absl").setLevel(saved[1])


@pytest.mark.slow  # two `python -m glcic_jax.main` subprocesses (the CLI error checks are slow)
def test_a_user_error_is_one_line_and_library_notes_are_hidden(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS",
                                                            "TF_CPP_MIN_LOG_LEVEL")}
    cmd = [sys.executable, "-m", "glcic_jax.main", "--config=configs/quickstart.py:tiny",
           f"--workdir={tmp_path / 'run'}", "--config.data.source=folder",
           f"--config.data.path={tmp_path / 'no_such_folder'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # Our start-up line, then the error once (no absl "E..." copy, no jax backend notes).
    assert [line for line in lines if "no_such_folder" in line] == [lines[-1]], proc.stderr
    assert lines[-1].startswith("error: data.path="), proc.stderr
    assert not any("Unable to initialize backend" in line for line in lines), proc.stderr
    ours = tuple(f" {m}.py:" for m in ("main", "input_pipeline", "train", "checkpointing"))
    assert all(any(m in line for m in ours) for line in lines[:-1]), proc.stderr
    loud = subprocess.run(cmd + ["--verbosity=0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 1 and "xla_bridge" in loud.stderr  # jax's own notes are back


# ----------------------------------------------------------------------------------------------
# Truthful training lines


def test_the_rate_leaves_out_compilation():
    t = train.Timer(batch_size=8, now=100.0)
    # Window of 5 steps over 62 s: the first step compiled for 60 s, the other 4 took 2 s.
    t.pause(now=100.0)
    t.resume(now=160.0, steps=1)
    assert t.rate(5, now=162.0) == pytest.approx(4 * 8 / 2.0)
    t.restart(162.0)
    assert t.rate(5, now=167.0) == pytest.approx(5 * 8 / 5.0)
    t.restart(167.0)
    t.pause(now=167.0)
    t.resume(now=197.0, steps=1)  # a window of one step that only compiled: no rate to claim
    assert np.isnan(t.rate(1, now=197.0))


def test_periodic_actions_are_due_every_n_steps_and_never_for_0():
    assert [s for s in range(1, 13) if train.itstime(s, 4)] == [4, 8, 12]
    assert not any(train.itstime(s, 0) for s in range(1, 13))


def test_the_wait_before_the_first_step_says_what_it_is(tmp_path, caplog, monkeypatch):
    # Between the mean pixel and the first step, XLA compiles the networks' initialisation
    # (~30 s for the quickstart on a 2-core CPU): the console says so before it starts.
    class Stop(Exception):
        pass

    def init_replicated(*args, **kwargs):
        raise Stop

    c = tiny_config()
    c.data.source = "skimage"
    monkeypatch.setattr(train.distributed, "init_replicated", init_replicated)
    caplog.set_level(logging.INFO)
    with pytest.raises(Stop):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-2].startswith("Mean pixel"), lines
    assert lines[-1].startswith("Initialising the networks and the optimizer (compiled"), lines


def test_a_log_line_names_every_update_kind_in_its_window():
    c = tiny_config()  # tc = 2, td = 2: phase 1 steps 0-1, phase 2 steps 2-3, phase 3 from 4
    window = [(0, "completion", {}), (1, "completion", {}), (2, "discriminator", {})]
    assert train._window_updates(window, c) == "phases 1-2 (completion x2, discriminator x1)"
    assert train._window_updates([(4, "joint", {}), (5, "joint", {})], c) == "phase 3 (joint)"


# ----------------------------------------------------------------------------------------------
# The folder source's held-out split


def test_folder_split_is_logged_a_tiny_held_out_set_warned_and_no_crop_shown_twice(tmp_path,
                                                                                  caplog):
    c = tiny_config()
    size = int(c.data.image_size)
    rng = np.random.default_rng(0)
    for i in range(6):  # photos exactly the crop's size: every crop of one is the same image
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            tmp_path / f"p{i}.png")
    c.data.source, c.data.path = "folder", str(tmp_path)
    c.data.resize_min = c.data.resize_max = size
    c.data.eval_fraction = 0.3
    caplog.set_level(logging.INFO)
    found, used, held_out = input_pipeline.describe_split(c)
    assert found == 6 and used + held_out == 6 and 1 <= held_out < 4
    text = caplog.text
    assert f"6 images found, {used} used for training, {held_out} held out" in text
    assert f"Only {held_out} held-out image(s)" in text
    images = input_pipeline.eval_images(c, 4)
    assert len(images) == held_out  # not 4 with repeats
    assert len({img.tobytes() for img in images}) == len(images)
    assert f"gives {held_out} distinct" in caplog.text


# ----------------------------------------------------------------------------------------------
# Small things


def test_missing_vgg_weights_stop_before_any_work_or_write(tmp_path):
    c = tiny_config()
    c.data.source = "skimage"
    c.loss.perceptual_weight = 0.01
    c.loss.vgg_weights = str(tmp_path / "vgg16.npz")
    with pytest.raises(ValueError, match=r"vgg_weights=.*vgg16\.npz' is not a file"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # no workdir, no mean pixel computed


def test_convert_vgg16_without_torch_is_one_line(monkeypatch, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "convert_vgg16_weights", os.path.join(ROOT, "tools", "convert_vgg16_weights.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["convert_vgg16_weights.py", str(tmp_path / "vgg16.npz")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: this tool needs torch and torchvision")
    assert not (tmp_path / "vgg16.npz").exists()
