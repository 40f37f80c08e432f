"""The convolutions' CPU forms (`conv_forms`): the same layers as XLA's convolutions, outputs and
gradients within float32 rounding, chosen on the CPU only.

Rounding bounds: both forms sum the same products in another order, so each result differs from
the exact sum by at most (number of terms) x eps x (the sum of the terms' magnitudes), which XLA's
own convolution computes when it is given the absolute values (standard summation error bound).
Winograd's form computes other products (of transformed tiles and kernels); the same bound holds
with the magnitudes of its own terms, which the form computes itself when it is given the
absolute values of its inputs and of its transform matrices, and with the number of terms along
its longest chain of sums (the transforms' and the channels').
The whole converted network is also checked against an independent numpy forward pass of the
Torch7 layers in tests/test_convert.py.
"""

from __future__ import annotations

import functools
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from glcic_jax import config_lib, conv_forms, models, state as state_lib, steps as steps_lib

EPS = float(np.finfo(np.float32).eps)


def _rand(rng, shape, scale=1.0):
    return jnp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))


def _excess(ours, ref, magnitude, terms) -> np.ndarray:
    ours, ref, magnitude = (np.asarray(a, np.float64) for a in (ours, ref, magnitude))
    assert ours.shape == ref.shape
    bound = 2 * terms * EPS * magnitude + 1e-30  # both sides round: twice the one-sided bound
    return np.abs(ours - ref) - bound


def _check_close(ours, ref, magnitude, terms):
    excess = _excess(ours, ref, magnitude, terms)
    assert np.all(excess <= 0), float(excess.max())


def _compare_with_grads(ours_fn, ref_fn, x, k, terms_out, terms_dx, terms_dk, seed=0):
    """Outputs and both gradients (for a random cotangent) of `ours_fn` and `ref_fn` agree
    within the rounding bound; magnitudes come from `ref_fn` on absolute values."""
    y, vjp = jax.vjp(ours_fn, x, k)
    y_ref, vjp_ref = jax.vjp(ref_fn, x, k)
    dy = _rand(np.random.default_rng(seed), y.shape)
    mag_y, vjp_abs = jax.vjp(ref_fn, jnp.abs(x), jnp.abs(k))
    mag_dx, mag_dk = vjp_abs(jnp.abs(dy))
    _check_close(y, y_ref, mag_y, terms_out)
    (dx, dk), (dx_ref, dk_ref) = vjp(dy), vjp_ref(dy)
    _check_close(dx, dx_ref, mag_dx, terms_dx)
    _check_close(dk, dk_ref, mag_dk, terms_dk)


def _lax_conv(strides, padding, dilation):
    return lambda x, k: lax.conv_general_dilated(
        x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=conv_forms.NHWC)


def _cpu_hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def _stablehlo_for(platform: str, fn, *args) -> str:
    """What `fn` lowers to for `platform` (lowered here, no such device needed)."""
    return jax.export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def _conv_grad_hlo(x, k, strides, padding, dilation=1, platform="cpu") -> str:
    """What the gradient of sum(conv_forms.conv(x, k)^2) compiles to on the CPU, or lowers to
    for `platform`."""
    def loss(x, k):
        y = conv_forms.conv(x, k, strides, padding, rhs_dilation=(dilation, dilation),
                            dimension_numbers=conv_forms.NHWC)
        return jnp.sum(y * y)
    fn = jax.grad(loss, argnums=(0, 1))
    return _cpu_hlo(fn, x, k) if platform == "cpu" else _stablehlo_for(platform, fn, x, k)


@pytest.mark.parametrize("shape, kernel, strides, padding, dilation", [
    ((3, 8, 8, 6), (5, 5, 6, 7), (2, 2), ((2, 2), (2, 2)), (1, 1)),  # the Ds' last layers
    ((2, 4, 4, 5), (5, 5, 5, 3), (2, 2), ((2, 2), (2, 2)), (1, 1)),
    ((2, 9, 7, 4), (3, 3, 4, 5), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated, odd sizes
    ((1, 6, 10, 3), (3, 3, 3, 2), (2, 1), ((1, 0), (0, 1)), (1, 1)),  # asymmetric
])
def test_patches_conv_equals_xla_conv_with_gradients(shape, kernel, strides, padding, dilation):
    rng = np.random.default_rng(1)
    x, k = _rand(rng, shape), _rand(rng, kernel, 0.3)
    kh, kw, c_in, c_out = kernel
    y = lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                 dimension_numbers=conv_forms.NHWC)
    ho, wo = y.shape[1:3]
    _compare_with_grads(
        lambda x, k: conv_forms.patches_conv(x, k, strides, padding, dilation),
        _lax_conv(strides, padding, dilation), x, k,
        terms_out=kh * kw * c_in, terms_dx=kh * kw * c_out, terms_dk=shape[0] * ho * wo)


def test_conv_uses_patches_on_cpu_for_small_outputs_only():
    rng = np.random.default_rng(2)
    k = _rand(rng, (5, 5, 8, 8))
    conv = lambda x, k: conv_forms.conv(x, k, (2, 2), ((2, 2), (2, 2)),  # noqa: E731
                                        dimension_numbers=conv_forms.NHWC)
    small, large = _rand(rng, (2, 16, 16, 8)), _rand(rng, (2, 18, 18, 8))  # 8x8, 9x9 outputs
    assert " convolution(" not in _cpu_hlo(conv, small, k)
    assert " convolution(" in _cpu_hlo(conv, large, k)
    # Elsewhere (a GPU) the same call is XLA's convolution, as before.
    assert "stablehlo.convolution" in _stablehlo_for("cuda", conv, small, k)
    assert "stablehlo.dot" not in _stablehlo_for("cuda", conv, small, k)
    # String padding other than VALID, groups: always XLA's convolution.
    same = lambda x, k: conv_forms.conv(x, k, (2, 2), "SAME",  # noqa: E731
                                        dimension_numbers=conv_forms.NHWC)
    assert " convolution(" in _cpu_hlo(same, small, k)


