"""Tests of the evaluation metrics, the baselines and `--mode=eval` (`evaluate.py`).

The metrics are checked on inputs with textbook answers and against scikit-image's SSIM. The
end-to-end evaluation runs once on a workdir holding one untrained `:tiny` checkpoint.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from glcic_jax import checkpointing, config_lib, evaluate, inference
from test_complete import make_workdir  # one shared recipe for a tiny checkpoint


def _skimage_ssim(a, b, full=False):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255, channel_axis=-1,
                                 full=full)


@pytest.fixture(scope="module")
def pair():
    """Two random [2, 40, 37, 3] uint8 batches, the second a noisy copy, and a hole mask."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 40, 37, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    hole = np.zeros((2, 40, 37), bool)
    hole[:, 10:25, 5:20] = True
    return a, b, hole


def test_identical_images(pair):
    a, _, hole = pair
    m = evaluate.image_metrics(a, a, hole)
    for k in ("l1", "l1_hole"):
        np.testing.assert_array_equal(m[k], 0.0)
    for k in ("ssim", "ssim_hole"):
        np.testing.assert_allclose(m[k], 1.0, atol=1e-12)
    for k in ("psnr", "psnr_hole"):  # MSE = 0: capped, finite, so it can be averaged
        np.testing.assert_array_equal(m[k], evaluate.PSNR_CAP)


def test_constant_error_gives_textbook_values(pair):
    a, _, hole = pair
    a = np.minimum(a, 245)
    m = evaluate.image_metrics(a + 10, a, hole)
    expected_psnr = 10.0 * np.log10(255.0**2 / 100.0)  # 28.13 dB
    for k in ("l1", "l1_hole"):
        np.testing.assert_allclose(m[k], 10.0)
    for k in ("psnr", "psnr_hole"):
        np.testing.assert_allclose(m[k], expected_psnr)


def test_hole_metrics_only_see_the_hole(pair):
    a, _, hole = pair
    b = a.astype(np.int64)
    b[hole] += 20
    b = np.clip(b, 0, 255)
    err = np.abs(b - a)
    frac = hole[0].mean()
    np.testing.assert_allclose(evaluate.l1(b, a, hole), [err[i][hole[i]].mean() for i in range(2)])
    np.testing.assert_allclose(evaluate.l1(b, a), np.array([err[i].mean() for i in range(2)]))
    np.testing.assert_allclose(evaluate.l1(b, a), evaluate.l1(b, a, hole) * frac)
    mse_hole = np.array([np.square(err[i][hole[i]]).mean() for i in range(2)])
    np.testing.assert_allclose(evaluate.psnr(b, a, hole), 10 * np.log10(255.0**2 / mse_hole))


