"""On-device hole sampling, mask rendering, mean-pixel fill and local crops (pure jnp, jittable).

GLCIC 4 (training): each training image gets a local window of `local_size` x `local_size`, and
holes are rectangles inside that window, so that the local discriminator's crop contains the
whole hole. Real images are cropped by the training steps at the same window by default, or at
`random_corners` with `mask.real_crop='random'` (see steps.py).

`mask.shape` picks the hole shape: 'box' (the rectangles above), 'strokes' (free-form brush
strokes, `sample_strokes`), 'mixed' (per sample, a box with probability `box_prob`, else
strokes) or 'files' (the user's mask images, which come with the batch from the input pipeline:
`masks_from_holes`). A free-form hole need not fit in the local window: its window is centred on
the hole's bounding box (`hole_corners`).

Everything here has static shapes and runs inside the jitted training steps: the host pipeline only
decodes and crops images. Keys come from `jax.random.fold_in(key, step)` so a resumed run draws the
same masks as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from glcic_jax import config_lib, conv_forms

# The holes of every fixed evaluation set (training's sample grids, periodic and --mode=eval
# metrics): one seed, so every run, config and checkpoint is scored on the same holes.
EVAL_MASK_SEED = 20170720


class MaskSpec(NamedTuple):
    """Static description of the holes to draw (hashable: it is a jit static argument)."""

    local_size: int
    hole_min: int
    hole_max: int
    max_holes: int = 1
    position: str = "random"  # 'random' window, or 'center' (the landscape report's fixed hole)
    square: bool = False  # square holes (one side drawn for both; the landscape report)
    shape: str = "box"  # config_lib.CHOICES['mask.shape']
    max_strokes: int = 8  # strokes: at most this many per hole
    stroke_width_min: float = 12.0  # strokes: nominal brush widths in pixels
    stroke_width_max: float = 40.0
    area_min: float = 0.05  # strokes: hole area, a fraction of the image, uniform in this range
    area_max: float = 0.5
    box_prob: float = 0.5  # mixed: probability of a box

    @classmethod
    def from_config(cls, mask_cfg) -> "MaskSpec":
        return cls(
            local_size=int(mask_cfg.local_size),
            hole_min=int(mask_cfg.hole_min),
            hole_max=int(mask_cfg.hole_max),
            max_holes=int(mask_cfg.max_holes),
            position=str(mask_cfg.position),
            square=bool(mask_cfg.square),
            shape=str(mask_cfg.shape),
            max_strokes=int(mask_cfg.max_strokes),
            stroke_width_min=float(mask_cfg.stroke_width_min),
            stroke_width_max=float(mask_cfg.stroke_width_max),
            area_min=float(mask_cfg.area_min),
            area_max=float(mask_cfg.area_max),
            box_prob=float(mask_cfg.box_prob),
        )

    def validate(self, height: int, width: int) -> None:
        """Raise a clear ValueError when these holes cannot be drawn in an H x W image (the
        checks live in config_lib, which validates configs without importing JAX)."""
        config_lib.check_mask(self, height, width)


class Masks(NamedTuple):
    mask: jax.Array  # [B, H, W, 1] float32, 1 = hole
    corners: jax.Array  # [B, 2] int32, (top, left) of each local window
    # [B, max_holes, 4] int32 (top, left, height, width): the rectangles; for a free-form hole,
    # its bounding box in row 0 (the only active row).
    boxes: jax.Array
    active: jax.Array  # [B, max_holes] bool: which boxes are holes


def random_corners(key: jax.Array, batch: int, height: int, width: int, size: int) -> jax.Array:
    """Uniform top-left corners of `size` x `size` windows inside an H x W image: [B, 2] int32."""
    ky, kx = jax.random.split(key)
    top = jax.random.randint(ky, (batch,), 0, height - size + 1)
    left = jax.random.randint(kx, (batch,), 0, width - size + 1)
    return jnp.stack([top, left], axis=-1).astype(jnp.int32)


def center_corners(batch: int, height: int, width: int, size: int) -> jax.Array:
    """Corners of a window centred in the image, for every sample: [B, 2] int32."""
    corner = jnp.array([(height - size) // 2, (width - size) // 2], jnp.int32)
    return jnp.broadcast_to(corner, (batch, 2))


def render_boxes(boxes: jax.Array, active: jax.Array, height: int, width: int) -> jax.Array:
    """Rasterise rectangles to a mask.

    boxes [B, N, 4] (top, left, h, w), active [B, N] -> [B, H, W, 1].
    """
    ys = jnp.arange(height)[None, None, :, None]  # [1, 1, H, 1]
    xs = jnp.arange(width)[None, None, None, :]  # [1, 1, 1, W]
    top, left, h, w = (boxes[..., i][..., None, None] for i in range(4))  # each [B, N, 1, 1]
    inside = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)  # [B, N, H, W]
    inside = inside & active[..., None, None]
    return jnp.any(inside, axis=1)[..., None].astype(jnp.float32)


def sample_masks(key: jax.Array, batch: int, height: int, width: int, spec: MaskSpec) -> Masks:
    """Draw per-sample holes of `spec.shape` ('box', 'strokes' or 'mixed') and their local
    windows. 'files' masks come from the input pipeline (`masks_from_holes`)."""
    if spec.shape == "strokes":
        return masks_from_holes(sample_strokes(key, batch, height, width, spec), spec)
    if spec.shape == "mixed":
        k_box, k_strokes, k_pick = jax.random.split(key, 3)
        boxes = sample_boxes(k_box, batch, height, width, spec)
        strokes = masks_from_holes(sample_strokes(k_strokes, batch, height, width, spec), spec)
        is_box = jax.random.uniform(k_pick, (batch,)) < spec.box_prob
        return Masks(*(jnp.where(is_box.reshape((batch,) + (1,) * (a.ndim - 1)), a, b)
                       for a, b in zip(boxes, strokes)))
    config_lib.check_choice("mask.shape", spec.shape)
    if spec.shape == "files":
        raise ValueError("mask.shape='files' holes come with the batch (masks_from_holes).")
    return sample_boxes(key, batch, height, width, spec)


def sample_boxes(key: jax.Array, batch: int, height: int, width: int, spec: MaskSpec) -> Masks:
    """Draw per-sample local windows and 1..max_holes rectangular holes inside each window."""
    k_win, k_n, k_size, k_pos = jax.random.split(key, 4)
    n = spec.max_holes
    if spec.position == "center":
        corners = center_corners(batch, height, width, spec.local_size)
    else:
        corners = random_corners(k_win, batch, height, width, spec.local_size)
    sizes = jax.random.randint(k_size, (batch, n, 2), spec.hole_min, spec.hole_max + 1)
    if spec.square:
        sizes = jnp.repeat(sizes[..., :1], 2, axis=-1)  # height = width
    # Hole offsets inside the window, uniform over the positions where the hole fits.
    room = spec.local_size - sizes + 1  # [B, N, 2], >= 1
    if spec.position == "center":
        offsets = (spec.local_size - sizes) // 2  # one centred hole per sample
    else:
        offsets = jnp.floor(jax.random.uniform(k_pos, (batch, n, 2)) * room).astype(jnp.int32)
        offsets = jnp.minimum(offsets, room - 1)
    origin = corners[:, None, :] + offsets  # [B, N, 2]
    boxes = jnp.concatenate([origin, sizes], axis=-1).astype(jnp.int32)
    if spec.position == "center":
        num_holes = jnp.ones((batch,), jnp.int32)
    else:
        num_holes = jax.random.randint(k_n, (batch,), 1, n + 1)
    active = jnp.arange(n)[None, :] < num_holes[:, None]  # [B, N]
    mask = render_boxes(boxes, active, height, width)
    return Masks(mask=mask, corners=corners, boxes=boxes, active=active)


# ----------------------------------------------------------------------------------------------
# Free-form holes

# From DeepFill v2's free-form mask algorithm (Yu et al. 2019, its `brush_stroke_mask`): each
# stroke starts at a uniform pixel and has 4-11 segments; segment directions alternate between
# an angle u and 2*pi - u with u uniform in [mean - a, mean + b], a, b uniform in [0, 2*pi/15],
# mean 2*pi/5 (a zigzag); lengths N(r, r/2) clipped to [0, 2r], r = diagonal / 8; each vertex
# clipped into the image; one brush width per stroke, round at the vertices. Our choices: every
# stroke is also flipped left-right and up-down with probability 1/2 (DeepFill v2's code meant
# to flip the whole mask but discards the flipped image); strokes are rasterised as the pixels
# within half the width of the polyline (distance to each segment, on the pixel grid); and the
# hole's area is controlled, which DeepFill v2 does not do: a target area is drawn uniformly
# from [area_min, area_max], strokes (up to max_strokes) are added until the nominal-width hole
# reaches it, and then every stroke's width is scaled by one factor per sample (a bisection on
# the distance field) so that the area lands on the target.
STROKE_SEGMENTS = (4, 11)  # DeepFill v2: randint(4, 12) vertices after the start
STROKE_MEAN_ANGLE = 2.0 * math.pi / 5.0
STROKE_ANGLE_RANGE = 2.0 * math.pi / 15.0
_BISECTION_STEPS = 24  # width factor to 2^-24 of its range: far below one pixel's distance


def _stroke_vertices(key: jax.Array, shape: tuple[int, ...], height: int,
                     width: int) -> jax.Array:
    """Polyline vertices of DeepFill v2-style strokes: [*shape, S + 1, 2] (y, x) float32, with
    segments past each stroke's drawn count collapsed onto its last vertex."""
    n_seg = STROKE_SEGMENTS[1]
    # One draw of uniforms, sliced; normals by Box-Muller (jax.random.normal's inverse error
    # function took XLA ~10 s to compile on a CPU, in every step that draws strokes).
    u = jax.random.uniform(key, shape + (4 * n_seg + 7,))
    normal = jnp.sqrt(-2.0 * jnp.log1p(-u[..., 7 + n_seg : 7 + 2 * n_seg])) * jnp.cos(
        2.0 * math.pi * u[..., 7 + 2 * n_seg : 7 + 3 * n_seg])
    count = STROKE_SEGMENTS[0] + jnp.floor(
        u[..., 0] * (n_seg - STROKE_SEGMENTS[0] + 1)).astype(jnp.int32)
    lo = STROKE_MEAN_ANGLE - u[..., 1] * STROKE_ANGLE_RANGE
    hi = STROKE_MEAN_ANGLE + u[..., 2] * STROKE_ANGLE_RANGE
    turn = lo[..., None] + u[..., 7 : 7 + n_seg] * (hi - lo)[..., None]
    angle = jnp.where(jnp.arange(n_seg) % 2 == 0, 2.0 * math.pi - turn, turn)
    radius = math.sqrt(height * height + width * width) / 8.0
    length = jnp.clip(radius + 0.5 * radius * normal, 0.0,
                      2.0 * radius)
    length = length * (jnp.arange(n_seg) < count[..., None])
    flip = jnp.where(u[..., 3:5] < 0.5, -1.0, 1.0)
    dy = length * jnp.sin(angle) * flip[..., :1]
    dx = length * jnp.cos(angle) * flip[..., 1:]
    y = u[..., 5] * (height - 1)
    x = u[..., 6] * (width - 1)

    def walk(point, delta):  # clipped at every vertex, as DeepFill v2: a sequential walk
        nxt = jnp.stack([jnp.clip(point[..., 0] + delta[..., 0], 0.0, height - 1.0),
                         jnp.clip(point[..., 1] + delta[..., 1], 0.0, width - 1.0)], -1)
        return nxt, nxt

    start = jnp.stack([y, x], -1)
    deltas = jnp.moveaxis(jnp.stack([dy, dx], -1), -2, 0)  # [S, *shape, 2]
    _, rest = jax.lax.scan(walk, start, deltas)
    return jnp.concatenate([start[..., None, :], jnp.moveaxis(rest, 0, -2)], axis=-2)


