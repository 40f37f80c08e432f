"""A stand-in for `python -m glcic_jax.main` that tests/test_launcher.py starts through
launch/local_multiprocess.sh (as its PYTHON): it records what it was given and how it was
signalled, and plays the part a test asks for (FAKE_MODE), in milliseconds instead of the minutes
a real multi-process run takes to compile.

FAKE_MODE:
  record   write the record and exit 0
  train    run until signalled: the first SIGINT/SIGTERM is noted and the process exits 0 two
           seconds later (a real run finishes its step and checkpoints), or with FAKE_STAY=1
           not by itself (a long step); a second SIGINT exits 130 at once
  die      process 1 kills itself with SIGKILL after 1 s; process 0 is stuck (ignores SIGTERM,
           as a process blocked in a collective does) until it is killed; if it is not
           killed within 60 s it records EXIT and exits 0
"""

import json
import os
import signal
import sys
import time

argv = sys.argv[1:]
pid_arg = [a for a in argv if a.startswith("--process_id=")]
index = int(pid_arg[0].split("=")[1]) if pid_arg else -1
out = os.environ["FAKE_OUT"]
mode = os.environ.get("FAKE_MODE", "record")
events: list[str] = []


def record() -> None:
    with open(os.path.join(out, f"process_{index}.json.tmp"), "w") as f:
        json.dump({"cwd": os.getcwd(), "argv": argv, "events": events,
                   "pythonpath": os.environ.get("PYTHONPATH", "")}, f)
    os.replace(os.path.join(out, f"process_{index}.json.tmp"),
               os.path.join(out, f"process_{index}.json"))


first = 0.0


def handle(signum, frame):
    global first
    first = first or time.time()
    events.append(signal.Signals(signum).name)
    record()
    if signum == signal.SIGINT and events.count("SIGINT") >= 2:
        sys.exit(130)


if mode == "train":  # handlers first: the test signals as soon as the record exists
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
record()
print(f"fake process {index} started", flush=True)
if mode == "record":
    sys.exit(0)

if mode == "train":
    deadline = time.time() + 60
    stay = os.environ.get("FAKE_STAY") == "1"
    while time.time() < deadline and not (first and not stay and time.time() > first + 2.0):
        time.sleep(0.05)
    sys.exit(0)

if mode == "die":
    if index == 1:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    signal.signal(signal.SIGTERM, lambda *a: (events.append("SIGTERM"), record()))
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.05)
    events.append("EXIT")  # nobody stopped it
    record()
    sys.exit(0)
