"""Write a photo and a mask to try `glcic_jax.complete` on, with no file of your own.

  python tools/sample_inputs.py [--out_dir=samples]

Writes `OUT_DIR/photo.png`, scikit-image's `chelsea` (300x451, one of the two photos the
quickstart holds out from training, so its network has never seen it), and `OUT_DIR/mask.png`,
white where the holes are: three 48-px squares on the cat's fur. At the quickstart's training
scale (photos shrunk to a shortest side of 128 px) a 48-px hole becomes about 20 px, inside the
12-24 px the quickstart trains on. The same three holes are the ones
`tests/test_quickstart_model.py` completes.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

# (top, left) of each square hole, and its side, in chelsea's 300x451 pixels.
HOLES = ((120, 195), (40, 60), (240, 200))
HOLE_SIZE = 48


def sample_photo() -> np.ndarray:
    import skimage.data  # shipped with scikit-image (in requirements.txt): no download

    return skimage.data.chelsea()


def sample_mask(shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask of `shape`, 255 inside the holes, 0 elsewhere."""
    mask = np.zeros(shape, np.uint8)
    for top, left in HOLES:
        mask[top : top + HOLE_SIZE, left : left + HOLE_SIZE] = 255
    return mask


def write(out_dir: str) -> tuple[str, str]:
    """Write photo.png and mask.png into out_dir (created if needed); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    photo = sample_photo()
    photo_path = os.path.join(out_dir, "photo.png")
    mask_path = os.path.join(out_dir, "mask.png")
    Image.fromarray(photo).save(photo_path)
    Image.fromarray(sample_mask(photo.shape[:2])).save(mask_path)
    return photo_path, mask_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default="samples", help="folder to write photo.png and "
                        "mask.png into (default: samples)")
    args = parser.parse_args()
    for path in write(args.out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
