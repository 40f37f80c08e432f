"""The authors' Torch7 model in JAX: reading Torch7 files, converting, completing, fine-tuning.

The real `completionnet_places2.t7` is never downloaded (CC BY-NC-SA): `torch7_writer` writes a
file of the same structure (a table {model = nn.Sequential of 50 modules, mean}) with random
weights, all parameter tensors views into one shared storage, plain 3x3 layers stored as
SpatialDilatedConvolution with dilation 1, BatchNorm statistics that differ from the activations'
and eps 1e-3 in two layers. The converted network must reproduce `torch7_writer.reference_forward`
(numpy, written from nn's layer definitions) on inpaint.lua's input to 1e-4 on the sigmoid output.
The float32 network differs from the float64 reference by a few 1e-6 here, so 1e-4 has margin on
any CPU while a wrong layout, a missing kernel flip or a dropped eps is off by 1e-2 or more.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch7_writer as tw
from PIL import Image

from glcic_jax import (checkpointing, complete, config_lib, convert, evaluate, inference,
                       input_pipeline, masks, models, torch7, train)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "quickstart.py") + ":tiny"
SIZE = 32


# ----------------------------------------------------------------------------------------------
# The reader


def test_torch7_reader_objects_views_and_shared_references():
    storage = tw.Storage(np.arange(12, dtype=np.float32))
    shared = {"x": 1}
    table = {
        "n": 3, "f": 0.5, "s": "héllo", "t": True, "none": None,
        "a": tw.lua_array(["p", "q"]),
        "view": tw.Tensor(storage, [2, 3], offset=2),
        "transposed": tw.Tensor(storage, [3, 2], stride=[1, 3], offset=0),  # not contiguous
        "double": tw.tensor(np.array([1.5, -2.0]), "torch.DoubleTensor"),
        "same1": shared, "same2": shared,
        "module": tw.Obj("nn.ReLU", {"inplace": False}),
    }
    obj = torch7.loads(tw.dumps(table))
    assert (obj["n"], obj["f"], obj["s"], obj["t"], obj["none"]) == (3, 0.5, "héllo", True, None)
    assert torch7.as_list(obj["a"]) == ["p", "q"]
    np.testing.assert_array_equal(obj["view"], np.arange(2, 8).reshape(2, 3))
    np.testing.assert_array_equal(obj["transposed"], np.arange(6).reshape(2, 3).T)
    assert obj["double"].dtype == np.float64 and obj["double"].tolist() == [1.5, -2.0]
    assert obj["same1"] is obj["same2"]  # one object index, one Python object
    assert obj["module"].typename == "nn.ReLU" and obj["module"].inplace is False


@pytest.mark.parametrize("damage", ["truncated", "trailing", "not_torch", "bad_view"])
def test_torch7_reader_rejects_damaged_bytes(damage):
    good = tw.dumps({"w": tw.tensor(np.ones((4, 4)))})
    data = {
        "truncated": good[:-7],
        "trailing": good + b"\0\0\0\0",
        "not_torch": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "bad_view": tw.dumps(tw.Tensor(tw.Storage(np.ones(4, np.float32)), [3, 3])),
    }[damage]
    with pytest.raises(torch7.Torch7Error):
        torch7.loads(data)


# ----------------------------------------------------------------------------------------------
# Converting a synthetic file of the official structure


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(path of the .t7 file, its bytes, its module Objs, mean pixel)."""
    table, modules = tw.synthetic_model(seed=0, shared_storage=True)
    data = tw.dumps(table)
    path = tmp_path_factory.mktemp("t7") / "completionnet_synthetic.t7"
    path.write_bytes(data)
    mean = np.asarray([0.4560, 0.4472, 0.4155])
    return str(path), data, modules, mean


@pytest.fixture(scope="module")
def converted(synthetic, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("conv") / "official")
    assert convert.run(["convert", f"--source={synthetic[0]}", f"--workdir={workdir}",
                        f"--config={TINY}"]) == 0
    return workdir


def _photo_and_hole(seed=3):
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    hole = np.zeros((SIZE, SIZE), bool)
    hole[6:19, 9:27] = True
    hole[27:, :5] = True  # touches two borders
    return photo, hole


def _torch_reference(modules, mean, photo, hole):
    """inpaint.lua: I = image/255 - mean, 0 in the hole, cat(I, M), forward, composite."""
    img = photo.astype(np.float64) / 255.0
    x = np.where(hole[..., None], 0.0, img - mean)
    x = np.concatenate([x, hole[..., None].astype(np.float64)], axis=-1)
    out = tw.reference_forward(modules, x.transpose(2, 0, 1)).transpose(1, 2, 0)
    return out, np.where(hole[..., None], out, img)


