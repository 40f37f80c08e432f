"""The README's "complete your own photo" example: `tools/sample_inputs.py` writes a photo and a
mask that `glcic_jax.complete` reads, and the quickstart's network completes them.

The network is the quickstart generator of `tests/data/quickstart_generator.npz` (see
`tests/test_quickstart_model.py`), standing in for the `runs/quickstart` workdir the README uses.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from glcic_jax import image_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import export_test_model  # noqa: E402
import readme_picture  # noqa: E402
import sample_inputs  # noqa: E402

MODEL = os.path.join(ROOT, "tests", "data", "quickstart_generator.npz")


@pytest.fixture(scope="module")
def completer():
    return export_test_model.load(MODEL)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Run the script as the README does, into a fresh folder; return that folder."""
    out = tmp_path_factory.mktemp("samples") / "samples"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sample_inputs.py"),
                           f"--out_dir={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out / 'photo.png'}" in proc.stdout
    return out


def test_the_script_writes_a_held_out_photo_and_a_mask_complete_reads(written):
    import skimage.data

    photo = image_io.read_photo(str(written / "photo.png"))
    assert photo.mode == "RGB"
    np.testing.assert_array_equal(photo.pixels, skimage.data.chelsea())
    hole = image_io.read_mask(str(written / "mask.png"), photo.pixels.shape[:2])
    # Three separate 48-px squares, nothing else.
    labels, count = ndimage.label(hole)
    assert count == len(sample_inputs.HOLES) == 3
    assert hole.sum() == 3 * 48 * 48
    for top, left in sample_inputs.HOLES:
        assert hole[top : top + 48, left : left + 48].all()


def test_the_quickstart_network_completes_the_sample(written, completer):
    """What the README's `complete` command does with these files, at the training scale: only
    the holes change, and each gets a fill near its surroundings' colour (the bounds of
    `tests/test_quickstart_model.py`, which measures the same holes)."""
    photo = image_io.read_photo(str(written / "photo.png")).pixels
    hole = image_io.read_mask(str(written / "mask.png"), photo.shape[:2])
    (done,) = completer.complete([photo], [hole], train_scale=True)
    np.testing.assert_array_equal(done[~hole], photo[~hole])
    labels, count = ndimage.label(hole)
    for k in range(1, count + 1):
        one = labels == k
        ring = ndimage.binary_dilation(one, iterations=6) & ~one
        fill = done[one].astype(float).mean(0)
        surround = photo[ring].astype(float).mean(0)
        assert np.abs(fill - surround).max() < 30, (k, fill, surround)


def test_the_readme_picture_shows_photo_input_and_both_completions(completer):
    """`tools/readme_picture.py`: four labelled columns of the same crop; the completions differ
    from the photo inside the holes only, and the input shows the flat mean pixel there."""
    grid = readme_picture.picture(completer)
    photo = sample_inputs.sample_photo()
    hole = sample_inputs.sample_mask(photo.shape[:2]) > 0
    crop, crop_hole = photo[readme_picture.CROP], hole[readme_picture.CROP]
    h, w = crop.shape[:2]
    assert grid.dtype == np.uint8 and grid.shape[1] == 4 * w + 5 * 2  # 4 columns, 2-px padding
    cells = [grid[-h - 2 : -2, 2 + i * (w + 2) : 2 + i * (w + 2) + w] for i in range(4)]
    np.testing.assert_array_equal(cells[0], crop)
    flat = np.round(255.0 * np.asarray(completer.mean_pixel, float))
    np.testing.assert_array_equal(cells[1][crop_hole], np.broadcast_to(flat, (crop_hole.sum(), 3)))
    for cell in cells[1:]:
        np.testing.assert_array_equal(cell[~crop_hole], crop[~crop_hole])
    assert not np.array_equal(cells[2][crop_hole], cells[3][crop_hole])  # post-processing acts
