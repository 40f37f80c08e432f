"""Phase-1 ablations of the quickstart: held-out hole PSNR every N steps for config overrides.

  python benchmarks/phase1_ablation.py tag=NAME steps=300 every=50 [section.key=value ...]
      [train=photo1,photo2,...] [eval_images=64] [eval_holes=train] [grid=PATH.png]

Trains phase 1 only (the completion network on the hole MSE) of configs/quickstart.py with the
given overrides, scores the fixed held-out crops every `every` steps (the `eval_every` metric) and
writes /tmp/NAME.json. `train=` replaces the scikit-image training photos; `eval_images=N` scores
N held-out crops whatever the batch size (by default the config's num_eval_batches x batch_size,
so runs at different batch sizes would score different crops). The held-out holes are the
quickstart's (mask.* overrides change training only) unless `eval_holes=train`, which scores the
held-out crops with the overridden holes and data settings too (then compare a run with its own
baselines: the mean fill, OpenCV Telea and a fill with the mean colour of the 2 px around each
hole, printed first and stored in the JSON).

The runs in benchmarks/results/quickstart_ablation.json were made with an earlier form of this
script on commit 8b9f22b (the quickstart then had the old seven training photos and no colour
augmentation; "caug" there wrapped `augment` with the recolouring `data.color_augment` does
now, with gains in [0.6, 1] instead of [0.25, 1], and the mean pixel and the held-out crops
recoloured too), on the shared 2-core machine
while other jobs ran (wall times are not comparable; `cpu` is the process's CPU seconds).
On today's code, `data.color_augment=0 train=...` gives their uncoloured variants.
"""
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from glcic_jax import distributed, evaluate, input_pipeline  # noqa: E402
from glcic_jax import state as state_lib  # noqa: E402
from glcic_jax import steps as steps_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_config():
    spec = importlib.util.spec_from_file_location(
        "quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    steps_n, every = int(args.pop("steps", 300)), int(args.pop("every", 50))
    eval_images = int(args.pop("eval_images", 0))  # 0: the config's num_eval_batches x batch
    tag = args.pop("tag", "ablation")
    grid = args.pop("grid", "")  # a PNG of the final completions
    eval_holes = args.pop("eval_holes", "quickstart")  # or "train": mask.* overrides apply too
    if args.get("train"):
        from glcic_jax.data import scikit_image

        scikit_image.SKIMAGE_TRAIN = tuple(args.pop("train").split(","))
    c = quickstart_config()
    c.final_eval = False
    for key, value in args.items():
        node, (*path, last) = c, key.split(".")
        for part in path:
            node = node[part]
        old = node[last]
        node[last] = (value in ("1", "True", "true")) if isinstance(old, bool) else type(old)(value)
    c.schedule.tc, c.num_train_steps = steps_n + 10, steps_n + 20  # phase 1 throughout
    if eval_images:  # the same held-out crops whatever the batch size
        c.num_eval_batches = max(1, eval_images // c.batch_size)
    nets = state_lib.create_networks(c)
    mesh = distributed.make_mesh()
    t0 = time.time()
    mean_px = input_pipeline.compute_mean_pixel(c)
    steps = distributed.shard_steps(steps_lib.make_steps(c, nets), mesh)
    st = distributed.init_replicated(
        lambda: state_lib.create_state(c, nets, jax.random.PRNGKey(0), mean_px), mesh)
    c_eval = c.copy_and_resolve_references()
    if eval_holes != "train":  # the same held-out holes whatever mask.* overrides
        c_eval.mask = quickstart_config().mask
    held_out = evaluate.TrainingEval(c_eval, nets, mesh)
    data = input_pipeline.train_iterator(c, c.batch_size, 0, 0, 1)
    sharding = distributed.batch_sharded(mesh)
    base = evaluate.mean_metrics(evaluate.mean_fill(held_out.images, held_out.hole, mean_px),
                                 held_out.images, held_out.hole)["psnr_hole"]
    telea = evaluate.mean_metrics(
        evaluate.opencv_inpaint(held_out.images, held_out.hole, "telea"),
        held_out.images, held_out.hole)["psnr_hole"]
    from ring_fill import ring_fill

    ring = evaluate.mean_metrics(ring_fill(held_out.images, held_out.hole, 2),
                                 held_out.images, held_out.hole)["psnr_hole"]
    print(tag, len(held_out.images), "held-out crops; mean fill", round(base, 2), "Telea",
          round(telea, 2), "2-px ring mean", round(ring, 2), flush=True)
    cpu0, curve, mse = cpu_seconds(), [], []
    for s in range(1, steps_n + 1):
        st, m = steps.completion(st, distributed.global_batch(next(data), sharding))
        mse.append(float(m["mse"]))
        if s % every == 0:
            r = held_out(st)
            point = {"step": s, "psnr_hole": round(r["eval/psnr_hole"], 2),
                     "train_mse": float(np.mean(mse)), "cpu": round(cpu_seconds() - cpu0),
                     "wall": round(time.time() - t0)}
            mse = []
            print(tag, point, flush=True)
            curve.append(point)
    if grid:  # original | mean fill | network, the first 8 held-out crops, drawn large
        from PIL import Image

        from glcic_jax import summary

        fill = evaluate.mean_fill(held_out.images, held_out.hole, mean_px)
        Image.fromarray(summary.make_grid(held_out.images[:8], fill[:8],
                                          held_out.completions(st)[:8])).save(grid)
    with open(f"/tmp/{tag}.json", "w") as f:
        json.dump({"args": argv, "mean_fill": base, "telea": telea, "ring_mean": ring,
                   "curve": curve}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
