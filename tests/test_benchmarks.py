"""The benchmark scripts' shared harness (`benchmarks/_harness.py`) and the driver's work plan.

Pure Python: nothing here compiles or times a network (`python benchmarks/bench_steps.py
--smoke` does, in minutes).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _harness  # noqa: E402
import bench_steps  # noqa: E402


def test_time_calls_times_only_the_repeats_and_waits_around_each(monkeypatch):
    """Warm-up calls are untimed; each repeat's time is its own calls' divided by `iters`; the
    wait (block_until_ready / cuda.synchronize) closes the warm-up and every repeat."""
    clock = {"t": 0.0}
    events = []
    monkeypatch.setattr(_harness.time, "perf_counter", lambda: clock["t"])

    def fn():
        clock["t"] += 2.0  # every call takes 2 s of wall time
        events.append("call")
        return events.count("call")

    def wait(out):
        clock["t"] += 1.0  # waiting for the queued calls costs 1 s more
        events.append(f"wait {out}")

    times, warmup_s, last = _harness.time_calls(fn, warmup=2, iters=3, repeats=2, wait=wait)
    assert times == [(3 * 2.0 + 1.0) / 3] * 2
    assert warmup_s == 2 * 2.0 + 1.0
    assert last == 2 + 2 * 3
    assert events == ["call", "call", "wait 2",
                      "wait 2", "call", "call", "call", "wait 5",
                      "wait 5", "call", "call", "call", "wait 8"]


def test_csv_list_and_write_json(tmp_path):
    assert _harness.csv_list("32,96", int) == [32, 96]
    assert _harness.csv_list("") == [] and _harness.csv_list("a,,b") == ["a", "b"]
    path = tmp_path / "sub" / "r.json"
    _harness.write_json(str(path), {"x": 1})
    _harness.write_json(str(path), {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


def test_bench_steps_plan_puts_the_goal_configurations_first():
    args = bench_steps.parse_args(["--torch", "--input"])
    work = bench_steps.plan(args)
    assert work[0] == {"kind": "train", "step": "completion", "batch": 96, "dtype": "bfloat16"}
    assert [w["kind"] for w in work].count("torch") == 2 and work[-1] == {"kind": "input"}
    assert (args.warmup, args.iters, args.repeats) == (3, 10, 5)
    with pytest.raises(SystemExit, match="unknown"):
        bench_steps.plan(bench_steps.parse_args(["--steps", "completion,nope"]))


def test_every_script_is_documented_and_parses_its_flags_through_the_harness():
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    readme = (bench / "README.md").read_text()
    for script in sorted(bench.glob("*.py")):
        assert f"`{script.name}`" in readme, f"{script.name} is not in benchmarks/README.md"
        if script.name != "_harness.py":
            assert "ArgumentParser(" not in script.read_text(), script.name  # _harness.parser
    # Every result is one the documentation cites (no orphaned history: that lives in git).
    docs = readme + (bench.parent / "README.md").read_text() + "".join(
        p.read_text() for p in (bench.parent / "docs").glob("*.md"))
    for result in (bench / "results").iterdir():
        assert f"results/{result.name}" in docs or f"results/{result.stem}" in docs or (
            re.sub(r"^.*?(_\d{8})$", r"\1", result.stem) in docs), result.name


def test_the_harness_parser_shows_the_docstring_as_help():
    p = _harness.parser("Times a thing.\n\n  python benchmarks/x.py --n 3\n")
    p.add_argument("--n", type=int, default=1)
    assert p.parse_args(["--n", "3"]).n == 3
    assert p.description == "Times a thing." and "python benchmarks/x.py --n 3" in p.format_help()


def test_bench_cpu_sets_jax_env_in_our_workers_only(monkeypatch):
    import bench_cpu

    args = bench_cpu.parse_args(["--jax-env", "MALLOC_ARENA_MAX=1", "--jax-env", "A=b=c"])
    env = bench_cpu._key_values(args.jax_env)
    assert env == {"MALLOC_ARENA_MAX": "1", "A": "b=c"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench_cpu._key_values(["MALLOC_ARENA_MAX"])
    seen = {}

    def child(cmd, timeout, env=None):
        seen[json.loads(cmd[-1])[0]] = env
        return {"rc": 0, "maxrss_mib": 1.0, "output": "RESULT {}"}

    monkeypatch.setattr(bench_cpu, "run_child", child)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    for kind in ("train_jax", "train_torch"):
        bench_cpu.worker(kind, [], {"jax_env": env}, 1.0)
    assert seen["train_jax"]["MALLOC_ARENA_MAX"] == "1" and seen["train_jax"]["A"] == "b=c"
    assert "MALLOC_ARENA_MAX" not in seen["train_torch"]


def test_bench_cpu_steps_variants_name_numeric_conv_forms_settings():
    import bench_cpu_steps

    assert bench_cpu_steps.parse_variant("off:NARROW_MAX_CHANNELS=0,NARROW_MAX_TERMS=50") == (
        "off", {"NARROW_MAX_CHANNELS": 0, "NARROW_MAX_TERMS": 50})
    for bad in ("NARROW_MAX_CHANNELS=0", "x:", "x:NOPE=1", "x:NHWC=1", "x:narrow_max_channels=1",
                "x:NARROW_MAX_CHANNELS", "x:NARROW_MAX_CHANNELS=a"):
        with pytest.raises(SystemExit, match="--variant"):
            bench_cpu_steps.parse_variant(bad)


def test_bench_cpu_steps_env_variants_name_environment_variables():
    import bench_cpu_steps

    assert bench_cpu_steps.parse_env_variant("a:X=1,GLIBC_TUNABLES=glibc.malloc.hugetlb=1:b=2") == (
        "a", {"X": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:b=2"})
    assert bench_cpu_steps.parse_env_variant("a:X=") == ("a", {"X": ""})
    for bad in ("X=1", "a:", ":X=1", "a:X", "a:=1", "a:X=1,Y"):
        with pytest.raises(SystemExit, match="--env-variant"):
            bench_cpu_steps.parse_env_variant(bad)
    assert bench_cpu_steps.split_jax_options(
        {"X": "1", "jax_a": "False", "jax_b": "3", "jax_c": "0.5", "jax_d": "cpu"}) == (
        {"X": "1"}, {"jax_a": False, "jax_b": 3, "jax_c": 0.5, "jax_d": "cpu"})


def test_bench_cpu_steps_takes_turns_and_compares_each_of_ours_with_pytorch(monkeypatch, tmp_path):
    """Ours (every variant in one process) and PyTorch (its own) run one round per turn, in a
    shuffled order; ratios are PyTorch / ours of the medians and the median of the rounds'
    ratios (fake workers: no step is compiled)."""
    import types

    import bench_cpu_steps

    order, per_step = [], {"ours": [0.10, 0.20, 0.10], "faster": [0.05, 0.10, 0.05],
                           "pytorch": [0.08, 0.08, 0.08], "tuned": [0.04, 0.04, 0.04]}
    specs = []

    class FakeWorker:
        def __init__(self, spec, timeout, env=None):
            specs.append(dict(spec, env=env))
            names = list(spec.get("variants", {"pytorch": None}))
            self.info = {name: {"compile_s": 1.0} for name in names}
            self.proc = types.SimpleNamespace(stdin=types.SimpleNamespace(
                write=lambda line: order.append(line.split()[1]), flush=lambda: None))

        def answer(self, tag, who):
            assert tag == "TIME" and who == order[-1]
            step_s = per_step[who][order.count(who) - 1]
            return json.dumps({"step_s": step_s, "warmup": {"steps": 3, "step_s": 2 * step_s}})

        def close(self):
            pass

    monkeypatch.setattr(bench_cpu_steps, "Worker", FakeWorker)
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    out = tmp_path / "steps.json"
    bench_cpu_steps.main(["--steps", "completion", "--rounds", "3", "--settle", "0", "--variant",
                          "faster:NARROW_MAX_CHANNELS=0", "--env-variant",
                          "tuned:GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0,"
                          "jax_cpu_enable_async_dispatch=false", "--out", str(out)])
    # The conv_forms variants share ours' process; an environment variant has its own.
    assert [spec["side"] for spec in specs] == ["ours", "ours", "pytorch"]
    assert specs[0]["variants"] == {"ours": {}, "faster": {"NARROW_MAX_CHANNELS": 0}}
    assert specs[0]["env"] is None and specs[2]["env"] is None
    assert specs[1]["variants"] == {"tuned": {}}
    assert specs[1]["env"] == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0"}
    # A `jax_` key is a JAX option for that process, not an environment variable.
    assert specs[1]["jax_options"] == {"jax_cpu_enable_async_dispatch": False}
    rounds = [order[i:i + 4] for i in range(0, 12, 4)]
    assert all(sorted(r) == ["faster", "ours", "pytorch", "tuned"] for r in rounds), order
    sides = json.loads(out.read_text())["steps"]["completion"]["sides"]
    assert sides["ours"]["median_s"] == pytest.approx(0.10)
    assert sides["ours"]["fastest_s"] == pytest.approx(0.10)
    assert sides["faster"]["fastest_s"] == pytest.approx(0.05)
    assert sides["ours"]["pytorch_over_ours"] == pytest.approx(0.8)
    assert sides["ours"]["pytorch_over_ours_per_round"] == pytest.approx(0.8)
    assert sides["faster"]["pytorch_over_ours"] == pytest.approx(1.6)
    assert "pytorch_over_ours" not in sides["pytorch"]
    assert sides["tuned"]["pytorch_over_ours"] == pytest.approx(2.0)
    # Each turn's warm-up steps are timed apart, not in the rounds' figures.
    assert all(spec["turn_warmup"] == 1 and spec["turn_warmup_s"] == 2.0 for spec in specs)
    assert [w["step_s"] for w in sides["ours"]["turn_warmups"]] == pytest.approx([0.2, 0.4, 0.2])
    assert sides["ours"]["turn_warmup_median_s"] == pytest.approx(0.20)
    # Which side's turn came just before each round, and the medians grouped by it.
    for name, side in sides.items():
        mine = [i for i, who in enumerate(order) if who == name]
        assert side["round_after"] == [order[i - 1] if i else None for i in mine]
        groups = {}
        for after, t in zip(side["round_after"], per_step[name]):
            groups.setdefault(after or "-", []).append(t)
        assert side["median_s_by_previous_turn"] == pytest.approx(
            {after: statistics.median(times) for after, times in groups.items()})
    with pytest.raises(SystemExit, match="own name"):
        bench_cpu_steps.main(["--variant", "ours:NARROW_MAX_CHANNELS=0"])
    with pytest.raises(SystemExit):  # argparse: not one of the settings bench_cpu knows
        bench_cpu_steps.main(["--trains", "celeba"])


def _table_cells(line: str) -> int:
    """The number of cells in a Markdown table row; `|` escaped or inside code spans is text."""
    outside = re.sub(r"`[^`]*`", "", line.strip().replace("\\|", ""))
    return len(outside.strip("|").split("|"))


def test_markdown_tables_are_whole():
    """Each table in the docs is a header, a separator and rows of the header's width, with
    nothing but a blank line between it and the text before: a row appended after the paragraph
    that follows a table renders as text, and a row with a cell too many loses that cell."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", root / "benchmarks" / "README.md", *root.glob("docs/*.md")]
    for page in pages:
        lines = page.read_text().split("\n")
        width = None
        fenced = False
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                fenced = not fenced
            if fenced or not line.startswith("|"):
                width = None
                continue
            where = f"{page.relative_to(root)}:{number}"
            if width is None:
                assert number == 1 or lines[number - 2] == "", (
                    f"{where}: a table row straight after text")
                assert re.fullmatch(r"\|( *:?-+:? *\|)+", lines[number].strip()), (
                    f"{where}: a table without a separator row under its header")
                width = _table_cells(line)
            else:
                cells = _table_cells(line)
                assert cells == width, f"{where}: {cells} cells, not {width}"


