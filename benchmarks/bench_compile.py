"""What a training run compiles before its steps run, on the CPU: each jit's compile time with the
compiler options the code gives it, and with XLA's defaults beside it, for the jits that run
once or a few times.

  python benchmarks/bench_compile.py [--trains quickstart] [--repeats 3] [--out FILE]

A training run compiles the state's initialisation (`state.create_state`, once), its training
steps (phase 1, the discriminator's, the joint one), the sample grids' jit (`Steps.evaluate`,
every `sample_every` steps) and the held-out completion (`evaluate.TrainingEval`, every
`eval_every` steps; `complete` compiles the same function for a user's photo). The steps run
thousands of times, so their options are chosen by how fast they run
(`models.compiler_options`) and are only timed here. For the others
(`conv_forms.run_once_compiler_options` and the inference options), each repeat compiles both
ways in turn, with JAX's in-memory caches cleared before each compilation, and the outputs of
the two are compared: the largest absolute difference over every array (0 when bit for bit
the same).

`eval_holes`: drawing --mode=eval's six fixed mask sets (`evaluate.mask_sets`, at the
settings' image size and held-out count) with the compiled sampler of `masks.fixed_eval_masks`
against `masks.sample_masks` called op by op (what it did before), whole seconds per draw, and
the number of hole pixels that differ.

Each row: the median over --repeats of the seconds to trace and lower, and to compile.
"""

from __future__ import annotations

import functools
import statistics
import time

import _harness
import bench_cpu
import numpy as np

KINDS = ("init", "evaluate", "complete", "eval_holes", "completion", "discriminator",
         "joint")


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    bench_cpu.add_trains_arg(p)
    p.add_argument("--only", default=",".join(KINDS), help="among " + ",".join(KINDS))
    p.add_argument("--repeats", type=int, default=3, help="compilations per jit and options")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def _jits(config, kinds):
    """{kind: (jit with our options, jit with XLA's defaults or None, its arguments)}."""
    import jax
    import jax.numpy as jnp

    from glcic_jax import conv_forms, inference, masks, models, state as state_lib
    from glcic_jax import steps as steps_lib

    nets = state_lib.create_networks(config)
    width = float(config.model.width)
    size, batch = int(config.data.image_size), int(config.batch_size)
    st = state_lib.create_state(config, nets, jax.random.PRNGKey(0), _harness.MEAN_PIXEL)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    settings = steps_lib.StepSettings.from_config(config)
    m = masks.sample_masks(jax.random.PRNGKey(1), batch, size, size, settings.mask)
    made = steps_lib.make_steps(config, nets, donate=False)
    out = {}
    if "init" in kinds:
        init = state_lib.state_initializer(config, nets, jax.random.PRNGKey(0),
                                           _harness.MEAN_PIXEL)
        out["init"] = (jax.jit(init, compiler_options=conv_forms.run_once_compiler_options()),
                       jax.jit(init), ())
    if "evaluate" in kinds:  # the sample grids' own jit, and its function under XLA's defaults
        out["evaluate"] = (made.evaluate, jax.jit(made.evaluate.__wrapped__),
                           (st, images, m.mask, m.corners))
    if "complete" in kinds:  # the held-out completion's function, and `complete`'s
        fn = functools.partial(inference.complete_images, nets.generator,
                               input_norm=settings.input_norm)
        args = (steps_lib._variables(st.g), jnp.asarray(images, jnp.float32) / 255, m.mask,
                st.mean_pixel)
        out["complete"] = (
            jax.jit(fn, compiler_options=models.compiler_options(width, inference=True)),
            jax.jit(fn), args)
    for kind in ("completion", "discriminator", "joint"):
        if kind in kinds:
            out[kind] = (getattr(made, kind), None, (st, images))
    return out


def _compile(fn, args) -> tuple[float, float, object]:
    import jax

    jax.clear_caches()
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, compiled


def _max_difference(a, b) -> float:
    import jax

    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                for x, y in zip(leaves_a, leaves_b) if np.size(x)), default=0.0)


