"""First vs. later requests to the web server (`glcic_jax.serve`) for a 512 px photo.

Starts the server in-process on a free loopback port and POSTs photos to /api/complete, timing
each request end to end (upload, decoding, completion, PNG encoding) as a client sees it:

  1. a 512x512 photo: the network is compiled for 512x512 first;
  2. another 512x512 photo: the network's forward pass only;
  3. a 500x472 photo: a new network input shape, so it compiles again (the server completes
     exactly as `glcic_jax.complete` does, one compilation per padded input shape).

Without --workdir the full GLCIC completion network is served from an untrained checkpoint
(`tests/test_complete.make_workdir`; the weights do not change the speed), at full resolution
(--notrain_scale: the :tiny config's training scale would shrink the photos to 40 px). The
persistent compilation cache is switched off so that the first request pays the whole
compilation.

  JAX_PLATFORMS=cpu python benchmarks/bench_serve.py [--workdir=runs/quickstart]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # time cold compilation
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import _harness  # noqa: E402  (benchmarks/_harness.py: the shared flag parser)
import numpy as np

from glcic_jax import serve


def _request(url: str, image: np.ndarray, hole: np.ndarray) -> tuple[float, dict]:
    body, content_type = _harness.multipart_form(
        _harness.png_bytes(image), _harness.png_bytes(hole.astype(np.uint8) * 255))
    req = urllib.request.Request(url + "api/complete", data=body, method="POST",
                                 headers={"Content-Type": content_type})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=1800) as r:
        r.read()
        headers = dict(r.headers)
    return time.perf_counter() - t0, headers


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--workdir", help="a workdir to serve (default: an untrained checkpoint)")
    args = parser.parse_args()

    import jax

    tmp = None
    workdir = args.workdir
    if workdir is None:
        from test_complete import make_workdir

        tmp = tempfile.TemporaryDirectory()
        workdir = make_workdir(tmp.name)
    t0 = time.perf_counter()
    service = serve.Service(serve.Model(workdir), max_size=1024, train_scale=False)
    load_s = time.perf_counter() - t0
    server = serve.Server(service, "127.0.0.1", 0).start()
    url = server.url

    # XLA compilation time per request, from JAX's own monitoring events.
    compile_s = [0.0]

    def on_duration(event: str, duration: float, **kwargs) -> None:
        if event.endswith("backend_compile_duration"):
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)

    rows = []
    for label, (h, w), seed in (("first 512x512 (compiles)", (512, 512), 0),
                                ("second 512x512", (512, 512), 1),
                                ("500x472, a new shape", (472, 500), 2)):
        hole = np.zeros((h, w), bool)
        hole[h // 3 : h // 3 + 128, w // 4 : w // 4 + 160] = True
        compile_s[0] = 0.0
        secs, headers = _request(url, _harness.synthetic_photo(h, w, seed), hole)
        rows.append({"request": label, "wall_s": round(secs, 2),
                     "completing_s": float(headers["X-Completion-Seconds"]),
                     "xla_compile_s": round(compile_s[0], 2),
                     "network_size": headers["X-Network-Size"]})
        print(f"{label:28s} {secs:7.2f} s end to end, {rows[-1]['completing_s']:7.2f} s "
              f"completing, of which {compile_s[0]:.2f} s compiling", flush=True)
    server.stop()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "loadavg_after": [round(x, 2) for x in os.getloadavg()],
               "device": jax.devices()[0].platform, "jax": jax.__version__}
    print(json.dumps({"load_s": round(load_s, 2), "requests": rows, "machine": machine},
                     indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
