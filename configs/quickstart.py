"""Quickstart: GLCIC on scikit-image's sample photos, on a CPU, with no download.

COMMAND:
  python -m glcic_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Trains all three phases in 1,500 steps of batch 16 (Tc 1,200, Td 80) on recoloured 64x64 crops of
ten photos scikit-image ships, with two held out (chelsea, rocket) for the sample grids and the
held-out hole PSNR printed every 100 steps. Expect several minutes on a 2-core CPU
(benchmarks/time_quickstart.py measures it on yours); at the end it prints the held-out table
(network vs mean fill, Telea, Navier-Stokes) and where the sample grid and TensorBoard logs are.
The narrow network (an eighth of the paper's channels) fills holes with smooth, plausible colour,
not continued edges. The choices differ from the paper's for a 2-core CPU: see the comments below
and docs/history.md for the measurements behind them. `:tiny` is the 6-step smoke run the tests
use. A longer run (e.g. on a GPU): --config.num_train_steps=20000 --config.schedule.tc=12000
--config.schedule.td=2000.
`:strokes` trains on free-form brush strokes covering 5-50 % of each crop instead of rectangles
(docs/freeform.md):
  python -m glcic_jax.main --config=configs/quickstart.py:strokes --workdir=runs/quickstart_strokes
"""

from glcic_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.data.source = "skimage"  # scikit-image sample photos, in memory
    if arg == "tiny":
        return config_lib.shrink_to_tiny(c)
    if arg not in (None, "", "strokes"):
        raise ValueError(f"Unknown config argument {arg!r}; use ':tiny', ':strokes' or nothing.")
    c.data.image_size = 64
    c.data.resize_min = 64  # photos shrunk so a crop shows a recognisable patch
    c.data.resize_max = 128
    c.data.mean_pixel_images = 256
    c.data.num_eval_images = 6
    # Random per-channel gains (ours): trained on the photos as they are, the network learned
    # their palette and stayed near the mean fill; without shuffling the channels, which
    # learned the colours around a hole more slowly (docs/history.md).
    c.data.color_augment = True
    c.data.color_permute = False
    c.mask.local_size = 32
    c.mask.hole_min = 12
    c.mask.hole_max = 24
    c.model.width = 0.125  # an eighth of the paper's channels: learns most per CPU second
    c.model.padding = "reflect"  # the landscape report's: the wide dilated taps leave 64 px
    c.optimizer.name = "adam"  # Adadelta stayed below the mean fill for 300 steps here
    c.optimizer.learning_rate = 1e-3
    c.optimizer.eps = 1e-8
    c.optimizer.g_lr_final = 0.1  # C's rate: cosine to 1e-4 over phase 1 (steadier PSNR)
    c.batch_size = 16
    c.num_train_steps = 1500
    c.schedule.tc = 1200
    c.schedule.td = 80
    c.log_every = 50
    c.sample_every = 300
    c.checkpoint_every = 300
    c.eval_every = 100
    c.num_eval_batches = 2  # 32 held-out crops (of chelsea and rocket) with fixed holes
    c.final_eval = True
    if arg == "strokes":
        # Free-form holes: brush strokes over 5-50 % of the crop, DeepFill v2's 12-40 px
        # brushes at 256 px scaled to 64 px (masks.py).
        c.mask.shape = "strokes"
        c.mask.stroke_width_min = 3.0
        c.mask.stroke_width_max = 10.0
    return c
