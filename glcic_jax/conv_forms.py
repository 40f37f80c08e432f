"""How the networks' convolutions are computed on each platform: the same layers, the same
parameters, the same outputs up to float rounding, in the form each backend runs fastest.

XLA's CPU backend has two slow spots that GLCIC's networks hit, an order of magnitude or more
slower than PyTorch (oneDNN) on the same layers (`benchmarks/bench_conv_forms.py` times each
layer both ways; docs/cpu_speed.md has the figures):

* the gradient of a stride-2 transposed convolution (the completion network's two 4x4
  upsampling layers): XLA computes it through a convolution over a zero-dilated input;
* convolutions with a small output (the discriminators' last 5x5 stride-2 layers, 4x4 or 2x2
  outputs of 512 channels), forward and backward, against the same sums as one matrix product.

On the CPU, `deconv4x4` therefore computes a transposed convolution as four interleaved 2x2
convolutions (its sub-pixel form), and `conv` computes a convolution of <= 64 output pixels per
image as one matrix product over the input's patches. Both are our own choices for XLA's CPU
backend (not from the paper or another implementation); `lax.platform_dependent` picks the form
when the function is lowered, so accelerators keep XLA's own convolutions (cuDNN's) unchanged.
tests/test_conv_forms.py checks outputs and gradients against XLA's convolutions.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# A convolution whose output has at most this many pixels per image is a patches-times-kernel
# matrix product on the CPU: far faster up to 4x4 outputs, a little at 8x8, no gain beyond
# (benchmarks/bench_conv_forms.py), so 8x8 is the cut.
PATCHES_MAX_OUTPUT_PIXELS = 64

NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    """Whether `dimension_numbers` (any form lax accepts) is NHWC input, HWIO kernel, NHWC out."""
    if ndim != 4 or dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
    return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == (
        (0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def patches_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 padding: Sequence[tuple[int, int]], dilation: Sequence[int],
                 precision: Any = None) -> jax.Array:
    """An NHWC/HWIO convolution as one matrix product: each output pixel's kh x kw input taps
    (strided, dilated) gathered side by side along channels, times the kernel flattened to
    `[kh * kw * C_in, C_out]` (HWIO's own order). Sums the same products as the convolution.

    One gather with constant indices (its gradient one scatter-add) rather than kh * kw slices:
    the same speed, and much less for XLA to compile."""
    kh, kw, c_in, c_out = kernel.shape
    (pt, pb), (pl, pr) = padding
    (sh, sw), (dh, dw) = strides, dilation
    n, h, w, _ = x.shape
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    wp = xp.shape[2]
    rows = (np.arange(ho)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None] * dh)
    cols = (np.arange(wo)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :] * dw)
    index = jnp.asarray((rows * wp + cols).reshape(-1), jnp.int32)  # [ho * wo * kh * kw]
    patches = jnp.take(xp.reshape(n, -1, c_in), index, axis=1)
    y = jnp.dot(patches.reshape(n * ho * wo, kh * kw * c_in),
                kernel.reshape(kh * kw * c_in, c_out), precision=precision)
    return y.reshape(n, ho, wo, c_out)


def conv(inputs: jax.Array, kernel: jax.Array, window_strides: Sequence[int],
         padding: Any, lhs_dilation: Sequence[int] | None = None,
         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
         feature_group_count: int = 1, precision: Any = None) -> jax.Array:
    """`lax.conv_general_dilated` (same signature: flax's `nn.Conv(conv_general_dilated=...)`
    calls it), computed by `patches_conv` on the CPU when the output is small (see the module
    docstring). Anything else, and every other platform, is `lax.conv_general_dilated` itself."""

    def xla(x, k):
        return lax.conv_general_dilated(
            x, k, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision)

    strides = tuple(window_strides)
    dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str):
        pads = None if padding != "VALID" else ((0, 0), (0, 0))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    # Symbolic sizes (a shape-polymorphic export) cannot be compared: XLA's convolution.
    plain = (pads is not None and feature_group_count == 1 and len(strides) == 2
             and all(isinstance(d, int) for d in inputs.shape[1:3])
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and _is_nhwc(dimension_numbers, inputs.ndim))
    if not plain:
        return xla(inputs, kernel)
    kh, kw = kernel.shape[:2]
    ho = (inputs.shape[1] + sum(pads[0]) - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (inputs.shape[2] + sum(pads[1]) - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    if ho * wo > PATCHES_MAX_OUTPUT_PIXELS:
        return xla(inputs, kernel)
    return lax.platform_dependent(
        inputs, kernel,
        cpu=lambda x, k: patches_conv(x, k, strides, pads, dilation, precision),
        default=xla)


def subpixel_deconv4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`lax.conv_transpose(x, kernel, (2, 2), 'SAME')` for a 4x4 HWIO kernel (flax's
    `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME')` without its bias), as
    four 2x2 convolutions whose outputs are interleaved.

    Output pixel (2p + a, 2q + b) sums the input's 2x2 neighbourhood starting at (p - 1 + a,
    q - 1 + b) with the kernel's taps (a, a + 2) x (b, b + 2): exactly the products
    `lax.conv_transpose` sums, without the zeros it inserts between the input pixels."""
    pads = ((1, 0), (0, 1))
    rows = []
    for a in (0, 1):
        cols = [lax.conv_general_dilated(x, kernel[a::2, b::2], (1, 1), (pads[a], pads[b]),
                                         dimension_numbers=NHWC)
                for b in (0, 1)]
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, b, C]
    y = jnp.stack(rows, axis=2)  # [B, H, a, W, b, C]
    n, h, _, w, _, c = y.shape
    return y.reshape(n, 2 * h, 2 * w, c)


def deconv4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The 4x4 stride-2 'SAME' transposed convolution of GLCIC's upsampling layers:
    `subpixel_deconv4x4` on the CPU, `lax.conv_transpose` elsewhere."""
    if kernel.shape[:2] != (4, 4):
        raise ValueError(f"deconv4x4 needs a 4x4 kernel, got {kernel.shape}.")
    return lax.platform_dependent(
        x, kernel, cpu=subpixel_deconv4x4,
        default=lambda x, k: lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=NHWC))
