"""GLCIC on CelebA (tfds `celeb_a`) with the official CelebA model's settings.

Launch:
  python -m glcic_jax.main --config=configs/celeba.py --workdir=runs/celeba
  python -m glcic_jax.main --config=configs/celeba.py:tiny --workdir=/tmp/celeba   # CPU smoke run

160x160 crops after resizing the shortest side to a random value in [160, 178]; holes with sides in
[48, 96] inside a 96x96 local window; same schedule shape as the paper (Tc 90k, Td 10k, 500k).

The CelebA/Places2 report's 256 global / 128 local setup is the `:256` argument:
  python -m glcic_jax.main --config=configs/celeba.py:256 --workdir=runs/celeba256
(images resized to [256, 300] shortest side, 256 crops, local 128, holes [96, 128] as Places2).
"""

from glcic_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.data.source = "tfds"
    c.data.name = "celeb_a"  # 178x218 aligned faces (~163k train)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 160
    c.data.resize_min = 160
    c.data.resize_max = 178
    c.mask.local_size = 96
    c.mask.hole_min = 48
    c.mask.hole_max = 96
    c.batch_size = 96
    c.num_train_steps = 500_000
    c.schedule.tc = 90_000
    c.schedule.td = 10_000
    if arg == "256":
        c.data.image_size = 256
        c.data.resize_min = 256
        c.data.resize_max = 300
        c.mask.local_size = 128
        c.mask.hole_min = 96
        c.mask.hole_max = 128
    elif arg == "tiny":
        c = config_lib.shrink_to_tiny(c)
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use ':tiny', ':256' or nothing.")
    return c
