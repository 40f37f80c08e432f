"""Perceptual loss: MSE between VGG-16 features of the completed and the real hole regions.

The CelebA/Places2 report's conclusion (Retourne, Counathe) proposes to train the completion
network with "the hole area of the completed image and the real image [sent] in a pre-trained
VGG-16 ... cut off the last classifying layers to extract the last feature vector ... computing the
MSE loss between these two vectors". `make_perceptual_loss(path)` builds that loss for
`steps._recon_loss`, which applies it to the local crops around the holes (weighted by
`loss.perceptual_weight`).

Features: the VGG-16 convolutional stack (Simonyan & Zisserman 2015, configuration D) without its
classifier, up to `DEFAULT_LAYER` = `block5_conv3` (relu5_3), the last convolution's activations.
We stop before the last max-pool so that a 128x128 local crop keeps an 8x8 grid of features (the
pooled 4x4 would average away where in the hole things differ) and any crop of at least 16 pixels
works. Another layer can be chosen with `make_perceptual_loss(path, layer=...)` (any name of
`LAYERS`, e.g. 'block3_conv3' = relu3_3 or 'block4_conv3' = relu4_3, the usual style-transfer
choices, or 'block5_pool').

Weights come from a file you provide (nothing is downloaded):

* Keras `.h5` (`preprocessing='caffe'`): what `keras.applications.VGG16(weights='imagenet',
  include_top=False)` downloads to `~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_
  notop.h5`, the file with the classifier, a whole model saved with `model.save('x.h5')`, or a
  Keras 3 `model.save_weights('x.weights.h5')`. Layers are found by name (`block1_conv1` ...
  `block5_conv3`), each with a kernel [3, 3, in, out] and a bias [out].
* `.npz` with keys `block1_conv1/kernel` (HWIO, [3, 3, in, out]) and `block1_conv1/bias` ([out])
  for every layer up to the one used, and optionally `preprocessing` ('caffe' or 'torch'; default
  'caffe', the Keras convention). `tools/convert_vgg16_weights.py` writes one from torchvision's
  ImageNet VGG-16 (`preprocessing='torch'`).

ImageNet normalisation follows the weights' origin: 'caffe' (Keras) expects BGR in [0, 255] minus
the mean pixel (103.939, 116.779, 123.68); 'torch' (torchvision) expects RGB in [0, 1] minus
(0.485, 0.456, 0.406), divided by (0.229, 0.224, 0.225). Inputs to the loss are RGB in [0, 1].
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from glcic_jax import errors

# VGG-16 (configuration D) convolutional part, in Keras' layer names: (name, output channels);
# pools have 0 channels.
LAYERS: tuple[tuple[str, int], ...] = (
    ("block1_conv1", 64),
    ("block1_conv2", 64),
    ("block1_pool", 0),
    ("block2_conv1", 128),
    ("block2_conv2", 128),
    ("block2_pool", 0),
    ("block3_conv1", 256),
    ("block3_conv2", 256),
    ("block3_conv3", 256),
    ("block3_pool", 0),
    ("block4_conv1", 512),
    ("block4_conv2", 512),
    ("block4_conv3", 512),
    ("block4_pool", 0),
    ("block5_conv1", 512),
    ("block5_conv2", 512),
    ("block5_conv3", 512),
    ("block5_pool", 0),
)
LAYER_NAMES = tuple(name for name, _ in LAYERS)
CONV_LAYERS = tuple(name for name, ch in LAYERS if ch)
DEFAULT_LAYER = "block5_conv3"

# torchvision's `vgg16().features` indices of the 13 convolutions, in order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

PREPROCESSING = ("caffe", "torch")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Keras `preprocess_input(mode='caffe')`
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

_HOW_TO_GET = (
    'Get VGG-16 ImageNet weights with Keras (`python -c "import keras; '
    "keras.applications.VGG16(weights='imagenet', include_top=False)\"` saves "
    "~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5) or convert torchvision's "
    "with `python tools/convert_vgg16_weights.py vgg16.npz`; see docs/variants.md, 'Perceptual "
    "loss'."
)


def _check_layer(layer: str) -> None:
    if layer not in LAYER_NAMES:
        raise errors.ConfigError(
            f"Unknown VGG-16 layer {layer!r}; choose one of {list(LAYER_NAMES)}.")


def conv_layers_up_to(layer: str) -> tuple[str, ...]:
    """The convolution layers whose weights are needed to compute `layer`."""
    _check_layer(layer)
    names = LAYER_NAMES[: LAYER_NAMES.index(layer) + 1]
    return tuple(n for n in names if n in CONV_LAYERS)


def min_input_size(layer: str) -> int:
    """Smallest crop side for which `layer` still has at least one spatial position."""
    _check_layer(layer)
    pools = sum(1 for n in LAYER_NAMES[: LAYER_NAMES.index(layer) + 1] if n.endswith("_pool"))
    return 2**pools


class VGG16Features(nn.Module):
    """VGG-16's convolutional stack up to `layer` (inclusive, after its ReLU). NHWC.

    Input: images already normalised for the weights (see `preprocess`). 3x3 convolutions with
    one pixel of zero padding, ReLU, 2x2 max-pools of stride 2, as in the original network.
    """

    layer: str = DEFAULT_LAYER
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_layer(self.layer)
        x = x.astype(self.dtype)
        for name, features in LAYERS:
            if features:
                x = nn.Conv(
                    features,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    name=name,
                )(x)
                x = nn.relu(x)
            else:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            if name == self.layer:
                break
        return x.astype(jnp.float32)


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """RGB in [0, 1] [..., 3] -> the input the weights were trained on (ImageNet normalisation)."""
    images = images.astype(jnp.float32)
    if mode == "caffe":
        bgr = images[..., ::-1] * 255.0
        return bgr - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    if mode == "torch":
        mean = jnp.asarray(TORCH_MEAN_RGB, jnp.float32)
        std = jnp.asarray(TORCH_STD_RGB, jnp.float32)
        return (images - mean) / std
    raise errors.ConfigError(f"VGG preprocessing {mode!r} must be one of {list(PREPROCESSING)}.")


# ----------------------------------------------------------------------------------------------
# Weight files


def _expected_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    shapes, cin = {}, 3
    for name, cout in LAYERS:
        if cout:
            shapes[name] = ((3, 3, cin, cout), (cout,))
            cin = cout
    return shapes


def _read_h5(path: str) -> dict[str, dict[str, np.ndarray]]:
    """Conv weights from a Keras .h5, found by layer name wherever they sit in the file.

    Handles the legacy layout (`block1_conv1/block1_conv1/kernel:0`, also under `model_weights/`
    for whole saved models) and Keras 3's `.weights.h5` (`.../block1_conv1/vars/0` = kernel,
    `vars/1` = bias).
    """
    import h5py  # local: only this loader needs it

    found: dict[str, dict[str, np.ndarray]] = {}
    layer_re = re.compile(r"^block[1-5]_conv[1-3]$")

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        parts = name.split("/")
        layers = [p for p in parts[:-1] if layer_re.match(p)]
        if not layers:
            return
        leaf = parts[-1].split(":")[0]
        if parts[-2] == "vars" and leaf in ("0", "1"):
            leaf = "kernel" if leaf == "0" else "bias"
        if leaf in ("kernel", "bias"):
            found.setdefault(layers[-1], {})[leaf] = np.asarray(obj[()], np.float32)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def _read_npz(path: str) -> tuple[dict[str, dict[str, np.ndarray]], str | None]:
    found: dict[str, dict[str, np.ndarray]] = {}
    mode = None
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            if key == "preprocessing":
                mode = str(data[key])
                continue
            layer, _, leaf = key.rpartition("/")
            if layer in CONV_LAYERS and leaf in ("kernel", "bias"):
                found.setdefault(layer, {})[leaf] = np.asarray(data[key], np.float32)
    return found, mode


def load_vgg16_weights(path: str, layer: str = DEFAULT_LAYER) -> tuple[dict, str]:
    """Read the conv weights needed up to `layer` from a .h5 or .npz file.

    Returns `(params, preprocessing)`: flax params `{layer_name: {'kernel', 'bias'}}` (float32,
    HWIO kernels) for `VGG16Features`, and 'caffe' or 'torch'. Raises ConfigError when no file is
    named and InputFileError when the file is missing, lacks a needed layer or a shape is wrong.
    """
    needed = conv_layers_up_to(layer)
    if not path:
        raise errors.ConfigError("No VGG-16 weights file given (loss.vgg_weights). " + _HOW_TO_GET)
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise errors.InputFileError(f"VGG-16 weights file {path!r} does not exist. " + _HOW_TO_GET)
    ext = path.lower()
    if not ext.endswith((".h5", ".hdf5", ".npz")):
        raise errors.InputFileError(
            f"VGG-16 weights {path!r}: expected a Keras .h5 or an .npz file.")
    try:
        if ext.endswith(".npz"):
            found, mode = _read_npz(path)
            mode = mode or "caffe"
        else:
            found, mode = _read_h5(path), "caffe"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        # h5py and numpy's reports of a damaged or foreign file: the user's file, not our bug.
        raise errors.InputFileError(
            f"cannot read VGG-16 weights {path!r} ({type(e).__name__}: {e}). " + _HOW_TO_GET
        ) from e
    if mode not in PREPROCESSING:
        raise errors.InputFileError(
            f"{path}: preprocessing={mode!r} must be one of {list(PREPROCESSING)}.")

    missing = [
        f"{n}/{leaf}" for n in needed for leaf in ("kernel", "bias") if leaf not in found.get(n, {})
    ]
    if missing:
        have = sorted(found) or ["none"]
        raise errors.InputFileError(
            f"VGG-16 weights {path!r} lack {', '.join(missing)} (needed up to {layer}; found "
            f"layers: {', '.join(have)}). Is it a VGG-16 file with Keras layer names? "
            + _HOW_TO_GET
        )
    shapes = _expected_shapes()
    params = {}
    for name in needed:
        kernel, bias = found[name]["kernel"], found[name]["bias"]
        want_k, want_b = shapes[name]
        if kernel.shape != want_k or bias.shape != want_b:
            raise errors.InputFileError(
                f"VGG-16 weights {path!r}: {name} has kernel {kernel.shape} and bias "
                f"{bias.shape}, expected {want_k} (HWIO) and {want_b}. PyTorch kernels "
                f"[out, in, 3, 3] must be transposed: use tools/convert_vgg16_weights.py."
            )
        params[name] = {"kernel": kernel, "bias": bias}
    return params, mode


def from_torchvision_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torchvision `vgg16().state_dict()` -> the .npz dict this module reads.

    `features.{0,2,5,...,28}.weight` [out, in, 3, 3] becomes `blockB_convK/kernel` [3, 3, in, out]
    and `.bias` `blockB_convK/bias`; `preprocessing` is 'torch'. Values may be torch tensors or
    numpy arrays.
    """
    out: dict[str, np.ndarray] = {}
    for name, idx in zip(CONV_LAYERS, TORCHVISION_CONV_INDICES):
        w = state_dict[f"features.{idx}.weight"]
        b = state_dict[f"features.{idx}.bias"]
        w = np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w, np.float32)
        b = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, np.float32)
        out[f"{name}/kernel"] = np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
        out[f"{name}/bias"] = b
    out["preprocessing"] = np.asarray("torch")
    return out


