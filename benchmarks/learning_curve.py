"""Learning curve of a config: held-out hole PSNR against training steps and wall time.

Trains a config (by default the quickstart) from scratch with `eval_every` held-out metrics
(`evaluate.TrainingEval`: the fixed held-out images and holes of `--mode=eval`), records each
evaluation with its step, phase and wall-clock seconds since the start (compilation included),
adds the baselines of the same images (mean-pixel fill, OpenCV Telea and Navier-Stokes) and
writes

  OUT.json   the curve, the baselines, the command, the config, the machine (CPU, load averages)
  OUT.png    hole PSNR against steps, the baselines as horizontal lines (drawn with PIL: no
             matplotlib needed)

  python benchmarks/learning_curve.py --config=configs/quickstart.py --workdir=/tmp/lc \\
      --out=benchmarks/results/learning_curve_quickstart [--config.eval_every=100 ...]

The workdir must be new (the curve starts at step 0). Load averages are recorded before and after:
wall-clock figures from a machine busy with other work are pessimistic; each point also records the
process's CPU seconds, which divided by the cores estimate a quiet machine's wall time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time

import _harness  # also puts the repository root on sys.path
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Config to train.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "New, empty working directory for the run.")
flags.DEFINE_string("out", "benchmarks/results/learning_curve_quickstart",
                    "Output path without extension (.json and .png are written).")
flags.DEFINE_integer("eval_every", 0, "Evaluate every N steps (0 = the config's eval_every, or "
                     "num_train_steps // 10 when that is 0).")
flags.mark_flags_as_required(["workdir"])


def machine_info() -> dict:
    import jax

    return {**_harness.cpu_info(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "device": str(jax.devices()[0].platform)}


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): on a busy machine, CPU seconds / the
    number of cores estimates the wall time the same work takes on a quiet one."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def draw_plot(path: str, curve: list[dict], baselines: dict[str, float], title: str) -> None:
    """Hole PSNR (dB) against step, baselines dashed; a small PNG drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 640, 400, 56, 150, 34, 44
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps = [p["step"] for p in curve]
    values = [p["psnr_hole"] for p in curve] + list(baselines.values())
    y_lo, y_hi = int(min(values)) - 1, int(max(values)) + 2
    x_hi = max(steps) or 1

    def xy(step, db):
        x = left + (w - left - right) * step / x_hi
        y = top + (h - top - bottom) * (1 - (db - y_lo) / (y_hi - y_lo))
        return x, y

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for db in range(y_lo, y_hi + 1, max(1, (y_hi - y_lo) // 8)):
        _, y = xy(0, db)
        d.line([left - 4, y, left, y], fill="black")
        d.text((left - 30, y - 6), f"{db}", fill="black")
    for k in range(6):
        step = round(x_hi * k / 5)
        x, _ = xy(step, y_lo)
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 12, h - bottom + 8), f"{step}", fill="black")
    d.text((left, h - 16), "training step", fill="black")
    d.text((4, 4), title, fill="black")
    d.text((4, 18), "hole PSNR (dB), held-out photos", fill="black")
    colors = {"mean_fill": (150, 150, 150), "telea": (0, 120, 0), "navier_stokes": (200, 120, 0)}
    label_y = -1e9  # baselines' labels, top to bottom, kept 12 px apart (close values overlap)
    for name, db in sorted(baselines.items(), key=lambda kv: -kv[1]):
        _, y = xy(0, db)
        color = colors.get(name, (100, 100, 100))
        for x in range(left, w - right, 8):
            d.line([x, y, min(x + 4, w - right), y], fill=color, width=2)
        label_y = max(y - 6, label_y + 12)
        d.text((w - right + 6, label_y), f"{name} {db:.1f}", fill=color)
    pts = [xy(p["step"], p["psnr_hole"]) for p in curve]
    d.line(pts, fill=(0, 60, 200), width=2)
    for x, y in pts:
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 60, 200))
    if curve:
        x, y = pts[-1]
        d.text((w - right + 6, y + 6), f"network {curve[-1]['psnr_hole']:.1f}",
               fill=(0, 60, 200))
    img.save(path)


