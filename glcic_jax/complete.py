r"""Complete your own photos with a trained GLCIC checkpoint.

  python -m glcic_jax.complete --workdir=runs/quickstart --image=in.jpg --mask=mask.png \
      --output=out.png [--postprocess] [--max_size=1024]
  python -m glcic_jax.complete --checkpoint=runs/quickstart/checkpoints/300 \
      --image=photos/ --mask=masks/ --output=completed/        # a folder, masks matched by stem

The mask is an image of the photo's size, white (>= 128) where the hole is; 1-channel, RGB or RGBA
(transparent = not a hole). Without --mask, holes are drawn at random with the checkpoint's hole
sizes scaled to the photo (`--seed`), and the mask used is written beside the output as
`<output stem>_mask.png`.

Guarantees:
* Pixels outside the hole are returned exactly as read (uint8 equality), in the photo's own mode:
  grayscale stays grayscale (the completion converted with PIL's ITU-R 601 luma), RGBA and LA keep
  their alpha channel untouched, RGB stays RGB. Other modes (palette, CMYK, 16-bit, 1-bit) are
  converted to RGB(A) or 8-bit grayscale first, and exactness holds for the converted pixels.
  EXIF orientation is applied to the photo and the mask, so both are taken as a viewer shows them.
  A lossy output format (.jpg, .webp) re-encodes every pixel; use .png for an exact result.
* The network never sees the pixels inside the hole: they are replaced by the dataset's mean pixel
  (GLCIC 3.1) before anything else happens, also before any resizing.
* Any size and aspect ratio: the input is edge-padded to a multiple of 4 (the network halves the
  resolution twice) and the result cropped back.
* `--max_size=N`: a photo whose longer side exceeds N is completed on a copy scaled down to N
  (area averaging; a low-resolution pixel is a hole if any pixel under it is), and only the
  hole's content is scaled back up (bicubic) and composited into the full-resolution photo.
  Large holes in big photos come out softer than the rest; raise --max_size if memory allows.
* By default a photo is completed at the scale its checkpoint was trained at (`--train_scale`):
  if its shortest side exceeds the config's `data.resize_max` (training shrinks every photo so its
  shortest side is in [resize_min, resize_max]), it is scaled down to that, as with --max_size
  (the smaller of the two limits wins), and only the hole is scaled back. A network trained on
  small crops has learned what a small image looks like (its dilated layers reach the border);
  `--notrain_scale` completes at full resolution (up to --max_size).
* Folders: each image (JPEG/PNG/BMP/WebP/TIFF, not recursive) is paired with the mask of the same
  file stem; outputs are `<stem>.png`. Images whose network input has the same size are completed
  in batches of --batch_size; every distinct size compiles the network once (seconds on CPU), so
  folders of mixed sizes run roughly one image at a time.
* Errors a user can cause (missing or unreadable file, wrong mask size, empty mask, missing
  checkpoint, unsupported output format) are checked before any output is written, print one
  line and exit with status 1. Every output is written to a temporary file and renamed, so a
  file at an output path is always complete.
* `--postprocess`: GLCIC's fast marching + Poisson blending (`postprocess.py`), applied at full
  resolution from the completed image and the mask only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from typing import IO, Sequence

import numpy as np
from PIL import Image, ImageOps

from glcic_jax.input_pipeline import IMAGE_EXTENSIONS

LOSSY_FORMATS = ("JPEG", "WEBP")
HOLE_THRESHOLD = 128  # mask grey values >= this are holes


class CompletionError(Exception):
    """A problem the user can fix (bad path, wrong mask, missing checkpoint); one-line message."""


# ----------------------------------------------------------------------------------------------
# Reading photos and masks


@dataclasses.dataclass
class Photo:
    """A decoded photo in the mode its output will have.

    `pixels` is uint8 `[H, W, C]` with C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).
    """

    path: str
    pixels: np.ndarray
    mode: str
    icc_profile: bytes | None = None
    note: str = ""  # how the file's mode was converted, if it was

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[0], self.pixels.shape[1]

    def rgb(self) -> np.ndarray:
        """The network's view: uint8 `[H, W, 3]` (gray replicated; alpha dropped)."""
        color = self.pixels[..., :1] if self.mode in ("L", "LA") else self.pixels[..., :3]
        return np.ascontiguousarray(np.broadcast_to(color, self.size + (3,)))

    def merge(self, completed_rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """The completion's colour inside the hole, this photo's pixels elsewhere; alpha as is."""
        out = self.pixels.copy()
        if self.mode in ("L", "LA"):
            color = np.asarray(Image.fromarray(completed_rgb).convert("L"))[..., None]
        else:
            color = completed_rgb
        c = color.shape[-1]
        out[..., :c] = np.where(hole[..., None], color, self.pixels[..., :c])
        return out


def _name(path: str | IO[bytes], name: str | None) -> str:
    """What messages call an input: `name`, else the path (an upload has no path)."""
    return name if name is not None else str(path)


def _open(path: str | IO[bytes], what: str, name: str | None = None) -> Image.Image:
    """Decode an image file fully (EXIF orientation applied); CompletionError if impossible.

    `path` may also be a binary file object (the web server's uploads never touch the disk).
    """
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise CompletionError(f"{what} {_name(path, name)!r} does not exist (or is not a file).")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CompletionError(f"cannot read {what} {_name(path, name)!r}: {e}") from e


def _sixteen_bit_to_l(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img).astype(np.float64)
    top = 65535.0 if arr.max() > 255 else 255.0
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_photo(path: str | IO[bytes], name: str | None = None) -> Photo:
    """Read a photo, keeping L / LA / RGB / RGBA as they are and converting other modes.

    `path` may be a binary file object; `name` then names it in messages.
    """
    img = _open(path, "image", name)
    icc = img.info.get("icc_profile")
    mode, note = img.mode, ""
    if mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(img)
    elif mode == "1":
        arr, mode, note = np.asarray(img.convert("L")), "L", "1-bit converted to 8-bit grayscale"
    elif mode.startswith("I") or mode == "F":
        arr, mode, note = _sixteen_bit_to_l(img), "L", f"{img.mode} scaled to 8-bit grayscale"
    elif mode in ("P", "PA") and (mode == "PA" or "transparency" in img.info):
        arr, mode, note = np.asarray(img.convert("RGBA")), "RGBA", f"{img.mode} converted to RGBA"
    else:  # palette, CMYK, YCbCr, LAB, HSV
        arr, mode, note = np.asarray(img.convert("RGB")), "RGB", f"{img.mode} converted to RGB"
        icc = None if img.mode == "CMYK" else icc  # a CMYK profile does not describe RGB
    if arr.ndim == 2:
        arr = arr[..., None]
    return Photo(_name(path, name), np.ascontiguousarray(arr, np.uint8), mode, icc, note)


def read_mask(path: str | IO[bytes], size: tuple[int, int], name: str | None = None
              ) -> np.ndarray:
    """Read a hole mask (white >= 128 = hole) that must be `size` = (H, W); bool `[H, W]`.

    `path` may be a binary file object; `name` then names it in messages.
    """
    img = _open(path, "mask", name)
    label = _name(path, name)
    if img.mode in ("LA", "RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent = not a hole, whatever colour the transparent pixels store.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        grey = np.asarray(Image.alpha_composite(black, rgba).convert("L"))
    elif img.mode.startswith("I") or img.mode == "F":
        grey = _sixteen_bit_to_l(img)
    else:
        grey = np.asarray(img.convert("L"))
    h, w = size
    if grey.shape != (h, w):
        raise CompletionError(
            f"mask {label!r} is {grey.shape[1]}x{grey.shape[0]} but the image is {w}x{h} "
            f"(width x height); the mask must have the image's size."
        )
    hole = grey >= HOLE_THRESHOLD
    if not hole.any():
        raise CompletionError(
            f"mask {label!r} has no hole pixels (white, grey >= {HOLE_THRESHOLD}): nothing to "
            f"complete. Paint the region to fill in white on black."
        )
    return hole


def random_hole(config, size: tuple[int, int], key) -> np.ndarray:
    """Random holes for an (H, W) photo: the config's hole sizes times min(H, W) / image_size."""
    import jax

    from glcic_jax import masks

    h, w = size
    scale = min(h, w) / float(config.data.image_size)
    local = max(1, min(h, w, round(int(config.mask.local_size) * scale)))
    hole_max = max(1, min(local, round(int(config.mask.hole_max) * scale)))
    hole_min = max(1, min(hole_max, round(int(config.mask.hole_min) * scale)))
    spec = masks.MaskSpec(local, hole_min, hole_max, int(config.mask.max_holes), "random")
    m = jax.jit(masks.sample_masks, static_argnums=(1, 2, 3, 4))(key, 1, h, w, spec).mask
    return np.asarray(jax.device_get(m))[0, ..., 0] > 0.5


# ----------------------------------------------------------------------------------------------
# Completing


def _resize(arr: np.ndarray, size_hw: tuple[int, int], resample) -> np.ndarray:
    h, w = size_hw
    return np.asarray(Image.fromarray(arr).resize((w, h), resample))


def training_scale_limit(config, height: int, width: int) -> int:
    """The longest side at which a `height` x `width` photo's shortest side is the checkpoint's
    `data.resize_max` (the largest scale training showed the network); 0 if it is already there
    or smaller (no scaling)."""
    top = int(config.data.resize_max)
    short, long = min(height, width), max(height, width)
    if short <= top:
        return 0
    return max(1, int(long * top / short))  # rounded down: the shortest side ends <= resize_max


class Completer:
    """A restored checkpoint's completion network, ready for photos of any size.

    Args:
      path: a training workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder.
    """

    def __init__(self, path: str):
        import jax

        from glcic_jax import checkpointing, evaluate

        try:
            self.config, nets, state = checkpointing.restore_for_inference(path)
        except FileNotFoundError as e:
            raise CompletionError(str(e)) from e
        except Exception as e:  # a corrupt or foreign folder: say where, not a traceback
            raise CompletionError(f"cannot restore a GLCIC checkpoint from {path!r}: "
                                  f"{type(e).__name__}: {e}") from e
        self.step = int(jax.device_get(state.step))
        self.g_vars = evaluate.generator_variables(state)
        self.mean_pixel = np.asarray(jax.device_get(state.mean_pixel), np.float32)
        self.mean_u8 = evaluate.to_uint8(self.mean_pixel)
        self._fn = evaluate.completion_fn(nets)

    def _network_input(self, rgb: np.ndarray, hole: np.ndarray, max_size: int,
                       train_scale: bool = False):
        """(padded uint8 input, padded float mask, size the network works at)."""
        # The hole's content is replaced before anything else (resizing included) reads it.
        x = np.where(hole[..., None], self.mean_u8, rgb)
        h, w = hole.shape
        limit = training_scale_limit(self.config, h, w) if train_scale else 0
        if limit:
            max_size = min(max_size, limit) if max_size else limit
        if max_size and max(h, w) > max_size:
            s = max_size / max(h, w)
            small = (max(1, round(h * s)), max(1, round(w * s)))
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

        `train_scale`: work at the checkpoint's training scale (`training_scale_limit`).

        Photos whose network input has the same shape are run as one batch (up to batch_size).
        """
        from glcic_jax import evaluate
        from glcic_jax import postprocess as postprocess_lib

        prepared = [self._network_input(im, m, max_size, train_scale)
                    for im, m in zip(images, holes)]
        groups: dict[tuple, list[int]] = {}
        for i, (x, _, _) in enumerate(prepared):
            groups.setdefault(x.shape, []).append(i)
        results: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), max(1, batch_size)):
                chunk = indices[start : start + max(1, batch_size)]
                x = np.stack([prepared[i][0] for i in chunk])
                m = np.stack([prepared[i][1] for i in chunk])
                out = evaluate.to_uint8(np.asarray(self._fn(self.g_vars, x, m, self.mean_pixel)))
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


# ----------------------------------------------------------------------------------------------
# Writing


def _format_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise CompletionError(f"cannot write {path!r}: unknown image extension {ext!r} "
                              f"(use .png for an exact result).")
    return fmt


def write_image(path: str, pixels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Write uint8 [H, W(, C)] pixels (C = 1, 2, 3, 4: L, LA, RGB, RGBA) atomically: to a
    temporary file in the same folder, renamed when complete."""
    fmt = _format_for(path)
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    img = Image.fromarray(np.ascontiguousarray(arr))
    params = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "JPEG":
        params["quality"] = 95
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt, **params)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def mask_path_for(output: str) -> str:
    """Where the random mask of `output` is saved: `<output stem>_mask.png` beside it."""
    return os.path.splitext(output)[0] + "_mask.png"


# ----------------------------------------------------------------------------------------------
# Command line


@dataclasses.dataclass
class Job:
    image: str
    mask: str | None
    output: str


def _list_images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def plan_jobs(image: str, mask: str | None, output: str) -> list[Job]:
    """Pair inputs, masks and outputs: one file, or a folder matched by file stem."""
    if os.path.isdir(image):
        if mask is not None and not os.path.isdir(mask):
            raise CompletionError(f"--image is a folder, so --mask must be a folder too "
                                  f"(masks matched by file stem); {mask!r} is not one.")
        if os.path.exists(output) and not os.path.isdir(output):
            raise CompletionError(f"--image is a folder, so --output must be a folder; "
                                  f"{output!r} is a file.")
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
    flags.DEFINE_integer("seed", 0, "Seed of the random holes (without --mask).", flag_values=fv)


def _parse(argv: Sequence[str]):
    from absl import flags

    fv = flags.FlagValues()
    _define_flags(fv)
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        raise CompletionError(str(e)) from e
    if len(rest) > 1:
        raise CompletionError(f"unexpected arguments: {' '.join(rest[1:])} (flags are "
                              f"--name=value).")
    if bool(fv.workdir) == bool(fv.checkpoint):
        raise CompletionError("pass exactly one of --workdir=DIR or --checkpoint=PATH.")
    for name in ("image", "output"):
        if not fv[name].value:
            raise CompletionError(f"--{name} is required.")
    return fv


def usage() -> str:
    from absl import flags

    fv = flags.FlagValues()
    _define_flags(fv)
    return __doc__.split("Guarantees:")[0].rstrip() + "\n\nFlags:\n" + fv.get_help()


def run(argv: Sequence[str]) -> int:
    """The command line, in-process: `argv[0]` is the program name. Returns the exit status."""
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage())
        return 0
    try:
        _run(argv)
    except CompletionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Outputs are written atomically: each one is either complete or absent.
        print("error: Interrupted (Ctrl-C); outputs already written are complete, none is "
              "partial.", file=sys.stderr)
        return 130
    return 0


