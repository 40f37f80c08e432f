"""glcic_jax against PyTorch on a CPU, side by side, where users first meet the project.

  python benchmarks/bench_cpu.py [--out benchmarks/results/cpu.json] [--only forward,cold,...]

Rows (each ours, then PyTorch's, in the same run; every measurement in its own process):

* `forward`: the full-width completion network (GLCIC Table 1) in float32 on one image of 256,
  512 and 1024 px: ours is the jitted completion `complete` runs (input, network, composite),
  in a process with the XLA flags `complete` sets (`conv_forms.use_inference_xla_flags`);
  PyTorch's the same network (`torch_reference.build`) in eager mode, channels_last,
  `torch.no_grad`, plus the same input and composite. Both load the same weights, and the
  outputs are compared (`max_abs_diff_vs_torch`). `--without-flags` adds ours without those
  flags, with each process's peak memory (`ru_maxrss`): what the flags change.
* `cold`: `python -m glcic_jax.complete` on one 512 px photo, wall time from process start to
  exit, against `torch_complete.py` (import torch, load the state dict, forward, save a PNG);
  peak memory is each process's `ru_maxrss`. Ours twice: without a compilation cache, and with
  `JAX_COMPILATION_CACHE_DIR` already filled by a previous run and JAX's 1 s threshold for
  caching lowered to 0 (what a user's second run sees
  when they set it). Also each side's import alone (`import glcic_jax.complete`, `import torch`),
  a fresh process to its exit.
* `load`: `inference.load` of the checkpoint (what `complete` and `serve` do before the
  network runs; the target is under 0.3 s) in a fresh process after the imports, wall and CPU
  seconds, against `torch.load` + `load_state_dict` (both libraries imported first); also the
  whole training state (`checkpointing.restore_for_inference`, what inference read before); and
  the seconds `complete` itself reports for reading and restoring.
* `serve`: a warm `POST /api/complete` of the same photo to `python -m glcic_jax.serve` (after
  one request that compiles), through HTTP; PyTorch: the same photo read, completed and
  encoded again in a warm `torch_complete.py` process (no HTTP: PyTorch ports ship no server).
* `train`: the phase-1 step (`steps.completion`) and the joint step (`steps.joint`) at the
  quickstart's settings (64 px, width 1/8, reflect padding, Adam, batch 16) and at 128 px full
  width (Adadelta, batch 4), against `torch_reference.Bench` on the CPU with the same settings.
  Ours runs in a process restarted as the training command restarts itself, with glibc's
  huge-page tunable where it changes something (`cpu_memory.relaunch_with_huge_pages`;
  `--jax-env GLIBC_TUNABLES=glibc.malloc.hugetlb=0` times it without). Each side also records
  its minor page faults per step (`minflt_per_step`, `ru_minflt` over the timed calls and the
  warm-up): memory the step touches for the first time, e.g. XLA's temporary buffer when malloc
  maps it afresh for every call.

`--jax-env KEY=VALUE` (repeatable) sets an environment variable in our forward, load and train
workers only, to measure what a process setting changes (e.g. glibc's `MALLOC_ARENA_MAX=1`); the
JSON's `args` keep it.

The fixture is the full-width network from a synthetic Torch7 file (`tests/torch7_writer.py`,
the official file's structure) converted by `glcic_jax.convert` (`configs/places2.py`), and the
same weights saved as a PyTorch state dict. Without torch the PyTorch rows are skipped with a
message. Results: JSON (`--out`) with the CPU model and vector extensions, `XLA_FLAGS`, the load
average before and after; a table on the console.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import _harness  # benchmarks/_harness.py: puts the repository root on sys.path

HERE = _harness.HERE
ROOT = _harness.ROOT
PARTS = ("load", "forward", "cold", "serve", "train")
TRAINS = ("quickstart", "full128")  # the training settings `train_config` knows
HOLE = (180, 300, 200, 330)  # top, bottom, left, right of the 512 px photo's hole


def add_trains_arg(p) -> None:
    """--trains NAME: one of TRAINS, for the scripts that time or compile one setting's steps."""
    p.add_argument("--trains", default="quickstart", choices=TRAINS,
                   help="the training settings (as bench_cpu.py's)")


