"""Shared fixtures for the core tests: the `:tiny` config, its networks, one state, jitted steps.

The tests run on CPU (CI has 2 cores and no accelerator), so JAX_PLATFORMS defaults to cpu before
jax is imported. Compiling a training step takes several seconds on CPU: the networks, the initial
state and the jitted steps are built once per session and shared. The steps are built with
`donate=False`, so a state passed to a step stays valid and can be compared with the result.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Compiling the GLCIC steps dominates test time on CPU (~20 s per step kind). A persistent
# compilation cache lets every test (and every subprocess: the settings travel as environment
# variables) that compiles the same shapes reuse the first compilation: a training run and its
# resume, `main.py` subprocesses, a second pytest session. Point JAX_COMPILATION_CACHE_DIR at a
# fresh folder to time cold compilation.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"glcic_jax_xla_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# `pytest` run from anywhere (not only `python -m pytest` from the repository root) finds the
# package.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from glcic_jax import config_lib, cpu_memory, state, steps  # noqa: E402


@pytest.fixture(autouse=True)
def _never_restart_the_test_process(monkeypatch):
    """A command's entry point called in-process (`serve.main()`) must not restart pytest with
    huge pages (`cpu_memory.relaunch_with_huge_pages`); the commands' subprocesses still do."""
    monkeypatch.setattr(cpu_memory, "relaunch_with_huge_pages", lambda: None)


def make_tiny_config():
    """A fresh (mutable) `:tiny` config: 32x32 images, local 16, holes 6..12, batch 4."""
    return config_lib.shrink_to_tiny(config_lib.base_config())


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Low-frequency RGB images in [0, 1] (gradients plus one slow sinusoid per channel).

    Smooth content is predictable from the hole's surroundings, so a few optimizer steps can
    measurably reduce the hole MSE on it.
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height)[:, None]
    x = np.linspace(0.0, 1.0, width)[None, :]
    out = np.empty((batch, height, width, 3), np.float32)
    for b in range(batch):
        for c in range(3):
            base = rng.uniform(0.2, 0.8)
            gy, gx = rng.uniform(-0.3, 0.3, size=2)
            amp = rng.uniform(0.05, 0.2)
            fy, fx = rng.uniform(0.3, 1.2, size=2)
            phase = rng.uniform(0.0, 2.0 * np.pi)
            img = base + gy * (y - 0.5) + gx * (x - 0.5)
            img = img + amp * np.sin(2.0 * np.pi * (fy * y + fx * x) + phase)
            out[b, :, :, c] = np.clip(img, 0.0, 1.0)
    return out


def tree_equal(a, b) -> bool:
    """Bit-identical pytrees (same structure, same values)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def changed_leaves(a, b) -> list[str]:
    """Paths of the leaves that differ between two pytrees of the same structure."""
    pairs = zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b))
    return [
        jax.tree_util.keystr(path)
        for (path, x), y in pairs
        if not np.array_equal(np.asarray(x), np.asarray(y))
    ]


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture(scope="session")
def tiny_images() -> jax.Array:
    cfg = make_tiny_config()
    size = cfg.data.image_size
    return jnp.asarray(smooth_images(cfg.batch_size, size, size, seed=0))


@pytest.fixture(scope="session")
def tiny_nets() -> state.Networks:
    return state.create_networks(make_tiny_config())


@pytest.fixture(scope="session")
def tiny_state(tiny_nets, tiny_images) -> state.GANState:
    mean_pixel = jnp.mean(tiny_images, axis=(0, 1, 2))
    return state.create_state(make_tiny_config(), tiny_nets, jax.random.PRNGKey(0), mean_pixel)


@pytest.fixture(scope="session")
def tiny_steps(tiny_nets) -> steps.Steps:
    """Jitted steps without buffer donation (compiled lazily, once per session)."""
    return steps.make_steps(make_tiny_config(), tiny_nets, donate=False)


# One step of each kind from tiny_state on tiny_images, as host arrays: test_steps.py checks what
# each step touches, test_distributed.py compares them with 4 devices. Computed once per session
# (a full-width joint step is several CPU seconds); treat them as read-only.


@pytest.fixture(scope="session")
def after_completion(tiny_steps, tiny_state, tiny_images):
    return jax.device_get(tiny_steps.completion(tiny_state, tiny_images))


@pytest.fixture(scope="session")
def after_discriminator(tiny_steps, tiny_state, tiny_images):
    return jax.device_get(tiny_steps.discriminator(tiny_state, tiny_images))


@pytest.fixture(scope="session")
def after_joint(tiny_steps, tiny_state, tiny_images):
    return jax.device_get(tiny_steps.joint(tiny_state, tiny_images))
