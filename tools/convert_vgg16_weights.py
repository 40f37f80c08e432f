"""Write torchvision's ImageNet VGG-16 as the .npz that `glcic_jax.perceptual` reads.

Usage (on a machine with torch, torchvision and internet; the output is ~59 MB):
  python tools/convert_vgg16_weights.py vgg16.npz
  python -m glcic_jax.main ... --config.loss.perceptual_weight=0.01 \
      --config.loss.vgg_weights=vgg16.npz

The keys are `block1_conv1/kernel` [3, 3, in, out] (HWIO), `block1_conv1/bias` [out], ... up to
`block5_conv3`, plus `preprocessing='torch'` so the loss normalises inputs the torchvision way.
Keras' `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` needs no conversion.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glcic_jax import perceptual


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} OUT.npz")
    try:
        import torchvision  # local: only this tool needs torch
    except ImportError as e:
        print(f"error: this tool needs torch and torchvision ({e}); install them with `pip "
              f"install torch torchvision` (on a machine with internet), or use Keras' "
              f"vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, which needs no conversion.",
              file=sys.stderr)
        raise SystemExit(1) from None

    model = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    np.savez(argv[1], **perceptual.from_torchvision_state_dict(model.state_dict()))
    print(f"wrote {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