def _compare_stride1_form(form, shape, kernel, padding, dilation, seed):
    """`form(x, k, padding, dilation)` (a stride-1 form with zero padding) against XLA's
    convolution, outputs and both gradients, each sum's term count as its bound's."""
    rng = np.random.default_rng(seed)
    x, k = _rand(rng, shape), _rand(rng, kernel, 0.3)
    kh, kw, c_in, c_out = kernel
    y = _lax_conv((1, 1), padding, (dilation, dilation))(x, k)
    ho, wo = y.shape[1:3]
    _compare_with_grads(
        lambda x, k: form(x, k, padding, dilation),
        _lax_conv((1, 1), padding, (dilation, dilation)), x, k,
        terms_out=kh * kw * c_in, terms_dx=kh * kw * c_out, terms_dk=shape[0] * ho * wo)


@pytest.mark.parametrize("shape, kernel, padding, dilation", [
    ((2, 10, 10, 6), (3, 3, 6, 5), ((0, 0), (0, 0)), 1),  # VALID, as the reflect configs call it
    ((2, 12, 9, 4), (3, 3, 4, 5), ((0, 0), (0, 0)), 2),  # dilated, odd sizes
    ((1, 8, 8, 3), (3, 3, 3, 4), ((8, 8), (8, 8)), 8),  # taps reading only the padding
    ((2, 9, 7, 4), (5, 5, 4, 3), ((1, 3), (2, 0)), 1),  # asymmetric, 5x5
])
def test_taps_conv_equals_xla_conv_with_gradients(shape, kernel, padding, dilation):
    _compare_stride1_form(conv_forms.taps_conv, shape, kernel, padding, dilation, seed=8)


def test_taps_conv_rejects_negative_padding():
    with pytest.raises(ValueError, match="non-negative"):
        conv_forms.taps_conv(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2)), ((-1, 0), (0, 0)))


def test_conv_uses_taps_on_cpu_for_small_or_strongly_dilated_valid_layers_only():
    """XLA's CPU convolution computes a VALID layer's input gradient over the whole padded
    input: small VALID layers of >= 32 channels (the quickstart's 16 x 16 ones) and those whose
    dilation reaches across most of the output are products over their taps, forward and back;
    larger, narrower or zero-padded layers, and other platforms, keep XLA's convolution."""
    rng = np.random.default_rng(9)
    c = conv_forms.TAPS_MIN_CHANNELS

    k = _rand(rng, (3, 3, c, c), 0.05)
    small = _rand(rng, (2, 16 + 2 * 4, 16 + 2 * 4, c))  # a 16 x 16 output, dilation 4
    assert " convolution(" not in _conv_grad_hlo(small, k, (1, 1), "VALID", 4)
    assert "stablehlo.convolution" in _conv_grad_hlo(small, k, (1, 1), "VALID", 4, platform="cuda")
    # The same layer zero-padded (XLA's input gradient is then the input's size): XLA's.
    zero_padded = _rand(rng, (2, 16, 16, c))
    assert " convolution(" in _conv_grad_hlo(zero_padded, k, (1, 1), ((4, 4), (4, 4)), 4)
    # 32 x 32 outputs: XLA's, unless the dilation is at least half of the output's side.
    assert " convolution(" in _conv_grad_hlo(_rand(rng, (1, 34, 34, c)), k, (1, 1), "VALID", 1)
    assert " convolution(" not in _conv_grad_hlo(_rand(rng, (1, 64, 64, c)), k, (1, 1), "VALID", 16)
    # Fewer channels on either side: XLA's.
    narrow = _rand(rng, (3, 3, c, c // 2), 0.05)
    assert " convolution(" in _conv_grad_hlo(small, narrow, (1, 1), "VALID", 4)


# ----------------------------------------------------------------------------------------------
# Narrow layers: broadcast multiply-adds


@pytest.mark.parametrize("shape, kernel, padding, dilation", [
    ((2, 12, 11, 8), (3, 3, 8, 4), ((0, 0), (0, 0)), 1),  # VALID, as the reflect configs call it
    ((2, 10, 10, 4), (3, 3, 4, 3), ((1, 1), (1, 1)), 1),  # zero-padded
    ((1, 13, 9, 3), (3, 3, 3, 5), ((0, 2), (1, 0)), 2),  # dilated, asymmetric padding
    ((2, 12, 12, 4), (5, 5, 4, 8), ((0, 0), (0, 0)), 1),  # input gradient XLA's (200 products)
])
def test_narrow_conv_equals_xla_conv_with_gradients(shape, kernel, padding, dilation):
    _compare_stride1_form(conv_forms.narrow_conv, shape, kernel, padding, dilation, seed=11)


def test_narrow_conv_rejects_negative_padding():
    with pytest.raises(ValueError, match="non-negative"):
        conv_forms.narrow_conv(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2)), ((0, 0), (0, -1)))


