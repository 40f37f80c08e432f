"""Tests of the completion CLI (`complete.py`) and GLCIC's post-processing (`postprocess.py`).

One untrained `:tiny` checkpoint is written per module (state creation + Orbax save; training is
not needed to test the plumbing), and one `Completer` restored from it is shared, so the network
is compiled once per image shape. Errors are checked in-process through `complete.run(argv)`, and
once through a subprocess for the exit status and the one-line message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from glcic_jax import checkpointing, complete, config_lib, errors, inference, postprocess, state

H, W = 257, 301  # odd, not a multiple of 4, not square


def _tiny_config():
    cfg = config_lib.shrink_to_tiny(config_lib.base_config())
    cfg.data.source = "skimage"
    return cfg


def make_workdir(path: str, **mask) -> str:
    """A workdir holding one untrained `:tiny` checkpoint at step 0 (`mask`: mask.* settings of
    its config).

    The state is filled on the host (He-scaled random kernels, unit BatchNorm variances, zero
    optimizer state) from `jax.eval_shape(state_initializer(...))`: the same pytree as training
    saves, without compiling the networks' initialisation.
    """
    cfg = _tiny_config()
    for key, value in mask.items():
        cfg.mask[key] = value
    nets = state.create_networks(cfg)
    abstract = jax.eval_shape(
        state.state_initializer(cfg, nets, jax.random.PRNGKey(0), [0.5, 0.4, 0.3]))
    rng = np.random.default_rng(0)

    def fill(key_path, leaf):
        name = jax.tree_util.keystr(key_path)
        if "mean_pixel" in name:
            return np.asarray([0.5, 0.4, 0.3], leaf.dtype)
        if "opt_state" not in name and name.endswith("['kernel']"):
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
        if "opt_state" not in name and name.endswith(("['var']", "['scale']")):
            return np.ones(leaf.shape, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    st = jax.tree_util.tree_map_with_path(fill, abstract)
    ckpt = checkpointing.Checkpointer(path, cfg)
    ckpt.save(0, jax.tree_util.tree_map(jax.numpy.asarray, st), cfg)
    ckpt.close()
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return make_workdir(str(tmp_path_factory.mktemp("tiny_run")))


@pytest.fixture(scope="module")
def completer(workdir) -> complete.Completer:
    return complete.Completer(workdir)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 301x257 photo in RGB, L and RGBA, and a mask with two holes (one on the border)."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    hole = np.zeros((H, W), bool)
    hole[100:150, 40:91] = True
    hole[0:20, 280:] = True  # touches the top and right borders
    paths = {
        "rgb": d / "photo.png",
        "gray": d / "gray.png",
        "rgba": d / "rgba.png",
        "mask": d / "mask.png",
        "mask_rgba": d / "mask_rgba.png",
        "small_mask": d / "small_mask.png",
        "empty_mask": d / "empty_mask.png",
        "broken": d / "broken.png",
    }
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb).convert("L").save(paths["gray"])
    Image.fromarray(np.dstack([rgb, alpha])).save(paths["rgba"])
    grey = np.where(hole, 200, 60).astype(np.uint8)  # grey values either side of 128
    Image.fromarray(grey).save(paths["mask"])
    rgba_mask = np.zeros((H, W, 4), np.uint8)
    rgba_mask[..., :3] = 255  # white everywhere, but only opaque in the hole
    rgba_mask[..., 3] = np.where(hole, 255, 0)
    Image.fromarray(rgba_mask).save(paths["mask_rgba"])
    Image.fromarray(np.where(hole[:-1, :-1], 255, 0).astype(np.uint8)).save(paths["small_mask"])
    Image.fromarray(np.zeros((H, W), np.uint8)).save(paths["empty_mask"])
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return {k: str(v) for k, v in paths.items()}, rgb, alpha, hole


def _run(*args) -> int:
    return complete.run(["complete", *args])


# ----------------------------------------------------------------------------------------------
# Reading


def test_read_mask_thresholds_grey_and_alpha(files):
    paths, _, _, hole = files
    np.testing.assert_array_equal(complete.read_mask(paths["mask"], (H, W)), hole)
    np.testing.assert_array_equal(complete.read_mask(paths["mask_rgba"], (H, W)), hole)


def test_read_photo_keeps_modes(files):
    paths, rgb, alpha, _ = files
    assert complete.read_photo(paths["rgb"]).mode == "RGB"
    gray = complete.read_photo(paths["gray"])
    assert gray.mode == "L" and gray.rgb().shape == (H, W, 3)
    rgba = complete.read_photo(paths["rgba"])
    assert rgba.mode == "RGBA"
    np.testing.assert_array_equal(rgba.rgb(), rgb)


# ----------------------------------------------------------------------------------------------
# Completing: same size, exact outside the hole


@pytest.fixture(scope="module")
def folder_run(files, workdir, tmp_path_factory):
    """One CLI call on a folder: the RGB, grayscale and RGBA photos and their masks by stem."""
    paths = files[0]
    d = tmp_path_factory.mktemp("folder")
    images, masks_dir, out = d / "images", d / "masks", d / "out"
    images.mkdir(), masks_dir.mkdir()
    for kind in ("rgb", "gray", "rgba"):
        Image.open(paths[kind]).save(images / f"{kind}.png")
    for kind, mask in (("rgb", "mask"), ("gray", "mask_rgba"), ("rgba", "mask")):
        Image.open(paths[mask]).save(masks_dir / f"{kind}.png")
    Image.open(paths["mask"]).save(masks_dir / "unrelated.png")  # a mask without a photo
    status = _run(f"--checkpoint={workdir}/checkpoints/0", f"--image={images}",
                  f"--mask={masks_dir}", f"--output={out}", "--batch_size=2")
    return status, images, out


def test_folder_outputs_one_png_per_photo(folder_run):
    status, _, out = folder_run
    assert status == 0
    assert sorted(os.listdir(out)) == ["gray.png", "rgb.png", "rgba.png"]  # and no masks


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba"])
def test_complete_keeps_size_mode_and_pixels_outside_hole(files, folder_run, kind):
    _, _, alpha, hole = files
    _, images, out = folder_run
    original = Image.open(images / f"{kind}.png")
    result = Image.open(out / f"{kind}.png")
    assert result.size == (W, H) and result.mode == original.mode
    a, b = np.asarray(original), np.asarray(result)
    np.testing.assert_array_equal(b[~hole], a[~hole])
    assert (b[hole] != a[hole]).any()  # the hole was actually filled
    if kind == "rgba":
        np.testing.assert_array_equal(b[..., 3], alpha)  # alpha untouched, hole included


def test_complete_with_postprocess_and_max_size(files, completer):
    _, rgb, _, hole = files
    for kwargs in ({"postprocess": True}, {"max_size": 120},
                   {"max_size": 120, "postprocess": True}):
        (out,) = completer.complete([rgb], [hole], **kwargs)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[~hole], rgb[~hole])


def test_train_scale_works_at_the_checkpoints_training_scale(files, completer):
    """A photo larger than training's resize range is completed scaled down
    so that its shortest side is data.resize_max (40 for :tiny), only if asked (the CLI default)."""
    cfg = completer.config
    assert cfg.data.resize_max == 40
    assert complete.training_scale_limit(cfg, H, W) == int(W * 40 / H)  # 46
    assert complete.training_scale_limit(cfg, 40, 300) == 0  # already at the training scale
    assert complete.training_scale_limit(cfg, 300, 452) == int(452 * 40 / 300)
    _, rgb, _, hole = files
    _, _, size = completer._network_input(rgb, hole, 1024, train_scale=True)
    assert min(size) <= 40 and min(size) >= 38 and size[1] == 46
    assert completer._network_input(rgb, hole, 1024)[2] == (H, W)  # off: full resolution
    assert completer._network_input(rgb, hole, 30, train_scale=True)[2][1] == 30  # smaller wins
    assert complete._parse(["complete", "--workdir=w", "--image=i", "--output=o"]).train_scale


def test_hole_content_is_never_read(files, completer):
    """Whatever the photo holds inside the hole, the completion is the same."""
    _, rgb, _, hole = files
    other = rgb.copy()
    other[hole] = 255 - other[hole]
    for kwargs in ({}, {"max_size": 120, "postprocess": True}):
        a = completer.complete([rgb], [hole], **kwargs)[0]
        b = completer.complete([other], [hole], **kwargs)[0]
        np.testing.assert_array_equal(a[hole], b[hole])


def test_random_mask_is_saved_beside_output(files, workdir, tmp_path):
    paths, rgb, _, _ = files
    out = tmp_path / "random.png"
    assert _run(f"--workdir={workdir}", f"--image={paths['rgb']}", f"--output={out}",
                "--seed=3", "--postprocess") == 0
    hole = np.asarray(Image.open(complete.mask_path_for(str(out)))) >= 128
    assert hole.shape == (H, W) and 0 < hole.mean() < 0.5
    np.testing.assert_array_equal(np.asarray(Image.open(out))[~hole], rgb[~hole])


def test_the_command_sets_the_inference_xla_flags_before_it_runs(monkeypatch):
    """`python -m glcic_jax.complete` (`main`) adds XLA's inference flags to the user's own
    before anything starts JAX; `run`, the in-process entry, leaves the environment alone."""
    import importlib.metadata

    from glcic_jax import cli, conv_forms

    user = "--xla_cpu_multi_thread_eigen=false"
    monkeypatch.setenv("XLA_FLAGS", user)
    seen = {}
    monkeypatch.setattr(complete, "run", lambda argv: seen.setdefault("flags",
                                                                     os.environ["XLA_FLAGS"]))
    monkeypatch.setattr(cli, "exit_now", lambda status: seen.setdefault("status", status))
    complete.main()
    assert seen["flags"] == conv_forms.inference_xla_flags(
        user, importlib.metadata.version("jaxlib"))
    if seen["flags"] != user:  # a jaxlib checked to know them
        assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in seen["flags"]


def test_given_masks_draw_no_random_key(files, workdir, tmp_path, monkeypatch):
    """With every mask given, `complete` makes no random key: a key costs a cold run two small
    compilations after the network's, for holes it does not draw."""
    paths, rgb, _, hole = files

    def no_key(*args, **kwargs):
        raise AssertionError("a random key was made although every mask was given")

    monkeypatch.setattr(jax.random, "PRNGKey", no_key)
    out = tmp_path / "given.png"
    assert _run(f"--workdir={workdir}", f"--image={paths['rgb']}", f"--mask={paths['mask']}",
                f"--output={out}") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out))[~hole], rgb[~hole])


