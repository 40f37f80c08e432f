"""Test helper: run `glcic_jax.main` with one training batch poisoned with NaN.

    GLCIC_NAN_AT_STEP=2 python tests/nan_injection_main.py --config=configs/quickstart.py:tiny \
        --workdir=DIR [--config.nan_policy=skip]

Training batches are fed as float32 in [0, 1] (the steps accept float images as well as uint8),
and the batch of the 1-based step GLCIC_NAN_AT_STEP is all NaN, so that step's losses and
gradients are NaN. The product has no test-only code path for this: the helper only wraps
`input_pipeline.train_iterator` before handing over to the real entry point.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glcic_jax import input_pipeline, main

_real_train_iterator = input_pipeline.train_iterator
POISONED_STEP = int(os.environ["GLCIC_NAN_AT_STEP"])


def _poisoned_train_iterator(config, local_batch, start_step=0, host=0, hosts=1):
    batches = _real_train_iterator(config, local_batch, start_step, host, hosts)
    if local_batch != int(config.batch_size) // hosts:  # the mean-pixel reader: leave it alone
        return batches

    def generate():
        for step, images in enumerate(batches, start=start_step + 1):  # the step this batch feeds
            images = images.astype(np.float32) / 255.0
            if step == POISONED_STEP:
                images[:] = np.nan
            yield images

    return generate()


input_pipeline.train_iterator = _poisoned_train_iterator

if __name__ == "__main__":
    main.run()