def test_converted_network_matches_torch_reference(synthetic, converted):
    _, _, modules, mean = synthetic
    completer = inference.load(converted)
    assert completer.input_norm == "mean_subtract"
    np.testing.assert_array_equal(completer.mean_pixel, mean.astype(np.float32))
    photo, hole = _photo_and_hole()
    ref_out, ref_done = _torch_reference(modules, mean, photo, hole)

    # The sigmoid output everywhere, from the input the inference module builds.
    x = masks.fill_holes(jnp.asarray(photo[None] / 255.0, jnp.float32),
                         jnp.asarray(hole[None, ..., None], jnp.float32),
                         completer.mean_pixel, completer.input_norm)
    out = np.asarray(completer.generator.apply(completer.variables, x, train=False))[0]
    assert 0.05 < ref_out.min() and ref_out.max() < 0.95  # outputs in sigmoid's sensitive range
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-4)

    # The inference module's composite: the reference inside, the photo exactly outside.
    done = completer(photo[None], hole[None])[0]
    np.testing.assert_allclose(done[hole], ref_done[hole], rtol=0, atol=1e-4)
    np.testing.assert_allclose(done[~hole], photo[~hole] / 255.0, rtol=1e-6)


def test_separate_storages_and_nngraph_chain_convert_alike(synthetic, tmp_path):
    path, _, modules, _ = synthetic
    base, _, _ = convert.read_torch_model(path)
    table, _ = tw.synthetic_model(seed=0, shared_storage=False)
    graph = copy.copy(table)
    graph["model"] = tw.gmodule_of(modules)
    for name, tbl in (("separate", table), ("gmodule", graph)):
        p = tmp_path / f"{name}.t7"
        p.write_bytes(tw.dumps(tbl))
        variables, _, info = convert.read_torch_model(str(p))
        assert info["parameters"] == convert.OFFICIAL_PLACES2_PARAMS
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables, base)


