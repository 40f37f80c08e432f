"""The config schema every `configs/*.py` starts from, the `:tiny` shrink, and validation.

Configs are `ml_collections.ConfigDict`s. `main.py` loads them with `lock_config=True`, so a
mistyped `--config.key=value` override fails instead of being silently ignored.

Configs are data: this module (and so every `configs/*.py`) imports only ml_collections and the
standard library, never JAX. The choices a string field accepts are listed here, as tuples of
names, so that the code using them (models, state, steps, masks, input_pipeline) and
`validate` share one list. `validate` checks every field's range and choice, and runs before
anything is written to a workdir.
"""

from __future__ import annotations

import math
import os

import ml_collections

from glcic_jax import errors

# The choices of each string field (the modules that implement them import these tuples).
DATA_SOURCES = ("tfds", "folder", "skimage")
MASK_POSITIONS = ("random", "center")
# Hole shapes (masks.py): the paper's rectangles, free-form brush strokes, either per sample, or
# the user's own mask images (mask.files).
MASK_SHAPES = ("box", "strokes", "mixed", "files")
DTYPES = ("float32", "bfloat16", "float16")
PADDING_MODES = ("zero", "reflect")
ACTIVATIONS = ("relu", "leaky_relu")
NORMS = ("batch", "layer", "none")
DISCRIMINATORS = ("context", "local")
OPTIMIZERS = ("adadelta", "adam", "rmsprop")
GAN_LOSSES = ("bce", "wgan-gp")
NAN_POLICIES = ("stop", "skip")
# How the completion network's input is built (masks.fill_holes explains both).
INPUT_NORMS = ("mean_fill", "mean_subtract")
FILLS = ("mean", "learned")  # the holes' initial content (models.FillNetwork for 'learned')
REAL_CROPS = ("hole", "random")  # where real images' local crops are cut (steps.py)

# Each choice field and its allowed values: what `validate` and the implementing modules check
# (`check_choice`), so that a wrong value reads the same wherever it is caught.
CHOICES = {
    "nan_policy": NAN_POLICIES,
    "data.source": DATA_SOURCES,
    "mask.position": MASK_POSITIONS,
    "mask.shape": MASK_SHAPES,
    "mask.real_crop": REAL_CROPS,
    "model.dtype": DTYPES,
    "model.padding": PADDING_MODES,
    "model.d_activation": ACTIVATIONS,
    "model.d_norm": NORMS,
    "model.discriminator": DISCRIMINATORS,
    "model.input_norm": INPUT_NORMS,
    "model.fill": FILLS,
    "optimizer.name": OPTIMIZERS,
    "loss.gan": GAN_LOSSES,
}


def choice_problem(dotted: str, value) -> str | None:
    """Why `value` is not a choice of the field `dotted` (None when it is one)."""
    choices = CHOICES[dotted]
    if value in choices:
        return None
    return f"{dotted}={value!r} must be one of {list(choices)}"