def test_bench_cpu_steps_worker_warms_each_turn_for_its_steps_and_seconds(monkeypatch, capsys):
    """A turn runs untimed steps, at least `turn_warmup` and for at least `turn_warmup_s`
    seconds, before its timed ones, and answers both times."""
    import io

    import bench_cpu_steps

    calls = []
    clock = {"t": 0.0}
    monkeypatch.setattr(bench_cpu_steps.time, "perf_counter", lambda: clock["t"])

    def step():  # each step takes 0.25 s of the fake clock
        clock["t"] += 0.25
        calls.append(1)

    monkeypatch.setattr(bench_cpu_steps.bench_cpu, "torch_train_step",
                        lambda trains, name: (step, None))
    spec = {"side": "pytorch", "trains": "quickstart", "step": "joint", "iters": 4, "warmup": 3}
    for steps, seconds, expected in ((2, 1.0, 4), (6, 1.0, 6), (1, 0.0, 1), (0, 0.6, 3)):
        calls.clear()
        monkeypatch.setattr(sys, "stdin", io.StringIO("RUN pytorch\n"))
        bench_cpu_steps.worker(dict(spec, turn_warmup=steps, turn_warmup_s=seconds))
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("READY ") and len(lines) == 2
        answer = json.loads(lines[1].removeprefix("TIME "))
        assert len(calls) == 3 + expected + 4
        assert answer["warmup"] == {"steps": expected, "step_s": pytest.approx(0.25)}
        assert answer["step_s"] == pytest.approx(0.25)
    monkeypatch.setattr(sys, "stdin", io.StringIO("RUN pytorch\n"))
    bench_cpu_steps.worker(dict(spec, turn_warmup=0, turn_warmup_s=0.0))
    assert json.loads(capsys.readouterr().out.splitlines()[1][5:])["warmup"] is None


