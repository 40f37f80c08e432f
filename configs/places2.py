"""GLCIC as in the paper: Places2 (tfds `places365_small`), 256x256, holes 96-128, batch 96.

Launch:
  python -m glcic_jax.main --config=configs/places2.py --workdir=runs/places2
  python -m glcic_jax.main --config=configs/places2.py:tiny --workdir=/tmp/p2   # CPU smoke run

Schedule (GLCIC 4): Tc = 90k iterations of C alone, Td = 10k of D alone, then joint training up to
500k; Adadelta; alpha = 0.0004. Images: shortest side resized to a random value in [256, 384], then
a random 256x256 crop and a horizontal flip.
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
