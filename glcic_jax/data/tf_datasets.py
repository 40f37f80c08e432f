"""data.source='tfds': a named TensorFlow Datasets dataset, read through tf.data.

TensorFlow is imported only here, and kept off the GPU (JAX owns it). A dataset that is not
prepared yet is downloaded and prepared on first use, with progress lines; what cannot be fetched
or is missing a Python module becomes one DataError that says what to do. Resuming skips the
undecoded records of the stream, which is exact but reads the skipped records once.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import threading
import time
from typing import Iterator

import numpy as np

from glcic_jax.data.images import augment_tf, center_crop_tf
from glcic_jax.errors import DataError

# Seconds between "still downloading and preparing" lines (tfds can be silent for minutes between
# its progress bars, e.g. while extracting an archive).
PROGRESS_EVERY_S = 60.0


def import_tf():
    """TensorFlow, hidden from the GPU; DataError if it is not installed."""
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


def find_builder(config):
    """The tfds builder of `data.name` in `data.data_dir` (not prepared yet, perhaps); one-line
    DataError for a name tfds does not know (its own error lists every dataset: ~460 lines)."""
    import_tf()
    import tensorflow_datasets as tfds

    d = config.data
    data_dir = d.data_dir or None
    try:
        return tfds.builder(d.name, data_dir=data_dir)
    except Exception as e:
        if _missing_module(e):
            raise _missing_module_error(d.name, "Loading the builder", e) from e
        if isinstance(e, tfds.core.DatasetNotFoundError):
            try:
                close = difflib.get_close_matches(str(d.name), tfds.list_builders(), n=3)
            except Exception:  # the hint is optional
                close = []
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise DataError(
                f"Unknown tfds dataset data.name={d.name!r}{hint}: tensorflow-datasets "
                f"{tfds.__version__} has no dataset of that name. Check the spelling (the "
                f"catalogue: https://www.tensorflow.org/datasets/catalog), or train on a folder "
                f"of photos with --config.data.source=folder --config.data.path=DIR."
            ) from e
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"Cannot load the tfds dataset data.name={d.name!r}: {first}") from e


def prepare_builder(config):
    """The tfds builder of `data.name` in `data.data_dir`, downloaded and prepared if need be."""
    import tensorflow_datasets as tfds

    d = config.data
    builder = find_builder(config)
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


def stream(config, split: str, batch: int, start: int, seed: int, host: int, hosts: int,
           train: bool) -> Iterator[np.ndarray]:
    """uint8 batches of `split` (this host's share): augmented and repeated forever for
    training, centre-cropped once through for evaluation; from record `start` on."""
    tf = import_tf()
    import tensorflow_datasets as tfds

    d = config.data
    builder = prepare_builder(config)
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
    size, rmin, rmax, flip = int(d.image_size), int(d.resize_min), int(d.resize_max), bool(d.flip)
    color, permute = bool(d.color_augment), bool(d.color_permute)

    def process(k, encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        if not train:
            return center_crop_tf(tf, image, size)
        s = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + host, k])  # element k's own seed
        return augment_tf(tf, image, s, size, rmin, rmax, flip, color, permute)

    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=train).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))


class TfdsReader:
    """data.name from TensorFlow Datasets: data.train_split streams, data.eval_split evaluates."""

    def train_batches(self, config, local_batch: int, start: int, host: int,
                      hosts: int) -> Iterator[np.ndarray]:
        return stream(config, config.data.train_split, local_batch, start, int(config.seed), host,
                      hosts, train=True)

    def eval_images(self, config, num: int) -> np.ndarray:
        """The first `num` images of the eval split, centre-cropped."""
        out = next(stream(config, config.data.eval_split, num, 0, 0, 0, 1, train=False))
        if len(out) < num:
            raise DataError(f"The eval split has only {len(out)} images; {num} are needed.")
        return out

    def describe(self, config) -> None:
        return None

    def check(self, config) -> None:
        """An unknown dataset name fails before a run writes anything (`find_builder`)."""
        find_builder(config)
