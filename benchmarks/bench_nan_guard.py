"""Compile time of the training steps with and without the nan_policy='skip' guard.

  python benchmarks/bench_nan_guard.py [--config=tiny|quickstart] [--out=FILE.json]

For each policy ('stop': no guard; 'skip': the state is kept on a non-finite update, see
`steps._guard`) and each of the completion and joint steps: seconds to lower and to compile, with
the persistent compilation cache off, each policy in a fresh subprocess (XLA keeps in-process
caches). It measured the defect `steps._guard` fixes: a `jnp.where` per state leaf made XLA's CPU
compile 5-7x slower than the unguarded step; one `lax.cond` over the state costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _harness

POLICIES = ("stop", "skip")
KINDS = ("completion", "joint")


def measure(config_name: str, policy: str) -> dict:
    """In this process: lower and compile each step kind once, return the seconds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import quickstart
    from glcic_jax import state, steps

    config = quickstart.get_config("tiny" if config_name == "tiny" else None)
    config.nan_policy = policy
    size = int(config.data.image_size)
    nets = state.create_networks(config)
    images = jnp.asarray(np.random.default_rng(0).uniform(
        size=(int(config.batch_size), size, size, 3)).astype(np.float32))
    st = state.create_state(config, nets, jax.random.PRNGKey(0), jnp.full((3,), 0.5))
    fns = steps.make_steps(config, nets, donate=False)
    out = {}
    for kind in KINDS:
        t0 = time.perf_counter()
        lowered = getattr(fns, kind).lower(st, images)
        t1 = time.perf_counter()
        lowered.compile()
        out[kind] = {"lower_s": round(t1 - t0, 2), "compile_s": round(time.perf_counter() - t1, 2)}
    return out


def main() -> None:
    p = _harness.parser(__doc__)
    p.add_argument("--config", choices=("tiny", "quickstart"), default="tiny")
    p.add_argument("--out", default="")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # a policy, in a subprocess
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.child)))
        return
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false",
               JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), TF_CPP_MIN_LOG_LEVEL="2")
    results = {}
    for policy in POLICIES:
        proc = subprocess.run([sys.executable, __file__, f"--config={args.config}",
                               f"--child={policy}"], env=env, capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            sys.exit(f"error: the {policy} measurement failed:\n{proc.stderr[-3000:]}")
        results[policy] = json.loads(proc.stdout.strip().splitlines()[-1])
        for kind, t in results[policy].items():
            print(f"{policy:5s} {kind:10s} lower {t['lower_s']:6.2f} s  compile "
                  f"{t['compile_s']:6.2f} s", flush=True)
    report = {"meta": _harness.run_meta(config=args.config, commit=_harness.git_commit(),
                                        command=" ".join([sys.executable] + sys.argv)),
              "results": results}
    if args.out:
        _harness.write_json(args.out, report)
        print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