def test_random_holes_follow_the_checkpoint_mask_settings():
    # A landscape-style checkpoint: one square hole in the centre (mask.square, mask.position).
    cfg = _tiny_config()
    cfg.mask.square, cfg.mask.position = True, "center"
    h, w = 64, 96  # twice the :tiny image size: hole sides 12..24, a local window of 32
    for seed in range(4):
        hole = complete.random_hole(cfg, (h, w), jax.random.PRNGKey(seed))
        rows, cols = np.nonzero(hole)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        side = bottom - top + 1
        assert side == right - left + 1, "not a square"
        assert hole.sum() == side * side, "not one filled square"
        assert 12 <= side <= 24
        # Centred: the same margin (to one pixel) on both sides.
        assert abs(top - (h - 1 - bottom)) <= 1 and abs(left - (w - 1 - right)) <= 1
    # The default settings still draw rectangles anywhere in the photo.
    cfg = _tiny_config()
    holes = [complete.random_hole(cfg, (h, w), jax.random.PRNGKey(s)) for s in range(8)]
    centres = {(int(np.nonzero(m)[0].mean()), int(np.nonzero(m)[1].mean())) for m in holes}
    assert len(centres) > 4


# ----------------------------------------------------------------------------------------------
# Errors: one line, exit status 1, nothing written


