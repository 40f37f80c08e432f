"""The training steps on a CPU, ours and PyTorch's timed in turns: each side runs in its own
long-lived process, and the driver asks each in turn for a round of steps, so that a machine
whose speed drifts from minute to minute (shared 2-core VMs moved by 15-20 % from one run of
`bench_cpu.py` to the next) slows every side alike.

  python benchmarks/bench_cpu_steps.py [--trains quickstart] [--steps completion,joint]
      [--rounds 15] [--iters 4] [--turn-warmup 1] [--turn-warmup-s 2]
      [--variant NAME:SETTING=VALUE[,...]]
      [--env-variant NAME:KEY=VALUE[,...]] [--out FILE]

Ours runs restarted with huge pages, as the training command is
(`cpu_memory.relaunch_with_huge_pages`); PyTorch's step is `torch_reference.Bench`'s, as in
`bench_cpu.py --only train`, in a process of its own with default settings. `--variant` adds
ours with settings of `glcic_jax.conv_forms` changed while its step is traced (e.g.
`without_narrow:NARROW_MAX_CHANNELS=0`, the step without the narrow layers' form), compiled in
the same process as ours (separate processes differed by more than a form's gain): what one
form gives a whole step, measured in the same turns. `--env-variant NAME:KEY=VALUE` adds ours
in a process of its own with those environment variables (e.g. glibc's malloc tunables, which
take effect only at a process's start), in the same turns; a KEY that starts with `jax_` is a
JAX option set before JAX starts (e.g. `jax_cpu_enable_async_dispatch=false`: the computations
run on the calling thread) rather than an environment variable. Each round runs `--iters` steps on
every side, the sides in a shuffled order (seeded); only one side computes at a time (the
others wait on their input), with a `--settle` pause between turns so that no side's threads
are still spinning when the next starts (thread pools wait busily for a moment after their
work, which on two cores would take one from the next side). Each turn starts with untimed
steps, at least `--turn-warmup` of them (default 1) and for at least `--turn-warmup-s` seconds
(default 2), timed apart: a training loop runs its steps back to back, while a turn follows a
pause of about a second (the settles and the other sides' turns), and on some machines a
process's steps after such a pause are slower for a second or more (`docs/cpu_speed.md`).
Reported per side: seconds per step, the median, quartiles and fastest round, the median of the
turns' warm-up steps, and the medians of the rounds that followed each other side's turn
(whether a turn slows the next); per variant of ours: PyTorch / ours of the medians, and the
median of the round-by-round ratios. torch is optional and only for this benchmark; without it
only ours is timed.

`--pauses 0,0.3,1` measures instead what a pause does: in each round, each side in turn sleeps
for each pause and then runs `--after-pause` steps, each timed alone (waited for); reported per
side and pause, the median over the rounds of the first, second, ... step after it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time

import _harness
import bench_cpu

STEPS = ("completion", "joint")


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    bench_cpu.add_trains_arg(p)
    p.add_argument("--steps", default=",".join(STEPS), help="among " + ",".join(STEPS))
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per side")
    p.add_argument("--iters", type=int, default=4, help="steps per side and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--settle", type=float, default=0.3, help="seconds between turns")
    p.add_argument("--turn-warmup", type=int, default=1,
                   help="untimed steps at least at the start of each turn (timed apart)")
    p.add_argument("--turn-warmup-s", type=float, default=2.0,
                   help="seconds at least of those untimed steps")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTING=VALUE,...",
                   help="ours again with conv_forms settings changed (repeatable)")
    p.add_argument("--env-variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="ours again in a process of its own with these environment variables "
                        "(repeatable)")
    p.add_argument("--pauses", default="",
                   help="seconds, e.g. 0,0.3,1: time the steps after each pause instead")
    p.add_argument("--after-pause", type=int, default=6, help="steps timed after each pause")
    p.add_argument("--timeout", type=float, default=900, help="seconds per side's answer")
    p.add_argument("--out", default="")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # one side, for the driver
    return p.parse_args(argv)


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:SETTING=VALUE,SETTING=VALUE' -> (NAME, {SETTING: VALUE}), each SETTING an
    upper-case number of `glcic_jax.conv_forms`, its VALUE of the same type."""
    from glcic_jax import conv_forms

    name, sep, body = text.partition(":")
    if not sep or not name or not body:
        raise SystemExit(f"--variant takes NAME:SETTING=VALUE[,SETTING=VALUE], got {text!r}")
    settings = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        current = getattr(conv_forms, key, None)
        if not eq or not key.isupper() or type(current) not in (int, float):
            raise SystemExit(f"--variant {text!r}: {key!r} is not a numeric setting of "
                             "glcic_jax.conv_forms (e.g. NARROW_MAX_CHANNELS)")
        try:
            settings[key] = type(current)(value)
        except ValueError:
            raise SystemExit(f"--variant {text!r}: {value!r} is not a {type(current).__name__}")
    return name, settings


