"""GLCIC on CelebA (tfds `celeb_a`): the authors' resize range, GLCIC-PyTorch's crop and holes.

Launch:
  python -m glcic_jax.main --config=configs/celeba.py --workdir=runs/celeba
  python -m glcic_jax.main --config=configs/celeba.py:tiny --workdir=/tmp/celeba   # CPU smoke run

Where each setting comes from (the paper trains on Places2 only; its authors released inference code
and trained models, no training code):
* shortest side resized to a random value in [160, 178]: the authors' README for their released
  CelebA model ("trained on face images with the smallest edges in the [160, 178]");
* 160x160 crops, a 96x96 local window, hole sides in [48, 96]: GLCIC-PyTorch's defaults
  (`--cn_input_size 160 --ld_input_size 96 --hole_min_w 48 --hole_max_w 96`);
* schedule (Tc 90k, Td 10k, 500k in all), batch 96, Adadelta, alpha 0.0004: the paper's Places2
  values (GLCIC-PyTorch also uses 90k / 10k, then 400k joint steps, with batch 16);
* random horizontal flips (`data.flip`, the base config's default): our choice; neither the paper
  nor GLCIC-PyTorch flips.

The CelebA/Places2 report's 256 global / 128 local setup is the `:256` argument:
  python -m glcic_jax.main --config=configs/celeba.py:256 --workdir=runs/celeba256
(images resized to [256, 300] shortest side, 256 crops, local 128, holes [96, 128] as Places2; the
report gives the 256 / 128 sizes, the resize range is ours).
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
