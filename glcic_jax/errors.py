"""Errors a user causes, as opposed to errors in our code.

Every command (`main`, `complete`, `convert`, `serve`) turns a `UserError` into one line,
`error: <message>`, and exit status 1. Anything else is a bug and keeps its traceback. Raise the
most specific kind where the problem is detected, with a message that says what to do:

  ConfigError     a config value, flag or combination of them that cannot work
  DataError       the training or evaluation data: missing, empty, unreadable, too small
  InputFileError  a file the user named (image, mask, weights, checkpoint file): missing,
                  unreadable, damaged, or an output that cannot be written
  WorkdirError    a workdir or checkpoint that does not fit the config or the command

The classes also derive from the built-in error each replaced (ValueError, OSError, ...), so code
that caught those still does.
"""

from __future__ import annotations


class UserError(Exception):
    """Base: something the user can fix. Its message is the whole report (no traceback)."""


class ConfigError(UserError, ValueError):
    """A config value, flag or combination that cannot work."""


class DataError(UserError, RuntimeError):
    """Training or evaluation data that is missing, empty, unreadable or too small."""


class InputFileError(UserError, OSError):
    """A file the user named cannot be read (or an output cannot be written)."""


class WorkdirError(UserError, ValueError):
    """A workdir or checkpoint that does not fit the config or the command."""
