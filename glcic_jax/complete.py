r"""Complete your own photos with a trained GLCIC checkpoint.

  python -m glcic_jax.complete --workdir=runs/quickstart --image=in.jpg --mask=mask.png \
      --output=out.png [--postprocess] [--max_size=1024]
  python -m glcic_jax.complete --checkpoint=runs/quickstart/checkpoints/300 \
      --image=photos/ --mask=masks/ --output=completed/        # a folder, masks matched by stem

The mask is an image of the photo's size, white (>= 128) where the hole is; 1-channel, RGB or RGBA
(transparent = not a hole). Without --mask, holes are drawn at random as the checkpoint's training
holes were (sizes scaled to the photo; `mask.square`, `mask.position` and `mask.max_holes` kept;
`--seed`), and the mask used is written beside the output as `<output stem>_mask.png`.

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
* Nothing lost: no output replaces an input (photo or mask, also through a link) or another
  output (e.g. the random mask `a_mask.png` of `a` and the completion of an input `a_mask`).
  Formats that cannot hold the pixels exactly (GIF, PDF, ICO, ...) are refused; outputs get the
  umask's permissions.
* Errors a user can cause (missing or unreadable file, wrong mask size, empty mask, missing
  checkpoint, a refused or unwritable output path or format) are checked before the network
  runs and before any output is written, print one line and exit with status 1; so does a write
  that fails later (disk full). Every output is written to a temporary file and renamed, so a
  file at an output path is always complete.
* `--postprocess`: GLCIC's fast marching + Poisson blending (`postprocess.py`), applied at full
  resolution from the completed image and the mask only.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
import sys
import tempfile
import time
from typing import IO, Sequence

import numpy as np
from PIL import Image, ImageOps

from glcic_jax import errors
from glcic_jax import inference
from glcic_jax.input_pipeline import IMAGE_EXTENSIONS

EXACT_FORMATS = ("PNG", "TIFF", "BMP", "PPM")  # hold 8-bit pixels exactly (modes they store)
LOSSY_FORMATS = ("JPEG", "WEBP")  # written with a note: every pixel is re-encoded
# Formats PIL can write that would silently change pixels (or not be an image file at all).
REFUSED_FORMATS = {
    "GIF": "a 256-colour palette changes almost every pixel",
    "PDF": "PIL stores photos in a PDF JPEG-compressed",
    "ICO": "icons are resized to at most 256x256",
    "ICNS": "icons are resized",
}
# Mask grey values >= this are holes. The authors' inpaint.lua uses >= 0.2 (51/255) on its rescaled
# mask; we take the midpoint (our choice): the same on black-and-white masks, fewer hole pixels on
# soft edges.
HOLE_THRESHOLD = 128


class CompletionError(errors.UserError):
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
    PIL's decompression-bomb limit (~179 megapixels) guards servers against hostile uploads, so
    it stays for those; a file the user named on the command line may have any size
    (`--max_size`), so for paths it is lifted.
    """
    is_path = isinstance(path, (str, os.PathLike))
    if is_path and not os.path.isfile(path):
        raise CompletionError(f"{what} {_name(path, name)!r} does not exist (or is not a file).")
    limit = Image.MAX_IMAGE_PIXELS
    if is_path:
        Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CompletionError(f"cannot read {what} {_name(path, name)!r}: {e}") from e
    except MemoryError as e:
        raise CompletionError(f"cannot read {what} {_name(path, name)!r}: not enough memory to "
                              f"decode it") from e
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _sixteen_bit_to_l(img: Image.Image) -> np.ndarray:
    """Integer and float grayscale to 8 bits by the mode's convention, never by the data, so a
    dark image and a bright one of the same mode are scaled alike: 16-bit (I;16*, I) full scale
    65535, float (F) full scale 1.0 (values outside [0, 1] clip). Our choice: an F image whose
    values exceed 1 is taken as [0, 255] data, as it cannot be [0, 1] data."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if not arr.size or np.nanmax(arr) <= 1.0 else 255.0
    else:
        top = 65535.0
    arr = np.nan_to_num(arr, nan=0.0)
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
    """Random holes for an (H, W) photo, drawn as the checkpoint's training holes were.

    The config's hole and window sizes are scaled by min(H, W) / image_size; its `mask.square`
    and `mask.position` (e.g. the landscape config's square centred hole) and `mask.max_holes`
    are kept.
    """
    import jax

    from glcic_jax import masks

    h, w = size
    scale = min(h, w) / float(config.data.image_size)
    local = max(1, min(h, w, round(int(config.mask.local_size) * scale)))
    hole_max = max(1, min(local, round(int(config.mask.hole_max) * scale)))
    hole_min = max(1, min(hole_max, round(int(config.mask.hole_min) * scale)))
    # The checkpoint's own hole shape and placement (mask.square, mask.position), scaled.
    spec = masks.MaskSpec.from_config(config.mask)._replace(
        local_size=local, hole_min=hole_min, hole_max=hole_max)
    m = jax.jit(masks.sample_masks, static_argnums=(1, 2, 3, 4))(key, 1, h, w, spec).mask
    return np.asarray(jax.device_get(m))[0, ..., 0] > 0.5


# ----------------------------------------------------------------------------------------------
# Completing


training_scale_limit = inference.training_scale_limit  # where --train_scale's limit is computed


class Completer(inference.Completer):
    """The completion network at `path`, ready for photos of any size.

    `inference.Completer` (where loading and completing live) built from a path, with
    CompletionError for a path that holds nothing restorable. Subclasses may override
    `_network_input` (the web server pads further to its compile buckets).

    Args:
      path: a workdir (a training run or a converted Torch7 model), its `checkpoints/` folder or
        one `checkpoints/<step>` folder.
    """

    def __init__(self, path: str):
        try:
            loaded = inference.load(path)
        except inference.LoadError as e:
            raise CompletionError(str(e)) from e
        super().__init__(loaded.config, loaded.generator, loaded.variables, loaded.mean_pixel,
                         loaded.step)


# ----------------------------------------------------------------------------------------------
# Writing


def _format_for(path: str) -> str:
    """The PIL format of an output path; CompletionError for formats that cannot hold a photo
    exactly (GIF, PDF, ...) or that PIL cannot write. Lossy ones (JPEG, WebP) get a note."""
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise CompletionError(f"cannot write {path!r}: unknown image extension {ext!r} "
                              f"(use .png for an exact result).")
    if fmt not in EXACT_FORMATS + LOSSY_FORMATS:
        why = REFUSED_FORMATS.get(fmt, "not a format for photos")
        raise CompletionError(
            f"cannot write {path!r}: {fmt} cannot hold the photo's pixels exactly ({why}); use "
            f".png, .tif or .bmp (exact), or .jpg / .webp if a lossy result is fine.")
    return fmt


def _save_params(fmt: str, icc_profile: bytes | None = None) -> dict:
    params = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "JPEG":
        params["quality"] = 95
    return params


def check_format_holds(path: str, mode: str) -> str:
    """Before the network runs: the output format can store a `mode` photo (exactly, for the
    exact formats). A tiny image is encoded and decoded in memory; returns the format."""
    fmt = _format_for(path)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    probe = np.random.default_rng(0).integers(0, 256, (4, 4, channels), dtype=np.uint8)
    arr = probe[..., 0] if channels == 1 else probe
    try:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **_save_params(fmt))
        buf.seek(0)
        back = np.asarray(Image.open(buf).convert(mode))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CompletionError(f"cannot write {path!r}: {fmt} cannot store a {mode} photo ({e}); "
                              f"use .png.") from e
    if fmt in EXACT_FORMATS and not np.array_equal(back.reshape(probe.shape), probe):
        raise CompletionError(f"cannot write {path!r}: {fmt} does not store a {mode} photo "
                              f"exactly; use .png.")
    return fmt


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_image(path: str, pixels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Write uint8 [H, W(, C)] pixels (C = 1, 2, 3, 4: L, LA, RGB, RGBA) atomically: to a
    temporary file in the same folder, renamed when complete. The file gets the permissions of
    a newly created file (0666 minus the umask), as any other program's output."""
    fmt = _format_for(path)
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    img = Image.fromarray(np.ascontiguousarray(arr))
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt, **_save_params(fmt, icc_profile))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def mask_path_for(output: str) -> str:
    """Where the random mask of `output` is saved: `<output stem>_mask.png` beside it."""
    return os.path.splitext(output)[0] + "_mask.png"


