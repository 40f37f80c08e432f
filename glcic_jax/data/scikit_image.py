"""data.source='skimage': scikit-image's sample photos (shipped with it; no download).

Ten photos train: four in colour and six grey ones (natural textures and scenes, as RGB). Two
colour photos, `chelsea` and `rocket`, are held out for evaluation and sample grids. Left out:
`hubble_deep_field` and `retina` (most of their crops are black, which pulls fills towards black:
our judgement), `motorcycle_right` (the left view again), and the synthetic or
binary ones (text, page, chessboard, horse, ...).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from glcic_jax.data.images import to_rgb_uint8
from glcic_jax.data.streams import IndexedReader, IndexedSource

SKIMAGE_TRAIN = ("astronaut", "coffee", "immunohistochemistry", "motorcycle_left",
                 "camera", "coins", "moon", "grass", "gravel", "brick")
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