# ----------------------------------------------------------------------------------------------
# The loss


def make_feature_fn(
    path: str, layer: str = DEFAULT_LAYER, dtype: Any = jnp.float32
) -> Callable[[jax.Array], jax.Array]:
    """fn(images RGB [B, H, W, 3] in [0, 1]) -> VGG-16 features at `layer` (float32), jittable."""
    params, mode = load_vgg16_weights(path, layer)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    model = VGG16Features(layer=layer, dtype=dtype)
    smallest = min_input_size(layer)

    def features(images: jax.Array) -> jax.Array:
        if min(images.shape[1:3]) < smallest:
            raise errors.ConfigError(
                f"VGG-16 layer {layer} needs crops of at least {smallest}x{smallest}, got "
                f"{images.shape[1]}x{images.shape[2]}: raise mask.local_size or pick an earlier "
                f"layer."
            )
        # The weights are constants of the traced step; the barrier keeps XLA from
        # constant-folding transformations of them (e.g. the flipped kernels of the backward
        # pass) at compile time, which costs seconds for 14.7M parameters and gains nothing.
        frozen = jax.lax.optimization_barrier(params)
        return model.apply({"params": frozen}, preprocess(images, mode))

    return features


def make_perceptual_loss(
    path: str, layer: str = DEFAULT_LAYER, dtype: Any = jnp.float32
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """fn(fake_local, real_local) -> float32 scalar: MSE between their VGG-16 features.

    Both inputs are RGB crops [B, L, L, 3] in [0, 1] (the completed and the original image around
    each hole). The weights are read once, here; the returned function is pure and jittable (the
    weights are constants of the traced computation, never trained). Gradients flow into
    `fake_local` only.
    """
    features = make_feature_fn(path, layer, dtype)

    def perceptual_loss(fake_local: jax.Array, real_local: jax.Array) -> jax.Array:
        target = jax.lax.stop_gradient(features(real_local))
        return jnp.mean(jnp.square(features(fake_local) - target))

    return perceptual_loss
