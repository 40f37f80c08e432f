"""The one place that loads a completion network and completes images with it.

Whether the weights come from a training checkpoint or from the authors' converted Torch7 file
(`convert.py` writes the same workdir layout), inference is:

  load:      `load(path) -> Completer` (a workdir, its `checkpoints/` or one `checkpoints/<step>`)
  complete:  `completer(images, masks)` -> float32 `[B, H, W, 3]` in [0, 1], the network's output
             composited into the holes (pixels outside the holes are returned unchanged), for a
             batch of same-sized images of any size;
             `completer.complete(images, holes, max_size=, batch_size=, postprocess=)` -> uint8
             photos of mixed sizes, as `glcic_jax.complete` writes them.

The network input is built by `masks.fill_holes` with the checkpoint's `model.input_norm`:
'mean_fill' (our training: the hole holds the dataset's mean pixel) or 'mean_subtract' (the
authors' `inpaint.lua`: the mean is subtracted from the image and the hole set to 0). Either way
the pixels inside the hole are never seen. BatchNorm uses its running statistics.

`complete.py`, `evaluate.py`, the converter and the training loop's sample grids all go through
`complete_images` below; `evaluate.py` and `complete.py` load through `load`. Photos of any size
(`Completer.complete`) are scaled to `--max_size` and the training scale (`network_size`), padded
and batched by input shape; fixed-size evaluation sets go through `complete_in_chunks`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors

from glcic_jax import errors, masks, models


class LoadError(errors.WorkdirError):
    """No usable completion network at a path (missing, incomplete or foreign checkpoint)."""


def input_norm_of(config) -> str:
    """The config's `model.input_norm` (config_lib.INPUT_NORMS)."""
    return str(config.model.input_norm)


