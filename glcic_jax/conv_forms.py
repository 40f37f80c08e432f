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
image as one matrix product over the input's patches.

XLA's CPU convolution also computes the input gradient of a VALID stride-1 layer (the
reflect-padding configs pad the input themselves) over the whole padded input, most of a dilated
layer's taps reading zeros there; `conv` computes the small and the strongly dilated ones as
`taps_conv`, one matrix product over each output pixel's taps, forward and backward.

A 3x3 layer dilated by half its input's side (the paper's dilation-16 layer on the 32 x 32
middle of a 128 px image) reads only the padding with five of its nine taps; XLA's CPU
convolution computes all nine (PyTorch's ran that layer 3-4x faster). `quadrants_conv3x3`
computes the four that count as one matrix product, forward and backward.

The layers of a few channels (3-8: the 1/8-width networks' 64 px layers) leave XLA's CPU
convolution, a matrix product over patches, almost nothing to put in a vector register; it ran
them 4-5x slower than PyTorch forward, 2.5-3x with their gradients. `narrow_conv` computes
them as broadcast multiply-adds, one elementwise loop over the output, and their input
gradients so too.

XLA's CPU backend computes a kernel gradient as a convolution whose output is the kernel, and
ran those of the wide layers that keep its convolution forward (stride 2, the sub-pixel
upsampling's 2x2 convolutions, the first 5x5 layers) up to 4x slower than one matrix product
per tap; `taps_kernel_grad_conv` keeps XLA's forward and input
gradient and computes the kernel gradient so.

The 3x3 stride-1 convolutions, most of the networks' arithmetic, run near the CPU's peak in XLA
and in PyTorch alike, so neither is faster by computing them better; `winograd_conv3x3` computes
fewer products instead: Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016) needs 36 products per 4x4 output tile
and input channel where the direct form needs 144. Its weight gradient is the same algorithm's
adjoint, and XLA's CPU weight gradient is slower still than its forward, so on the CPU the 3x3
stride-1 float32 convolutions with > 64 output pixels and at least
`WINOGRAD_MIN_TRAINED_CHANNELS` channels on one side train through it; its forward (and the
input gradient, the same convolution with the kernel flipped) only where both channel counts are
at least `WINOGRAD_MIN_CHANNELS`, below which the transforms cost more than the products saved.
A dilated layer whose sub-images would leave most of each 4x4 tile empty (dilation 16 on a
32 x 32 input) keeps XLA's convolution.

All of these are our own choices for XLA's CPU backend (not from the paper or another
implementation of it); `lax.platform_dependent` picks the form when the function is lowered, so
accelerators keep XLA's own convolutions (cuDNN's) unchanged. tests/test_conv_forms.py checks
outputs and gradients against XLA's convolutions within bounds derived from each form's
arithmetic.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# A convolution whose output has at most this many pixels per image is a patches-times-kernel
# matrix product on the CPU: far faster up to 4x4 outputs, a little at 8x8, no gain beyond
# (benchmarks/bench_conv_forms.py), so 8x8 is the cut.
PATCHES_MAX_OUTPUT_PIXELS = 64

# A VALID stride-1 convolution (what the reflect-padding configs give XLA, having padded the
# input themselves) with both channel counts at least TAPS_MIN_CHANNELS is one product over its
# taps (`taps_conv`) on the CPU where its output has at most TAPS_MAX_OUTPUT_PIXELS pixels per
# image (the 1/8-width networks' 16 x 16 layers at 64 px, 32 -> 32 channels), or at most
# TAPS_MAX_DILATED_OUTPUT_PIXELS with a dilation of at least half its smaller side (the paper's
# dilation-16 layer on 32 x 32, which Winograd's tiles would leave mostly empty). Forward and
# backward, those ran 1.9-2.9x and 2.1-2.5x faster than XLA's VALID convolution; 32 x 32 outputs
# of 32 channels as fast or up to 1.6x slower (benchmarks/bench_conv_forms.py --only taps;
# docs/cpu_speed.md). Their steps compile a few seconds longer (the patches and the placed
# gradients are more operations for XLA).
TAPS_MIN_CHANNELS = 32
TAPS_MAX_OUTPUT_PIXELS = 256
TAPS_MAX_DILATED_OUTPUT_PIXELS = 1024

# The kernel gradient of a float32 layer that keeps XLA's convolution forward (the stride-2
# layers, the sub-pixel upsampling's 2x2 convolutions, the first 5x5 layers) is one product per
# tap on the CPU where either channel count is at least TAPS_KERNEL_GRAD_MIN_CHANNELS and the
# kernel has at most TAPS_KERNEL_GRAD_MAX_TAPS taps or at most TAPS_KERNEL_GRAD_MAX_IN_CHANNELS
# input channels (the first layers' 5x5 kernels over RGB + mask). Forward + backward, those
# layers ran 1.1-2.7x faster than with XLA's kernel gradient at 128 and 256 px (one 2x2 layer at
# 64 px 0.9-1.1x); the discriminators' wide 5x5 layers about as fast (0.97-1.26x) and compiled
# 3x slower, and the 1/8-width networks' phase-1 step ran 1.18x slower with every layer so
# (benchmarks/bench_conv_forms.py --only kgrad; docs/cpu_speed.md), hence the cuts.
TAPS_KERNEL_GRAD_MIN_CHANNELS = 64
TAPS_KERNEL_GRAD_MAX_TAPS = 9
TAPS_KERNEL_GRAD_MAX_IN_CHANNELS = 4