def test_old_batchnorm_running_std_and_small_eps():
    """nn's BatchNormalization before version 2 stored running_std = 1/sqrt(var + eps); an eps
    below ours (1e-5) with a tiny variance is folded into the scale instead of the variance."""
    rng = np.random.default_rng(0)
    var = np.array([1e-7, 0.5, 2.0])
    x = rng.normal(0, 1, (3, 5))

    def bn(fields, version):
        module = torch7.TorchObject("nn.SpatialBatchNormalization", version)
        module.fields = {"weight": np.array([1.0, 2.0, 0.5]), "bias": np.array([0.1, 0, -0.1]),
                         "running_mean": np.array([0.2, -0.3, 0.0]), **fields}
        params, stats, eps = convert._batch_norm(module, 3, "test")
        ours = ((x - stats["mean"][:, None]) / np.sqrt(stats["var"][:, None] + 1e-5)
                * params["scale"][:, None] + params["bias"][:, None])
        return ours, eps

    for eps in (1e-3, 1e-8):
        want = ((x - np.array([0.2, -0.3, 0.0])[:, None]) / np.sqrt(var[:, None] + eps)
                * np.array([1.0, 2.0, 0.5])[:, None] + np.array([0.1, 0, -0.1])[:, None])
        got, _ = bn({"running_var": var, "eps": eps}, 2)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        got, _ = bn({"running_std": 1 / np.sqrt(var + eps), "eps": eps}, 1)
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_complete_cli_on_converted_workdir(synthetic, converted, tmp_path, capsys):
    _, _, modules, mean = synthetic
    photo, hole = _photo_and_hole()
    _, ref_done = _torch_reference(modules, mean, photo, hole)
    Image.fromarray(photo).save(tmp_path / "in.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    for extra in ([], ["--postprocess"]):
        out = tmp_path / f"out{len(extra)}.png"
        assert complete.run(["complete", f"--workdir={converted}", f"--image={tmp_path}/in.png",
                             f"--mask={tmp_path}/mask.png", f"--output={out}", *extra]) == 0
        done = np.asarray(Image.open(out))
        np.testing.assert_array_equal(done[~hole], photo[~hole])
        if not extra:  # rounding to uint8 is the only difference from the reference
            want = inference.quantize_uint8(ref_done)
            assert np.abs(done.astype(int) - want.astype(int)).max() <= 1


def test_mode_eval_on_converted_workdir(synthetic, converted):
    cfg = config_lib.shrink_to_tiny(config_lib.base_config())
    cfg.data.source = "skimage"
    payload = evaluate.evaluate(cfg, converted)
    assert payload["step"] == cfg.num_train_steps  # a finished run
    assert all(np.isfinite(v) for v in payload["results"]["model"].values())
    # The numbers themselves, recomputed here: the held-out crops and holes, the authors'
    # network applied as inpaint.lua does (tests/torch7_writer.py's float64 reference), the
    # results rounded to uint8, and L1 / PSNR written out.
    _, _, modules, mean = synthetic
    n = payload["num_images"]
    images = input_pipeline.eval_images(cfg, n)
    holes = evaluate.eval_masks(cfg, n, *images.shape[1:3])
    model = np.stack([inference.quantize_uint8(_torch_reference(modules, mean, im, h)[1])
                      for im, h in zip(images, holes)])
    fill = np.round(np.asarray(mean, np.float32) * 255).astype(np.uint8)
    mean_fill = np.where(holes[..., None], fill, images)

    def l1_psnr(pred, inside):
        err = pred.astype(np.float64) - images.astype(np.float64)
        rows = []
        for e, h in zip(err, holes):
            sel = e[h] if inside else e.reshape(-1, 3)
            mse = np.mean(sel**2)
            rows.append((np.mean(np.abs(sel)), 10 * np.log10(255.0**2 / mse)))
        return np.mean(rows, axis=0)

    for name, pred, tol in (("model", model, 0.05), ("mean_fill", mean_fill, 1e-9)):
        got = payload["results"][name]
        for suffix, inside in (("", False), ("_hole", True)):
            l1, psnr = l1_psnr(pred, inside)
            # model: float32 against the float64 reference may round a few pixels the other way.
            np.testing.assert_allclose(got["l1" + suffix], l1, rtol=0, atol=tol, err_msg=name)
            np.testing.assert_allclose(got["psnr" + suffix], psnr, rtol=0, atol=tol, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Bad files: one line, exit 1, nothing written


def _bad_table(kind):
    table, modules = tw.synthetic_model(seed=1, shared_storage=False)
    if kind == "wrong_kernel":
        modules[3].fields["kW"] = 5
    elif kind == "missing_layer":
        table["model"].fields["modules"] = tw.lua_array(modules[:-3] + modules[-2:])
    elif kind == "linear":
        table["model"].fields["modules"][7] = tw.Obj("nn.Linear",
                                                     {"weight": tw.tensor(np.ones((2, 2)))})
    elif kind == "no_mean":
        del table["mean"]
    elif kind == "branching_graph":
        table["model"] = tw.gmodule_of(modules, branch=True)
    return table


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("png", "not a readable Torch7 file"),
    ("truncated", "truncated"),
    ("tensor_only", "expected a table with 'model' and 'mean'"),
    ("wrong_kernel", "kW=5 (expected 3)"),
    ("missing_layer", "has 49 modules"),
    ("linear", "found nn.Linear"),
    ("no_mean", "expected a table with 'model' and 'mean'"),
    ("branching_graph", "not a chain"),
    ("workdir_not_empty", "not an empty folder"),
])
def test_bad_files_one_line_exit_1_nothing_written(synthetic, tmp_path, capsys, case, message):
    source = tmp_path / "model.t7"
    workdir = tmp_path / "runs" / "official"
    if case == "png":
        source.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    elif case == "truncated":
        source.write_bytes(synthetic[1][: len(synthetic[1]) // 2])
    elif case == "tensor_only":
        source.write_bytes(tw.dumps(tw.tensor(np.ones(3))))
    elif case == "workdir_not_empty":
        source.write_bytes(synthetic[1])
        workdir.mkdir(parents=True)
        (workdir / "notes.txt").write_text("mine")
    elif case != "missing":
        source.write_bytes(tw.dumps(_bad_table(case)))
    status = convert.run(["convert", f"--source={source}", f"--workdir={workdir}",
                          f"--config={TINY}"])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    if case == "workdir_not_empty":
        assert os.listdir(workdir) == ["notes.txt"]
    else:
        assert not workdir.exists()
    runs = tmp_path / "runs"
    assert not runs.exists() or not [n for n in os.listdir(runs) if n.startswith(".")]


# ----------------------------------------------------------------------------------------------
# Settings and fine-tuning


def test_input_norm_is_checked_on_resume_and_validated():
    cfg = config_lib.shrink_to_tiny(config_lib.base_config())
    old = cfg.to_dict()
    del old["model"]["input_norm"]  # a checkpoint from before the field: 'mean_fill'
    checkpointing.check_compatible(old, cfg)
    cfg.model.input_norm = "mean_subtract"
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="model.input_norm"):
        checkpointing.check_compatible(old, cfg)
    cfg.model.input_norm = "zero"
    with pytest.raises(ValueError, match="input_norm"):
        config_lib.validate(cfg)


def test_training_steps_build_the_configured_input(tiny_state, tiny_images):
    """`model.input_norm` reaches the training steps' input, not only inference."""
    from glcic_jax import steps

    cfg = config_lib.shrink_to_tiny(config_lib.base_config())
    cfg.model.input_norm = "mean_subtract"
    settings = steps.StepSettings.from_config(cfg)
    batch = steps._prepare(settings, tiny_state, tiny_images)
    m = np.asarray(batch.masks.mask)
    want = (np.asarray(tiny_images) - np.asarray(tiny_state.mean_pixel)) * (1 - m)
    np.testing.assert_allclose(np.asarray(batch.x[..., :3]), want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch.x[..., 3:]), m)


