"""Quickstart: train GLCIC on scikit-image's sample photos, on CPU, in a few minutes. No download.

Launch:
  python -m glcic_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Random 32x32 crops of seven colour photos that scikit-image ships (chelsea and rocket are held out
for the sample grids and --mode=eval); all three phases in 200 steps (Tc 150, Td 10, joint 40),
the full GLCIC networks. Watch samples/ and TensorBoard: the hole MSE falls within the first
hundred steps. For a longer run (e.g. on a GPU): --config.num_train_steps=20000
--config.schedule.tc=12000 --config.schedule.td=2000.
"""

from glcic_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.data.source = "skimage"  # scikit-image sample photos, in memory
    c.data.image_size = 32
    c.data.resize_min = 48  # photos shrunk so a crop shows a recognisable patch
    c.data.resize_max = 96
    c.data.mean_pixel_images = 256
    c.data.num_eval_images = 6
    c.mask.local_size = 24
    c.mask.hole_min = 8
    c.mask.hole_max = 16
    c.batch_size = 8
    c.num_train_steps = 200
    c.schedule.tc = 150
    c.schedule.td = 10
    c.log_every = 20
    c.sample_every = 50
    c.checkpoint_every = 50
    c.num_eval_batches = 2
    if arg == "tiny":
        c = config_lib.shrink_to_tiny(c)
        c.data.source = "skimage"
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use ':tiny' or nothing.")
    return c
