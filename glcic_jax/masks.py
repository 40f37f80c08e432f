"""On-device hole sampling, mask rendering, mean-pixel fill and local crops (pure jnp, jittable).

GLCIC 4 (training): each training image gets a local window of `local_size` x `local_size`, and
holes are rectangles inside that window, so that the local discriminator's crop contains the
whole hole. Real images are cropped by the training steps at the same window by default, or at
`random_corners` with `mask.real_crop='random'` (see steps.py).

Everything here has static shapes and runs inside the jitted training steps: the host pipeline only
decodes and crops images. Keys come from `jax.random.fold_in(key, step)` so a resumed run draws the
same masks as an uninterrupted one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from glcic_jax import config_lib

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

    @classmethod
    def from_config(cls, mask_cfg) -> "MaskSpec":
        return cls(
            local_size=int(mask_cfg.local_size),
            hole_min=int(mask_cfg.hole_min),
            hole_max=int(mask_cfg.hole_max),
            max_holes=int(mask_cfg.max_holes),
            position=str(mask_cfg.position),
            square=bool(mask_cfg.square),
        )

    def validate(self, height: int, width: int) -> None:
        """Raise a clear ValueError when these holes cannot be drawn in an H x W image (the
        checks live in config_lib, which validates configs without importing JAX)."""
        config_lib.check_mask(self, height, width)


class Masks(NamedTuple):
    mask: jax.Array  # [B, H, W, 1] float32, 1 = hole
    corners: jax.Array  # [B, 2] int32, (top, left) of each local window
    boxes: jax.Array  # [B, max_holes, 4] int32 (top, left, height, width)
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
    """Draw per-sample local windows and 1..max_holes holes inside each window."""
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


def fixed_eval_masks(config, num: int, height: int, width: int) -> Masks:
    """The fixed evaluation holes of a config: `num` samples from EVAL_MASK_SEED, the same in
    every run and checkpoint (the one place that builds evaluation masks from a config)."""
    spec = MaskSpec.from_config(config.mask)
    spec.validate(height, width)
    return sample_masks(jax.random.PRNGKey(EVAL_MASK_SEED), num, height, width, spec)


def random_hole(config, size: tuple[int, int], key: jax.Array):
    """Random holes for an (H, W) photo, drawn as the checkpoint's training holes were: numpy
    bool [H, W] on the host (`complete` without --mask).

    The config's hole and window sizes are scaled by min(H, W) / image_size; its `mask.square`
    and `mask.position` (e.g. the landscape config's square centred hole) and `mask.max_holes`
    are kept.
    """
    h, w = size
    scale = min(h, w) / float(config.data.image_size)
    local = max(1, min(h, w, round(int(config.mask.local_size) * scale)))
    hole_max = max(1, min(local, round(int(config.mask.hole_max) * scale)))
    hole_min = max(1, min(hole_max, round(int(config.mask.hole_min) * scale)))
    # The checkpoint's own hole shape and placement (mask.square, mask.position), scaled.
    spec = MaskSpec.from_config(config.mask)._replace(
        local_size=local, hole_min=hole_min, hole_max=hole_max)
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