def to_float_images(images) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1] on the device; float inputs are taken as already scaled."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def quantize_uint8(x) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to nearest (as a saved PNG would hold them)."""
    return np.clip(np.round(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def complete_images(generator, g_vars: dict, images, mask, mean_pixel,
                    input_norm: str = "mean_fill") -> jax.Array:
    """Build the network input, run the generator (running statistics) and composite.

    images [B, H, W, 3] in [0, 1] (or uint8), mask [B, H, W, 1] (1 = hole) -> [B, H, W, 3]
    float32; pixels outside the hole are returned unchanged. H and W must be multiples of 4.
    A two-stage generator's refined output is the one composited.
    """
    images = to_float_images(images)
    mask = mask.astype(jnp.float32)
    x = masks.fill_holes(images, mask, mean_pixel, input_norm)
    out = generator.apply(g_vars, x, train=False)
    out = out[0] if isinstance(out, tuple) else out
    return models.blend_into_hole(images, out, mask)


def compiled_completion(generator=None) -> Callable:
    """`complete_images` jitted with the module and the normalisation as static arguments, with
    the inference compiler options (`models.compiler_options`; the width of a generator without
    one is taken as full).

    flax modules hash and compare by their fields, so every caller with the same architecture
    shares the compilations for an input shape.
    """
    options = models.compiler_options(float(getattr(generator, "width", 1.0)), inference=True)
    return _compiled_completion(tuple(sorted(options.items())) if options else ())


@functools.lru_cache(maxsize=None)
def _compiled_completion(options: tuple) -> Callable:
    return jax.jit(complete_images, static_argnums=(0, 5),
                   compiler_options=dict(options) or None)


def completion_fn(generator, input_norm: str = "mean_fill") -> Callable:
    """Jitted `(g_vars, images, mask, mean_pixel) -> completed` for this generator."""
    compiled = compiled_completion(generator)
    return lambda g_vars, images, mask, mean_pixel: compiled(
        generator, g_vars, images, mask, mean_pixel, input_norm)


def complete_in_chunks(fn: Callable, variables: dict, mean_pixel, images: np.ndarray,
                       hole: np.ndarray, chunk: int) -> np.ndarray:
    """uint8 completions of same-sized images, `chunk` at a time (one compiled shape).

    Args:
      fn: a jitted `(variables, images, mask, mean_pixel) -> completed` (`completion_fn`).
      images: uint8 [N, H, W, 3], H and W multiples of 4; hole: bool [N, H, W].

    The last chunk is padded to `chunk` images by repeating its last one. The result is
    composited in uint8, so pixels outside the hole are exactly the input's.
    """
    outs = []
    n = len(images)
    for start in range(0, n, chunk):
        img, m = images[start : start + chunk], hole[start : start + chunk]
        k = len(img)
        if k < chunk:  # pad the last chunk to the compiled shape
            img = np.concatenate([img, np.repeat(img[-1:], chunk - k, 0)])
            m = np.concatenate([m, np.repeat(m[-1:], chunk - k, 0)])
        out = fn(variables, img, m[..., None].astype(np.float32), mean_pixel)
        outs.append(quantize_uint8(jax.device_get(out))[:k])
    return np.where(hole[..., None], np.concatenate(outs), images)


def generator_variables(state) -> dict:
    """flax variables of the completion network in a GANState (no empty batch_stats)."""
    v = {"params": state.g.params}
    if state.g.batch_stats:
        v["batch_stats"] = state.g.batch_stats
    return v


def _resize(arr: np.ndarray, size_hw: tuple[int, int], resample) -> np.ndarray:
    from PIL import Image

    h, w = size_hw
    return np.asarray(Image.fromarray(arr).resize((w, h), resample))


@dataclasses.dataclass
class Completer:
    """A completion network with everything needed to complete photos.

    Attributes:
      config: the stored training (or conversion) config.
      generator: the flax module; `variables` its params and batch statistics.
      mean_pixel: float32 [3] in [0, 1], the dataset mean the network was trained with.
      step: the checkpoint's step.
      fn: the jitted `(variables, images, mask, mean_pixel) -> completed` on arrays whose H and
        W are multiples of 4 (mask float [B, H, W, 1]); the methods below pad to it.
    """

    config: Any
    generator: Any
    variables: dict
    mean_pixel: np.ndarray
    step: int = 0
    # Executables compiled ahead for (images shape, images dtype, mask shape) keys, by `load`.
    precompiled: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.mean_pixel = np.asarray(self.mean_pixel, np.float32).reshape(3)
        self.mean_u8 = quantize_uint8(self.mean_pixel)
        self.input_norm = input_norm_of(self.config)
        jitted = []  # made on the first call: `load` compiles nothing (its compiler options are
        # probed with a compilation, and a process's first compilation is slow to start)

        def fn(variables, images, mask, mean_pixel):
            exe = None
            if self.precompiled and getattr(mask, "dtype", None) == np.float32:
                dtype = getattr(images, "dtype", None)
                exe = self.precompiled.get((tuple(np.shape(images)), str(dtype),
                                            tuple(np.shape(mask))))
            if exe is not None:  # the same computation, compiled while the checkpoint was read
                return exe(variables, images, mask, np.asarray(mean_pixel, np.float32))
            if not jitted:
                jitted.append(completion_fn(self.generator, self.input_norm))
            try:
                return jitted[0](variables, images, mask, mean_pixel)
            except flax_errors.ScopeParamShapeError as e:
                # The arrays were restored with the shapes the checkpoint stored; a checkpoint
                # whose config describes another network is refused here, at the first call.
                raise LoadError(f"the checkpoint's arrays do not fit the network its config "
                                f"describes: {str(e).splitlines()[0]}") from e

        self.fn = fn

    @property
    def g_vars(self) -> dict:
        return self.variables

    # -- same-sized batches -------------------------------------------------------------------
    def __call__(self, images, holes) -> np.ndarray:
        """Complete a batch of same-sized images.

        Args:
          images: uint8 [B, H, W, 3] (or float in [0, 1]), any H and W.
          holes: [B, H, W] or [B, H, W, 1], bool or float (> 0.5 = hole).

        Returns:
          float32 [B, H, W, 3] in [0, 1]: the network's output inside the holes, the input
          (as floats) outside.
        """
        images = np.asarray(images)
        hole = np.asarray(holes)
        if hole.ndim == images.ndim:
            hole = hole[..., 0]
        hole = hole > 0.5 if hole.dtype != bool else hole
        if images.ndim != 4 or images.shape[-1] != 3 or hole.shape != images.shape[:3]:
            raise ValueError(f"expected images [B, H, W, 3] and holes [B, H, W]; got "
                             f"{images.shape} and {np.shape(holes)}.")
        h, w = hole.shape[1:]
        pads = ((0, 0), (0, -h % 4), (0, -w % 4))
        x = np.pad(images, pads + ((0, 0),), mode="edge")
        m = np.pad(hole, pads, mode="edge").astype(np.float32)[..., None]
        out = np.asarray(jax.device_get(self.fn(self.variables, x, m, self.mean_pixel)))
        return out[:, :h, :w]

    def random_hole(self, size: tuple[int, int], key) -> np.ndarray:
        """Random holes for an (H, W) photo as this checkpoint trained on them (its
        `mask.shape`, sizes scaled to the photo: `masks.random_hole`): bool [H, W]. What
        `complete` draws without --mask, and what a web page's random holes should use."""
        return masks.random_hole(self.config, size, key)

    def complete_uint8(self, images: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] and bool [B, H, W] -> uint8 completions, exact outside the hole."""
        out = quantize_uint8(self(images, hole))
        return np.where(hole[..., None], out, images)

    # -- photos of any size, as the command line completes them -------------------------------
    def _network_input(self, rgb: np.ndarray, hole: np.ndarray, max_size: int,
                       train_scale: bool = False):
        """(padded uint8 input, padded float mask, size the network works at)."""
        from PIL import Image

        # The hole's content is replaced before anything else (resizing included) reads it.
        x = np.where(hole[..., None], self.mean_u8, rgb)
        h, w = hole.shape
        small = network_size(h, w, effective_max_size(self.config, h, w, max_size, train_scale))
        if small != (h, w):
            # BOX averages exactly the pixels under each output pixel: a low-resolution pixel
            # that touches the hole is a hole, the others average known pixels only.
            hole = _resize(hole.astype(np.uint8) * 255, small, Image.BOX) > 0
            x = np.where(hole[..., None], self.mean_u8, _resize(x, small, Image.BOX))
        nh, nw = hole.shape
        pads = ((0, -nh % 4), (0, -nw % 4))
        x = np.pad(x, pads + ((0, 0),), mode="edge")
        m = np.pad(hole, pads, mode="edge").astype(np.float32)[..., None]
        return x, m, (nh, nw)

    def complete(self, images: Sequence[np.ndarray], holes: Sequence[np.ndarray],
                 max_size: int = 0, batch_size: int = 4,
                 postprocess: bool = False, train_scale: bool = False) -> list[np.ndarray]:
        """Complete RGB photos: uint8 `[H, W, 3]` each, holes bool `[H, W]` -> uint8 `[H, W, 3]`.

        Photos whose network input has the same shape are run as one batch (up to batch_size).
        `max_size`: a photo whose longer side exceeds it is completed on a copy scaled down to
        it, and only the hole's content is scaled back up (bicubic). `train_scale`: also scale
        down to the checkpoint's training scale (`training_scale_limit`). `postprocess`: GLCIC's
        fast marching + Poisson blending at full resolution.
        """
        from PIL import Image

        from glcic_jax import postprocess as postprocess_lib

        prepared = [self._network_input(im, m, max_size, train_scale)
                    for im, m in zip(images, holes)]
        groups: dict[tuple, list[int]] = {}
        for i, (x, _, _) in enumerate(prepared):
            groups.setdefault(x.shape, []).append(i)
        results: list[np.ndarray | None] = [None] * len(images)
        step = max(1, batch_size)
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                x = np.stack([prepared[i][0] for i in chunk])
                m = np.stack([prepared[i][1] for i in chunk])
                out = quantize_uint8(np.asarray(self.fn(self.variables, x, m, self.mean_pixel)))
                for j, i in enumerate(chunk):
                    nh, nw = prepared[i][2]
                    filled = out[j, :nh, :nw]
                    rgb, hole = images[i], holes[i]
                    if (nh, nw) != hole.shape:
                        filled = _resize(filled, hole.shape, Image.BICUBIC)
                    done = np.where(hole[..., None], filled, rgb)
                    if postprocess:
                        done = postprocess_lib.postprocess(done, hole)
                    results[i] = done
        return results  # type: ignore[return-value]


def from_state(config, nets, state) -> Completer:
    """A Completer for a GANState (e.g. one restored by `checkpointing.restore_for_inference`)."""
    return Completer(config, nets.generator, generator_variables(state),
                     np.asarray(jax.device_get(state.mean_pixel), np.float32),
                     int(jax.device_get(state.step)))


def training_scale_limit(config, height: int, width: int) -> int:
    """The longest side at which a `height` x `width` photo's shortest side is the checkpoint's
    `data.resize_max` (the largest scale training showed the network); 0 if it is already there
    or smaller (no scaling)."""
    top = int(config.data.resize_max)
    short, long = min(height, width), max(height, width)
    if short <= top:
        return 0
    return max(1, int(long * top / short))  # rounded down: the shortest side ends <= resize_max


def network_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """The (H, W) a photo is completed at, before padding: scaled down (aspect kept, area
    averaging in `Completer`) so that its longer side is at most `max_size` (0 = any size)."""
    if max_size and max(height, width) > max_size:
        s = max_size / max(height, width)
        return max(1, round(height * s)), max(1, round(width * s))
    return height, width


def effective_max_size(config, height: int, width: int, max_size: int,
                       train_scale: bool) -> int:
    """The longer side a photo is completed at: `max_size` (0 = any), and with `train_scale` at
    most the training scale's (`training_scale_limit`)."""
    limit = training_scale_limit(config, height, width) if train_scale else 0
    if limit:
        return min(max_size, limit) if max_size else limit
    return max_size


def _compile_ahead_from_files(path: str, step: int | None, compile_ahead) -> None:
    """`compile_ahead(config, generator, abstract_variables)` for the checkpoint that a restore of
    `path` tries first, read without Orbax (`checkpoint_files`); nothing where those files do not
    tell (the restore then calls it itself)."""
    from glcic_jax import checkpoint_files

    try:
        found = checkpoint_files.newest_meta(path, step)
        if found is None:
            return
        step_dir, meta = found
        variables = checkpoint_files.stored_structure(step_dir, ("g",),
                                                      checkpoint_files.GENERATOR_FIELDS)
        if variables is None:
            return
        config, generator = checkpoint_files.generator_of(meta)
    except Exception:  # noqa: BLE001  an optimisation only: the restore reads it again
        logging.debug("reading the checkpoint's config without Orbax failed", exc_info=True)
        return
    compile_ahead(config, generator, variables)


def load(path: str, step: int | None = None,
         precompile: Callable[[Any], Sequence[tuple[int, int, int]]] | None = None) -> Completer:
    """The completion network of a workdir (training run or converted Torch7 model).

    Args:
      path: a workdir, its `checkpoints/` folder, or one `checkpoints/<step>` folder.
      step: a step to restore instead of the latest (or the one `path` names).
      precompile: `config -> [(batch, height, width), ...]`, the network input shapes (uint8
        images, multiples of 4) the caller will complete first. As soon as the checkpoint's
        config is read they are traced and lowered here, then compiled in a thread while the
        checkpoint's arrays are read (on a CPU both are a noticeable part of a cold `complete`;
        tracing beside the read, both Python, they contended for the interpreter's lock), and
        `Completer.fn` then runs them without compiling. Any other shape compiles on its first
        call, as without this.

    Raises:
      LoadError: no finished checkpoint there, or one that cannot be restored; one-line message.
    """
    ahead: dict = {}

    def compile_ahead(config, generator, abstract_variables):
        if precompile is None or "thread" in ahead:
            return
        ahead["thread"] = None
        try:
            norm = input_norm_of(config)
            shapes = list(dict.fromkeys(precompile(config)))
        except Exception:  # noqa: BLE001  an optimisation only: never a reason not to load
            logging.debug("no shapes to compile ahead", exc_info=True)
            return
        ahead.update(generator=generator, input_norm=norm,
                     structure=jax.tree_util.tree_map(lambda a: (a.shape, a.dtype),
                                                      abstract_variables))

        f32 = np.dtype(np.float32)
        lowered = {}
        for b, h, w in shapes:
            try:
                lowered[(b, h, w)] = compiled_completion(generator).lower(
                    generator, abstract_variables, jax.ShapeDtypeStruct((b, h, w, 3), np.uint8),
                    jax.ShapeDtypeStruct((b, h, w, 1), f32), jax.ShapeDtypeStruct((3,), f32),
                    norm)
            except Exception:  # noqa: BLE001  an optimisation only: the jit compiles it later
                logging.debug("lowering ahead for %s failed", (b, h, w), exc_info=True)

        def work():
            for (b, h, w), low in lowered.items():
                try:
                    ahead[((b, h, w, 3), "uint8", (b, h, w, 1))] = low.compile()
                except Exception:  # noqa: BLE001  an optimisation only: the jit compiles it later
                    logging.debug("compiling ahead for %s failed", (b, h, w), exc_info=True)

        ahead["thread"] = threading.Thread(target=work, name="glcic-compile-ahead", daemon=True)
        ahead["thread"].start()

    if precompile is not None:
        # Before Orbax is imported (0.2 s on a 2-core CPU), from the checkpoint's own files: the
        # import then runs beside the compilation. The restore below still decides which
        # checkpoint is intact; what was compiled here is used only if it is that one's network.
        _compile_ahead_from_files(path, step, compile_ahead)
    from glcic_jax import checkpointing

    try:
        # Only the generator and the mean pixel are read, not the discriminator or optimizers.
        found = checkpointing.restore_generator(path, step, on_structure=compile_ahead)
    except FileNotFoundError as e:
        raise LoadError(str(e)) from e
    except Exception as e:  # a corrupt or foreign folder: say where, not a traceback
        raise LoadError(f"cannot restore a GLCIC checkpoint from {path!r}: "
                        f"{type(e).__name__}: {e}") from e
    variables = jax.device_put(found.variables)
    precompiled = {}
    if ahead.get("thread") is not None:
        ahead["thread"].join()
        # Used only if the checkpoint restored is the one compiled for (a damaged newer one
        # makes restore_generator fall back to an older, possibly different, network).
        same = (found.generator == ahead["generator"]
                and input_norm_of(found.config) == ahead["input_norm"]
                and jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), variables)
                == ahead["structure"])
        if same:
            precompiled = {k: v for k, v in ahead.items() if isinstance(k, tuple)}
    return Completer(found.config, found.generator, variables, found.mean_pixel, found.step,
                     precompiled)
