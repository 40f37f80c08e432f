r"""Complete your own photos with a trained GLCIC checkpoint.

  python -m glcic_jax.complete --workdir=runs/quickstart --image=in.jpg --mask=mask.png \
      --output=out.png [--postprocess] [--max_size=1024]
  python -m glcic_jax.complete --checkpoint=runs/quickstart/checkpoints/300 \
      --image=photos/ --mask=masks/ --output=completed/        # a folder, masks matched by stem

The mask is an image of the photo's size, white (>= 128) where the hole is; 1-channel, RGB or RGBA
(transparent = not a hole). Without --mask (or with --random_holes), holes are drawn at random as
the checkpoint's training holes were: its `mask.shape` (rectangles, brush strokes, either; strokes
for a checkpoint trained on mask files), sizes and brush widths scaled to the photo,
`mask.square`, `mask.position`, `mask.max_holes` and the strokes' area range kept; `--seed`. The
mask used is written beside the output as `<output stem>_mask.png`.

Contract (each point is pinned by tests/test_complete.py):
* Pixels outside the hole come back exactly as read (uint8), in the photo's own mode (grayscale,
  RGB, RGBA/LA with their alpha untouched); EXIF orientation is applied to photo and mask. A
  lossy output (.jpg, .webp) re-encodes every pixel: use .png for an exact result.
* The network never sees the hole's pixels: they become the mean pixel (GLCIC 3.1) first.
* Any size: edge-padded to a multiple of 4 and cropped back. A photo larger than its checkpoint's
  training scale (`--train_scale`, on by default) or than `--max_size` is completed on a scaled-
  down copy, and only the hole is scaled back up; each output line says at which size.
* Nothing lost: every check a user can fail (files, mask size, checkpoint, output paths and
  formats) runs before the network and before any write, as one line `error: ...` and exit 1;
  no output replaces an input or another output; outputs are written atomically, and the
  temporary files of a killed run are removed by the next run into the same folders, with one
  line saying so (`leftovers.py`).
* `--postprocess`: GLCIC's fast marching + Poisson blending (`postprocess.py`) at full resolution.

`image_io.py` reads and writes the files, `inference.py` loads the network and completes photos
of any size, `masks.random_hole` draws the holes when there is no --mask.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from glcic_jax import cli, conv_forms, inference
from glcic_jax.data.images import IMAGE_EXTENSIONS
from glcic_jax.image_io import (
    LOSSY_FORMATS,
    CompletionError,
    Job,
    Photo,
    check_format_holds,
    check_outputs,
    mask_path_for,
    remove_leftovers,
    output_format,
    read_mask,
    read_photo,
    write_image,
)
from glcic_jax.masks import random_hole  # noqa: F401  (the holes drawn without --mask)

training_scale_limit = inference.training_scale_limit  # where --train_scale's limit is computed


# ----------------------------------------------------------------------------------------------
# The command: read and check everything, load the network, complete, write


def check_checkpoint_flags(fv) -> None:
    """The check every checkpoint-reading command shares (complete, serve)."""
    if bool(fv.workdir) == bool(fv.checkpoint):
        raise CompletionError("pass exactly one of --workdir=DIR or --checkpoint=PATH.")


def _help() -> str:
    return __doc__.split("Contract")[0]


COMMAND = cli.Command("python -m glcic_jax.complete", _help(), lambda fv: _define_flags(fv),
                      interrupted="outputs already written are complete, none is partial")


def _parse(argv: Sequence[str]):
    return COMMAND.parse(argv)


def run(argv: Sequence[str]) -> int:
    """The command line, in-process: `argv[0]` is the program name. Returns the exit status."""
    return COMMAND.run(argv, lambda fv: _run(fv))


def main() -> None:
    """The console script: every output is written and closed when `run` returns, so the
    process ends without the interpreter's teardown (`cli.exit_now`). XLA's inference flags
    are set first, before JAX starts (`conv_forms.use_inference_xla_flags`)."""
    conv_forms.use_inference_xla_flags()
    cli.exit_now(run(sys.argv))


def _run(fv) -> None:
    t0 = time.time()
    check_checkpoint_flags(fv)
    for name in ("image", "output"):
        if not fv[name].value:
            raise CompletionError(f"--{name} is required.")
    from glcic_jax import console

    console.quiet_native_logs(fv.verbosity is not None)
    console.configure(fv.verbosity is not None, logging.WARNING)
    if fv.random_holes and fv.mask:
        raise CompletionError("--random_holes draws the holes; pass it or --mask, not both.")
    jobs = plan_jobs(fv.image, fv.mask, fv.output)
    photos, holes = _read_and_check(jobs)
    import jax

    completer = Completer(fv.checkpoint or fv.workdir, precompile=_first_batches(fv, photos))
    t_ready = time.time()
    if any(h is None for h in holes):  # a key costs two small compilations: only to draw
        key = jax.random.PRNGKey(fv.seed)
        for i, photo in enumerate(photos):
            if holes[i] is None:
                holes[i] = completer.random_hole(photo.size, jax.random.fold_in(key, i))
    t_complete, compiled = _complete_and_write(fv, completer, jobs, photos, holes)
    device = jax.devices()[0].platform
    ahead = " (compiling the first batch meanwhile)" if completer.precompiled else ""
    print(f"Completed {len(jobs)} image(s) in {time.time() - t0:.2f} s on {device}: reading and "
          f"restoring step {completer.step}{ahead} {t_ready - t0:.2f} s, completing"
          f"{' (with compilation)' if compiled else ''} {t_complete:.2f} s.")


def _read_and_check(jobs: list[Job]):
    """The photos and masks (None: a random hole), after every check a user can fail: it comes
    before the network runs and before any output is written (formats, inputs, masks, then the
    output paths)."""
    for job in jobs:
        output_format(job.output)
    photos = [read_photo(j.image) for j in jobs]
    lossy = []
    for job, photo in zip(jobs, photos):
        if photo.mode in ("LA", "RGBA") and output_format(job.output) == "JPEG":
            raise CompletionError(f"{job.image} has an alpha channel, which JPEG cannot store; "
                                  f"write {os.path.splitext(job.output)[0]}.png instead.")
        if check_format_holds(job.output, photo.mode) in LOSSY_FORMATS:
            lossy.append(job.output)
    holes = [read_mask(j.mask, p.size) if j.mask else None for j, p in zip(jobs, photos)]
    check_outputs(jobs)
    cleaned = remove_leftovers(jobs)
    if cleaned:
        print(f"note: {cleaned}")
    for path in lossy:
        print(f"note: {path} is {output_format(path)}: re-encoding changes pixels outside the "
              f"hole too; use .png for an exact result.")
    return photos, holes


def _complete_and_write(fv, completer: Completer, jobs: list[Job], photos,
                        holes) -> tuple[float, bool]:
    """Complete --batch_size photos at a time, each written (and its line printed) as soon as its
    batch is done; a photo's time is its batch's shared by the photos in it (the first batch of
    each input size includes compiling the network for it, unless `load` compiled it ahead).
    Returns the seconds completing and whether any of it compiled."""
    # Shapes compiled while the checkpoint was read: ((H, W), batch), as counted below.
    shapes_seen = {(images[1:3], images[0]) for images, _, _ in completer.precompiled}
    t_complete, compiled_any = 0.0, False
    size = max(1, fv.batch_size)
    for start in range(0, len(jobs), size):
        chunk = range(start, min(len(jobs), start + size))
        t = time.time()
        completed = complete_photos(completer, [photos[i] for i in chunk],
                                    [holes[i] for i in chunk], max_size=fv.max_size,
                                    batch_size=size, postprocess=fv.postprocess,
                                    train_scale=fv.train_scale)
        seconds = time.time() - t
        t_complete += seconds
        # The network compiles once per (batch, input shape) pair it has not seen yet.
        per_shape = collections.Counter(
            _network_shape(completer, photos[i].size, fv.max_size, fv.train_scale)
            for i in chunk)
        compiled = set(per_shape.items()) - shapes_seen
        shapes_seen |= compiled
        compiled_any = compiled_any or bool(compiled)
        timing = (f"{seconds / len(chunk):.2f} s"
                  + (f" (a batch of {len(chunk)})" if len(chunk) > 1 else "")
                  + (" including compilation" if compiled else ""))
        for i, pixels in zip(chunk, completed):
            job, photo, hole = jobs[i], photos[i], holes[i]
            _write_or_explain(job.output, pixels, photo.icc_profile)
            extra = ""
            if job.mask is None:
                _write_or_explain(mask_path_for(job.output), hole.astype(np.uint8) * 255)
                extra = f" (random mask: {mask_path_for(job.output)})"
            h, w = photo.size
            note = f" [{photo.note}]" if photo.note else ""
            scaled = _scale_note(completer, photo.size, fv.max_size, fv.train_scale)
            print(f"{job.image} -> {job.output}: {w}x{h} {photo.mode}{scaled}, "
                  f"{100.0 * hole.mean():.1f}% hole, {timing}{extra}{note}")
    return t_complete, compiled_any


def complete_photos(completer: inference.Completer, photos: Sequence[Photo],
                    holes: Sequence[np.ndarray], *, max_size: int, postprocess: bool,
                    train_scale: bool, batch_size: int = 4) -> list[np.ndarray]:
    """Photos (as `read_photo` reads them) and their holes -> the completed pixels, in each
    photo's own mode, exactly the photo's outside the hole.

    The one completion path of this command and the web server (`serve.py`): both call it with
    the same options, so a photo completed by either gives the same pixels (and, encoded by
    `image_io.encode_image`, the same PNG bytes).
    """
    completed = completer.complete([p.rgb() for p in photos], list(holes), max_size=max_size,
                                   batch_size=batch_size, postprocess=postprocess,
                                   train_scale=train_scale)
    return [p.merge(rgb, hole) for p, rgb, hole in zip(photos, completed, holes)]


def _write_or_explain(path: str, pixels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """write_image, with a failure that the checks could not foresee (disk full, a folder
    removed meanwhile) as one line: the outputs written before it are complete."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_image(path, pixels, icc_profile)
    except OSError as e:
        raise CompletionError(f"cannot write {path!r}: {e.strerror or e}. Outputs written "
                              f"before it are complete; nothing is half-written.") from e


