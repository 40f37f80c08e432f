"""Hole sampling invariants, mask rendering, crops, determinism and hole filling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glcic_jax import masks

# A non-square image, several holes per window, and a hole range that is not a power of two.
BATCH, HEIGHT, WIDTH = 16, 64, 48
SPEC = masks.MaskSpec(local_size=32, hole_min=8, hole_max=20, max_holes=3)
NUM_KEYS = 50


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def sample(key, batch, height, width, spec):
    return masks.sample_masks(key, batch, height, width, spec)


def numpy_render(boxes, active, height, width):
    """Reference rasterisation: the union of the active (top, left, h, w) boxes."""
    out = np.zeros((boxes.shape[0], height, width, 1), np.float32)
    for b in range(boxes.shape[0]):
        for (top, left, h, w), on in zip(boxes[b], active[b]):
            if on:
                out[b, top:top + h, left:left + w, 0] = 1.0
    return out


@pytest.fixture(scope="module")
def drawn():
    """Masks for NUM_KEYS keys, as numpy arrays stacked on a leading key axis."""
    keys = jax.random.split(jax.random.PRNGKey(42), NUM_KEYS)
    draws = [jax.device_get(sample(k, BATCH, HEIGHT, WIDTH, SPEC)) for k in keys]
    return masks.Masks(*(np.stack(parts) for parts in zip(*draws)))


def test_shapes_and_dtypes(drawn):
    assert drawn.mask.shape == (NUM_KEYS, BATCH, HEIGHT, WIDTH, 1)
    assert drawn.mask.dtype == np.float32
    assert drawn.corners.shape == (NUM_KEYS, BATCH, 2) and drawn.corners.dtype == np.int32
    assert drawn.boxes.shape == (NUM_KEYS, BATCH, SPEC.max_holes, 4)
    assert drawn.boxes.dtype == np.int32
    assert drawn.active.shape == (NUM_KEYS, BATCH, SPEC.max_holes)
    assert drawn.active.dtype == np.bool_


def test_windows_inside_image(drawn):
    top, left = drawn.corners[..., 0], drawn.corners[..., 1]
    assert top.min() >= 0 and left.min() >= 0
    assert (top + SPEC.local_size).max() <= HEIGHT
    assert (left + SPEC.local_size).max() <= WIDTH
    # Over 800 windows every extreme position occurs: windows are uniform over the whole image.
    assert top.min() == 0 and top.max() == HEIGHT - SPEC.local_size
    assert left.min() == 0 and left.max() == WIDTH - SPEC.local_size


def test_holes_inside_their_window_and_sized(drawn):
    top, left, h, w = np.moveaxis(drawn.boxes, -1, 0)  # each [K, B, N]
    wtop = drawn.corners[..., 0][..., None]
    wleft = drawn.corners[..., 1][..., None]
    # Every box (active or not) lies in its sample's local window.
    assert np.all(top >= wtop) and np.all(left >= wleft)
    assert np.all(top + h <= wtop + SPEC.local_size)
    assert np.all(left + w <= wleft + SPEC.local_size)
    for side in (h, w):
        assert side.min() >= SPEC.hole_min and side.max() <= SPEC.hole_max
        # Over 2,400 draws both ends of the inclusive range occur (no off-by-one in the sampling).
        assert side.min() == SPEC.hole_min and side.max() == SPEC.hole_max


def test_number_of_active_holes(drawn):
    count = drawn.active.sum(axis=-1)
    assert count.min() >= 1 and count.max() <= SPEC.max_holes
    assert set(np.unique(count)) == set(range(1, SPEC.max_holes + 1))
    # Active boxes come first: the box slots are filled in order.
    assert np.all(drawn.active[..., 0])
    assert np.all(np.diff(drawn.active.astype(np.int8), axis=-1) <= 0)


def test_mask_is_union_of_active_boxes(drawn):
    for k in range(NUM_KEYS):
        expected = numpy_render(drawn.boxes[k], drawn.active[k], HEIGHT, WIDTH)
        np.testing.assert_array_equal(drawn.mask[k], expected)
    assert set(np.unique(drawn.mask)) == {0.0, 1.0}


def test_mask_lies_inside_local_window(drawn):
    """The local discriminator's crop contains the whole hole (GLCIC 4)."""
    for k in range(3):
        for b in range(BATCH):
            t, l = drawn.corners[k, b]
            inside = drawn.mask[k, b, t:t + SPEC.local_size, l:l + SPEC.local_size].sum()
            assert inside == drawn.mask[k, b].sum() > 0


