r"""Export a checkpoint's completion network for serving engines: a TF SavedModel or StableHLO.

  python -m glcic_jax.export --workdir=runs/quickstart --format=saved_model \
      --output=models/glcic/1              # TF Serving: a numbered version folder
  python -m glcic_jax.export --workdir=runs/quickstart --format=stablehlo --output=glcic.jax

Both hold the same function, the network with its weights (BatchNorm's running statistics):

  completed = f(image, mask)
    image:     float32 [B, H, W, 3] in [0, 1]
    mask:      float32 [B, H, W, 1], 1 = hole (> 0.5), 0 = known
    completed: float32 [B, H, W, 3]: the network's output inside the hole, the image outside

B, H and W are free (shape-polymorphic); H and W must be multiples of 4 (the network halves the
resolution twice): pad a photo (edge mode) and crop the result, as `glcic_jax.complete` does.
The hole's pixels are replaced by the checkpoint's mean pixel inside the function, so callers
send the photo as it is. Scaling to the training scale, --max_size and post-processing are the
command line's, not part of the exported function.

* `saved_model`: through jax2tf (native serialization: the function is StableHLO inside the
  SavedModel, run by TensorFlow's XlaCallModule op). Loadable by `tf.saved_model.load` and by
  TF Serving; the signature `serving_default` takes the inputs `image` and `mask` and answers
  `completed`. Needs TensorFlow (the `tfds` extra installs it).
* `stablehlo`: `jax.export`'s serialized form (one file); `jax.export.deserialize(bytes).call(
  image, mask)` runs it with JAX alone, without this package.

The function is lowered for the platform the export runs on (CPU here; export on a GPU machine
for GPU serving).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

import numpy as np

from glcic_jax import cli, errors

FORMATS = ("saved_model", "stablehlo")
# H and W are multiples of 4 (the network halves the resolution twice); the batch is free.
POLYMORPHIC_IMAGE = "(b, 4*h, 4*w, 3)"
POLYMORPHIC_MASK = "(b, 4*h, 4*w, 1)"


class ExportError(errors.UserError):
    """A flag, checkpoint or output path the export cannot use."""


def completion_function(completer) -> tuple[Callable, dict]:
    """`(variables, image, mask) -> completed` for a loaded `inference.Completer`, and its
    variables: the network input, the generator and the compositing of `complete_images`."""
    from glcic_jax import inference

    generator, mean, norm = completer.generator, completer.mean_pixel, completer.input_norm

    def fn(variables, image, mask):
        return inference.complete_images(generator, variables, image, mask, mean, norm)

    return fn, completer.variables


def export_stablehlo(completer) -> bytes:
    """The completion function as `jax.export` serialized bytes (weights included)."""
    import jax
    import jax.numpy as jnp

    fn, variables = completion_function(completer)
    b, h, w = jax.export.symbolic_shape("b, h, w")
    args = (jax.ShapeDtypeStruct((b, 4 * h, 4 * w, 3), jnp.float32),
            jax.ShapeDtypeStruct((b, 4 * h, 4 * w, 1), jnp.float32))
    exported = jax.export.export(jax.jit(lambda image, mask: fn(variables, image, mask)))(*args)
    return bytes(exported.serialize())


def export_saved_model(completer, output: str) -> None:
    """Write the completion function as a TF SavedModel at `output` (signature
    `serving_default`: image, mask -> completed); the weights are tf.Variables."""
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as e:
        raise ExportError(f"--format=saved_model needs TensorFlow and JAX's jax2tf ({e}); "
                          f"pip install tensorflow-cpu, or export --format=stablehlo.") from e

    fn, variables = completion_function(completer)
    tf_fn = jax2tf.convert(fn, polymorphic_shapes=[None, POLYMORPHIC_IMAGE, POLYMORPHIC_MASK],
                           with_gradient=False)
    module = tf.Module()
    module.variables_ = tf.nest.map_structure(lambda v: tf.Variable(np.asarray(v),
                                                                    trainable=False), variables)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="image"),
        tf.TensorSpec([None, None, None, 1], tf.float32, name="mask")])
    def serve(image, mask):
        return {"completed": tf_fn(module.variables_, image, mask)}

    module.serve = serve
    tf.saved_model.save(module, output, signatures={"serving_default": serve})


def export(path: str, fmt: str, output: str) -> str:
    """Load the checkpoint at `path` and write `output` in `fmt`; -> a one-line description."""
    from glcic_jax import inference

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    empty_dir = os.path.isdir(output) and not os.listdir(output)
    if os.path.exists(output) and not (fmt == "saved_model" and empty_dir):
        raise ExportError(f"{output!r} exists; pass a new --output (nothing is replaced).")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ExportError(f"the folder of --output, {parent!r}, does not exist.")
    completer = inference.load(path)  # LoadError (a UserError) if nothing is there
    if fmt == "stablehlo":
        data = export_stablehlo(completer)
        tmp = output + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, output)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise ExportError(f"cannot write {output!r}: {e.strerror or e}") from e
        size = len(data)
    else:
        import shutil

        tmp = output.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            export_saved_model(completer, tmp)
            if empty_dir:
                os.rmdir(output)
            os.replace(tmp, output)  # the folder appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(output)
                   for f in fs)
    return (f"Wrote {output} ({fmt}, {size / 2**20:.1f} MiB): step {completer.step}, "
            f"image [B, H, W, 3] + mask [B, H, W, 1] -> completed, H and W multiples of 4.")


def _define_flags(fv):
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir (its latest checkpoint), its "
                        "checkpoints/ folder or one checkpoints/<step> folder.", flag_values=fv)
    flags.DEFINE_enum("format", None, list(FORMATS), "saved_model (TF SavedModel through "
                      "jax2tf, for TF Serving) or stablehlo (jax.export's serialized form).",
                      flag_values=fv)
    flags.DEFINE_string("output", None, "Where to write: a folder (saved_model; for TF "
                        "Serving a numbered version folder, e.g. models/glcic/1) or a file "
                        "(stablehlo).", flag_values=fv)


COMMAND = cli.Command("python -m glcic_jax.export", __doc__.split("Both hold")[0],
                      lambda fv: _define_flags(fv), interrupted="nothing was written at --output")


def run(argv: Sequence[str]) -> int:
    """The command line, in-process: `argv[0]` is the program name. Returns the exit status."""
    return COMMAND.run(argv, _export)


def _export(fv) -> int:
    for name in ("workdir", "format", "output"):
        if not fv[name].value:
            raise ExportError(f"--{name} is required (--workdir=DIR "
                              f"--format={'|'.join(FORMATS)} --output=PATH).")
    from glcic_jax import console

    console.quiet_native_logs(False)
    print(export(fv.workdir, fv.format, fv.output))
    return 0


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