def test_conv_uses_narrow_form_on_cpu_for_stride_1_layers_of_a_few_channels_only():
    """Stride-1 layers of <= 8 channels with <= 100 products per output (the 1/8-width
    networks' 64 px layers) are broadcast multiply-adds on the CPU, their input gradients too
    where those have <= 100 products (the kernel gradient stays XLA's convolution); wider,
    strided or bigger layers, and other platforms, keep XLA's convolution."""
    rng = np.random.default_rng(12)

    def conv(strides, padding):
        return lambda x, k: conv_forms.conv(x, k, strides, padding,
                                            dimension_numbers=conv_forms.NHWC)

    x8, k8 = _rand(rng, (2, 18, 18, 8)), _rand(rng, (3, 3, 8, 4), 0.1)
    assert " convolution(" not in _cpu_hlo(conv((1, 1), "VALID"), x8, k8)
    assert _conv_grad_hlo(x8, k8, (1, 1), "VALID").count(" convolution(") == 1  # the kernel's
    assert "stablehlo.convolution" in _stablehlo_for("cuda", conv((1, 1), "VALID"), x8, k8)
    first = _rand(rng, (5, 5, 4, 8), 0.1)  # 100 products forward, 200 for the input gradient
    x4 = _rand(rng, (2, 16, 16, 4))
    assert " convolution(" not in _cpu_hlo(conv((1, 1), ((2, 2), (2, 2))), x4, first)
    assert _conv_grad_hlo(x4, first, (1, 1), ((2, 2), (2, 2))).count(" convolution(") == 2
    for x, k, strides in ((_rand(rng, (2, 18, 18, 16)), _rand(rng, (3, 3, 16, 16)), (1, 1)),
                          (x8, _rand(rng, (3, 3, 8, 16)), (1, 1)),  # 16 channels out
                          (x8, _rand(rng, (5, 5, 8, 8)), (1, 1)),  # 200 products
                          (_rand(rng, (2, 34, 34, 8)), _rand(rng, (3, 3, 8, 8)), (2, 2))):
        assert " convolution(" in _cpu_hlo(conv(strides, "VALID"), x, k), (k.shape, strides)


def test_narrow_layer_is_computed_once_for_all_its_consumers():
    """A layer's output feeds several computations (the normalisation's statistics, its output,
    the activation's gradient); XLA's CPU fusion would recompute a sum of multiply-adds in each
    of them (the training step ran twice as slow). The compiled work must not grow with the
    number of consumers."""
    rng = np.random.default_rng(13)
    x, k = _rand(rng, (2, 18, 18, 8)), _rand(rng, (3, 3, 8, 4), 0.1)

    def layer(x, k):
        return conv_forms.conv(x, k, (1, 1), "VALID", dimension_numbers=conv_forms.NHWC)

    def three_consumers(x, k):
        y = layer(x, k)
        return jnp.mean(y, axis=(0, 1, 2)), jnp.mean(y * y, axis=(0, 1, 2)), jax.nn.relu(y) * 2

    def flops(fn):
        cost = jax.jit(fn).lower(x, k).compile().cost_analysis()
        return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    products = 2 * 16 * 16 * 4 * 3 * 3 * 8  # one pass: a multiply and an add per product
    assert flops(layer) >= products  # the count sees the layer's work
    assert flops(three_consumers) < 1.5 * flops(layer)


@pytest.mark.parametrize("shape, features", [((2, 8, 8, 3), 5), ((3, 2, 2, 4), 2),
                                            ((1, 32, 32, 6), 4)])
def test_quadrants_conv_equals_xla_dilated_conv_with_gradients(shape, features):
    rng = np.random.default_rng(13)
    x, k = _rand(rng, shape), _rand(rng, (3, 3, shape[-1], features), 0.3)
    d = shape[1] // 2
    ref = _lax_conv((1, 1), ((d, d), (d, d)), (d, d))
    # 4 taps of C_in per output (the other 5 read zeros), 4 of C_out per input pixel; the
    # kernel gradient sums a quadrant of each image per tap.
    _compare_with_grads(conv_forms.quadrants_conv3x3, ref, x, k, terms_out=4 * shape[-1],
                        terms_dx=4 * features, terms_dk=4 * shape[0] * d * d)
    # Not vacuous: quadrants swapped (a real indexing bug) fail the same bound.
    y_ref, mag = ref(x, k), ref(jnp.abs(x), jnp.abs(k))
    swapped = conv_forms.quadrants_conv3x3(jnp.roll(x, d, axis=1), k)
    assert np.any(_excess(swapped, y_ref, mag, 4 * shape[-1]) > 0)


def test_conv_uses_quadrants_on_cpu_for_3x3_layers_dilated_by_half_the_side_only():
    rng = np.random.default_rng(14)
    k = _rand(rng, (3, 3, 8, 8), 0.1)

    x = _rand(rng, (2, 32, 32, 8))
    assert " convolution(" not in _conv_grad_hlo(x, k, (1, 1), ((16, 16), (16, 16)), 16)
    assert "stablehlo.convolution" in _conv_grad_hlo(x, k, (1, 1), ((16, 16), (16, 16)), 16,
                                                     platform="cuda")
    # Another dilation or padding on the same input: XLA's.
    assert " convolution(" in _conv_grad_hlo(x, k, (1, 1), ((8, 8), (8, 8)), 8)
    assert " convolution(" in _conv_grad_hlo(x, k, (1, 1), ((16, 16), (16, 15)), 16)


@pytest.mark.parametrize("shape, kernel, strides, padding, dilation", [
    ((2, 9, 11, 5), (3, 3, 5, 7), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # stride 2, odd sizes
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((4, 4), (4, 4)), (4, 4)),  # taps reading padding
    ((1, 7, 6, 4), (2, 2, 4, 3), (1, 1), ((1, 0), (0, 1)), (1, 1)),  # a sub-pixel 2x2 phase
    ((3, 10, 9, 3), (5, 5, 3, 6), (2, 2), ((2, 2), (2, 2)), (1, 1)),  # the Ds' first layer
    ((1, 9, 8, 2), (3, 3, 2, 3), (2, 1), ((0, 2), (1, 0)), (1, 2)),  # asymmetric everything
])
def test_taps_kernel_grad_conv_equals_xla_conv_with_gradients(shape, kernel, strides, padding,
                                                              dilation):
    rng = np.random.default_rng(10)
    x, k = _rand(rng, shape), _rand(rng, kernel, 0.3)
    kh, kw, c_in, c_out = kernel
    ref = _lax_conv(strides, padding, dilation)
    ho, wo = ref(x, k).shape[1:3]
    _compare_with_grads(
        lambda x, k: conv_forms.taps_kernel_grad_conv(x, k, strides, padding, dilation), ref,
        x, k, terms_out=kh * kw * c_in, terms_dx=kh * kw * c_out, terms_dk=shape[0] * ho * wo)
    # Not vacuous: a kernel gradient whose taps are read one pixel off fails the same bound.
    dy = _rand(rng, (shape[0], ho, wo, c_out))
    _, vjp_abs = jax.vjp(ref, jnp.abs(x), jnp.abs(k))
    shifted = conv_forms.taps_kernel_grad(jnp.roll(x, 1, axis=2), dy, kernel, strides, padding,
                                          dilation)
    assert np.any(_excess(shifted, jax.vjp(ref, x, k)[1](dy)[1], vjp_abs(jnp.abs(dy))[1],
                          shape[0] * ho * wo) > 0)


