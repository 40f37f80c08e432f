"""Photos, masks and outputs on disk, for `complete` and `serve`: reading, writing, and the
checks that keep every input and earlier output safe.

Reading (`read_photo`, `read_mask`): the photo keeps its own mode (L, LA, RGB, RGBA; other modes
converted, with a note), EXIF orientation applied; a mask is white (>= HOLE_THRESHOLD) where the
hole is, transparent = not a hole, and must have the photo's size. Either may be a path or an
upload's file object.

Writing (`write_image`): atomically (a temporary file, renamed), in a format that holds the
pixels exactly (`check_format_holds`: PNG, TIFF, BMP, PPM; JPEG and WebP with a note; GIF, PDF,
icons refused), with the umask's permissions.

Safety (`check_outputs`): before the network runs, no output may replace an input (also through
a link) or another output, and every output's folder must take files.

Every problem a user can cause is a `CompletionError`, one line for the command to print.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import IO, Sequence

import numpy as np
from PIL import Image, ImageOps

from glcic_jax import errors, leftovers

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
    """A problem the user can fix (bad path, wrong mask, missing checkpoint, bad flag or request);
    `complete` and `serve` print its message as one line."""


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


def _name(path: str | IO[bytes], name: str | None) -> str:
    """What messages call an input: `name`, else the path (an upload has no path)."""
    return name if name is not None else str(path)


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


# ----------------------------------------------------------------------------------------------
# Writing


def write_image(path: str, pixels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Write uint8 [H, W(, C)] pixels (C = 1, 2, 3, 4: L, LA, RGB, RGBA) atomically: to a
    temporary file in the same folder, renamed when complete. The file gets the permissions of
    a newly created file (0666 minus the umask), as any other program's output."""
    fmt = output_format(path)
    folder = os.path.dirname(os.path.abspath(path))
    # Locked until renamed: a later run removes it only if this process was killed meanwhile.
    fd, tmp = leftovers.temp_file(folder, suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            _encode(f, pixels, fmt, icc_profile)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        os.close(fd)


def encode_image(pixels: np.ndarray, fmt: str = "PNG", icc_profile: bytes | None = None
                 ) -> bytes:
    """uint8 [H, W(, C)] pixels -> the file's bytes in `fmt`, in memory. `write_image` and the
    web server share `_encode`, so both give the same bytes for the same pixels."""
    buf = io.BytesIO()
    _encode(buf, pixels, fmt, icc_profile)
    return buf.getvalue()


def _encode(f: IO[bytes], pixels: np.ndarray, fmt: str, icc_profile: bytes | None) -> None:
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    Image.fromarray(np.ascontiguousarray(arr)).save(f, format=fmt,
                                                    **_save_params(fmt, icc_profile))


def check_format_holds(path: str, mode: str) -> str:
    """Before the network runs: the output format can store a `mode` photo (exactly, for the
    exact formats). A tiny image is encoded and decoded in memory; returns the format."""
    fmt = output_format(path)
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


def output_format(path: str) -> str:
    """The PIL format of an output path; CompletionError for formats that cannot hold a photo
    exactly (GIF, PDF, ...) or that PIL cannot write. Lossy ones (JPEG, WebP) get a note."""
    ext = os.path.splitext(path)[1].lower()
    # PIL's common formats (PNG, JPEG, BMP, GIF, PPM) first: every other plugin is imported
    # only for another extension (importing them all took about 0.1 s of a cold `complete`).
    Image.preinit()
    fmt = Image.EXTENSION.get(ext) or Image.registered_extensions().get(ext)
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mask_path_for(output: str) -> str:
    """Where the random mask of `output` is saved: `<output stem>_mask.png` beside it."""
    return os.path.splitext(output)[0] + "_mask.png"


# ----------------------------------------------------------------------------------------------
# Output paths: checked before the network runs, so that nothing is lost or half-written


@dataclasses.dataclass
class Job:
    """One photo to complete: its path, its mask's (None: random holes) and the output's."""

    image: str
    mask: str | None
    output: str


def check_outputs(jobs: Sequence[Job]) -> None:
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


def remove_leftovers(jobs: Sequence[Job]) -> str | None:
    """Remove the temporary files that killed runs left in the output folders (`leftovers`);
    one line saying what was removed, or None."""
    removed: list[str] = []
    for folder in sorted({os.path.dirname(os.path.abspath(j.output)) for j in jobs}):
        if os.path.isdir(folder):
            removed += leftovers.remove_abandoned(folder, (leftovers.TEMP_FILE, leftovers.PROBE))
    return leftovers.describe(removed, "unfinished output file", "unfinished output files")


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
        fd, probe = leftovers.temp_file(existing, prefix=leftovers.PROBE)
        os.remove(probe)
        os.close(fd)
    except OSError as e:
        raise CompletionError(f"cannot write {output!r}: cannot create files in {existing!r} "
                              f"({e.strerror or e}).") from e
    probed.add(existing)


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
