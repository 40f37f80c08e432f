"""The landscape report's variant: a WGAN-GP local critic on a folder of landscape photos.

From "EE599 Landscape image inpainting based on GAN" (Jiang, Kan, Mangassarian, USC 2019), its
sections 4 (modifications) and 6 (future work):

* only the local discriminator is kept, and it is a WGAN-GP critic (Wasserstein loss plus the
  gradient penalty, lambda 10) instead of a real/fake classifier;
* losses (report 4a): D = E[D(G(x))] - E[D(x)] + gp, G = -E[D(G(x))] + 10 x MSE;
* RMSprop (the report: momentum optimizers made the WGAN unstable);
* the completion network pads with REFLECT instead of zeros (report 4c);
* MSE pre-training of the generator before the adversarial phase (report 4b);
* 256x256 crops of the photos, one square hole in the centre (report 1, 6a).

Launch (the photo folder is required; every JPEG/PNG/... below it is used, recursively):
  python -m glcic_jax.main --config=configs/landscapes.py --workdir=runs/landscapes \\
      --config.data.path=/data/landscapes
  python -m glcic_jax.main --config=configs/landscapes.py:tiny --workdir=/tmp/landscapes \\
      --config.data.path=/data/landscapes        # CPU smoke run, same switches, tiny sizes

Useful overrides:
  --config.mask.position=random         holes anywhere (the report's future work a)
  --config.loss.n_critic=3 --config.loss.n_generator=1   the report's first ratio (it diverged)
  --config.loss.n_critic=5 --config.loss.n_generator=1   the WGAN-GP paper's ratio
  --config.model.two_stage=True         coarse-to-fine generator (the report's future work b)
  --config.model.d_norm=none            no normalisation in the critic

Deliberate choices and differences:
* The critic uses layer normalisation (`model.d_norm='layer'`). The WGAN-GP paper (Gulrajani et
  al. 2017, 4) forbids batch normalisation in the critic: the penalty constrains the gradient of
  each sample's score with respect to that sample, and BatchNorm mixes samples in a batch. Layer
  norm normalises each sample on its own, as that paper recommends.
* The report also adds 10 x MSE to D's loss. That term does not depend on the critic's
  parameters, so it does not change the critic's gradient: we leave it out (the logged d_loss is
  the Wasserstein term plus the penalty).
* The report gives no batch size, learning rate or schedule lengths; the values below are ours.
  Its final ratio was one critic update followed by ten generator updates (it tried 3:1 first and
  the critic's loss diverged); `schedule.td` warms the critic up on the pre-trained generator.
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