# A stride-1 float32 convolution with at most NARROW_MAX_CHANNELS channels on both sides and at
# most NARROW_MAX_TERMS products per output (kh * kw * C_in: the 1/8-width networks' 64 px
# layers, 5x5 4 -> 8, 3x3 8 -> 4 and 4 -> 3) is a sum of broadcast multiply-adds on the CPU
# (`narrow_conv`), its input gradient too where kh * kw * C_out is at most NARROW_MAX_TERMS.
# Those layers ran 1.6-2.4x faster forward than XLA's convolution, the 3x3 ones 1.9-2.1x forward
# + backward (benchmarks/bench_conv_forms.py --only narrow); with the 32 px 16-channel layers
# too the quickstart's phase-1 step ran 1.6x slower, and the 5x5 layer's input gradient (200
# products) ran slower than XLA's (docs/cpu_speed.md).
NARROW_MAX_CHANNELS = 8
NARROW_MAX_TERMS = 100

# Winograd's forward (and input gradient) where both channel counts are at least this: 256 -> 256
# runs 2.1-2.7x faster than XLA's convolution at the networks' sizes, 128 -> 128 about as fast,
# fewer channels slower (benchmarks/bench_conv_forms.py).
WINOGRAD_MIN_CHANNELS = 256
# Gradients by Winograd's algorithm where either channel count is at least this; the narrower
# layers of the quickstart's 1/8-width networks trained more slowly and compiled more slowly so.
WINOGRAD_MIN_TRAINED_CHANNELS = 64

NHWC = ("NHWC", "HWIO", "NHWC")

# LLVM's -O1 rather than XLA's default -O2 for the code XLA generates on the CPU: the
# convolutions and matrix products are library calls either way, and the Winograd transforms'
# elementwise code compiled in half the time and ran as fast (docs/cpu_speed.md). Used for the
# training steps of networks with Winograd layers, for inference (`models.compiler_options`),
# and for the jits that run once (`run_once_compiler_options`).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
# Added for inference, which is compiled once and run a few times (a cold `complete` compiles
# its network for one photo): XLA's older fusion emitters compile the full-width completion in
# about half the time, its forward a few percent slower, the same outputs (docs/cpu_speed.md).
# Not for training steps, which compiled slower and ran slower with them.
CPU_INFERENCE_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
# The first jaxlib release whose binaries were checked to know each of those options (found in
# 0.8.1 and 0.10.2): from it to `INFERENCE_XLA_FLAGS_CHECKED_BELOW` an option is used without
# the probe compilation of `_accepted` (0.05-0.08 s of a cold `complete`); other releases, and
# options not listed, are probed.
CPU_INFERENCE_COMPILER_OPTIONS_KNOWN_FROM = {"xla_cpu_use_fusion_emitters": (0, 8, 1)}
# Process-wide XLA flags for the commands that only run inference (`complete`, `serve`), each
# with the first jaxlib release checked to know it; an unknown flag in XLA_FLAGS stops the
# process, so each is set only from that release to the last one checked (both flags were found
# in the jaxlib binaries of 0.8.1 to 0.10.2, the scheduler's in 0.4.35 too):
# * XLA's depth-first memory scheduler rather than its default, concurrency-optimized one, which
#   computed every Winograd layer's kernel transform at the start of the network and kept them
#   all alive;
# * XLA's own (Eigen) matrix products and convolutions rather than YNNPACK's.
# With both, the full-width completion's forward processes peaked lower at every size and ran
# as fast or faster, with outputs equal within float rounding (`benchmarks/bench_cpu.py --only
# forward --without-flags`; docs/cpu_speed.md).
# XLA reads them from XLA_FLAGS only (a jit's compiler options do not change the scheduler), so
# they hold for a whole process; training processes do without them (their steps were no faster
# with them: within the noise, or slower).
INFERENCE_XLA_FLAGS = {
    "xla_cpu_enable_concurrency_optimized_scheduler": ("false", (0, 4, 35)),
    "xla_cpu_experimental_ynn_fusion_type": ("", (0, 8, 1)),
}
INFERENCE_XLA_FLAGS_CHECKED_BELOW = (0, 11, 0)  # releases from this on are left alone


def _release(version: str | None) -> tuple[int, int, int] | None:
    """'0.10.2' (or '0.10.2.dev...') -> (0, 10, 2); None if it does not start so."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version or "")
    return tuple(int(p) for p in m.groups()) if m else None


def _jaxlib_version() -> str | None:
    """The installed jaxlib's version string (None without a jaxlib distribution)."""
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def _jaxlib_release() -> tuple[int, int, int] | None:
    return _release(_jaxlib_version())


def inference_xla_flags(xla_flags: str, jaxlib_version: str) -> str:
    """`xla_flags` (an XLA_FLAGS value) with those of `INFERENCE_XLA_FLAGS` this jaxlib release
    knows added, except any it already sets (the user's choice stands)."""
    version = _release(jaxlib_version)
    if version is None:
        return xla_flags
    added = [f"--{name}={value}" for name, (value, first) in INFERENCE_XLA_FLAGS.items()
             if first <= version < INFERENCE_XLA_FLAGS_CHECKED_BELOW
             and f"--{name}" not in xla_flags]
    return " ".join([xla_flags.strip(), *added]).strip()


def use_inference_xla_flags() -> None:
    """Set `INFERENCE_XLA_FLAGS` in this process's XLA_FLAGS (`inference_xla_flags`). For a
    process that only completes images: call it before JAX starts its backend (XLA reads
    XLA_FLAGS once, when the first device is made); afterwards it changes nothing in XLA."""
    version = _jaxlib_version()
    if version is None:
        return
    flags = inference_xla_flags(os.environ.get("XLA_FLAGS", ""), version)
    if flags:
        os.environ["XLA_FLAGS"] = flags