def _polyline_distance(vertices: jax.Array, height: int, width: int) -> jax.Array:
    """Distance of every pixel centre to each polyline: vertices [..., S + 1, 2] -> [..., H, W]
    (a loop over the segments keeping the running minimum: one [..., H, W] pass each)."""
    ys = jnp.arange(height, dtype=jnp.float32)[:, None]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :]
    starts, deltas = vertices[..., :-1, :], jnp.diff(vertices, axis=-2)

    def segment(i, best):
        a, d = starts[..., i, :], deltas[..., i, :]
        ay, ax = a[..., 0, None, None], a[..., 1, None, None]
        dy, dx = d[..., 0, None, None], d[..., 1, None, None]
        t = ((ys - ay) * dy + (xs - ax) * dx) / jnp.maximum(dy * dy + dx * dx, 1e-12)
        t = jnp.clip(t, 0.0, 1.0)
        return jnp.minimum(best, jnp.square(ys - ay - t * dy) + jnp.square(xs - ax - t * dx))

    init = jnp.full(vertices.shape[:-2] + (height, width), jnp.inf, jnp.float32)
    return jnp.sqrt(jax.lax.fori_loop(0, starts.shape[-2], segment, init))


def sample_strokes(key: jax.Array, batch: int, height: int, width: int,
                   spec: MaskSpec) -> jax.Array:
    """Free-form brush-stroke holes (see the comment above): [B, H, W, 1] float32, 1 = hole,
    each covering a fraction of the image drawn from [spec.area_min, spec.area_max]."""
    k_vert, k_width, k_area = jax.random.split(key, 3)
    n = spec.max_strokes
    vertices = _stroke_vertices(k_vert, (batch, n), height, width)
    half = 0.5 * jax.random.uniform(k_width, (batch, n), minval=spec.stroke_width_min,
                                    maxval=spec.stroke_width_max)
    target = jax.random.uniform(k_area, (batch,), minval=spec.area_min, maxval=spec.area_max)

    # Add strokes while the nominal-width hole is smaller than its target area. `field` is the
    # distance to the nearest added stroke in half-widths: a pixel is in the hole at width
    # factor f when it is <= f. One stroke at a time keeps the memory at one [B, H, W] field.
    def add(k, field):
        scaled = _polyline_distance(vertices[:, k], height, width) / half[:, k, None, None]
        grow = (jnp.mean(field <= 1.0, axis=(1, 2)) < target) | (k == 0)
        return jnp.where(grow[:, None, None], jnp.minimum(field, scaled), field)

    field = jax.lax.fori_loop(0, n, add, jnp.full((batch, height, width), jnp.inf, jnp.float32))

    def area(f):
        return jnp.mean(field <= f[:, None, None], axis=(1, 2))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        big = area(mid) >= target
        return jnp.where(big, lo, mid), jnp.where(big, mid, hi)

    top = jnp.max(field, axis=(1, 2))  # area(top) = 1 >= target
    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, (jnp.zeros_like(top), top))
    # hi: the smallest factor found with area >= target; lo (just below the target) only if
    # pixels at equal distance would carry hi's hole past area_max.
    factor = jnp.where(area(hi) <= spec.area_max, hi, lo)
    return (field <= factor[:, None, None])[..., None].astype(jnp.float32)


