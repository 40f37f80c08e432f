"""data.source='skimage': scikit-image's colour sample photos (shipped with it; no download).

Seven photos train; the last two of the nine are held out for evaluation and sample grids.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from glcic_jax.data.images import to_rgb_uint8
from glcic_jax.data.streams import IndexedReader, IndexedSource

SKIMAGE_TRAIN = ("astronaut", "coffee", "immunohistochemistry", "hubble_deep_field", "retina",
                 "motorcycle_left", "motorcycle_right")
SKIMAGE_EVAL = ("chelsea", "rocket")


def _photo(name: str) -> np.ndarray:
    import skimage.data  # local: only this reader needs scikit-image

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return to_rgb_uint8(Image.fromarray(getattr(skimage.data, name)()))


class SkimageReader(IndexedReader):
    """SKIMAGE_TRAIN for training, SKIMAGE_EVAL held out; every host reads all of them."""

    def examples(self, config, split: str, host: int = 0, hosts: int = 1) -> IndexedSource:
        names = list(SKIMAGE_TRAIN if split == "train" else SKIMAGE_EVAL)
        photos = {n: _photo(n) for n in names}
        return IndexedSource(names, lambda i: photos[names[i]], "scikit-image samples")
