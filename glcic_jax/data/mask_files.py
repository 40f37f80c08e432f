"""mask.shape='files': the user's own hole masks (white = hole), fed with the training batches.

Every file in `mask.files` (recursively; hidden files aside) must be an image: anything else is
an error before training starts, as is a folder without a usable mask (one with both hole and
known pixels). Masks are read once and kept as bool arrays. Element k of the mask stream is a
pure function of (seed, host, k), like the image streams (`streams.py`): a random mask, scaled
up (nearest neighbour) if its shortest side is below the training size, a random crop of the
training size (up to CROP_TRIES crops, for one that holds both hole and known pixels), a random
horizontal flip and a random rotation by a multiple of 90 degrees. The crop, not a resize, is
our reading of "any size": a mask keeps the scale its strokes were drawn at.

The masks travel as a 4th uint8 channel of the image batch (255 = hole), so they are sharded,
prefetched and resumed with the images; the training steps split it off (steps.py).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from glcic_jax.errors import DataError

HOLE_THRESHOLD = 128  # grey level from which a pixel is a hole (as `complete --mask`)
CROP_TRIES = 8  # crops tried per element for one with both hole and known pixels
_STREAM_SALT = 0x4D41534B  # keeps the mask stream's draws apart from the image stream's
EVAL_MASK_FILES_SEED = 20170721  # the fixed evaluation crops of the mask files


def _read(path: str) -> np.ndarray:
    """A mask file -> bool [H, W] (white >= HOLE_THRESHOLD; transparent = not a hole)."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("LA", "RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            grey = np.asarray(Image.alpha_composite(black, rgba).convert("L"))
        elif img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(img).astype(np.float64)
            top = 65535.0 if arr.max() > 255 else (1.0 if img.mode == "F" and arr.max() <= 1
                                                   else 255.0)
            grey = arr / top * 255.0
        else:
            grey = np.asarray(img.convert("L"))
    return np.asarray(grey) >= HOLE_THRESHOLD


def load_masks(folder: str) -> list[np.ndarray]:
    """Every usable mask in `folder`: bool [H, W] arrays (sorted by path).

    Raises DataError (one line) for a missing folder, a file that is not an image, or a folder
    with no mask holding both hole and known pixels. Masks without a hole, or all hole, are
    skipped with a warning.
    """
    if not folder or not os.path.isdir(folder):
        raise DataError(f"mask.files={folder!r} is not a folder of mask images.")
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
    paths.sort()
    found, skipped = [], []
    for path in paths:
        try:
            hole = _read(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            kind = type(e).__name__
            raise DataError(f"mask.files: {path!r} is not a readable image ({kind}); the folder "
                            f"must hold only mask images (white = hole).") from e
        if hole.any() and not hole.all():
            found.append(hole)
        else:
            skipped.append(os.path.relpath(path, folder))
    if not found:
        raise DataError(f"mask.files={folder!r} holds no usable mask (an image with white hole "
                        f"pixels and black known ones); {len(paths)} file(s) found.")
    if skipped:
        logging.warning("mask.files: %d mask(s) without a hole or without known pixels are not "
                        "used: %s", len(skipped), ", ".join(skipped[:5]))
    return found


def augment_mask(hole: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One random `size` x `size` crop of a mask, flipped and rotated at random: bool."""
    h, w = hole.shape
    if min(h, w) < size:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize(
            (nw, nh), Image.NEAREST)) >= HOLE_THRESHOLD
        h, w = hole.shape
    out = None
    for _ in range(CROP_TRIES):
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out = hole[top : top + size, left : left + size]
        if out.any() and not out.all():
            break
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.rot90(out, int(rng.integers(0, 4))))


class MaskStream:
    """Batches of the deterministic mask stream: element k from (seed, host, k)."""

    def __init__(self, holes: list[np.ndarray], size: int, seed: int, host: int = 0):
        self.holes, self.size, self.seed, self.host = holes, size, seed, host

    def element(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.host, k, _STREAM_SALT])
        return augment_mask(self.holes[int(rng.integers(len(self.holes)))], rng, self.size)

    def batch(self, start: int, n: int) -> np.ndarray:
        """uint8 [n, size, size, 1], 255 = hole, for elements start..start + n - 1."""
        return np.stack([self.element(k) for k in range(start, start + n)])[..., None].astype(
            np.uint8) * np.uint8(255)


class WithMasks:
    """An image batch iterator with the mask stream as a 4th channel: uint8 [B, S, S, 4]."""

    def __init__(self, images, masks: MaskStream, start: int):
        self._images, self._masks, self._next = images, masks, start

    def __iter__(self) -> "WithMasks":
        return self

    def __next__(self) -> np.ndarray:
        images = next(self._images)
        holes = self._masks.batch(self._next, len(images))
        self._next += len(images)
        return np.concatenate([images, holes], axis=-1)

    def close(self) -> None:
        if hasattr(self._images, "close"):
            self._images.close()
