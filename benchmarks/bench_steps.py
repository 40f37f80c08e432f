"""Training-step and inference throughput of glcic_jax, optionally against a PyTorch reference.

One command measures everything the throughput issue asks for on the device that JAX finds:

  python benchmarks/bench_steps.py --torch --input --out $OUT/h100.json

* the phase-1 step (`steps.completion`) and the joint step (`steps.joint`) at the paper's
  configuration (`config_lib.base_config()`: 256x256 images, 128 local crop, holes 96..128,
  Adadelta), for each batch size (`--batch-sizes`, default 32,96) and activation dtype
  (`--dtypes`, default float32,bfloat16): median step time, img/s, achieved TFLOP/s against the
  analytic FLOP model in `flops.py`, peak device memory, XLA's own FLOP and memory estimates,
  compile time;
* inference (`steps.complete`) on one 512x512 and one 1024x1024 image per dtype;
* with `--torch`, `torch_reference.py` (the same networks and steps in PyTorch) in a subprocess,
  and the ratios ours / PyTorch;
* with `--input`, `bench_input.py` (the host input pipeline) in a subprocess, compared with the
  step throughputs measured here;
* the projected wall time of the paper's schedule (90k + 10k + 400k steps at batch 96).

Each configuration runs in its own subprocess (`--isolate`, the default except with `--smoke`) so
that the device's peak-memory counter belongs to that configuration alone and an out-of-memory
configuration does not end the run. Results are written to the JSON file after every
configuration, so a run cut short keeps what it measured.

`--smoke` runs a tiny version (32x32 images, batch 2, one or two iterations) on whatever device is
present, in one process: a check that the script works, not a measurement.

Only this script's workers import JAX; the driver does not touch the device (JAX would otherwise
reserve most of the GPU memory that the workers and PyTorch need).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import _harness  # benchmarks/_harness.py: puts the repository root on sys.path
import flops  # benchmarks/flops.py: pure Python
from _harness import GOALS_IMG_S, HERE, MEAN_PIXEL, ROOT, csv_list

RESULT_MARKER = "BENCH_RESULT_JSON "

# The baselines the throughput issue quotes (its goals are _harness.GOALS_IMG_S).
ISSUE_BASELINES_IMG_S = {
    "torch_fp32_nchw": {"completion": 417.0, "joint": 300.0},
    "torch_bf16_channels_last": {"completion": 1033.0, "joint": 650.0},
    "naive_flax_bf16": {"completion": 1080.0},
}
STEP_NAMES = ("completion", "discriminator", "joint")


# ----------------------------------------------------------------------------------------------
# Helpers shared by the driver and the workers


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def make_config(opts: dict, batch: int, dtype: str):
    """The paper's config (or the `:tiny` one with --smoke) at a batch size and activation dtype."""
    try:
        from glcic_jax import config_lib
    except ImportError as e:
        if "ml_collections" in str(e):
            raise SystemExit(
                "glcic_jax.config_lib needs ml-collections, which this Python lacks. Carry its "
                "wheel (pure Python, see benchmarks/README.md): pip install --no-deps --target "
                "/tmp/site .whl/ml_collections-*.whl && export PYTHONPATH=/tmp/site"
            ) from e
        raise
    c = config_lib.base_config()
    if opts["smoke"]:
        c = config_lib.shrink_to_tiny(c)
    c.batch_size = int(batch)
    c.model.dtype = dtype
    config_lib.validate(c)
    return c


# ----------------------------------------------------------------------------------------------
# Worker: one configuration, in this process


def _device_info() -> dict:
    import jax

    d = jax.devices()[0]
    info = {"platform": d.platform, "device_kind": d.device_kind, "num_devices": jax.device_count()}
    try:
        import flax
        import jaxlib
        import optax

        info["versions"] = {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
        }
    except (ImportError, AttributeError):  # versions are informative only
        pass
    return info