@pytest.mark.parametrize("mask_key, message", [
    ("small_mask", "must have the image's size"),
    ("empty_mask", "no hole pixels"),
    ("broken", "cannot read mask"),
])
def test_bad_masks_write_nothing(files, workdir, tmp_path, capsys, mask_key, message):
    paths = files[0]
    out = tmp_path / "out.png"
    assert _run(f"--workdir={workdir}", f"--image={paths['rgb']}", f"--mask={paths[mask_key]}",
                f"--output={out}") == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("case, message", [
    ("missing_image", "does not exist"),
    ("broken_image", "cannot read image"),
    ("missing_checkpoint", "No GLCIC checkpoint"),
    ("bad_extension", "unknown image extension"),
    ("folder_without_mask", "no mask with the same file stem"),
])
def test_user_errors_write_nothing(files, workdir, tmp_path, capsys, case, message):
    paths = files[0]
    out = tmp_path / "out" / "result.png"
    args = {"workdir": workdir, "image": paths["rgb"], "mask": paths["mask"], "output": str(out)}
    if case == "missing_image":
        args["image"] = str(tmp_path / "nope.jpg")
    elif case == "broken_image":
        args["image"] = paths["broken"]
    elif case == "missing_checkpoint":
        args["workdir"] = str(tmp_path / "no_run")
    elif case == "bad_extension":
        args["output"] = str(tmp_path / "out" / "result.xyz")
    elif case == "folder_without_mask":
        (tmp_path / "imgs").mkdir(), (tmp_path / "masks").mkdir()
        Image.open(paths["rgb"]).save(tmp_path / "imgs" / "a.png")
        args.update(image=str(tmp_path / "imgs"), mask=str(tmp_path / "masks"),
                    output=str(tmp_path / "out"))
    assert _run(*(f"--{k}={v}" for k, v in args.items())) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_subprocess_exit_status_and_message(files, workdir, tmp_path):
    paths = files[0]
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, "-m", "glcic_jax.complete", f"--workdir={workdir}",
         f"--image={paths['rgb']}", f"--mask={paths['small_mask']}", f"--output={out}"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: mask ")
    assert "must have the image's size" in proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Post-processing