def hole_boxes(mask: jax.Array) -> jax.Array:
    """Bounding boxes (top, left, height, width) of [B, H, W, 1] holes: [B, 4] int32 (an empty
    mask gives a 0 x 0 box at the image centre)."""
    b, h, w = mask.shape[:3]
    hole = mask[..., 0] > 0.5
    rows, cols = jnp.any(hole, axis=2), jnp.any(hole, axis=1)  # [B, H], [B, W]

    def extent(any_, size):
        idx = jnp.arange(size)
        first = jnp.min(jnp.where(any_, idx, size), axis=1)
        last = jnp.max(jnp.where(any_, idx, -1), axis=1)
        empty = last < 0
        return jnp.where(empty, size // 2, first), jnp.where(empty, 0, last - first + 1)

    top, hh = extent(rows, h)
    left, ww = extent(cols, w)
    return jnp.stack([top, left, hh, ww], axis=-1).astype(jnp.int32)


def hole_corners(boxes: jax.Array, height: int, width: int, size: int) -> jax.Array:
    """Local windows (`size` x `size`) centred on each hole's bounding box, clipped into the
    image: [B, 4] boxes -> [B, 2] int32 corners. The box's centre, not the hole's centroid: a
    hole whose box fits in the window then lies wholly inside it (a centroid pulled to one side
    by a thick stroke would cut off the thin end of another)."""
    top = (2 * boxes[:, 0] + boxes[:, 2] - size) // 2
    left = (2 * boxes[:, 1] + boxes[:, 3] - size) // 2
    top = jnp.clip(top, 0, height - size)
    left = jnp.clip(left, 0, width - size)
    return jnp.stack([top, left], axis=-1).astype(jnp.int32)


def masks_from_holes(mask: jax.Array, spec: MaskSpec) -> Masks:
    """`Masks` for given free-form holes [B, H, W, 1]: windows centred on the holes' bounding
    boxes (`hole_corners`), each box in row 0 of `boxes`."""
    b, h, w = mask.shape[:3]
    box = hole_boxes(mask)
    corners = hole_corners(box, h, w, spec.local_size)
    boxes = jnp.zeros((b, spec.max_holes, 4), jnp.int32).at[:, 0].set(box)
    active = jnp.zeros((b, spec.max_holes), bool).at[:, 0].set(True)
    return Masks(mask=mask.astype(jnp.float32), corners=corners, boxes=boxes, active=active)


def fixed_eval_masks(config, num: int, height: int, width: int, seed_offset: int = 0,
                     **overrides) -> Masks:
    """The fixed evaluation holes of a config: `num` samples from EVAL_MASK_SEED, the same in
    every run and checkpoint (the one place that builds evaluation masks from a config).

    `overrides` replace MaskSpec fields (the evaluation's mask sets: shape, area range, brush
    widths); `seed_offset` gives each set its own key. 'files' holes are not drawn here
    (input_pipeline.fixed_file_masks).
    """
    spec = MaskSpec.from_config(config.mask)
    spec.validate(height, width)
    spec = spec._replace(**overrides)
    key = jax.random.PRNGKey(EVAL_MASK_SEED)
    if seed_offset:
        key = jax.random.fold_in(key, seed_offset)
    areas = jnp.asarray([spec.area_min, spec.area_max], jnp.float32)
    return _eval_sampler()(key, num, height, width, spec._replace(area_min=0.0, area_max=0.0),
                           areas)


@functools.lru_cache(maxsize=None)
def _eval_sampler():
    """`sample_masks` compiled for `fixed_eval_masks`, with the strokes' area range traced
    (`areas`, [min, max]) rather than static: one compilation serves every stroke set of
    --mode=eval. Called op by op instead, it compiled each of its few dozen operations for each
    set's shapes (about 10 s for --mode=eval's six sets of the quickstart's, 2 s for a set of
    boxes); compiled once per spec with `conv_forms.run_once_compiler_options`, 2.0 s and 0.8 s,
    the same holes (tests/test_masks.py compares the two)."""
    def sample(key, num, height, width, spec, areas):
        return sample_masks(key, num, height, width,
                            spec._replace(area_min=areas[0], area_max=areas[1]))

    return jax.jit(sample, static_argnums=(1, 2, 3, 4),
                   compiler_options=conv_forms.run_once_compiler_options())


def random_hole(config, size: tuple[int, int], key: jax.Array):
    """Random holes for an (H, W) photo, drawn as the checkpoint's training holes were: numpy
    bool [H, W] on the host (`complete` without --mask).

    The config's hole, window and brush sizes are scaled by min(H, W) / image_size; its
    `mask.shape`, `mask.square`, `mask.position`, `mask.max_holes` and the strokes' area range
    are kept. A checkpoint trained on mask files ('files') gets strokes: the files are not part
    of the checkpoint.
    """
    h, w = size
    scale = min(h, w) / float(config.data.image_size)
    local = max(1, min(h, w, round(int(config.mask.local_size) * scale)))
    hole_max = max(1, min(local, round(int(config.mask.hole_max) * scale)))
    hole_min = max(1, min(hole_max, round(int(config.mask.hole_min) * scale)))
    # The checkpoint's own hole shape and placement (mask.square, mask.position), scaled.
    spec = MaskSpec.from_config(config.mask)
    spec = spec._replace(
        local_size=local, hole_min=hole_min, hole_max=hole_max,
        stroke_width_min=max(1.0, spec.stroke_width_min * scale),
        stroke_width_max=max(1.0, spec.stroke_width_max * scale),
        shape="strokes" if spec.shape == "files" else spec.shape)
    m = jax.jit(sample_masks, static_argnums=(1, 2, 3, 4))(key, 1, h, w, spec).mask
    return jax.device_get(m)[0, ..., 0] > 0.5


def crop(images: jax.Array, corners: jax.Array, size: int) -> jax.Array:
    """Crop `size` x `size` windows at per-sample corners: [B, H, W, C] -> [B, size, size, C]."""

    def one(image, corner):
        return jax.lax.dynamic_slice(
            image, (corner[0], corner[1], 0), (size, size, image.shape[-1])
        )

    return jax.vmap(one)(images, corners)


# How the completion network's input is built (config `model.input_norm`):
#   'mean_fill'      the hole holds the dataset's mean pixel, the rest the image in [0, 1] (ours;
#                    GLCIC 3.1 "filled with a constant color that is the mean pixel value")
#   'mean_subtract'  the mean pixel is subtracted from the image and the hole set to 0, as the
#                    authors' released `inpaint.lua` feeds their trained network
# Both append the mask channel; outside the borders the convolutions see zeros, which is why the
# two are not one model with a shifted first bias.


def fill_holes(images: jax.Array, mask: jax.Array, mean_pixel: jax.Array,
               norm: str = "mean_fill") -> jax.Array:
    """Completion-network input: the image with its holes hidden, plus the mask channel.

    images [B, H, W, 3] in [0, 1]; mask [B, H, W, 1]; mean_pixel [3] in [0, 1] -> [B, H, W, 4].
    `norm` is one of config_lib.INPUT_NORMS (see above); either way the hole's pixels are not used.
    """
    mean = jnp.asarray(mean_pixel, images.dtype).reshape((1, 1, 1, 3))
    if norm == "mean_fill":
        filled = images * (1.0 - mask) + mean * mask
    elif norm == "mean_subtract":
        filled = (images - mean) * (1.0 - mask)
    else:
        config_lib.check_choice("model.input_norm", norm)
    return jnp.concatenate([filled, mask.astype(images.dtype)], axis=-1)