def _peak_bytes() -> dict:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats)
        stats = None
    if not stats:
        return {"peak_bytes_in_use": None}
    return {
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "bytes_limit": stats.get("bytes_limit"),
    }


def _mfu(tflop_per_s: float, dtype: str) -> float | None:
    """Achieved / spec-sheet dense peak (flops.DENSE_PEAK_TFLOPS), None for unknown devices."""
    import jax

    peak = flops.dense_peak_tflops(jax.devices()[0].device_kind, dtype)
    return tflop_per_s / peak if peak else None


def _xla_analysis(compiled) -> dict:
    """XLA's own per-call FLOP count and buffer sizes (None where the backend has none)."""
    out: dict = {"xla_flops": None, "xla_memory": None}
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else None
        if cost and "flops" in cost:
            out["xla_flops"] = float(cost["flops"])
    except Exception:  # noqa: BLE001, S110  (informative only; not every backend has it)
        pass
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            out["xla_memory"] = {
                k: int(getattr(mem, k))
                for k in dir(mem)
                if k.endswith("_in_bytes") and isinstance(getattr(mem, k), int)
            }
    except Exception:  # noqa: BLE001, S110  (informative only)
        pass
    return out


def _timed(fn, warmup: int, iters: int, repeats: int) -> list[float]:
    """Seconds per call (`_harness.time_calls`, at least one warm-up call, JAX's asynchronous
    dispatch waited for with `jax.block_until_ready`). `fn()` must return something to block on."""
    import jax

    return _harness.time_calls(fn, max(1, warmup), iters, repeats, jax.block_until_ready).times


def run_train_job(job: dict, opts: dict) -> dict:
    """Time one training step kind at one batch size and dtype."""
    import jax
    import numpy as np

    from glcic_jax import models
    from glcic_jax import state as state_lib
    from glcic_jax import steps as steps_lib

    flops.check_against_package()  # the analytic model describes these networks
    step, batch, dtype = job["step"], int(job["batch"]), job["dtype"]
    config = make_config(opts, batch, dtype)
    size, local = int(config.data.image_size), int(config.mask.local_size)
    nets = state_lib.create_networks(config)
    st = state_lib.create_state(config, nets, jax.random.PRNGKey(0), MEAN_PIXEL)
    g_params, d_params = models.count_params(st.g.params), models.count_params(st.d.params)
    fns = steps_lib.make_steps(config, nets, donate=True)

    rng = np.random.default_rng(0)
    host = [rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for _ in range(2)]
    put = jax.device_put
    path = "steps.make_steps (single device)"
    try:  # the trainer's path: steps pinned to (replicated state, batch split over devices)
        from glcic_jax import distributed

        mesh = distributed.make_mesh()
        fns = distributed.shard_steps(fns, mesh)
        st = jax.device_put(st, distributed.replicated(mesh))
        sharding = distributed.batch_sharded(mesh)

        def put(x):
            return jax.device_put(x, sharding)

        path = f"distributed.shard_steps over {mesh.size} device(s)"
    except (ImportError, AttributeError):  # a package without distributed.py
        pass
    fn = getattr(fns, step)
    on_device = put(host[0])

    t0 = time.perf_counter()
    compiled = fn.lower(st, on_device).compile()
    compile_s = time.perf_counter() - t0
    analysis = _xla_analysis(compiled)

    box = {"state": st, "i": 0}

    def one():
        # --feed host: a fresh host batch every step (the transfer a training loop pays).
        images = put(host[box["i"] % 2]) if opts["feed"] == "host" else on_device
        box["i"] += 1
        box["state"], metrics = compiled(box["state"], images)
        return box["state"], metrics

    times = _timed(one, opts["warmup"], opts["iters"], opts["repeats"])
    _, metrics = one()
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    jax.block_until_ready(box["state"])

    step_s = statistics.median(times)
    model = flops.step_flops(size, local)[step]
    res = {
        "kind": "train",
        "step": step,
        "batch": batch,
        "dtype": dtype,
        "image_size": size,
        "local_size": local,
        "feed": opts["feed"],
        "path": path,
        "step_ms_median": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "img_per_s": batch / step_s,
        "gflop_per_img_exact": model["exact"] / 1e9,
        "gflop_per_img_issue_3x": model["issue_3x"] / 1e9,
        "tflop_per_s": model["exact"] * batch / step_s / 1e12,
        "tflop_per_s_issue_3x": model["issue_3x"] * batch / step_s / 1e12,
        "mfu_vs_dense_peak": _mfu(model["exact"] * batch / step_s / 1e12, dtype),
        "compile_s": compile_s,
        "params": {"completion": g_params, "discriminator": d_params},
        "metrics_finite": all(math.isfinite(v) for v in metrics.values()),
        "iters": opts["iters"],
        "repeats": opts["repeats"],
        "warmup": opts["warmup"],
    }
    res.update(analysis)
    if analysis["xla_flops"]:
        res["xla_gflop_per_img"] = analysis["xla_flops"] / batch / 1e9
    res.update(_peak_bytes())
    expected_g = flops.completion_params()
    expected_d = flops.discriminator_params(size, local)
    if (g_params, d_params) != (expected_g, expected_d):
        res["param_mismatch"] = {"expected": [expected_g, expected_d], "got": [g_params, d_params]}
    return res


