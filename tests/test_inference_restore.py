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


def test_the_network_is_lowered_before_the_arrays_are_read_and_compiled_while_they_are(
        workdir, monkeypatch):
    """Tracing and lowering are Python work: run beside the checkpoint's read they contended
    with it for the interpreter's lock (a cold `complete` on 2 cores waited longer for both).
    So `load` lowers on the calling thread as soon as the config is known, before the arrays
    are read, and only XLA's compilation (which releases the lock) runs beside the read."""
    import threading

    events = []
    real_restore = checkpointing._restore_newest_intact
    real_compiled = inference.compiled_completion

    def restore(path, step, abstract_for, **kw):
        def abstract(meta, step):
            out = abstract_for(meta, step)
            events.append(("arrays read next", threading.current_thread().name))
            return out
        return real_restore(path, step, abstract, **kw)

    class Jitted:
        def __init__(self, fn):
            self.fn = fn

        def lower(self, *args):
            events.append(("lower", threading.current_thread().name))
            lowered = self.fn.lower(*args)
            compile_ = lowered.compile

            class Lowered:
                def compile(self):
                    events.append(("compile", threading.current_thread().name))
                    return compile_()
            return Lowered()

    monkeypatch.setattr(checkpointing, "_restore_newest_intact", restore)
    monkeypatch.setattr(inference, "compiled_completion", lambda g: Jitted(real_compiled(g)))
    loaded = inference.load(workdir, precompile=lambda config: [(1, 32, 40)])
    main = threading.current_thread().name
    assert sorted(events) == sorted([("lower", main), ("arrays read next", main),
                                     ("compile", "glcic-compile-ahead")]), events
    assert events.index(("lower", main)) < events.index(("arrays read next", main)), events
    assert set(loaded.precompiled) == {((1, 32, 40, 3), "uint8", (1, 32, 40, 1))}


def test_the_compilation_starts_before_orbax_is_imported(workdir):
    """Importing Orbax took about 0.2 s of a cold `complete` on a 2-core CPU, and it came
    before the network's tracing. The config and the array shapes are read from the checkpoint's
    own files first, so that the compilation is under way when Orbax is imported (a fresh
    interpreter: this one has imported Orbax already)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, threading
        from glcic_jax import inference
        seen = []
        start = threading.Thread.start
        def watched(self):
            if self.name == "glcic-compile-ahead":
                seen.append("orbax.checkpoint" in sys.modules)
            start(self)
        threading.Thread.start = watched
        loaded = inference.load({workdir!r}, precompile=lambda config: [(1, 32, 40)])
        print("orbax imported at the compilation's start:", seen, len(loaded.precompiled))
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "orbax imported at the compilation's start: [False] 1" in out.stdout, out.stdout


def test_unreadable_checkpoint_files_leave_the_compilation_to_the_restore(workdir, monkeypatch):
    """Where the config or the shapes cannot be read without Orbax, the restore compiles ahead
    as before, for the same result."""
    from glcic_jax import checkpoint_files

    monkeypatch.setattr(checkpoint_files, "read_meta", lambda step_dir: None)
    loaded = inference.load(workdir, precompile=lambda config: [(1, 32, 40)])
    assert set(loaded.precompiled) == {((1, 32, 40, 3), "uint8", (1, 32, 40, 1))}
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint_files, "stored_structure", lambda *a, **k: None)
    again = inference.load(workdir, precompile=lambda config: [(1, 32, 40)])
    assert set(again.precompiled) == set(loaded.precompiled)
    photo, mask = _photo_batch(1, 32, 40)
    np.testing.assert_array_equal(
        np.asarray(loaded.fn(loaded.variables, photo, mask, loaded.mean_pixel)),
        np.asarray(again.fn(again.variables, photo, mask, again.mean_pixel)))


def test_newest_meta_reads_what_a_restore_tries_first(workdir, tmp_path):
    import os
    import shutil

    from glcic_jax import checkpoint_files

    steps = checkpoint_files.finished_steps_in(os.path.join(workdir, "checkpoints"))
    newest = os.path.join(workdir, "checkpoints", str(steps[-1]))
    step_dir, meta = checkpoint_files.newest_meta(workdir)
    assert step_dir == newest and meta["config"]["data"]["image_size"] == 32
    assert checkpoint_files.newest_meta(os.path.join(workdir, "checkpoints"))[0] == newest
    assert checkpoint_files.newest_meta(newest)[0] == newest
    assert checkpoint_files.newest_meta(workdir, step=steps[-1] + 1) is None
    assert checkpoint_files.newest_meta(str(tmp_path)) is None  # not a checkpoint
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    (copy / "checkpoints" / str(steps[-1]) / "meta" / "metadata").write_text("{not json")
    assert checkpoint_files.newest_meta(str(copy)) is None
    (copy / "checkpoints" / str(steps[-1]) / "meta" / "metadata").write_text('{"step": 1}')
    assert checkpoint_files.newest_meta(str(copy)) is None  # no config in it


def test_a_failing_shape_callback_still_loads(workdir):
    def broken(config):
        raise KeyError("no such setting")

    loaded = inference.load(workdir, precompile=broken)
    assert loaded.precompiled == {}
    photo, mask = _photo_batch(1, 32, 40)
    assert loaded.fn(loaded.variables, photo, mask, loaded.mean_pixel).shape == (1, 32, 40, 3)


def _module_structure(generator):
    g = jax.eval_shape(lambda: generator.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 16, 16, 4), jax.numpy.float32), train=False))
    return {k: g[k] for k in ("params", "batch_stats") if g.get(k)}


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), tree)


def test_the_structure_is_read_from_the_checkpoint_not_traced(workdir, monkeypatch):
    """Tracing the network's initialisation for its shapes cost about 0.15 s of a 0.25 s load;
    the checkpoint's own tree metadata gives the same structure without it."""
    seen = {}

    def traced(*args, **kwargs):
        raise AssertionError("the structure was traced")

    with monkeypatch.context() as m:
        m.setattr(checkpointing.jax, "eval_shape", traced)
        found = checkpointing.restore_generator(
            workdir, on_structure=lambda config, generator, abstract: seen.update(
                generator=generator, abstract=abstract))
    assert _shapes(seen["abstract"]) == _shapes(_module_structure(seen["generator"]))
    assert _shapes(found.variables) == _shapes(seen["abstract"])


