"""Single-thread CPU cost of one folder-pipeline image: decode + augmentation, before and after.

"whole-image" is the textbook path (full-size decode, resize the whole image to the random
shortest side, then crop); "pipeline" is what `input_pipeline` does (`load_image` with libjpeg's
reduced-scale decode down to `resize_max`, then `augment`, which resamples only the crop). Both
draw the same random sizes and crops. CPU time (`time.process_time`), one thread, files in the
page cache. Images: Places-like JPEGs (256 x 256..400, quality 85) and a 4000 x 3000 photo-sized
JPEG, with Places2's settings (crop 256, shortest side in [256, 384]).

  python benchmarks/bench_decode.py
"""

from __future__ import annotations

import os
import tempfile
import time

import _harness  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from PIL import Image

from glcic_jax import input_pipeline

SIZE, RESIZE_MIN, RESIZE_MAX = 256, 256, 384


def whole_image(path: str, rng: np.random.Generator) -> np.ndarray:
    image = input_pipeline.load_image(path)
    short = int(rng.integers(RESIZE_MIN, RESIZE_MAX + 1))
    h, w = image.shape[:2]
    new_w = max(short, round(w * short / min(h, w)))
    new_h = max(short, round(h * short / min(h, w)))
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC,
                                                     reducing_gap=3.0))
    top = int(rng.integers(0, new_h - SIZE + 1))
    left = int(rng.integers(0, new_w - SIZE + 1))
    return np.ascontiguousarray(image[top : top + SIZE, left : left + SIZE])


def pipeline(path: str, rng: np.random.Generator) -> np.ndarray:
    image = input_pipeline.load_image(path, max(RESIZE_MAX, SIZE))
    return input_pipeline.augment(image, rng, SIZE, RESIZE_MIN, RESIZE_MAX, False)


def write_jpegs(folder: str) -> tuple[list[str], str]:
    rng = np.random.default_rng(0)
    places = []
    for i in range(40):
        w = int(rng.integers(256, 401))
        yy, xx = np.mgrid[0:256, 0:w] / 400
        img = np.stack([np.sin(8 * (yy * rng.random() + xx * rng.random()) + c)
                        for c in range(3)], -1) * 0.5 + 0.5
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        places.append(os.path.join(folder, f"places_{i}.jpg"))
        Image.fromarray((img * 255).astype(np.uint8)).save(places[-1], quality=85)
    small = Image.open(places[0]).convert("RGB")
    photo = os.path.join(folder, "photo_4000x3000.jpg")
    small.resize((4000, 3000), Image.BICUBIC).save(photo, quality=92)
    return places, photo


def cpu_ms(fn, paths: list[str], n: int) -> float:
    t = time.process_time()
    for k in range(n):
        fn(paths[k % len(paths)], np.random.default_rng(k))
    return (time.process_time() - t) / n * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        places, photo = write_jpegs(folder)
        for name, paths, n in (("Places-like JPEG", places, 200), ("4000x3000 JPEG", [photo], 5)):
            for fn in (whole_image, pipeline):
                cpu_ms(fn, paths, 2)  # warm-up
                print(f"{name:18s} {fn.__name__:12s} {cpu_ms(fn, paths, n):7.2f} ms CPU / image")


if __name__ == "__main__":
    main()
