"""GLCIC's training settings (paper section 4) on tfds `places365_small`: 256x256, holes 96-128.

COMMAND:
  python -m glcic_jax.main --config=configs/places2.py --workdir=runs/places2
`:freeform` trains on free-form brush strokes (mask.shape='strokes', 5-50 % of the image) instead
of the paper's rectangles (docs/freeform.md):
  python -m glcic_jax.main --config=configs/places2.py:freeform --workdir=runs/places2_freeform

From the paper: Tc = 90k steps of C alone, Td = 10k of D alone, joint training up to 500k; batch
96; Adadelta; alpha 0.0004; shortest side resized into [256, 384], a random 256x256 crop, holes
of 96-128 px filled with the mean pixel, a 128x128 local discriminator input. No horizontal flips.
Differences, from the data tfds can fetch: Places365-Standard (~1.8M images at 256x256, so the
resize upsamples) instead of the paper's ~8M Places2 images (use --config.data.source=folder
--config.data.path=DIR for others), and the mean pixel from 2,000 training crops. Expect days on
a GPU; the console logs the ETA, TensorBoard the losses and sample grids. Choices the paper
leaves open follow GLCIC-PyTorch or our judgement: docs/paper_differences.md lists them.
`:tiny` is a CPU smoke run (32 px, 6 steps).
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
    elif arg == "freeform":
        # Free-form holes: DeepFill v2-style brush strokes covering 5-50 % of the image, with
        # DeepFill v2's 12-40 px brushes at 256 px (masks.py; the base config's stroke settings).
        c.mask.shape = "strokes"
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use ':tiny', ':freeform' or nothing.")
    return c
