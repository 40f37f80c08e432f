"""End-to-end tests of the training system: configs, input pipelines, checkpoints, resume, errors.

Every run uses a `:tiny` config (32x32 images, batch 4, 2 + 2 + 2 steps over the three phases),
so all runs share the same compiled steps through the persistent compilation cache (conftest).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from glcic_jax import checkpointing, config_lib, errors, input_pipeline, train
from glcic_jax.data import tf_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = "tiny"):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def write_photo_folder(root: str, n: int = 12, seed: int = 0) -> str:
    """Smooth random colour photos of assorted sizes in nested folders (PNG and JPEG)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([np.sin(6 * (yy * rng.random() + xx * rng.random()) + c) for c in range(3)],
                       -1)
        img = ((img * 0.5 + 0.5) * 255).astype(np.uint8)
        sub = os.path.join(root, f"set{i % 3}")
        os.makedirs(sub, exist_ok=True)
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(img).save(os.path.join(sub, f"img_{i:02d}.{ext}"))
    return root


def assert_trained_workdir(workdir: str, state, steps: int = 6) -> None:
    assert int(jax.device_get(state.step)) == steps
    for leaf in jax.tree_util.tree_leaves(jax.device_get((state.g.params, state.d.params))):
        assert np.all(np.isfinite(leaf))
    ckpts = checkpointing.Checkpointer(workdir, load_config("quickstart"), read_only=True)
    assert ckpts.latest_step() == steps
    meta = ckpts.read_meta()
    assert meta["step"] == steps and len(meta["mean_pixel"]) == 3
    assert glob.glob(os.path.join(workdir, "samples", "step_*.png"))
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    grid = np.asarray(Image.open(sorted(glob.glob(os.path.join(workdir, "samples", "*.png")))[-1]))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.std() > 0


@pytest.mark.slow
def test_tfds_config_trains_end_to_end_on_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    config = load_config("celeba")
    assert config.data.source == "tfds"
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        state = train.train_and_evaluate(config, str(tmp_path))
    assert_trained_workdir(str(tmp_path), state)


def test_places2_config_reads_its_splits_on_mock_data(tmp_path):
    """places2 trains through the same loop as celeba (trained end to end above, same `:tiny`
    networks); what is its own is the dataset, its splits and the no-flip setting: read them."""
    import tensorflow_datasets as tfds

    config = load_config("places2")
    assert config.data.source == "tfds" and config.data.name == "places365_small"
    assert not config.data.flip
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        batches = input_pipeline.train_iterator(config, config.batch_size)
        first, second = next(batches), next(batches)
        held_out = input_pipeline.eval_images(config, int(config.data.num_eval_images))
        mean = input_pipeline.mean_pixel(config, str(tmp_path))
    size = config.data.image_size
    assert first.shape == (config.batch_size, size, size, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, second)
    assert held_out.shape == (config.data.num_eval_images, size, size, 3)
    assert mean.shape == (3,) and np.all((mean > 0) & (mean < 1))


@pytest.mark.slow
def test_folder_source_trains_end_to_end(tmp_path, caplog, capsys):
    photos = write_photo_folder(str(tmp_path / "photos"))
    config = load_config("quickstart")
    assert load_config("quickstart", None).final_eval and not config.final_eval
    config.data.source = "folder"
    config.data.path = photos
    config.log_every = 3  # windows of 3 steps: 0-2 span phases 1 and 2, 3-5 phases 2 and 3
    config.final_eval = True  # the quickstart's closing table, as its full config prints it
    caplog.set_level(logging.INFO)
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert_trained_workdir(str(tmp_path / "run"), state)
    # What the console said: the split, each first compilation, the window's updates.
    text = caplog.text
    assert re.search(r"12 images found, \d+ used for training, \d+ held out", text), text
    for kind in ("phase-1 completion step", "phase-2 discriminator step",
                 "phase-3 joint step", "sample-grid completion"):
        assert text.count(f"Compiling the {kind} (first time only)") == 1, text
    assert "step 3/6 phases 1-2 (completion x2, discriminator x1) " in text, text
    assert "step 6/6 phases 2-3 (discriminator x1, joint x2) " in text, text
    out = capsys.readouterr().out
    for method in ("| model |", "| mean_fill |", "| telea |", "| navier_stokes |"):
        assert method in out
    assert "psnr_hole" in out and "ssim_hole" in out and "l1_hole" in out
    grid = sorted(glob.glob(os.path.join(str(tmp_path / "run"), "samples", "*.png")))[-1]
    assert f"Sample grid (original | input with holes | completed): {grid}" in out
    assert f"tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}" in out
    assert os.path.exists(str(tmp_path / "run" / "eval_6.json"))
    picture = tmp_path / "run" / "eval_6.png"
    assert os.path.exists(str(picture)) and "Side by side " in out and str(picture) in out