def compiler_options(inference: bool = False) -> dict | None:
    """Options for `jax.jit(..., compiler_options=...)`: `CPU_COMPILER_OPTIONS` (and for an
    `inference` jit `CPU_INFERENCE_COMPILER_OPTIONS`, those this XLA accepts) when the default
    backend is the CPU, None (XLA's defaults) on accelerators."""
    if jax.default_backend() != "cpu":
        return None
    options = dict(CPU_COMPILER_OPTIONS)
    if inference:
        options.update({k: v for k, v in CPU_INFERENCE_COMPILER_OPTIONS.items()
                        if _accepted(k, v)})
    return options


def run_once_compiler_options() -> dict | None:
    """Options for a jit that runs once or a few times on small inputs, whatever the networks'
    width: a training state's initialisation (`state.create_state`) and the fixed evaluation
    holes (`masks.fixed_eval_masks`). On the CPU, `CPU_COMPILER_OPTIONS` (LLVM's -O1): XLA's
    default -O2 spent most of their time optimising code that then ran for milliseconds. Their
    outputs came out bit for bit the same (random bits are integer arithmetic, then a few float
    operations per value), the quickstart's initialisation compiled in 3.4 s rather than 11.4 s
    (`benchmarks/bench_compile.py`). None (XLA's defaults) on accelerators."""
    return compiler_options()


@functools.lru_cache(maxsize=None)
def _accepted(name: str, value: Any) -> bool:
    """Whether this XLA knows the compiler option (a newer one may drop an older emitter's switch;
    compiling with an unknown option fails): known for the jaxlib releases checked
    (`CPU_INFERENCE_COMPILER_OPTIONS_KNOWN_FROM`), otherwise one tiny compilation, once per
    process."""
    first, release = CPU_INFERENCE_COMPILER_OPTIONS_KNOWN_FROM.get(name), _jaxlib_release()
    if first is not None and release is not None and (
            first <= release < INFERENCE_XLA_FLAGS_CHECKED_BELOW):
        return True
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
            np.float32(0)).compile()
        return True
    except Exception:  # noqa: BLE001  XLA's INVALID_ARGUMENT: "No such compile option"
        return False


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
    calls it), computed on the CPU by `quadrants_conv3x3` for a 3x3 layer dilated by half its
    input's side, by `patches_conv` when the output is small, by `narrow_conv` for stride-1
    layers of a few channels, by `winograd_conv3x3` for wide 3x3
    stride-1 layers, by `taps_conv` for small or strongly dilated VALID ones (`valid_as_padded`
    for the other wide VALID ones), and with `taps_kernel_grad_conv`'s kernel gradient for the
    remaining wide layers (see the module docstring). Anything else, and every other platform,
    is `lax.conv_general_dilated` itself."""

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
    if _is_quadrants_conv(inputs, kernel, strides, pads, dilation):
        return lax.platform_dependent(inputs, kernel, cpu=quadrants_conv3x3, default=xla)
    if ho * wo <= PATCHES_MAX_OUTPUT_PIXELS:
        return lax.platform_dependent(
            inputs, kernel,
            cpu=lambda x, k: patches_conv(x, k, strides, pads, dilation, precision),
            default=xla)
    if uses_narrow_conv(inputs, kernel, strides, pads, dilation):
        return lax.platform_dependent(
            inputs, kernel, default=xla,
            cpu=lambda x, k: narrow_conv(x, k, pads, dilation[0], precision))
    if (kernel.shape[:2] == (3, 3) and strides == (1, 1) and dilation[0] == dilation[1]
            and inputs.dtype == kernel.dtype == jnp.float32
            and max(kernel.shape[2:]) >= WINOGRAD_MIN_TRAINED_CHANNELS
            and all(0 <= p <= 2 * dilation[0] for side in pads for p in side)
            and _winograd_tile_use(inputs.shape[1:3], pads, dilation[0]) >= 0.5):
        return lax.platform_dependent(
            inputs, kernel,
            cpu=lambda x, k: winograd_conv3x3(x, k, pads, dilation[0]), default=xla)
    if (strides == (1, 1) and pads == ((0, 0), (0, 0)) and dilation[0] == dilation[1]
            and inputs.dtype == kernel.dtype == jnp.float32
            and min(kernel.shape[2:]) >= TAPS_MIN_CHANNELS
            and (ho * wo <= TAPS_MAX_OUTPUT_PIXELS
                 or (ho * wo <= TAPS_MAX_DILATED_OUTPUT_PIXELS
                     and 2 * dilation[0] >= min(ho, wo)))):
        return lax.platform_dependent(
            inputs, kernel,
            cpu=lambda x, k: taps_conv(x, k, pads, dilation[0], precision), default=xla)
    if (strides == (1, 1) and pads == ((0, 0), (0, 0))
            and max(kernel.shape[2:]) >= WINOGRAD_MIN_TRAINED_CHANNELS):
        return lax.platform_dependent(
            inputs, kernel, cpu=lambda x, k: valid_as_padded(x, k, dilation), default=xla)
    if uses_taps_kernel_grad(inputs, kernel, pads):
        return lax.platform_dependent(
            inputs, kernel, default=xla,
            cpu=lambda x, k: taps_kernel_grad_conv(x, k, strides, pads, dilation, precision))
    return xla(inputs, kernel)


def _nonnegative_padding(form: str, padding) -> tuple[tuple[int, int], ...]:
    """`padding` as ((lo, hi), ...) of ints; a ValueError naming `form` if any is negative (the
    forms that pad their input themselves compute no cropping)."""
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if min(p for side in padding for p in side) < 0:
        raise ValueError(f"{form} takes non-negative paddings, got {padding}.")
    return padding


def _materialised(x: jax.Array) -> jax.Array:
    """`x` itself (every finite value unchanged: times one, plus zeros), as a product with the
    identity matrix along its last axis, which XLA computes once and stores.

    XLA's CPU fusion counts multiply-adds as free to recompute: left alone, it fused a narrow
    layer's whole sum of products into each of the layer's consumers (the normalisation's two
    statistics, its output, the ReLU's gradient) and the training step ran twice as slow. An
    `optimization_barrier` does not stop that (XLA's CPU compiler removes barriers before it
    fuses); a matrix product is never fused into an elementwise loop."""
    return jnp.dot(x, jnp.eye(x.shape[-1], dtype=x.dtype))


def _broadcast_fma(x: jax.Array, k: jax.Array, dilation: int) -> jax.Array:
    """A VALID stride-1 NHWC/HWIO convolution as kh * kw * C_in broadcast multiply-adds: each
    tap's slice of one input channel times that tap's and channel's row of the kernel, added up
    in HWIO's order, one elementwise loop over the output (`_materialised` keeps it one)."""
    kh, kw, c_in, _ = k.shape
    ho = x.shape[1] - dilation * (kh - 1)
    wo = x.shape[2] - dilation * (kw - 1)
    y = None
    for a in range(kh):
        for b in range(kw):
            read = x[:, a * dilation:a * dilation + ho, b * dilation:b * dilation + wo]
            for c in range(c_in):
                term = read[..., c:c + 1] * k[a, b, c]
                y = term if y is None else y + term
    return _materialised(y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _narrow_valid_conv(x, k, dilation, precision):
    return _broadcast_fma(x, k, dilation)


def _narrow_valid_conv_fwd(x, k, dilation, precision):
    return _broadcast_fma(x, k, dilation), (x, k)


def _narrow_valid_conv_bwd(dilation, precision, residuals, dy):
    x, k = residuals
    kh, kw, _, c_out = k.shape
    d = (dilation, dilation)
    if kh * kw * c_out <= NARROW_MAX_TERMS:
        # The input gradient is the "full" correlation of the cotangent with the kernel turned
        # by 180 degrees and its channels swapped: the same form on the padded cotangent.
        ph, pw = dilation * (kh - 1), dilation * (kw - 1)
        padded = jnp.pad(dy, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        dx = _broadcast_fma(padded, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2), dilation)
    else:
        _, input_vjp = jax.vjp(lambda x: _xla_conv(x, k, (1, 1), "VALID", d, precision), x)
        dx = input_vjp(dy)[0]
    # XLA's own kernel gradient: a reduction over the whole batch into a few hundred numbers,
    # which it ran faster than any form here (products per tap, broadcast reductions).
    _, kernel_vjp = jax.vjp(lambda k: _xla_conv(x, k, (1, 1), "VALID", d, precision), k)
    return dx, kernel_vjp(dy)[0]


_narrow_valid_conv.defvjp(_narrow_valid_conv_fwd, _narrow_valid_conv_bwd)


def narrow_conv(x: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]],
                dilation: int = 1, precision: Any = None) -> jax.Array:
    """A stride-1 NHWC/HWIO convolution with zero `padding` and `dilation` for layers of a few
    channels, as broadcast multiply-adds (`_broadcast_fma`): the same products as the
    convolution, summed in HWIO's order.

    XLA's CPU convolution (Eigen's, a matrix product over patches) has almost nothing to put in
    a vector register when a layer has 3-8 channels, and ran the 1/8-width networks' 64 px
    layers 2.5-5x slower than PyTorch; one fused elementwise loop over the output ran their
    forwards 1.6-2.4x faster than XLA's convolution. The input gradient is the same form on the
    cotangent where it has as few products (`NARROW_MAX_TERMS`), else XLA's; the kernel gradient
    is XLA's (`precision` is theirs: the products here are float32's own)."""
    padding = _nonnegative_padding("narrow_conv", padding)
    if any(p for side in padding for p in side):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return _narrow_valid_conv(x, kernel, int(dilation), precision)


