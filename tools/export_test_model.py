"""Export a trained quickstart generator as a small .npz for the tests (our own weights).

  python tools/export_test_model.py --workdir=runs/quickstart \
      --out=tests/data/quickstart_generator.npz

Writes the generator's parameters and batch statistics (float16: half the size, and the test's
tolerances are far wider than that rounding), the mean pixel, the step and the config as JSON.
`tests/test_quickstart_model.py` rebuilds a `inference.Completer` from it and checks that a
quickstart-trained network completes a full-size held-out photo. Regenerate it with
this command after a change to the networks or the quickstart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(flatten(dict(value), name))
        else:
            out[name] = np.asarray(value)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *path, last = name.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def load(path: str):
    """The `inference.Completer` of a file this tool wrote (float32 again)."""
    from glcic_jax import config_lib, inference
    from glcic_jax import state as state_lib

    with np.load(path) as z:
        config = config_lib.upgrade(json.loads(str(z["config"])))  # as stored by any version
        variables = unflatten({k[4:]: z[k].astype(np.float32) for k in z.files
                               if k.startswith("var/")})
        mean_pixel, step = z["mean_pixel"], int(z["step"])
    nets = state_lib.create_networks(config)
    return inference.Completer(config, nets.generator, variables, mean_pixel, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default="tests/data/quickstart_generator.npz")
    args = parser.parse_args()
    from glcic_jax import inference

    completer = inference.load(args.workdir)
    flat = {f"var/{k}": v.astype(np.float16) for k, v in flatten(completer.variables).items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, mean_pixel=completer.mean_pixel, step=completer.step,
                        config=json.dumps(completer.config.to_dict()), **flat)
    print(f"{args.out}: step {completer.step}, {sum(v.size for v in flat.values()):,} values, "
          f"{os.path.getsize(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