def test_bench_cpu_steps_pauses_time_each_step_after_each_pause(monkeypatch, tmp_path, capsys):
    """`--pauses`: every side sleeps for every pause in every round, then reports each step
    after it; the medians are taken step by step over the rounds (fake workers)."""
    import types

    import bench_cpu_steps

    asked = []
    after = {"ours": {0.0: [[0.1, 0.1], [0.3, 0.1], [0.2, 0.1]], 1.0: [[0.5, 0.2]] * 3},
             "pytorch": {0.0: [[0.2, 0.2]] * 3, 1.0: [[0.2, 0.3]] * 3}}

    class FakeWorker:
        def __init__(self, spec, timeout, env=None):
            assert spec["after_pause"] == 2
            self.info = {name: {} for name in spec.get("variants", {"pytorch": None})}
            self.proc = types.SimpleNamespace(stdin=types.SimpleNamespace(
                write=lambda line: asked.append(line.split()), flush=lambda: None))

        def answer(self, tag, who):
            command, name, seconds = asked[-1]
            assert (tag, command, name) == ("STEPS", "PAUSE", who)
            done = sum(1 for a in asked if a == asked[-1])
            return json.dumps(after[who][float(seconds)][done - 1])

        def close(self):
            pass

    monkeypatch.setattr(bench_cpu_steps, "Worker", FakeWorker)
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    out = tmp_path / "pauses.json"
    bench_cpu_steps.main(["--steps", "joint", "--rounds", "3", "--pauses", "0,1",
                          "--after-pause", "2", "--out", str(out)])
    assert sorted(tuple(a) for a in asked) == sorted(
        [("PAUSE", side, s) for side in ("ours", "pytorch") for s in ("0.0", "1.0")] * 3)
    pauses = json.loads(out.read_text())["steps"]["joint"]["pauses"]
    assert pauses["ours"]["0"]["step_medians_s"] == pytest.approx([0.2, 0.1])
    assert pauses["ours"]["1"]["step_medians_s"] == pytest.approx([0.5, 0.2])
    assert pauses["pytorch"]["1"]["runs_s"] == [[0.2, 0.3]] * 3
    assert "ours             after 1 s:  500.0  200.0 ms" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--pauses"):
        bench_cpu_steps.main(["--pauses", "-1"])


def test_bench_cpu_steps_worker_sleeps_then_times_each_step_alone(monkeypatch, capsys):
    import io

    import bench_cpu_steps

    events = []
    monkeypatch.setattr(bench_cpu_steps.time, "sleep", lambda s: events.append(("sleep", s)))
    monkeypatch.setattr(bench_cpu_steps.bench_cpu, "torch_train_step",
                        lambda trains, name: (lambda: events.append("step"), None))
    monkeypatch.setattr(sys, "stdin", io.StringIO("PAUSE pytorch 0.3\n"))
    bench_cpu_steps.worker({"side": "pytorch", "trains": "quickstart", "step": "joint",
                            "iters": 4, "warmup": 2, "turn_warmup": 1, "turn_warmup_s": 2.0,
                            "after_pause": 3})
    assert events == ["step", "step", ("sleep", 0.3), "step", "step", "step"]
    times = json.loads(capsys.readouterr().out.splitlines()[1].removeprefix("STEPS "))
    assert len(times) == 3 and all(t >= 0 for t in times)
