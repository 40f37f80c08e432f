"""What every benchmark script shares: paths, goals, the timing loop, run metadata, JSON output.

Pure Python (no JAX, no torch), so that `torch_reference.py` and the driver of `bench_steps.py`
import it without touching a device. Importing it puts the repository root and `benchmarks/` on
`sys.path`, so a script run as `python benchmarks/NAME.py` can import `glcic_jax` and `flops`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# The throughput issue's targets on one H100 (batch 96, bfloat16), in images per second.
GOALS_IMG_S = {"completion": 2000.0, "joint": 1500.0}
# A Places-like mean pixel for the synthetic batches; its value does not affect speed.
MEAN_PIXEL = (0.458, 0.441, 0.408)


def csv_list(text: str, cast: Callable[[str], Any] = str) -> list:
    """'32,96' -> [32, 96] with cast=int; empty items are dropped ('' -> [])."""
    return [cast(t) for t in str(text).split(",") if t.strip()]


def parser(doc: str) -> argparse.ArgumentParser:
    """The flag parser every script starts from: argparse, `--name value` flags, `-h` printing
    the script's docstring (its first paragraph as the description, the rest as the epilog)."""
    head, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_timing_args(p: argparse.ArgumentParser) -> None:
    """--warmup / --iters / --repeats, with the defaults every timed script uses (3, 10, 5)."""
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling")
    p.add_argument("--iters", type=int, default=10, help="back-to-back calls per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")


class Timing(NamedTuple):
    times: list[float]  # seconds per call, one value per repeat
    warmup_s: float  # wall time of the warm-up calls, waited for
    last: Any  # what the last call returned


def time_calls(
    fn: Callable[[], Any],
    warmup: int,
    iters: int,
    repeats: int,
    wait: Callable[[Any], Any] = lambda out: None,
) -> Timing:
    """Seconds per call of `fn()`: `repeats` times the wall time of `iters` back-to-back calls.

    `warmup` untimed calls come first. Within a repeat the calls are queued without waiting (as a
    training loop does); `wait(out)` (JAX: `jax.block_until_ready`, PyTorch: a CUDA
    synchronize) runs after the warm-up and before and after every repeat, so each repeat times
    exactly its own calls.
    """
    out = None
    t0 = time.perf_counter()
    for _ in range(warmup):
        out = fn()
    wait(out)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        wait(out)
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn()
        wait(out)
        times.append((time.perf_counter() - t0) / iters)
    return Timing(times, warmup_s, out)


def git_commit() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_info() -> dict:
    """The CPU by name, family/model and vector extensions: two machines both called "AMD EPYC"
    differed 2.3x in the quickstart's CPU time, and their different vector units (AVX-512 or
    not) sum in different orders, so a run's numbers are only comparable on the same kind."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            fields = {}
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return info
    flags = set(fields.get("flags", "").split())
    info.update(cpu=fields.get("model name", info["cpu"]), cpu_family=fields.get("cpu family"),
                cpu_model=fields.get("model"),
                vector=[f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags])
    return info


def run_meta(**extra: Any) -> dict:
    """The `meta` block of every result file: when, which Python, which machine, plus `extra`."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        "host_cpus": os.cpu_count(),
        **cpu_info(),
        **extra,
    }


def write_json(path: str, report: dict) -> None:
    """Write `report` to `path` (folders created) through a temporary file and a rename, so a
    run cut short mid-write leaves the previous complete file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Requests to the web server (bench_serve, bench_serve_load, bench_cpu)


def png_bytes(pixels) -> bytes:
    """uint8 pixels -> a PNG file's bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_photo(h: int, w: int, seed: int):
    """A smooth, slightly noisy uint8 RGB photo (sinusoids per channel); its content does not
    affect speed, but a real-looking image keeps the PNG sizes realistic."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * (yy * rng.random() + xx * rng.random()) + c) for c in range(3)],
                   -1) * 0.4 + 0.5
    return (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)


def multipart_form(image: bytes, mask: bytes) -> tuple[bytes, str]:
    """`(body, content_type)` of the form the page posts: `image` and `mask` as PNG files."""
    import uuid

    boundary = uuid.uuid4().hex
    body = b""
    for name, data in (("image", image), ("mask", mask)):
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                 f'filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n').encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