def _smooth(h: int = 60, w: int = 70) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([100 + 60 * np.sin(x / 7.0) + 30 * np.cos(y / 5.0),
                    120 + 0.02 * (x - 30.0) ** 2, 50 + 2.0 * y], axis=-1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box", [(20, 20, 15, 16), (0, 0, 10, 10), (50, 60, 10, 10),
                                 (0, 30, 60, 8), (10, 10, 2, 30), (5, 5, 1, 1)])
def test_postprocess_exact_outside_and_smooth_inside(box):
    """Any hole (inside, on corners, spanning the image, thinner than 3 px) is blended."""
    img = _smooth()
    t, l, h, w = box
    hole = np.zeros(img.shape[:2], bool)
    hole[t : t + h, l : l + w] = True
    damaged = img.copy()
    damaged[hole] = 0  # a completion that got the hole entirely wrong
    out = postprocess.postprocess(damaged, hole)
    np.testing.assert_array_equal(out[~hole], img[~hole])
    # Fast marching + blending recover a smooth image from its surroundings.
    assert np.abs(out.astype(int) - img)[hole].mean() < 8


def test_postprocess_places_the_clone_where_it_was_taken():
    """Texture inside a hole in flat surroundings is blended back unchanged, unshifted.

    Fast marching fills the hole with the flat colour, so the ring's gradients are the true
    ones and the Poisson solution is the completed image itself; a region placed one pixel off
    (the usual `(min + max) // 2` centre, with these even sizes) would move the texture.
    """
    img = np.full((40, 50, 3), 128, np.uint8)
    img[14:22, 16:24] = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    hole = np.zeros((40, 50), bool)
    hole[10:26, 12:28] = True
    out = postprocess.postprocess(img, hole)
    assert np.abs(out.astype(int) - img).max() <= 1


