"""Networks of GLCIC (Iizuka et al. 2017) in flax.linen, NHWC.

* `CompletionNetwork`: the 17-layer dilated encoder-decoder of the paper's Table 1.
* `GlobalDiscriminator`, `LocalDiscriminator` and `ContextDiscriminator`: Table 2, whose two
  1024-d feature vectors are concatenated and mapped to one real/fake **logit** (no sigmoid: the
  losses work on logits).
* `TwoStageCompletion`: an optional coarse-to-fine generator (the landscape report's future work
  b), a second completion network that refines the first one's composited output.
* `FillNetwork`: the CelebA/Places2 report's proposed learned fill (its section V): a small ConvNet
  that gives the holes their initial content instead of the flat mean pixel, trained end to end
  through the completion loss (`model.fill='learned'`; the default `'mean'` is the paper's).

Every module takes `train` (BatchNorm uses batch statistics and updates its running averages when
True). Parameters are float32; activations use `dtype` (bfloat16 on GPU); outputs are float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from glcic_jax import config_lib, conv_forms

Dtype = Any

# BatchNorm as Torch7 / PyTorch: running = 0.9 * running + 0.1 * batch, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


# GLCIC Table 1: (kind, kernel, dilation, stride, features). 'deconv' is a 4x4 transposed conv
# that doubles the resolution; the final 'output' layer has no norm and a sigmoid.
COMPLETION_LAYERS: tuple[tuple[str, int, int, int, int], ...] = (
    ("conv", 5, 1, 1, 64),
    ("conv", 3, 1, 2, 128),
    ("conv", 3, 1, 1, 128),
    ("conv", 3, 1, 2, 256),
    ("conv", 3, 1, 1, 256),
    ("conv", 3, 1, 1, 256),
    ("conv", 3, 2, 1, 256),  # GLCIC 3.1: dilated layers widen the receptive field
    ("conv", 3, 4, 1, 256),
    ("conv", 3, 8, 1, 256),
    ("conv", 3, 16, 1, 256),
    ("conv", 3, 1, 1, 256),
    ("conv", 3, 1, 1, 256),
    ("deconv", 4, 1, 2, 128),
    ("conv", 3, 1, 1, 128),
    ("deconv", 4, 1, 2, 64),
    ("conv", 3, 1, 1, 32),
    ("output", 3, 1, 1, 3),
)

GLOBAL_D_FEATURES = (64, 128, 256, 512, 512, 512)  # GLCIC Table 2b
LOCAL_D_FEATURES = (64, 128, 256, 512, 512)  # GLCIC Table 2a


def _zeros(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)


class _StoredParams:
    """Mixin for flax layers: a parameter that is already stored (every `apply`) is checked
    against its declared shape with a zeros initializer in place of its own.

    flax checks a stored parameter by evaluating its initializer abstractly (`jax.eval_shape`,
    which traces e.g. a truncated normal's random bits): about a fifth of tracing the full-width
    completion network, which a cold `complete` pays before it can compile. The zeros
    initializer is never called for values (the stored parameter is returned), and a stored
    array of the wrong shape still fails with flax's `ScopeParamShapeError`. Initialisation
    (`init`) uses the layer's own initializer, as before.
    """

    def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
        shape = init_args[0] if init_args else None
        if (self.scope is not None and not init_kwargs and len(init_args) <= 2
                and isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)
                and self.has_variable("params", name)):
            init_fn = _zeros
        return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)


# The same layers as flax's (and the same names in the parameter tree), with `_StoredParams`.
class Conv(_StoredParams, nn.Conv):
    pass


class Dense(_StoredParams, nn.Dense):
    pass


class BatchNorm(_StoredParams, nn.BatchNorm):
    pass


class LayerNorm(_StoredParams, nn.LayerNorm):
    pass


def scaled(features: int, width: float) -> int:
    """A layer's channel count times the `model.width` multiplier (at least 1).

    Not in the paper: `width < 1` narrows every hidden layer of the generator and the
    discriminators (the output's 3 channels and D's single logit stay) for quick CPU runs
    (configs/quickstart.py). `width = 1.0` is the paper's network exactly.
    """
    return max(1, int(round(features * width)))


class PaddedConv(nn.Module):
    """A convolution with Torch-style symmetric padding, zero or reflect.

    Torch pads `dilation * (kernel - 1) // 2` on every side (so a stride-2 layer halves an even
    size exactly); flax's 'SAME' pads asymmetrically for strided layers, so we pad explicitly.
    """

    features: int
    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: str = "zero"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.dilation * (self.kernel - 1) // 2
        if self.padding == "reflect" and pad > 0:
            # The landscape report: reflect padding keeps more information for dilated convs.
            x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
            conv_pad = "VALID"
        else:
            conv_pad = ((pad, pad), (pad, pad))
        return Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            kernel_dilation=(self.dilation, self.dilation),
            padding=conv_pad,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            conv_general_dilated=conv_forms.conv,  # lax's, or a faster form on CPUs
        )(x)


class ConvTranspose4x4(_StoredParams, nn.Module):
    """flax's `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME')`: the same
    parameters (names, shapes, initialisers), the same output up to float rounding, computed by
    `conv_forms.deconv4x4` (its sub-pixel form on CPUs, where XLA's own is slow to train)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (4, 4, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,),
                          self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv_forms.deconv4x4(x, kernel) + bias


def _norm(kind: str, train: bool, dtype: Dtype) -> nn.Module | None:
    if kind == "batch":
        return BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=dtype,
            param_dtype=jnp.float32,
        )
    if kind == "layer":
        # Per-sample normalisation over H, W, C: allowed in a WGAN-GP critic, unlike BatchNorm.
        return LayerNorm(
            epsilon=BN_EPSILON,
            reduction_axes=(-3, -2, -1),
            dtype=dtype,
            param_dtype=jnp.float32,
        )
    return None


def _activation(kind: str, x: jax.Array) -> jax.Array:
    if kind == "leaky_relu":
        return nn.leaky_relu(x, negative_slope=0.2)
    return nn.relu(x)


# FillNetwork: (kind, kernel, dilation, stride, features). Two stride-2 stages and dilated layers
# give each hole pixel ~250 px of context at a small cost (210,883 parameters).
FILL_LAYERS: tuple[tuple[str, int, int, int, int], ...] = (
    ("conv", 5, 1, 2, 32),
    ("conv", 3, 1, 2, 64),
    ("conv", 3, 2, 1, 64),
    ("conv", 3, 4, 1, 64),
    ("conv", 3, 8, 1, 64),
    ("conv", 3, 16, 1, 64),
    ("deconv", 4, 1, 2, 32),
    ("deconv", 4, 1, 2, 16),
    ("output", 3, 1, 1, 3),
)


class FillNetwork(nn.Module):
    """The learned initial hole content proposed by the CelebA/Places2 report (section V).

    The report: instead of the flat mean pixel, "define a ConvNet that would give an image to fill
    in the holes. It would take a batch of images with holes, and would output a batch of images
    the size of the holes to fill." It proposed no architecture; this small dilated
    encoder-decoder without normalisation (ReLU, a sigmoid output) is our choice. Input: the
    completion network's usual `[B, H, W, 4]` (holes mean-filled, plus the mask); output
    `[B, H, W, 3]` in [0, 1], of which only the hole pixels are used.
    """

    dtype: Dtype = jnp.float32
    padding: str = "zero"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        n_deconv = 0
        for kind, kernel, dilation, stride, features in FILL_LAYERS:
            if kind == "deconv":
                x = ConvTranspose4x4(features, dtype=self.dtype,
                                     name=f"ConvTranspose_{n_deconv}")(x)
                n_deconv += 1
            else:
                x = PaddedConv(features, kernel, stride, dilation, self.padding, self.dtype)(x)
            if kind == "output":
                break
            x = nn.relu(x)
        return jax.nn.sigmoid(x.astype(jnp.float32))


class CompletionNetwork(nn.Module):
    """GLCIC completion network (Table 1): 6,072,131 parameters.

    Input `[B, H, W, 4]`: RGB in [0, 1] whose holes are filled with the mean pixel, plus the mask
    channel (1 = hole). Output `[B, H, W, 3]` in [0, 1] (float32). H and W must be multiples of 4.

    With `fill='learned'`, a `FillNetwork` (parameters under `fill`) first computes the holes'
    initial content from that same input, and it replaces the flat mean pixel before the main
    network runs; the whole is trained end to end through the completion loss. With the default
    `fill='mean'` the module is exactly the paper's network (same parameters, same outputs).
    """

    dtype: Dtype = jnp.float32
    padding: str = "zero"
    fill: str = "mean"
    width: float = 1.0  # channel multiplier (scaled()); 1.0 = GLCIC Table 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        config_lib.check_choice("model.padding", self.padding)
        config_lib.check_choice("model.fill", self.fill)
        if x.ndim != 4 or x.shape[-1] != 4:
            raise ValueError(f"CompletionNetwork expects [B, H, W, 4] input, got {x.shape}.")
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(
                f"CompletionNetwork needs H and W divisible by 4 (two stride-2 stages), got "
                f"{x.shape[1]}x{x.shape[2]}: pad the image first."
            )
        if self.fill == "learned":
            rgb, mask = x[..., :3], x[..., 3:]
            content = FillNetwork(self.dtype, self.padding, name="fill")(x)
            filled = blend_into_hole(rgb, content.astype(rgb.dtype), mask)
            x = jnp.concatenate([filled, mask], axis=-1)
        x = x.astype(self.dtype)
        n_deconv = 0
        for kind, kernel, dilation, stride, features in COMPLETION_LAYERS:
            if kind != "output":
                features = scaled(features, self.width)
            if kind == "deconv":
                # 4x4 stride-2 transposed conv: exactly doubles H and W.
                x = ConvTranspose4x4(features, dtype=self.dtype,
                                     name=f"ConvTranspose_{n_deconv}")(x)
                n_deconv += 1
            else:
                x = PaddedConv(features, kernel, stride, dilation, self.padding, self.dtype)(x)
            if kind == "output":
                break
            x = _norm("batch", train, self.dtype)(x)
            x = nn.relu(x)
        # Sigmoid in float32 so that [0, 1] is exact whatever the activation dtype.
        return jax.nn.sigmoid(x.astype(jnp.float32))


def blend_into_hole(images: jax.Array, generated: jax.Array, mask: jax.Array) -> jax.Array:
    """Generated pixels inside the hole, original pixels outside, as `images * (1 - mask) +
    generated * mask` (floats; differentiable). mask: [B, H, W, 1], 1 = hole.

    The completed image the discriminator sees (GLCIC 3.2). `evaluate.paste_into_hole` is the
    exact uint8 counterpart for finished outputs."""
    return images * (1.0 - mask) + generated * mask


class TwoStageCompletion(nn.Module):
    """Coarse-to-fine completion (landscape report, future work b).

    Stage 1 is the GLCIC completion network; stage 2 is a second completion network that takes the
    stage-1 result composited into the input (so the hole already holds content) plus the mask and
    refines it. Returns `(refined, coarse)`; both are trained on the reconstruction loss.
    """

    dtype: Dtype = jnp.float32
    padding: str = "zero"
    fill: str = "mean"  # the first stage's initial hole content (see CompletionNetwork)
    width: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> tuple[jax.Array, jax.Array]:
        coarse = CompletionNetwork(self.dtype, self.padding, self.fill, self.width,
                                   name="coarse")(x, train)
        rgb, mask = x[..., :3], x[..., 3:]
        stage2_in = jnp.concatenate([blend_into_hole(rgb, coarse, mask), mask], axis=-1)
        refined = CompletionNetwork(self.dtype, self.padding, width=self.width, name="refine")(
            stage2_in, train)
        return refined, coarse


class _ConvStack(nn.Module):
    """5x5 stride-2 convs, each followed by the configured norm and activation, then FC 1024."""

    features: Sequence[int]
    dtype: Dtype = jnp.float32
    norm: str = "batch"
    activation: str = "relu"
    width: float = 1.0  # channel multiplier (scaled()), also on the FC 1024

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        config_lib.check_choice("model.d_norm", self.norm)
        config_lib.check_choice("model.d_activation", self.activation)
        x = x.astype(self.dtype)
        for features in self.features:
            x = PaddedConv(scaled(features, self.width), 5, stride=2, dtype=self.dtype)(x)
            norm = _norm(self.norm, train, self.dtype)
            if norm is not None:
                x = norm(x)
            x = _activation(self.activation, x)
        x = x.reshape((x.shape[0], -1))
        x = Dense(scaled(1024, self.width), dtype=self.dtype, param_dtype=jnp.float32)(x)
        return _activation(self.activation, x)


class GlobalDiscriminator(_ConvStack):
    """GLCIC Table 2b: six 5x5 stride-2 convs (64..512) and FC 1024 on the whole image."""

    features: Sequence[int] = GLOBAL_D_FEATURES


class LocalDiscriminator(_ConvStack):
    """GLCIC Table 2a: five 5x5 stride-2 convs (64..512) and FC 1024 on the crop around the hole."""

    features: Sequence[int] = LOCAL_D_FEATURES


class ContextDiscriminator(nn.Module):
    """Global + local discriminator: concatenated 1024-d features -> one logit `[B, 1]`.

    With `use_global=False` only the local branch is used (the landscape report's WGAN critic);
    `global_image` may then be None.
    """

    dtype: Dtype = jnp.float32
    norm: str = "batch"
    activation: str = "relu"
    use_global: bool = True
    width: float = 1.0

    @nn.compact
    def __call__(
        self, global_image: jax.Array | None, local_image: jax.Array, train: bool = True
    ) -> jax.Array:
        feats = [LocalDiscriminator(dtype=self.dtype, norm=self.norm, activation=self.activation,
                                    width=self.width, name="local")(local_image, train)]
        if self.use_global:
            feats.insert(0, GlobalDiscriminator(dtype=self.dtype, norm=self.norm,
                                                activation=self.activation, width=self.width,
                                                name="global")(global_image, train))
        x = jnp.concatenate(feats, axis=-1)
        logit = Dense(1, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return logit.astype(jnp.float32)  # [B, 1]


def compiler_options(width: float, inference: bool = False) -> dict | None:
    """`jax.jit` compiler options for networks of this `model.width`, on the CPU (None, XLA's
    defaults, on accelerators: `conv_forms.compiler_options`).

    An `inference` jit (compiled for a few calls: a cold `complete`, the training's sample grids
    and held-out evaluation) gets the inference set at every width: it compiled the quickstart's
    completion in 1.3 s rather than 2.7 s, bit for bit the same completions, its run time
    within this machine's noise (docs/cpu_speed.md). A training step gets
    `conv_forms.CPU_COMPILER_OPTIONS` where the widest 3x3 layers of Table 1 compute by
    Winograd's form, whose transforms they are for, and XLA's defaults for narrower networks
    such as the quickstart's, whose steps ran slower with them."""
    if inference:
        return conv_forms.compiler_options(inference=True)
    widest = max(f for kind, k, _, _, f in COMPLETION_LAYERS if kind == "conv" and k == 3)
    if scaled(widest, width) >= conv_forms.WINOGRAD_MIN_TRAINED_CHANNELS:
        return conv_forms.compiler_options()
    return None


def make_generator(model_cfg) -> nn.Module:
    """The generator a config asks for: the GLCIC network, or the two-stage variant."""
    dtype = jnp.dtype(model_cfg.dtype)
    fill, width = str(model_cfg.fill), float(model_cfg.width)
    if model_cfg.two_stage:
        return TwoStageCompletion(dtype=dtype, padding=model_cfg.padding, fill=fill, width=width)
    return CompletionNetwork(dtype=dtype, padding=model_cfg.padding, fill=fill, width=width)


def make_discriminator(model_cfg) -> nn.Module:
    """The discriminator (or WGAN critic) a config asks for."""
    config_lib.check_choice("model.discriminator", model_cfg.discriminator)
    return ContextDiscriminator(
        dtype=jnp.dtype(model_cfg.dtype),
        norm=model_cfg.d_norm,
        activation=model_cfg.d_activation,
        use_global=model_cfg.discriminator == "context",
        width=float(model_cfg.width),
    )


def count_params(params: Any) -> int:
    """Number of scalar parameters in a params pytree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
