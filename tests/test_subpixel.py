"""The completion network's inference form: transposed convolutions as four interleaved 2x2
convolutions (`models.SubpixelConvTranspose`), the same layer as flax's `nn.ConvTranspose`.

The whole converted network is also checked against an independent numpy forward pass of the
Torch7 layers in tests/test_convert.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glcic_jax import models


@pytest.mark.parametrize("shape, features", [((2, 7, 9, 5), 6), ((1, 16, 12, 8), 3)])
def test_subpixel_layer_equals_flax_conv_transpose(shape, features):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    ours = models.SubpixelConvTranspose(features)
    theirs = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
    v = ours.init(jax.random.PRNGKey(1), x)
    v_ref = theirs.init(jax.random.PRNGKey(1), x)
    # Same parameter names, shapes and initial values: checkpoints are interchangeable.
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), v, v_ref))
    v = {"params": {"kernel": v["params"]["kernel"],
                    "bias": jnp.asarray(rng.standard_normal(features), jnp.float32)}}
    y, y_ref = np.asarray(ours.apply(v, x)), np.asarray(theirs.apply(v, x))
    assert y.shape == y_ref.shape == (shape[0], 2 * shape[1], 2 * shape[2], features)
    # Both sum the same <= 4 x 4 x C_in products in another order: float32 rounding bound,
    # (number of terms) x eps x (the sum of their magnitudes).
    magnitude = np.asarray(theirs.apply({"params": {"kernel": jnp.abs(v["params"]["kernel"]),
                                                    "bias": jnp.abs(v["params"]["bias"])}},
                                        jnp.abs(x)))
    terms = 16 * shape[-1] + 1
    bound = terms * np.finfo(np.float32).eps * magnitude
    assert np.all(np.abs(y - y_ref) <= bound), float(np.max(np.abs(y - y_ref) - bound))


def _hlo(train: bool) -> str:
    net = models.CompletionNetwork(width=0.125)
    x = jnp.zeros((1, 16, 16, 4), jnp.float32)
    v = net.init(jax.random.PRNGKey(0), x, train=False)
    if train:
        def fn(v, x):
            return net.apply(v, x, train=True, mutable=["batch_stats"])[0]
    else:
        def fn(v, x):
            return net.apply(v, x, train=False)
    return jax.jit(fn).lower(v, x).as_text()


def test_inference_runs_no_convolution_over_a_zero_dilated_input():
    """Inference lowers to plain convolutions; training keeps flax's transposed convolution
    (a convolution over the input with zeros inserted: `lhs_dilate = [2, 2]`)."""
    assert "lhs_dilate = [2, 2]" in _hlo(train=True)
    assert "lhs_dilate = [2, 2]" not in _hlo(train=False)
