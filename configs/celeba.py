"""GLCIC on CelebA faces (tfds `celeb_a`): the authors' resize range, GLCIC-PyTorch's holes.

COMMAND:
  python -m glcic_jax.main --config=configs/celeba.py --workdir=runs/celeba

160x160 crops of faces whose shortest side is resized into [160, 178] (the authors' README for
their CelebA model), a 96x96 local window and hole sides in [48, 96] (GLCIC-PyTorch's defaults),
the paper's schedule (Tc 90k, Td 10k, 500k in all), batch 96, Adadelta and alpha 0.0004, plus
random horizontal flips (our choice). tfds downloads and prepares CelebA on first use. Expect a
GPU run of days, not a CPU run; the console logs the ETA, TensorBoard the losses and samples.

Variants:
  --config=configs/celeba.py:256    the CelebA/Places2 report's 256 global / 128 local setup
                                    (resize range [256, 300] is ours)
  --config=configs/celeba.py:tiny   a CPU smoke run (32 px, 6 steps)
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