# ----------------------------------------------------------------------------------------------
# Fixture: a converted full-width network, its PyTorch state dict, a photo and a mask


def make_fixture(folder: str) -> None:
    """(worker, JAX) Convert a synthetic Torch7 file and write the photo, the mask and the
    weights in PyTorch's layout (`weights.npz`)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    import torch7_writer as tw

    from glcic_jax import convert, inference

    table, _ = tw.synthetic_model(seed=0)
    t7 = os.path.join(folder, "synthetic.t7")
    with open(t7, "wb") as f:
        f.write(tw.dumps(table))
    workdir = os.path.join(folder, "official")
    convert.convert(t7, workdir, None)
    from skimage import data

    Image.fromarray(data.astronaut()).resize((512, 512), Image.BICUBIC).save(
        os.path.join(folder, "photo.png"))
    mask = np.zeros((512, 512), np.uint8)
    t, b, left, r = HOLE
    mask[t:b, left:r] = 255
    Image.fromarray(mask).save(os.path.join(folder, "mask.png"))
    completer = inference.load(workdir)
    np.savez(os.path.join(folder, "weights.npz"), **torch_layout(completer.variables),
             mean_pixel=completer.mean_pixel)


def torch_layout(variables: dict) -> dict:
    """Our completion network's variables under `torch_reference`'s state-dict names: conv
    kernels [kh, kw, in, out] -> [out, in, kh, kw]; transposed convs -> [in, out, kh, kw],
    spatially flipped (flax's ConvTranspose correlates with the kernel as given; PyTorch's is
    the transpose of a correlation: see `glcic_jax.convert`)."""
    import numpy as np

    from glcic_jax import models

    params, stats = variables["params"], variables["batch_stats"]
    out, index, n_conv, n_deconv, n_bn = {}, 0, 0, 0, 0
    for kind, *_ in models.COMPLETION_LAYERS:
        if kind == "deconv":
            p = params[f"ConvTranspose_{n_deconv}"]
            n_deconv += 1
            w = np.asarray(p["kernel"])[::-1, ::-1].transpose(2, 3, 0, 1)
        else:
            p = params[f"PaddedConv_{n_conv}"]["Conv_0"]
            n_conv += 1
            w = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
        out[f"net.{index}.weight"] = np.ascontiguousarray(w)
        out[f"net.{index}.bias"] = np.asarray(p["bias"])
        if kind == "output":
            break
        bn, st = params[f"BatchNorm_{n_bn}"], stats[f"BatchNorm_{n_bn}"]
        n_bn += 1
        out[f"net.{index + 1}.weight"] = np.asarray(bn["scale"])
        out[f"net.{index + 1}.bias"] = np.asarray(bn["bias"])
        out[f"net.{index + 1}.running_mean"] = np.asarray(st["mean"])
        out[f"net.{index + 1}.running_var"] = np.asarray(st["var"])
        index += 3  # conv, BatchNorm, ReLU
    return out


def torch_fixture(folder: str) -> None:
    """(worker, PyTorch) weights.npz -> weights.pt, checked against the module's names."""
    import numpy as np
    import torch
    import torch_reference

    with np.load(os.path.join(folder, "weights.npz")) as z:
        state = {k: torch.from_numpy(np.array(z[k], np.float32)) for k in z.files}
    net = torch_reference.build(torch)[0]()
    wanted = net.state_dict()
    for k, v in wanted.items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
    net.load_state_dict({k: v for k, v in state.items() if k != "mean_pixel"})  # strict
    torch.save(state, os.path.join(folder, "weights.pt"))


# ----------------------------------------------------------------------------------------------
# Workers: one measurement each, in their own process