def uses_narrow_conv(x: jax.Array, k: jax.Array, strides, padding, dilation) -> bool:
    """Whether `conv` computes a layer by `narrow_conv` on the CPU (NARROW_MAX_CHANNELS and
    NARROW_MAX_TERMS)."""
    kh, kw, c_in, c_out = k.shape
    return (tuple(strides) == (1, 1) and dilation[0] == dilation[1]
            and x.dtype == k.dtype == jnp.float32
            and max(c_in, c_out) <= NARROW_MAX_CHANNELS and kh * kw * c_in <= NARROW_MAX_TERMS
            and min(p for side in padding for p in side) >= 0)


def _is_quadrants_conv(x: jax.Array, k: jax.Array, strides, padding, dilation) -> bool:
    d = dilation[0]
    return (tuple(k.shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and dilation[1] == d
            and tuple(x.shape[1:3]) == (2 * d, 2 * d) and padding == ((d, d), (d, d))
            and x.dtype == k.dtype == jnp.float32)


def quadrants_conv3x3(x: jax.Array, k: jax.Array) -> jax.Array:
    """A 3x3 NHWC/HWIO convolution dilated by d with zero padding d on a 2d x 2d input (the
    paper's dilation-16 layer on the 32 x 32 middle of a 128 px image), as one matrix product.

    Its taps fall on whole d x d quadrants of the input: output quadrant (Y, X) reads input
    quadrant (Y', X') through tap (Y' - Y + 1, X' - X + 1), and its other five taps read only the
    padding. With the four input quadrants side by side along channels, `[N d d, 4 C_in]`, and
    the kernel's taps arranged as `[4 C_in, 4 C_out]`, one product gives the four output
    quadrants: the 4 of 9 taps that count, where XLA's CPU convolution computes all 9 (and its
    gradients are products too, by autodiff). The same products as the convolution."""
    n, h, w, c = x.shape
    d, f = h // 2, k.shape[-1]
    quads = x.reshape(n, 2, d, 2, d, c).transpose(0, 2, 4, 1, 3, 5).reshape(n * d * d, 4 * c)
    blocks = [(0, 0), (0, 1), (1, 0), (1, 1)]
    taps = jnp.stack([jnp.stack([k[ri - ro + 1, ci - co + 1] for ro, co in blocks], axis=1)
                      for ri, ci in blocks])  # [in quadrant, C_in, out quadrant, C_out]
    y = jnp.dot(quads, taps.reshape(4 * c, 4 * f))
    return y.reshape(n, d, d, 2, 2, f).transpose(0, 3, 1, 4, 2, 5).reshape(n, h, w, f)


def valid_as_padded(x: jax.Array, k: jax.Array, dilation: Sequence[int] = (1, 1)) -> jax.Array:
    """A VALID stride-1 NHWC/HWIO convolution computed with one pixel of zero padding on every
    side and that ring of outputs cropped: the same products for every output kept. XLA's CPU
    convolution of a wide layer ran about 3x slower without any padding (what the reflect-padding
    configs give it, having padded the input themselves) than with it, for 1-6 % more outputs."""
    y = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), rhs_dilation=tuple(dilation),
                                 dimension_numbers=NHWC)
    return y[:, 1:-1, 1:-1]