def test_ssim_matches_skimage(pair):
    a, b, hole = pair
    ours = evaluate.ssim(b, a)
    ref = [_skimage_ssim(b[i], a[i]) for i in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    # Inside the hole: the mean of skimage's full SSIM map over the hole pixels.
    ours_hole = evaluate.ssim(b, a, hole)
    ref_hole = [_skimage_ssim(b[i], a[i], full=True)[1][hole[i]].mean() for i in range(2)]
    np.testing.assert_allclose(ours_hole, ref_hole, rtol=1e-10)
    assert 0.0 < ours.min() < 1.0


def test_baselines_keep_pixels_outside_the_hole(pair):
    a, _, hole = pair
    outs = [evaluate.mean_fill(a, hole, [0.5, 0.4, 0.3]),
            evaluate.opencv_inpaint(a, hole, "telea"),
            evaluate.opencv_inpaint(a, hole, "navier_stokes")]
    for out in outs:
        assert out.dtype == np.uint8 and out.shape == a.shape
        np.testing.assert_array_equal(out[~hole], a[~hole])
    np.testing.assert_array_equal(outs[0][hole], np.broadcast_to([128, 102, 76], (hole.sum(), 3)))


def test_table_has_one_row_per_method():
    results = {name: dict.fromkeys(evaluate.METRICS, 1.0) for name in evaluate.METHODS}
    table = evaluate.format_table(results).splitlines()
    assert len(table) == 2 + len(evaluate.METHODS)
    assert all(name in "\n".join(table) for name in evaluate.METHODS)


# ----------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = config_lib.shrink_to_tiny(config_lib.base_config())
    cfg.data.source = "skimage"
    return cfg, make_workdir(str(tmp_path_factory.mktemp("tiny_eval_run")))


@pytest.fixture(scope="module")
def eval_run(tiny):
    cfg, workdir = tiny
    return evaluate.evaluate(cfg, workdir)


def test_mode_eval_writes_json_with_model_and_baselines(tiny, eval_run):
    cfg, workdir = tiny
    path = os.path.join(workdir, "eval_0.json")
    with open(path) as f:
        stored = json.load(f)
    assert stored["results"] == eval_run["results"]
    assert stored["num_images"] == cfg.num_eval_batches * cfg.batch_size
    assert set(stored["results"]) == set(evaluate.METHODS)
    for row in stored["results"].values():
        assert set(row) == set(evaluate.METRICS)
        assert all(np.isfinite(v) for v in row.values())
        assert row["l1"] <= row["l1_hole"]  # outside the hole every method is exact


def test_every_method_is_exact_outside_the_hole(tiny, monkeypatch):
    """Every method's output equals the input image bit for bit outside the hole (and the
    whole-image L1 is then the hole L1 times the hole's share of the image)."""
    cfg, workdir = tiny
    scored = []
    real = evaluate.mean_metrics

    def recording(pred, target, mask):
        scored.append((np.array(pred), np.array(target), np.array(mask)))
        return real(pred, target, mask)

    monkeypatch.setattr(evaluate, "mean_metrics", recording)
    payload = evaluate.evaluate(cfg, workdir)
    sets = list(payload["mask_sets"])  # every mask set, the methods in METHODS order in each
    assert len(scored) == len(evaluate.METHODS) * len(sets)
    for i, (pred, target, hole) in enumerate(scored):
        name, mask_set = evaluate.METHODS[i % len(evaluate.METHODS)], sets[
            i // len(evaluate.METHODS)]
        assert pred.dtype == np.uint8 and pred.shape == target.shape, name
        np.testing.assert_array_equal(pred[~hole], target[~hole], err_msg=name)
        assert not np.array_equal(pred[hole], target[hole]), name  # the hole was filled
        per_image = np.abs(pred.astype(float) - target.astype(float)).mean(axis=(1, 2, 3))
        share = hole.mean(axis=(1, 2))
        hole_l1 = evaluate.l1(pred, target, hole)
        np.testing.assert_allclose(per_image, hole_l1 * share, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(payload["mask_sets"][mask_set]["results"][name]["l1"],
                                   per_image.mean(), rtol=1e-9)


def test_training_eval_matches_mode_eval(tiny, eval_run):
    """The eval_every hook reports the model row of --mode=eval (same images, same holes)."""
    cfg, workdir = tiny
    _, nets, st = checkpointing.restore_for_inference(workdir)
    values = evaluate.TrainingEval(cfg, nets)(st)
    model = eval_run["results"]["model"]
    assert set(values) == {f"eval/{k}" for k in evaluate.METRICS}
    for k in evaluate.METRICS:
        np.testing.assert_allclose(values[f"eval/{k}"], model[k], rtol=1e-6)


def test_mode_eval_draws_the_methods_side_by_side(tiny, eval_run):
    """eval_<step>.png: original | input | each method, the held-out images drawn large."""
    from PIL import Image

    from glcic_jax import input_pipeline, summary

    cfg, workdir = tiny
    path = os.path.join(workdir, "eval_0.png")
    pic = np.asarray(Image.open(path).convert("RGB"))
    images = input_pipeline.eval_images(cfg, eval_run["num_images"])
    hole = evaluate.eval_masks(cfg, len(images), *images.shape[1:3])
    _, nets, st = checkpointing.restore_for_inference(workdir)
    expected = [images, evaluate.mean_fill(images, hole, st.mean_pixel),
                evaluate.TrainingEval(cfg, nets).completions(st), None,
                evaluate.opencv_inpaint(images, hole, "telea"),
                evaluate.opencv_inpaint(images, hole, "navier_stokes")]
    rows, size = min(len(images), evaluate.PICTURE_ROWS), images.shape[1]
    factor = -(-summary.MIN_CELL // size)  # 32 px crops drawn 128 px wide
    cell, pad, label = size * factor, 2, 14
    assert pic.shape == (label + rows * (cell + pad) + pad, 6 * (cell + pad) + pad, 3)
    for j, column in enumerate(expected):
        if column is None:  # model+postprocess: checked by the table's numbers
            continue
        for i in range(rows):
            top, left = label + pad + i * (cell + pad), pad + j * (cell + pad)
            big = np.repeat(np.repeat(column[i], factor, 0), factor, 1)
            np.testing.assert_array_equal(pic[top : top + cell, left : left + cell], big,
                                          err_msg=f"row {i}, column {j}")
    assert not np.array_equal(expected[2][hole], expected[1][hole])  # the model filled the holes


def test_eval_masks_are_fixed(tiny):
    cfg, _ = tiny
    a = evaluate.eval_masks(cfg, 4, 32, 32)
    b = evaluate.eval_masks(cfg, 4, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert a.any(axis=(1, 2)).all()


def test_an_unwritable_workdir_still_prints_the_table(tiny, eval_run, capsys, monkeypatch):
    cfg, workdir = tiny

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    # Fails once the JSON is in its temporary file, before the rename (leftovers.write_text).
    monkeypatch.setattr(evaluate.leftovers, "_umask", read_only)
    capsys.readouterr()
    with pytest.raises(OSError, match="Could not write .*eval_0.json .*Read-only file system"):
        evaluate.evaluate(cfg, workdir)
    out = capsys.readouterr().out
    assert "| model |" in out and "| telea |" in out
    assert not any(f.endswith(".tmp") or f.startswith(".tmp-") for f in os.listdir(workdir))


def test_no_checkpoint_hint_names_no_flag_that_eval_lacks(tmp_path):
    with pytest.raises(inference.LoadError) as info:  # a one-line user error in main
        evaluate.evaluate(config_lib.shrink_to_tiny(config_lib.base_config()),
                          str(tmp_path / "no_run"))
    assert "No GLCIC checkpoint" in str(info.value) and "--checkpoint" not in str(info.value)


def test_the_float_blend_and_the_uint8_paste_agree_on_hard_masks():
    # Two functions were both named `composite` (and two `to_uint8`): the steps' float blend
    # (models.blend_into_hole) and evaluate's exact uint8 select (evaluate.paste_into_hole).
    from glcic_jax import models

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    filled = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    hole = rng.random((2, 8, 8)) < 0.4
    pasted = evaluate.paste_into_hole(images, filled, hole)
    blended = models.blend_into_hole(images / 255.0, filled / 255.0,
                                     hole[..., None].astype(np.float32))
    # k / 255 * 255 is within a rounding error of k: quantising gives the uint8 values back.
    np.testing.assert_array_equal(inference.quantize_uint8(blended), pasted)
    np.testing.assert_array_equal(pasted[hole], filled[hole])
    np.testing.assert_array_equal(pasted[~hole], images[~hole])


def test_mode_eval_scores_every_mask_set_identically_on_rerun(tiny, eval_run, capsys):
    """Boxes and the five stroke-area bins: a row per (set, method) in the table, the JSON and
    TensorBoard; a second run on the same checkpoint gives the same numbers."""
    cfg, workdir = tiny
    names = ["boxes"] + [evaluate.stroke_set_name(lo, hi) for lo, hi in evaluate.STROKE_BINS]
    assert list(eval_run["mask_sets"]) == names
    assert eval_run["mask_sets"]["boxes"]["results"] == eval_run["results"]
    for (lo, hi), name in zip(evaluate.STROKE_BINS, names[1:]):
        fraction = eval_run["mask_sets"][name]["hole_fraction"]
        assert lo <= fraction <= hi, (name, fraction)  # each hole is in its bin, so the mean is
        assert set(eval_run["mask_sets"][name]["results"]) == set(evaluate.METHODS)
    capsys.readouterr()
    again = evaluate.evaluate(cfg, workdir)
    out = capsys.readouterr().out
    assert again["mask_sets"] == eval_run["mask_sets"]
    for name in names:
        for method in evaluate.METHODS:
            assert sum(ln.startswith(f"| {name} |") and f"| {method} |" in ln
                       for ln in out.splitlines()) == 1, (name, method)
    events = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in events:
        acc = EventAccumulator(path)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {evaluate.tensorboard_tag(n, m, "psnr_hole") for n in names
            for m in evaluate.METHODS} <= tags


def test_stroke_eval_sets_hold_their_area_bins_and_never_change(tiny):
    cfg, _ = tiny
    a = evaluate.mask_sets(cfg, 8, 32, 32)
    b = evaluate.mask_sets(cfg, 8, 32, 32)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for lo, hi in evaluate.STROKE_BINS:
        area = a[evaluate.stroke_set_name(lo, hi)].mean(axis=(1, 2))
        assert np.all((area >= lo) & (area <= hi)), (lo, hi, area)
    # Independent of what the config trains with: a strokes config is scored on the same sets.
    strokes = cfg.copy_and_resolve_references()
    strokes.mask.shape = "strokes"
    strokes.mask.stroke_width_min = 1
    c = evaluate.mask_sets(strokes, 8, 32, 32)
    for name in a:
        np.testing.assert_array_equal(a[name], c[name])