def _network_shape(completer: Completer, size: tuple[int, int], max_size: int,
                   train_scale: bool) -> tuple[int, int]:
    """The padded (H, W) the network runs at for a photo of `size` (see
    `inference.Completer._network_input`): one compilation per shape."""
    return _network_shape_for(completer.config, size, max_size, train_scale)


def _network_shape_for(config, size: tuple[int, int], max_size: int,
                       train_scale: bool) -> tuple[int, int]:
    h, w = inference.network_size(*size, inference.effective_max_size(
        config, *size, max_size, train_scale))
    return h + -h % 4, w + -w % 4


def _first_batches(fv, photos) -> Callable:
    """`config -> [(batch, H, W)]`: the network inputs of the first --batch_size photos (the
    first call's shapes), for `inference.load` to compile while it reads the checkpoint."""
    def shapes(config):
        first = photos[:max(1, fv.batch_size)]
        counts = collections.Counter(
            _network_shape_for(config, p.size, fv.max_size, fv.train_scale) for p in first)
        return [(n, h, w) for (h, w), n in counts.items()]
    return shapes


def _scale_note(completer: Completer, size: tuple[int, int], max_size: int,
                train_scale: bool) -> str:
    """' (completed at WxH, why; ...)' when the network worked on a scaled-down copy, else ''."""
    h, w = size
    limit = inference.effective_max_size(completer.config, h, w, max_size, train_scale)
    small_h, small_w = inference.network_size(h, w, limit)
    if (small_h, small_w) == (h, w):
        return ""
    at_train_scale = train_scale and limit == training_scale_limit(completer.config, h, w)
    why = "the checkpoint's training scale" if at_train_scale else f"--max_size={max_size}"
    return f" (completed at {small_w}x{small_h}, {why}; the hole scaled back up)"


