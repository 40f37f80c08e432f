"""Held-out evaluation: L1, PSNR and SSIM of the model against classical baselines.

`python -m glcic_jax.main --config=... --workdir=DIR --mode=eval` restores DIR's latest checkpoint,
completes a fixed held-out set (`num_eval_batches * batch_size` images of the config's eval split)
under several fixed mask sets (`mask_sets`: the config's boxes, brush strokes binned by hole area
0-10 % ... 40-50 %, and the mask files with mask.shape='files'; each drawn from a fixed key, so
every run and every checkpoint sees the same inputs) and scores five methods on each set:

  model              the completion network (running BatchNorm statistics), composited
  model+postprocess  the same, then GLCIC's fast marching + Poisson blending (`postprocess.py`)
  mean_fill          holes filled with the dataset's mean pixel (the network's input)
  telea              OpenCV fast marching (`cv2.inpaint`, INPAINT_TELEA, radius 5)
  navier_stokes      OpenCV Navier-Stokes (`cv2.inpaint`, INPAINT_NS, radius 5)

Metrics follow MMagic's conventions for its Global&Local numbers: uint8 results, values in
[0, 255], computed per image and then averaged over images.

  l1          mean |pred - gt| over all pixels and channels
  psnr        10 log10(255^2 / MSE), MSE over all pixels and channels; identical images (MSE = 0)
              score PSNR_CAP (100 dB) instead of MMagic's inf, so averages stay finite
  ssim        Wang et al. 2004: Gaussian window (sigma 1.5, 11 x 11), K1 0.01, K2 0.03, data
              range 255, per channel; the mean of the SSIM map over the pixels at least 5 from
              the border (as MMagic and skimage), averaged over channels
  *_hole      the same inside the hole only: L1 and PSNR over hole pixels x channels; SSIM is the
              mean of the SSIM map (computed on the whole image, reflect-padded at the border as
              skimage does) over hole pixels x channels

Outside the hole every method returns the input exactly, so whole-image numbers are the hole
numbers diluted by the known pixels. Results go to `WORKDIR/eval_<step>.json` (`results`: the
boxes set; `mask_sets`: every set), TensorBoard (`eval/<set>/<method>/<metric>`) and a table on
the console (a row per set and method); `WORKDIR/eval_<step>.png` shows the first PICTURE_ROWS
held-out images with the boxes as each method completed them, side by side (drawn at least
128 px wide). `TrainingEval` computes the model's metrics during training (`config.eval_every`).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import jax
import numpy as np

from glcic_jax import (config_lib, errors, inference, input_pipeline, leftovers, masks, models,
                       postprocess)
from glcic_jax.inference import generator_variables, quantize_uint8

PSNR_CAP = 100.0  # dB reported for identical images (MMagic reports inf)
INPAINT_RADIUS = 5  # OpenCV baselines' neighbourhood radius (pixels)
EVAL_MASK_SEED = masks.EVAL_MASK_SEED  # the held-out holes: fixed across runs and checkpoints
METRICS = ("l1", "psnr", "ssim", "l1_hole", "psnr_hole", "ssim_hole")
METHODS = ("model", "model+postprocess", "mean_fill", "telea", "navier_stokes")
PICTURE_ROWS = 8  # held-out images in WORKDIR/eval_<step>.png

# SSIM constants (Wang et al. 2004) for data range 255.
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # 3.5 sigma: an 11 x 11 window, as skimage's gaussian_weights=True
_SSIM_BORDER = 5  # (11 - 1) // 2: pixels whose window leaves the image
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


# ----------------------------------------------------------------------------------------------
# Metrics (numpy; images [..., H, W, C] in [0, 255], masks [..., H, W] or [..., H, W, 1])


def _as_float(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _hole(mask, like: np.ndarray) -> np.ndarray:
    """Hole mask broadcast to the images' [..., H, W, C] shape, as float64 {0, 1}."""
    m = _as_float(mask)
    if m.ndim == like.ndim - 1:
        m = m[..., None]
    return np.broadcast_to((m > 0.5).astype(np.float64), like.shape)


