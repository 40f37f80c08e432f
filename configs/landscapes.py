"""The landscape report's variant: a WGAN-GP local critic on a folder of landscape photos.

COMMAND:
  python -m glcic_jax.main --config=configs/landscapes.py --workdir=runs/landscapes \
      --config.data.path=/data/landscapes

From "EE599 Landscape image inpainting based on GAN" (Jiang, Kan, Mangassarian, USC 2019): only a
local critic, WGAN-GP (lambda 10; D = E[D(G(x))] - E[D(x)] + gp, G = -E[D(G(x))] + 10 x MSE),
RMSprop, reflect padding, MSE pre-training, 256x256 crops with one square hole in the centre.
Ours: layer norm in the critic (WGAN-GP forbids batch norm), no MSE term in D's loss (it does
not depend on the critic), and the batch size, learning rate and schedule (the report gives none).
Every JPEG/PNG below data.path is used. Expect days on a GPU. Useful overrides:
  --config.mask.position=random                 holes anywhere (the report's future work a)
  --config.loss.n_critic=5 --config.loss.n_generator=1   the WGAN-GP paper's ratio
  --config.model.two_stage=True                 coarse-to-fine generator (future work b)
`:tiny` is a CPU smoke run with the same switches at tiny sizes.
"""

from glcic_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.data.source = "folder"  # landscape photos (the report: 145K from Flickr, 96,000 trained on)
    c.data.path = ""  # required: --config.data.path=DIR
    c.data.image_size = 256  # the report's 256x256 training crops
    c.data.resize_min = 256  # shortest side in [256, 384] (GLCIC's range; the report only crops)
    c.data.resize_max = 384
    c.mask.local_size = 128  # the local critic's crop (GLCIC's 128), it holds the hole
    c.mask.hole_min = 64  # square holes of 64..128 pixels a side
    c.mask.hole_max = 128
    c.mask.square = True  # the report: "a square blank mask"
    c.mask.position = (
        "center"  # the report's fixed hole in the centre; 'random' = its future work a
    )
    c.model.padding = "reflect"  # report 4c: reflect padding in the completion network
    c.model.discriminator = "local"  # local critic only, no global branch
    c.model.d_norm = "layer"  # no BatchNorm in a WGAN-GP critic (see above)
    c.loss.gan = "wgan-gp"  # Wasserstein critic loss + gradient penalty
    c.loss.gp_weight = 10.0  # WGAN-GP lambda
    c.loss.alpha = 1.0  # the adversarial terms unscaled, as in the report's formulas
    c.loss.mse_weight = 10.0  # G = -E[D(G(x))] + 10 x MSE
    c.loss.n_critic = 1  # the report's final ratio: 1 critic update ...
    c.loss.n_generator = 10  # ... then 10 generator updates
    c.optimizer.name = "rmsprop"  # the report's final optimizer, PyTorch-compatible settings
    c.optimizer.learning_rate = 1e-4
    c.optimizer.decay = 0.99  # PyTorch's alpha
    c.optimizer.eps = 1e-8  # added outside the square root, as PyTorch does
    c.batch_size = 32  # not given by the report (GLCIC: 96)
    c.schedule.tc = 30_000  # MSE pre-training (~10 epochs of the report's 96,000 photos)
    c.schedule.td = 1_000  # critic warm-up on the pre-trained generator
    c.num_train_steps = 200_000  # ~50 adversarial epochs, as long as the report trained
    c.checkpoint_every = 2_000
    c.sample_every = 2_000
    if arg == "tiny":
        c = config_lib.shrink_to_tiny(c)  # sizes and steps only: the switches above stay
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use ':tiny' or nothing.")
    return c