def test_taps_kernel_grad_conv_rejects_negative_padding():
    with pytest.raises(ValueError, match="non-negative"):
        conv_forms.taps_kernel_grad_conv(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2)), (2, 2),
                                         ((-1, 0), (0, 0)))


_KERNEL_GRAD = re.compile(r"= f32\[(\d+,(\d),\2,\d+|(\d),\3,\d+,\d+)\]")


def _xla_kernel_grads(hlo: str, size: int) -> list[str]:
    """XLA convolutions in `hlo` whose output is a size x size kernel: XLA's kernel gradients."""
    return [line for line in hlo.splitlines() if " convolution(" in line
            and (m := _KERNEL_GRAD.search(line)) and int(m.group(2) or m.group(3)) == size]


def test_conv_uses_taps_kernel_grad_on_cpu_for_wide_layers_it_does_not_otherwise_cover():
    """Wide stride-2 layers (and the others that keep XLA's convolution forward) compute their
    kernel gradient as products on the CPU, forward and input gradient still XLA's; narrower
    ones, the wide 5x5 layers with more than a few input channels, and other platforms keep
    XLA's kernel gradient."""
    rng = np.random.default_rng(11)
    wide = conv_forms.TAPS_KERNEL_GRAD_MIN_CHANNELS

    x = _rand(rng, (2, 20, 20, wide))  # a 10 x 10 output: above the patches form's cut
    k = _rand(rng, (3, 3, wide, wide), 0.05)
    pads = ((1, 1), (1, 1))
    hlo = _conv_grad_hlo(x, k, (2, 2), pads)
    assert " convolution(" in hlo  # XLA's forward and input gradient
    assert not _xla_kernel_grads(hlo, 3), _xla_kernel_grads(hlo, 3)
    assert _xla_kernel_grads(_conv_grad_hlo(x[..., :wide // 2], k[:, :, :wide // 2, :wide // 2],
                                            (2, 2), pads), 3)
    gpu = _conv_grad_hlo(x, k, (2, 2), pads, platform="cuda")
    assert "stablehlo.convolution" in gpu and "stablehlo.dot_general" not in gpu
    # 5x5: the first layers' few input channels yes, a wide discriminator layer no.
    first = _rand(rng, (5, 5, 4, wide), 0.05)
    assert not _xla_kernel_grads(_conv_grad_hlo(x[..., :4], first, (2, 2), ((2, 2), (2, 2))), 5)
    d_layer = _rand(rng, (5, 5, wide, wide), 0.05)
    assert _xla_kernel_grads(_conv_grad_hlo(x, d_layer, (2, 2), ((2, 2), (2, 2))), 5)


def test_wide_subpixel_deconv_computes_kernel_gradients_by_taps_on_cpu():
    wide = conv_forms.TAPS_KERNEL_GRAD_MIN_CHANNELS
    rng = np.random.default_rng(12)

    def grad_hlo(c_in, c_out):
        x, k = _rand(rng, (1, 6, 6, c_in)), _rand(rng, (4, 4, c_in, c_out), 0.05)
        return _cpu_hlo(jax.grad(lambda x, k: jnp.sum(conv_forms.deconv4x4(x, k) ** 2),
                                 argnums=(0, 1)), x, k)

    assert not _xla_kernel_grads(grad_hlo(wide, wide // 2), 2)
    assert _xla_kernel_grads(grad_hlo(wide // 2, wide // 4), 2)


@pytest.mark.parametrize("shape, features", [((2, 7, 9, 5), 6), ((1, 16, 12, 8), 3)])
def test_deconv_layer_equals_flax_conv_transpose(shape, features):
    rng = np.random.default_rng(0)
    x = _rand(rng, shape)
    ours = models.ConvTranspose4x4(features)
    theirs = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
    v = ours.init(jax.random.PRNGKey(1), x)
    v_ref = theirs.init(jax.random.PRNGKey(1), x)
    # Same parameter names, shapes and initial values: checkpoints are interchangeable.
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), v, v_ref))
    bias = _rand(rng, (features,))
    y = ours.apply({"params": {"kernel": v["params"]["kernel"], "bias": bias}}, x)
    y_ref = theirs.apply({"params": {"kernel": v["params"]["kernel"], "bias": bias}}, x)
    assert y.shape == (shape[0], 2 * shape[1], 2 * shape[2], features)
    magnitude = theirs.apply({"params": {"kernel": jnp.abs(v["params"]["kernel"]),
                                         "bias": jnp.abs(bias)}}, jnp.abs(x))
    _check_close(y, y_ref, magnitude, 16 * shape[-1] + 1)


@pytest.mark.parametrize("shape, features", [
    ((2, 7, 9, 5), 6), ((3, 8, 8, 4), 4),
    ((1, 5, 6, 64), 64),  # wide enough for the taps kernel gradient
])
def test_subpixel_deconv_gradients_equal_xla_conv_transpose(shape, features):
    rng = np.random.default_rng(3)
    x, k = _rand(rng, shape), _rand(rng, (4, 4, shape[-1], features), 0.3)
    ref = lambda x, k: lax.conv_transpose(x, k, (2, 2), "SAME",  # noqa: E731
                                          dimension_numbers=conv_forms.NHWC)
    # Each output sums 4 x 4 / 4 = 4 taps of C_in; each dx sums 16 taps of C_out; dk sums
    # every input pixel of the batch.
    _compare_with_grads(conv_forms.subpixel_deconv4x4, ref, x, k,
                        terms_out=4 * shape[-1], terms_dx=16 * features,
                        terms_dk=shape[0] * shape[1] * shape[2])


def test_deconv_is_subpixel_on_cpu_and_conv_transpose_elsewhere():
    x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((4, 4, 4, 3))
    # XLA's transposed convolution convolves a zero-dilated input (lhs_dilate / lhs_dilation).
    assert "lhs_dilate=2x2" not in _cpu_hlo(conv_forms.deconv4x4, x, k)
    gpu = _stablehlo_for("cuda", conv_forms.deconv4x4, x, k)
    assert gpu.count("stablehlo.convolution") == 1 and "lhs_dilate = [2, 2]" in gpu


@functools.lru_cache(maxsize=None)
def _training_step_hlo(width: float, size: int) -> str:
    """The compiled joint step's HLO (one compilation per setup for the tests that read it)."""
    config = config_lib.base_config()
    config.model.width = width
    config.data.image_size, config.mask.local_size = size, size // 2
    config.mask.hole_min, config.mask.hole_max = size // 4, size // 3
    config.batch_size = 2
    nets = state_lib.create_networks(config)
    st = state_lib.create_state(config, nets, jax.random.PRNGKey(0), (0.5, 0.5, 0.5))
    joint = steps_lib.make_steps(config, nets, donate=False).joint
    images = jnp.zeros((2, size, size, 3), jnp.uint8)
    return joint.lower(st, images).compile().as_text()


def test_cpu_training_step_avoids_xlas_slow_convolutions():
    """The joint step (both networks, forward and backward) on the CPU computes the upsampling
    layers without convolving a zero-dilated input (XLA's transposed convolution, whose
    gradient XLA's CPU backend runs an order of magnitude slower than PyTorch), and has no
    convolution in the discriminators' layers with outputs of <= 8x8 pixels (slower still than
    the equivalent products): benchmarks/bench_conv_forms.py."""
    hlo = _training_step_hlo(width=0.25, size=48)
    convs = [line for line in hlo.splitlines() if " convolution(" in line]
    assert convs, "no convolutions at all: the check would be vacuous"
    assert any("ConvTranspose_" in c for c in convs), "the upsampling layers were not found"
    dilated = [c for c in convs if "lhs_dilate" in c and "ConvTranspose_" in c]
    assert not dilated, dilated
    # The discriminators' 5x5 stride-2 layers halve their input: global 48 -> 24, 12, 6, ...;
    # local 24 -> 12, 6, .... Layers with outputs of <= 8x8 must be products, forward and back.
    tiny = []
    for line in convs:
        match = re.search(r"/(global|local)/PaddedConv_(\d+)/", line)
        if match:
            size_in = 48 if match.group(1) == "global" else 24
            if size_in >> (int(match.group(2)) + 1) <= 8:
                tiny.append(line)
    assert any("/local/PaddedConv_0/" in c for c in convs), "D's layers were not found"
    assert not tiny, tiny


# ----------------------------------------------------------------------------------------------
# Winograd's F(4x4, 3x3)


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Winograd's form for every channel count (the networks use it for wide layers only)."""
    monkeypatch.setattr(conv_forms, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_forms, "WINOGRAD_MIN_TRAINED_CHANNELS", 1)


@pytest.mark.parametrize("shape, features, padding, dilation", [
    ((2, 16, 16, 5), 6, ((1, 1), (1, 1)), 1),  # whole tiles
    ((1, 13, 10, 4), 3, ((1, 1), (1, 1)), 1),  # partial tiles
    ((2, 12, 11, 3), 4, ((0, 0), (0, 0)), 1),  # VALID (reflect padding pads first)
    ((1, 11, 9, 4), 5, ((0, 2), (1, 0)), 1),  # asymmetric
    ((2, 17, 14, 3), 4, ((2, 2), (2, 2)), 2),  # dilated, sizes not multiples of 2
    ((1, 20, 23, 2), 3, ((3, 1), (0, 6)), 3),
])
def test_winograd_conv_equals_xla_conv_with_gradients(monkeypatch, winograd_everywhere, shape,
                                                      features, padding, dilation):
    rng = np.random.default_rng(4)
    x, k = _rand(rng, shape), _rand(rng, (3, 3, shape[-1], features), 0.3)
    ours = lambda x, k: conv_forms.winograd_conv3x3(x, k, padding, dilation)  # noqa: E731
    ref = _lax_conv((1, 1), padding, (dilation, dilation))
    y, vjp = jax.vjp(ours, x, k)
    y_ref, vjp_ref = jax.vjp(ref, x, k)
    dy = _rand(rng, y.shape)
    (dx, dk), (dx_ref, dk_ref) = vjp(dy), vjp_ref(dy)
    # Magnitudes of Winograd's own terms: the same form on absolute values and matrices.
    monkeypatch.setattr(conv_forms, "WINOGRAD_MATRICES",
                        tuple(np.abs(m) for m in conv_forms.WINOGRAD_MATRICES))
    mag_y, vjp_abs = jax.vjp(ours, jnp.abs(x), jnp.abs(k))
    mag_dx, mag_dk = vjp_abs(jnp.abs(dy))
    n, h, w, c = shape
    # Longest chains: the input and output transforms (<= 4 + 4 and 5 + 5 terms), the kernel's
    # (9), the channels, and XLA's own 9 x channels; the kernel gradient sums every tile of the
    # padded batch, at most its pixels, where XLA sums every output pixel.
    chain = 40
    padded = n * (h + 4 * dilation + 4) * (w + 4 * dilation + 4)
    _check_close(y, y_ref, mag_y, chain + 10 * c)
    _check_close(dx, dx_ref, mag_dx, chain + 10 * features)
    _check_close(dk, dk_ref, mag_dk, chain + padded + n * y.shape[1] * y.shape[2])
    # Not vacuous: the same check fails for a kernel off by one tap (flipped), a real bug.
    assert np.any(_excess(ref(x, k[::-1]), y_ref, mag_y, chain + 10 * c) > 0)


def test_winograd_rejects_paddings_it_does_not_compute():
    x, k = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="paddings of 0 to 2"):
        conv_forms.winograd_conv3x3(x, k, ((3, 3), (1, 1)), 1)


def test_conv_uses_winograd_on_cpu_for_wide_3x3_layers_only():
    """Forward: Winograd's products ([36, tiles, C] x [36, C, F]) where both channel counts are
    >= WINOGRAD_MIN_CHANNELS, XLA's convolution below; on a GPU always XLA's convolution."""
    rng = np.random.default_rng(5)
    conv = lambda x, k: conv_forms.conv(x, k, (1, 1), ((2, 2), (2, 2)),  # noqa: E731
                                        rhs_dilation=(2, 2), dimension_numbers=conv_forms.NHWC)
    wide = conv_forms.WINOGRAD_MIN_CHANNELS
    x, k = _rand(rng, (1, 16, 16, wide)), _rand(rng, (3, 3, wide, wide), 0.05)
    hlo = _cpu_hlo(conv, x, k)
    assert " convolution(" not in hlo and "f32[36," in hlo
    narrow = _rand(rng, (3, 3, wide, wide // 2), 0.05)
    assert " convolution(" in _cpu_hlo(conv, x, narrow)
    gpu = _stablehlo_for("cuda", conv, x, k)
    assert "stablehlo.convolution" in gpu and "36x" not in gpu


def test_cpu_training_computes_wide_kernel_gradients_by_winograd_or_taps():
    """XLA's CPU kernel gradient of a 3x3 convolution (a convolution whose output is the
    [C, 3, 3, F] kernel) ran 1.2-8x slower than Winograd's; layers with >= 64 channels train
    through Winograd's kernel gradient instead, and those Winograd's form leaves to XLA (stride
    2, a dilation wider than the sub-images, the sub-pixel upsampling's 2x2 convolutions) through
    one product per tap (benchmarks/bench_conv_forms.py). In a whole training step, no wide 3x3
    or 2x2 kernel gradient is XLA's; narrower ones are."""
    hlo = _training_step_hlo(width=0.25, size=48)  # 16 to 64 channels, 12 x 12 in the middle
    grads = _xla_kernel_grads(hlo, 3) + _xla_kernel_grads(hlo, 2)
    assert grads, "no XLA kernel gradient at all: the check would be vacuous"
    wide = [g for g in grads if max(int(n) for n in re.search(
        r"= f32\[([\d,]+)\]", g).group(1).split(",")) >= conv_forms.TAPS_KERNEL_GRAD_MIN_CHANNELS]
    assert not wide, wide
    assert "f32[36," in hlo


def test_only_networks_with_winograd_layers_train_with_the_cpu_options():
    """The quickstart's 1/8-width networks have no layer wide enough for Winograd's form: their
    training steps keep XLA's default compiler options (and so their exact results); full width
    gets the CPU options, on the CPU only. The sample grids' jit (`Steps.evaluate`, forward
    only, run every `sample_every` steps) gets the inference options at every width."""
    assert models.compiler_options(0.125) is None
    assert models.compiler_options(1.0) == conv_forms.CPU_COMPILER_OPTIONS
    assert models.compiler_options(0.25) == conv_forms.CPU_COMPILER_OPTIONS  # 64 channels
    config = config_lib.base_config()
    config.model.width = 0.125
    nets = state_lib.create_networks(config)
    steps = steps_lib.make_steps(config, nets)
    assert steps.compiler_options is None
    assert steps.evaluate_compiler_options == models.compiler_options(0.125, inference=True)
    assert steps.evaluate_compiler_options == {**conv_forms.CPU_COMPILER_OPTIONS,
                                               **conv_forms.CPU_INFERENCE_COMPILER_OPTIONS}


@pytest.mark.parametrize("width", [0.25, 0.125])
def test_inference_compiles_with_its_own_options_and_the_same_completions(monkeypatch, width):
    """Inference jits get `CPU_COMPILER_OPTIONS` and `CPU_INFERENCE_COMPILER_OPTIONS` (faster to
    compile) at every width: the completions must stay those of the training options (XLA's
    defaults for the 1/8 width). The completion is saved as 8-bit, so the two must agree far
    below one grey level; the options change only how XLA generates elementwise code
    (contraction into fused multiply-adds, approximations such as rsqrt), a few float32 ulps per
    operation, while a wrong path would differ by tenths."""
    from glcic_jax import inference

    full = models.compiler_options(1.0, inference=True)
    assert full == {**conv_forms.CPU_COMPILER_OPTIONS, **conv_forms.CPU_INFERENCE_COMPILER_OPTIONS}
    assert models.compiler_options(width, inference=True) == full
    config = config_lib.base_config()
    config.model.width = width
    generator = state_lib.create_networks(config).generator
    options = models.compiler_options(width, inference=True)
    assert inference.compiled_completion(generator) is inference._compiled_completion(
        tuple(sorted(options.items())))
    rng = np.random.default_rng(8)
    images = rng.random((2, 32, 32, 3), dtype=np.float32)
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[:, 8:20, 10:24] = 1
    mean = np.float32([0.4, 0.45, 0.5])
    variables = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 4)), train=False)
    args = (generator, variables, images, mask, mean, "mean_fill")
    ours = inference.compiled_completion(generator)(*args)
    ref = jax.jit(inference.complete_images, static_argnums=(0, 5),
                  compiler_options=models.compiler_options(width))(*args)
    assert float(jnp.abs(ours - ref).max()) <= 1e-4
    assert float(jnp.abs(ours - images).max()) > 0.05  # the hole was filled: a real comparison
    # An XLA that no longer knows an inference option compiles without it.
    monkeypatch.setattr(conv_forms, "CPU_INFERENCE_COMPILER_OPTIONS",
                        {"xla_cpu_no_such_option_for_this_test": True})
    assert models.compiler_options(width, inference=True) == conv_forms.CPU_COMPILER_OPTIONS


