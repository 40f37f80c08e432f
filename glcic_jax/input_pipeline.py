"""Input pipelines: named tfds datasets, folders of photos, and scikit-image's sample photos.

Every source yields uint8 batches `[local_batch, S, S, 3]` (numpy) for this host; scaling to
[0, 1] happens on the device inside the jitted step. Augmentation follows GLCIC 4: the shortest
side is resized to a random value in [resize_min, resize_max], then a random S x S crop; with
`data.flip` a random horizontal flip follows (our addition: the paper mentions no flips).

Exact resume: each source is a *stream* whose k-th element is a pure function of (seed, host, k):
which image (a per-epoch permutation) and its crop/flip. Restarting at step s starts the stream at
element s * local_batch, so a resumed run sees the same images as an uninterrupted one.

* `folder` and `skimage` sources are decoded with PIL in a thread pool and need no TensorFlow
  (a GPU machine without TensorFlow can train from them).
* `tfds` sources use tf.data (TensorFlow kept off the GPU); resuming skips the undecoded records
  of the stream, which is exact but reads the skipped records once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from glcic_jax import errors
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# scikit-image's colour sample photos (shipped with the package; no download). The last two are
# held out for evaluation and sample grids.
SKIMAGE_TRAIN = ("astronaut", "coffee", "immunohistochemistry", "hubble_deep_field", "retina",
                 "motorcycle_left", "motorcycle_right")
SKIMAGE_EVAL = ("chelsea", "rocket")


# A dataset is missing, empty or unreadable; the message says what to do (errors.py).
DataError = errors.DataError


# ----------------------------------------------------------------------------------------------
# Decoding and augmentation (numpy / PIL)


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


def augment(image: np.ndarray, rng: np.random.Generator, size: int, resize_min: int,
            resize_max: int, flip: bool) -> np.ndarray:
    """GLCIC 4: random shortest-side resize in [resize_min, resize_max], random crop; flip if asked.

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
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------------------------
# Index-based sources (folder, skimage): deterministic streams decoded in a thread pool


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


def _stream_item(source_len: int, seed: int, host: int, k: int) -> tuple[int, np.random.Generator]:
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
        self._aug = (int(d.image_size), int(d.resize_min), int(d.resize_max), bool(d.flip))
        workers = workers or min(32, (os.cpu_count() or 2) * 2)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="glcic-data")
        self._pending: collections.deque = collections.deque()
        self._prefetch = prefetch

    def _element(self, k: int) -> np.ndarray:
        i, rng = _stream_item(len(self.source), self.seed, self.host, k)
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


# Our choice: a folder needs at least this many images before any is held out; with fewer, every
# image trains and evaluation uses the training images (with a warning), rather than training on
# one image of two or failing for lack of one.
MIN_IMAGES_TO_HOLD_OUT = 3


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


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data  # local: only this source needs scikit-image

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return to_rgb_uint8(Image.fromarray(getattr(skimage.data, name)()))


def indexed_source(config, split: str, host: int = 0, hosts: int = 1) -> IndexedSource:
    """The folder or skimage source for split 'train' or 'eval', this host's share of it."""
    d = config.data
    if d.source == "skimage":
        names = list(SKIMAGE_TRAIN if split == "train" else SKIMAGE_EVAL)
        photos = {n: _skimage_photo(n) for n in names}
        return IndexedSource(names, lambda i: photos[names[i]], "scikit-image samples")
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


# ----------------------------------------------------------------------------------------------
# tfds sources (tf.data)


def _import_tf():
    try:
        import tensorflow as tf
    except ImportError as e:  # the GPU image may not have TensorFlow
        raise DataError(
            "data.source=tfds needs TensorFlow and tensorflow-datasets (pip install -r "
            "requirements.txt); without them use data.source=folder or skimage."
        ) from e
    try:  # keep TensorFlow off the GPU: JAX owns it
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass
    return tf