def test_ctrl_c_is_a_one_line_message_and_exit_130(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(complete, "_run", interrupted)
    assert complete.run(["glcic_jax.complete", "--workdir=x", "--image=a.png"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: Interrupted (Ctrl-C)") and "Traceback" not in err


def test_any_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    # CompletionError is one kind of errors.UserError; complete prints every UserError (e.g. a
    # config error raised deep in the network's input code) as one line, and nothing else.
    assert issubclass(complete.CompletionError, errors.UserError)

    def bad_config(argv):
        raise errors.ConfigError("model.input_norm='x' is not supported")

    monkeypatch.setattr(complete, "_run", bad_config)
    assert complete.run(["glcic_jax.complete", "--workdir=x", "--image=a.png"]) == 1
    assert capsys.readouterr().err == "error: model.input_norm='x' is not supported\n"

    def bug(argv):
        raise ValueError("a bug")

    monkeypatch.setattr(complete, "_run", bug)
    with pytest.raises(ValueError, match="a bug"):
        complete.run(["glcic_jax.complete", "--workdir=x", "--image=a.png"])


# ----------------------------------------------------------------------------------------------
# What the console shows


def test_each_image_line_says_how_long_it_took(files, workdir, tmp_path, capsys):
    paths = files[0]
    (tmp_path / "imgs").mkdir(), (tmp_path / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.open(paths["rgb"]).save(tmp_path / "imgs" / f"{name}.png")
        Image.open(paths["mask"]).save(tmp_path / "masks" / f"{name}.png")
    assert _run(f"--workdir={workdir}", f"--image={tmp_path / 'imgs'}",
                f"--mask={tmp_path / 'masks'}", f"--output={tmp_path / 'out'}",
                "--batch_size=2") == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " -> " in line]
    assert len(lines) == 3
    # a and b share the first batch, compiled while the checkpoint was read; c is a batch of
    # one, a new shape compiled when it comes.
    assert re.search(r"hole, \d+\.\d\d s \(a batch of 2\)$", lines[0])
    assert re.search(r"hole, \d+\.\d\d s \(a batch of 2\)$", lines[1])
    assert re.search(r"hole, \d+\.\d\d s including compilation$", lines[2])
    summary = [line for line in out.splitlines() if line.startswith("Completed 3 image(s)")]
    assert len(summary) == 1 and "(compiling the first batch meanwhile)" in summary[0]
    assert "completing (with compilation)" in summary[0]  # c's shape


def test_each_image_line_says_at_which_size_the_network_worked(files, workdir, completer,
                                                               tmp_path, capsys):
    # The :tiny checkpoint trained at a shortest side of 40 px: a 301x257 photo is completed at
    # that scale (or smaller with --max_size) and only the hole is scaled back up.
    paths = files[0]
    given = (f"--workdir={workdir}", f"--image={paths['rgb']}", f"--mask={paths['mask']}")
    assert _run(*given, f"--output={tmp_path / 'a.png'}") == 0
    assert _run(*given, f"--output={tmp_path / 'b.png'}", "--max_size=30") == 0
    assert _run(*given, f"--output={tmp_path / 'c.png'}", "--notrain_scale") == 0
    a, b, c = [line for line in capsys.readouterr().out.splitlines() if " -> " in line]
    h, w = inference.network_size(H, W, complete.training_scale_limit(completer.config, H, W))
    assert (h, w) < (H, W) and w == 46
    assert (f": {W}x{H} RGB (completed at {w}x{h}, the checkpoint's training scale; the hole "
            f"scaled back up), ") in a, a
    h, w = inference.network_size(H, W, 30)
    assert f": {W}x{H} RGB (completed at {w}x{h}, --max_size=30; the hole scaled back" in b, b
    assert f": {W}x{H} RGB, " in c and "completed at" not in c, c


@pytest.mark.slow
def test_console_shows_our_lines_only_unless_verbosity_is_given(files, workdir, tmp_path):
    paths = files[0]
    small = tmp_path / "small.png"
    Image.open(paths["rgb"]).crop((0, 0, 40, 36)).save(small)
    mask = np.zeros((36, 40), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "small_mask.png")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS",
                                                              "TF_CPP_MIN_LOG_LEVEL")}

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "glcic_jax.complete", f"--workdir={workdir}",
             f"--image={small}", f"--mask={tmp_path / 'small_mask.png'}",
             f"--output={tmp_path / 'out.png'}", *extra],
            capture_output=True, text=True, timeout=300, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr  # no Orbax read-only warnings, no jax backend notes
    assert len(quiet.stdout.strip().splitlines()) == 2, quiet.stdout
    # --verbosity is accepted and changes nothing else. (Restoring for inference no longer makes
    # Orbax warn at all; that the filter lets the libraries' records through when asked
    # is tested in test_console.py::test_console_shows_our_records_only_unless_verbose.)
    loud = run("--verbosity=0")
    assert loud.returncode == 0, loud.stderr
    assert (loud.stdout.split("% hole")[0] == quiet.stdout.split("% hole")[0]), loud.stdout


