"""Packaging: pyproject.toml and requirements.txt agree, the console entry points resolve, and a
wheel built from the checkout installs a working `glcic_jax` with its configs and commands."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SELF = "glcic-jax"

def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirements_txt() -> dict[str, Requirement]:
    out: dict[str, Requirement] = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"requirements.txt: options are not supported: {line}"
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"requirements.txt lists {req.name} twice"
        out[name] = req
    return out


def pyproject_requirements() -> dict[str, tuple[str, Requirement]]:
    """Every package pyproject.toml names, with its group ('dependencies' or the extra's name)."""
    project = pyproject()["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    out: dict[str, tuple[str, Requirement]] = {}
    for group, lines in groups.items():
        for line in lines:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            if name == SELF:  # an aggregate extra such as all = ["glcic-jax[...]"]
                continue
            assert name not in out, f"pyproject.toml lists {req.name} in {out[name][0]} and {group}"
            out[name] = (group, req)
    return out


def test_requirements_txt_and_pyproject_list_the_same_packages_and_ranges():
    """requirements.txt is the one-command install of everything: the union of pyproject's
    dependencies and all its extras (test-only packages go into the `test` extra)."""
    txt, toml = requirements_txt(), pyproject_requirements()
    only_txt = sorted(str(txt[n]) for n in set(txt) - set(toml))
    only_toml = sorted(f"{toml[n][1]} ({toml[n][0]})" for n in set(toml) - set(txt))
    assert not only_txt, f"add to pyproject.toml (dependencies or an extra): {only_txt}"
    assert not only_toml, f"add to requirements.txt, or drop from pyproject.toml: {only_toml}"
    for name, req in txt.items():
        group, other = toml[name]
        assert (req.specifier, str(req.marker), req.extras) == (
            other.specifier, str(other.marker), other.extras
        ), f"requirements.txt has '{req}', pyproject.toml ({group}) has '{other}'"


def test_extra_all_holds_every_optional_group_but_the_tests():
    extras = pyproject()["project"]["optional-dependencies"]
    (aggregate,) = extras["all"]
    req = Requirement(aggregate)
    assert canonicalize_name(req.name) == SELF
    assert req.extras == set(extras) - {"all", "test"}


def test_console_entry_points_resolve_to_functions():
    scripts = pyproject()["project"]["scripts"]
    assert {"glcic-train", "glcic-complete", "glcic-convert", "glcic-serve"} <= set(scripts)
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr, None)
        assert callable(fn), f"{name} = {target}: no function {attr} in {module}"


@pytest.mark.slow
def test_wheel_installs_a_working_package_with_configs_and_commands(tmp_path):
    """Build a wheel from a copy of the checkout (offline: setuptools from this environment),
    install it without dependencies into a folder, and run it from outside the checkout."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("glcic_jax", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(src)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = tmp_path.glob("glcic_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"glcic_jax/{p.relative_to(ROOT / 'glcic_jax').as_posix()}"  # subpackages too
               for p in (ROOT / "glcic_jax").rglob("*.py") if "__pycache__" not in p.parts}
    configs = {f"glcic_jax/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert modules | configs <= names, sorted(modules | configs - names)

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   cwd=tmp_path, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import glcic_jax, glcic_jax.main, glcic_jax.complete; "
         "print(glcic_jax.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert Path(where.stdout.strip()).parent == site / "glcic_jax"
    # The train command loads a config shipped inside the package; a mistyped override stops it
    # before any work with the usual message.
    config = site / "glcic_jax" / "configs" / "quickstart.py"
    proc = subprocess.run(
        [str(site / "bin" / "glcic-train"), f"--config={config}:tiny",
         f"--workdir={tmp_path / 'run'}", "--config.batch_sise=8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "batch_sise" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()
    proc = subprocess.run([str(site / "bin" / "glcic-complete"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--image" in proc.stdout + proc.stderr, proc.stderr[-3000:]

    # A real command, offline: the installed glcic-complete completes a photo with a (tiny,
    # untrained) checkpoint; its output is the photo outside the hole and, inside, what the
    # checkout's own inference module computes from the same checkpoint.
    import numpy as np
    from PIL import Image

    from glcic_jax import inference
    from test_complete import make_workdir

    workdir = make_workdir(str(tmp_path / "ckpt"))
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    hole = np.zeros((32, 32), bool)
    hole[8:20, 10:24] = True
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    proc = subprocess.run(
        [str(site / "bin" / "glcic-complete"), f"--workdir={workdir}",
         f"--image={tmp_path / 'photo.png'}", f"--mask={tmp_path / 'mask.png'}",
         f"--output={tmp_path / 'done.png'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = np.asarray(Image.open(tmp_path / "done.png"))
    want = inference.quantize_uint8(inference.load(workdir)(photo[None], hole[None])[0])
    np.testing.assert_array_equal(done[~hole], photo[~hole])
    assert np.abs(done.astype(int) - want.astype(int)).max() <= 1  # two processes' rounding
    assert (done[hole] != photo[hole]).any(axis=-1).mean() > 0.5
