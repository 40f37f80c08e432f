"""The config schema every `configs/*.py` starts from, the `:tiny` shrink, and validation.

Configs are `ml_collections.ConfigDict`s. `main.py` loads them with `lock_config=True`, so a
mistyped `--config.key=value` override fails instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections

from glcic_jax import masks


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all configs: the paper's Places2 settings."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds initialisation, the mask stream and the data order
    c.batch_size = 96  # global batch (GLCIC 4: 96), split across all devices
    c.num_train_steps = 500_000  # total iterations over all three phases (GLCIC: 500k)
    c.nan_policy = "stop"  # 'stop': halt on a non-finite loss/gradient; 'skip': skip and count

    c.schedule = ml_collections.ConfigDict()
    c.schedule.tc = 90_000  # phase 1 length: C alone on the hole MSE (GLCIC: Tc = 90k)
    c.schedule.td = 10_000  # phase 2 length: D alone (GLCIC: Td = 10k); phase 3 is the rest

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # 'tfds' (named dataset), 'folder' (JPEG/PNG tree), 'skimage' (samples)
    c.data.name = "places365_small"  # tfds dataset name (source=tfds)
    c.data.data_dir = ""  # tfds data_dir; '' = tfds default (~/tensorflow_datasets)
    c.data.path = ""  # root folder of images (source=folder)
    c.data.train_split = "train"  # tfds split for training
    c.data.eval_split = "validation"  # tfds split for evaluation and sample grids
    c.data.image_size = 256  # square training crop (the global discriminator's input)
    c.data.resize_min = 256  # shortest side resized to a random value in [resize_min, resize_max]
    c.data.resize_max = 384
    c.data.flip = True  # random horizontal flips
    c.data.shuffle_buffer = 10_000  # tf.data shuffle buffer (images)
    c.data.num_workers = 0  # folder/skimage decode threads per host; 0 = min(32, 2 x CPUs)
    c.data.eval_fraction = 0.05  # folder source: share of files held out (deterministic by name)
    c.data.mean_pixel_images = 2_000  # images sampled to estimate the mean pixel (cached)
    c.data.num_eval_images = 8  # fixed evaluation batch for sample grids

    c.mask = ml_collections.ConfigDict()
    c.mask.local_size = 128  # local discriminator crop around the hole (GLCIC: 128)
    c.mask.hole_min = 96  # hole sides are drawn uniformly from [hole_min, hole_max] (GLCIC 4)
    c.mask.hole_max = 128
    c.mask.max_holes = 1  # 1..max_holes rectangles per image, all inside the local window
    c.mask.position = "random"  # 'random' window, or 'center' (the landscape report's fixed hole)
    c.mask.square = False  # square holes: one side in [hole_min, hole_max] for height and width

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # activation dtype: 'float32' or 'bfloat16' (params stay float32)
    c.model.padding = "zero"  # completion network padding: 'zero' or 'reflect' (landscape report)
    c.model.d_activation = "relu"  # discriminator activation: 'relu' or 'leaky_relu'
    c.model.d_norm = "batch"  # discriminator norm: 'batch', 'layer' or 'none'
    c.model.discriminator = "context"  # 'context' (global + local) or 'local' (local critic only)
    c.model.two_stage = False  # add a refinement network after the completion network
    # Channel multiplier of every hidden layer of C and D (not in the paper; 1.0 = the paper's
    # networks). The quickstart uses a narrow network to learn more per CPU minute.
    c.model.width = 1.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adadelta"  # 'adadelta' (GLCIC), 'adam' or 'rmsprop'; same for C and D
    c.optimizer.learning_rate = 1.0  # adadelta: 1.0 (Torch); adam 2e-4; rmsprop 1e-4
    c.optimizer.rho = 0.9  # adadelta decay
    c.optimizer.eps = 1e-6  # adadelta 1e-6; use 1e-8 for adam / rmsprop
    c.optimizer.b1 = 0.9  # adam
    c.optimizer.b2 = 0.999  # adam
    c.optimizer.decay = 0.99  # rmsprop (PyTorch's alpha)

    c.loss = ml_collections.ConfigDict()
    c.loss.gan = "bce"  # 'bce' (GLCIC, on logits) or 'wgan-gp' (landscape report)
    c.loss.alpha = 0.0004  # adversarial weight (GLCIC: 0.0004); also scales D's loss
    c.loss.mse_weight = 1.0  # weight of the hole MSE in phase 3 (landscape WGAN: 10)
    c.loss.gp_weight = 10.0  # WGAN-GP lambda
    c.loss.n_critic = 1  # phase 3: D updates per cycle
    c.loss.n_generator = 1  # phase 3: C updates per cycle (1:1 uses the fused joint step)
    c.loss.perceptual_weight = 0.0  # VGG-16 feature loss on the hole region (0 = off)
    c.loss.vgg_weights = ""  # path to VGG-16 weights (.h5 or .npz), needed if perceptual_weight > 0

    c.log_every = 100  # console line and TensorBoard scalars every N steps
    c.sample_every = 5_000  # sample grid (PNG + TensorBoard) every N steps
    c.checkpoint_every = 5_000  # checkpoint every N steps (and at the end)
    c.keep_checkpoints = 3  # recent checkpoints kept
    c.keep_every = 0  # also keep every N-th step's checkpoint as a milestone (0 = none)
    c.eval_every = 0  # held-out metrics every N steps during training (0 = off)
    c.num_eval_batches = 4  # batches of the held-out split used by --mode=eval and eval_every
    # At the end of training, print --mode=eval's table (network vs mean fill, Telea,
    # Navier-Stokes) and where the sample grids and TensorBoard logs are (quickstart: True).
    c.final_eval = False
    return c


def shrink_to_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`:tiny`: a CPU smoke-run version of a config (small images, a few steps of each phase)."""
    c.batch_size = 4
    c.num_train_steps = 6
    c.schedule.tc = 2
    c.schedule.td = 2
    c.data.image_size = 32
    c.data.resize_min = 32
    c.data.resize_max = 40
    c.data.shuffle_buffer = 16
    c.data.mean_pixel_images = 16
    c.data.num_eval_images = 4
    c.mask.local_size = 16
    c.mask.hole_min = 6
    c.mask.hole_max = 12
    c.log_every = 1
    c.sample_every = 3
    c.checkpoint_every = 3
    c.num_eval_batches = 1
    return c