def check_choice(dotted: str, value) -> None:
    """Raise ConfigError unless `value` is one of the field's CHOICES."""
    problem = choice_problem(dotted, value)
    if problem:
        raise errors.ConfigError(problem + ".")


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all configs: the paper's Places2 settings (plus flips, see data.flip)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds initialisation, the mask stream and the data order
    c.batch_size = 96  # global batch (GLCIC 4: 96), split across all devices
    c.num_train_steps = 500_000  # total iterations over all three phases (GLCIC: 500k)
    c.nan_policy = "stop"  # 'stop': halt on a non-finite loss/gradient; 'skip': skip and count
    # Fine-tuning: start a new workdir from another workdir's completion network (a training run
    # or the authors' converted model) with a fresh discriminator, at phase init_phase (1, 2 or 3;
    # 2 = D warm-up first). Ignored once the workdir has its own checkpoint (resume).
    c.init_from = ""
    c.init_phase = 2

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
    c.data.flip = True  # random horizontal flips (ours, not the paper's; places2.py: off)
    # Per-channel gains, and a random channel order with color_permute (data/images.py; ours, for
    # the quickstart's few photos: not in the paper or the reports). The mean pixel is the
    # photos', without it.
    c.data.color_augment = False
    c.data.color_permute = True  # with color_augment: also shuffle the channels (quickstart: off)
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
    c.mask.real_crop = "hole"  # real images' local crop: 'hole' (its window) or 'random' (PyTorch)
    # Hole shape: 'box' (GLCIC's rectangles, the settings above), 'strokes' (free-form brush
    # strokes, after DeepFill v2: masks.py), 'mixed' (box with probability box_prob, else
    # strokes, per sample) or 'files' (the user's mask images in the folder `files`, white =
    # hole, randomly cropped, flipped and rotated to the training size).
    c.mask.shape = "box"
    c.mask.max_strokes = 8  # strokes: up to this many, added until the hole reaches its area
    c.mask.stroke_width_min = 12.0  # strokes: brush widths in pixels at data.image_size ...
    c.mask.stroke_width_max = 40.0  # ... (DeepFill v2's 12-40 at 256 px), before the area fit
    c.mask.area_min = 0.05  # strokes: each hole's area, a fraction of the image, is drawn ...
    c.mask.area_max = 0.5  # ... uniformly from [area_min, area_max]
    c.mask.box_prob = 0.5  # mixed: probability that a sample's hole is a box
    c.mask.files = ""  # files: folder of mask images (white = hole, any size)

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # activation dtype: 'float32' or 'bfloat16' (params stay float32)
    c.model.padding = "zero"  # completion network padding: 'zero' or 'reflect' (landscape report)
    c.model.d_activation = "relu"  # discriminator activation: 'relu' or 'leaky_relu'
    c.model.d_norm = "batch"  # discriminator norm: 'batch', 'layer' or 'none'
    c.model.discriminator = "context"  # 'context' (global + local) or 'local' (local critic only)
    c.model.two_stage = False  # add a refinement network after the completion network
    # Completion input: 'mean_fill' (hole = mean pixel; ours) or 'mean_subtract' (image minus the
    # mean pixel, hole = 0: the authors' inpaint.lua, set by glcic_jax.convert); see masks.py.
    c.model.input_norm = "mean_fill"
    c.model.fill = "mean"  # holes' initial content: 'mean' pixel (GLCIC) or 'learned' (a ConvNet)
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
    # C's learning rate at the end of phase 1 as a fraction of learning_rate: cosine from 1 over
    # phase 1, then constant (ours, for the CPU quickstart). 1.0 = constant, as in the paper.
    c.optimizer.g_lr_final = 1.0

    c.loss = ml_collections.ConfigDict()
    c.loss.gan = "bce"  # 'bce' (GLCIC, on logits) or 'wgan-gp' (landscape report)
    c.loss.alpha = 0.0004  # adversarial weight (GLCIC: 0.0004); scales D's BCE in phase 3 only
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


