"""The one command-line wrapper (`cli.Command`) every command uses: help, flags, endings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from absl import flags

from glcic_jax import cli, complete, convert, errors, export, main, serve


def _define(fv):
    flags.DEFINE_string("name", "world", "Who to greet.", flag_values=fv)
    flags.DEFINE_integer("times", 1, "How often.", lower_bound=1, flag_values=fv)


COMMAND = cli.Command("python -m greet", "Greets someone.", _define,
                      interrupted=lambda fv: f"greeted {fv.name} partly")


def test_a_body_gets_the_parsed_flags_and_its_status(capsys):
    greet = lambda fv: print(fv.name * fv.times)  # noqa: E731
    assert COMMAND.run(["greet", "--name=you", "--times=2"], greet) == 0
    assert capsys.readouterr().out == "youyou\n"
    assert COMMAND.run(["greet"], lambda fv: 3 if fv.name == "world" else 4) == 3  # defaults again


@pytest.mark.parametrize("argv, words", [
    (["greet", "--nme=x"], "Unknown command line flag 'nme'"),
    (["greet", "--times=0"], "--times"),
    (["greet", "stray"], "unexpected arguments: stray"),
])
def test_a_bad_flag_is_one_line_and_exit_1(argv, words, capsys):
    assert COMMAND.run(argv, lambda fv: pytest.fail("the body ran")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
    assert "usage: python -m greet --flag=value ...; -h lists the flags" in err


def test_user_errors_and_ctrl_c_are_one_line_and_a_bug_keeps_its_traceback(capsys):
    def user_error(fv):
        raise errors.ConfigError("set --name to someone")

    def ctrl_c(fv):
        raise KeyboardInterrupt

    def bug(fv):
        raise ValueError("a bug")

    assert COMMAND.run(["greet"], user_error) == 1
    assert capsys.readouterr().err == "error: set --name to someone\n"
    assert COMMAND.run(["greet", "--name=Ann"], ctrl_c) == 130
    assert capsys.readouterr().err == "error: Interrupted (Ctrl-C); greeted Ann partly.\n"
    with pytest.raises(ValueError, match="a bug"):
        COMMAND.run(["greet"], bug)


@pytest.mark.parametrize("command, flag", [(complete.COMMAND, "--image"),
                                           (serve.COMMAND, "--port"),
                                           (convert.COMMAND, "--source"),
                                           (export.COMMAND, "--format"),
                                           (main.COMMAND, "--config")])
@pytest.mark.parametrize("asking", ["-h", "--help"])
def test_every_command_answers_help_with_its_flags(command, flag, asking, capsys):
    assert command.run(["prog", asking], lambda fv: pytest.fail("the body ran")) == 0
    out = capsys.readouterr().out
    assert out.startswith(command.doc.splitlines()[0]) and flag in out
    assert "--alsologtostderr" not in out  # absl's own flags stay out of the training command's


def test_exit_now_flushes_runs_exit_handlers_and_skips_the_teardown(tmp_path):
    """`cli.exit_now` (a cold `complete`'s ending): the status, the buffered output of a pipe
    and the exit handlers as `sys.exit` gives them; the interpreter's teardown of modules (the
    finalizer below) is what it skips."""
    marker = tmp_path / "handler_ran"
    code = f"""
import atexit, logging, sys
from glcic_jax import cli
class Torn:
    def __del__(self):
        print("teardown", flush=True)
torn = Torn()
atexit.register(lambda: open({str(marker)!r}, "w").close())
logging.basicConfig(stream=sys.stderr, format="%(message)s")
logging.warning("logged")
print("written, not yet flushed", end="")
cli.exit_now(3)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "written, not yet flushed", proc.stdout
    assert "logged" in proc.stderr
    assert marker.exists()
    # The same program ending through sys.exit tears the module down (the finalizer prints).
    ended = subprocess.run([sys.executable, "-c", code.replace("cli.exit_now(3)", "sys.exit(3)")],
                           capture_output=True, text=True, timeout=120)
    assert ended.returncode == 3 and ended.stdout.endswith("teardown\n"), ended.stdout