def _taps_layout(x_shape, kernel_shape, padding, dilation: int):
    (pt, pb), (pl, pr) = padding
    kh, kw = kernel_shape[:2]
    ho = x_shape[1] + pt + pb - dilation * (kh - 1)
    wo = x_shape[2] + pl + pr - dilation * (kw - 1)
    return ho, wo, [(a * dilation - pt, b * dilation - pl) for a in range(kh) for b in range(kw)]


def _taps_patches(x: jax.Array, ho: int, wo: int, offsets, padding) -> jax.Array:
    """[n, ho, wo, kh * kw * c]: each output pixel's taps side by side, HWIO's order."""
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return jnp.concatenate([xp[:, r + pt:r + pt + ho, c + pl:c + pl + wo] for r, c in offsets],
                           axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _taps_conv(x, k, padding, dilation, precision):
    return _taps_conv_fwd(x, k, padding, dilation, precision)[0]


def _taps_conv_fwd(x, k, padding, dilation, precision):
    ho, wo, offsets = _taps_layout(x.shape, k.shape, padding, dilation)
    patches = _taps_patches(x, ho, wo, offsets, padding)
    y = jnp.dot(patches, k.reshape(-1, k.shape[-1]), precision=precision)
    return y, (patches, k, x.shape[1:3])


def _taps_conv_bwd(padding, dilation, precision, residuals, dy):
    patches, k, (h, w) = residuals
    kh, kw, c_in, c_out = k.shape
    n, ho, wo, _ = dy.shape
    _, _, offsets = _taps_layout((n, h, w), k.shape, padding, dilation)
    dk = lax.dot_general(patches, dy, (((0, 1, 2), (0, 1, 2)), ((), ())),
                         precision=precision).reshape(k.shape)
    # Each tap's share of the input gradient, added back where the tap read it (lax.pad crops
    # what fell in the padding): along each kernel row's columns first, then along the rows.
    # Left to fuse into one sum over every tap, and that sum into the reflect padding's adjoint,
    # XLA's CPU code recomputed it several times over (2-4x slower at dilation 16). The barriers
    # ask for each stage to be stored; XLA's CPU compiler drops them, so there the staging is
    # what counts (storing the stages through `_materialised` instead was no faster:
    # docs/cpu_speed.md).
    g = jnp.dot(dy, k.reshape(-1, c_out).T, precision=precision).reshape(n, ho, wo, kh * kw, c_in)
    zero = jnp.zeros((), g.dtype)
    dx = None
    for a in range(kh):
        row = None
        for b in range(kw):
            c = offsets[a * kw + b][1]
            part = lax.pad(g[..., a * kw + b, :], zero,
                           ((0, 0, 0), (0, 0, 0), (c, w - wo - c, 0), (0, 0, 0)))
            row = part if row is None else row + part
        r = offsets[a * kw][0]
        part = lax.pad(lax.optimization_barrier(row), zero,
                       ((0, 0, 0), (r, h - ho - r, 0), (0, 0, 0), (0, 0, 0)))
        dx = part if dx is None else dx + part
    return lax.optimization_barrier(dx), dk


_taps_conv.defvjp(_taps_conv_fwd, _taps_conv_bwd)


def taps_conv(x: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]],
              dilation: int = 1, precision: Any = None) -> jax.Array:
    """A stride-1 NHWC/HWIO convolution with zero `padding` and `dilation` as one matrix product
    over its taps: each output pixel's kh x kw taps side by side along channels (HWIO's order)
    times the kernel as `[kh * kw * C_in, C_out]`. The same products as the convolution.

    Its gradients are products too: the kernel's, those patches (kept from the forward) times
    the cotangent; the input's, the cotangent times the transposed kernel, each tap's share
    added back where it was read. XLA's CPU convolution computes the input gradient of a VALID
    layer (a reflect-padded input) over the whole padded input, most of a dilated layer's taps
    reading zeros there; this form computes only the products that count. The patches are
    kh x kw times the input's size, hence `conv` uses it for small outputs only. (`patches_conv`
    gathers the same patches for any stride, but its gradient is autodiff's scatter-add.)"""
    padding = _nonnegative_padding("taps_conv", padding)
    return _taps_conv(x, kernel, padding, int(dilation), precision)