def parse_env_variant(text: str) -> tuple[str, dict]:
    """'NAME:KEY=VALUE,KEY=VALUE' -> (NAME, {KEY: VALUE}); a VALUE may hold ':' and '='
    (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0`), not ','."""
    name, sep, body = text.partition(":")
    items = [item.partition("=") for item in body.split(",")]
    if not (name and sep) or any(not key or not eq for key, eq, _ in items):
        raise SystemExit(f"--env-variant takes NAME:KEY=VALUE[,KEY=VALUE], got {text!r}")
    return name, {key: value for key, _, value in items}


def split_jax_options(settings: dict) -> tuple[dict, dict]:
    """An `--env-variant`'s settings -> (environment variables, JAX options): keys that start
    with `jax_` are JAX options, their values read as booleans or numbers where they are."""
    def value(text: str):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    env = {k: v for k, v in settings.items() if not k.startswith("jax_")}
    return env, {k: value(v) for k, v in settings.items() if k.startswith("jax_")}


# ----------------------------------------------------------------------------------------------
# Worker: one side, answering the driver's requests on stdin / stdout


def worker(spec: dict) -> None:
    """One process: PyTorch's step, or ours in every variant (each compiled with its settings,
    which are read while the step is traced and lowered; then put back)."""
    steps = {}
    if spec["side"] == "pytorch":
        fn, _ = bench_cpu.torch_train_step(spec["trains"], spec["step"])
        steps["pytorch"] = (fn, lambda out: None, {})
    else:
        from glcic_jax import cpu_memory

        cpu_memory.relaunch_with_huge_pages()  # as the training command starts
        import jax

        for key, value in spec.get("jax_options", {}).items():
            jax.config.update(key, value)  # before the first computation starts JAX's client
        from glcic_jax import conv_forms

        for name, settings in spec["variants"].items():
            defaults = {key: getattr(conv_forms, key) for key in settings}
            try:
                for key, value in settings.items():
                    setattr(conv_forms, key, value)
                fn, wait, compile_s, _ = bench_cpu.jax_train_step(spec["trains"], spec["step"])
            finally:
                for key, value in defaults.items():
                    setattr(conv_forms, key, value)
            steps[name] = (fn, wait, {"compile_s": compile_s})
    for fn, wait, _ in steps.values():
        _harness.time_calls(fn, spec["warmup"], 0, 0, wait)
    print("READY " + json.dumps({name: info for name, (_, _, info) in steps.items()}),
          flush=True)
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        name, _, pause = rest.partition(" ")
        if command not in ("RUN", "PAUSE") or name not in steps:
            break
        fn, wait, _ = steps[name]
        if command == "PAUSE":  # sleep, then each step timed alone
            time.sleep(float(pause))
            print("STEPS " + json.dumps(
                _harness.time_calls(fn, 0, 1, spec["after_pause"], wait).times), flush=True)
            continue
        warmup = _warm_turn(fn, wait, spec["turn_warmup"], spec["turn_warmup_s"])
        per_call = _harness.time_calls(fn, 0, spec["iters"], 1, wait).times[0]
        print("TIME " + json.dumps({"step_s": per_call, "warmup": warmup}), flush=True)