def test_state_initialisation_compiles_with_the_cpu_options_and_the_same_values(monkeypatch):
    """A state's initialisation runs once: it compiles with `conv_forms.run_once_compiler_options`
    (LLVM's -O1 on the CPU), which must give the values XLA's defaults give. The initialisers
    are integer arithmetic (the random bits, exact) and a few float32 operations per value
    (scaling, the truncated normal's inverse error function), so the two agree to a few ulps;
    a wrong initialiser would differ by the values' own size."""
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    nets = state_lib.create_networks(config)
    mean = np.float32([0.4, 0.45, 0.5])
    ours = state_lib.create_state(config, nets, jax.random.PRNGKey(3), mean)
    with monkeypatch.context() as patch:
        patch.setattr(conv_forms, "run_once_compiler_options", lambda: None)  # XLA's defaults
        ref = state_lib.create_state(config, nets, jax.random.PRNGKey(3), mean)
    leaves, ref_leaves = jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)
    assert len(leaves) == len(ref_leaves) > 20
    assert max(float(np.abs(np.asarray(x)).max()) for x in leaves) > 0.01  # not all zeros
    for x, y in zip(leaves, ref_leaves):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_array_equal(x, y)
    if jax.default_backend() == "cpu":  # the options reach both jits that create a state
        from glcic_jax import distributed

        monkeypatch.setattr(conv_forms, "CPU_COMPILER_OPTIONS",  # XLA refuses to compile it
                            {"xla_cpu_no_such_option_for_this_test": True})
        with pytest.raises(Exception, match="xla_cpu_no_such_option_for_this_test"):
            state_lib.create_state(config, nets, jax.random.PRNGKey(3), mean)
        with pytest.raises(Exception, match="xla_cpu_no_such_option_for_this_test"):
            distributed.init_replicated(lambda: jnp.ones(3), distributed.make_mesh())