# ----------------------------------------------------------------------------------------------
# Pairing photos, masks and outputs


def plan_jobs(image: str, mask: str | None, output: str) -> list[Job]:
    """Pair inputs, masks and outputs: one file, or a folder matched by file stem."""
    if os.path.isdir(image):
        if mask is not None and not os.path.isdir(mask):
            raise CompletionError(f"--image is a folder, so --mask must be a folder too "
                                  f"(masks matched by file stem); {mask!r} is not one.")
        if os.path.exists(output) and not os.path.isdir(output):
            raise CompletionError(f"--image is a folder, so --output must be a folder; "
                                  f"{output!r} is a file.")
        if not os.path.exists(output) and os.path.splitext(output)[1].lower() in (
                Image.registered_extensions()):
            raise CompletionError(f"--image is a folder, so --output must be a folder; "
                                  f"{output!r} is named like an image file (create the folder "
                                  f"first if that is really its name).")
        names = _list_images(image)
        if not names:
            raise CompletionError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image!r}.")
        masks_by_stem: dict[str, str] = {}
        if mask is not None:
            for f in _list_images(mask):
                masks_by_stem.setdefault(os.path.splitext(f)[0], f)
        jobs, missing = [], []
        for f in names:
            stem = os.path.splitext(f)[0]
            m = None
            if mask is not None:
                if stem not in masks_by_stem:
                    missing.append(f)
                    continue
                m = os.path.join(mask, masks_by_stem[stem])
            jobs.append(Job(os.path.join(image, f), m, os.path.join(output, stem + ".png")))
        if missing:
            more = " ..." if len(missing) > 5 else ""
            raise CompletionError(f"no mask with the same file stem in {mask!r} for: "
                                  f"{', '.join(missing[:5])}{more}")
        outs = [j.output for j in jobs]
        if len(set(outs)) != len(outs):
            raise CompletionError(f"images in {image!r} share a file stem (e.g. a.jpg and a.png); "
                                  f"their outputs would collide.")
        return jobs
    if os.path.isdir(output):
        output = os.path.join(output, os.path.splitext(os.path.basename(image))[0] + ".png")
    if mask is not None and os.path.isdir(mask):
        raise CompletionError(f"--image is a file, so --mask must be a file; {mask!r} is a folder.")
    return [Job(image, mask, output)]