def _inputs(size: int):
    """A random size x size photo and the fixture's hole scaled to it (uint8, bool)."""
    import numpy as np

    rng = np.random.default_rng(size)
    photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    hole = np.zeros((size, size), bool)
    t, b, left, r = (v * size // 512 for v in HOLE)
    hole[t:b, left:r] = True
    return photo, hole


def forward_jax(folder: str, size: int, opts: dict) -> dict:
    from glcic_jax import conv_forms

    if opts.get("inference_flags", True):
        conv_forms.use_inference_xla_flags()  # as `complete` and `serve` do, before JAX starts
    import jax
    import numpy as np

    from glcic_jax import inference

    c = inference.load(os.path.join(folder, "official"))
    photo, hole = _inputs(size)
    x, m = photo[None], hole[None, ..., None].astype(np.float32)
    t0 = time.perf_counter()
    c.fn(c.variables, x, m, c.mean_pixel).block_until_ready()
    first_s = time.perf_counter() - t0
    timing = _harness.time_calls(lambda: c.fn(c.variables, x, m, c.mean_pixel), opts["warmup"],
                                 1, opts["repeats"], jax.block_until_ready)
    out = {"first_call_s": first_s, "times_s": timing.times,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if not opts.get("inference_flags", True):  # beside the default run: not its output file
        return out
    np.save(os.path.join(folder, f"out_jax_{size}.npy"), np.asarray(timing.last)[0])
    return out


def forward_torch(folder: str, size: int, opts: dict) -> dict:
    import numpy as np
    import torch
    import torch_reference

    state = torch.load(os.path.join(folder, "weights.pt"))
    mean = state.pop("mean_pixel").view(1, 3, 1, 1)
    net = torch_reference.build(torch)[0]()
    net.load_state_dict(state)
    net = net.eval().to(memory_format=torch.channels_last)
    photo, hole = _inputs(size)
    img = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    m = torch.from_numpy(hole)[None, None].float()

    def fn():
        with torch.no_grad():
            x = torch.cat([(img - mean) * (1 - m), m], 1).contiguous(
                memory_format=torch.channels_last)
            return img * (1 - m) + net(x) * m

    t0 = time.perf_counter()
    fn()
    first_s = time.perf_counter() - t0
    timing = _harness.time_calls(fn, opts["warmup"], 1, opts["repeats"])
    np.save(os.path.join(folder, f"out_torch_{size}.npy"),
            timing.last[0].permute(1, 2, 0).numpy())
    return {"first_call_s": first_s, "times_s": timing.times,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def load_jax(folder: str, opts: dict) -> dict:
    """Seconds (wall and this process's CPU) of `inference.load`, after the imports and the
    backend's start (which the cold rows include)."""
    import jax

    from glcic_jax import checkpointing, inference  # noqa: F401  (imported, as torch is)

    jax.numpy.zeros(1).block_until_ready()
    t0, c0 = time.perf_counter(), time.process_time()
    if opts.get("full"):  # the whole training state, as inference restored it before
        checkpointing.restore_for_inference(os.path.join(folder, "official"))
    else:
        inference.load(os.path.join(folder, "official"))
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def load_torch(folder: str, opts: dict) -> dict:
    """The same for `torch.load` + `load_state_dict` of the completion network."""
    import torch
    import torch_reference

    t0, c0 = time.perf_counter(), time.process_time()
    state = torch.load(os.path.join(folder, "weights.pt"))
    state.pop("mean_pixel")
    torch_reference.build(torch)[0]().load_state_dict(state)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def jax_train_step(name: str, step: str):
    """Our compiled `step` ('completion' or 'joint') at the `name` settings, on a fixed batch:
    (a function running one step, JAX's wait, compile seconds, batch size). The caller restarts
    the process with huge pages first, as the training command does."""
    import jax
    import numpy as np

    from glcic_jax import state as state_lib
    from glcic_jax import steps as steps_lib

    config = train_config(name)
    size = int(config.data.image_size)
    nets = state_lib.create_networks(config)
    st = state_lib.create_state(config, nets, jax.random.PRNGKey(0), _harness.MEAN_PIXEL)
    fn = getattr(steps_lib.make_steps(config, nets, donate=True), step)
    images = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (config.batch_size, size, size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    compiled = fn.lower(st, images).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": st}

    def one():
        box["state"], metrics = compiled(box["state"], images)
        return metrics

    return one, jax.block_until_ready, compile_s, int(config.batch_size)


def torch_train_step(name: str, step: str):
    """`torch_reference.Bench`'s `step` at the `name` settings on the CPU: (a function running
    one step, the torch module)."""
    import torch
    import torch_reference

    c = train_config(name)
    bench = torch_reference.Bench(
        torch, "fp32_nchw", int(c.batch_size), int(c.data.image_size), int(c.mask.local_size),
        int(c.mask.hole_min), int(c.mask.hole_max), torch.device("cpu"),
        width=float(c.model.width), padding=str(c.model.padding),
        optimizer=str(c.optimizer.name))
    return (bench.completion_step if step == "completion" else bench.joint_step), torch


def train_jax(name: str, step: str, opts: dict) -> dict:
    from glcic_jax import cpu_memory

    cpu_memory.relaunch_with_huge_pages()  # as the training command starts
    one, wait, compile_s, batch = jax_train_step(name, step)
    faults = _Faults()
    timing = _harness.time_calls(one, opts["warmup"], opts["iters"], opts["repeats"], wait)
    return {"compile_s": compile_s, "times_s": timing.times, "batch": batch,
            "minflt_per_step": faults.per_call(opts)}


def train_torch(name: str, step: str, opts: dict) -> dict:
    fn, torch = torch_train_step(name, step)
    faults = _Faults()
    timing = _harness.time_calls(fn, opts["warmup"], opts["iters"], opts["repeats"])
    return {"times_s": timing.times, "batch": int(train_config(name).batch_size),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "minflt_per_step": faults.per_call(opts)}


class _Faults:
    """This process's minor page faults from now, per call of a `time_calls(...)` that
    follows (its warm-up and timed calls)."""

    def __init__(self):
        self.start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def per_call(self, opts: dict) -> float:
        calls = opts["warmup"] + opts["iters"] * opts["repeats"]
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.start) / calls


def train_config(name: str):
    """'quickstart': configs/quickstart.py as is; 'full128': the paper's config at 128 px
    (local 64, holes 48-64: the paper's proportions), batch 4."""
    from glcic_jax import config_lib

    if name == "quickstart":
        import importlib.util

        spec = importlib.util.spec_from_file_location("quickstart", ROOT / "configs" /
                                                      "quickstart.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    c = config_lib.base_config()
    c.data.image_size, c.mask.local_size, c.mask.hole_min, c.mask.hole_max = 128, 64, 48, 64
    c.batch_size = 4
    return c


WORKERS = {"fixture": make_fixture, "torch_fixture": torch_fixture,
           "forward_jax": forward_jax, "forward_torch": forward_torch,
           "load_jax": load_jax, "load_torch": load_torch,
           "train_jax": train_jax, "train_torch": train_torch}


# ----------------------------------------------------------------------------------------------
# Driver


def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `cmd`; wall seconds from spawn to exit, its peak RSS (`ru_maxrss`, MiB), output."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                env=env)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return {"rc": proc.returncode, "wall_s": wall, "maxrss_mib": usage.ru_maxrss / 1024,
            "output": text[-3000:]}


def worker(kind: str, args: list, opts: dict, timeout: float) -> dict:
    """One worker job in a fresh process; its JSON result (or an error). Ours (`*_jax`) get
    `opts["jax_env"]` in their environment."""
    extra = opts.get("jax_env", {}) if kind.endswith("_jax") else {}
    res = run_child([sys.executable, __file__, "--worker", json.dumps([kind, args, opts])],
                    timeout, _env(**extra))
    for line in reversed(res["output"].splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["maxrss_mib"] = res["maxrss_mib"]
            return out
    return {"error": f"rc {res['rc']}", "output": res["output"][-1500:]}


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compilation is part of what is measured
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _key_values(items: list[str]) -> dict:
    """['KEY=VALUE', ...] -> {KEY: VALUE}; exits with a message for an item without '='."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bench_cpu: --jax-env takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _med(times) -> float:
    return statistics.median(times)


def _row(report: dict, what: str, ours: float | None, torch: float | None, unit: str,
         **extra) -> None:
    ratio = torch / ours if (ours and torch) else None  # > 1: ours is faster / smaller
    report["rows"].append({"what": what, "glcic_jax": ours, "pytorch": torch, "unit": unit,
                           "ratio_torch_over_ours": ratio, **extra})

    def fmt(v):
        return "-" if v is None else f"{v:9.3f}"

    print(f"{what:48s} {fmt(ours)} {fmt(torch)} {unit:4s} "
          f"{'' if ratio is None else f'{ratio:5.2f}x'}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, photo: bytes, mask: bytes) -> float:
    body, content_type = _harness.multipart_form(photo, mask)
    req = urllib.request.Request(url + "api/complete", data=body, method="POST",
                                 headers={"Content-Type": content_type})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
    return time.perf_counter() - t0


def bench_serve(folder: str, n: int, timeout: float) -> dict:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "glcic_jax.serve",
                             f"--workdir={os.path.join(folder, 'official')}", f"--port={port}"],
                            cwd=str(ROOT), env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "api/info", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() > deadline:
                    log.seek(0)
                    return {"error": "server did not start",
                            "output": log.read().decode(errors="replace")[-1500:]}
                time.sleep(0.2)
        with open(os.path.join(folder, "photo.png"), "rb") as f:
            photo = f.read()
        with open(os.path.join(folder, "mask.png"), "rb") as f:
            mask = f.read()
        first = _post(url, photo, mask)
        warm = [_post(url, photo, mask) for _ in range(n)]
        return {"first_s": first, "times_s": warm}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    p.add_argument("--out", default=str(HERE / "results" / "cpu.json"))
    p.add_argument("--only", default=",".join(PARTS), help=f"among {','.join(PARTS)}")
    p.add_argument("--sizes", default="256,512,1024", help="forward sizes (px)")
    p.add_argument("--trains", default="quickstart,full128", help="training settings")
    p.add_argument("--without-flags", action="store_true",
                   help="also time our forward without conv_forms.INFERENCE_XLA_FLAGS")
    p.add_argument("--fixture", default="", help="folder to keep the fixture in (reused)")
    p.add_argument("--cold-runs", type=int, default=3, help="cold runs of each command")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    p.add_argument("--jax-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for our workers only (repeatable)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        kind, wargs, opts = json.loads(args.worker)
        out = WORKERS[kind](*wargs, opts) if kind.startswith(("forward", "train", "load")) \
            else WORKERS[kind](*wargs)
        print("RESULT " + json.dumps(out or {}), flush=True)
        return 0
    try:
        import torch  # noqa: F401  (only to know whether the PyTorch rows can run)
        has_torch = True
    except ImportError:
        has_torch = False
        print("bench_cpu: torch is not importable here: the PyTorch rows are skipped "
              "(pip install torch to compare).")
    parts = _harness.csv_list(args.only)
    opts = {"warmup": args.warmup, "iters": args.iters, "repeats": args.repeats,
            "jax_env": _key_values(args.jax_env)}
    report = {"meta": _harness.run_meta(commit=_harness.git_commit(),
                                        xla_flags=os.environ.get("XLA_FLAGS", ""),
                                        loadavg_before=list(os.getloadavg()),
                                        torch_available=has_torch, args=vars(args)),
              "rows": [], "raw": {}}

    def save():
        report["meta"]["loadavg_after"] = list(os.getloadavg())
        _harness.write_json(args.out, report)

    tmp = None
    folder = args.fixture
    if not folder:
        tmp = tempfile.TemporaryDirectory(prefix="bench_cpu_")
        folder = tmp.name
    os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(os.path.join(folder, "official")):
        res = worker("fixture", [folder], {}, args.timeout)
        if "error" in res:
            raise SystemExit(f"bench_cpu: the fixture failed: {res}")
    if has_torch and not os.path.exists(os.path.join(folder, "weights.pt")):
        res = worker("torch_fixture", [folder], {}, args.timeout)
        if "error" in res:
            raise SystemExit(f"bench_cpu: the PyTorch fixture failed: {res}")
    print(f"{'what':48s} {'glcic_jax':>9s} {'pytorch':>9s} unit ratio (PyTorch / ours)")

    if "load" in parts:
        ours, full, theirs = [], [], []
        for _ in range(args.cold_runs):
            ours.append(worker("load_jax", [folder], opts, args.timeout))
            full.append(worker("load_jax", [folder], {**opts, "full": True}, args.timeout))
            if has_torch:
                theirs.append(worker("load_torch", [folder], opts, args.timeout))
        report["raw"]["load"] = {"glcic_jax": ours, "glcic_jax_full_state": full,
                                 "pytorch": theirs}
        for key, label in (("wall_s", "wall"), ("cpu_s", "CPU seconds")):
            a = [r[key] for r in ours if key in r]
            b = [r[key] for r in theirs if key in r]
            f = [r[key] for r in full if key in r]
            _row(report, f"loading the checkpoint for inference ({label})",
                 _med(a) if a else None, _med(b) if b else None, "s")
            _row(report, f"  before: the whole training state ({label})",
                 _med(f) if f else None, _med(b) if b else None, "s")
        save()

    if "forward" in parts:
        import numpy as np

        for size in _harness.csv_list(args.sizes, int):
            ours = worker("forward_jax", [folder, size], opts, args.timeout)
            theirs = worker("forward_torch", [folder, size], opts, args.timeout) if has_torch \
                else {}
            report["raw"][f"forward_{size}"] = {"glcic_jax": ours, "pytorch": theirs}
            diff = None
            if "times_s" in ours and "times_s" in theirs:
                a = np.load(os.path.join(folder, f"out_jax_{size}.npy"))
                b = np.load(os.path.join(folder, f"out_torch_{size}.npy"))
                diff = float(np.abs(a - b).max())
            _row(report, f"network forward {size}x{size} (median)",
                 _med(ours["times_s"]) if "times_s" in ours else None,
                 _med(theirs["times_s"]) if "times_s" in theirs else None, "s",
                 min_glcic_jax=min(ours.get("times_s", [0])) or None,
                 min_pytorch=min(theirs.get("times_s", [0])) or None,
                 max_abs_diff_vs_torch=diff)
            if args.without_flags:
                bare = worker("forward_jax", [folder, size], {**opts, "inference_flags": False},
                              args.timeout)
                report["raw"][f"forward_{size}"]["glcic_jax_without_flags"] = bare
                _row(report, "  the same without the inference XLA flags",
                     _med(bare["times_s"]) if "times_s" in bare else None, None, "s")
                _row(report, "  peak memory of the process", ours.get("maxrss_mib"),
                     theirs.get("maxrss_mib"), "MiB")
                _row(report, "  the same without the inference XLA flags",
                     bare.get("maxrss_mib"), None, "MiB")
            save()

    if "cold" in parts:
        out_png = os.path.join(folder, "out.png")
        ours_cmd = [sys.executable, "-m", "glcic_jax.complete",
                    f"--workdir={os.path.join(folder, 'official')}",
                    f"--image={os.path.join(folder, 'photo.png')}",
                    f"--mask={os.path.join(folder, 'mask.png')}", f"--output={out_png}",
                    "--train_scale=false"]
        torch_cmd = [sys.executable, str(HERE / "torch_complete.py"),
                     os.path.join(folder, "weights.pt"), os.path.join(folder, "photo.png"),
                     os.path.join(folder, "mask.png"), os.path.join(folder, "out_torch.png")]
        cache = os.path.join(folder, "xla_cache")
        # JAX caches only compilations of >= 1 s by default; this one takes about 0.5 s.
        cached_env = _env(JAX_COMPILATION_CACHE_DIR=cache,
                          JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        run_child(ours_cmd, args.timeout, cached_env)  # fills the cache
        import_cmds = {"ours_import": [sys.executable, "-c", "import glcic_jax.complete"],
                       "torch_import": [sys.executable, "-c", "import torch"]}
        runs = {"ours": [], "ours_cached": [], "torch": [], "ours_import": [],
                "torch_import": []}
        for _ in range(args.cold_runs):  # interleaved
            runs["ours"].append(run_child(ours_cmd, args.timeout, _env()))
            runs["ours_cached"].append(run_child(ours_cmd, args.timeout, cached_env))
            runs["ours_import"].append(run_child(import_cmds["ours_import"], args.timeout, _env()))
            if has_torch:
                runs["torch"].append(run_child(torch_cmd, args.timeout, _env()))
                runs["torch_import"].append(run_child(import_cmds["torch_import"], args.timeout,
                                                      _env()))
        report["raw"]["cold"] = runs
        import re

        def good(rs):
            return [r for r in rs if r["rc"] == 0]

        loads = [float(m.group(1)) for r in good(runs["ours"])
                 for m in [re.search(r"restoring step \d+(?: \([^)]*\))? ([\d.]+) s",
                                         r["output"])] if m]
        torch_wall = _med([r["wall_s"] for r in good(runs["torch"])]) if good(
            runs["torch"]) else None
        torch_rss = _med([r["maxrss_mib"] for r in good(runs["torch"])]) if good(
            runs["torch"]) else None
        if good(runs["ours"]):
            _row(report, "complete, one 512 px photo, fresh process (wall)",
                 _med([r["wall_s"] for r in good(runs["ours"])]), torch_wall, "s")
        if good(runs["ours_cached"]):
            _row(report, "  the same, compilation cache filled",
                 _med([r["wall_s"] for r in good(runs["ours_cached"])]), torch_wall, "s")
        if good(runs["ours_import"]):
            _row(report, "  of which importing (python -c 'import ...')",
                 _med([r["wall_s"] for r in good(runs["ours_import"])]),
                 _med([r["wall_s"] for r in good(runs["torch_import"])])
                 if good(runs["torch_import"]) else None, "s",
                 note="glcic_jax.complete against torch, each a fresh process to its exit")
        if good(runs["ours"]):
            _row(report, "  peak memory (ru_maxrss)",
                 _med([r["maxrss_mib"] for r in good(runs["ours"])]), torch_rss, "MiB")
        if loads:
            _row(report, "  reading + restoring the checkpoint (complete)", _med(loads), None,
                 "s")
        if not good(runs["ours"]):
            print("complete failed:", runs["ours"][-1]["output"][-1500:])
        save()

    if "serve" in parts:
        ours = bench_serve(folder, args.repeats, args.timeout)
        theirs = {}
        if has_torch:
            res = run_child([sys.executable, str(HERE / "torch_complete.py"),
                             os.path.join(folder, "weights.pt"), os.path.join(folder, "photo.png"),
                             os.path.join(folder, "mask.png"), os.path.join(folder, "out_t.png"),
                             "--repeat", str(args.repeats)], args.timeout, _env())
            lines = [ln for ln in res["output"].splitlines() if ln.startswith("warm_s")]
            theirs = {"times_s": [float(v) for v in lines[-1].split()[1:]]} if lines else res
        report["raw"]["serve"] = {"glcic_jax": ours, "pytorch": theirs}
        _row(report, "web page: warm POST /api/complete, 512 px",
             _med(ours["times_s"]) if "times_s" in ours else None,
             _med(theirs["times_s"]) if "times_s" in theirs else None, "s",
             note="PyTorch: the same photo read, completed and PNG-encoded in a warm process")
        if "error" in ours:
            print("serve failed:", ours)
        save()

    if "train" in parts:
        for name in _harness.csv_list(args.trains):
            for step in ("completion", "joint"):
                ours = worker("train_jax", [name, step], opts, args.timeout)
                theirs = worker("train_torch", [name, step], opts, args.timeout) if has_torch \
                    else {}
                report["raw"][f"train_{name}_{step}"] = {"glcic_jax": ours, "pytorch": theirs}
                label = {"completion": "phase-1 step", "joint": "joint step"}[step]
                _row(report, f"{label}, {name} (batch {ours.get('batch', '?')})",
                     _med(ours["times_s"]) if "times_s" in ours else None,
                     _med(theirs["times_s"]) if "times_s" in theirs else None, "s")
                for side, res in (("glcic_jax", ours), ("pytorch", theirs)):
                    if "error" in res:
                        print(f"{side} {name} {step} failed: {res['output'][-800:]}")
                save()
    save()
    if tmp is not None:
        tmp.cleanup()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