def test_render_boxes_matches_numpy_on_overlaps():
    boxes = jnp.array([[[0, 0, 3, 4], [2, 2, 3, 3], [5, 1, 2, 2]]], jnp.int32)
    active = jnp.array([[True, True, False]])
    got = np.asarray(masks.render_boxes(boxes, active, 8, 6))
    np.testing.assert_array_equal(got, numpy_render(np.asarray(boxes), np.asarray(active), 8, 6))
    assert got.sum() == 12 + 9 - 2  # the two overlapping pixels count once


def test_crop_equals_numpy_slices(drawn):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (BATCH, HEIGHT, WIDTH, 3)).astype(np.float32)
    size = SPEC.local_size
    crop = jax.jit(masks.crop, static_argnums=2)
    for k in range(5):
        corners = drawn.corners[k]
        got = np.asarray(crop(jnp.asarray(images), jnp.asarray(corners), size))
        assert got.shape == (BATCH, size, size, 3)
        for b, (t, l) in enumerate(corners):
            np.testing.assert_array_equal(got[b], images[b, t:t + size, l:l + size])


def test_random_corners_range():
    corners = np.asarray(masks.random_corners(jax.random.PRNGKey(3), 2000, 40, 20, 16))
    assert corners[:, 0].min() == 0 and corners[:, 0].max() == 40 - 16
    assert corners[:, 1].min() == 0 and corners[:, 1].max() == 20 - 16


def test_same_key_same_masks():
    key = jax.random.PRNGKey(7)
    a = jax.device_get(sample(key, BATCH, HEIGHT, WIDTH, SPEC))
    b = jax.device_get(sample(key, BATCH, HEIGHT, WIDTH, SPEC))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_fold_in_step_changes_masks():
    """Per-step keys are fold_in(rng, step): different steps draw different masks."""
    base = jax.random.PRNGKey(7)
    draws = [jax.device_get(sample(jax.random.fold_in(base, s), BATCH, HEIGHT, WIDTH, SPEC))
             for s in range(4)]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not np.array_equal(draws[i].mask, draws[j].mask)
            assert not np.array_equal(draws[i].corners, draws[j].corners)
    # ... and the same step again gives the same masks (a resumed run draws what it would have).
    again = jax.device_get(sample(jax.random.fold_in(base, 2), BATCH, HEIGHT, WIDTH, SPEC))
    np.testing.assert_array_equal(again.mask, draws[2].mask)