def _missing_module(error: BaseException) -> str | None:
    """The name of the module whose import failed somewhere in `error`'s chain, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError):
            return getattr(error, "name", None) or str(error)
        error = error.__cause__ or error.__context__
    return None


def _missing_module_error(name: str, what: str, error: BaseException) -> DataError:
    module = _missing_module(error)
    return DataError(
        f"{what} for the tfds dataset {name!r} needs the Python module {module!r}, which is not "
        f"installed (a missing package, not a network problem): run `pip install -r "
        f"requirements.txt` (or `pip install {module.split('.')[0]}`) and retry."
    )


def _tfds_builder(config):
    _import_tf()
    import tensorflow_datasets as tfds

    d = config.data
    data_dir = d.data_dir or None
    try:
        builder = tfds.builder(d.name, data_dir=data_dir)
    except Exception as e:
        if _missing_module(e):
            raise _missing_module_error(d.name, "Loading the builder", e) from e
        raise DataError(f"Unknown tfds dataset data.name={d.name!r}: {e}") from e
    if not builder.is_prepared():
        where = builder.data_dir
        try:
            with _progress(f"tfds dataset {d.name}"):
                logging.info("Downloading and preparing the tfds dataset %s in %s: done once, it "
                             "can take minutes to hours (tfds' progress bars follow).", d.name,
                             where)
                tfds.display_progress_bar(True)  # tfds' own per-file and per-split progress
                builder.download_and_prepare()
        except Exception as e:
            if _missing_module(e):
                raise _missing_module_error(d.name, "Preparing", e) from e
            raise DataError(
                f"The tfds dataset {d.name!r} is not in {where} and could not be downloaded or "
                f"prepared ({type(e).__name__}: {str(e)[:300]}). Either give this machine access "
                f"to the dataset's download site, or prepare it elsewhere with `tfds build "
                f"{d.name} --data_dir=DIR` (for manual-download datasets, put the archives in "
                f"DIR/downloads/manual) and copy DIR here, then pass --config.data.data_dir=DIR."
            ) from e
    return builder


# Seconds between "still downloading and preparing" lines (tfds can be silent for minutes between
# its progress bars, e.g. while extracting an archive).
PROGRESS_EVERY_S = 60.0


@contextlib.contextmanager
def _progress(what: str):
    """Log how long `what` has been running, every PROGRESS_EVERY_S seconds, and when it ends."""
    t0 = time.time()
    stop = threading.Event()

    def beat():
        while not stop.wait(PROGRESS_EVERY_S):
            logging.info("Still downloading and preparing the %s (%.0f s so far)...", what,
                         time.time() - t0)

    thread = threading.Thread(target=beat, daemon=True, name="glcic-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    logging.info("Prepared the %s in %.0f s.", what, time.time() - t0)


def _tfds_stream(config, split: str, batch: int, start: int, seed: int, host: int, hosts: int,
                 train: bool) -> Iterator[np.ndarray]:
    tf = _import_tf()
    import tensorflow_datasets as tfds

    d = config.data
    builder = _tfds_builder(config)
    if hosts > 1:
        split = tfds.even_splits(split, n=hosts, drop_remainder=True)[host]
    read_config = tfds.ReadConfig(shuffle_seed=seed + 7919 * host, try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=train, read_config=read_config,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: ex["image"])
    if train:
        ds = ds.shuffle(int(d.shuffle_buffer), seed=seed + host, reshuffle_each_iteration=True)
        ds = ds.repeat()
    ds = ds.enumerate().skip(start)  # exact resume: skip undecoded records
    size, rmin, rmax = int(d.image_size), int(d.resize_min), int(d.resize_max)

    def process(k, encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        if not train:
            return _tf_center_crop(tf, image, size)
        s = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + host, k])
        short = tf.random.stateless_uniform([], s, rmin, rmax + 1, dtype=tf.int32)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        scale = tf.cast(short, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
        new_hw = tf.maximum(tf.cast(tf.round(tf.cast([h, w], tf.float32) * scale), tf.int32),
                            short)
        image = tf.image.resize(image, new_hw, method="bicubic", antialias=True)
        image = tf.image.stateless_random_crop(image, [size, size, 3], s + 1)
        if d.flip:
            image = tf.image.stateless_random_flip_left_right(image, s + 2)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=train).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))


def _tf_center_crop(tf, image, size: int):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = size / tf.cast(tf.minimum(h, w), tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(tf.cast([h, w], tf.float32) * scale), tf.int32), size)
    image = tf.image.resize(image, new_hw, method="bicubic", antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


# ----------------------------------------------------------------------------------------------
# Public entry points


def train_iterator(config, local_batch: int, start_step: int = 0, host: int = 0,
                   hosts: int = 1) -> Iterator[np.ndarray]:
    """This host's training batches from global step `start_step` on: uint8
    [local_batch, S, S, 3]."""
    start = start_step * local_batch
    seed = int(config.seed)
    if config.data.source == "tfds":
        return _tfds_stream(config, config.data.train_split, local_batch, start, seed, host,
                            hosts, train=True)
    if config.data.source in ("folder", "skimage"):
        source = indexed_source(config, "train", host, hosts)
        workers = int(config.data.get("num_workers", 0) or 0) or None
        return StreamIterator(source, config, local_batch, start=start, seed=seed, host=host,
                              workers=workers)
    raise DataError(
        f"data.source={config.data.source!r} must be 'tfds', 'folder' or 'skimage'."
    )


# Fewer held-out photos than this and the held-out metrics and sample grids say little about the
# model (our judgement, not a figure from the paper or the reports).
MIN_HELD_OUT_FILES = 8


def describe_split(config) -> tuple[int, int, int] | None:
    """Log how many photos the folder source found, trains on and holds out (process 0 calls it
    once per run); warn when too few are held out. Returns (found, train, held out), or None for
    other sources."""
    d = config.data
    if d.source != "folder":
        return None
    files = list_images(d.path)
    train, test = split_files(files, float(d.eval_fraction))
    logging.info("data.path=%s: %d images found, %d used for training, %d held out for sample "
                 "grids and evaluation (data.eval_fraction=%g).", d.path, len(files), len(train),
                 len(test), float(d.eval_fraction))
    if len(test) < MIN_HELD_OUT_FILES:
        logging.warning("Only %d held-out image(s): held-out metrics and sample grids on so few "
                        "photos say little. Add photos or raise --config.data.eval_fraction "
                        "(%d held-out photos or more is better).", len(test), MIN_HELD_OUT_FILES)
    return len(files), len(train), len(test)


def _distinct(images: np.ndarray, seen: set) -> list[np.ndarray]:
    out = []
    for img in images:
        key = hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest()
        if key not in seen:
            seen.add(key)
            out.append(img)
    return out


def eval_images(config, num: int) -> np.ndarray:
    """A fixed held-out batch, identical in every run: uint8 [n, S, S, 3], n <= num.

    tfds: the first `num` images of the eval split, centre-cropped. folder / skimage: the first
    elements of the held-out split's stream with a fixed seed (random crops, no flips), several
    crops per photo when `num` exceeds the held-out photos. Identical crops (a photo no larger
    than the crop, or an unlucky draw) are kept once: n < num then, and it is logged, rather than
    one image counted and shown as several.
    """
    if config.data.source == "tfds":
        batches = _tfds_stream(config, config.data.eval_split, num, 0, 0, 0, 1, train=False)
        out = next(batches)
        if len(out) < num:
            raise DataError(f"The eval split has only {len(out)} images; {num} are needed.")
        return out
    source = indexed_source(config, "eval")
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.flip = False

    def take(src) -> list[np.ndarray]:
        it = StreamIterator(src, cfg, num, start=0, seed=20170701, host=0, workers=4, prefetch=1)
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
        found = take(indexed_source(config, "train"))
    if len(found) < num:
        logging.info("The held-out set gives %d distinct %dx%d crops (of %d photos), not %d: "
                     "sample grids and evaluation use those %d.", len(found),
                     config.data.image_size, config.data.image_size, len(source), num, len(found))
    return np.stack(found)


def compute_mean_pixel(config) -> np.ndarray:
    """Mean RGB in [0, 1] over `data.mean_pixel_images` training crops (host 0's stream start)."""
    n = max(1, int(config.data.mean_pixel_images))
    batch = min(n, 64)
    it = train_iterator(config, batch, start_step=0, host=0, hosts=1)
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
_NOT_IN_MEAN_PIXEL_KEY = ("num_workers", "num_eval_images", "eval_split", "flip")


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
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"key": key, "mean_pixel": [float(v) for v in value]}, f, indent=1)
        os.replace(tmp, path)
    logging.info("Mean pixel (RGB, [0, 1]): %s", np.round(value, 4).tolist())
    return value