# ----------------------------------------------------------------------------------------------
# Output paths: checked before the network runs, so that nothing is lost or half-written


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_writable_folder(output: str, probed: set[str]) -> None:
    """The folder of `output` takes a new file, or can be created: its nearest existing
    ancestor must be a folder where a (removed at once) probe file can be created."""
    existing = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing in probed:
        return
    if not os.path.isdir(existing):
        raise CompletionError(f"cannot write {output!r}: {existing!r} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CompletionError(f"cannot write {output!r}: cannot create files in {existing!r} "
                              f"({e.strerror or e}).") from e
    probed.add(existing)


def check_outputs(jobs: Sequence["Job"]) -> None:
    """Refuse, before anything is computed or written, an output that would replace an input
    (photo or mask, also through a link) or another output, or where a folder has its name, or
    whose folder cannot take files."""
    inputs: dict[str, str] = {}
    inodes: dict[tuple[int, int], str] = {}
    for j in jobs:
        for path, kind in ((j.image, "photo"), (j.mask, "mask")):
            if path:
                inputs[_key(path)] = f"the input {kind} {path!r}"
                ino = _inode(path)
                if ino:
                    inodes[ino] = inputs[_key(path)]
    outputs = []
    for j in jobs:
        outputs.append((j.output, f"the completion of {j.image!r}"))
        if j.mask is None:
            outputs.append((mask_path_for(j.output), f"the random mask of {j.image!r}"))
    written: dict[str, str] = {}
    probed: set[str] = set()
    for out, what in outputs:
        victim = inputs.get(_key(out)) or inodes.get(_inode(out) or (-1, -1))
        if victim:
            raise CompletionError(f"{what} would overwrite {victim}: outputs never replace "
                                  f"inputs; choose another --output.")
        if _key(out) in written:
            raise CompletionError(f"{what} and {written[_key(out)]} would both be written to "
                                  f"{out!r}; rename one of the inputs or choose another "
                                  f"--output.")
        written[_key(out)] = what
        if os.path.isdir(out):
            raise CompletionError(f"cannot write {out!r} ({what}): a folder has that name.")
        _check_writable_folder(out, probed)


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
    flags.DEFINE_integer("verbosity", None, "Show the libraries' log lines too (absl levels: 0 "
                         "INFO, 1 DEBUG); by default only this tool's lines.", flag_values=fv)


