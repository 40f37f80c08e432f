"""Deterministic streams over a list of examples, decoded in a thread pool (folder, skimage).

Exact resume: a stream's k-th element is a pure function of (seed, host, k): which example (a
per-epoch permutation) and its crop/flip. Restarting at step s starts the stream at element
s * local_batch, so a resumed run sees the same images as an uninterrupted one.

`IndexedReader` is what the folder and scikit-image readers share: given the examples of a split
(`examples`), it makes the training stream and the fixed evaluation batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import os
import threading
from typing import Callable, Sequence

import numpy as np

from glcic_jax.data.images import augment
from glcic_jax.errors import DataError

# The seed of the fixed evaluation crops (the same in every run; not the training seed).
EVAL_STREAM_SEED = 20170701


class IndexedSource:
    """A list of examples, each loaded by `load(i)`, with bad-item accounting."""

    def __init__(self, names: Sequence[str], load: Callable[[int], np.ndarray], what: str):
        if not names:
            raise DataError(f"{what} holds no images.")
        self.names = list(names)
        self._load = load
        self.what = what
        self.skipped: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> np.ndarray:
        """Load example i; an unreadable one is skipped (logged, counted) for the next one."""
        n = len(self.names)
        for attempt in range(n):
            j = (i + attempt) % n
            try:
                return self._load(j)
            except Exception as e:  # corrupt, truncated, unsupported: never crash training
                with self._lock:
                    first = self.names[j] not in self.skipped
                    self.skipped[self.names[j]] += 1
                if first:
                    logging.warning("Skipping unreadable image %s (%s: %s); %d skipped so far.",
                                    self.names[j], type(e).__name__, e, len(self.skipped))
        raise DataError(f"None of the {n} images in {self.what} could be read.")


def stream_item(source_len: int, seed: int, host: int, k: int) -> tuple[int, np.random.Generator]:
    """Element k of a host's stream: (example index, RNG for its augmentation)."""
    epoch, pos = divmod(k, source_len)
    perm = np.random.default_rng([seed, host, epoch, 0xC0FFEE]).permutation(source_len)
    return int(perm[pos]), np.random.default_rng([seed, host, k])


class StreamIterator:
    """Batches of a deterministic augmented stream, decoded by a thread pool, prefetched in
    order."""

    def __init__(self, source: IndexedSource, config, batch: int, start: int = 0, seed: int = 0,
                 host: int = 0, workers: int | None = None, prefetch: int = 4):
        self.source = source
        self.batch = batch
        self.next_k = start
        self.seed = seed
        self.host = host
        d = config.data
        self._aug = (int(d.image_size), int(d.resize_min), int(d.resize_max), bool(d.flip),
                     bool(d.color_augment), bool(d.color_permute))
        workers = workers or min(32, (os.cpu_count() or 2) * 2)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="glcic-data")
        self._pending: collections.deque = collections.deque()
        self._prefetch = prefetch

    def _element(self, k: int) -> np.ndarray:
        i, rng = stream_item(len(self.source), self.seed, self.host, k)
        return augment(self.source.load(i), rng, *self._aug)

    def _submit(self) -> None:
        ks = range(self.next_k, self.next_k + self.batch)
        self.next_k += self.batch
        self._pending.append([self._pool.submit(self._element, k) for k in ks])

    def __iter__(self) -> "StreamIterator":
        return self

    def __next__(self) -> np.ndarray:
        while len(self._pending) < self._prefetch:
            self._submit()
        futures = self._pending.popleft()
        return np.stack([f.result() for f in futures])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _distinct(images: np.ndarray, seen: set) -> list[np.ndarray]:
    out = []
    for img in images:
        key = hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest()
        if key not in seen:
            seen.add(key)
            out.append(img)
    return out


class IndexedReader:
    """A reader whose data is a list of examples: subclasses say which (`examples`)."""

    def examples(self, config, split: str, host: int = 0, hosts: int = 1) -> IndexedSource:
        """The examples of split 'train' or 'eval', this host's share of them."""
        raise NotImplementedError

    def describe(self, config) -> tuple[int, int, int] | None:
        """(found, train, held out) for readers that split their data themselves, else None."""
        return None

    def train_batches(self, config, local_batch: int, start: int, host: int,
                      hosts: int) -> StreamIterator:
        """This host's training stream from element `start` on, in batches of `local_batch`."""
        source = self.examples(config, "train", host, hosts)
        workers = int(config.data.num_workers) or None
        return StreamIterator(source, config, local_batch, start=start, seed=int(config.seed),
                              host=host, workers=workers)

    def eval_images(self, config, num: int) -> np.ndarray:
        """The first elements of the held-out split's stream with a fixed seed (random crops, no
        flips or recolouring), several crops per photo when `num` exceeds the held-out photos.
        Identical crops are kept once, so fewer than `num` may come back (logged)."""
        source = self.examples(config, "eval")
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.data.flip = False
            cfg.data.color_augment = False  # held-out photos in their own colours

        def take(src) -> list[np.ndarray]:
            it = StreamIterator(src, cfg, num, start=0, seed=EVAL_STREAM_SEED, host=0, workers=4,
                                prefetch=1)
            seen: set = set()
            found: list[np.ndarray] = []
            try:
                for _ in range(4):  # a few more draws to replace identical crops
                    found += _distinct(next(it), seen)
                    if len(found) >= num:
                        break
            finally:
                it.close()
            return found[:num]

        try:
            found = take(source)
        except DataError:
            # Small folders hold out one or two files; if all are unreadable, use training images.
            logging.warning("No held-out image could be read: sample grids use training images.")
            found = take(self.examples(config, "train"))
        if len(found) < num:
            logging.info("The held-out set gives %d distinct %dx%d crops (of %d photos), not %d: "
                         "sample grids and evaluation use those %d.", len(found),
                         config.data.image_size, config.data.image_size, len(source), num,
                         len(found))
        return np.stack(found)