def _run(argv: Sequence[str]) -> None:
    t0 = time.time()
    fv = _parse(argv)
    jobs = plan_jobs(fv.image, fv.mask, fv.output)

    # Every check a user can fail comes before any output is written.
    for job in jobs:
        fmt = _format_for(job.output)
        if fmt in LOSSY_FORMATS:
            print(f"note: {job.output} is {fmt}: re-encoding changes pixels outside the hole "
                  f"too; use .png for an exact result.")
    photos = [read_photo(j.image) for j in jobs]
    for job, photo in zip(jobs, photos):
        if photo.mode in ("LA", "RGBA") and _format_for(job.output) == "JPEG":
            raise CompletionError(f"{job.image} has an alpha channel, which JPEG cannot store; "
                                  f"write {os.path.splitext(job.output)[0]}.png instead.")
    holes = [read_mask(j.mask, p.size) if j.mask else None for j, p in zip(jobs, photos)]

    import jax

    completer = Completer(fv.checkpoint or fv.workdir)
    t_ready = time.time()
    key = jax.random.PRNGKey(fv.seed)
    for i, photo in enumerate(photos):
        if holes[i] is None:
            holes[i] = random_hole(completer.config, photo.size, jax.random.fold_in(key, i))
    completed = completer.complete([p.rgb() for p in photos], holes, max_size=fv.max_size,
                                   batch_size=fv.batch_size, postprocess=fv.postprocess,
                                   train_scale=fv.train_scale)
    t_done = time.time()

    for job, photo, hole, rgb in zip(jobs, photos, holes, completed):
        os.makedirs(os.path.dirname(os.path.abspath(job.output)), exist_ok=True)
        write_image(job.output, photo.merge(rgb, hole), photo.icc_profile)
        extra = ""
        if job.mask is None:
            write_image(mask_path_for(job.output), hole.astype(np.uint8) * 255)
            extra = f" (random mask: {mask_path_for(job.output)})"
        h, w = photo.size
        note = f" [{photo.note}]" if photo.note else ""
        print(f"{job.image} -> {job.output}: {w}x{h} {photo.mode}, "
              f"{100.0 * hole.mean():.1f}% hole{extra}{note}")
    device = jax.devices()[0].platform
    print(f"Completed {len(jobs)} image(s) in {time.time() - t0:.2f} s on {device}: reading and "
          f"restoring step {completer.step} {t_ready - t0:.2f} s, completing (with compilation) "
          f"{t_done - t_ready:.2f} s.")


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
