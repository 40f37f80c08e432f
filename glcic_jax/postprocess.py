"""GLCIC's post-processing: fast marching then Poisson blending around the hole (GLCIC 3.4).

The authors' release fills the hole of the *input* with OpenCV's fast marching method
(`cv2.inpaint`, `INPAINT_TELEA`, radius 1) and then Poisson-blends the network's completion into
that image (`cv2.seamlessClone`, `NORMAL_CLONE`), so that the colours at the hole's boundary agree
with the surroundings. `postprocess` does the same from the completed image and the mask alone:
the pixels that were inside the hole before completion are never read, so evaluating a
post-processed result cannot leak the ground truth (a popular PyTorch port blends against the
original image and does leak it).

Three details differ from a plain call of `seamlessClone`, each because OpenCV would otherwise
get the hole's edge wrong or fail:

* OpenCV clears the mask's one-pixel frame and needs the blended region inside the image. Both
  images are padded by two pixels (edge replication) and the mask with zeros first, so a hole
  that touches the image border is blended like any other and the region always fits.
* OpenCV places the region at `p - size // 2`; `p` is chosen so that this is exactly where the
  region was taken from (the usual `(min + max) // 2` is off by one pixel for even sizes).
* `seamlessClone` erodes the mask it is given in place; it gets a copy. Pixels outside the hole
  are copied back from the input afterwards, so they are returned exactly.

As in the release, OpenCV's own 3-pixel erosion of the mask means the hole's outer ring takes its
gradients from the fast-marching fill (that is what hides the seam), and a hole too small to hold
a Poisson interior (under 3 pixels across) comes back as the fast-marching fill alone.

Images are uint8 `[H, W, 3]`; the channel order does not matter (both OpenCV functions treat the
channels alike).
"""

from __future__ import annotations

import numpy as np

TELEA_RADIUS = 1  # the authors' release: cv2.inpaint(..., 1, INPAINT_TELEA)
PAD = 2  # keeps every hole pixel off the frame that seamlessClone clears


def _hole_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {shape}.")
    return mask > 0.5 if mask.dtype != np.bool_ else mask


def postprocess(completed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fast marching + Poisson blending of a completed image around its hole (GLCIC 3.4).

    Args:
      completed: uint8 `[H, W, 3]`, the completion network's output composited into the input
        (original pixels outside the hole, generated pixels inside).
      mask: `[H, W]` or `[H, W, 1]`, bool or {0, 1} (1 = hole).

    Returns:
      uint8 `[H, W, 3]`: the blended image; pixels outside the hole equal `completed` exactly.
    """
    import cv2  # local: only post-processing and the baselines need OpenCV

    completed = np.asarray(completed)
    if completed.dtype != np.uint8 or completed.ndim != 3 or completed.shape[-1] != 3:
        raise ValueError(f"postprocess needs a uint8 [H, W, 3] image, got {completed.dtype} "
                         f"{completed.shape}.")
    hole = _hole_mask(mask, completed.shape[:2])
    if not hole.any():
        return completed.copy()
    hole_u8 = hole.astype(np.uint8) * 255

    # Fast marching fills the hole from the known pixels only; zeroing the hole first makes it
    # explicit that nothing inside it is read.
    masked = np.where(hole[..., None], np.uint8(0), completed)
    filled = cv2.inpaint(masked, hole_u8, TELEA_RADIUS, cv2.INPAINT_TELEA)

    x, y, w, h = cv2.boundingRect(hole_u8)
    if min(w, h) < 3:  # no interior to solve for: OpenCV would return the fill (or fail)
        return np.where(hole[..., None], filled, completed)
    pad = PAD
    border = dict(top=pad, bottom=pad, left=pad, right=pad, borderType=cv2.BORDER_REPLICATE)
    src = cv2.copyMakeBorder(completed, **border)
    dst = cv2.copyMakeBorder(filled, **border)
    region = np.pad(hole_u8, pad)  # a fresh array: seamlessClone erodes it in place
    center = (x + pad + w // 2, y + pad + h // 2)  # OpenCV puts the region at center - size // 2
    blended = cv2.seamlessClone(src, dst, region, center, cv2.NORMAL_CLONE)
    blended = blended[pad:-pad, pad:-pad]
    return np.where(hole[..., None], blended, completed)