def uses_taps_kernel_grad(x: jax.Array, k: jax.Array, padding) -> bool:
    """Whether a layer that keeps XLA's convolution forward gets `taps_kernel_grad` on the CPU
    (the cuts: TAPS_KERNEL_GRAD_MIN_CHANNELS and the two beside it)."""
    kh, kw, c_in, c_out = k.shape
    return (x.dtype == k.dtype == jnp.float32
            and min(p for side in padding for p in side) >= 0
            and max(c_in, c_out) >= TAPS_KERNEL_GRAD_MIN_CHANNELS
            and (kh * kw <= TAPS_KERNEL_GRAD_MAX_TAPS
                 or c_in <= TAPS_KERNEL_GRAD_MAX_IN_CHANNELS))


def _xla_conv(x, k, strides, padding, dilation, precision):
    return lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=NHWC, precision=precision)


def taps_kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                     strides: Sequence[int], padding: Sequence[tuple[int, int]],
                     dilation: Sequence[int], precision: Any = None) -> jax.Array:
    """The kernel gradient of an NHWC/HWIO convolution (zero `padding` >= 0, any stride and
    dilation) for the output cotangent `dy`: for each tap, the input pixels it read (one strided
    slice of the padded input) times `dy`, summed over the batch and the output pixels, one
    matrix product `[C_in, N Ho Wo] x [N Ho Wo, C_out]` per tap. The same products as the
    convolution's gradient, summed in another order."""
    kh, kw, c_in, c_out = kernel_shape
    (sh, sw), (dh, dw) = strides, dilation
    n, ho, wo, _ = dy.shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    taps = []
    for a in range(kh):
        for b in range(kw):
            r, c = a * dh, b * dw
            read = lax.slice(xp, (0, r, c, 0),
                             (n, r + (ho - 1) * sh + 1, c + (wo - 1) * sw + 1, c_in),
                             (1, sh, sw, 1))
            taps.append(lax.dot_general(read, dy, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                        precision=precision))
    return jnp.stack(taps).reshape(kh, kw, c_in, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _taps_kernel_grad_conv(x, k, strides, padding, dilation, precision):
    return _xla_conv(x, k, strides, padding, dilation, precision)


def _taps_kernel_grad_conv_fwd(x, k, strides, padding, dilation, precision):
    return _xla_conv(x, k, strides, padding, dilation, precision), (x, k)


def _taps_kernel_grad_conv_bwd(strides, padding, dilation, precision, residuals, dy):
    x, k = residuals
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, k, strides, padding, dilation, precision), x)
    return (input_vjp(dy)[0],
            taps_kernel_grad(x, dy, k.shape, strides, padding, dilation, precision))


_taps_kernel_grad_conv.defvjp(_taps_kernel_grad_conv_fwd, _taps_kernel_grad_conv_bwd)


def taps_kernel_grad_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                          padding: Sequence[tuple[int, int]], dilation: Sequence[int] = (1, 1),
                          precision: Any = None) -> jax.Array:
    """XLA's NHWC/HWIO convolution, forward and input gradient unchanged, whose kernel gradient
    is `taps_kernel_grad`: XLA's CPU backend computes a kernel gradient as a convolution whose
    output is the kernel, and ran it at a fraction of its forward's speed for the wide layers
    that no other form here covers (strided, 2x2, the first 5x5 layers)."""
    padding = _nonnegative_padding("taps_kernel_grad_conv", padding)
    return _taps_kernel_grad_conv(x, kernel, tuple(int(s) for s in strides), padding,
                                  tuple(int(d) for d in dilation), precision)


