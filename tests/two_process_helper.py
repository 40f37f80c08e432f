"""Subprocess half of tests/test_distributed.py's two-process checks (started twice, as process
0 and process 1 of one jax.distributed job on this machine's CPU).

`python tests/two_process_helper.py PORT PROCESS_ID OUT.json`: joins the job and writes what
`distributed.broadcast_from_main` and `distributed.any_process` returned in this process, for
values that differ between the processes (so their multi-process branch is the one that runs).
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from glcic_jax import distributed  # noqa: E402


def main(port: str, process_id: str, out_path: str) -> None:
    pid = int(process_id)
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=pid)
    assert jax.process_count() == 2
    mine = np.asarray([10.0 * (pid + 1), 0.5 + pid, -3.0 * pid], np.float32)
    result = {
        "process": jax.process_index(),
        "broadcast": distributed.broadcast_from_main(mine).tolist(),
        "any_only_1": distributed.any_process(pid == 1),
        "any_only_0": distributed.any_process(pid == 0),
        "any_none": distributed.any_process(False),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