def main(argv) -> None:
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from glcic_jax import evaluate, input_pipeline, steps as steps_lib, summary, train

    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = FLAGS.config
    every = FLAGS.eval_every or int(config.eval_every) or max(1, config.num_train_steps // 10)
    with config.unlocked():
        config.eval_every = every
        if "final_eval" in config:
            config.final_eval = False  # the baselines are computed below
    if os.path.exists(FLAGS.workdir) and os.listdir(FLAGS.workdir):
        sys.exit(f"error: --workdir {FLAGS.workdir} is not empty; the curve starts at step 0.")

    load_before = [round(x, 2) for x in os.getloadavg()]
    t0, cpu0 = time.time(), cpu_seconds()
    # Baselines on the very same held-out images and holes as TrainingEval (computed first, so
    # that a run stopped early still leaves a complete JSON and plot of the steps it made).
    n = evaluate.num_eval_images(config)
    images = input_pipeline.eval_images(config, n)
    hole = evaluate.eval_masks(config, n, *images.shape[1:3])
    mean_px = input_pipeline.mean_pixel(config, FLAGS.workdir)  # cached there for training
    outs = {"mean_fill": evaluate.mean_fill(images, hole, mean_px),
            "telea": evaluate.opencv_inpaint(images, hole, "telea"),
            "navier_stokes": evaluate.opencv_inpaint(images, hole, "navier_stokes")}
    baselines = {k: evaluate.mean_metrics(v, images, hole) for k, v in outs.items()}
    curve: list[dict] = []
    payload = {
        "command": " ".join(["python"] + sys.argv),
        "config": json.loads(config.to_json_best_effort()),
        "machine": machine_info(),
        "load_avg_before": load_before,
        "num_eval_images": n,
        "hole_fraction": float(hole.mean()),
        "curve": curve,
        "baselines": baselines,
        "finished": False,
    }

    def write(finished: bool) -> None:
        payload.update(finished=finished, total_seconds=round(time.time() - t0, 1),
                       load_avg_after=[round(x, 2) for x in os.getloadavg()])
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out + ".json.tmp", "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(FLAGS.out + ".json.tmp", FLAGS.out + ".json")
        minutes = payload["total_seconds"] / 60
        title = (f"{os.path.basename(FLAGS.out)}: {config.data.image_size}px, width "
                 f"{config.model.get('width', 1.0)}, batch {config.batch_size}, "
                 f"{minutes:.1f} min{'' if finished else ' (unfinished)'}")
        draw_plot(FLAGS.out + ".png", curve, {k: v["psnr_hole"] for k, v in baselines.items()},
                  title)

    class RecordingWriter(summary.Writer):
        """Records every held-out evaluation (the `eval/*` scalars) with its wall time."""

        def scalars(self, step, values):
            if any(k.startswith("eval/") for k in values):
                point = {"step": int(step), "phase": steps_lib.phase_of(step - 1, config),
                         "seconds": round(time.time() - t0, 1),
                         "cpu_seconds": round(cpu_seconds() - cpu0, 1),
                         "load_avg": [round(x, 2) for x in os.getloadavg()]}
                point.update({k[5:]: float(v) for k, v in values.items()})
                curve.append(point)
                logging.info("curve: %s", point)
                write(False)
            super().scalars(step, values)

    summary.Writer = RecordingWriter  # train.py builds its writer through this attribute
    train.train_and_evaluate(config, FLAGS.workdir)
    write(True)
    print(f"Wrote {FLAGS.out}.json and {FLAGS.out}.png ({payload['total_seconds']:.0f} s, load "
          f"{load_before} -> {payload['load_avg_after']}).")
    for p in curve:
        print(f"step {p['step']:6d} phase {p['phase']} {p['seconds']:8.1f} s  hole PSNR "
              f"{p['psnr_hole']:.2f} dB")
    for k, v in baselines.items():
        print(f"{k:14s} hole PSNR {v['psnr_hole']:.2f} dB")


if __name__ == "__main__":
    app.run(main)