def test_inference_options_of_checked_jaxlib_releases_are_used_without_a_probe(monkeypatch):
    """Probing an inference compiler option costs a compilation on every cold `complete`: for
    the jaxlib releases checked to know it none is made; any other release, or an option not
    listed, is still probed (and dropped if XLA refuses it)."""
    name = "xla_cpu_use_fusion_emitters"
    probes = []
    real_jit = jax.jit

    def counting_jit(*args, **kwargs):
        probes.append(kwargs.get("compiler_options"))
        return real_jit(*args, **kwargs)

    monkeypatch.setattr(conv_forms.jax, "jit", counting_jit)
    conv_forms._accepted.cache_clear()
    try:
        for release, probed in [((0, 8, 1), False), ((0, 10, 2), False), ((0, 8, 0), True),
                                (conv_forms.INFERENCE_XLA_FLAGS_CHECKED_BELOW, True), (None, True)]:
            monkeypatch.setattr(conv_forms, "_jaxlib_release", lambda r=release: r)
            conv_forms._accepted.cache_clear()
            probes.clear()
            conv_forms._accepted(name, False)
            assert bool(probes) == probed, (release, probes)
        monkeypatch.setattr(conv_forms, "_jaxlib_release", lambda: (0, 10, 2))
        conv_forms._accepted.cache_clear()
        assert not conv_forms._accepted("xla_cpu_no_such_option_for_this_test", True)
        assert probes  # an unlisted option was probed, and refused
    finally:
        conv_forms._accepted.cache_clear()
    assert conv_forms._release("0.10.2.dev20261201") == (0, 10, 2)
    assert conv_forms._release("nightly") is None


