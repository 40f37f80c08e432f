"""Phase-1 ablations that need a change the config cannot express (issue 14's rejected ideas).

  python benchmarks/phase1_variants.py VARIANT [phase1_ablation.py arguments ...]

VARIANT is one of
  dead_leaves=N[,only]  N synthetic "dead leaves" images (128 px: discs with power-law radii, each
                        a soft colour with a linear gradient, painted front to back, light noise)
                        added to the training photos, the photos repeated so that both are drawn
                        about equally often; `,only` trains on the synthetic images alone. Edge-rich
                        data, to see whether the network learns to continue edges sooner.
  channel_floor=N       every layer of C and D keeps at least min(N, the paper's) channels at any
                        model.width (tests whether the narrow layers near the output starve colour)
  gains=LO,HI           colour augmentation gains drawn from [LO, HI] (clipped to 255) instead of
                        [COLOR_GAIN_MIN, 1]

The rest goes to benchmarks/phase1_ablation.py unchanged (tag=, steps=, every=, eval_images=,
grid=, config overrides). Results: benchmarks/results/quickstart_ablation_20261203.json.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def dead_leaves(rng: np.random.Generator, size: int = 128, rmin: float = 4.0,
                rmax: float = 96.0, n: int = 300) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), np.float32)
    covered = np.zeros((size, size), bool)
    a, b = rmin ** -2, rmax ** -2
    radii = (a - rng.random(n) * (a - b)) ** -0.5  # density ~ r^-3 on [rmin, rmax]
    for r in radii:  # front to back: a disc only paints what no earlier one covers
        cx, cy = rng.uniform(-r / 2, size + r / 2, 2)
        m = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & ~covered
        if not m.any():
            continue
        grey = rng.random()
        colour = grey + rng.uniform(0.0, 0.6) * (rng.random(3) - grey)
        g = rng.normal(0, 0.15 / r, 2)
        img[m] = colour[None, :] + ((xx[m] - cx) * g[0] + (yy[m] - cy) * g[1])[:, None]
        covered |= m
        if covered.all():
            break
    img[~covered] = rng.random()
    img += rng.normal(0, rng.uniform(0, 0.03), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def main(argv: list[str]) -> None:
    variant, rest = argv[0], argv[1:]
    name, _, value = variant.partition("=")
    if name == "dead_leaves":
        from glcic_jax.data import scikit_image

        count, _, only = value.partition(",")
        rng = np.random.default_rng(123)
        synth = {f"dead_leaves_{i}": dead_leaves(rng) for i in range(int(count))}
        photo = scikit_image._photo
        scikit_image._photo = lambda n: synth[n] if n in synth else photo(n)
        base = () if only == "only" else scikit_image.SKIMAGE_TRAIN
        reps = max(1, len(synth) // len(base)) if base else 0
        scikit_image.SKIMAGE_TRAIN = tuple(base) * reps + tuple(synth)
    elif name == "channel_floor":
        from glcic_jax import models

        floor = int(value)
        models.scaled = lambda f, w: max(min(f, floor), int(round(f * w)))
    elif name == "gains":
        from glcic_jax.data import images, streams

        lo, hi = map(float, value.split(","))
        plain = images.augment

        def augment(image, rng, size, rmin, rmax, flip, color=False, permute=True):
            out = plain(image, rng, size, rmin, rmax, flip, False)
            if color:
                gain = rng.uniform(lo, hi, 3).astype(np.float32)
                if permute:
                    out = out[..., rng.permutation(3)]
                out = np.clip(np.rint(out * gain), 0, 255).astype(np.uint8)
            return out

        streams.augment = augment
    else:
        raise SystemExit(f"unknown variant {variant!r}: see the docstring")
    import phase1_ablation

    phase1_ablation.main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