def upgrade(stored) -> ml_collections.ConfigDict:
    """A config stored by any version (a checkpoint's), as today's schema: fields it lacks get
    `base_config()`'s values. A field added later must default to the behaviour before it
    existed, so that an old checkpoint means what it meant; everything reading a config can
    then read every field directly. Fields this version no longer has are kept."""
    def merged(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            out[key] = merged(base[key], value) if both else value
        return out

    stored = stored.to_dict() if isinstance(stored, ml_collections.ConfigDict) else stored
    return ml_collections.ConfigDict(merged(base_config().to_dict(), dict(stored)))


def phase_starts(config) -> tuple[int, int, int]:
    """The first step of phases 1, 2 and 3: (0, Tc, Tc + Td). Phase 1 trains the completion
    network alone, phase 2 the discriminator alone, phase 3 both (GLCIC's schedule)."""
    tc, td = int(config.schedule.tc), int(config.schedule.td)
    return 0, tc, tc + td


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
    c.mask.stroke_width_min = 2.0  # DeepFill v2's 12-40 px at 256, scaled to 32 px
    c.mask.stroke_width_max = 5.0
    c.log_every = 1
    c.sample_every = 3
    c.checkpoint_every = 3
    c.num_eval_batches = 1
    # A quarter of the paper's channels (models.scaled): the same layers, dilations and code
    # paths at ~1/16 of the arithmetic. A smoke run checks the pipeline, not the network's
    # capacity (at 32 px it is not the paper's network anyway); test_models checks the paper's
    # widths. Our judgement: it takes ~30 % off every tiny run's CPU time.
    c.model.width = 0.25
    return c


def mask_problems(mask_cfg, height: int, width: int) -> list[str]:
    """Why holes of `mask_cfg` cannot be drawn in an H x W image ([] when they can)."""
    local, lo, hi = int(mask_cfg.local_size), int(mask_cfg.hole_min), int(mask_cfg.hole_max)
    position, max_holes = str(mask_cfg.position), int(mask_cfg.max_holes)
    problems = [p for p in [choice_problem("mask.position", position)] if p]
    if not 1 <= lo <= hi:
        problems.append(f"need 1 <= mask.hole_min ({lo}) <= mask.hole_max ({hi})")
    if hi > local:
        problems.append(
            f"mask.hole_max ({hi}) is larger than the local crop mask.local_size ({local}): "
            f"holes must fit in the local window"
        )
    if local > min(height, width):
        problems.append(
            f"mask.local_size ({local}) is larger than the image ({height}x{width}): lower it "
            f"or raise data.image_size"
        )
    if max_holes < 1:
        problems.append(f"mask.max_holes ({max_holes}) must be at least 1")
    # `mask_cfg` is a config's mask section or a masks.MaskSpec: the same field names.
    shape = str(mask_cfg.shape)
    problems += [p for p in [choice_problem("mask.shape", shape)] if p]
    if shape in ("strokes", "mixed"):
        a_lo, a_hi = float(mask_cfg.area_min), float(mask_cfg.area_max)
        if not 0.0 <= a_lo <= a_hi < 1.0:
            problems.append(f"need 0 <= mask.area_min ({a_lo}) <= mask.area_max ({a_hi}) < 1 "
                            f"(fractions of the image)")
        w_lo, w_hi = float(mask_cfg.stroke_width_min), float(mask_cfg.stroke_width_max)
        if not 0.0 < w_lo <= w_hi:
            problems.append(f"need 0 < mask.stroke_width_min ({w_lo}) <= "
                            f"mask.stroke_width_max ({w_hi})")
        if int(mask_cfg.max_strokes) < 1:
            problems.append(f"mask.max_strokes ({int(mask_cfg.max_strokes)}) must be at least 1")
    if shape == "mixed" and not 0.0 <= float(mask_cfg.box_prob) <= 1.0:
        problems.append(f"mask.box_prob ({float(mask_cfg.box_prob)}) must be in [0, 1]")
    if shape == "files" and not isinstance(mask_cfg, tuple):  # a MaskSpec has no folder
        folder = str(mask_cfg.files)
        if not folder:
            problems.append("mask.shape='files' needs the masks' folder: add "
                            "--config.mask.files=DIR (images, white = hole)")
        elif not os.path.isdir(folder):
            problems.append(f"mask.files={folder!r} is not a folder")
    return problems


def check_mask(mask_cfg, height: int, width: int) -> None:
    """Raise a clear ValueError when the config's holes cannot be drawn in an H x W image."""
    problems = mask_problems(mask_cfg, height, width)
    if problems:
        raise errors.ConfigError("Impossible hole settings: " + "; ".join(problems) + ".")


class _Problems:
    """Collects 'what to change' phrases for fields out of their range or choices; a field the
    config lacks is not checked (validate runs on today's schema)."""

    def __init__(self, config):
        self.config = config
        self.out: list[str] = []

    def get(self, dotted: str, default=None):
        node = self.config
        for part in dotted.split("."):
            if part not in node:
                return default
            node = node[part]
        return node

    def choice(self, dotted: str, lower: bool = False) -> None:
        value = self.get(dotted)
        if value is not None and choice_problem(dotted, str(value).lower() if lower else value):
            self.out.append(f"{dotted}={value!r} must be one of {list(CHOICES[dotted])}")

    def _number(self, dotted: str, ok, phrase: str) -> None:
        value = self.get(dotted)
        if value is None:
            return
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            self.out.append(f"{dotted}={value!r} must be {phrase}")

    def at_least(self, dotted: str, low, note: str = "") -> None:
        self._number(dotted, lambda v: v >= low, f">= {low}{note}")

    def in_range(self, dotted: str, low: float, high: float, high_open: bool = True) -> None:
        self._number(dotted, lambda v: low <= v and (v < high if high_open else v <= high),
                     f"in [{low}, {high}{')' if high_open else ']'}")

    def positive(self, dotted: str) -> None:
        self._number(dotted, lambda v: v > 0, "> 0")


def _run_problems(p: _Problems, num_devices: int) -> None:
    """Run length, bookkeeping and the batch."""
    p.at_least("seed", 0)
    p.at_least("num_train_steps", 1)
    p.choice("nan_policy")
    p.at_least("schedule.tc", 0)
    p.at_least("schedule.td", 0)
    for dotted in ("log_every", "sample_every", "checkpoint_every", "num_eval_batches"):
        p.at_least(dotted, 1)
    # Orbax's LatestN(0) deletes every checkpoint, also those of earlier runs.
    p.at_least("keep_checkpoints", 1, " (0 would delete every checkpoint, old ones included)")
    p.at_least("keep_every", 0, " (0 = no milestones)")
    p.at_least("eval_every", 0, " (0 = off)")
    init_phase = p.get("init_phase")
    if init_phase is not None and init_phase not in (1, 2, 3):
        p.out.append(f"init_phase={init_phase!r} must be 1, 2 or 3")
    batch = p.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        p.out.append(f"batch_size={batch!r} must be >= 1")
    elif batch % num_devices:
        p.out.append(
            f"batch_size={batch} is not divisible by the {num_devices} devices; use a multiple "
            f"of {num_devices}, e.g. --config.batch_size="
            f"{max(num_devices, batch // num_devices * num_devices)}"
        )


def _data_problems(p: _Problems) -> None:
    """The data source, image sizes and holes."""
    d = p.config.data
    p.choice("data.source")
    if d.source == "folder" and not d.get("path"):
        p.out.append("data.source='folder' needs the photos' folder: add --config.data.path=DIR "
                     "(JPEG/PNG/... files, searched recursively)")
    if d.source == "tfds" and not d.get("name"):
        p.out.append("data.source='tfds' needs a dataset: add --config.data.name=NAME")
    size = int(d.image_size)
    if size < 4 or size % 4:
        p.out.append(f"data.image_size ({size}) must be a positive multiple of 4")
    if d.resize_min < size or d.resize_max < d.resize_min:
        p.out.append(f"need data.image_size ({size}) <= data.resize_min ({d.resize_min}) "
                     f"<= data.resize_max ({d.resize_max})")
    p.at_least("data.shuffle_buffer", 1)
    p.at_least("data.num_workers", 0, " (0 = auto)")
    p.in_range("data.eval_fraction", 0.0, 1.0)
    p.at_least("data.mean_pixel_images", 1)
    p.at_least("data.num_eval_images", 1)
    p.out.extend(mask_problems(p.config.mask, size, size))
    p.choice("mask.real_crop")


def _model_problems(p: _Problems) -> None:
    """The networks and the optimizer."""
    for dotted in ("model.dtype", "model.padding", "model.d_activation", "model.d_norm",
                   "model.discriminator", "model.input_norm", "model.fill"):
        p.choice(dotted)
    width = p.get("model.width")
    if width is not None and not (isinstance(width, (int, float)) and 0.0 < width <= 4.0):
        p.out.append(f"model.width={width!r} must be in (0, 4] (1.0 = the paper's networks)")
    p.choice("optimizer.name", lower=True)
    p.positive("optimizer.learning_rate")
    p.positive("optimizer.eps")
    for dotted in ("optimizer.rho", "optimizer.b1", "optimizer.b2", "optimizer.decay"):
        p.in_range(dotted, 0.0, 1.0)
    p.in_range("optimizer.g_lr_final", 0.0, 1.0, high_open=False)
    p.positive("optimizer.g_lr_final")


def _loss_problems(p: _Problems) -> None:
    """The losses, and the VGG weights a perceptual loss needs (checked before any work)."""
    p.choice("loss.gan")
    for name in ("alpha", "mse_weight", "gp_weight", "perceptual_weight"):
        p.at_least(f"loss.{name}", 0)
    p.at_least("loss.n_critic", 1)
    p.at_least("loss.n_generator", 1)
    weights = p.get("loss.vgg_weights")
    if p.get("loss.perceptual_weight", 0) and not weights:
        p.out.append("loss.perceptual_weight > 0 needs VGG-16 weights: set "
                     "--config.loss.vgg_weights=PATH (.h5 or .npz; see docs/variants.md, "
                     "'Perceptual loss')")
    elif p.get("loss.perceptual_weight", 0) and not os.path.isfile(weights):
        p.out.append(f"loss.vgg_weights={weights!r} is not a file: give the path of the VGG-16 "
                     f"weights (.h5 or .npz; see docs/variants.md, 'Perceptual loss')")


def _problems(config, num_devices: int) -> list[str]:
    """Every field out of its range or choices, as 'what to change' phrases."""
    p = _Problems(config)
    _run_problems(p, num_devices)
    _data_problems(p)
    _model_problems(p)
    _loss_problems(p)
    return p.out


def validate(config, num_devices: int = 1) -> None:
    """Check every field's range and choice; raise one ConfigError naming all that are wrong.

    Called before anything is written to a workdir (train and eval), so a bad setting never
    leaves a half-made workdir behind.
    """
    problems = _problems(config, num_devices)
    if problems:
        raise errors.ConfigError("Bad config: " + "; ".join(problems) + ".")