def test_a_structure_that_cannot_be_read_is_traced_with_the_same_result(workdir, monkeypatch):
    reference = inference.load(workdir)
    monkeypatch.setattr(checkpointing, "stored_structure", lambda *a, **k: None)
    assert _same(inference.load(workdir).variables, reference.variables)


def test_stored_structure_refuses_what_it_does_not_know(tmp_path):
    import json

    def write(tree):
        (tmp_path / "state").mkdir(exist_ok=True)
        (tmp_path / "state" / "_METADATA").write_text(json.dumps({"tree_metadata": tree}))
        return checkpointing.stored_structure(str(tmp_path), ("g",), ("params",))

    def entry(path, shape=(3,), key_type=2, **value):
        return {"key_metadata": [{"key": k, "key_type": key_type} for k in path],
                "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False,
                                   "write_shape": list(shape), **value}}

    good = {"a": entry(("g", "params", "Conv_0", "kernel"), (3, 3, 4, 8)),
            "b": entry(("g", "params", "Conv_0", "bias"), (8,)),
            "c": entry(("g", "opt_state", "0"), ()),
            "d": entry(("d", "params", "x"), (2,))}
    assert _shapes(write(good)) == {"params": {"Conv_0": {"kernel": ((3, 3, 4, 8), np.float32),
                                                          "bias": ((8,), np.float32)}}}
    assert write({**good, "e": entry(("g", "params", "list", "0"), key_type=1)}) is None
    no_shape = entry(("g", "params", "Conv_1", "kernel"))
    del no_shape["value_metadata"]["write_shape"]
    assert write({**good, "e": no_shape}) is None
    assert write({"d": entry(("d", "params", "x"))}) is None  # nothing under g/params
    (tmp_path / "state" / "_METADATA").write_text("{not json")
    assert checkpointing.stored_structure(str(tmp_path), ("g",), ("params",)) is None
    assert checkpointing.stored_structure(str(tmp_path / "absent"), ("g",), ("params",)) is None


def test_a_checkpoint_whose_config_describes_another_network_is_refused_in_one_line(
        workdir, tmp_path):
    """The arrays are restored with the shapes they were stored with; when the config in the
    same checkpoint describes another network, the first completion says so (a LoadError, one
    line from the commands), rather than a traceback from flax."""
    import json
    import os
    import shutil

    copy = str(tmp_path / "other_config")
    shutil.copytree(workdir, copy)
    [meta] = [os.path.join(root, name) for root, _, names in os.walk(copy) for name in names
              if os.path.basename(root) == "meta" and name == "metadata"]
    with open(meta) as f:
        content = json.load(f)
    content["config"]["model"]["width"] = 2 * float(content["config"]["model"]["width"])
    with open(meta, "w") as f:
        json.dump(content, f)
    completer = inference.load(copy)
    photo, mask = _photo_batch(1, 32, 32)
    with pytest.raises(inference.LoadError, match="do not fit the network its config"):
        completer(photo, mask[..., 0] > 0)