def parse_checkpoint_flags(argv: Sequence[str], define_flags):
    """absl flags defined by `define_flags(fv)`, parsed from `argv`, with the checks every
    checkpoint-reading command shares (complete, serve); bad flags are a CompletionError."""
    from absl import flags

    fv = flags.FlagValues()
    define_flags(fv)
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        raise CompletionError(str(e)) from e
    if len(rest) > 1:
        raise CompletionError(f"unexpected arguments: {' '.join(rest[1:])} (flags are "
                              f"--name=value).")
    if bool(fv.workdir) == bool(fv.checkpoint):
        raise CompletionError("pass exactly one of --workdir=DIR or --checkpoint=PATH.")
    return fv


def _parse(argv: Sequence[str]):
    fv = parse_checkpoint_flags(argv, _define_flags)
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


def _network_shape(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    """The (H, W) the network runs at for a photo of `size` (see Completer._network_input)."""
    h, w = size
    if max_size and max(h, w) > max_size:
        s = max_size / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    return h + -h % 4, w + -w % 4


def _run(argv: Sequence[str]) -> None:
    t0 = time.time()
    fv = _parse(argv)
    from glcic_jax import console

    console.quiet_native_logs(fv.verbosity is not None)
    console.configure(fv.verbosity is not None, logging.WARNING)
    jobs = plan_jobs(fv.image, fv.mask, fv.output)

    # Every check a user can fail comes before the network runs and before any output is
    # written: formats, inputs, masks, then the output paths.
    for job in jobs:
        _format_for(job.output)
    photos = [read_photo(j.image) for j in jobs]
    lossy = []
    for job, photo in zip(jobs, photos):
        if photo.mode in ("LA", "RGBA") and _format_for(job.output) == "JPEG":
            raise CompletionError(f"{job.image} has an alpha channel, which JPEG cannot store; "
                                  f"write {os.path.splitext(job.output)[0]}.png instead.")
        if check_format_holds(job.output, photo.mode) in LOSSY_FORMATS:
            lossy.append(job.output)
    holes = [read_mask(j.mask, p.size) if j.mask else None for j, p in zip(jobs, photos)]
    check_outputs(jobs)
    for path in lossy:
        print(f"note: {path} is {_format_for(path)}: re-encoding changes pixels outside the "
              f"hole too; use .png for an exact result.")

    import jax

    completer = Completer(fv.checkpoint or fv.workdir)
    t_ready = time.time()
    key = jax.random.PRNGKey(fv.seed)
    for i, photo in enumerate(photos):
        if holes[i] is None:
            holes[i] = random_hole(completer.config, photo.size, jax.random.fold_in(key, i))
    # --batch_size photos at a time, each written as soon as its batch is done; a photo's time is
    # its batch's completion time shared by the photos in it (the first batch of each input size
    # includes compiling the network for it).
    t_complete, shapes_seen = 0.0, set()
    size = max(1, fv.batch_size)
    for start in range(0, len(jobs), size):
        chunk = range(start, min(len(jobs), start + size))
        t = time.time()
        completed = completer.complete([photos[i].rgb() for i in chunk],
                                       [holes[i] for i in chunk], max_size=fv.max_size,
                                       batch_size=size, postprocess=fv.postprocess,
                                       train_scale=fv.train_scale)
        seconds = time.time() - t
        t_complete += seconds
        # The network compiles once per (batch, input shape) pair it has not seen yet.
        per_shape = collections.Counter(
            _network_shape(photos[i].size, inference.effective_max_size(
                completer.config, *photos[i].size, fv.max_size, fv.train_scale))
            for i in chunk)
        compiled = set(per_shape.items()) - shapes_seen
        shapes_seen |= compiled
        each = seconds / len(chunk)
        timing = (f"{each:.2f} s" + (f" (a batch of {len(chunk)})" if len(chunk) > 1 else "")
                  + (" including compilation" if compiled else ""))
        for i, rgb in zip(chunk, completed):
            job, photo, hole = jobs[i], photos[i], holes[i]
            _write_or_explain(job.output, photo.merge(rgb, hole), photo.icc_profile)
            extra = ""
            if job.mask is None:
                _write_or_explain(mask_path_for(job.output), hole.astype(np.uint8) * 255)
                extra = f" (random mask: {mask_path_for(job.output)})"
            h, w = photo.size
            note = f" [{photo.note}]" if photo.note else ""
            print(f"{job.image} -> {job.output}: {w}x{h} {photo.mode}, "
                  f"{100.0 * hole.mean():.1f}% hole, {timing}{extra}{note}")
    device = jax.devices()[0].platform
    print(f"Completed {len(jobs)} image(s) in {time.time() - t0:.2f} s on {device}: reading and "
          f"restoring step {completer.step} {t_ready - t0:.2f} s, completing (with compilation) "
          f"{t_complete:.2f} s.")


def _write_or_explain(path: str, pixels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """write_image, with a failure that the checks could not foresee (disk full, a folder
    removed meanwhile) as one line: the outputs written before it are complete."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_image(path, pixels, icc_profile)
    except OSError as e:
        raise CompletionError(f"cannot write {path!r}: {e.strerror or e}. Outputs written "
                              f"before it are complete; nothing is half-written.") from e


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