def run_inference_job(job: dict, opts: dict) -> dict:
    """Latency of steps.complete on one image of each size (running BatchNorm statistics)."""
    import jax
    import numpy as np

    from glcic_jax import state as state_lib
    from glcic_jax import steps as steps_lib

    dtype = job["dtype"]
    config = make_config(opts, 1, dtype)
    nets = state_lib.create_networks(config)
    st = state_lib.create_state(config, nets, jax.random.PRNGKey(0), MEAN_PIXEL)
    g_vars = {"params": st.g.params, "batch_stats": st.g.batch_stats}
    complete = steps_lib.make_steps(config, nets, donate=False).complete
    rng = np.random.default_rng(0)
    out = []
    for size in job["sizes"]:
        image = jax.device_put(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))
        mask = np.zeros((1, size, size, 1), np.float32)
        mask[:, size // 4 : size // 2, size // 3 : size // 3 + size // 4] = 1.0  # one hole
        mask = jax.device_put(mask)
        t0 = time.perf_counter()
        compiled = complete.lower(g_vars, image, mask, st.mean_pixel).compile()
        compile_s = time.perf_counter() - t0
        # Latency: every call waits for its result (iters=1 per repeat).
        call = functools.partial(compiled, g_vars, image, mask, st.mean_pixel)
        times = _timed(call, opts["warmup"], 1, max(3, opts["iters"]))
        lat = statistics.median(times)
        f = flops.inference_flops(size, size)
        res = {
            "kind": "inference",
            "dtype": dtype,
            "size": size,
            "batch": 1,
            "latency_ms_median": lat * 1e3,
            "latency_ms_min": min(times) * 1e3,
            "img_per_s": 1.0 / lat,
            "gflop_per_img": f / 1e9,
            "tflop_per_s": f / lat / 1e12,
            "mfu_vs_dense_peak": _mfu(f / lat / 1e12, dtype),
            "compile_s": compile_s,
        }
        res.update(_xla_analysis(compiled))
        res.update(_peak_bytes())
        out.append(res)
    return {"kind": "inference_group", "results": out}


def run_job(job: dict, opts: dict) -> dict:
    t0 = time.perf_counter()
    try:
        if job["kind"] == "train":
            res = run_train_job(job, opts)
        else:
            res = run_inference_job(job, opts)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001  (report and go on with the next configuration)
        res = dict(
            job,
            error=f"{type(e).__name__}: {str(e)[:2000]}",
            traceback=traceback.format_exc()[-4000:],
        )
    res["device"] = _device_info()
    res["wall_s"] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------------------
# Driver


def _run_isolated(job: dict, opts: dict, timeout: float) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        json.dumps({"job": job, "opts": opts}),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), check=False
        )
    except subprocess.TimeoutExpired:
        return dict(job, error=f"timed out after {timeout:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return dict(
        job,
        error=f"worker exited {proc.returncode} without a result",
        stderr_tail=proc.stderr[-4000:],
    )


