"""What the console shows: this project's lines by default, every library's with `--verbosity`.

Libraries log a lot that a user of this tool cannot act on: jax's "Unable to initialize backend
'tpu'", Orbax's warnings about read-only managers in eval and complete, tfds' and TensorFlow's
INFO lines, TensorFlow's C++ start-up messages (oneDNN, CPU features). By default only our own
records reach the console (the root logger, which `logging.info(...)` in our modules uses, and
loggers named `glcic_jax...`); an explicit absl `--verbosity=N` (e.g. 0 for INFO, 1 for DEBUG)
shows everything again. Errors we report are printed once, as `error: ...`, by the entry points.
"""

from __future__ import annotations

import logging
import os


def quiet_native_logs(verbose: bool = False) -> None:
    """Before TensorFlow / XLA load: hide their C++ INFO and WARNING lines unless `verbose`
    (TF_CPP_MIN_LOG_LEVEL is read once, when the library is loaded; a value the user set wins)."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class OursOnly(logging.Filter):
    """Pass the records this project logs; drop every library's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "root" or record.name.startswith("glcic_jax")


_FILTER = OursOnly()


def configure(verbose: bool = False, level: int = logging.INFO) -> None:
    """Show our records at `level` and up; with `verbose`, leave every logger as absl set it."""
    root = logging.getLogger()
    if verbose:
        return
    root.setLevel(level)
    if not root.handlers:  # outside absl.app (complete.py): a plain stderr handler
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    # Libraries' records are dropped by the filter anyway; raising their loggers' levels saves
    # the formatting work (absl's logger: Orbax and tfds log through it on every save / read).
    logging.getLogger("absl").setLevel(logging.WARNING)
