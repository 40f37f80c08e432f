"""The one command-line wrapper (`cli.Command`) every command uses: help, flags, endings."""

from __future__ import annotations

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
