"""GLCIC's training settings (paper section 4) on tfds `places365_small`: 256x256, holes 96-128.

Launch:
  python -m glcic_jax.main --config=configs/places2.py --workdir=runs/places2
  python -m glcic_jax.main --config=configs/places2.py:tiny --workdir=/tmp/p2   # CPU smoke run

From the paper: Tc = 90k iterations of C alone, Td = 10k of D alone, then joint training up to 500k;
batch 96; Adadelta; alpha = 0.0004; images resized so that the shortest side is a random value in
[256, 384], then a random 256x256 crop; holes with sides in [96, 128], filled with the mean pixel;
a 128x128 local discriminator input. No horizontal flips: the paper mentions none.

Deliberate differences (the data this config can fetch, not the paper's):
* The paper trains on Places2, about 8M training images. tfds `places365_small` is
  Places365-Standard (~1.8M training images) at 256x256, so resizing its images to a shortest side
  in [256, 384] upsamples them (by up to 1.5x) and never shrinks them. To train on other Places
  images (e.g. the high-resolution release), use a folder source:
  --config.data.source=folder --config.data.path=DIR.
* The mean pixel is estimated on `data.mean_pixel_images` (2,000) training crops, not the whole set.
* Choices the paper leaves open follow GLCIC-PyTorch or our judgement;
  docs/paper_differences.md lists them (hole MSE normalisation, real local crops, etc.).
"""

from glcic_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.data.source = "tfds"
    c.data.name = "places365_small"  # 256x256 Places365-Standard images (~1.8M train)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 256  # global discriminator input
    c.data.resize_min = 256
    c.data.resize_max = 384
    c.data.flip = False  # the paper mentions no flips (the base config's default is True)
    c.mask.local_size = 128  # local discriminator input
    c.mask.hole_min = 96
    c.mask.hole_max = 128
    c.batch_size = 96
    c.num_train_steps = 500_000
    c.schedule.tc = 90_000
    c.schedule.td = 10_000
    if arg == "tiny":
        c = config_lib.shrink_to_tiny(c)
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use ':tiny' or nothing.")
    return c
