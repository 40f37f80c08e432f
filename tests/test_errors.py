"""Errors tell the truth: a user's mistake is one line and exit 1, a bug keeps its traceback.

`main.main` runs in-process here (no subprocess, no training): its flags are parsed as the command
line would, and the logging state it changes is put back afterwards.
"""

from __future__ import annotations

import logging
import os

import pytest

from glcic_jax import checkpointing, errors, input_pipeline, main, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_main(monkeypatch):
    """`run_main(*flags)`: main.main with these flags, after the project's root folder is the
    working directory (configs/ paths); restores absl's flags and the logging state after."""
    root = logging.getLogger()
    saved = (root.level, [(h, list(h.filters)) for h in root.handlers],
             logging.getLogger("absl").level, logging.root.manager.disable)
    monkeypatch.chdir(ROOT)

    def run(*flags: str) -> None:
        argv = ["glcic_jax.main", *flags]
        monkeypatch.setattr("sys.argv", argv)  # where ml_collections finds --config.* overrides
        main.FLAGS(argv)
        main.main(["glcic_jax.main"])

    yield run
    main.FLAGS.unparse_flags()
    level, filters, absl_level, disabled = saved
    root.setLevel(level)
    for handler, kept in filters:
        handler.filters[:] = kept
    logging.getLogger("absl").setLevel(absl_level)
    logging.disable(disabled)


TINY = "--config=configs/quickstart.py:tiny"


def test_a_bug_in_training_keeps_its_traceback(run_main, monkeypatch, tmp_path, capsys):
    # Before errors.UserError, main turned every ValueError and OSError into one
    # line: a programming error deep in training showed no traceback.
    for bug in (ValueError("operands could not be broadcast"), OSError("a bug's OSError")):
        def train_with_a_bug(config, workdir, bug=bug):
            raise bug

        monkeypatch.setattr(train, "train_and_evaluate", train_with_a_bug)
        with pytest.raises(type(bug), match=str(bug)):
            run_main(TINY, f"--workdir={tmp_path}")
        assert "error:" not in capsys.readouterr().err


def _one_line_exit_1(run_main, capsys, *flags: str) -> str:
    with pytest.raises(SystemExit) as info:
        run_main(*flags)
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_user_errors_are_one_line(run_main, monkeypatch, tmp_path, capsys):
    # A bad config, detected by config_lib.validate before anything is written.
    line = _one_line_exit_1(run_main, capsys, TINY, f"--workdir={tmp_path / 'a'}",
                            "--config.batch_size=0")
    assert line.startswith("error: Bad config: ") and "batch_size" in line
    # Missing training data, detected by the input pipeline.
    line = _one_line_exit_1(run_main, capsys, TINY, f"--workdir={tmp_path / 'b'}",
                            "--config.data.source=folder",
                            f"--config.data.path={tmp_path / 'no_such_folder'}")
    assert "no_such_folder" in line
    # An incompatible workdir (what checkpointing.check_compatible raises on resume).
    def incompatible(config, workdir):
        raise checkpointing.IncompatibleCheckpointError("The workdir holds a checkpoint from an "
                                                        "incompatible config (data.image_size).")

    monkeypatch.setattr(train, "train_and_evaluate", incompatible)
    line = _one_line_exit_1(run_main, capsys, TINY, f"--workdir={tmp_path / 'c'}")
    assert "incompatible config" in line


def test_the_projects_errors_are_user_errors_and_keep_their_builtin_bases():
    from glcic_jax import complete, convert, inference, torch7

    for kind, family, builtin in (
            (checkpointing.IncompatibleCheckpointError, errors.WorkdirError, ValueError),
            (checkpointing.NoIntactCheckpointError, errors.WorkdirError, FileNotFoundError),
            (checkpointing.CheckpointWriteError, errors.WorkdirError, OSError),
            (inference.LoadError, errors.WorkdirError, ValueError),
            (convert.ConversionError, errors.UserError, ValueError),
            (torch7.Torch7Error, errors.InputFileError, ValueError),
            (input_pipeline.DataError, errors.DataError, RuntimeError),
            (complete.CompletionError, errors.UserError, Exception),
            (train.NonFiniteError, errors.UserError, FloatingPointError)):
        assert issubclass(kind, family) and issubclass(kind, builtin), kind


def test_a_workdir_that_cannot_be_written_is_a_user_error(tmp_path, tiny_config):
    from glcic_jax import summary

    (tmp_path / "config.json").mkdir()  # os.replace onto a folder fails, as a full disk would
    writer = summary.Writer(str(tmp_path))
    with pytest.raises(errors.InputFileError, match=r"Could not write .*config\.json"):
        writer.write_config(tiny_config)
    writer.close()