def _warm_turn(fn, wait, steps: int, seconds: float) -> dict | None:
    """Untimed steps until there have been at least `steps` and `seconds` have passed: their
    number and seconds per step, or None when both are 0."""
    if steps <= 0 and seconds <= 0:
        return None
    count, t0 = 0, time.perf_counter()
    while count < steps or time.perf_counter() - t0 < seconds:
        wait(fn())
        count += 1
    return {"steps": count, "step_s": (time.perf_counter() - t0) / count}


# ----------------------------------------------------------------------------------------------
# Driver


class Worker:
    """A `worker` process, answering one line per request."""

    def __init__(self, spec: dict, timeout: float, env: dict | None = None):
        self.timeout = timeout
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(_harness.HERE / "bench_cpu_steps.py"), "--worker",
             json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, cwd=_harness.ROOT, env=dict(os.environ, **env) if env else None)
        self.info = json.loads(self.answer("READY", spec["side"]))

    def answer(self, tag: str, who: str) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(tag + " "):
            self.proc.kill()
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise SystemExit(f"{who}: no {tag} answer (got {line!r}); its output:\n{tail}")
        return line[len(tag) + 1:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Side:
    """One thing timed: PyTorch's step, or one variant of ours, in its worker."""

    def __init__(self, name: str, worker: Worker):
        self.name, self.worker = name, worker
        self.info = worker.info[name]
        self.times: list[float] = []
        self.warmups: list[dict] = []
        self.after: list[str | None] = []  # the side whose turn came just before each round

    def run_round(self, after: str | None = None) -> None:
        self.after.append(after)
        self.worker.proc.stdin.write(f"RUN {self.name}\n")
        self.worker.proc.stdin.flush()
        answer = json.loads(self.worker.answer("TIME", self.name))
        self.times.append(answer["step_s"])
        if answer["warmup"] is not None:
            self.warmups.append(answer["warmup"])

    def after_pause(self, seconds: float) -> list[float]:
        """Seconds of each step run after the worker slept `seconds`."""
        self.worker.proc.stdin.write(f"PAUSE {self.name} {seconds!r}\n")
        self.worker.proc.stdin.flush()
        return json.loads(self.worker.answer("STEPS", self.name))


def _by_previous_turn(side: Side) -> dict:
    """{side that ran just before ('-': none): its rounds' seconds per step}: whether one
    side's turn leaves the machine slower for the next (caches, freed memory, threads)."""
    groups: dict = {}
    for after, t in zip(side.after, side.times):
        groups.setdefault(after or "-", []).append(t)
    return dict(sorted(groups.items()))


def _time_pauses(sides: list[Side], pauses: list[float], rounds: int, rng) -> dict:
    """`--pauses`: per side and pause, the median over `rounds` of each step after the pause
    (seconds), printed as milliseconds."""
    runs = {side.name: {p: [] for p in pauses} for side in sides}
    for _ in range(rounds):
        for side in rng.sample(sides, len(sides)):
            for p in rng.sample(pauses, len(pauses)):
                runs[side.name][p].append(side.after_pause(p))
    out = {}
    for side in sides:
        out[side.name] = {}
        for p in pauses:
            medians = [statistics.median(col) for col in zip(*runs[side.name][p])]
            out[side.name][f"{p:g}"] = {"step_medians_s": medians, "runs_s": runs[side.name][p]}
            print(f"{side.name:16s} after {p:g} s: " + " ".join(
                f"{1000 * t:6.1f}" for t in medians) + " ms", flush=True)
    return {"pauses": out}


def _quartiles(values: list[float]) -> dict:
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median_s": statistics.median(values), "q1_s": q1, "q3_s": q3,
            "fastest_s": min(values)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    steps = _harness.csv_list(args.steps)
    pauses = _harness.csv_list(args.pauses, float)
    if (set(steps) - set(STEPS) or args.rounds < 1 or args.iters < 1
            or args.turn_warmup < 0 or args.turn_warmup_s < 0 or args.after_pause < 1
            or any(p < 0 for p in pauses)):
        raise SystemExit(f"--steps takes {','.join(STEPS)}; --rounds, --iters and --after-pause "
                         "at least 1, --turn-warmup, --turn-warmup-s and --pauses at least 0")
    variants = [("ours", {})] + [parse_variant(v) for v in args.variant]
    env_variants = [parse_env_variant(v) for v in args.env_variant]
    names = [name for name, _ in variants + env_variants]
    if len(set(names) | {"pytorch"}) != len(names) + 1:
        raise SystemExit("each --variant and --env-variant needs its own name (not 'ours' or "
                         "'pytorch')")
    try:
        import torch  # noqa: F401
        with_torch = True
    except ImportError:
        with_torch = False
        print("torch is not installed: only ours is timed (pip install torch).")
    report = {"meta": _harness.run_meta(commit=_harness.git_commit(), args=vars(args)),
              "steps": {}}
    if not pauses:
        print(f"{'step':11s} {'side':16s} {'median s':>9s} {'q1-q3 s':>15s} {'fastest':>8s} "
              f"{'warm-up':>7s} {'PyTorch/ours':>13s} {'per round':>10s}")
    for step in steps:
        base = {"trains": args.trains, "step": step, "iters": args.iters, "warmup": args.warmup,
                "turn_warmup": args.turn_warmup, "turn_warmup_s": args.turn_warmup_s,
                "after_pause": args.after_pause}
        workers = []
        try:
            workers.append(Worker(dict(base, side="ours", variants=dict(variants)), args.timeout))
            sides = [Side(name, workers[0]) for name, _ in variants]
            for name, settings in env_variants:
                env, jax_options = split_jax_options(settings)
                workers.append(Worker(dict(base, side="ours", variants={name: {}},
                                           jax_options=jax_options), args.timeout, env))
                sides.append(Side(name, workers[-1]))
            if with_torch:
                workers.append(Worker(dict(base, side="pytorch"), args.timeout))
                sides.append(Side("pytorch", workers[-1]))
            rng = random.Random(0)
            if pauses:
                print(f"{step}: each step after a pause, medians of {args.rounds} rounds")
                report["steps"][step] = _time_pauses(sides, pauses, args.rounds, rng)
                continue
            previous = None
            for _ in range(args.rounds):
                for side in rng.sample(sides, len(sides)):
                    time.sleep(args.settle)
                    side.run_round(after=previous)
                    previous = side.name
        finally:
            for worker_ in workers:
                worker_.close()
        by_turn = {side.name: _by_previous_turn(side) for side in sides}
        rows = {side.name: dict(side.info, round_s=side.times, **_quartiles(side.times),
                                turn_warmups=side.warmups,
                                turn_warmup_median_s=(statistics.median(
                                    w["step_s"] for w in side.warmups) if side.warmups else None),
                                round_after=side.after,
                                median_s_by_previous_turn={
                                    after: statistics.median(times)
                                    for after, times in by_turn[side.name].items()})
                for side in sides}
        for side in sides:
            row = rows[side.name]
            if with_torch and side.name != "pytorch":
                torch_s = rows["pytorch"]
                row["pytorch_over_ours"] = torch_s["median_s"] / row["median_s"]
                row["pytorch_over_ours_per_round"] = statistics.median(
                    t / o for t, o in zip(torch_s["round_s"], side.times))
            ratio = (f"{row['pytorch_over_ours']:12.2f}x {row['pytorch_over_ours_per_round']:9.2f}x"
                     if "pytorch_over_ours" in row else "")
            warm = row["turn_warmup_median_s"]
            warm = f"{warm:7.3f}" if warm is not None else f"{'-':>7s}"
            print(f"{step:11s} {side.name:16s} {row['median_s']:9.3f} "
                  f"{row['q1_s']:7.3f}-{row['q3_s']:.3f} {row['fastest_s']:8.3f} {warm} {ratio}",
                  flush=True)
        for side in sides:  # the medians by the turn before, with the number of rounds
            print(f"{'':11s} {side.name:16s} after: " + ", ".join(
                f"{after} {statistics.median(times):.3f} ({len(times)})"
                for after, times in by_turn[side.name].items()), flush=True)
        report["steps"][step] = {"variants": {name: settings for name, settings in variants},
                                 "env_variants": dict(env_variants),
                                 "sides": rows}
    if args.out:
        _harness.write_json(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
