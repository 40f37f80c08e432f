"""Input pipelines: named tfds datasets, folders of photos, and scikit-image's sample photos.

Every source yields uint8 batches `[local_batch, S, S, 3]` (numpy) for this host; scaling to
[0, 1] happens on the device inside the jitted step. Augmentation follows GLCIC 4: the shortest
side is resized to a random value in [resize_min, resize_max], then a random S x S crop; with
`data.flip` a random horizontal flip follows (our addition: the paper mentions no flips).

Exact resume: each source is a *stream* whose k-th element is a pure function of (seed, host, k):
which image (a per-epoch permutation) and its crop/flip. Restarting at step s starts the stream at
element s * local_batch, so a resumed run sees the same images as an uninterrupted one.

`config.data.source` picks a reader from `SOURCES`; the readers live in `glcic_jax/data/`:

* `folder` and `skimage` (`data/folder.py`, `data/scikit_image.py`) are decoded with PIL in a
  thread pool (`data/streams.py`) and need no TensorFlow (a GPU machine without TensorFlow can
  train from them).
* `tfds` (`data/tf_datasets.py`) uses tf.data (TensorFlow kept off the GPU); resuming skips the
  undecoded records of the stream, which is exact but reads the skipped records once.

Decoding and the augmentation are in `data/images.py`; the dataset's mean pixel and its cache are
below (`mean_pixel`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterator, Protocol

import numpy as np

from glcic_jax.data import mask_files
from glcic_jax.data.folder import (  # noqa: F401  (public names of the data API)
    MIN_HELD_OUT_FILES,
    MIN_IMAGES_TO_HOLD_OUT,
    FolderReader,
    list_images,
    split_files,
)
from glcic_jax.data.images import (  # noqa: F401
    IMAGE_EXTENSIONS,
    augment,
    load_image,
    to_rgb_uint8,
)
from glcic_jax.data.scikit_image import SKIMAGE_EVAL, SKIMAGE_TRAIN, SkimageReader  # noqa: F401
from glcic_jax.data.streams import IndexedReader, IndexedSource, StreamIterator  # noqa: F401
from glcic_jax.data.tf_datasets import TfdsReader
from glcic_jax.errors import ConfigError, DataError, InputFileError  # noqa: F401


class Reader(Protocol):
    """What every data source provides (one signature for all of them)."""

    def train_batches(self, config, local_batch: int, start: int, host: int,
                      hosts: int) -> Iterator[np.ndarray]:
        """This host's training batches, uint8 [local_batch, S, S, 3], from stream element
        `start` on (an endless, deterministic stream: see the module docstring)."""

    def eval_images(self, config, num: int) -> np.ndarray:
        """A fixed held-out batch, identical in every run: uint8 [n, S, S, 3], n <= num."""

    def describe(self, config) -> tuple[int, int, int] | None:
        """(found, train, held out) photos, logged, for readers that split data themselves."""


# config.data.source -> its reader (config_lib.DATA_SOURCES lists the same names).
SOURCES: dict[str, Reader] = {
    "tfds": TfdsReader(),
    "folder": FolderReader(),
    "skimage": SkimageReader(),
}


def reader(config) -> Reader:
    """The reader of `config.data.source`."""
    source = config.data.source
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} must be 'tfds', 'folder' or 'skimage'.")
    return SOURCES[source]


# ----------------------------------------------------------------------------------------------
# Public entry points


def train_iterator(config, local_batch: int, start_step: int = 0, host: int = 0,
                   hosts: int = 1) -> Iterator[np.ndarray]:
    """This host's training batches from global step `start_step` on: uint8
    [local_batch, S, S, 3], or [local_batch, S, S, 4] with mask.shape='files' (the 4th channel
    the user's hole, 255 = hole: `data/mask_files.py`)."""
    start = start_step * local_batch
    images = reader(config).train_batches(config, local_batch, start, host, hosts)
    if config.mask.shape != "files":
        return images
    stream = mask_files.MaskStream(mask_file_holes(config), int(config.data.image_size),
                                   int(config.seed), host)
    return mask_files.WithMasks(images, stream, start)


def mask_file_holes(config) -> list[np.ndarray]:
    """The usable masks of `mask.files` (bool [H, W] each), read once per folder and process.

    Raises DataError (one line) for a folder with a non-image file or without a usable mask:
    training and evaluation call it before they write anything.
    """
    folder = os.path.abspath(str(config.mask.files))
    if folder not in _MASK_FILES:
        _MASK_FILES[folder] = mask_files.load_masks(folder)
        logging.info("mask.files=%s: %d usable mask(s).", config.mask.files,
                     len(_MASK_FILES[folder]))
    return _MASK_FILES[folder]


_MASK_FILES: dict[str, list[np.ndarray]] = {}


def fixed_file_masks(config, num: int) -> np.ndarray:
    """`num` fixed crops of the mask files (the same in every run): bool [num, S, S]."""
    stream = mask_files.MaskStream(mask_file_holes(config), int(config.data.image_size),
                                   mask_files.EVAL_MASK_FILES_SEED)
    return stream.batch(0, num)[..., 0] > 127


def eval_images(config, num: int) -> np.ndarray:
    """A fixed held-out batch, identical in every run: uint8 [n, S, S, 3], n <= num.

    tfds: the first `num` images of the eval split, centre-cropped. folder / skimage: the first
    elements of the held-out split's stream with a fixed seed (random crops, no flips), several
    crops per photo when `num` exceeds the held-out photos. Identical crops (a photo no larger
    than the crop, or an unlucky draw) are kept once: n < num then, and it is logged, rather than
    one image counted and shown as several.
    """
    return reader(config).eval_images(config, num)


def check_source(config) -> None:
    """Fail now, with one line, on data that cannot be found (a missing or empty data.path, an
    unknown tfds dataset) and on a mask.files folder with a non-image file or no usable mask:
    training runs it before it writes anything to the workdir. Unreadable photos are found
    later, while reading."""
    check = getattr(reader(config), "check", None)
    if check is not None:
        check(config)
    if config.mask.shape == "files":
        mask_file_holes(config)


def describe_split(config) -> tuple[int, int, int] | None:
    """Log how many photos the folder source found, trains on and holds out (process 0 calls it
    once per run); warn when too few are held out. Returns (found, train, held out), or None for
    other sources."""
    return reader(config).describe(config)


def indexed_source(config, split: str, host: int = 0, hosts: int = 1) -> IndexedSource:
    """The folder or skimage examples of split 'train' or 'eval', this host's share of them."""
    r = reader(config)
    if not isinstance(r, IndexedReader):
        raise ConfigError(f"data.source={config.data.source!r} is not a list of files; "
                          f"'folder' and 'skimage' are.")
    return r.examples(config, split, host, hosts)


# ----------------------------------------------------------------------------------------------
# The dataset's mean pixel (GLCIC 3.1: it fills the holes), computed once per workdir and cached


def compute_mean_pixel(config) -> np.ndarray:
    """Mean RGB in [0, 1] over `data.mean_pixel_images` training crops (host 0's stream start)."""
    n = max(1, int(config.data.mean_pixel_images))
    batch = min(n, 64)
    if config.data.color_augment:  # the photos' own mean, not the recoloured one
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.data.color_augment = False
    # The photos alone (not train_iterator: no mask channel with mask.shape='files').
    it = reader(config).train_batches(config, batch, 0, 0, 1)
    total, count = np.zeros(3, np.float64), 0
    try:
        while count < n:
            images = next(it)[: n - count]
            total += images.reshape(-1, 3).astype(np.float64).sum(0)
            count += len(images)
    finally:
        if hasattr(it, "close"):
            it.close()
    size = int(config.data.image_size)
    return (total / (count * size * size) / 255.0).astype(np.float32)


# data.* fields that cannot change the mean pixel; every other one (source, name, data_dir, path,
# train_split, image_size, resize_min/max, eval_fraction, shuffle_buffer, mean_pixel_images, ...)
# and the seed (it picks the images and crops) is part of the cache key.
_NOT_IN_MEAN_PIXEL_KEY = ("num_workers", "num_eval_images", "eval_split", "flip",
                          "color_augment", "color_permute")


def mean_pixel_key(config) -> dict:
    """What the cached mean pixel was computed from (JSON-serialisable)."""
    data = config.data.to_dict()
    key = {k: data[k] for k in sorted(data) if k not in _NOT_IN_MEAN_PIXEL_KEY}
    key["seed"] = int(config.seed)
    return json.loads(json.dumps(key))  # the types a cache file reads back


def mean_pixel(config, workdir: str, write: bool = True) -> np.ndarray:
    """The dataset's mean pixel, computed once and cached in WORKDIR/mean_pixel.json.

    The cache is keyed on everything that changes the value (`mean_pixel_key`): pointing a workdir
    at other data, another split or other resize settings recomputes it instead of reusing a stale
    mean.
    """
    path = os.path.join(workdir, "mean_pixel.json")
    key = mean_pixel_key(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                cached = json.load(f)
            value = np.asarray(cached["mean_pixel"], np.float32)
            # A damaged cache (NaN, wrong length) would poison every hole fill: recompute it.
            if cached.get("key") == key and value.shape == (3,) and np.all(
                (value >= 0.0) & (value <= 1.0)
            ):
                return value
            if cached.get("key") != key:
                logging.info("The cached mean pixel in %s was computed from other data settings; "
                             "recomputing it.", path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    logging.info("Computing the mean pixel over %d training images...",
                 int(config.data.mean_pixel_images))
    value = compute_mean_pixel(config)
    if write:
        from glcic_jax import leftovers

        try:
            os.makedirs(workdir, exist_ok=True)
            leftovers.write_json(path, {"key": key, "mean_pixel": [float(v) for v in value]},
                                 indent=1)
        except OSError as e:  # disk full: nothing half-written is left (leftovers.py)
            raise InputFileError(f"Could not write {path} ({e.strerror or e}). Free disk space "
                                 f"or make --workdir writable, then rerun the same command.") from e
    logging.info("Mean pixel (RGB, [0, 1]): %s", np.round(value, 4).tolist())
    return value
