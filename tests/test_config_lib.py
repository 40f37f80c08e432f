"""Config validation: every field's range and choice, checked before anything is written, and
configs that load without JAX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from glcic_jax import checkpointing, config_lib, masks, models, state, steps, train

ROOT = Path(__file__).resolve().parents[1]


def tiny():
    return config_lib.shrink_to_tiny(config_lib.base_config())


def test_loading_every_config_imports_no_jax():
    code = (
        "import importlib.util, sys\n"
        "for name in ('quickstart', 'celeba', 'places2', 'landscapes'):\n"
        "    spec = importlib.util.spec_from_file_location(name, f'configs/{name}.py')\n"
        "    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "    c = m.get_config('tiny')\n"
        "    if name != 'landscapes':\n"
        "        m.config_lib.validate(c)\n"
        "heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('jax', 'flax', 'numpy',"
        " 'tensorflow', 'optax'))\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


@pytest.mark.parametrize("field, value, message", [
    ("keep_checkpoints", 0, "keep_checkpoints=0 must be >= 1"),
    ("keep_checkpoints", -2, "keep_checkpoints=-2 must be >= 1"),
    ("checkpoint_every", 0, "checkpoint_every=0 must be >= 1"),
    ("log_every", 0, "log_every=0 must be >= 1"),
    ("sample_every", 0, "sample_every=0 must be >= 1"),
    ("num_train_steps", 0, "num_train_steps=0 must be >= 1"),
    ("batch_size", 0, "batch_size=0 must be >= 1"),
    ("keep_every", -1, "keep_every=-1 must be >= 0"),
    ("schedule.tc", -5, "schedule.tc=-5 must be >= 0"),
    ("schedule.td", -1, "schedule.td=-1 must be >= 0"),
    ("data.num_eval_images", 0, "data.num_eval_images=0 must be >= 1"),
    ("data.eval_fraction", 1.5, "data.eval_fraction=1.5 must be in [0.0, 1.0)"),
    ("data.mean_pixel_images", 0, "data.mean_pixel_images=0 must be >= 1"),
    ("num_eval_batches", 0, "num_eval_batches=0 must be >= 1"),
    ("model.dtype", "foo", "model.dtype='foo' must be one of ['float32', 'bfloat16'"),
    ("model.padding", "same", "model.padding='same' must be one of ['zero', 'reflect']"),
    ("model.d_norm", "group", "model.d_norm='group' must be one of"),
    ("model.d_activation", "gelu", "model.d_activation='gelu' must be one of"),
    ("model.discriminator", "global", "model.discriminator='global' must be one of"),
    ("optimizer.name", "sgd", "optimizer.name='sgd' must be one of ['adadelta', 'adam'"),
    ("optimizer.learning_rate", 0.0, "optimizer.learning_rate=0.0 must be > 0"),
    ("optimizer.learning_rate", float("nan"), "optimizer.learning_rate=nan must be > 0"),
    ("loss.gan", "hinge", "loss.gan='hinge' must be one of ['bce', 'wgan-gp']"),
    ("loss.alpha", -1.0, "loss.alpha=-1.0 must be >= 0"),
    ("data.source", "web", "data.source='web' must be one of ['tfds', 'folder', 'skimage']"),
    ("mask.position", "corner", "mask.position='corner' must be one of"),
    ("mask.max_holes", 0, "mask.max_holes (0) must be at least 1"),
])
def test_every_bad_setting_is_named(field, value, message):
    config = tiny()
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match="Bad config: ") as info:
        config_lib.validate(config)
    assert message in str(info.value)


def test_all_problems_are_reported_at_once():
    config = tiny()
    config.log_every = 0
    config.optimizer.name = "sgd"
    with pytest.raises(ValueError) as info:
        config_lib.validate(config)
    assert "log_every=0" in str(info.value) and "optimizer.name='sgd'" in str(info.value)


def test_shipped_configs_are_valid(tiny_config):
    config_lib.validate(tiny_config)
    config_lib.validate(config_lib.base_config())


def test_the_listed_choices_are_what_the_code_implements():
    # The tuples in config_lib are the only lists: the implementing modules check against them.
    for module in (models, state, steps, masks):
        assert not [k for k, v in vars(module).items() if isinstance(v, tuple) and any(
            v == choices for choices in config_lib.CHOICES.values())], module
    for name in config_lib.DTYPES:
        jnp.dtype(name)  # every listed activation dtype exists
    for name in config_lib.OPTIMIZERS:
        cfg = tiny().optimizer
        cfg.name = name
        state.create_optimizer(cfg)


@pytest.mark.parametrize("field, value", [
    ("optimizer.name", "sgd"), ("model.padding", "same"), ("loss.gan", "hinge"),
    ("model.d_norm", "group"), ("model.discriminator", "global"),
    ("model.d_activation", "gelu"), ("data.source", "web"), ("keep_checkpoints", 0),
])
def test_bad_settings_write_nothing_to_the_workdir(tmp_path, field, value):
    config = tiny()
    config.data.source = "skimage"
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="Bad config"):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_keep_checkpoints_zero_never_touches_existing_checkpoints(tmp_path):
    config = tiny()
    config.keep_checkpoints = 0
    workdir = tmp_path / "run"
    for step in ("3", "6"):
        (workdir / "checkpoints" / step).mkdir(parents=True)
        (workdir / "checkpoints" / step / "marker").write_text("x")
    with pytest.raises(ValueError, match="keep_checkpoints=0"):
        train.train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    assert (workdir / "checkpoints" / "3" / "marker").exists()


def test_a_stored_config_from_an_older_version_is_brought_up_to_date_at_load():
    # A checkpoint's config from before model.fill, model.width, mask.real_crop and nan_policy
    # existed: load fills them in with the behaviour they had then, so code reads them directly.
    stored = config_lib.base_config().to_dict()
    for section, key in (("model", "fill"), ("model", "width"), ("mask", "real_crop")):
        del stored[section][key]
    del stored["nan_policy"]
    stored["model"]["padding"] = "reflect"
    stored["retired_field"] = 1
    c = config_lib.upgrade(stored)
    assert (c.model.fill, c.model.width, c.mask.real_crop, c.nan_policy) == (
        "mean", 1.0, "hole", "stop")
    assert c.model.padding == "reflect" and c.retired_field == 1
    assert steps.StepSettings.from_config(c).real_crop == "hole"
    current = config_lib.base_config()
    current.model.padding = "reflect"
    checkpointing.check_compatible(stored, current)  # the same model: resumable
    current.model.width = 0.5
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="model.width"):
        checkpointing.check_compatible(stored, current)