def _eval_holes(config, repeats: int) -> dict:
    """`evaluate.mask_sets` with the compiled sampler and op by op, in turns: seconds, and the
    hole pixels that differ."""
    import jax

    from glcic_jax import evaluate, masks

    size, num = int(config.data.image_size), evaluate.num_eval_images(config)
    compiled = masks._eval_sampler

    def op_by_op():
        return lambda key, n, h, w, spec, areas: masks.sample_masks(
            key, n, h, w, spec._replace(area_min=float(areas[0]), area_max=float(areas[1])))

    seconds, holes = {"ours": [], "op_by_op": []}, {}
    try:
        for _ in range(repeats):
            for name, sampler in (("ours", compiled), ("op_by_op", op_by_op)):
                masks._eval_sampler = sampler
                compiled.cache_clear()
                jax.clear_caches()
                t0 = time.perf_counter()
                holes[name] = evaluate.mask_sets(config, num, size, size)
                seconds[name].append(time.perf_counter() - t0)
    finally:
        masks._eval_sampler = compiled
    differ = sum(int(np.sum(holes["ours"][k] != holes["op_by_op"][k])) for k in holes["ours"])
    return {name: {"seconds": statistics.median(v), "runs_s": v} for name, v in seconds.items()} | {
        "differing_hole_pixels": differ, "sets": len(holes["ours"]), "images": num}


def main(argv=None) -> None:
    args = parse_args(argv)
    kinds = _harness.csv_list(args.only)
    if set(kinds) - set(KINDS) or args.repeats < 1:
        raise SystemExit(f"--only takes {','.join(KINDS)}; --repeats at least 1")
    import jax

    if jax.default_backend() != "cpu":
        raise SystemExit("bench_compile.py measures the CPU's compilations (JAX_PLATFORMS=cpu)")
    jits = _jits(bench_cpu.train_config(args.trains), set(kinds) - {"eval_holes"})
    report = {"meta": _harness.run_meta(commit=_harness.git_commit(), args=vars(args)),
              "jits": {}}
    print(f"{'jit':14s} {'options':9s} {'lower s':>8s} {'compile s':>10s} {'max |diff|':>11s}")
    for kind in kinds:
        if kind == "eval_holes":
            row = report["jits"][kind] = _eval_holes(bench_cpu.train_config(args.trains),
                                                     args.repeats)
            for name in ("ours", "op_by_op"):
                shown = f"{row['differing_hole_pixels']:11d}" if name == "op_by_op" else ""
                print(f"{kind:14s} {name:9s} {'':8s} {row[name]['seconds']:10.2f} {shown}",
                      flush=True)
            continue
        ours, defaults, call_args = jits[kind]
        sides = {"ours": ours} if defaults is None else {"ours": ours, "defaults": defaults}
        times = {name: ([], []) for name in sides}
        outputs = {}
        for _ in range(args.repeats):
            for name, fn in sides.items():
                lower_s, compile_s, compiled = _compile(fn, call_args)
                times[name][0].append(lower_s)
                times[name][1].append(compile_s)
                if kind in ("init", "evaluate", "complete") and name not in outputs:
                    outputs[name] = jax.block_until_ready(compiled(*call_args))
        difference = (_max_difference(outputs["ours"], outputs["defaults"])
                      if len(outputs) == 2 else None)
        row = {}
        for name, (lowers, compiles) in times.items():
            row[name] = {"lower_s": statistics.median(lowers),
                         "compile_s": statistics.median(compiles), "compile_runs_s": compiles}
            shown = "" if difference is None or name == "ours" else f"{difference:11.2e}"
            print(f"{kind:14s} {name:9s} {row[name]['lower_s']:8.2f} "
                  f"{row[name]['compile_s']:10.2f} {shown}", flush=True)
        if difference is not None:
            row["max_abs_difference"] = difference
        report["jits"][kind] = row
    if args.out:
        _harness.write_json(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