def test_inference_xla_flags_are_added_once_where_jaxlib_knows_them_and_keep_the_users():
    sched = "--xla_cpu_enable_concurrency_optimized_scheduler"
    ynn = "--xla_cpu_experimental_ynn_fusion_type"
    both = f"{sched}=false {ynn}="
    assert conv_forms.inference_xla_flags("", "0.10.2") == both
    user = "--xla_cpu_multi_thread_eigen=false"
    assert conv_forms.inference_xla_flags(user, "0.8.1") == f"{user} {both}"
    assert conv_forms.inference_xla_flags(user, "0.4.35") == f"{user} {sched}=false"
    assert conv_forms.inference_xla_flags(f"{sched}=true", "0.10.2") == f"{sched}=true {ynn}="
    assert conv_forms.inference_xla_flags(f"{ynn}=+eltwise", "0.9.0") == (
        f"{ynn}=+eltwise {sched}=false")
    # A jaxlib not checked to know them (XLA stops on an unknown flag) is left alone.
    for version in ("0.4.34", "0.11.0", "1.0.0", "", "unknown"):
        assert conv_forms.inference_xla_flags(user, version) == user


def _without_and_with_inference_flags(code: str, *args: str, timeout: int = 300) -> dict:
    """`code` run twice, each time in a fresh Python process: without XLA_FLAGS (`sys.argv[1]`
    is 'default') and with `conv_forms.use_inference_xla_flags()` called before JAX starts
    ('flags'); then `args`. Each run's stdout, by that name. Skips where this jaxlib gets no
    inference flags."""
    import importlib.metadata
    import subprocess
    import sys

    if conv_forms.inference_xla_flags("", importlib.metadata.version("jaxlib")) == "":
        pytest.skip("this jaxlib was not checked to know the inference flags")
    header = ("import sys\n"
              "if sys.argv[1] == 'flags':\n"
              "    from glcic_jax import conv_forms\n"
              "    conv_forms.use_inference_xla_flags()\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return {run: subprocess.run([sys.executable, "-c", header + code, run, *args], env=env,
                                cwd=root, capture_output=True, text=True, timeout=timeout,
                                check=True).stdout
            for run in ("default", "flags")}