def _describe(res: dict) -> str:
    if res.get("kind") == "train":
        head = f"{res['step']:13s} b{res['batch']:<4d} {res['dtype']:9s}"
        if "error" in res:
            return f"{head} FAILED: {res['error'][:300]}"
        return (
            f"{head} {res['img_per_s']:8.1f} img/s  {res['tflop_per_s']:7.4g} TFLOP/s  "
            f"step {res['step_ms_median']:8.2f} ms  peak {_gib(res.get('peak_bytes_in_use'))}"
            f"  compile {res['compile_s']:.1f} s"
        )
    if res.get("kind") == "inference":
        head = f"complete      {res['size']}x{res['size']} {res['dtype']:9s}"
        if "error" in res:
            return f"{head} FAILED: {res['error'][:300]}"
        return (
            f"{head} {res['latency_ms_median']:8.2f} ms  {res['tflop_per_s']:7.4g} TFLOP/s  "
            f"peak {_gib(res.get('peak_bytes_in_use'))}  compile {res['compile_s']:.1f} s"
        )
    return json.dumps(res)[:300]


def _projection(train: list[dict], schedule: dict, batch: int) -> list[dict]:
    """Wall time of the paper's schedule from measured step times, per dtype (and per backend)."""
    out = []
    by = {}
    for r in train:
        if "error" not in r and r.get("batch") == batch:
            by.setdefault(r["dtype"], {})[r["step"]] = r["img_per_s"]
    for dtype, ips in sorted(by.items()):
        if "completion" not in ips or "joint" not in ips:
            continue
        p2 = ips.get("discriminator", ips["joint"])  # phase 2 is cheaper; joint bounds it
        tc, td, tj = (
            schedule["tc"],
            schedule["td"],
            schedule["total"] - schedule["tc"] - schedule["td"],
        )
        secs = batch * (tc / ips["completion"] + td / p2 + tj / ips["joint"])
        out.append(
            {
                "dtype": dtype,
                "batch": batch,
                "hours": secs / 3600,
                "phase2_from": "discriminator" if "discriminator" in ips else "joint",
                "img_per_s": ips,
            }
        )
    return out


def _ratios(train: list[dict], torch_results: list[dict]) -> list[dict]:
    """ours / PyTorch img/s for matching (step, batch): like-for-like dtypes and best vs best."""
    pairs = {"float32": "fp32_nchw", "bfloat16": "bf16_channels_last"}
    ours = {(r["step"], r["batch"], r["dtype"]): r["img_per_s"] for r in train if "error" not in r}
    theirs = {
        (r["step"], r["batch"], r["variant"]): r["img_per_s"]
        for r in torch_results
        if "error" not in r and "img_per_s" in r
    }
    out = []
    for (step, batch, dtype), ips in sorted(ours.items()):
        v = pairs.get(dtype)
        if (step, batch, v) in theirs:
            out.append(
                {
                    "step": step,
                    "batch": batch,
                    "ours": dtype,
                    "torch": v,
                    "ratio": ips / theirs[(step, batch, v)],
                }
            )
    for step, batch in sorted({(s, b) for s, b, _ in ours}):
        mine = [(ips, d) for (s, b, d), ips in ours.items() if (s, b) == (step, batch)]
        other = [(ips, v) for (s, b, v), ips in theirs.items() if (s, b) == (step, batch)]
        if mine and other:
            (a, d), (t, v) = max(mine), max(other)
            out.append(
                {
                    "step": step,
                    "batch": batch,
                    "ours": f"best ({d})",
                    "torch": f"best ({v})",
                    "ratio": a / t,
                }
            )
    return out


