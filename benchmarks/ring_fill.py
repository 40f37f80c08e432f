"""A learning-free baseline for the quickstart: fill each hole with the mean colour of a ring.

  python benchmarks/ring_fill.py [--config=configs/quickstart.py] [--ring=2]

Scores, on the held-out crops and holes of the config's `--mode=eval` / learning curve, the fill
with the mean colour of the `--ring` px around each hole beside the mean-pixel fill and OpenCV's
Telea. A network whose fills are one colour per hole (what the CPU quickstart learns) can at best
match this; measured on 2026-12-03 for today's quickstart (32 crops): 23.49 dB hole PSNR, against
15.61 (mean pixel) and 25.61 (Telea).
"""

from __future__ import annotations

import _harness  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from scipy import ndimage

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Config whose held-out set.")
flags.DEFINE_integer("ring", 2, "Width of the ring around each hole, in pixels.")


def ring_fill(images: np.ndarray, hole: np.ndarray, ring: int) -> np.ndarray:
    out = images.copy()
    for i in range(len(images)):
        around = ndimage.binary_dilation(hole[i], iterations=ring) & ~hole[i]
        out[i][hole[i]] = np.round(images[i][around].mean(0)).astype(images.dtype)
    return out


def main(argv) -> None:
    del argv
    from glcic_jax import evaluate, input_pipeline

    c = FLAGS.config
    images = input_pipeline.eval_images(c, evaluate.num_eval_images(c))
    hole = evaluate.eval_masks(c, len(images), *images.shape[1:3])
    mean_px = input_pipeline.compute_mean_pixel(c)
    fills = {"mean_fill": evaluate.mean_fill(images, hole, mean_px),
             f"ring_{FLAGS.ring}px_mean": ring_fill(images, hole, FLAGS.ring),
             "telea": evaluate.opencv_inpaint(images, hole, "telea")}
    print(f"{len(images)} held-out {images.shape[1]}x{images.shape[2]} crops")
    for name, pred in fills.items():
        psnr = evaluate.mean_metrics(pred, images, hole)["psnr_hole"]
        print(f"{name:16s} hole PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    app.run(main)
