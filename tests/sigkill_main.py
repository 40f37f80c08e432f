"""Test helper: run a glcic_jax command that SIGKILLs itself in the middle of a write.

    GLCIC_SIGKILL_IN=PIL.Image:Image.save [GLCIC_SIGKILL_CALL=1] [GLCIC_SIGKILL_ENTRY=main] \
        python tests/sigkill_main.py glcic_jax.complete --workdir=... --image=... --output=...
    GLCIC_SIGKILL_MODULE=glcic_jax.main GLCIC_SIGKILL_ENTRY=run GLCIC_SIGKILL_IN=... \
        python tests/sigkill_main.py --config=... --workdir=...

The function named by GLCIC_SIGKILL_IN (`module:attribute.path`) is wrapped so that its
GLCIC_SIGKILL_CALL-th call (1-based, default 1) kills the process with SIGKILL as it starts:
inside a write whose temporary file or folder already exists (`PIL.Image:Image.save` is called
with the open temporary file; `glcic_jax.convert:_verify` runs once the converted checkpoint is in
its temporary folder). A kill from outside lands at such a moment only by chance; this lands
there every time. The product has no test-only code path: the helper only wraps a function before
handing over to the real entry point.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

module_name, _, attr_path = os.environ["GLCIC_SIGKILL_IN"].partition(":")
KILL_AT_CALL = int(os.environ.get("GLCIC_SIGKILL_CALL", "1"))

owner = importlib.import_module(module_name)
*parents, name = attr_path.split(".")
for part in parents:
    owner = getattr(owner, part)
real = getattr(owner, name)
calls = 0


@functools.wraps(real)
def killing(*args, **kwargs):
    global calls
    calls += 1
    if calls == KILL_AT_CALL:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)


setattr(owner, name, killing)

if __name__ == "__main__":
    target = os.environ.get("GLCIC_SIGKILL_MODULE")  # else the first argument names it
    if not target:
        target = sys.argv[1]
        sys.argv = [target, *sys.argv[2:]]
    # The module object whose function was wrapped: `main()` of complete and convert, `run()` of
    # glcic_jax.main (GLCIC_SIGKILL_ENTRY=run).
    getattr(importlib.import_module(target), os.environ.get("GLCIC_SIGKILL_ENTRY", "main"))()
