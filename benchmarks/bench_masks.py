"""What drawing the holes costs: mask generation alone, and within the phase-1 step.

  python benchmarks/bench_masks.py                         # 256x256, batch 96 (a GPU)
  python benchmarks/bench_masks.py --batch 8 --warmup 1 --iters 1 --repeats 3 \
      --out benchmarks/results/masks_cpu.json               # a CPU (see below)

1. `masks.sample_masks` jitted alone, per shape (`box`, `strokes`, `mixed`), at each batch of
   --mask_batches, at --size x --size.
2. The phase-1 completion step (the paper's networks unless --width) with `box` and with
   `strokes` holes at --batch, timed in alternation (box, strokes, box, ...) so that a busy
   machine slows both alike.

Reported: seconds per call (median of the repeats, and the min), and `strokes_fraction`: the
strokes' generation time at the step's batch over the strokes step's time (the share of a step
spent drawing its holes), plus the two steps' difference. On a CPU, the paper's step at batch 96
needs ~40 GB of activations, so the step is timed at a smaller --batch; the strokes alone are
also timed at batch 96 (--mask_batches) and `strokes_fraction_b96_step_scaled` sets them against
the step's time scaled to batch 96 (a CPU step costs in proportion to its batch).
"""

from __future__ import annotations

import statistics

import _harness

SHAPES = ("box", "strokes", "mixed")


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    p.add_argument("--size", type=int, default=256, help="image side (the paper's 256)")
    p.add_argument("--batch", type=int, default=96, help="phase-1 step batch (the paper's 96)")
    p.add_argument("--mask_batches", default="96", help="batches to time mask generation at "
                   "(the step's batch is added)")
    p.add_argument("--width", type=float, default=1.0, help="model.width (1.0 = the paper's)")
    p.add_argument("--no_step", action="store_true", help="time mask generation only")
    p.add_argument("--out", default="", help="write the JSON report here")
    _harness.add_timing_args(p)
    return p.parse_args(argv)


def _config(size: int, batch: int, width: float, shape: str):
    from glcic_jax import config_lib

    c = config_lib.base_config()
    c.data.image_size = size
    c.mask.local_size = size // 2  # the paper's 128 at 256, holes 96-128
    c.mask.hole_min = 3 * size // 8
    c.mask.hole_max = size // 2
    c.model.width = width
    c.batch_size = batch
    c.mask.shape = shape
    return c


def _summary(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from glcic_jax import masks, state, steps

    timing = dict(warmup=args.warmup, iters=args.iters, repeats=args.repeats)
    batches = sorted(set(_harness.csv_list(args.mask_batches, int)) | {args.batch})
    report = {"meta": _harness.run_meta(commit=_harness.git_commit(),
                                        device=str(jax.devices()[0].device_kind),
                                        size=args.size, step_batch=args.batch,
                                        width=args.width, **timing),
              "masks": {}, "step": {}}
    sample = jax.jit(masks.sample_masks, static_argnums=(1, 2, 3, 4))
    for shape in SHAPES:
        spec = masks.MaskSpec.from_config(_config(args.size, args.batch, args.width, shape).mask)
        for batch in batches:
            keys = iter(jax.random.split(jax.random.PRNGKey(0), 10_000))
            t = _harness.time_calls(lambda: sample(next(keys), batch, args.size, args.size, spec),
                                    wait=jax.block_until_ready, **timing)
            report["masks"][f"{shape}/b{batch}"] = _summary(t.times)
            print(f"masks {shape:8s} batch {batch:3d}: {statistics.median(t.times) * 1e3:9.1f} "
                  f"ms", flush=True)
    if not args.no_step:
        rng = np.random.default_rng(0)
        images = jnp.asarray(rng.integers(0, 256, (args.batch, args.size, args.size, 3),
                                          dtype=np.uint8))
        runs = {}
        for shape in ("box", "strokes"):
            cfg = _config(args.size, args.batch, args.width, shape)
            nets = state.create_networks(cfg)
            st = state.create_state(cfg, nets, jax.random.PRNGKey(0),
                                    jnp.asarray(_harness.MEAN_PIXEL))
            fn = steps.make_steps(cfg, nets, donate=False).completion
            for _ in range(max(1, args.warmup)):  # compile and warm up
                jax.block_until_ready(fn(st, images))
            runs[shape] = (fn, st)
        times = {"box": [], "strokes": []}
        for _ in range(args.repeats):  # alternated, so that other load slows both alike
            for shape, (fn, st) in runs.items():
                t = _harness.time_calls(lambda: fn(st, images), warmup=0, iters=args.iters,
                                        repeats=1, wait=jax.block_until_ready)
                times[shape] += t.times
        for shape, ts in times.items():
            report["step"][shape] = _summary(ts)
            print(f"phase-1 step {shape:8s} batch {args.batch}: {statistics.median(ts):8.2f} s",
                  flush=True)
        strokes_mask = report["masks"][f"strokes/b{args.batch}"]["median_s"]
        strokes_step = report["step"]["strokes"]["median_s"]
        report["strokes_fraction"] = strokes_mask / strokes_step
        report["step_difference_s"] = strokes_step - report["step"]["box"]["median_s"]
        for batch in batches:  # the strokes at another batch against the step scaled to it
            if batch != args.batch:
                scaled = strokes_step * batch / args.batch
                report[f"strokes_fraction_b{batch}_step_scaled"] = (
                    report["masks"][f"strokes/b{batch}"]["median_s"] / scaled)
        print(f"strokes: {100 * report['strokes_fraction']:.2f} % of the phase-1 step "
              f"(strokes step - box step: {report['step_difference_s']:+.2f} s)")
        for key, value in report.items():
            if key.startswith("strokes_fraction_b"):
                print(f"{key}: {100 * value:.2f} %")
    if args.out:
        _harness.write_json(args.out, report)
        print(f"Wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
