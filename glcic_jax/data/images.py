"""Decoding image files to RGB uint8, and the GLCIC 4 augmentation.

`augment` is the one augmentation of the folder and scikit-image readers (numpy / PIL);
`augment_tf` is its tf.data twin for the tfds reader (same recipe, TensorFlow's resampling), and
`center_crop_tf` that reader's fixed evaluation crop. The tf functions take the `tensorflow`
module as an argument so that this module never imports TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL image (grayscale, RGBA, CMYK, palette, 16-bit, float) -> [H, W, 3] uint8 RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.nan_to_num(np.asarray(img).astype(np.float64))
        if img.mode.startswith("I;16"):
            top = 65535.0  # 16-bit data, even when a dark image never exceeds 255
        elif img.mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0  # float images in [0, 1] (or 0..255)
        else:  # 32-bit integers: 16-bit PNGs in older Pillow, sometimes 8-bit values
            top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels over white, as photo viewers show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    arr = np.asarray(img.convert("RGB"))
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def load_image(path: str, min_short: int | None = None) -> np.ndarray:
    """Decode an image file to [H, W, 3] uint8; raises on corrupt or truncated files.

    With `min_short`, a JPEG is decoded directly at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling)
    when its shortest side stays >= min_short: a 12-megapixel photo that training shrinks to 256
    px anyway decodes many times faster. Other formats decode at full size.
    """
    with Image.open(path) as img:
        if min_short and img.format == "JPEG":
            w, h = img.size
            factor = min_short / max(1, min(w, h))
            if factor < 0.5:
                img.draft(None, (math.ceil(w * factor), math.ceil(h * factor)))
        img.load()
        return to_rgb_uint8(img)


# ----------------------------------------------------------------------------------------------
# Augmentation (GLCIC 4): random shortest-side resize in [resize_min, resize_max], random crop;
# a random horizontal flip with data.flip (our addition: the paper mentions no flips).


# Colour augmentation (data.color_augment): each crop's channels scaled by random gains in
# [COLOR_GAIN_MIN, 1], and, with data.color_permute, first put in a random order. Our choice for
# the quickstart (neither report nor the paper uses it): trained on a handful of photos, the
# network otherwise learns their palette instead of continuing the colours around a hole, and
# fills held-out photos with the wrong ones. Gains from 0.25 rather than 0.6 tint the quickstart's
# six grey photos strongly enough to be colour examples too (measurements: docs/history.md and
# docs/quickstart_ablations.md).
COLOR_GAIN_MIN = 0.25


def augment(image: np.ndarray, rng: np.random.Generator, size: int, resize_min: int,
            resize_max: int, flip: bool, color: bool = False, permute: bool = True) -> np.ndarray:
    """GLCIC 4: random shortest-side resize in [resize_min, resize_max], random crop; flip if asked;
    `color`: the colour augmentation above (drawn after the rest, so it leaves those unchanged),
    with the channels in a random order if `permute`.

    Only the crop is resampled: PIL resizes the source box that maps onto it (with the filter's
    support reaching past the box edges), which equals cropping the fully resized image up to
    rounding, at a fraction of the cost for large photos.
    """
    short = int(rng.integers(resize_min, resize_max + 1))
    h, w = image.shape[:2]
    scale = short / min(h, w)
    new_w, new_h = max(short, round(w * scale)), max(short, round(h * scale))
    top = int(rng.integers(0, new_h - size + 1))
    left = int(rng.integers(0, new_w - size + 1))
    if (new_w, new_h) == (w, h):
        out = image[top : top + size, left : left + size]
    else:
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        out = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box,
                                                       reducing_gap=3.0))
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    if color:
        gain = rng.uniform(COLOR_GAIN_MIN, 1.0, 3).astype(np.float32)
        if permute:
            out = out[..., rng.permutation(3)]
        out = np.rint(out * gain).astype(np.uint8)
    return np.ascontiguousarray(out)


def augment_tf(tf, image, seed, size: int, resize_min: int, resize_max: int, flip: bool,
               color: bool = False, permute: bool = True):
    """`augment` in tf.data: a decoded uint8 image [H, W, 3] -> uint8 [size, size, 3].

    `seed` is a stateless-RNG seed (int64 [2]); the resize, the crop, the flip and the colour
    augmentation use seed, seed + 1, seed + 2 and seed + 3. The whole image is resized (bicubic,
    antialiased), then cropped.
    """
    short = tf.random.stateless_uniform([], seed, resize_min, resize_max + 1, dtype=tf.int32)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.cast(short, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(tf.cast([h, w], tf.float32) * scale), tf.int32), short)
    image = tf.image.resize(image, new_hw, method="bicubic", antialias=True)
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed + 1)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed + 2)
    image = tf.clip_by_value(tf.round(image), 0, 255)
    if color:  # the crop as it would be without, recoloured (as `augment`)
        u = tf.random.stateless_uniform([6], seed + 3)
        if permute:
            image = tf.gather(image, tf.argsort(u[:3]), axis=-1)
        image = tf.round(image * (COLOR_GAIN_MIN + (1.0 - COLOR_GAIN_MIN) * u[3:]))
    return tf.cast(image, tf.uint8)


def center_crop_tf(tf, image, size: int):
    """The tfds reader's evaluation view: shortest side resized to `size`, centre crop; uint8."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = size / tf.cast(tf.minimum(h, w), tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(tf.cast([h, w], tf.float32) * scale), tf.int32), size)
    image = tf.image.resize(image, new_hw, method="bicubic", antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
