"""Free-form holes: brush strokes drawn in the steps, 'mixed', the user's mask files, the local
crop of a free-form hole, hole outlines in sample grids, and random holes for `complete`."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_config, smooth_images
from glcic_jax import config_lib, input_pipeline, masks, state, steps, summary
from glcic_jax.data import mask_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STROKES = masks.MaskSpec(local_size=32, hole_min=8, hole_max=20, shape="strokes",
                         stroke_width_min=3.0, stroke_width_max=10.0, area_min=0.1, area_max=0.3)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def sample(key, batch, height, width, spec):
    return masks.sample_masks(key, batch, height, width, spec)


def _reference_boxes(key, batch, height, width, spec):
    """The rectangle sampler as it was before free-form holes (kept verbatim): mask.shape='box'
    must draw exactly these masks, so box runs stay bit-identical."""
    k_win, k_n, k_size, k_pos = jax.random.split(key, 4)
    n = spec.max_holes
    corners = masks.random_corners(k_win, batch, height, width, spec.local_size)
    sizes = jax.random.randint(k_size, (batch, n, 2), spec.hole_min, spec.hole_max + 1)
    room = spec.local_size - sizes + 1
    offsets = jnp.floor(jax.random.uniform(k_pos, (batch, n, 2)) * room).astype(jnp.int32)
    offsets = jnp.minimum(offsets, room - 1)
    boxes = jnp.concatenate([corners[:, None, :] + offsets, sizes], axis=-1).astype(jnp.int32)
    num_holes = jax.random.randint(k_n, (batch,), 1, n + 1)
    active = jnp.arange(n)[None, :] < num_holes[:, None]
    return masks.render_boxes(boxes, active, height, width), corners


def test_box_shape_draws_the_masks_it_drew_before_free_form_holes():
    cfg = make_tiny_config()
    assert cfg.mask.shape == "box"
    spec = masks.MaskSpec.from_config(cfg.mask)._replace(max_holes=3)
    for seed in range(4):
        key = jax.random.PRNGKey(seed)
        m = sample(key, 8, 32, 40, spec)
        ref_mask, ref_corners = _reference_boxes(key, 8, 32, 40, spec)
        np.testing.assert_array_equal(np.asarray(m.mask), np.asarray(ref_mask))
        np.testing.assert_array_equal(np.asarray(m.corners), np.asarray(ref_corners))


def test_stroke_hole_areas_stay_in_the_configured_range_and_spread_over_it():
    areas = np.concatenate([
        np.asarray(sample(jax.random.PRNGKey(k), 64, 64, 48, STROKES).mask).mean(axis=(1, 2, 3))
        for k in range(4)])
    # The area lands on a target drawn uniformly from [area_min, area_max]: every hole is in the
    # range, and 256 draws cover it (mean within 4 standard errors of the uniform's centre).
    assert areas.min() >= STROKES.area_min and areas.max() <= STROKES.area_max
    width = STROKES.area_max - STROKES.area_min
    assert abs(areas.mean() - (STROKES.area_min + STROKES.area_max) / 2) < 4 * width / np.sqrt(
        12 * len(areas))
    assert areas.min() < STROKES.area_min + 0.1 * width
    assert areas.max() > STROKES.area_max - 0.1 * width


def _fill_bounding_boxes(mask):
    out = np.zeros_like(mask)
    for i, m in enumerate(mask):
        ys, xs = np.nonzero(m)
        out[i, ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = True
    return out


def test_strokes_are_not_rectangles_and_differ_per_sample_and_per_key():
    a = np.asarray(sample(jax.random.PRNGKey(0), 16, 64, 64, STROKES).mask[..., 0]) > 0.5
    b = np.asarray(sample(jax.random.PRNGKey(1), 16, 64, 64, STROKES).mask[..., 0]) > 0.5
    # A rectangle fills its bounding box; a stroke leaves most of it known.
    fill = a.sum(axis=(1, 2)) / _fill_bounding_boxes(a).sum(axis=(1, 2))
    assert np.all(fill < 0.9), fill
    assert len({m.tobytes() for m in a}) == len(a)
    assert not np.any(np.all(a == b, axis=(1, 2)))


def test_same_key_same_masks():
    for shape in ("strokes", "mixed"):
        spec = STROKES._replace(shape=shape)
        a = jax.device_get(sample(jax.random.PRNGKey(5), 8, 48, 64, spec))
        b = jax.device_get(masks.sample_masks(jax.random.PRNGKey(5), 8, 48, 64, spec))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_mixed_draws_boxes_and_strokes_per_sample():
    spec = STROKES._replace(shape="mixed", box_prob=0.5)
    m = sample(jax.random.PRNGKey(3), 64, 64, 64, spec).mask[..., 0]
    hole = np.asarray(m) > 0.5
    is_box = np.all(hole == _fill_bounding_boxes(hole), axis=(1, 2))
    assert 10 < is_box.sum() < 54  # Binomial(64, 1/2): both kinds, far from all of one


def _strokes_config(shape="strokes"):
    cfg = make_tiny_config()
    cfg.mask.shape = shape
    cfg.mask.area_min, cfg.mask.area_max = 0.1, 0.3
    return cfg


def _step_setup(cfg):
    nets = state.create_networks(cfg)
    images = jnp.asarray(smooth_images(cfg.batch_size, 32, 32))
    st = state.create_state(cfg, nets, jax.random.PRNGKey(0), jnp.mean(images, axis=(0, 1, 2)))
    return nets, st, images


def _primitives(jaxpr) -> set[str]:
    """Names of every primitive in a jaxpr, nested ones (loops, conditionals, pjit) included."""
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out |= _primitives(inner)
    return out


def test_masks_are_drawn_inside_the_jitted_step_from_its_key():
    cfg = _strokes_config()
    nets, st, images = _step_setup(cfg)
    settings = steps.StepSettings.from_config(cfg)
    fn = functools.partial(steps._completion_step, nets, settings, None)
    prims = _primitives(jax.make_jaxpr(fn)(st, images).jaxpr)
    box_settings = settings._replace(mask=settings.mask._replace(shape="box"))
    box_prims = _primitives(jax.make_jaxpr(functools.partial(
        steps._completion_step, nets, box_settings, None))(st, images).jaxpr)
    # The strokes' loops (segments, strokes, the area bisection) are in the step's program, which
    # takes only (state, images); nothing calls back to the host.
    assert {"scan", "while"} & prims and not {"scan", "while"} & box_prims
    assert not any("callback" in p for p in prims)
    # The step's batch holds the strokes of fold_in(rng, step), different at every step.
    prepare = jax.jit(functools.partial(steps._prepare, settings))
    first = np.asarray(prepare(st, images).masks.mask)
    k_mask = jax.random.split(jax.random.fold_in(st.rng, st.step), 3)[0]
    expected = masks.sample_masks(k_mask, cfg.batch_size, 32, 32, settings.mask).mask
    np.testing.assert_array_equal(first, np.asarray(expected))
    second = np.asarray(prepare(st.replace(step=st.step + 1), images).masks.mask)
    assert not np.any(np.all(first == second, axis=(1, 2, 3)))


def test_local_crop_is_centred_on_the_hole_and_holds_it_when_it_fits():
    spec = STROKES._replace(area_min=0.02, area_max=0.06, local_size=40)
    m = jax.device_get(sample(jax.random.PRNGKey(7), 64, 64, 64, spec))
    hole = m.mask[..., 0] > 0.5
    fits = 0
    for i in range(len(hole)):
        ys, xs = np.nonzero(hole[i])
        top, left = m.corners[i]
        assert 0 <= top <= 64 - 40 and 0 <= left <= 64 - 40  # clipped into the image
        if np.ptp(ys) < 40 and np.ptp(xs) < 40:
            fits += 1
            window = hole[i, top: top + 40, left: left + 40]
            assert window.sum() == hole[i].sum()  # the whole hole is in the crop
        # Centred on the bounding box unless clipping at the border moved it.
        cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        expect_top = min(max(int((2 * ys.min() + np.ptp(ys) + 1 - 40) // 2), 0), 24)
        expect_left = min(max(int((2 * xs.min() + np.ptp(xs) + 1 - 40) // 2), 0), 24)
        assert (top, left) == (expect_top, expect_left), (cy, cx)
    assert fits >= 16


def _write_masks(folder, sizes=((20, 24), (50, 70), (33, 33))):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        m = np.zeros((h, w), np.uint8)
        m[h // 4: h // 2, w // 5: w // 2 + 3] = 255
        m[rng.integers(0, h, 10), rng.integers(0, w, 10)] = 255
        Image.fromarray(m).save(os.path.join(folder, f"mask_{i}.png"))
    return str(folder)


def test_mask_files_stream_crops_flips_rotates_to_the_training_size(tmp_path):
    holes = mask_files.load_masks(_write_masks(tmp_path / "masks"))
    assert len(holes) == 3
    stream = mask_files.MaskStream(holes, 32, seed=0)
    batch = stream.batch(0, 24)
    assert batch.shape == (24, 32, 32, 1) and batch.dtype == np.uint8
    assert set(np.unique(batch)) <= {0, 255}
    np.testing.assert_array_equal(batch, stream.batch(0, 24))  # element k from (seed, host, k)
    np.testing.assert_array_equal(batch[5:9], stream.batch(5, 4))
    assert len({b.tobytes() for b in batch}) > 12  # crops, flips and rotations vary
    assert all(b.any() and not b.all() for b in batch)


def test_files_masks_ride_in_the_batch_and_the_step_uses_them(tmp_path):
    cfg = make_tiny_config()
    cfg.data.source = "skimage"
    cfg.mask.shape = "files"
    cfg.mask.files = _write_masks(tmp_path / "masks")
    it = input_pipeline.train_iterator(cfg, 4)
    batch = next(it)
    it.close()
    assert batch.shape == (4, 32, 32, 4)
    nets, st, _ = _step_setup(cfg)
    prepared = steps._prepare(steps.StepSettings.from_config(cfg), st, jnp.asarray(batch))
    np.testing.assert_array_equal(np.asarray(prepared.masks.mask[..., 0]), batch[..., 3] > 127)
    np.testing.assert_allclose(np.asarray(prepared.images), batch[..., :3] / 255.0, atol=1e-6)


def _run_main(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "glcic_jax.main", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_a_mask_folder_with_a_non_image_file_is_one_line_and_writes_nothing(tmp_path):
    folder = tmp_path / "masks"
    _write_masks(folder)
    (folder / "notes.png").write_text("not an image")
    workdir = tmp_path / "run"
    proc = _run_main("--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
                     "--config.mask.shape=files", f"--config.mask.files={folder}")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors_ = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors_) == 1 and "notes.png" in errors_[0] and "mask.files" in errors_[0]
    assert not workdir.exists()


@pytest.mark.parametrize("content", ["black", "nothing"])
def test_a_mask_folder_without_a_usable_mask_stops_training_before_any_write(tmp_path, content):
    from glcic_jax import errors, train

    folder = tmp_path / "masks"
    folder.mkdir()
    if content == "black":
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "black.png")
    cfg = make_tiny_config()
    cfg.data.source = "skimage"
    cfg.mask.shape = "files"
    cfg.mask.files = str(folder)
    workdir = tmp_path / "run"
    with pytest.raises(errors.DataError, match="no usable mask") as e:
        train.train_and_evaluate(cfg, str(workdir))
    assert "\n" not in str(e.value)
    assert not workdir.exists()


def test_sample_grid_draws_the_hole_outline():
    images = np.full((2, 32, 32, 3), 100, np.uint8)
    hole = np.asarray(sample(jax.random.PRNGKey(0), 2, 32, 32, STROKES).mask)
    grid = summary.make_grid(images, images, images, holes=hole, min_cell=32, pad=2)
    red = np.all(grid == summary.OUTLINE_COLOUR, axis=-1)
    outline = summary.hole_outline(hole[..., 0] > 0.5)
    # Row 0: the input column (x from 36) and the completed column (x from 70) show the outline.
    np.testing.assert_array_equal(red[2:34, 36:68], outline[0])
    np.testing.assert_array_equal(red[2:34, 70:102], outline[0])
    assert not red[2:34, 2:34].any()  # the original is left as it is


def test_random_holes_for_complete_follow_the_checkpoint_shape():
    cfg = _strokes_config()
    holes = [masks.random_hole(cfg, (96, 80), jax.random.PRNGKey(s)) for s in range(4)]
    for h in holes:
        assert cfg.mask.area_min <= h.mean() <= cfg.mask.area_max
        assert h.sum() < 0.9 * _fill_bounding_boxes(h[None])[0].sum()  # not a rectangle
    cfg.mask.shape = "files"  # the files are not in a checkpoint: strokes instead
    assert masks.random_hole(cfg, (96, 80), jax.random.PRNGKey(0)).any()


def _load_config(name, arg):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs",
                                                                              f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_free_form_config_variants_validate():
    places = _load_config("places2", "freeform")
    quick = _load_config("quickstart", "strokes")
    for cfg in (places, quick):
        assert cfg.mask.shape == "strokes"
        config_lib.validate(cfg)
    assert _load_config("places2", None).mask.shape == "box"
    bad = make_tiny_config()
    bad.mask.shape = "stars"
    bad.mask.area_max = 1.5
    with pytest.raises(config_lib.errors.ConfigError, match="mask.shape.*mask.area_max|mask.shape"):
        config_lib.validate(bad)


# End to end: each run compiles the three training steps with its own mask code (a minute or
# more of CPU each), so these are marked slow. 'mixed' draws both a box and strokes for every
# sample and picks one (`masks.sample_masks`), so its run compiles and trains through the
# strokes' code as well; a separate 'strokes' run would add a minute of CPU and no code path.
@pytest.mark.slow
@pytest.mark.parametrize("shape", ["mixed", "files"])
def test_a_tiny_run_completes_all_three_phases(tmp_path, shape, caplog):
    import glob
    import logging

    from glcic_jax import train

    cfg = make_tiny_config()
    cfg.data.source = "skimage"
    cfg.mask.shape = shape
    if shape == "files":
        cfg.mask.files = _write_masks(tmp_path / "masks")
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO):
        final = train.train_and_evaluate(cfg, workdir)
    assert int(jax.device_get(final.step)) == cfg.num_train_steps
    for kind in ("phase-1 completion step", "phase-2 discriminator step", "phase-3 joint step"):
        assert f"Compiling the {kind}" in caplog.text
    for leaf in jax.tree_util.tree_leaves(jax.device_get((final.g.params, final.d.params))):
        assert np.all(np.isfinite(leaf))
    assert glob.glob(os.path.join(workdir, "samples", "step_*.png"))


def test_complete_random_holes_follow_a_strokes_checkpoint(tmp_path, capsys):
    from glcic_jax import complete
    from test_complete import make_workdir

    workdir = make_workdir(str(tmp_path / "run"), shape="strokes", area_min=0.1, area_max=0.3)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((72, 64, 3), 120, np.uint8)).save(photo)
    out = tmp_path / "out.png"
    args = ["complete", f"--workdir={workdir}", f"--image={photo}", f"--output={out}",
            "--random_holes"]
    assert complete.run([*args, "--seed=3"]) == 0
    hole = np.asarray(Image.open(tmp_path / "out_mask.png")) > 127
    assert 0.1 <= hole.mean() <= 0.3
    assert hole.sum() < 0.9 * _fill_bounding_boxes(hole[None])[0].sum()  # strokes, not a box
    assert complete.run([*args, f"--mask={tmp_path / 'out_mask.png'}"]) == 1
    assert "not both" in capsys.readouterr().err
