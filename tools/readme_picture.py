"""The README's completion picture: `tools/sample_inputs.py`'s photo and mask completed by the
quickstart's network, without and with GLCIC's post-processing.

  python tools/readme_picture.py [--workdir=runs/quickstart] [--out=docs/completion.png]

Without --workdir it uses the quickstart generator committed for the tests
(`tests/data/quickstart_generator.npz`, from a real quickstart run). The completions are what
`python -m glcic_jax.complete` writes for that photo and mask (at the training scale, the
default). Columns: the photo, the network's input (holes filled with the mean pixel), the
completion, the completion with `--postprocess`; cropped to the part of the photo with the holes.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import sample_inputs  # noqa: E402

MODEL = os.path.join(ROOT, "tests", "data", "quickstart_generator.npz")
CROP = (slice(20, 300), slice(30, 280))  # rows, columns of chelsea holding the three holes


def picture(completer) -> np.ndarray:
    """uint8 [H, W, 3]: photo | input | completed | completed + post-processing, labelled."""
    from glcic_jax import summary

    photo = sample_inputs.sample_photo()
    hole = sample_inputs.sample_mask(photo.shape[:2]) > 0
    flat = np.round(255.0 * np.asarray(completer.mean_pixel, float)).astype(np.uint8)
    given = np.where(hole[..., None], flat, photo)
    (plain,) = completer.complete([photo], [hole], train_scale=True)
    (post,) = completer.complete([photo], [hole], train_scale=True, postprocess=True)
    columns = {"photo": photo, "input": given, "completed": plain,
               "completed --postprocess": post}
    return summary.comparison_grid({name: img[CROP][None] for name, img in columns.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="", help="a quickstart workdir (default: the "
                        "committed test model)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "completion.png"))
    args = parser.parse_args()
    if args.workdir:
        from glcic_jax import inference

        completer = inference.load(args.workdir)
    else:
        import export_test_model

        completer = export_test_model.load(MODEL)
    Image.fromarray(picture(completer)).save(args.out, optimize=True)
    print(f"wrote {args.out} (step {completer.step})")


if __name__ == "__main__":
    main()
