"""Host input-pipeline throughput: can the CPUs decode and augment images as fast as a step eats
them?

Writes N JPEGs that look like Places365-small's to a temporary folder (smooth random content plus
noise, shortest side 256, longest side 256..400, JPEG quality 75..95), then measures images/s of

* the folder source (`data.source='folder'`: PIL decode + random shortest-side resize in
  [256, 384] + 256x256 crop + flip, in a thread pool, no TensorFlow) through
  `input_pipeline.train_iterator` (its default worker count) and through the same
  `StreamIterator` with explicit worker counts (`--workers`);
* with TensorFlow and tensorflow-datasets importable (not on the GPU machine), the tf.data path
  of `input_pipeline` (`data/tf_datasets.stream`: tf decode + bicubic resize + crop + flip,
  AUTOTUNE), reading the same files through `tfds.ImageFolder` instead of a prepared tfds dataset;

and compares each with the step throughputs a training run needs: the targets (phase 1
2000 img/s, joint 1500 img/s) and, with `--steps-json`, the img/s measured by bench_steps.py.

The files sit in the page cache after being written, so this measures decode + augmentation, not
disk reads: a cold dataset on a network disk can be slower. Batches are timed after two warm-up
batches that also fill the prefetch queue (4 batches).

  python benchmarks/bench_input.py --out input.json
  python benchmarks/bench_input.py --smoke            # 16 tiny images, a few batches
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

import _harness  # benchmarks/_harness.py: puts the repository root on sys.path
from _harness import GOALS_IMG_S


def write_images(
    folder: str, n: int, short: int, long_max: int, seed: int = 0, threads: int = 8
) -> int:
    """n JPEGs in folder/train/places/ (the layout tfds.ImageFolder expects); returns bytes."""
    from PIL import Image

    out_dir = os.path.join(folder, "train", "places")
    os.makedirs(out_dir, exist_ok=True)

    def one(i: int) -> int:
        rng = np.random.default_rng([seed, i])
        long = int(rng.integers(short, long_max + 1))
        w, h = (long, short) if rng.random() < 0.7 else (short, long)  # mostly landscape
        # Smooth content: a coarse random grid upsampled bicubically, plus sensor-like noise.
        g = int(rng.integers(3, 12))
        coarse = rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
        img += rng.normal(0.0, rng.uniform(2.0, 10.0), img.shape)
        img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        path = os.path.join(out_dir, f"{i:06d}.jpg")
        img.save(path, quality=int(rng.integers(75, 96)))
        return os.path.getsize(path)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, range(n)))


def make_config(folder: str, smoke: bool):
    from glcic_jax import config_lib

    c = config_lib.base_config()
    if smoke:
        c = config_lib.shrink_to_tiny(c)
    c.data.source = "folder"
    c.data.path = folder
    return c


def time_iterator(it, batch: int, warmup: int, batches: int) -> dict:
    """`batches` batches timed back to back, after `warmup` untimed ones."""
    timing = _harness.time_calls(lambda: next(it), warmup, batches, repeats=1)
    dt = timing.times[0] * batches
    shape = timing.last.shape if batches else None
    return {
        "img_per_s": batch * batches / dt,
        "seconds": dt,
        "images": batch * batches,
        "batch_shape": list(shape) if shape else None,
    }


def bench_folder(config, batch: int, workers: list[int], warmup: int, batches: int) -> list[dict]:
    from glcic_jax import input_pipeline

    out = []
    # The trainer's entry point, with its default worker count (min(32, 2 x CPUs)).
    it = input_pipeline.train_iterator(config, batch)
    try:
        r = time_iterator(it, batch, warmup, batches)
    finally:
        it.close()
    out.append(dict(r, path="folder", workers=f"default ({min(32, (os.cpu_count() or 2) * 2)})"))
    print(f"folder  train_iterator default workers: {r['img_per_s']:8.1f} img/s", flush=True)
    for w in workers:
        source = input_pipeline.indexed_source(config, "train")
        it = input_pipeline.StreamIterator(source, config, batch, workers=w)
        try:
            r = time_iterator(it, batch, warmup, batches)
        finally:
            it.close()
        out.append(dict(r, path="folder", workers=w))
        print(
            f"folder  StreamIterator workers={w:<3d}:      {r['img_per_s']:8.1f} img/s", flush=True
        )
    return out


def bench_tfds(config, folder: str, batch: int, warmup: int, batches: int) -> dict:
    """The tf.data path of input_pipeline over the same files (tfds.ImageFolder builder)."""
    try:
        import tensorflow_datasets as tfds

        from glcic_jax import input_pipeline
        from glcic_jax.data import tf_datasets

        tf_datasets.import_tf()  # keeps TensorFlow off any GPU
    except Exception as e:  # noqa: BLE001  (optional path: report why it did not run)
        return {"path": "tfds", "skipped": f"TensorFlow / tfds not importable ({e})"}
    try:
        builder = tfds.ImageFolder(folder)
        original = tf_datasets.prepare_builder
        tf_datasets.prepare_builder = lambda cfg: builder  # same stream, files from the folder
        try:
            cfg = config.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.data.source = "tfds"
                cfg.data.shuffle_buffer = min(int(cfg.data.shuffle_buffer), 1000)
            it = input_pipeline.train_iterator(cfg, batch)
            r = time_iterator(it, batch, warmup, batches)
        finally:
            tf_datasets.prepare_builder = original
        print(f"tfds    tf.data AUTOTUNE:                {r['img_per_s']:8.1f} img/s", flush=True)
        return dict(r, path="tfds (tf.data over tfds.ImageFolder)", workers="AUTOTUNE")
    except Exception as e:  # noqa: BLE001  (optional path: report, go on)
        return {
            "path": "tfds",
            "error": f"{type(e).__name__}: {str(e)[:1000]}",
            "traceback": traceback.format_exc()[-3000:],
        }


def consumption(steps_json: str) -> list[dict]:
    """What the steps eat: the targets, plus measured img/s from a bench_steps.py JSON."""
    need = [{"what": f"target {k}", "img_per_s": v} for k, v in GOALS_IMG_S.items()]
    if steps_json and os.path.exists(steps_json):
        with open(steps_json) as f:
            report = json.load(f)
        for r in report.get("train", []):
            if "error" not in r and "img_per_s" in r:
                need.append(
                    {
                        "what": f"measured {r['step']} b{r['batch']} {r['dtype']}",
                        "img_per_s": r["img_per_s"],
                    }
                )
    return need


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument(
        "--workers",
        default="",
        help="comma-separated thread counts (default: 4, 8, 16, 32 capped at 4 x CPUs)",
    )
    p.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--no-tfds", action="store_true", help="skip the tf.data path")
    p.add_argument("--steps-json", default="", help="a bench_steps.py JSON to compare with")
    p.add_argument(
        "--dir",
        default="",
        help="folder for the JPEGs (default: a temp folder, removed afterwards)",
    )
    p.add_argument("--smoke", action="store_true", help="16 small images, batch 2, 2 batches")
    p.add_argument("--out", default="", help="JSON path (default: print only)")
    args = p.parse_args(argv)
    cpus = os.cpu_count() or 2
    if args.smoke:
        args.num_images, args.batch, args.batches, args.warmup = 16, 2, 2, 1
        args.workers = args.workers or "1,2"
    if not args.workers:
        args.workers = ",".join(str(w) for w in (4, 8, 16, 32) if w <= 4 * cpus)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    short, long_max = (40, 60) if args.smoke else (256, 400)
    folder = args.dir or tempfile.mkdtemp(prefix="glcic_bench_input_")
    report: dict = {
        "meta": _harness.run_meta(
            num_images=args.num_images,
            batch=args.batch,
            smoke=args.smoke,
            image_sides=[short, long_max],
            page_cache="warm (files just written)",
        ),
        "results": [],
    }
    try:
        t0 = time.perf_counter()
        nbytes = write_images(
            folder, args.num_images, short, long_max, threads=min(16, os.cpu_count() or 2)
        )
        report["meta"]["write_s"] = time.perf_counter() - t0
        report["meta"]["mean_jpeg_kib"] = nbytes / max(1, args.num_images) / 1024
        print(
            f"wrote {args.num_images} JPEGs ({report['meta']['mean_jpeg_kib']:.1f} KiB each) "
            f"in {report['meta']['write_s']:.1f} s to {folder}",
            flush=True,
        )
        config = make_config(folder, args.smoke)
        report["meta"]["augment"] = {
            k: int(config.data[k]) for k in ("image_size", "resize_min", "resize_max")
        }
        workers = _harness.csv_list(args.workers, int)
        report["results"] += bench_folder(config, args.batch, workers, args.warmup, args.batches)
        if not args.no_tfds:
            r = bench_tfds(config, folder, args.batch, args.warmup, args.batches)
            report["results"].append(r)
            if "skipped" in r or "error" in r:
                print(f"tfds    {r.get('skipped') or r.get('error')}", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)

    measured = [r for r in report["results"] if "img_per_s" in r]
    best = max(measured, key=lambda r: r["img_per_s"]) if measured else None
    report["best"] = best and {
        "path": best["path"],
        "workers": best["workers"],
        "img_per_s": best["img_per_s"],
    }
    report["headroom"] = []
    if best:
        for need in consumption(args.steps_json):
            ratio = best["img_per_s"] / need["img_per_s"]
            report["headroom"].append(dict(need, input_over_step=ratio))
            print(
                f"best input {best['img_per_s']:8.1f} img/s vs {need['what']:38s} "
                f"{need['img_per_s']:8.1f} img/s: {ratio:5.2f}x "
                f"{'(enough)' if ratio >= 1 else '(INPUT-BOUND)'}",
                flush=True,
            )
    if args.out:
        _harness.write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
