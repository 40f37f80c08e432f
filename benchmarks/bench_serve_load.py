"""Load and faults against the web server (`python -m glcic_jax.serve`), on loopback only.

Starts the server as a subprocess on a free 127.0.0.1 port and runs, one after the other:

  1. one request to compile the network for the photos' shape;
  2. N concurrent valid requests (default 50): every one answered 200, or 503 with Retry-After
     when the queue is full, none reset;
  3. slow clients sending 1 byte a second while normal requests are served: 408 for the slow
     ones after --request_timeout, the normal ones answered meanwhile;
  4. cut-off uploads (the client closes its sending side mid-body): 400;
  5. a 10 GB Content-Length: 413 before anything is read;
  6. three concurrent decompression bombs (20 KB PNGs of 13000x13000 1-bit pixels): 413 from
     the header, nothing decoded;
  7. malformed multipart bodies and malformed HTTP (garbage request line, PUT, 70 KB URL,
     Content-Length: -5): 400/404/405 with a JSON error.

It prints the statuses, the latencies and the server's peak resident memory (VmHWM, Linux) next
to its memory after the warm-up, and checks that the server still answers /healthz. Without
--workdir an untrained `:tiny` checkpoint is served (`tests/test_complete.make_workdir`; the
weights do not change the costs measured here).

  JAX_PLATFORMS=cpu python benchmarks/bench_serve_load.py [--workdir=runs/quickstart]
      [--concurrent=50] [--size=256] [--out=benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import io
import json
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import _harness  # noqa: E402  (benchmarks/_harness.py: the shared flag parser)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402




def _post(url: str, body: bytes, ctype: str, timeout: float = 600):
    req = urllib.request.Request(url + "api/complete", data=body, method="POST",
                                 headers={"Content-Type": ctype})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, time.perf_counter() - t0, dict(r.headers), ""
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - t0, dict(e.headers), json.loads(e.read())["error"]
    except OSError as e:  # a reset or refused connection
        return 0, time.perf_counter() - t0, {}, repr(e)


def _raw(address, data: bytes, shut: bool = False, timeout: float = 60) -> tuple[int, str, float]:
    """Raw bytes on a fresh connection -> (status, JSON error, seconds); 0 if none came."""
    t0 = time.perf_counter()
    with socket.create_connection(address, timeout=timeout) as s:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
                head, sep, body = answer.partition(b"\r\n\r\n")
                if sep and b"content-length:" in head.lower():
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= n:
                        break
        except OSError:
            pass
    secs = time.perf_counter() - t0
    if not answer:
        return 0, "", secs
    head, _, body = answer.partition(b"\r\n\r\n")
    json_error = json.loads(body).get("error", "") if b"application/json" in head.lower() else (
        "NOT JSON: " + body[:80].decode("latin-1"))
    return int(head.split(b" ")[1]), json_error, secs


def _memory(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = round(int(value.split()[0]) / 1024, 1)  # MiB
    return out


def _counts(statuses) -> dict:
    out: dict = {}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return out


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--workdir", help="a workdir to serve (default: an untrained :tiny one)")
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--size", type=int, default=256, help="photo side, pixels")
    parser.add_argument("--slow", type=int, default=10, help="slow clients (1 byte/s)")
    parser.add_argument("--queue_size", type=int, default=16)
    parser.add_argument("--request_timeout", type=float, default=10.0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    workdir = args.workdir
    if workdir is None:
        from test_complete import make_workdir

        workdir = make_workdir(tmp.name)
    flags = [f"--workdir={workdir}", "--port=0", "--notrain_scale",
             f"--queue_size={args.queue_size}", f"--max_requests={args.concurrent + 32}",
             f"--request_timeout={args.request_timeout}", "--max_upload_mb=8"]
    proc = subprocess.Popen([sys.executable, "-m", "glcic_jax.serve", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "JAX_PLATFORMS": os.environ.get(
                                "JAX_PLATFORMS", "cpu")})
    log: list[str] = []
    url = None
    for line in proc.stdout:
        log.append(line)
        if "Serving on" in line:
            url = line.split("Serving on ")[1].split()[0]
            break
    if url is None:
        sys.exit("the server did not start:\n" + "".join(log))
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    address = (host, int(port))
    figures: dict = {"flags": flags}

    n = args.size
    hole = np.zeros((n, n), bool)
    hole[n // 3 : n // 3 + n // 4, n // 4 : n // 4 + n // 3] = True
    mask = _harness.png_bytes(hole.astype(np.uint8) * 255)
    forms = [_harness.multipart_form(
                 _harness.png_bytes(_harness.synthetic_photo(n, n, seed)), mask)
             for seed in range(args.concurrent)]

    status, secs, _, _ = _post(url, *forms[0])
    figures["warmup"] = {"status": status, "s": round(secs, 2)}
    figures["memory_after_warmup_mib"] = _memory(proc.pid)
    print(f"warm-up: {status} in {secs:.2f} s; memory {figures['memory_after_warmup_mib']}",
          flush=True)

    # 2. N concurrent valid requests.
    results: list = [None] * len(forms)

    def send(i):
        results[i] = _post(url, *forms[i])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(forms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(r[1] for r in results if r[0] == 200)
    figures["concurrent"] = {
        "n": len(forms), "statuses": _counts(r[0] for r in results), "wall_s": round(wall, 2),
        "latency_200_s": {"min": round(ok[0], 2), "median": round(ok[len(ok) // 2], 2),
                          "max": round(ok[-1], 2)} if ok else None,
        "retry_after_503": sorted({r[2].get("retry-after", r[2].get("Retry-After"))
                                   for r in results if r[0] == 503})}
    print(f"{len(forms)} concurrent: {figures['concurrent']}", flush=True)

    # 3. Slow clients (1 byte a second) while normal requests are served.
    head = (b"POST /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    slow = [socket.create_connection(address, timeout=60) for _ in range(args.slow)]
    for s in slow:
        s.sendall(head)
    normal = [_post(url, *forms[i]) for i in range(5)]
    answers: dict = {}
    t0 = time.perf_counter()
    while len(answers) < len(slow) and time.perf_counter() - t0 < args.request_timeout + 30:
        for s in slow:
            if s not in answers:
                try:
                    s.sendall(b"-")
                except OSError:
                    answers[s] = b""
        readable, _, _ = select.select([s for s in slow if s not in answers], [], [], 1.0)
        for s in readable:
            answers[s] = s.recv(65536)
    slow_status = [int(a.split(b" ")[1]) if a else 0 for a in answers.values()]
    for s in slow:
        s.close()
    figures["slow_clients"] = {
        "slow": len(slow), "slow_statuses": _counts(slow_status),
        "normal_meanwhile": [(r[0], round(r[1], 2)) for r in normal]}
    print(f"slow clients: {figures['slow_clients']}", flush=True)

    # 4. Cut-off uploads.
    cut = [_raw(address, head + forms[0][0][:5000].replace(
        forms[0][1].split("=")[1].encode(), b"b"), shut=True) for _ in range(10)]
    figures["cut_off"] = {"statuses": _counts(c[0] for c in cut), "error": cut[0][1]}
    print(f"cut-off uploads: {figures['cut_off']}", flush=True)

    # 5. A 10 GB Content-Length.
    big = _raw(address, head.replace(b"100000", str(10 * 10**9).encode()))
    figures["10GB_content_length"] = {"status": big[0], "s": round(big[2], 3), "error": big[1]}
    print(f"10 GB Content-Length: {figures['10GB_content_length']}", flush=True)

    # 6. Decompression bombs: three at once.
    bomb_img = Image.new("1", (13000, 13000))
    buf = io.BytesIO()
    bomb_img.save(buf, format="PNG", optimize=True)
    del bomb_img
    bomb = buf.getvalue()
    bombs: list = [None] * 3

    def send_bomb(i):
        bombs[i] = _post(url, *_harness.multipart_form(bomb, bomb))

    threads = [threading.Thread(target=send_bomb, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    figures["decompression_bomb"] = {"file_kb": round(len(bomb) / 1024, 1),
                                     "statuses": _counts(b[0] for b in bombs),
                                     "error": bombs[0][3]}
    print(f"decompression bombs: {figures['decompression_bomb']}", flush=True)

    # 7. Malformed multipart and malformed HTTP.
    def with_body(body: bytes) -> bytes:
        return head.replace(b"100000", str(len(body)).encode()) + body

    bad = {
        "empty body": with_body(b""),
        "wrong boundary": with_body(b"--x\r\n\r\nabc\r\n--x--\r\n"),
        "no closing boundary": with_body(b'--b\r\nContent-Disposition: form-data; name="a"'
                                         b'\r\n\r\nabc'),
        "garbage request line": b"GARBAGE\r\n\r\n",
        "PUT": b"PUT /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "70 KB URL": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "Content-Length: -5": head.replace(b"100000", b"-5"),
    }
    figures["malformed"] = {}
    for name, data in bad.items():
        st, err, _ = _raw(address, data)
        figures["malformed"][name] = {"status": st, "error": err}
        print(f"{name}: {st} {err}", flush=True)

    # Still up? And the memory.
    with urllib.request.urlopen(url + "healthz", timeout=30) as r:
        figures["healthz_after"] = json.loads(r.read())
    figures["memory_end_mib"] = _memory(proc.pid)
    proc.terminate()
    proc.wait(timeout=30)
    text = "".join(log)
    figures["console"] = {"tracebacks": text.count("Traceback"),
                          "DecompressionBombWarning": text.count("DecompressionBombWarning"),
                          "lines": len(log)}
    import jax

    figures["machine"] = {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(),
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                          "jax": jax.__version__}
    print(json.dumps({k: figures[k] for k in ("memory_after_warmup_mib", "memory_end_mib",
                                              "healthz_after", "console")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)
    tmp.cleanup()


if __name__ == "__main__":
    main()
