"""Subprocess half of tests/test_distributed.py: the GLCIC steps on a multi-device mesh.

`python tests/distributed_steps_helper.py IN.npz OUT.npz` with
XLA_FLAGS=--xla_force_host_platform_device_count=N (N > 1) set before jax starts: that is why this
runs in its own process. IN holds a global batch of images and the leaves of an initial `:tiny`
GANState; the completion (phase 1) and joint (phase 3) steps run on a mesh over all N devices
through `distributed.shard_steps` (the wrappers `train.py` uses), and OUT receives the new states'
and the metrics' leaves, plus whether every output stayed replicated over all N devices.

The same steps also run once more with a simulated sharding bug, under the `dropped_` prefix: the
last device's images are lost and that device computes on a copy of the first device's images
(as when a host feeds the wrong slice), so the test can show that its comparison catches it.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from glcic_jax import config_lib, distributed, state as state_lib, steps as steps_lib  # noqa: E402


def main(in_path: str, out_path: str) -> None:
    data = np.load(in_path)
    config = config_lib.shrink_to_tiny(config_lib.base_config())
    nets = state_lib.create_networks(config)
    abstract = jax.eval_shape(
        state_lib.state_initializer(config, nets, jax.random.PRNGKey(0), np.zeros(3))
    )
    treedef = jax.tree_util.tree_structure(abstract)
    host_state = jax.tree_util.tree_unflatten(
        treedef, [data[f"state_{i}"] for i in range(treedef.num_leaves)]
    )
    mesh = distributed.make_mesh()
    n = mesh.size
    assert n > 1, f"expected several devices, got {jax.devices()}"
    # donate=False inside; shard_steps' wrappers donate the placed state, which is recreated.
    steps = distributed.shard_steps(steps_lib.make_steps(config, nets, donate=False), mesh)
    out = {"num_devices": np.int64(n)}
    per_device = len(data["images"]) // n
    dropped = data["images"].copy()
    dropped[-per_device:] = data["images"][:per_device]  # the last device's own images are lost
    for prefix, host_images in (("", data["images"]), ("dropped_", dropped)):
        for name in ("completion", "joint"):
            state = jax.device_put(host_state, distributed.replicated(mesh))
            images = distributed.global_batch(host_images, distributed.batch_sharded(mesh))
            assert images.sharding.shard_shape(images.shape)[0] == images.shape[0] // n
            new_state, metrics = getattr(steps, name)(state, images)
            leaves = jax.tree_util.tree_leaves((new_state, metrics))
            key = prefix + name
            out[f"{key}_replicated"] = np.bool_(all(
                x.sharding.is_fully_replicated and len(x.sharding.device_set) == n for x in leaves
            ))
            for i, x in enumerate(jax.tree_util.tree_leaves(jax.device_get(new_state))):
                out[f"{key}_state_{i}"] = np.asarray(x)
            for k, v in jax.device_get(metrics).items():
                out[f"{key}_metric_{k}"] = np.asarray(v)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