def test_center_position_single_centred_hole():
    spec = SPEC._replace(position="center")
    for seed in range(5):
        m = jax.device_get(sample(jax.random.PRNGKey(seed), BATCH, HEIGHT, WIDTH, spec))
        assert np.all(m.active.sum(axis=-1) == 1)
        # The window is centred in the image.
        np.testing.assert_array_equal(
            m.corners, np.broadcast_to([(HEIGHT - 32) // 2, (WIDTH - 32) // 2], (BATCH, 2)))
        top, left, h, w = np.moveaxis(m.boxes[:, 0], -1, 0)
        assert h.min() >= spec.hole_min and h.max() <= spec.hole_max
        # Centred to the half pixel: |(2 * top + h) - H| <= 1 (integer boxes cannot do better).
        assert np.all(np.abs(2 * top + h - HEIGHT) <= 1)
        assert np.all(np.abs(2 * left + w - WIDTH) <= 1)
        expected = numpy_render(m.boxes, m.active, HEIGHT, WIDTH)
        np.testing.assert_array_equal(m.mask, expected)
        # The mask is exactly one h x w rectangle.
        np.testing.assert_array_equal(m.mask.sum(axis=(1, 2, 3)), h * w)


def test_spec_from_config(tiny_config):
    spec = masks.MaskSpec.from_config(tiny_config.mask)
    assert spec == masks.MaskSpec(local_size=16, hole_min=6, hole_max=12, max_holes=1,
                                  position="random", shape="box", stroke_width_min=2.0,
                                  stroke_width_max=5.0)
    spec.validate(32, 32)  # the tiny config is drawable
    hash(spec)  # a jit static argument


def test_validate_accepts_valid_specs():
    SPEC.validate(HEIGHT, WIDTH)
    masks.MaskSpec(32, 32, 32).validate(32, 32)  # holes as large as the window
    masks.MaskSpec(128, 96, 128).validate(256, 256)  # the paper's settings


@pytest.mark.parametrize(
    "spec,hw,match",
    [
        (masks.MaskSpec(16, 8, 20), (64, 64), r"hole_max \(20\) is larger than the local crop"),
        (masks.MaskSpec(64, 8, 20), (64, 48), r"local_size \(64\) is larger than the image"),
        (masks.MaskSpec(32, 20, 8), (64, 64), r"hole_min \(20\) <= mask.hole_max \(8\)"),
        (masks.MaskSpec(32, 0, 8), (64, 64), r"1 <= mask.hole_min \(0\)"),
        (masks.MaskSpec(32, 8, 20, max_holes=0), (64, 64), r"max_holes \(0\) must be at least 1"),
        (masks.MaskSpec(32, 8, 20, position="corner"), (64, 64), r"mask.position='corner'"),
    ],
)
def test_validate_rejects_impossible_specs(spec, hw, match):
    with pytest.raises(ValueError, match=match):
        spec.validate(*hw)


def test_fill_holes():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (BATCH, HEIGHT, WIDTH, 3)).astype(np.float32)
    m = jax.device_get(sample(jax.random.PRNGKey(5), BATCH, HEIGHT, WIDTH, SPEC)).mask
    mean_pixel = np.array([0.25, 0.5, 0.75], np.float32)
    x = np.asarray(masks.fill_holes(jnp.asarray(images), jnp.asarray(m), jnp.asarray(mean_pixel)))
    assert x.shape == (BATCH, HEIGHT, WIDTH, 4) and x.dtype == np.float32
    hole = m[..., 0] == 1.0
    assert hole.any() and (~hole).any()
    np.testing.assert_array_equal(x[..., 3], m[..., 0])  # the mask channel
    np.testing.assert_array_equal(x[..., :3][~hole], images[~hole])  # originals outside
    np.testing.assert_allclose(x[..., :3][hole], np.broadcast_to(mean_pixel, (hole.sum(), 3)),
                               rtol=0, atol=1e-7)  # the mean pixel inside


def test_square_holes():
    spec = SPEC._replace(square=True)
    m = jax.device_get(sample(jax.random.PRNGKey(9), BATCH, HEIGHT, WIDTH, spec))
    h, w = m.boxes[..., 2], m.boxes[..., 3]
    np.testing.assert_array_equal(h, w)
    assert h.min() >= spec.hole_min and h.max() <= spec.hole_max and len(np.unique(h)) > 3
    np.testing.assert_array_equal(m.mask, numpy_render(m.boxes, m.active, HEIGHT, WIDTH))
    # Without the option, heights and widths are drawn independently.
    assert not np.array_equal(*np.moveaxis(
        jax.device_get(sample(jax.random.PRNGKey(9), BATCH, HEIGHT, WIDTH, SPEC)).boxes[..., 2:],
        -1, 0))


@pytest.mark.parametrize("overrides", [
    dict(shape="box"),
    dict(shape="box", max_holes=3, square=True),
    dict(shape="strokes", area_min=0.1, area_max=0.2, stroke_width_min=2.0,
         stroke_width_max=5.0),
    dict(shape="mixed", area_min=0.3, area_max=0.4),
])
def test_fixed_eval_masks_are_those_drawn_op_by_op(tiny_config, overrides):
    """`fixed_eval_masks` compiles its sampler (the strokes' area range traced, LLVM's -O1 on
    the CPU): it must draw the holes, windows and boxes the plain `sample_masks` draws from the
    same key, pixel for pixel, as every run and checkpoint is scored on them."""
    spec = masks.MaskSpec.from_config(tiny_config.mask)._replace(**overrides)
    key = jax.random.fold_in(jax.random.PRNGKey(masks.EVAL_MASK_SEED), 3)
    ours = masks.fixed_eval_masks(tiny_config, 5, 32, 32, seed_offset=3, **overrides)
    with jax.disable_jit():
        ref = masks.sample_masks(key, 5, 32, 32, spec)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert 0.0 < float(jnp.mean(ours.mask)) < 1.0


def test_fixed_eval_masks_compile_once_for_every_area_range(tiny_config):
    """--mode=eval draws five stroke sets that differ only in their area range and key: one
    compilation serves them all (each had compiled its own)."""
    sampler = masks._eval_sampler()
    strokes = dict(shape="strokes", stroke_width_min=2.0, stroke_width_max=5.0)
    masks.fixed_eval_masks(tiny_config, 3, 32, 32, seed_offset=1, area_min=0.0, area_max=0.1,
                           **strokes)
    before = sampler._cache_size()
    holes = [masks.fixed_eval_masks(tiny_config, 3, 32, 32, seed_offset=i + 2, area_min=lo,
                                    area_max=lo + 0.1, **strokes).mask
             for i, lo in enumerate((0.1, 0.2, 0.3))]
    assert sampler._cache_size() == before
    areas = [float(jnp.mean(m)) for m in holes]
    assert areas == sorted(areas) and areas[0] < 0.25 < areas[-1]  # each its own range