def _run_script(script: str, args: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run a sibling benchmark script that writes JSON to a temp file; (result, log tail)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, str(HERE / script), *args, "--out", path]
        print(f"$ {' '.join(cmd)}", flush=True)
        try:
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                cwd=str(ROOT),
                check=False,
            )
            log = proc.stdout
        except subprocess.TimeoutExpired as e:
            log = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            log += f"\n[timed out after {timeout:.0f} s]"
        print(log[-6000:], flush=True)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f), log[-4000:]
        return None, log[-4000:]


def parse_args(argv=None) -> argparse.Namespace:
    p = _harness.parser(__doc__)
    p.add_argument("--batch-sizes", default="32,96", help="comma-separated (default 32,96)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="activation dtypes")
    p.add_argument(
        "--steps",
        default="completion,joint",
        help=f"step kinds among {','.join(STEP_NAMES)} (default completion,joint)",
    )
    p.add_argument(
        "--inference-sizes",
        default="512,1024",
        help="square image sizes for steps.complete; '' to skip",
    )
    _harness.add_timing_args(p)
    p.add_argument(
        "--feed",
        choices=("device", "host"),
        default="device",
        help="device: one batch kept on the device; host: device_put a host batch every step",
    )
    p.add_argument("--torch", action="store_true", help="also run torch_reference.py")
    p.add_argument("--torch-variants", default="fp32_nchw,bf16_channels_last")
    p.add_argument("--input", action="store_true", help="also run bench_input.py")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (32x32, batch 2, 1-2 iterations): checks the script works",
    )
    p.add_argument(
        "--isolate",
        dest="isolate",
        action="store_true",
        default=None,
        help="one subprocess per configuration (default, except with --smoke)",
    )
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument(
        "--job-timeout",
        type=float,
        default=420.0,
        help="seconds per subprocess (isolated configuration, torch group, input)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="stop starting new work after this many seconds and cut running "
        "subprocesses at it (0 = no limit); the most important numbers run first",
    )
    p.add_argument("--tag", default="", help="free text stored in the JSON (e.g. XLA flags tried)")
    p.add_argument(
        "--out", default="", help="JSON path (default benchmarks/results/<device>_<date>.json)"
    )
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_sizes = "2" if args.batch_sizes == "32,96" else args.batch_sizes
        args.inference_sizes = (
            "64,128" if args.inference_sizes == "512,1024" else args.inference_sizes
        )
        args.warmup, args.iters, args.repeats = 1, 1, 1
    if args.isolate is None:
        args.isolate = not args.smoke
    return args


def plan(args) -> list[dict]:
    """Work items, most important first (a --budget-s run keeps the head of this list).

    Per batch size, largest first: our steps in each dtype (bfloat16 first: the goal), then the
    PyTorch reference at that batch size; the inference timings after the first batch size; the
    input pipeline last (it compares itself with the step throughputs measured before it).
    """
    steps = csv_list(args.steps)
    bad = [s for s in steps if s not in STEP_NAMES]
    if bad:
        raise SystemExit(f"--steps: unknown {bad}; choose among {list(STEP_NAMES)}")
    dtypes = sorted(csv_list(args.dtypes), key=lambda d: d != "bfloat16")
    batches = sorted(csv_list(args.batch_sizes, int), reverse=True)
    sizes = csv_list(args.inference_sizes, int)
    torch_steps = [s for s in steps if s != "discriminator"]
    work: list[dict] = []
    for i, b in enumerate(batches):
        work += [
            {"kind": "train", "step": s, "batch": b, "dtype": d} for d in dtypes for s in steps
        ]
        if args.torch and torch_steps:
            work.append({"kind": "torch", "batch": b, "steps": torch_steps})
        if i == 0 and sizes:
            work += [{"kind": "inference", "dtype": d, "sizes": sizes} for d in dtypes]
    if args.input:
        work.append({"kind": "input"})
    return work