def subpixel_deconv4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`lax.conv_transpose(x, kernel, (2, 2), 'SAME')` for a 4x4 HWIO kernel (flax's
    `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME')` without its bias), as
    four 2x2 convolutions whose outputs are interleaved.

    Output pixel (2p + a, 2q + b) sums the input's 2x2 neighbourhood starting at (p - 1 + a,
    q - 1 + b) with the kernel's taps (a, a + 2) x (b, b + 2): exactly the products
    `lax.conv_transpose` sums, without the zeros it inserts between the input pixels."""
    pads = ((1, 0), (0, 1))
    sub = kernel[:2, :2]
    if uses_taps_kernel_grad(x, sub, pads):
        conv2x2 = functools.partial(taps_kernel_grad_conv, strides=(1, 1))
    else:
        conv2x2 = functools.partial(lax.conv_general_dilated, window_strides=(1, 1),
                                    dimension_numbers=NHWC)
    rows = []
    for a in (0, 1):
        cols = [conv2x2(x, kernel[a::2, b::2], padding=(pads[a], pads[b])) for b in (0, 1)]
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


# Winograd F(4x4, 3x3) with the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin and Gray
# 2016): a 4x4 output tile of a 3x3 convolution is AT [(G g GT) * (BT d B)] A for the 6x6 input
# tile d, the kernel g and the elementwise product *, summed over input channels.
WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0],
                        [0, -4, -4, 1, 1, 0],
                        [0, 4, -4, -1, 1, 0],
                        [0, -2, -1, 2, 1, 0],
                        [0, 2, -1, -2, 1, 0],
                        [0, 4, 0, -5, 0, 1]], np.float32)
WINOGRAD_G = np.array([[1 / 4, 0, 0],
                       [-1 / 6, -1 / 6, -1 / 6],
                       [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6],
                       [1 / 24, -1 / 12, 1 / 6],
                       [0, 0, 1]], np.float32)
WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0],
                        [0, 1, -1, 2, -2, 0],
                        [0, 1, 1, 4, 4, 0],
                        [0, 1, -1, 8, -8, 1]], np.float32)
WINOGRAD_MATRICES = (WINOGRAD_BT, WINOGRAD_G, WINOGRAD_AT)


def _combine(mat: np.ndarray, xs: Sequence[jax.Array]) -> list[jax.Array]:
    """`[sum_j mat[i, j] * xs[j] for each row i]`, skipping zero coefficients.

    In `lax`'s operations rather than `jnp`'s operators: the same computation with less Python
    per operation when traced (hundreds of them per network, traced on every cold start)."""
    out = []
    for row in mat:
        acc = None
        for c, x in zip(row, xs):
            if c != 0:
                term = (x if c == 1 else lax.neg(x) if c == -1
                        else lax.mul(x, np.asarray(c, x.dtype)))
                acc = term if acc is None else lax.add(acc, term)
        out.append(acc)
    return out


def _strided(x: jax.Array, axis: int, start: int, count: int, stride: int) -> jax.Array:
    """`count` elements of `x` along `axis` from `start`, every `stride`th, as one `lax.slice`
    (`x[..., start::stride, ...]` cut to `count`)."""
    lo, hi, st = [0] * x.ndim, list(x.shape), [1] * x.ndim
    lo[axis], hi[axis], st[axis] = start, min(start + count * stride, x.shape[axis]), stride
    return lax.slice(x, lo, hi, st)


def _winograd_tiles(x: jax.Array, th: int, tw: int, bt: np.ndarray) -> jax.Array:
    """BT d B for the overlapping 6x6 tiles (stride 4) of `x` [n, 4 th + 2, 4 tw + 2, c]:
    [36, n th tw, c]. Rows then columns, with the rows' result materialised: fused in one pass,
    XLA's CPU code ran several times slower."""
    n, c = x.shape[0], x.shape[-1]
    rows = jnp.stack(_combine(bt, [_strided(x, 1, i, th, 4) for i in range(6)]))
    rows = lax.optimization_barrier(rows)  # [6, n, th, W, c]
    v = jnp.stack(_combine(bt, [_strided(rows, 3, j, tw, 4) for j in range(6)]), axis=1)
    return v.reshape(36, n * th * tw, c)


def _winograd_untile(m: jax.Array, n: int, th: int, tw: int, at: np.ndarray) -> jax.Array:
    """AT M A for each tile: [36, n th tw, f] -> [n, 4 th, 4 tw, f]."""
    f = m.shape[-1]
    m = m.reshape(6, 6, n, th, tw, f)
    cols = lax.optimization_barrier(
        jnp.stack(_combine(at, [m[:, v] for v in range(6)]), axis=4))  # [6, n, th, tw, 4, f]
    y = jnp.stack(_combine(at, [cols[u] for u in range(6)]), axis=2)  # [n, th, 4, tw, 4, f]
    return y.reshape(n, 4 * th, 4 * tw, f)


def _winograd_untile_adjoint(dy: jax.Array, th: int, tw: int, at: np.ndarray) -> jax.Array:
    """The adjoint of `_winograd_untile`: [n, 4 th, 4 tw, f] -> [36, n th tw, f]."""
    n, f = dy.shape[0], dy.shape[-1]
    dy = dy.reshape(n, th, 4, tw, 4, f)
    rows = lax.optimization_barrier(
        jnp.stack(_combine(at.T, [dy[:, :, a] for a in range(4)])))  # [6, n, th, tw, 4, f]
    v = jnp.stack(_combine(at.T, [rows[:, :, :, :, b] for b in range(4)]), axis=1)
    return v.reshape(36, n * th * tw, f)


def _winograd_kernel(k: jax.Array, g: np.ndarray) -> jax.Array:
    """G k GT for each channel pair: [3, 3, c, f] -> [36, c, f], one product with G (x) G (as
    fast as the elementwise form and compiled 20x faster)."""
    return (jnp.asarray(np.kron(g, g)) @ k.reshape(9, -1)).reshape(36, *k.shape[2:])


def _winograd_kernel_adjoint(du: jax.Array, g: np.ndarray) -> jax.Array:
    """The adjoint of `_winograd_kernel`: [36, c, f] -> [3, 3, c, f]."""
    return (jnp.asarray(np.kron(g, g).T) @ du.reshape(36, -1)).reshape(3, 3, *du.shape[1:])