def l1(pred, target, mask=None) -> np.ndarray:
    """Mean absolute error in [0, 255] per image (over the hole only when `mask` is given)."""
    pred, target = _as_float(pred), _as_float(target)
    err = np.abs(pred - target)
    axes = tuple(range(-3, 0))
    if mask is None:
        return err.mean(axis=axes)
    m = _hole(mask, err)
    return (err * m).sum(axis=axes) / np.maximum(m.sum(axis=axes), 1.0)


def psnr(pred, target, mask=None) -> np.ndarray:
    """10 log10(255^2 / MSE) per image (MSE over the hole if `mask` is given), at most PSNR_CAP."""
    pred, target = _as_float(pred), _as_float(target)
    err = np.square(pred - target)
    axes = tuple(range(-3, 0))
    if mask is None:
        mse = err.mean(axis=axes)
    else:
        m = _hole(mask, err)
        mse = (err * m).sum(axis=axes) / np.maximum(m.sum(axis=axes), 1.0)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(value, PSNR_CAP)


def ssim_map(pred, target) -> np.ndarray:
    """Per-pixel, per-channel SSIM of [..., H, W, C] images in [0, 255] (Gaussian 11 x 11, 1.5)."""
    from scipy import ndimage  # local: scipy comes with scikit-image; only evaluation needs it

    x, y = _as_float(pred), _as_float(target)
    sigma = [0.0] * (x.ndim - 3) + [_SSIM_SIGMA, _SSIM_SIGMA, 0.0]
    blur = functools.partial(ndimage.gaussian_filter, sigma=sigma, truncate=_SSIM_TRUNCATE,
                             mode="reflect")
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / (
        (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    )


def ssim(pred, target, mask=None) -> np.ndarray:
    """SSIM per image: the map's mean away from the border, or over the hole if `mask` is given."""
    smap = ssim_map(pred, target)
    axes = tuple(range(-3, 0))
    if mask is None:
        b = _SSIM_BORDER
        if min(smap.shape[-3:-1]) <= 2 * b:
            raise errors.ConfigError(f"SSIM needs images larger than {2 * b} pixels per side.")
        return smap[..., b:-b, b:-b, :].mean(axis=axes)
    m = _hole(mask, smap)
    return (smap * m).sum(axis=axes) / np.maximum(m.sum(axis=axes), 1.0)


def image_metrics(pred, target, mask) -> dict[str, np.ndarray]:
    """All six metrics, per image: pred/target [B, H, W, C] in [0, 255], mask [B, H, W(, 1)]."""
    return {
        "l1": l1(pred, target),
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "l1_hole": l1(pred, target, mask),
        "psnr_hole": psnr(pred, target, mask),
        "ssim_hole": ssim(pred, target, mask),
    }


def mean_metrics(pred, target, mask) -> dict[str, float]:
    """`image_metrics` averaged over the images."""
    return {k: float(np.mean(v)) for k, v in image_metrics(pred, target, mask).items()}


# ----------------------------------------------------------------------------------------------
# Methods: each maps (uint8 images [B, H, W, 3], hole mask bool [B, H, W]) -> uint8 images


def paste_into_hole(images: np.ndarray, filled: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Filled pixels inside the hole, the input's outside it: an exact select on uint8 images
    with a bool hole [B, H, W] (`models.blend_into_hole` is the float blend inside the steps)."""
    return np.where(hole[..., None], filled, images)


def mean_fill(images: np.ndarray, hole: np.ndarray, mean_pixel) -> np.ndarray:
    fill = quantize_uint8(np.asarray(mean_pixel, np.float32).reshape(1, 1, 1, 3))
    return paste_into_hole(images, np.broadcast_to(fill, images.shape), hole)


def opencv_inpaint(images: np.ndarray, hole: np.ndarray, method: str,
                   radius: int = INPAINT_RADIUS) -> np.ndarray:
    """cv2.inpaint ('telea' or 'navier_stokes') of each image; the hole is zeroed before."""
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "navier_stokes": cv2.INPAINT_NS}[method]
    out = np.empty_like(images)
    for i, (img, m) in enumerate(zip(images, hole)):
        masked = np.where(m[..., None], np.uint8(0), img)
        out[i] = cv2.inpaint(masked, m.astype(np.uint8) * 255, radius, flag)
    return paste_into_hole(images, out, hole)


def eval_masks(config, num: int, height: int, width: int) -> np.ndarray:
    """The held-out holes of the config's own hole shape: bool [num, H, W], drawn from a fixed
    key (fixed crops of the mask files with mask.shape='files')."""
    if config.mask.shape == "files":
        return input_pipeline.fixed_file_masks(config, num)
    m = masks.fixed_eval_masks(config, num, height, width)
    return np.asarray(jax.device_get(m.mask))[..., 0] > 0.5


# The mask sets of --mode=eval: the config's boxes, and brush strokes binned by hole area (the
# bins of the free-form literature, e.g. DeepFill v2 and LaMa report by area). Strokes use
# DeepFill v2's 12-40 px brushes at 256 px, scaled to the image size, whatever the config trains
# with: every config and checkpoint of one image size is scored on the same holes.
STROKE_BINS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5))
EVAL_STROKE_WIDTHS = (12.0, 40.0)  # pixels at EVAL_STROKE_REFERENCE px
EVAL_STROKE_REFERENCE = 256


def stroke_set_name(lo: float, hi: float) -> str:
    return f"strokes_{round(100 * lo):02d}-{round(100 * hi):02d}"


def mask_sets(config, num: int, height: int, width: int) -> dict[str, np.ndarray]:
    """{set name: bool [num, H, W] holes} for --mode=eval: 'boxes' (the config's rectangles,
    the set scored before free-form holes existed), one stroke set per STROKE_BINS entry, and
    'files' with mask.shape='files'. Fixed seeds: identical in every run and checkpoint."""
    def holes(m):
        return np.asarray(jax.device_get(m.mask))[..., 0] > 0.5

    sets = {"boxes": holes(masks.fixed_eval_masks(config, num, height, width, shape="box"))}
    scale = min(height, width) / EVAL_STROKE_REFERENCE
    strokes = dict(shape="strokes", max_strokes=8,
                   stroke_width_min=max(1.0, EVAL_STROKE_WIDTHS[0] * scale),
                   stroke_width_max=max(1.0, EVAL_STROKE_WIDTHS[1] * scale))
    for i, (lo, hi) in enumerate(STROKE_BINS):
        sets[stroke_set_name(lo, hi)] = holes(masks.fixed_eval_masks(
            config, num, height, width, seed_offset=i + 1, area_min=lo, area_max=hi, **strokes))
    if config.mask.shape == "files":
        sets["files"] = input_pipeline.fixed_file_masks(config, num)
    return sets


def num_eval_images(config) -> int:
    return int(config.num_eval_batches) * int(config.batch_size)


# ----------------------------------------------------------------------------------------------
# During training: the model's metrics every config.eval_every steps


class TrainingEval:
    """The model's held-out metrics during training (`config.eval_every`), for TensorBoard.

    Loads the held-out images and draws their holes once; each call completes them with the
    current state (in chunks of the per-device batch) and returns `{'eval/l1': ..., ...}`.
    Every process calls it (the state may span hosts); all compute the same numbers. With the
    training `mesh`, inputs and outputs are replicated over it.
    """

    def __init__(self, config, nets, mesh=None):
        norm = inference.input_norm_of(config)
        self.images = input_pipeline.eval_images(config, num_eval_images(config))
        h, w = self.images.shape[1:3]
        self.hole = eval_masks(config, len(self.images), h, w)
        self.chunk = max(1, min(len(self.images), int(config.batch_size) // jax.device_count()))
        if mesh is None:
            self._complete = inference.completion_fn(nets.generator, norm)
        else:  # the training mesh: inputs and outputs replicated, as the training samples are
            rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            self._complete = jax.jit(
                functools.partial(inference.complete_images, nets.generator, input_norm=norm),
                in_shardings=rep, out_shardings=rep,
                compiler_options=models.compiler_options(float(config.model.width),
                                                          inference=True))

    def completions(self, state) -> np.ndarray:
        """uint8 completions of the held-out images by the current state."""
        return inference.complete_in_chunks(self._complete, generator_variables(state),
                                            state.mean_pixel, self.images, self.hole, self.chunk)

    def __call__(self, state) -> dict[str, float]:
        pred = self.completions(state)
        return {f"eval/{k}": v for k, v in mean_metrics(pred, self.images, self.hole).items()}


# ----------------------------------------------------------------------------------------------
# --mode=eval


def format_sets_table(sets: dict[str, dict[str, dict[str, float]]],
                      fractions: dict[str, float]) -> str:
    """One table over every mask set: a row per (set, method), the set's hole fraction too."""
    header = "| mask set | hole % | method | " + " | ".join(METRICS) + " |"
    rule = "| --- | ---: | --- | " + " | ".join("---:" for _ in METRICS) + " |"
    rows = []
    for set_name, results in sets.items():
        for name, vals in results.items():
            cells = [f"{vals[k]:.3f}" if k.startswith("ssim") else f"{vals[k]:.2f}"
                     for k in METRICS]
            rows.append(f"| {set_name} | {100 * fractions[set_name]:.1f} | {name} | "
                        + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width (and Markdown-compatible) table: one row per method."""
    header = "| method | " + " | ".join(METRICS) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in METRICS) + " |"
    rows = []
    for name, vals in results.items():
        cells = [f"{vals[k]:.3f}" if k.startswith("ssim") else f"{vals[k]:.2f}" for k in METRICS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def _complete_every_way(completer, images: np.ndarray, hole: np.ndarray, batch_size: int):
    """`(outputs, seconds)`: the held-out images completed by the network and every baseline
    (METHODS), and how long each took."""
    timings = {}

    def timed(name, fn):
        t = time.time()
        out = fn()
        timings[name] = time.time() - t
        return out

    mean_px = completer.mean_pixel
    chunk = min(len(images), batch_size)
    model = timed("model", lambda: inference.complete_in_chunks(completer.fn, completer.variables,
                                                                mean_px, images, hole, chunk))
    outputs = {
        "model": model,
        "model+postprocess": timed("model+postprocess", lambda: np.stack(
            [postprocess.postprocess(im, m) for im, m in zip(model, hole)])),
        "mean_fill": timed("mean_fill", lambda: mean_fill(images, hole, mean_px)),
        "telea": timed("telea", lambda: opencv_inpaint(images, hole, "telea")),
        "navier_stokes": timed("navier_stokes",
                               lambda: opencv_inpaint(images, hole, "navier_stokes")),
    }
    return outputs, timings


def _report(workdir: str, payload: dict, images: np.ndarray, outputs: dict) -> None:
    """Print the table, then write eval_<step>.json and the side-by-side picture (process 0).
    The table comes first: a workdir that cannot be written (read-only, full) must not lose it."""
    step, n = payload["step"], payload["num_images"]
    h, w = payload["image_size"]
    sets = {k: v["results"] for k, v in payload["mask_sets"].items()}
    fractions = {k: v["hole_fraction"] for k, v in payload["mask_sets"].items()}
    print(f"Step {step}: {n} held-out {h}x{w} images, {len(sets)} mask sets (L1 in [0, 255], "
          f"PSNR in dB; *_hole = inside the holes only)")
    print(format_sets_table(sets, fractions), flush=True)
    path = os.path.join(os.path.abspath(workdir), f"eval_{step}.json")
    try:  # atomic, and a failed write leaves no temporary file (leftovers.py)
        leftovers.write_json(path, payload, indent=2)
    except OSError as e:
        raise errors.InputFileError(f"Could not write {path} ({e.strerror or e}); the table "
                                    f"above holds the results.") from e
    print(f"Wrote {path} ({payload['seconds']['total']:.1f} s).")
    _write_tensorboard(workdir, step, sets)
    picture = write_comparison(workdir, step, images, outputs)
    if picture:
        print(f"Side by side (the first {min(n, PICTURE_ROWS)} held-out images, boxes): "
              f"{picture}")


def evaluate(config, workdir: str) -> dict:
    """Score the latest checkpoint in `workdir` and the baselines on the held-out set.

    The networks come from the checkpoint (its stored config); the held-out data, the hole sizes
    and the number of images come from `config`, so a model can be scored on another dataset.

    Returns the JSON payload that is also written to `WORKDIR/eval_<step>.json`.
    """
    t0 = time.time()
    config_lib.validate(config)  # before any work or any write
    completer = inference.load(workdir)
    stored_config, step = completer.config, completer.step
    n = num_eval_images(config)
    if n < 1:
        raise errors.ConfigError("num_eval_batches * batch_size must be at least 1.")
    input_pipeline.describe_split(config)
    images = input_pipeline.eval_images(config, n)
    n = len(images)  # fewer when the held-out photos give fewer distinct crops
    h, w = images.shape[1:3]
    holes = mask_sets(config, n, h, w)
    logging.info("Evaluating step %d on %d held-out %dx%d images, mask sets %s.", step, n, h, w,
                 ", ".join(f"{k} ({100 * v.mean():.1f}% hole)" for k, v in holes.items()))
    sets, timings, pictures = {}, {}, {}
    for set_name, hole in holes.items():
        outputs, seconds = _complete_every_way(completer, images, hole, int(config.batch_size))
        sets[set_name] = {name: mean_metrics(outputs[name], images, hole) for name in METHODS}
        for k, v in seconds.items():
            timings[k] = timings.get(k, 0.0) + v
        if set_name == "boxes":
            pictures = outputs
    results = sets["boxes"]
    fractions = {k: float(v.mean()) for k, v in holes.items()}

    payload = {
        "step": step,
        "workdir": os.path.abspath(workdir),
        "num_images": n,
        "image_size": [int(h), int(w)],
        "hole_fraction": fractions["boxes"],
        "mask_seed": EVAL_MASK_SEED,
        "data": {"source": config.data.source, "name": config.data.name,
                 "path": config.data.path, "split": config.data.eval_split},
        "trained_image_size": int(stored_config.data.image_size),
        "trained_mask_shape": str(stored_config.mask.shape),
        "inpaint_radius": INPAINT_RADIUS,
        "psnr_cap_db": PSNR_CAP,
        "results": results,  # the 'boxes' set
        "mask_sets": {k: {"hole_fraction": fractions[k], "results": v} for k, v in sets.items()},
        "seconds": {**{k: round(v, 3) for k, v in timings.items()},
                    "total": round(time.time() - t0, 3)},
        "device": str(jax.devices()[0].platform),
    }
    if jax.process_index() == 0:
        _report(workdir, payload, images, pictures)
    return payload


def tensorboard_tag(mask_set: str, method: str, metric: str) -> str:
    """`eval/<set>/<method>/<metric>`, '+' written '_' (TensorBoard drops it from tags)."""
    return f"eval/{mask_set}/{method.replace('+', '_')}/{metric}"


def _write_tensorboard(workdir: str, step: int, sets: dict) -> None:
    """Every (set, method, metric) as a TensorBoard scalar (`tensorboard_tag`); a failure only
    warns (the table and the JSON hold the results)."""
    from glcic_jax import summary

    try:
        writer = summary.Writer(os.path.abspath(workdir))
        writer.scalars(step, {tensorboard_tag(s, m, k): v for s, res in sets.items()
                              for m, vals in res.items() for k, v in vals.items()})
        writer.close()
    except errors.UserError as e:
        logging.warning("No TensorBoard scalars for this evaluation: %s", e)


def write_comparison(workdir: str, step: int, images: np.ndarray,
                     outputs: dict[str, np.ndarray]) -> str | None:
    """WORKDIR/eval_<step>.png: the held-out images as each method completed them, side by side.

    Columns: the original, the network's input (holes at the mean pixel), then every method of
    the table. Returns the path, or None (with a warning: the JSON and the table stand) when the
    picture cannot be written.
    """
    from glcic_jax import image_io, summary

    k = min(len(images), PICTURE_ROWS)
    columns = {"original": images[:k], "input = mean_fill": outputs["mean_fill"][:k],
               **{name: outputs[name][:k] for name in METHODS if name != "mean_fill"}}
    path = os.path.join(os.path.abspath(workdir), f"eval_{step}.png")
    try:
        image_io.write_image(path, summary.comparison_grid(columns))  # atomic
    except OSError as e:
        logging.warning("Could not write %s (%s); the table and the JSON above hold the results.",
                        path, e.strerror or e)
        return None
    return path
