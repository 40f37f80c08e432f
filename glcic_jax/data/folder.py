"""data.source='folder': every photo under data.path, split train / held-out by file name.

Decoded with PIL in a thread pool (`streams.py`): no TensorFlow needed, so a GPU machine without
it can train from a folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Sequence

from glcic_jax.data.images import IMAGE_EXTENSIONS, load_image
from glcic_jax.data.streams import IndexedReader, IndexedSource
from glcic_jax.errors import DataError

# Our choice: a folder needs at least this many images before any is held out; with fewer, every
# image trains and evaluation uses the training images (with a warning), rather than training on
# one image of two or failing for lack of one.
MIN_IMAGES_TO_HOLD_OUT = 3

# Fewer held-out photos than this and the held-out metrics and sample grids say little about the
# model (our judgement, not a figure from the paper or the reports).
MIN_HELD_OUT_FILES = 8


def list_images(root: str) -> list[str]:
    """All image files under root, recursively, as sorted relative paths."""
    if not root:
        raise DataError("data.source=folder needs --config.data.path=DIR (a folder of photos).")
    if not os.path.isdir(root):
        raise DataError(f"data.path={root!r} is not a folder.")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    found.sort()
    if not found:
        raise DataError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under data.path={root!r}."
        )
    return found


def _name_hash(f: str) -> float:
    return int(hashlib.sha1(f.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_files(files: Sequence[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic train/test split by a hash of each relative path (stable as files are
    added, independent of their order).

    From MIN_IMAGES_TO_HOLD_OUT images on, at least one is held out and at least one trains;
    with fewer images (or eval_fraction=0) nothing is held out and `test` is empty.
    """
    files = sorted(files)
    if len(files) < MIN_IMAGES_TO_HOLD_OUT or eval_fraction <= 0:
        return files, []
    train, test = [], []
    for f in files:
        (test if _name_hash(f) < eval_fraction else train).append(f)
    if not test:  # small folders: still hold one image out (the one of smallest hash)
        test.append(min(train, key=_name_hash))
        train.remove(test[0])
    if not train:
        train.append(max(test, key=_name_hash))
        test.remove(train[0])
    return train, test


class FolderReader(IndexedReader):
    """Photos under data.path (recursive), `data.eval_fraction` of them held out by name."""

    def examples(self, config, split: str, host: int = 0, hosts: int = 1) -> IndexedSource:
        d = config.data
        train, test = split_files(list_images(d.path), float(d.eval_fraction))
        files = train if split == "train" else test
        if split != "train":
            if not test:
                files = train
                logging.warning(
                    "data.path=%r: %d image(s), too few to hold any out (or data.eval_fraction=0): "
                    "evaluation and sample grids use training images, so their scores are not "
                    "held-out scores.", d.path, len(train))
            else:
                shown = ", ".join(test[:5]) + (" ..." if len(test) > 5 else "")
                logging.info("Held out for evaluation (never trained on): %d of %d images (%s).",
                             len(test), len(train) + len(test), shown)
        if split == "train" and hosts > 1:
            files = files[host::hosts] or files  # each host reads its own slice
        root = d.path
        min_short = max(int(d.resize_max), int(d.image_size))  # no crop needs more resolution
        return IndexedSource(files, lambda i: load_image(os.path.join(root, files[i]), min_short),
                             f"data.path={root!r} ({split} split)")

    def check(self, config) -> None:
        """A missing or empty data.path fails before a run writes anything."""
        list_images(config.data.path)

    def describe(self, config) -> tuple[int, int, int]:
        """Log how many photos were found, train and are held out; warn when too few are held
        out. Returns (found, train, held out)."""
        d = config.data
        files = list_images(d.path)
        train, test = split_files(files, float(d.eval_fraction))
        logging.info("data.path=%s: %d images found, %d used for training, %d held out for "
                     "sample grids and evaluation (data.eval_fraction=%g).", d.path, len(files),
                     len(train), len(test), float(d.eval_fraction))
        if len(test) < MIN_HELD_OUT_FILES:
            logging.warning("Only %d held-out image(s): held-out metrics and sample grids on so "
                            "few photos say little. Add photos or raise "
                            "--config.data.eval_fraction (%d held-out photos or more is better).",
                            len(test), MIN_HELD_OUT_FILES)
        return len(files), len(train), len(test)
