"""Tests of `glcic_jax.export`: the SavedModel (jax2tf) and the StableHLO file (jax.export),
each reloaded and compared with the JAX completion at two image sizes.

The checkpoint is `test_complete.make_workdir`'s untrained `:tiny` one (random He-scaled
weights: the comparison needs outputs that vary, not a trained model). The StableHLO file is run
in a subprocess that cannot import glcic_jax, as a serving machine without this package would.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import smooth_images
from test_complete import make_workdir

from glcic_jax import export, inference

SIZES = [(32, 32), (40, 56)]  # two sizes (multiples of 4) through one exported function


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return make_workdir(str(tmp_path_factory.mktemp("export_run")))


@pytest.fixture(scope="module")
def expected(workdir):
    """(image, mask, the JAX completion) per size: the loaded Completer's own answer."""
    completer = inference.load(workdir)
    cases = []
    for i, (h, w) in enumerate(SIZES):
        image = smooth_images(2, h, w, seed=i)
        mask = np.zeros((2, h, w, 1), np.float32)
        mask[0, h // 4 : h // 2, w // 4 : w // 2 + 4] = 1
        mask[1, h // 2 : h - 4, 4 : w // 2] = 1
        cases.append((image, mask, completer(image, mask)))
    return cases


# Float tolerance: the same float32 network through another runtime (TF's XlaCallModule, a
# fresh JAX compilation) may order the convolutions' sums differently; over ~17 layers of
# float32 sums that stays orders of magnitude below one uint8 level (1/255 = 4e-3).
ATOL = 1e-4


def _check(outputs, expected):
    for (image, mask, want), got in zip(expected, outputs):
        got = np.asarray(got)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        hole = mask[..., 0] > 0.5
        np.testing.assert_array_equal(got[~hole], image[~hole])  # outside the hole: the input
        assert np.abs(got[hole] - image[hole]).mean() > 1e-3  # inside: the network's output


def test_stablehlo_runs_without_this_package(workdir, expected, tmp_path):
    out = tmp_path / "glcic.jax"
    assert export.run(["export", f"--workdir={workdir}", "--format=stablehlo",
                       f"--output={out}"]) == 0
    for i, (image, mask, _) in enumerate(expected):
        np.save(tmp_path / f"image{i}.npy", image)
        np.save(tmp_path / f"mask{i}.npy", mask)
    script = (
        "import sys; sys.modules['glcic_jax'] = None  # importing it would fail\n"
        "import numpy as np, jax\n"
        f"exp = jax.export.deserialize(bytearray(open({str(out)!r}, 'rb').read()))\n"
        f"for i in range({len(expected)}):\n"
        f"    image = np.load(f'{tmp_path}/image{{i}}.npy')\n"
        f"    mask = np.load(f'{tmp_path}/mask{{i}}.npy')\n"
        f"    np.save(f'{tmp_path}/out{{i}}.npy', np.asarray(exp.call(image, mask)))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _check([np.load(tmp_path / f"out{i}.npy") for i in range(len(expected))], expected)


def test_saved_model_loads_in_tensorflow_and_matches(workdir, expected, tmp_path):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("jax.experimental.jax2tf")
    out = tmp_path / "glcic" / "1"
    out.parent.mkdir()
    assert export.run(["export", f"--workdir={workdir}", "--format=saved_model",
                       f"--output={out}"]) == 0
    loaded = tf.saved_model.load(str(out))
    serve = loaded.signatures["serving_default"]
    outputs = [serve(image=tf.constant(image), mask=tf.constant(mask))["completed"].numpy()
               for image, mask, _ in expected]
    _check(outputs, expected)


def test_cli_errors_are_one_line_and_exit_1(workdir, tmp_path, capsys):
    cases = [
        ([], "--workdir is required"),
        ([f"--workdir={workdir}", "--format=onnx", f"--output={tmp_path}/x"], "--format"),
        ([f"--workdir={tmp_path}/none", "--format=stablehlo", f"--output={tmp_path}/x"],
         "error: "),
        ([f"--workdir={workdir}", "--format=stablehlo", f"--output={tmp_path}"], "exists"),
        ([f"--workdir={workdir}", "--format=stablehlo", f"--output={tmp_path}/no/x"],
         "does not exist"),
    ]
    for flags, words in cases:
        assert export.run(["export", *flags]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