def validate(config, num_devices: int = 1) -> None:
    """Fail before training starts, with a message saying what to change."""
    size = int(config.data.image_size)
    if size % 4:
        raise ValueError(f"data.image_size ({size}) must be a multiple of 4.")
    masks.MaskSpec.from_config(config.mask).validate(size, size)
    if config.data.resize_min < size or config.data.resize_max < config.data.resize_min:
        raise ValueError(
            f"Need data.image_size ({size}) <= data.resize_min ({config.data.resize_min}) "
            f"<= data.resize_max ({config.data.resize_max})."
        )
    if config.data.source == "folder" and not config.data.path:
        raise ValueError(
            "data.source='folder' needs the photos' folder: add --config.data.path=DIR "
            "(JPEG/PNG/... files, searched recursively)."
        )
    if int(config.data.get("num_workers", 0)) < 0:
        raise ValueError(f"data.num_workers={config.data.num_workers} must be >= 0 (0 = auto).")
    if config.batch_size < 1 or config.batch_size % num_devices:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices}, e.g. --config.batch_size="
            f"{max(num_devices, config.batch_size // num_devices * num_devices)}."
        )
    if not 0.0 < float(config.model.get("width", 1.0)) <= 4.0:
        raise ValueError(f"model.width={config.model.width} must be in (0, 4] (1.0 = the paper's "
                         "networks).")
    if config.nan_policy not in ("stop", "skip"):
        raise ValueError(f"nan_policy={config.nan_policy!r} must be 'stop' or 'skip'.")
    if config.loss.n_critic < 1 or config.loss.n_generator < 1:
        raise ValueError("loss.n_critic and loss.n_generator must be at least 1.")
    if config.loss.perceptual_weight and not config.loss.vgg_weights:
        raise ValueError(
            "loss.perceptual_weight > 0 needs VGG-16 weights: set --config.loss.vgg_weights="
            "PATH (.h5 or .npz; see the README's 'Perceptual loss' section)."
        )
