"""Quickstart: train GLCIC on scikit-image's sample photos, on CPU, in about ten minutes.

Launch (no download; at the end it prints the held-out table: network vs mean fill vs OpenCV):
  python -m glcic_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Random 64x64 crops of ten photos that scikit-image ships (four in colour, six grey), each photo
first shrunk so its shortest side is 64..128 px, every crop recoloured (a random gain per
channel); two colour photos, chelsea and rocket, are held out for the sample grids, eval_every and
the final table; holes of 12-24 px; all three phases in 1,500 steps of batch 16 (Tc 1,200, Td 80,
joint 220). Choices for a 2-core CPU, not the paper's (which the other configs keep). The
measurements behind them are held-out hole PSNRs of phase-1 runs (benchmarks/phase1_ablation.py;
benchmarks/results/quickstart_ablation*.json):

* data.color_augment (gains in [0.25, 1], glcic_jax/data/images.py): the network trained on the
  photos as they are learned their palette and stayed within 1 dB of the mean-pixel fill (the old
  seven photos: 15.0-16.5 dB for 600 steps, fill 15.5); recoloured crops make colour a property
  of each crop. The mean pixel is the photos' own; held-out crops are never recoloured.
  data.color_permute=False: the channels keep their order. Shuffling them too (this config until
  2026-12-03) learned the colours around a hole more slowly (after 600 steps: 21.04 and 20.86 dB
  against 21.45 and 21.86, two seeds each) and filled the cat's fur olive instead of brown.
* optimizer.g_lr_final=0.1: C's rate falls from 1e-3 to 1e-4 along a cosine over phase 1; at a
  constant 1e-3 the held-out PSNR swung by 1-2 dB from one evaluation to the next.
* model.width=0.125 and batch 16: every hidden layer of C and D at an eighth of the paper's
  channels (~1/64 of the FLOPs of the wide layers). Per training image the eighth learns about as
  much as the quarter (20.86-21.04 dB against 20.93 after 600 steps of batch 16) at 0.4x the CPU
  time (142-155 s against 364 s); the former quickstart (quarter width, batch 8) had 19.27 dB
  after 600 steps and 200 CPU s. Batch 32 for 400 steps did the same as batch 16 for 600
  (21.08 dB); a sixteenth (width 0.0625) learned far less (16.89 dB). The issue that set this
  quickstart measured a quarter-width network at 32 px reaching the full one's held-out hole
  PSNR 11x faster.
* 64 px crops instead of 32: the dilated layers (taps up to 64 px apart) see image content, not
  only padding, so the model also holds up on larger photos.
* model.padding='reflect' (the landscape report's option): at 64 px the widest dilated taps still
  fall outside the image; reflected content there is what a larger photo shows, zeros are not.
* Adam at 1e-3 (eps 1e-8) instead of the paper's Adadelta: measured on this config's first form
  (the old seven photos, no recolouring; busy shared 2-core machine, benchmarks/results/),
  Adadelta's held-out hole PSNR stayed below the mean-pixel fill's 15.5 dB for 300 steps (13.96,
  13.71, 14.02 dB at steps 100-300); Adam was at 16.1 dB after 50 steps.

Held-out hole PSNR every 100 steps goes to the console and TensorBoard. For a longer run (e.g. on
a GPU): --config.num_train_steps=20000 --config.schedule.tc=12000 --config.schedule.td=2000.
`:tiny` is the CPU smoke-test version (32 px, a quarter of the channels, 6 steps) the tests use.
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
    c.data.color_augment = True  # random per-channel gains: see the docstring
    c.data.color_permute = False  # ... without shuffling the channels (see the docstring)
    c.mask.local_size = 32
    c.mask.hole_min = 12
    c.mask.hole_max = 24
    c.model.width = 0.125
    c.model.padding = "reflect"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.eps = 1e-8
    c.optimizer.g_lr_final = 0.1  # C's rate: cosine to 1e-4 over phase 1 (see the docstring)
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