def derive(report: dict, smoke: bool) -> None:
    """Goal check, projected schedule and ours/PyTorch ratios from what has been measured."""
    train = report["train"]
    batch = 2 if smoke else 96
    schedule = (
        {"tc": 150, "td": 10, "total": 200}
        if smoke
        else {"tc": 90_000, "td": 10_000, "total": 500_000}
    )
    report["projection_paper_schedule"] = _projection(train, schedule, batch)
    if report.get("torch", {}).get("results"):
        report["projection_paper_schedule"] += [
            dict(p, dtype=f"torch {p['dtype']}")
            for p in _projection(
                [dict(r, dtype=r["variant"]) for r in report["torch"]["results"] if "variant" in r],
                schedule,
                batch,
            )
        ]
        report["ratio_ours_over_torch"] = _ratios(train, report["torch"]["results"])
    report["goal_check"] = [
        {
            "step": r["step"],
            "img_per_s": r["img_per_s"],
            "goal": GOALS_IMG_S[r["step"]],
            "met": r["img_per_s"] >= GOALS_IMG_S[r["step"]],
        }
        for r in train
        if "error" not in r
        and r["batch"] == 96
        and r["dtype"] == "bfloat16"
        and r["step"] in GOALS_IMG_S
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        res = run_job(spec["job"], spec["opts"])
        print(RESULT_MARKER + json.dumps(res), flush=True)
        return 0

    start = time.perf_counter()
    work = plan(args)
    opts = {
        "smoke": args.smoke,
        "warmup": args.warmup,
        "iters": args.iters,
        "repeats": args.repeats,
        "feed": args.feed,
    }
    image_size, local_size = (32, 16) if args.smoke else (256, 128)
    report: dict = {
        "meta": _harness.run_meta(
            command=" ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
            tag=args.tag,
            smoke=args.smoke,
            isolate=args.isolate,
            budget_s=args.budget_s or None,
            git_commit=_harness.git_commit(),
            env={
                k: os.environ[k]
                for k in (
                    "XLA_FLAGS",
                    "XLA_PYTHON_CLIENT_PREALLOCATE",
                    "XLA_PYTHON_CLIENT_MEM_FRACTION",
                    "JAX_COMPILATION_CACHE_DIR",
                    "JAX_PLATFORMS",
                )
                if k in os.environ
            },
            peak_memory_note=(
                "per configuration (one process each)"
                if args.isolate
                else "process-wide high-water mark: each value includes every earlier configuration"
            ),
        ),
        "flop_model": {
            "image_size": image_size,
            "local_size": local_size,
            "networks_gflop_per_img": {
                k: v / 1e9 for k, v in flops.network_flops(image_size, local_size).items()
            },
            "steps_gflop_per_img": {
                k: {c: v / 1e9 for c, v in d.items()}
                for k, d in flops.step_flops(image_size, local_size).items()
            },
            "doc": "benchmarks/flops.py; TFLOP/s use 'exact'",
        },
        "goals_img_per_s_b96_bf16": GOALS_IMG_S,
        "issue_baselines_img_per_s_b96": ISSUE_BASELINES_IMG_S,
        "train": [],
        "inference": [],
        "skipped": [],
    }
    out_path = args.out

    def save():
        nonlocal out_path
        derive(report, args.smoke)
        if not out_path:
            dev = report["meta"].get("device", {}).get("device_kind", "unknown")
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{_slug(dev)}_{stamp}{'_smoke' if args.smoke else ''}.json"
            out_path = str(HERE / "results" / name)
        _harness.write_json(out_path, report)

    def remaining() -> float:
        return args.budget_s - (time.perf_counter() - start) if args.budget_s else float("inf")

    print(
        f"glcic_jax benchmark: {len(work)} work items, "
        f"{'one process per configuration' if args.isolate else 'in this process'}",
        flush=True,
    )
    for job in work:
        left = remaining()
        if left < 5:
            report["skipped"].append(dict(job, reason="--budget-s used up"))
            print(f"skipped (budget): {job}", flush=True)
            continue
        timeout = min(args.job_timeout, left)
        if job["kind"] == "torch":
            targs = [
                "--batch-sizes",
                str(job["batch"]),
                "--steps",
                ",".join(job["steps"]),
                "--variants",
                args.torch_variants,
                "--warmup",
                str(args.warmup),
                "--iters",
                str(args.iters),
                "--repeats",
                str(args.repeats),
            ]
            res, log = _run_script(
                "torch_reference.py", targs + (["--smoke"] if args.smoke else []), timeout
            )
            t = report.setdefault("torch", {"results": []})
            if res is None:
                t["results"].append({"batch": job["batch"], "error": "no result", "log_tail": log})
            else:
                t["meta"] = res.get("meta")
                t["results"] += res.get("results", [])
                if res.get("skipped"):
                    t["skipped"] = res["skipped"]
            save()
            continue
        if job["kind"] == "input":
            save()  # bench_input reads the step throughputs from this file
            iargs = ["--steps-json", out_path] + (["--smoke"] if args.smoke else [])
            res, log = _run_script("bench_input.py", iargs, timeout)
            report["input_pipeline"] = (
                res if res is not None else {"error": "no result", "log_tail": log}
            )
            save()
            continue
        res = _run_isolated(job, opts, timeout) if args.isolate else run_job(job, opts)
        if res.get("kind") == "inference_group":
            for r in res["results"]:
                r["device"] = res.get("device")
                report["inference"].append(r)
                print(_describe(r), flush=True)
        elif job["kind"] == "inference":
            res["kind"] = "inference"
            report["inference"].append(res)
            print(f"complete {job['dtype']} FAILED: {res.get('error')}", flush=True)
        else:
            report["train"].append(res)
            print(_describe(res), flush=True)
            if res.get("param_mismatch"):
                print(f"  WARNING parameter counts differ from flops.py: {res['param_mismatch']}")
        if res.get("device") and "device" not in report["meta"]:
            report["meta"]["device"] = res["device"]
        save()
    save()

    print("\n== summary ==")
    for r in report["train"]:
        print(_describe(r))
    for r in report.get("torch", {}).get("results", []):
        if "error" in r:
            print(
                f"torch {r.get('variant')} {r.get('step')} b{r.get('batch')} FAILED: "
                f"{r['error'][:200]}"
            )
        else:
            print(
                f"torch {r['variant']:27s} {r['step']:10s} b{r['batch']:<4d} "
                f"{r['img_per_s']:8.1f} img/s  {r['tflop_per_s']:7.4g} TFLOP/s"
            )
    if report.get("torch", {}).get("skipped"):
        print(f"PyTorch reference skipped: {report['torch']['skipped']}")
    for r in report["inference"]:
        if "error" not in r:
            print(_describe(r))
    for g in report["goal_check"]:
        print(
            f"goal {g['step']}: {g['img_per_s']:.0f} img/s vs {g['goal']:.0f} "
            f"-> {'met' if g['met'] else 'NOT met'}"
        )
    for p in report["projection_paper_schedule"]:
        print(
            f"paper schedule at batch {p['batch']}, {p['dtype']}: {p['hours']:.2f} h "
            f"(phase 2 timed by the {p['phase2_from']} step)"
        )
    for r in report.get("ratio_ours_over_torch", []):
        print(
            f"ours/PyTorch {r['step']} b{r['batch']} {r['ours']} vs {r['torch']}: {r['ratio']:.2f}x"
        )
    inp = report.get("input_pipeline") or {}
    for r in inp.get("results", []):
        if "img_per_s" in r:
            print(f"input pipeline {r['path']} workers={r['workers']}: {r['img_per_s']:.0f} img/s")
    if report["skipped"]:
        print(f"{len(report['skipped'])} work items skipped for the time budget")
    print(f"wrote {out_path}  ({time.perf_counter() - start:.0f} s)")
    failed = [r for r in report["train"] + report["inference"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