def _tiling(x: jax.Array) -> tuple[jax.Array, int, int, int, int]:
    """A VALID 3x3 convolution's [n, h, w, c] input zero-padded below and right to whole tiles,
    its output size and its tile counts."""
    ho, wo = x.shape[1] - 2, x.shape[2] - 2
    th, tw = -(-ho // 4), -(-wo // 4)
    x = jnp.pad(x, ((0, 0), (0, 4 * th + 2 - x.shape[1]), (0, 4 * tw + 2 - x.shape[2]), (0, 0)))
    return x, ho, wo, th, tw


def winograd_valid(x: jax.Array, k: jax.Array) -> jax.Array:
    """A VALID 3x3 stride-1 NHWC/HWIO convolution by F(4x4, 3x3) with `WINOGRAD_MATRICES`
    (read when traced: the tests bound the rounding error with their absolute values)."""
    bt, g, at = WINOGRAD_MATRICES
    x, ho, wo, th, tw = _tiling(x)
    m = lax.dot_general(_winograd_tiles(x, th, tw, bt), _winograd_kernel(k, g),
                        (((2,), (1,)), ((0,), (0,))))
    return _winograd_untile(m, x.shape[0], th, tw, at)[:, :ho, :wo]


def winograd_valid_kernel_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
    """The kernel gradient of `winograd_valid` for the cotangent `dy`: GT [sum over tiles of
    (BT d B) * (A dy AT)] G, the adjoint of the forward's kernel path."""
    bt, g, at = WINOGRAD_MATRICES
    x, ho, wo, th, tw = _tiling(x)
    dy = jnp.pad(dy, ((0, 0), (0, 4 * th - ho), (0, 4 * tw - wo), (0, 0)))
    du = lax.dot_general(_winograd_tiles(x, th, tw, bt), _winograd_untile_adjoint(dy, th, tw, at),
                         (((1,), (1,)), ((0,), (0,))))
    return _winograd_kernel_adjoint(du, g)


def _winograd_tile_use(size: Sequence[int], padding, d: int) -> float:
    """The fraction of the 4x4 output tiles' pixels that are outputs: below 1 where the (dilated
    convolution's sub-)images are not multiples of 4, e.g. 1/4 at dilation 16 on 32 x 32."""
    used = total = 1
    for n, (lo, hi) in zip(size, padding):
        sub = -(-(n + lo + hi) // d) - 2  # outputs per sub-image along this axis
        used, total = used * (n + lo + hi - 2 * d), total * 4 * -(-sub // 4) * d
    return used / total


def _winograd_forward_pays(c_in: int, c_out: int) -> bool:
    return min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS


def _space_to_batch(x: jax.Array, d: int) -> jax.Array:
    """[n, h, w, c] with h, w multiples of d -> [n d d, h / d, w / d, c]: the d x d interleaved
    sub-images, on which a convolution dilated by d is an undilated one (`x` itself for d = 1)."""
    if d == 1:
        return x
    n, h, w, c = x.shape
    x = x.reshape(n, h // d, d, w // d, d, c).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(n * d * d, h // d, w // d, c)


def _batch_to_space(y: jax.Array, d: int) -> jax.Array:
    if d == 1:
        return y
    nd, h, w, c = y.shape
    y = y.reshape(nd // (d * d), d, d, h, w, c).transpose(0, 3, 1, 4, 2, 5)
    return y.reshape(nd // (d * d), h * d, w * d, c)


def _winograd_input(x: jax.Array, padding, d: int) -> jax.Array:
    """`x` zero-padded, then (dilated) as sub-images, the input of `winograd_valid`. Zero rows
    and columns added below and right to make the sizes multiples of d change no output."""
    (pt, pb), (pl, pr) = padding
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    hq, wq = -(-hp // d) * d, -(-wp // d) * d
    x = jnp.pad(x, ((0, 0), (pt, pb + hq - hp), (pl, pr + wq - wp), (0, 0)))
    # Materialised: XLA's CPU code ran the tiles several times slower with the padding fused.
    return _space_to_batch(lax.optimization_barrier(x), d)


def _conv3x3_forward(x: jax.Array, k: jax.Array, padding, d: int) -> jax.Array:
    """The 3x3 stride-1 convolution: Winograd's where it pays, XLA's otherwise (with the
    padding given to XLA, and `valid_as_padded` for none: XLA's CPU convolution of a wide
    layer without padding ran 3x slower)."""
    if not _winograd_forward_pays(k.shape[2], k.shape[3]):
        if padding == ((0, 0), (0, 0)):
            return valid_as_padded(x, k, (d, d))
        return lax.conv_general_dilated(x, k, (1, 1), padding, rhs_dilation=(d, d),
                                        dimension_numbers=NHWC)
    (pt, pb), (pl, pr) = padding
    ho, wo = x.shape[1] + pt + pb - 2 * d, x.shape[2] + pl + pr - 2 * d
    y = winograd_valid(_winograd_input(x, padding, d), k)
    return _batch_to_space(y, d)[:, :ho, :wo]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv3x3(x: jax.Array, k: jax.Array, padding, dilation: int) -> jax.Array:
    """`_conv3x3_forward` whose gradients are Winograd's too where they pay: the input gradient
    is `_conv3x3` of the cotangent with the flipped kernel, the kernel gradient
    `winograd_valid_kernel_grad` (far faster than XLA's CPU kernel gradient at every size the
    networks train at)."""
    return _conv3x3_forward(x, k, padding, dilation)


def _conv3x3_fwd(x, k, padding, dilation):
    return _conv3x3_forward(x, k, padding, dilation), (x, k)


def _conv3x3_bwd(padding, d, residuals, dy):
    x, k = residuals
    (pt, pb), (pl, pr) = padding
    dx = _conv3x3(dy, jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)),
                  ((2 * d - pt, 2 * d - pb), (2 * d - pl, 2 * d - pr)), d)
    xs = _winograd_input(x, padding, d)
    ho, wo = dy.shape[1:3]
    dys = jnp.pad(dy, ((0, 0), (0, (xs.shape[1] - 2) * d - ho), (0, (xs.shape[2] - 2) * d - wo),
                       (0, 0)))
    return dx, winograd_valid_kernel_grad(xs, _space_to_batch(dys, d))


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def winograd_conv3x3(x: jax.Array, k: jax.Array, padding: Sequence[tuple[int, int]],
                     dilation: int = 1) -> jax.Array:
    """A 3x3 stride-1 NHWC/HWIO convolution with zero `padding` (each side between 0 and
    2 x `dilation`) and `dilation`, forward and gradients by Winograd's algorithm where it pays
    (see the module docstring). A dilated convolution is d x d undilated ones on the input's
    interleaved sub-images (space to batch), which is how its products fall into 4x4 tiles."""
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if not all(0 <= p <= 2 * dilation for side in padding for p in side):
        raise ValueError(f"winograd_conv3x3 takes paddings of 0 to {2 * dilation} per side, "
                         f"got {padding}.")
    return _conv3x3(x, k, padding, int(dilation))
