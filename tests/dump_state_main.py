"""`python -m glcic_jax.main` as the launcher starts it, which also writes down the state each
process holds, for tests/test_distributed.py to compare across processes.

The launcher runs `$PYTHON -m glcic_jax.main FLAGS`; with PYTHON a script that execs
`python tests/dump_state_main.py "$@"`, this file receives `-m glcic_jax.main FLAGS`, runs the
real command line with FLAGS, and writes into $GLCIC_DUMP_DIR:
  restored_process_<i>.npz  the state `train.restore_or_init` returned (when it resumed)
  final_process_<i>.npz     the state `train.train_and_evaluate` returned
each holding the state's leaves (this process's replica) as leaf_0, leaf_1, ...
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from glcic_jax import main as main_lib, train  # noqa: E402


def dump(name: str, state) -> None:
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree_util.tree_leaves(state)]
    path = os.path.join(os.environ["GLCIC_DUMP_DIR"], f"{name}_process_{jax.process_index()}")
    np.savez(path + ".tmp.npz", **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    os.replace(path + ".tmp.npz", path + ".npz")


def _wrap() -> None:
    real_restore, real_train = train.restore_or_init, train.train_and_evaluate

    def restore_or_init(*args, **kwargs):
        out = real_restore(*args, **kwargs)
        if out[0] is not None:
            dump("restored", out[0])
        return out

    def train_and_evaluate(*args, **kwargs):
        state = real_train(*args, **kwargs)
        dump("final", state)
        return state

    train.restore_or_init = restore_or_init
    train.train_and_evaluate = train_and_evaluate


if __name__ == "__main__":
    args = sys.argv[1:]
    assert args[:2] == ["-m", "glcic_jax.main"], args
    sys.argv = ["glcic_jax.main", *args[2:]]
    _wrap()
    main_lib.run()