def _list_images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


# ----------------------------------------------------------------------------------------------
# The network


class Completer(inference.Completer):
    """The completion network at `path`, ready for photos of any size.

    `inference.Completer` (where loading and completing live) built from a path, with
    CompletionError for a path that holds nothing restorable. The web server uses it as is,
    through `complete_photos`, so that both give the same results.

    Args:
      path: a workdir (a training run or a converted Torch7 model), its `checkpoints/` folder or
        one `checkpoints/<step>` folder.
      precompile: shapes to compile while the checkpoint is read (`inference.load`).
    """

    def __init__(self, path: str, precompile: Callable | None = None):
        try:
            loaded = inference.load(path, precompile=precompile)
        except inference.LoadError as e:
            raise CompletionError(str(e)) from e
        super().__init__(loaded.config, loaded.generator, loaded.variables, loaded.mean_pixel,
                         loaded.step, loaded.precompiled)


# ----------------------------------------------------------------------------------------------
# Flags


def _define_flags(fv):
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint is used.",
                        flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "A checkpoint folder, e.g. WORKDIR/checkpoints/300 "
                        "(instead of --workdir).", flag_values=fv)
    flags.DEFINE_string("image", None, "Photo to complete, or a folder of photos.", flag_values=fv)
    flags.DEFINE_string("mask", None, "Mask (white = hole) of the photo's size, or a folder of "
                        "masks named like the photos. Default: random holes.", flag_values=fv)
    flags.DEFINE_string("output", None, "Output image (.png keeps every pixel exact), or a "
                        "folder for a folder of photos.", flag_values=fv)
    flags.DEFINE_bool("postprocess", False, "GLCIC's fast marching + Poisson blending.",
                      flag_values=fv)
    flags.DEFINE_integer("max_size", 1024, "Photos whose longer side exceeds this are completed "
                         "at this size and only the hole is scaled back up; 0 = never.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_bool("train_scale", True, "Complete at the checkpoint's training scale: a "
                      "photo whose shortest side exceeds the config's data.resize_max is "
                      "scaled down to it (and only the hole scaled back).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 4, "Photos of the same size completed together.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("random_holes", False, "Draw random holes as the checkpoint was trained "
                      "on (its mask.shape); the default without --mask.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the random holes (without --mask).", flag_values=fv)
    flags.DEFINE_integer("verbosity", None, "Show the libraries' log lines too (absl levels: 0 "
                         "INFO, 1 DEBUG); by default only this tool's lines.", flag_values=fv)


if __name__ == "__main__":
    main()