NO_TF_MAIN = """
import importlib.abc, runpy, sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorboardX", "skimage", "cv2")


class Hide(importlib.abc.MetaPathFinder):
    \"\"\"A finder that does not see BLOCKED: imports fail and find_spec() returns None, exactly
    as if those packages were not installed.\"\"\"

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or not hasattr(self.inner, "find_spec"):
            return None
        return self.inner.find_spec(name, path, target)


sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
runpy.run_module("glcic_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_training_runs_without_tensorflow_tensorboardx_skimage_or_opencv(tmp_path):
    """The GPU machine's image has none of them: the folder source, checkpoints, sample PNGs and
    eval_every must not need them (tfds configs and TensorBoard events do)."""
    photos = write_photo_folder(str(tmp_path / "photos"))
    script = tmp_path / "no_tf_main.py"
    script.write_text(NO_TF_MAIN)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), "--config=configs/quickstart.py:tiny",
         f"--workdir={workdir}", "--config.data.source=folder", f"--config.data.path={photos}",
         "--config.eval_every=6", "--config.num_train_steps=6"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tensorboardX is not installed" in proc.stderr
    assert "step 6/6 phase 3" in proc.stderr, proc.stderr[-4000:]
    ckpts = checkpointing.Checkpointer(str(workdir), load_config("quickstart"), read_only=True)
    assert ckpts.latest_step() == 6
    assert glob.glob(os.path.join(workdir, "samples", "step_*.png"))
    assert not os.path.exists(os.path.join(workdir, "tensorboard"))


def test_folder_split_is_deterministic_and_disjoint(tmp_path):
    photos = write_photo_folder(str(tmp_path), n=40)
    files = input_pipeline.list_images(photos)
    assert len(files) == 40
    train_a, test_a = input_pipeline.split_files(files, 0.2)
    train_b, test_b = input_pipeline.split_files(list(reversed(files)), 0.2)
    assert sorted(train_a) == sorted(train_b) and sorted(test_a) == sorted(test_b)
    assert not set(train_a) & set(test_a) and len(train_a) + len(test_a) == 40
    assert 1 <= len(test_a) < 20


def test_stream_is_a_pure_function_of_position(tmp_path):
    """A stream started at element k yields what an uninterrupted stream yields at k."""
    config = load_config("quickstart")
    full = input_pipeline.train_iterator(config, 4, start_step=0)
    batches = [next(full) for _ in range(3)]
    resumed = input_pipeline.train_iterator(config, 4, start_step=2)
    np.testing.assert_array_equal(next(resumed), batches[2])
    assert not np.array_equal(batches[0], batches[1])
    full.close()
    resumed.close()
    # ... whatever the number of decoding threads.
    with config.unlocked():
        config.data.num_workers = 1
    one_thread = input_pipeline.train_iterator(config, 4, start_step=1)
    assert one_thread._pool._max_workers == 1
    np.testing.assert_array_equal(next(one_thread), batches[1])
    one_thread.close()
    config.data.num_workers = -1
    with pytest.raises(ValueError, match="num_workers=-1 must be >= 0"):
        config_lib.validate(config, num_devices=1)


def _full_resize_then_crop(image, rng, size, resize_min, resize_max):
    """The textbook augmentation: resize the whole image, then crop (no flip)."""
    short = int(rng.integers(resize_min, resize_max + 1))
    h, w = image.shape[:2]
    new_w = max(short, round(w * short / min(h, w)))
    new_h = max(short, round(h * short / min(h, w)))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    top = int(rng.integers(0, new_h - size + 1))
    left = int(rng.integers(0, new_w - size + 1))
    return resized[top : top + size, left : left + size]


def test_augment_resamples_only_the_crop_yet_matches_resizing_the_whole_image():
    import skimage.data

    photo = skimage.data.astronaut()  # 512 x 512, textured
    tall = np.ascontiguousarray(photo[:, 100:420])  # 512 x 320, non-square
    for image, (rmin, rmax) in ((photo, (40, 90)), (tall, (48, 64)), (photo, (600, 700))):
        for seed in range(6):
            got = input_pipeline.augment(image, np.random.default_rng(seed), 32, rmin, rmax, False)
            want = _full_resize_then_crop(image, np.random.default_rng(seed), 32, rmin, rmax)
            assert got.shape == want.shape == (32, 32, 3) and got.dtype == np.uint8
            # Same crop of the same resampled image: only the 2-step reduction (reducing_gap)
            # differs, by rounding. A crop one pixel off differs by tens of grey levels.
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.mean() < 2.0 and np.percentile(diff, 95) <= 4, (seed, diff.mean())
    shifted = _full_resize_then_crop(photo, np.random.default_rng(0), 32, 40, 90)
    got = input_pipeline.augment(photo, np.random.default_rng(0), 32, 40, 90, False)
    assert np.abs(got[:, 1:].astype(int) - shifted[:, :-1].astype(int)).mean() > 4.0


def test_color_augment_permutes_and_scales_channels_and_leaves_the_rest_alone():
    import skimage.data

    from glcic_jax.data import images as data_images

    photo = skimage.data.astronaut()
    perms = set()
    for seed in range(12):
        plain = input_pipeline.augment(photo, np.random.default_rng(seed), 32, 40, 90, True)
        col = input_pipeline.augment(photo, np.random.default_rng(seed), 32, 40, 90, True, True)
        # Drawn after the resize, crop and flip: the same crop, recoloured.
        match = []
        for c in range(3):
            gains = [(col[..., c].astype(float).sum() / max(1.0, plain[..., k].sum()), k)
                     for k in range(3)]
            # Which source channel, scaled by which gain, gives output channel c (to rounding).
            err, k, g = min((np.abs(col[..., c] - np.rint(plain[..., k] * g)).max(), k, g)
                            for g, k in gains)
            assert err <= 1 and data_images.COLOR_GAIN_MIN - 0.01 <= g <= 1.0, (seed, c, err, g)
            match.append(k)
        assert sorted(match) == [0, 1, 2], match  # a permutation
        perms.add(tuple(match))
    assert len(perms) > 2  # the channel order does vary


def test_color_augment_without_permute_keeps_the_channel_order():
    """data.color_permute=False (the quickstart): per-channel gains only, same crop otherwise."""
    import skimage.data

    from glcic_jax.data import images as data_images

    photo = skimage.data.astronaut()
    gains = []
    for seed in range(6):
        plain = input_pipeline.augment(photo, np.random.default_rng(seed), 32, 40, 90, True)
        col = data_images.augment(photo, np.random.default_rng(seed), 32, 40, 90, True, True,
                                  permute=False)
        for c in range(3):
            g = col[..., c].astype(float).sum() / max(1.0, plain[..., c].sum())
            # channel c is channel c times a gain in [COLOR_GAIN_MIN, 1], to rounding
            assert np.abs(col[..., c] - np.rint(plain[..., c] * g)).max() <= 1, (seed, c, g)
            assert data_images.COLOR_GAIN_MIN - 0.01 <= g <= 1.0, (seed, c, g)
            gains.append(g)
    assert np.ptp(gains) > 0.2  # the gains do vary


def test_color_permute_reaches_the_training_stream():
    from glcic_jax import config_lib

    c = config_lib.shrink_to_tiny(config_lib.base_config())
    c.data.source = "skimage"
    c.data.color_augment = True
    shuffled = next(input_pipeline.train_iterator(c, 4, 0, 0, 1))
    c.data.color_permute = False
    kept = next(input_pipeline.train_iterator(c, 4, 0, 0, 1))
    assert shuffled.shape == kept.shape and not np.array_equal(shuffled, kept)


def test_color_augment_in_tf_data_is_the_same_recolouring():
    tf = pytest.importorskip("tensorflow")
    import skimage.data

    from glcic_jax.data import images as data_images

    photo = tf.constant(skimage.data.astronaut())
    seed = tf.constant([3, 5], tf.int64)
    plain = data_images.augment_tf(tf, photo, seed, 32, 40, 90, True).numpy().astype(float)
    col = data_images.augment_tf(tf, photo, seed, 32, 40, 90, True, True).numpy().astype(float)
    used = []
    for c in range(3):
        # Output channel c is one source channel times a gain in [COLOR_GAIN_MIN, 1] (+-1 rounding).
        fits = [(np.abs(col[..., c] - plain[..., k] * (col[..., c].sum() / plain[..., k].sum()))
                 .max(), k, col[..., c].sum() / plain[..., k].sum()) for k in range(3)]
        err, k, g = min(fits)
        assert err <= 1.5 and data_images.COLOR_GAIN_MIN - 0.01 <= g <= 1.0, (c, err, g)
        used.append(k)
    assert sorted(used) == [0, 1, 2]


def test_color_augment_in_tf_data_without_permute_keeps_the_channel_order():
    tf = pytest.importorskip("tensorflow")
    import skimage.data

    from glcic_jax.data import images as data_images

    photo = tf.constant(skimage.data.astronaut())
    seed = tf.constant([3, 5], tf.int64)
    plain = data_images.augment_tf(tf, photo, seed, 32, 40, 90, True).numpy().astype(float)
    col = data_images.augment_tf(tf, photo, seed, 32, 40, 90, True, True,
                                 permute=False).numpy().astype(float)
    for c in range(3):
        g = col[..., c].sum() / plain[..., c].sum()
        assert np.abs(col[..., c] - plain[..., c] * g).max() <= 1.5, (c, g)
        assert data_images.COLOR_GAIN_MIN - 0.01 <= g <= 1.0, (c, g)


def test_color_augment_is_in_the_training_stream_but_not_in_the_mean_pixel():
    from glcic_jax import config_lib

    c = config_lib.shrink_to_tiny(config_lib.base_config())
    c.data.source = "skimage"
    c.data.mean_pixel_images = 16
    base = next(input_pipeline.train_iterator(c, 4, 0, 0, 1))
    c.data.color_augment = True
    recoloured = next(input_pipeline.train_iterator(c, 4, 0, 0, 1))
    assert base.shape == recoloured.shape and not np.array_equal(base, recoloured)
    c2 = config_lib.shrink_to_tiny(config_lib.base_config())
    c2.data.source = "skimage"
    c2.data.mean_pixel_images = 16
    np.testing.assert_array_equal(input_pipeline.compute_mean_pixel(c),
                                  input_pipeline.compute_mean_pixel(c2))
    assert input_pipeline.mean_pixel_key(c) == input_pipeline.mean_pixel_key(c2)
    # The held-out images are the photos' own colours (scores comparable with any config).
    np.testing.assert_array_equal(input_pipeline.eval_images(c, 4),
                                  input_pipeline.eval_images(c2, 4))


def test_large_jpegs_decode_at_reduced_scale_but_never_below_the_needed_size(tmp_path):
    import skimage.data

    big = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1200, 900)))
    path = str(tmp_path / "big.jpg")
    Image.fromarray(big).save(path, quality=95)
    full = input_pipeline.load_image(path)
    assert full.shape == (900, 1200, 3)
    for need, want in ((96, (113, 150)), (200, (225, 300)), (256, (450, 600)), (600, (900, 1200))):
        img = input_pipeline.load_image(path, min_short=need)
        assert img.shape == (*want, 3), (need, img.shape)  # libjpeg scales by 1/8, 1/4, 1/2, 1
        assert min(img.shape[:2]) >= need
    # The reduced decode is the same picture: close to resizing the full decode.
    small = input_pipeline.load_image(path, min_short=200)
    ref = np.asarray(Image.fromarray(full).resize((300, 225), Image.BOX))
    assert np.abs(small.astype(int) - ref.astype(int)).mean() < 4.0
    png = str(tmp_path / "big.png")
    Image.fromarray(big).save(png)
    assert input_pipeline.load_image(png, min_short=96).shape == (900, 1200, 3)


@pytest.mark.slow
def test_resume_is_bit_identical_across_a_phase_boundary(tmp_path, monkeypatch):
    """6 steps in one go == 3 steps, stop, rerun to 6 (phase 2 starts at step 2, phase 3 at 4).

    The three runs share one setup, so they also share its jitted steps (train._SETUPS): the
    reused steps must compute what fresh ones do."""
    built = []
    make_steps = train.steps_lib.make_steps
    monkeypatch.setattr(train.steps_lib, "make_steps",
                        lambda *a, **k: built.append(1) or make_steps(*a, **k))
    config = load_config("quickstart")
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

    first = config.copy_and_resolve_references()
    first.num_train_steps = 3
    partial = train.train_and_evaluate(first, str(tmp_path / "resumed"))
    assert int(jax.device_get(partial.step)) == 3
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    # config.json is the config in force, and the resume's change is on record.
    with open(tmp_path / "resumed" / "config.json") as f:
        assert json.load(f)["num_train_steps"] == 6
    with open(tmp_path / "resumed" / "config_changes.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [(r["step"], r["changed"]) for r in records] == [(3, {"num_train_steps": [3, 6]})]
    events = glob.glob(str(tmp_path / "resumed" / "tensorboard" / "events.out.tfevents.*"))
    assert len(events) == 2 and all(b"config" in open(e, "rb").read() for e in events)

    a, b = jax.device_get(straight), jax.device_get(resumed)
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # And the run really did something in every phase.
    assert not np.array_equal(np.asarray(partial.d.params["head"]["kernel"]),
                              np.asarray(b.d.params["head"]["kernel"]))
    # Built once for the three runs (not at all if an earlier test in this process built them).
    assert len(built) <= 1, built


def test_runs_in_one_process_share_the_steps_of_an_identical_setup():
    """Tracing and lowering the steps again costs ~10 s per run on a CPU: an identical setup
    reuses them; anything the steps read (model, optimizer, step settings) gets its own."""
    mesh = train.distributed.make_mesh()
    config = load_config("quickstart")
    nets, steps = train._networks_and_steps(config, mesh)
    again = train._networks_and_steps(config.copy_and_resolve_references(), mesh)
    assert again[0] is nets and again[1] is steps
    longer = config.copy_and_resolve_references()
    longer.num_train_steps = 60  # not read by the steps
    assert train._networks_and_steps(longer, mesh)[1] is steps
    for key, value in (("optimizer.learning_rate", 0.5), ("model.width", 0.5),
                       ("loss.alpha", 0.1), ("mask.hole_max", 10), ("schedule.tc", 3)):
        other = config.copy_and_resolve_references()
        section, name = key.split(".")
        other[section][name] = value
        assert train._networks_and_steps(other, mesh)[1] is not steps, key


def run_main(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glcic_jax.main", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.slow
def test_mistyped_config_key_is_a_clear_error(tmp_path):
    proc = run_main("--config=configs/quickstart.py:tiny", f"--workdir={tmp_path}",
                    "--config.batch_sise=8")
    assert proc.returncode != 0
    assert "batch_sise" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_unknown_dataset_is_a_clear_error(tmp_path):
    proc = run_main("--config=configs/celeba.py:tiny", f"--workdir={tmp_path / 'run'}",
                    "--config.data.name=no_such_dataset_xyz",
                    f"--config.data.data_dir={tmp_path / 'data'}")
    assert proc.returncode == 1
    assert "no_such_dataset_xyz" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_data_source_has_one_reader_and_its_errors_are_user_errors():
    # One table maps data.source to its reader, with the names the config validation accepts;
    # a data problem is a user error (one line, exit 1), still caught as the old RuntimeError.
    assert tuple(input_pipeline.SOURCES) == config_lib.DATA_SOURCES
    for reader in input_pipeline.SOURCES.values():
        assert all(callable(getattr(reader, m)) for m in ("train_batches", "eval_images",
                                                          "describe"))
    assert input_pipeline.DataError is errors.DataError
    assert issubclass(input_pipeline.DataError, (errors.UserError, RuntimeError))
    config = load_config("quickstart")
    with config.unlocked():
        config.data.source = "webdataset"
    with pytest.raises(errors.ConfigError, match="data.source='webdataset' must be"):
        input_pipeline.train_iterator(config, 2)


def test_missing_dataset_that_cannot_be_fetched_says_how_to_place_it(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    config = load_config("celeba")
    config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(input_pipeline.DataError) as err:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    message = str(err.value)
    assert "celeb_a" in message and "tfds build" in message and "data_dir" in message


def test_preparing_a_tfds_dataset_shows_progress(tmp_path, monkeypatch, caplog):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    seen = {}

    def slow_prepare(self, *args, **kwargs):
        seen["progress_bars"] = tqdm_utils._active
        time.sleep(0.5)
        raise ConnectionError("no route to host")

    tfds.disable_progress_bar()
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", slow_prepare)
    monkeypatch.setattr(tf_datasets, "PROGRESS_EVERY_S", 0.1)
    config = load_config("celeba")
    config.data.data_dir = str(tmp_path / "tfds")
    caplog.set_level(logging.INFO)
    with pytest.raises(input_pipeline.DataError):
        input_pipeline.train_iterator(config, 4)
    assert seen["progress_bars"]  # tfds' own progress bars are on while it works
    assert "Downloading and preparing the tfds dataset celeb_a" in caplog.text
    assert "Still downloading and preparing the tfds dataset celeb_a" in caplog.text
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "0")


# ----------------------------------------------------------------------------------------------
# Small folders: nothing held out below MIN_IMAGES_TO_HOLD_OUT, and then the
# training images are evaluated, with a warning


@pytest.mark.parametrize("names", [["img87.png"], ["photo.png"], ["img87.png", "photo.png"]],
                         ids=["one-name-hashed-to-test", "one-name-hashed-to-train", "two"])
def test_a_folder_too_small_to_hold_out_trains_and_evaluates_on_all_its_images(
        tmp_path, caplog, names):
    # img87.png hashes below 0.05 (the default eval_fraction), photo.png above it: the split
    # used to depend on that (an empty training set, or an empty held-out set).
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(tmp_path / name)
    assert input_pipeline.split_files(names, 0.05) == (sorted(names), [])
    config = load_config("quickstart")
    config.data.source, config.data.path = "folder", str(tmp_path)
    with caplog.at_level("WARNING"):
        images = input_pipeline.eval_images(config, 3)
    assert images.shape == (3, 32, 32, 3)
    assert "too few to hold any out" in caplog.text and "not held-out scores" in caplog.text
    first = next(input_pipeline.train_iterator(config, 2))
    assert first.shape == (2, 32, 32, 3)


def test_from_three_images_one_is_held_out_whatever_the_order():
    files = ["a.png", "b.png", "c.png"]
    train_a, test_a = input_pipeline.split_files(files, 0.05)
    train_b, test_b = input_pipeline.split_files(list(reversed(files)), 0.05)
    assert (train_a, test_a) == (train_b, test_b)
    assert len(test_a) == 1 and len(train_a) == 2
    train, test = input_pipeline.split_files(files, 0.99)  # never everything held out
    assert len(train) == 1 and len(test) == 2


# ----------------------------------------------------------------------------------------------
# Faults in-process: a damaged newest checkpoint, a save that fails in
# the background, a second Ctrl-C whose KeyboardInterrupt is swallowed. Each trains the tiny
# config through train_and_evaluate (10-60 CPU s each), so they are end-to-end runs: marked slow,
# like the other kill/resume tests (CI runs them; `-m "not slow"` skips them).


def _tiny_run_config(steps: int = 6):
    config = load_config("quickstart")
    config.num_train_steps = steps
    config.sample_every = 1000
    return config


@pytest.mark.slow
def test_training_resumes_from_the_newest_intact_checkpoint_and_moves_the_damaged_one_aside(
        tmp_path, caplog):
    import shutil

    # Checkpoints at steps 2 and 4; the resumed run redoes steps 3-4 (phase 2, so D's state
    # moves in them). Phases 1-2 only: no joint step to trace and run in the fast tier; resume
    # across phases 2-3 is test_resume_is_bit_identical_across_a_phase_boundary (slow).
    config = _tiny_run_config(steps=4)
    config.checkpoint_every = 2
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    workdir = tmp_path / "damaged"
    shutil.copytree(tmp_path / "straight", workdir)
    os.remove(workdir / "checkpoints" / "4" / "state" / "_METADATA")
    damaged_files = sorted(os.listdir(workdir / "checkpoints" / "4"))
    with caplog.at_level("INFO"):
        resumed = train.train_and_evaluate(config, str(workdir))
    skipped = [r for r in caplog.records if "damaged checkpoint" in r.getMessage()]
    assert len(skipped) == 1 and "/4 (" in skipped[0].getMessage()
    assert "moved to" in skipped[0].getMessage() and "not deleted" in skipped[0].getMessage()
    # Never deleted: moved aside, so that step 4 could be saved again.
    assert sorted(os.listdir(workdir / "damaged_checkpoints" / "4")) == damaged_files
    assert checkpointing.finished_steps(str(workdir)) == [2, 4]
    assert any("Resuming from" in r.getMessage() and "checkpoints/2." in r.getMessage()
               for r in caplog.records)  # from the newest intact one
    for x, y in zip(jax.tree_util.tree_leaves(jax.device_get(straight)),
                    jax.tree_util.tree_leaves(jax.device_get(resumed))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # resume is exact


@pytest.mark.slow
def test_a_save_that_fails_in_the_background_stops_training_at_the_next_step(tmp_path,
                                                                            monkeypatch):
    config = _tiny_run_config()
    config.checkpoint_every = 2
    real_save = checkpointing.Checkpointer.save
    steps_run = []

    def save(self, step, state, cfg, force=True):
        if step == 4:  # the background write "fails": no checkpoint appears, no error raised
            self.wait()  # as a real save first waits for the one before
            self._in_flight = step
            return True
        return real_save(self, step, state, cfg, force)

    real_step_fn_for = train.steps_lib.step_fn_for

    def counting_step_fn_for(step, cfg, steps):
        steps_run.append(step)
        return real_step_fn_for(step, cfg, steps)

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save)
    monkeypatch.setattr(train.steps_lib, "step_fn_for", counting_step_fn_for)
    with pytest.raises(checkpointing.CheckpointWriteError) as info:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert "the checkpoint of step 4" in str(info.value)
    assert "last complete checkpoint (step 2), which is intact" in str(info.value)
    assert steps_run == [0, 1, 2, 3, 4]  # stopped after the next step, not at step 6's save
    assert checkpointing.finished_steps(str(tmp_path / "run")) == [2]


@pytest.mark.slow
def test_a_swallowed_second_ctrl_c_still_stops_without_saving(tmp_path, monkeypatch):
    import signal

    config = _tiny_run_config()
    real_step_fn_for = train.steps_lib.step_fn_for

    def ctrl_c_twice_in_a_callback_that_swallows(step, cfg, steps):
        name, fn = real_step_fn_for(step, cfg, steps)
        if step == 1:
            def fn_with_interrupts(state, images, fn=fn):
                os.kill(os.getpid(), signal.SIGINT)  # first: finish the step, save, exit
                try:  # second, raised inside e.g. JAX's GC callback, which ignores exceptions
                    os.kill(os.getpid(), signal.SIGINT)
                except KeyboardInterrupt:
                    pass
                return fn(state, images)
            return name, fn_with_interrupts
        return name, fn

    monkeypatch.setattr(train.steps_lib, "step_fn_for", ctrl_c_twice_in_a_callback_that_swallows)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert checkpointing.finished_steps(str(tmp_path / "run")) == []  # stopped without saving


def test_logged_metrics_are_means_over_the_steps_that_produced_them():
    # A log window spanning phases 1 -> 2 -> 3: each metric is averaged over its own steps only.
    f32 = np.float32
    pending = [
        (0, "completion", {"mse": f32(0.01), "g_loss": f32(0.01), "nonfinite": f32(0.0)}),
        (1, "completion", {"mse": f32(0.02), "g_loss": f32(0.02), "nonfinite": f32(0.0)}),
        (2, "discriminator", {"d_loss": f32(1.2), "d_real": f32(0.6), "nonfinite": f32(0.0)}),
        (3, "joint", {"mse": f32(0.03), "d_loss": f32(1.0), "d_real": f32(0.4),
                      "g_adv": f32(0.7), "nonfinite": f32(0.0)}),
    ]
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    values = train._check_finite(pending, config)
    np.testing.assert_allclose(values["mse"], 0.02, rtol=1e-6)  # (0.01 + 0.02 + 0.03) / 3
    np.testing.assert_allclose(values["g_loss"], 0.015, rtol=1e-6)
    np.testing.assert_allclose(values["d_loss"], 1.1, rtol=1e-6)  # (1.2 + 1.0) / 2
    np.testing.assert_allclose(values["d_real"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(values["g_adv"], 0.7, rtol=1e-6)
    assert values["nonfinite"] == 0.0 and values["skipped_updates"] == 0.0

    # nan_policy=skip: a skipped step's non-finite metric is left out of that metric's mean.
    config.nan_policy = "skip"
    pending = [
        (0, "generator", {"mse": f32(0.01), "g_adv": f32(np.nan), "nonfinite": f32(1.0)}),
        (1, "generator", {"mse": f32(0.03), "g_adv": f32(0.5), "nonfinite": f32(0.0)}),
    ]
    values = train._check_finite(pending, config)
    np.testing.assert_allclose(values["mse"], 0.02, rtol=1e-6)
    np.testing.assert_allclose(values["g_adv"], 0.5, rtol=1e-6)
    assert values["skipped_updates"] == 1.0


def test_a_non_finite_stop_says_truthfully_which_checkpoint_is_kept(tmp_path, tiny_state):
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    pending = [(1, "completion", {"mse": np.float32(np.nan), "nonfinite": np.float32(1.0)})]
    ckpt = checkpointing.Checkpointer(str(tmp_path / "run"), config)
    try:
        for stop in (lambda: train._check_finite(pending, config, ckpt),
                     lambda: train._check_state_finite(
                         jax.tree_util.tree_map(lambda x: x * np.nan, tiny_state), 2, ckpt)):
            with pytest.raises(train.NonFiniteError) as info:  # before the first checkpoint
                stop()
            assert "no checkpoint had been written yet (a rerun starts afresh)" in str(info.value)
            assert "is kept" not in str(info.value)
        ckpt.save(1, tiny_state, config)  # still being written when the run stops: it counts
        with pytest.raises(train.NonFiniteError, match=r"the last good checkpoint \(step 1\) "
                                                        r"is kept\."):
            train._check_finite(pending, config, ckpt)
    finally:
        ckpt.close()


@pytest.mark.parametrize("name", ["celeba", "places2"])
def test_tfds_prepare_runs_offline_up_to_the_first_download(name, tmp_path, monkeypatch):
    # The headline configs prepare their dataset on first use: builder, checksums, download
    # manager, all offline, up to the first network access (here refused), so a package missing
    # from requirements.txt (importlib_resources, for etils.epath) shows up in CI, not on a GPU.
    from tensorflow_datasets.core.download import downloader

    urls = []

    def no_network(self, url, *args, **kwargs):
        urls.append(url)
        raise ConnectionError(f"offline test: no network for {url}")

    monkeypatch.setattr(downloader._Downloader, "_sync_download", no_network)
    config = load_config(name)
    config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(input_pipeline.DataError) as err:
        tf_datasets.prepare_builder(config)
    assert urls and all(u.startswith("http") for u in urls)  # got as far as a real download
    message = str(err.value)
    assert "ConnectionError: offline test: no network" in message, message
    assert "module" not in message.lower(), message


def test_missing_module_while_preparing_is_named_as_a_missing_module(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def missing(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'",
                                  name="importlib_resources")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", missing)
    config = load_config("celeba")
    config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(input_pipeline.DataError) as err:
        tf_datasets.prepare_builder(config)
    message = str(err.value)
    assert "needs the Python module 'importlib_resources', which is not installed" in message
    assert "pip install -r requirements.txt" in message
    assert "downloaded" not in message and "access to the dataset's download site" not in message


def test_mean_pixel_cache_is_keyed_on_what_it_was_computed_from(tmp_path, monkeypatch):
    calls = []

    def fake_compute(config):
        calls.append(config.data.to_dict())
        return np.full(3, 0.1 * len(calls), np.float32)

    monkeypatch.setattr(input_pipeline, "compute_mean_pixel", fake_compute)
    config = load_config("places2")
    workdir = str(tmp_path / "run")

    def mean():
        return float(input_pipeline.mean_pixel(config, workdir)[0])

    assert mean() == pytest.approx(0.1) and len(calls) == 1
    assert mean() == pytest.approx(0.1) and len(calls) == 1  # cached
    config.data.num_workers = 3  # how the images are decoded: the cache still holds
    config.data.flip = False  # a flip moves pixels within a crop, not their mean
    assert mean() == pytest.approx(0.1) and len(calls) == 1
    # Each of these changes the images the mean is taken over: recomputed, then cached again.
    changes = [("data_dir", str(tmp_path / "other_tfds")), ("train_split", "train[:10%]"),
               ("resize_min", 40), ("resize_max", 48), ("name", "celeb_a"),
               ("source", "folder"), ("path", str(tmp_path)), ("eval_fraction", 0.2)]
    for i, (field, value) in enumerate(changes, start=2):
        config.data[field] = value
        assert mean() == pytest.approx(0.1 * i), field
        assert mean() == pytest.approx(0.1 * i) and len(calls) == i, field
    config.seed = 1  # another seed draws other images and crops
    assert mean() == pytest.approx(0.1 * (len(changes) + 2))


def test_sample_grid_enlarges_small_images_by_an_integer_nearest_neighbour_factor():
    from glcic_jax import summary

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    grid = summary.make_grid(*imgs, pad=2)
    assert grid.shape == (2 * (128 + 2) + 2, 3 * (128 + 2) + 2, 3)  # ceil(128 / 32) = 4x
    cell = grid[2 + 130 : 2 + 130 + 128, 2 + 2 * 130 : 2 + 2 * 130 + 128]  # row 1, completed
    np.testing.assert_array_equal(cell, np.repeat(np.repeat(imgs[2][1], 4, 0), 4, 1))
    big = rng.integers(0, 256, (1, 160, 160, 3), dtype=np.uint8)
    assert summary.make_grid(big, big, big, pad=2).shape == (164, 3 * 162 + 2, 3)  # unchanged
