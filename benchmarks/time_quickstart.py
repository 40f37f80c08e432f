"""Time the README's quickstart (training, then --mode=eval) and report how much runs vary.

  python benchmarks/time_quickstart.py --runs=3 [--out=quickstart_timing.json] [--config.X=Y ...]

Each run trains `configs/quickstart.py` in a fresh temporary workdir with an empty compilation
cache (JAX_COMPILATION_CACHE_DIR pointed at a new folder, so every run compiles, as a first run
on a fresh machine does), then runs `--mode=eval` on it. It prints, per run, the training and
eval wall times, the CPU time they used (wall time above CPU time means the cores were shared)
and the eval table's `model` row; then min / median / max over the runs. The JSON keeps the commit
and `GLIBC_TUNABLES` (which the runs inherit). Nothing is downloaded
(the quickstart trains on scikit-image's sample photos). The README's quickstart figures come from
this command.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import _harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    cpu, t = _cpu_seconds(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, used = time.time() - t, _cpu_seconds() - cpu
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[2:4])} failed:\n{proc.stderr[-3000:]}")
    return wall, used, proc.stdout + proc.stderr


def one_run(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="glcic_quickstart_") as tmp:
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "cache"))
        base = [sys.executable, "-m", "glcic_jax.main", "--config=configs/quickstart.py",
                f"--workdir={os.path.join(tmp, 'run')}", *extra]
        train_wall, train_cpu, _ = _timed(base, env)
        eval_wall, eval_cpu, out = _timed(base + ["--mode=eval"], env)
    # The eval table's rows: | mask set | hole % | method | metrics... |
    table: dict[str, dict[str, list[float]]] = {}
    for set_name, method, cells in re.findall(
            r"^\| ([\w.-]+) \| [\d.]+ \| ([\w+]+) \|(.*)\|$", out, re.M):
        table.setdefault(set_name, {})[method] = [float(v) for v in cells.split("|")]
    if "boxes" not in table:
        sys.exit(f"error: no eval table in the output of --mode=eval:\n{out[-3000:]}")
    return {"train_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
            "eval_s": round(eval_wall, 1), "eval_cpu_s": round(eval_cpu, 1),
            "model_row": table["boxes"].get("model", []), "table": table,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="")
    args, extra = parser.parse_known_args()  # the rest: glcic_jax.main flags for both commands
    args.extra = extra
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.extra))
        r = runs[-1]
        print(f"run {i + 1}: train {r['train_s']:.0f} s ({r['train_cpu_s']:.0f} CPU s), eval "
              f"{r['eval_s']:.0f} s; model l1/psnr/ssim/l1_hole/psnr_hole/ssim_hole "
              f"{r['model_row']}", flush=True)
    summary = {}
    for key in ("train_s", "train_cpu_s", "eval_s"):
        values = [r[key] for r in runs]
        summary[key] = {"min": min(values), "median": statistics.median(values),
                        "max": max(values)}
        print(f"{key}: min {min(values):.0f}, median {statistics.median(values):.0f}, "
              f"max {max(values):.0f}")
    if all(r["model_row"] for r in runs):
        for name, col in (("psnr", 1), ("psnr_hole", 4)):
            values = [r["model_row"][col] for r in runs]
            print(f"model {name}: min {min(values):.2f}, max {max(values):.2f} dB")
    payload = {"runs": runs, "summary": summary, "cpus": os.cpu_count(),
               **_harness.cpu_info(), "python": platform.python_version(),
               "load_avg_before": load_before, "command": " ".join(sys.argv),
               "commit": _harness.git_commit(),
               # glibc's malloc settings change the steps' speed (docs/cpu_speed.md)
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