_SCHEDULE_PROBE = """
import jax, jax.numpy as jnp
def f(x, ws):  # each layer's w @ w.T depends on the weights alone, as a Winograd kernel transform
    for w in ws:
        x = jnp.tanh(x @ (w @ w.T))
    return x
a = jax.ShapeDtypeStruct((256, 256), jnp.float32)
print(jax.jit(f).lower(a, [a] * 8).compile().memory_analysis().temp_size_in_bytes)
"""


def test_inference_xla_flags_compute_weight_only_work_where_it_is_used():
    """What the inference flags are for: with XLA's default CPU scheduler, work that depends on
    the weights alone is done at the start and kept alive (here 8 products of 256 KiB each);
    with the flags each is made just before its layer (one or two alive at a time)."""
    temp = {run: int(out.split()[-1])
            for run, out in _without_and_with_inference_flags(_SCHEDULE_PROBE).items()}
    assert temp["default"] >= 8 * 256 * 256 * 4
    assert temp["flags"] <= 3 * 256 * 256 * 4


_COMPLETION_PROBE = """
import os
import numpy as np
import jax, jax.numpy as jnp
from glcic_jax import config_lib, inference, state
generator = state.create_networks(config_lib.base_config()).generator  # full width
abstract = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 64, 64, 4)), train=False))
rng = np.random.default_rng(0)
def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
        return rng.standard_normal(leaf.shape).astype(np.float32) * np.sqrt(
            2.0 / np.prod(leaf.shape[:-1]))
    if name.endswith(("['scale']", "['var']")):
        return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)
variables = jax.tree_util.tree_map_with_path(fill, abstract)
images = rng.random((1, 64, 64, 3), dtype=np.float32)
mask = np.zeros((1, 64, 64, 1), np.float32)
mask[:, 16:40, 20:48] = 1
out = inference.compiled_completion(generator)(
    generator, variables, images, mask, np.float32([0.4, 0.45, 0.5]), "mean_fill")
np.save(os.path.join(sys.argv[2], sys.argv[1] + ".npy"),
        np.stack([np.asarray(out)[0], images[0]]))
"""


def test_inference_xla_flags_give_the_same_completions(tmp_path):
    """The inference flags change XLA's schedule and which library multiplies (Eigen rather
    than YNNPACK), not what is computed: the full-width network's completions (Winograd's
    products included) agree far below one grey level, as for the inference compiler options."""
    _without_and_with_inference_flags(_COMPLETION_PROBE, str(tmp_path), timeout=600)
    (ours, images), (ref, _) = np.load(tmp_path / "flags.npy"), np.load(tmp_path / "default.npy")
    assert float(np.abs(ours - ref).max()) <= 1e-4
    assert float(np.abs(ours - images).max()) > 0.05  # the hole was filled: a real comparison


@pytest.mark.parametrize("kernel, dilation", [((3, 3, 4, 5), (1, 1)), ((5, 5, 3, 2), (1, 1)),
                                              ((3, 3, 2, 3), (3, 3))])
def test_valid_convolution_as_a_padded_one_equals_xla_valid_with_gradients(kernel, dilation):
    rng = np.random.default_rng(6)
    x, k = _rand(rng, (2, 13, 11, kernel[2])), _rand(rng, kernel, 0.3)
    y = _lax_conv((1, 1), "VALID", dilation)(x, k)
    _compare_with_grads(lambda x, k: conv_forms.valid_as_padded(x, k, dilation),
                        _lax_conv((1, 1), "VALID", dilation), x, k,
                        terms_out=kernel[0] * kernel[1] * kernel[2],
                        terms_dx=kernel[0] * kernel[1] * kernel[3],
                        terms_dk=2 * (y.shape[1] + 2) * (y.shape[2] + 2))


def test_wide_valid_convolutions_get_one_pixel_of_padding_on_cpu():
    """XLA's CPU convolution of a wide layer ran about 3x slower without padding (the
    reflect-padding configs pad the input themselves); narrow layers and GPUs are unchanged."""
    rng = np.random.default_rng(7)
    conv = lambda x, k: conv_forms.conv(x, k, (1, 1), "VALID",  # noqa: E731
                                        dimension_numbers=conv_forms.NHWC)
    x, k = _rand(rng, (1, 20, 20, 64)), _rand(rng, (5, 5, 64, 8), 0.05)
    assert "pad=1_1x1_1" in _cpu_hlo(conv, x, k)
    gpu = [line for line in _stablehlo_for("cuda", conv, x, k).splitlines()
           if "stablehlo.convolution" in line]
    assert len(gpu) == 1 and "-> tensor<1x16x16x8xf32>" in gpu[0], gpu  # VALID itself
    narrow_x, narrow_k = _rand(rng, (1, 20, 20, 8)), _rand(rng, (5, 5, 8, 8), 0.05)
    assert "pad=1_1x1_1" not in _cpu_hlo(conv, narrow_x, narrow_k)