# ----------------------------------------------------------------------------------------------
# Nothing lost: outputs never replace inputs or each other; paths checked before the network


def _copy_inputs(files, folder, names=("a.png", "b.png")):
    folder.mkdir(exist_ok=True)
    for name in names:
        Image.open(files[0]["rgb"]).save(folder / name)
    return {name: (folder / name).read_bytes() for name in names}


@pytest.mark.parametrize("case", ["output-is-image", "output-folder-is-input-folder",
                                  "output-is-mask", "random-mask-over-another-output",
                                  "hard-link-to-input"])
def test_outputs_never_overwrite_inputs_or_each_other(files, workdir, tmp_path, capsys, case):
    paths = files[0]
    inputs = tmp_path / "in"
    before = _copy_inputs(files, inputs)
    os.chmod(inputs / "a.png", 0o644)
    args = [f"--workdir={workdir}"]
    if case == "output-is-image":
        args += [f"--image={inputs / 'a.png'}", f"--mask={paths['mask']}",
                 f"--output={inputs / 'a.png'}"]
    elif case == "output-folder-is-input-folder":
        args += [f"--image={inputs}", f"--output={inputs}"]
    elif case == "output-is-mask":
        Image.open(paths["mask"]).save(tmp_path / "m.png")
        before["m"] = (tmp_path / "m.png").read_bytes()
        args += [f"--image={inputs / 'a.png'}", f"--mask={tmp_path / 'm.png'}",
                 f"--output={tmp_path / 'm.png'}"]
    elif case == "random-mask-over-another-output":
        # a's random mask is out/a_mask.png, which is also the completion of a_mask.png.
        before.update(_copy_inputs(files, inputs, ["a_mask.png"]))
        args += [f"--image={inputs}", f"--output={tmp_path / 'out'}"]
    else:
        os.link(inputs / "a.png", tmp_path / "link.png")
        args += [f"--image={tmp_path / 'link.png'}", f"--mask={paths['mask']}",
                 f"--output={inputs / 'a.png'}"]
    assert _run(*args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would" in err, err
    assert {n: (inputs / n).read_bytes() for n in before if n != "m"} == {
        n: v for n, v in before.items() if n != "m"}
    if "m" in before:
        assert (tmp_path / "m.png").read_bytes() == before["m"]
    assert (os.stat(inputs / "a.png").st_mode & 0o777) == 0o644
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(inputs)) == sorted(n for n in before if n != "m")


