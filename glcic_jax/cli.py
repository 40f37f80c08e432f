"""One command-line wrapper for every command (`main`, `complete`, `serve`, `convert`, ...).

A command is a `Command`: its help text, a function that defines its absl flags, and what to
say when Ctrl-C stops it. `Command.run(argv, body)` then does what every command must do:

  * `-h`, `--help` or `--helpfull` anywhere: print the help (the text, then every flag), exit 0;
  * parse the flags; a bad flag or a stray argument is one line, `error: ...`, with exit
    status `bad_flag_status` (1; `main` keeps absl's 2);
  * call `body(fv)` with the parsed `flags.FlagValues`; its return value is the exit status
    (None = 0);
  * an `errors.UserError` raised anywhere is one line `error: <message>`, exit 1; Ctrl-C
    (KeyboardInterrupt) is `error: Interrupted (Ctrl-C); <interrupted>.`, exit 130. Every other
    exception is a bug and keeps its traceback.

A new command (a sketch):

    from absl import flags
    from glcic_jax import cli, errors

    def _define_flags(fv):
        flags.DEFINE_string("workdir", None, "Training workdir.", flag_values=fv)

    def _run(fv):
        if not fv.workdir:
            raise errors.ConfigError("--workdir is required.")  # -> "error: ...", exit 1
        ...

    COMMAND = cli.Command("python -m glcic_jax.export", __doc__, _define_flags,
                          interrupted="nothing was written")
    run = functools.partial(COMMAND.run, body=_run)  # in-process (tests): returns the status
    main = functools.partial(COMMAND.main, body=_run)  # the console script: exits

`absl_app=True` (the training command) parses into absl's global FLAGS under `absl.app.run`,
for absl's log format, `--verbosity` and `--flagfile`; `exit` then lets it leave its own way.
A short command whose start-up users wait on (`complete`) ends with `cli.exit_now`.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from glcic_jax import errors

HELP_FLAGS = ("-h", "--help", "--helpfull")


def exit_now(status: int) -> NoReturn:
    """End the process with `status` as `sys.exit` would, less the interpreter's teardown.

    After a command's work, Python spends a noticeable part of a cold command's time on a CPU
    dismantling jax's modules and objects (docs/cpu_speed.md), memory the operating system frees
    at once anyway. The exit handlers still run and the console and log streams are flushed;
    only the module teardown is skipped. For commands whose own files are closed when they
    return, never for one with background writers (training's checkpoints and summaries)."""
    try:
        if hasattr(atexit, "_run_exitfuncs"):  # CPython: the handlers, as sys.exit runs them
            atexit._run_exitfuncs()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing left to save
                pass
    finally:
        os._exit(int(status))


class BadFlagError(errors.UserError, ValueError):
    """A flag absl cannot parse, an unknown flag, or an argument that is not a flag."""


def error(message: str) -> None:
    """Write `error: <message>` to stderr as one write call, so that no other thread's output
    lands inside the line (print() writes the text and the newline separately)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def flag_error_text(e: BaseException) -> str:
    """absl's / ml_collections' message for a bad flag, on one line.

    ml_collections reports an unknown config field as KeyError/AttributeError("'key'\\nDid you
    mean ..."); a config file whose get_config() raised embeds that traceback (its last line is
    the message)."""
    text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        lines = [lines[0].split("Traceback")[0].strip(" :"), lines[-1]]
    text = " ".join(lines)
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] == "'" else text


class Command:
    """One command's flags, help and endings; see the module docstring."""

    def __init__(self, prog: str, doc: str, define_flags: Callable, interrupted, *,
                 usage: str = "", bad_flag_status: int = 1, bad_flag_prefix: str = "",
                 absl_app: bool = False,
                 exit: Callable[[int], NoReturn] = sys.exit):  # noqa: A002 - sys.exit's role
        """`prog`: how the command is typed. `doc`: the help text. `define_flags(fv)`: defines
        the flags on `fv`. `interrupted`: what the Ctrl-C line adds (a string, or a function of
        the parsed flags; '' adds nothing). `usage`: the hint after a bad flag."""
        self.prog = prog
        self.usage = usage or f"{prog} --flag=value ..."
        self.doc = doc.strip()
        self.define_flags = define_flags
        self.interrupted = interrupted
        self.bad_flag_status = bad_flag_status
        self.bad_flag_prefix = bad_flag_prefix
        self.absl_app = absl_app
        self.exit = exit
        self._global_defined = False

    def flag_values(self):
        """The FlagValues to parse into: a fresh one per call (a command run twice in one
        process starts from the defaults), or absl's global FLAGS with `absl_app`."""
        from absl import flags

        if not self.absl_app:
            fv = flags.FlagValues()
            self.define_flags(fv)
            return fv
        if not self._global_defined:
            self.define_flags(flags.FLAGS)
            self._global_defined = True
        return flags.FLAGS

    def help(self) -> str:
        fv = self.flag_values()
        if self.absl_app:  # only this command's flags, not every library's
            text = "\n".join(fv.module_help(m) for m in fv.flags_by_module_dict()
                             if m.startswith("glcic_jax") or m.endswith(".py") or m == "__main__")
        else:
            text = fv.get_help()
        return f"{self.doc}\n\nFlags:\n{text}"

    def parse(self, argv: Sequence[str]):
        """The parsed FlagValues; raises BadFlagError (one line) for what absl refuses."""
        from absl import flags

        fv = self.flag_values()
        try:
            rest = fv(list(argv))
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
            raise BadFlagError(self.bad_flag_prefix + flag_error_text(e)) from e
        if len(rest) > 1:
            raise BadFlagError(f"{self.bad_flag_prefix}unexpected arguments: "
                               f"{' '.join(rest[1:])} (flags are --name=value).")
        return fv

    def _bad_flags(self, e: BadFlagError) -> int:
        error(f"{e} (usage: {self.usage}; -h lists the flags)")
        return self.bad_flag_status

    def call(self, body: Callable, fv) -> int:
        """Run `body(fv)`; a UserError or Ctrl-C as one line; returns the exit status."""
        try:
            status = body(fv)
        except errors.UserError as e:
            error(str(e))
            return 1
        except KeyboardInterrupt:
            note = self.interrupted(fv) if callable(self.interrupted) else self.interrupted
            error(f"Interrupted (Ctrl-C){'; ' + note if note else ''}.")
            return 130
        return int(status or 0)

    def run(self, argv: Sequence[str], body: Callable) -> int:
        """The command, in-process: `argv[0]` is the program name. Returns the exit status
        (with `absl_app`, it exits through `exit` instead)."""
        if any(a in HELP_FLAGS for a in argv[1:]):
            print(self.help())
            return 0
        if self.absl_app:
            from absl import app

            def parse_or_leave(args):
                try:
                    return self.parse(args)
                except BadFlagError as e:
                    self.exit(self._bad_flags(e))

            def app_main(_):
                self.exit(self.call(body, self.flag_values()))

            app.run(app_main, argv=list(argv), flags_parser=parse_or_leave)
            return 0  # pragma: no cover - app.run exits
        try:
            fv = self.parse(argv)
        except BadFlagError as e:
            return self._bad_flags(e)
        return self.call(body, fv)

    def main(self, body: Callable) -> NoReturn:
        """The console script: run with sys.argv and exit with its status."""
        self.exit(self.run(sys.argv, body))