@pytest.mark.slow  # an end-to-end training run (train_and_evaluate)
def test_fine_tuning_starts_at_phase_2_from_another_workdir(converted, tmp_path):
    """init_from: C from the source workdir, a fresh D, the source's mean pixel, phase 2 first.

    The source here is a `mean_fill` workdir holding a seeded random network of the `:tiny`
    shapes (so the run compiles the same steps as the other tiny training tests); the converted
    workdir's own setting is checked by the one-line error below.
    """
    cfg = config_lib.shrink_to_tiny(config_lib.base_config())
    cfg.data.source = "skimage"
    cfg.init_from = converted
    with pytest.raises(ValueError, match="--config.model.input_norm=mean_subtract"):
        train.load_init_from(cfg)

    generator = models.make_generator(cfg.model)
    shapes = jax.eval_shape(lambda: generator.init(
        jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 4)), train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (rng.uniform(0.5, 1.5, leaf.shape)  # BatchNorm variances > 0
                            if jax.tree_util.keystr(path).endswith("['var']")
                            else rng.normal(0.0, 0.05, leaf.shape)).astype(np.float32),
        dict(shapes))
    mean = np.asarray([0.3, 0.4, 0.5], np.float32)
    source_dir = str(tmp_path / "source")
    ckpt = checkpointing.Checkpointer(source_dir, cfg)
    ckpt.save(7, convert.build_state(cfg, variables, mean), cfg)
    ckpt.close()
    cfg.init_from = source_dir
    cfg.num_train_steps = cfg.schedule.tc + 1  # one step: the first of phase 2 (D warm-up)
    workdir = str(tmp_path / "finetune")
    final = train.train_and_evaluate(cfg, workdir)
    assert checkpointing.finished_steps(workdir) == [cfg.schedule.tc + 1]
    assert int(final.step) == cfg.schedule.tc + 1
    np.testing.assert_array_equal(np.asarray(final.mean_pixel), mean)
    # Phase 2 trains D only: C is still exactly the source's network.
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           jax.device_get({"params": final.g.params,
                                           "batch_stats": final.g.batch_stats}),
                           variables)
    assert not os.path.exists(os.path.join(workdir, "mean_pixel.json"))  # none computed


# ----------------------------------------------------------------------------------------------
# A killed conversion


SIGKILL_HELPER = os.path.join(ROOT, "tests", "sigkill_main.py")


def test_a_conversion_killed_mid_write_leaves_a_folder_that_the_next_one_removes(
        synthetic, tmp_path, capsys):
    from glcic_jax import leftovers

    workdir = tmp_path / "official"
    args = [f"--source={synthetic[0]}", f"--workdir={workdir}", f"--config={TINY}"]
    # SIGKILL once the converted checkpoint is written into the temporary folder, before the
    # rename: what a kill during the (for the real model, 125 MB) write leaves.
    proc = subprocess.run(
        [sys.executable, SIGKILL_HELPER, "glcic_jax.convert", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu",
             "GLCIC_SIGKILL_IN": "glcic_jax.convert:_verify"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = [n for n in os.listdir(tmp_path) if n.startswith(".converting-")]
    assert len(left) == 1 and not workdir.exists(), os.listdir(tmp_path)
    assert os.listdir(tmp_path / left[0])  # the checkpoint was being written there

    busy, fd = leftovers.temp_folder(str(tmp_path), leftovers.CONVERTING)  # a running conversion
    try:
        assert convert.run(["convert", *args]) == 0
        assert os.path.isdir(busy)  # another conversion's folder is not touched
    finally:
        os.close(fd)
        os.rmdir(busy)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"note: Removed 1 unfinished conversion left by an interrupted run: "
                      f"{tmp_path / left[0]}."), out
    assert sorted(os.listdir(tmp_path)) == ["official"]
    assert len(checkpointing.finished_steps(str(workdir))) == 1  # converted as usual