def test_outputs_get_the_users_umask(files, workdir, tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "out.png"
        assert _run(f"--workdir={workdir}", f"--image={files[0]['rgb']}",
                    f"--mask={files[0]['mask']}", f"--output={out}") == 0
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("output, message", [
    ("{photo}/x.png", "is a file, not a folder"),
    ("/proc/glcic_out.png", "cannot create files in '/proc'"),
    ("{tmp}/out.xbm", "XBM cannot hold the photo's pixels exactly"),
    ("{tmp}/out.gif", "GIF cannot hold the photo's pixels exactly (a 256-colour palette"),
    ("{tmp}/out.pdf", "PDF cannot hold the photo's pixels exactly"),
    ("{tmp}/out.ppm", "PPM does not store a RGBA photo exactly"),
])
def test_unwritable_or_inexact_outputs_are_refused_before_the_network(
        files, workdir, tmp_path, capsys, monkeypatch, output, message):
    paths = files[0]
    # An RGBA photo cannot go to PPM (PIL would drop the alpha): refused, not lost.
    image = paths["rgba"] if output.endswith(".ppm") else paths["rgb"]
    monkeypatch.setattr(complete, "Completer", lambda *a: pytest.fail("the network ran"))
    out = output.format(photo=paths["rgb"], tmp=tmp_path)
    assert _run(f"--workdir={workdir}", f"--image={image}", f"--mask={paths['mask']}",
                f"--output={out}") == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_common_output_formats_are_known_without_importing_every_pil_plugin():
    """A cold `complete` writing .png or .jpg must not import all of PIL's plugins (0.1 s of
    its start): those formats are found among PIL's preloaded ones, any other extension is
    still looked up among all of them."""
    code = ("import sys; from glcic_jax import image_io as io; "
            "print(io.output_format('a.png'), io.output_format('b.JPG'), "
            "'PIL.PdfImagePlugin' in sys.modules, io.output_format('c.tif'), "
            "io.output_format('d.webp'), 'PIL.PdfImagePlugin' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["PNG", "JPEG", "False", "TIFF", "WEBP", "True"], out


def test_folder_mode_refuses_a_folder_named_like_an_output_before_writing(files, workdir,
                                                                          tmp_path, capsys):
    _copy_inputs(files, tmp_path / "in")
    (tmp_path / "out" / "b.png").mkdir(parents=True)
    assert _run(f"--workdir={workdir}", f"--image={tmp_path / 'in'}",
                f"--output={tmp_path / 'out'}") == 1
    assert "a folder has that name" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["b.png"]  # a.png's output was not written first


def test_folder_input_with_an_image_file_output_is_refused(files, workdir, tmp_path, capsys):
    _copy_inputs(files, tmp_path / "in")
    assert _run(f"--workdir={workdir}", f"--image={tmp_path / 'in'}",
                f"--output={tmp_path / 'result.png'}") == 1
    assert "must be a folder" in capsys.readouterr().err
    assert not (tmp_path / "result.png").exists()


def test_a_failed_write_after_the_network_is_one_line(files, workdir, tmp_path, capsys,
                                                      monkeypatch):
    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(complete, "write_image", disk_full)
    assert _run(f"--workdir={workdir}", f"--image={files[0]['rgb']}",
                f"--mask={files[0]['mask']}", f"--output={tmp_path / 'out.png'}") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert os.listdir(tmp_path) == []


def test_sixteen_bit_and_float_photos_scale_by_their_mode_not_their_content(tmp_path):
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    for name, top in (("dark", 0.05), ("bright", 1.0)):
        Image.fromarray((ramp * top * 65535).astype(np.uint16)).save(tmp_path / f"{name}.png")
    dark = complete.read_photo(str(tmp_path / "dark.png")).pixels[..., 0].astype(float)
    bright = complete.read_photo(str(tmp_path / "bright.png")).pixels[..., 0].astype(float)
    # The same scale for both: dark = 0.05 x bright, to the rounding of 8 bits (+-1 level).
    np.testing.assert_allclose(dark, np.round(ramp * 0.05 * 255), atol=1)
    np.testing.assert_allclose(bright, np.round(ramp * 255), atol=1)
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tif")
    photo = complete.read_photo(str(tmp_path / "float.tif"))
    np.testing.assert_allclose(photo.pixels[..., 0], np.round(ramp * 255), atol=1)


def test_photos_above_pils_bomb_limit_are_read(files, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 301x257 is far above 2x this
    photo = complete.read_photo(files[0]["rgb"])
    assert photo.size == (H, W)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is restored for other code


# ----------------------------------------------------------------------------------------------
# A damaged newest checkpoint: complete and eval use the newest intact one


def _damage(step_dir, kind: str) -> None:
    import glob
    import shutil

    if kind == "truncated-data-file":
        for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
    elif kind == "empty-meta":
        open(f"{step_dir}/meta/metadata", "w").close()
    elif kind == "missing-_METADATA":
        os.remove(f"{step_dir}/state/_METADATA")
    elif kind == "empty-step-folder":
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, workdir):
    """A workdir with intact checkpoints of steps 0 and 5 (the same weights, step leaf 5)."""
    import shutil

    path = tmp_path_factory.mktemp("two") / "run"
    shutil.copytree(workdir, path)
    _, nets, st = checkpointing.restore_for_inference(str(path))
    ckpt = checkpointing.Checkpointer(str(path), _tiny_config())
    ckpt.save(5, st.replace(step=jax.numpy.asarray(5, st.step.dtype)), _tiny_config())
    ckpt.close()
    assert checkpointing.finished_steps(str(path)) == [0, 5]
    return path


def test_the_newest_of_two_intact_checkpoints_is_restored(two_checkpoints):
    _, _, st = checkpointing.restore_for_inference(str(two_checkpoints))
    assert int(st.step) == 5
    _, _, st = checkpointing.restore_for_inference(str(two_checkpoints), step=0)
    assert int(st.step) == 0


@pytest.mark.parametrize("kind", ["truncated-data-file", "empty-meta", "missing-_METADATA",
                                  "empty-step-folder"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(
        two_checkpoints, tmp_path, caplog, kind):
    import shutil

    path = tmp_path / "run"
    shutil.copytree(two_checkpoints, path)
    _damage(path / "checkpoints" / "5", kind)
    before = sorted(os.listdir(path / "checkpoints" / "5"))
    with caplog.at_level("WARNING"):
        _, _, st = checkpointing.restore_for_inference(str(path))
    assert int(st.step) == 0
    skipped = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
    assert len(skipped) == 1 and "/5 (" in skipped[0], caplog.text
    assert sorted(os.listdir(path / "checkpoints" / "5")) == before  # never deleted
    # Asked for by path, the damaged step itself is one clear error.
    with pytest.raises(FileNotFoundError, match="No checkpoint in .* can be read: step 5"):
        checkpointing.restore_for_inference(str(path / "checkpoints" / "5"))


def test_complete_uses_the_newest_intact_checkpoint_and_says_so(two_checkpoints, files,
                                                                tmp_path, capsys):
    import shutil

    path = tmp_path / "run"
    shutil.copytree(two_checkpoints, path)
    _damage(path / "checkpoints" / "5", "missing-_METADATA")
    out = tmp_path / "out.png"
    assert _run(f"--workdir={path}", f"--image={files[0]['rgb']}", f"--mask={files[0]['mask']}",
                f"--output={out}") == 0
    assert "restoring step 0" in capsys.readouterr().out
    assert out.exists()


def test_no_intact_checkpoint_is_one_line(two_checkpoints, files, tmp_path, capsys):
    import shutil

    path = tmp_path / "run"
    shutil.copytree(two_checkpoints, path)
    for step in ("0", "5"):
        _damage(path / "checkpoints" / step, "empty-meta")
    assert _run(f"--workdir={path}", f"--image={files[0]['rgb']}", f"--mask={files[0]['mask']}",
                f"--output={tmp_path / 'out.png'}") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No checkpoint in" in err and "step 0" in err, err


def test_restoring_for_inference_prints_no_orbax_read_only_warnings(workdir, caplog):
    with caplog.at_level("INFO"):
        checkpointing.restore_for_inference(workdir)
    assert "read only" not in caplog.text.lower(), caplog.text


# ----------------------------------------------------------------------------------------------
# Killed runs


SIGKILL_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sigkill_main.py")


def test_a_run_killed_mid_write_leaves_a_temporary_file_that_the_next_run_removes(
        files, workdir, tmp_path, capsys):
    folder, masks_dir, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    _copy_inputs(files, folder)
    masks_dir.mkdir()
    for name in ("a.png", "b.png"):
        Image.open(files[0]["mask"]).save(masks_dir / name)
    # SIGKILL as the second output is being written (the first one is complete by then): the
    # 4th Image.save, after the two in-memory encodings of the format check and the first output.
    proc = subprocess.run(
        [sys.executable, SIGKILL_HELPER, "glcic_jax.complete", f"--workdir={workdir}",
         f"--image={folder}", f"--mask={masks_dir}", f"--output={out}", "--batch_size=1"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "GLCIC_SIGKILL_IN": "PIL.Image:Image.save",
             "GLCIC_SIGKILL_CALL": "4"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == -9, proc.stderr[-3000:]
    left = [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert len(left) == 1 and os.listdir(out) != left, os.listdir(out)

    # A temporary file that a running `complete` holds (another command writing into the same
    # folder) is not touched.
    from glcic_jax import leftovers

    fd, busy = leftovers.temp_file(str(out), suffix=".png")
    try:
        assert _run(f"--workdir={workdir}", f"--image={folder}", f"--mask={masks_dir}",
                    f"--output={out}", "--batch_size=1") == 0
        assert os.path.exists(busy)
    finally:
        os.close(fd)
        os.remove(busy)
    notes = [line for line in capsys.readouterr().out.splitlines() if "interrupted run" in line]
    assert notes == [f"note: Removed 1 unfinished output file left by an interrupted run: "
                     f"{out / left[0]}."], notes
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]
