"""Loading a checkpoint for inference reads the completion network and the mean pixel only.

`inference.load` (behind `complete`, `serve`, `evaluate` and the converter's check) restores with
`checkpointing.restore_generator`: the discriminator and the optimizer states are neither built
nor read. A checkpoint that holds only a generator therefore loads, and a normal one gives exactly
the arrays the full restore gives.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_complete import _tiny_config, make_workdir

from glcic_jax import checkpointing, inference, state


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return make_workdir(str(tmp_path_factory.mktemp("tiny_run")))


def _same(a, b) -> bool:
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_load_gives_the_generator_and_mean_pixel_of_the_full_restore(workdir):
    _, _, full = checkpointing.restore_for_inference(workdir)
    loaded = inference.load(workdir)
    assert _same(loaded.variables, inference.generator_variables(full))
    assert np.array_equal(loaded.mean_pixel, np.asarray(full.mean_pixel, np.float32))
    assert loaded.step == int(full.step)


def test_a_checkpoint_without_discriminator_or_optimizer_state_completes(workdir, tmp_path):
    """Inference must not depend on the arrays it does not use: a generator-only checkpoint
    (discriminator and optimizer states empty) loads and completes like the full one."""
    _, _, full = checkpointing.restore_for_inference(workdir)
    empty = state.ModelState(params={}, batch_stats={}, opt_state={})
    slim = full.replace(g=full.g.replace(opt_state={}), d=empty)
    path = str(tmp_path / "generator_only")
    ckpt = checkpointing.Checkpointer(path, _tiny_config())
    ckpt.save(0, slim, _tiny_config())
    ckpt.close()

    loaded = inference.load(path)
    reference = inference.load(workdir)
    assert _same(loaded.variables, reference.variables)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (1, 32, 40, 3), dtype=np.uint8)
    hole = np.zeros((1, 32, 40), bool)
    hole[:, 8:20, 10:30] = True
    np.testing.assert_array_equal(loaded(photo, hole), reference(photo, hole))


def _photo_batch(n: int, h: int, w: int):
    rng = np.random.default_rng(n * h + w)
    photo = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    mask = np.zeros((n, h, w, 1), np.float32)
    mask[:, h // 4 : h // 2, w // 4 : w // 2] = 1.0
    return photo, mask


def test_shapes_compiled_while_loading_give_the_jitted_results(workdir):
    """`load(precompile=...)` compiles the first batch's shapes while it reads the checkpoint;
    `fn` then runs that executable (the jitted function compiles nothing for it) and gives
    exactly the jitted function's result. Other shapes still compile on their first call."""
    asked = []

    def shapes(config):
        asked.append(int(config.data.image_size))
        return [(2, 32, 40), (2, 32, 40)]  # a repeat compiles once

    ahead = inference.load(workdir, precompile=shapes)
    assert asked == [32] and set(ahead.precompiled) == {((2, 32, 40, 3), "uint8", (2, 32, 40, 1))}
    plain = inference.load(workdir)
    assert plain.precompiled == {}
    photo, mask = _photo_batch(2, 32, 40)
    jitted = inference.compiled_completion(ahead.generator)
    before = jitted._cache_size()
    out = np.asarray(ahead.fn(ahead.variables, photo, mask, ahead.mean_pixel))
    assert jitted._cache_size() == before  # the executable compiled ahead ran
    np.testing.assert_array_equal(out, np.asarray(plain.fn(plain.variables, photo, mask,
                                                           plain.mean_pixel)))
    other, other_mask = _photo_batch(1, 32, 40)
    np.testing.assert_array_equal(
        np.asarray(ahead.fn(ahead.variables, other, other_mask, ahead.mean_pixel)),
        np.asarray(plain.fn(plain.variables, other, other_mask, plain.mean_pixel)))


def test_a_failing_shape_callback_still_loads(workdir):
    def broken(config):
        raise KeyError("no such setting")

    loaded = inference.load(workdir, precompile=broken)
    assert loaded.precompiled == {}
    photo, mask = _photo_batch(1, 32, 40)
    assert loaded.fn(loaded.variables, photo, mask, loaded.mean_pixel).shape == (1, 32, 40, 3)
