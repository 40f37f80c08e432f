r"""Complete photos in the browser: a local web page and an HTTP API over a trained checkpoint.

  python -m glcic_jax.serve --workdir=runs/quickstart [--port=8000] [--host=127.0.0.1]
  # then open http://127.0.0.1:8000/ : open or drop a photo, paint the hole, press Complete.

  curl -sf -F image=@photo.jpg -F mask=@mask.png -F postprocess=1 \
      http://127.0.0.1:8000/api/complete -o completed.png

The checkpoint is loaded once, at start. The page (`serve_page.html`, one self-contained file:
no script or font from elsewhere) paints the hole on a canvas and sends the photo and the mask to
`POST /api/complete`, the same API that scripts use:

* A multipart form with the fields `image` (the photo file), `mask` (a file of the photo's size,
  white = hole; transparent = not a hole) and optionally `postprocess` (`1`/`0`). The photo and
  the mask follow the `complete` command's rules (`complete.read_photo`, `complete.read_mask`),
  as does `--max_size`: the answer is the completed PNG, in the photo's mode, whose pixels
  outside the hole are exactly the photo's.
* A bad request (not an image, a mask of another size, an empty mask, an upload over
  `--max_upload_mb`, a missing field) answers 400 with `{"error": "..."}` in the command line's
  words; the server keeps serving.
* `GET /api/info` answers the checkpoint's step and the server's limits as JSON.

Speed: the network's input is edge-padded up to multiples of BUCKET = 64 pixels in each direction
(the CLI pads to multiples of 4), so all photos whose (possibly --max_size-scaled) size falls in
the same 64-pixel bucket share one compilation; the first photo of a bucket compiles the network
(seconds on a CPU), later ones pay only the forward pass. The larger padding changes the network's
input beyond the photo's right and bottom edges, so completions of holes near those edges can
differ slightly from the CLI's (both are the network's answer to an edge-padded photo).
Requests are served by threads but complete one at a time (a lock queues them), so memory stays
that of one photo and concurrent requests never crash the server.

Server: the standard library's `http.server.ThreadingHTTPServer`; no web framework is needed for
one page and one endpoint, and it adds no dependency. It binds 127.0.0.1 unless told otherwise,
has no authentication, and is meant for one user's machine, not the internet. Uploads are held
in memory only (nothing is written to disk); the body size is capped by --max_upload_mb, and
decoded pixel counts by PIL's decompression-bomb limit.
"""

from __future__ import annotations

import dataclasses
import email.message
import email.utils
import io
import json
import os
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

import numpy as np
from PIL import Image

from glcic_jax import cli, complete
from glcic_jax.complete import CompletionError

BUCKET = 64  # the network's input is padded up to multiples of this: one compilation per bucket
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
FIELDS = ("image", "mask", "postprocess")
DISCARD_LIMIT = 1 << 30  # a refused upload larger than this is not read before closing


# ----------------------------------------------------------------------------------------------
# The model: the one place this module loads a generator and completes a photo.


def bucket_shape(height: int, width: int, bucket: int = BUCKET) -> tuple[int, int]:
    """The padded (H, W) the network runs at for an input of (height, width)."""
    return height + (-height % bucket), width + (-width % bucket)


class _BucketedCompleter(complete.Completer):
    """`complete.Completer` whose network inputs are edge-padded up to multiples of `bucket`.

    `complete.Completer._network_input` does the hole filling, --max_size scaling and padding to
    a multiple of 4; this only pads further (edge mode, as it does), and `complete()` crops the
    result back to the photo as before.
    """

    bucket = BUCKET
    last_shape: tuple[int, int] = (0, 0)

    def _network_input(self, rgb, hole, max_size, train_scale=False):
        x, m, size = super()._network_input(rgb, hole, max_size, train_scale)
        h, w = x.shape[:2]
        ph, pw = bucket_shape(h, w, self.bucket)
        pads = ((0, ph - h), (0, pw - w))
        x = np.pad(x, pads + ((0, 0),), mode="edge")
        m = np.pad(m, pads + ((0, 0),), mode="edge")
        self.last_shape = (ph, pw)
        return x, m, size


class Model:
    """A checkpoint's completion network, loaded once; completes one photo at a time.

    This adapter is all of serve.py that touches the model (today through `complete.Completer`),
    so that pointing the server at another loader changes this class only.

    Args:
      path: a training workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder.
    """

    def __init__(self, path: str):
        self._completer = _BucketedCompleter(path)  # CompletionError if there is no checkpoint
        self.step = self._completer.step
        self.compiled: set[tuple[int, int]] = set()

    def complete(self, rgb: np.ndarray, hole: np.ndarray, max_size: int,
                 postprocess: bool) -> tuple[np.ndarray, tuple[int, int], bool]:
        """uint8 `[H, W, 3]` + bool hole `[H, W]` -> (completed RGB, bucket, first of bucket?)."""
        out = self._completer.complete([rgb], [hole], max_size=max_size, batch_size=1,
                                       postprocess=postprocess)[0]
        shape = self._completer.last_shape
        first = shape not in self.compiled
        self.compiled.add(shape)
        return out, shape, first


# ----------------------------------------------------------------------------------------------
# multipart/form-data (the standard library's `cgi` is gone in Python 3.13)


@dataclasses.dataclass
class Part:
    """One field of a multipart form."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def _header_param(value: str, header: str, param: str) -> str | None:
    msg = email.message.Message()
    msg[header] = value
    got = msg.get_param(param, header=header)
    if isinstance(got, tuple):  # RFC 2231 encoded: (charset, language, value)
        got = email.utils.collapse_rfc2231_value(got)
    return None if got is None else str(got)


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Parse a `multipart/form-data` body (RFC 7578) into its fields, by name.

    Raises CompletionError (a bad request) when the body is not such a form or a field repeats.
    """
    if not content_type or content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise CompletionError(
            f"expected a multipart/form-data body (e.g. curl -F image=@photo.jpg -F "
            f"mask=@mask.png), got Content-Type {content_type or 'none'!r}.")
    boundary = _header_param(content_type, "content-type", "boundary")
    if not boundary:
        raise CompletionError("the multipart/form-data Content-Type has no boundary.")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    fields: dict[str, Part] = {}
    closed = False
    for chunk in chunks[1:]:  # chunks[0] is the preamble
        if chunk.startswith(b"--"):
            closed = True
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise CompletionError("malformed multipart body: a part has no header/body separator.")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                key, _, value = line.decode("utf-8", "replace").partition(":")
                headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _header_param(disposition, "content-disposition", "name")
        if not name:
            raise CompletionError("malformed multipart body: a part has no field name.")
        if name in fields:
            raise CompletionError(f"the form has the field {name!r} twice.")
        fields[name] = Part(name, data,
                            _header_param(disposition, "content-disposition", "filename"),
                            headers.get("content-type"))
    if not closed:
        raise CompletionError("malformed multipart body: no closing boundary (upload cut off?).")
    return fields


# ----------------------------------------------------------------------------------------------
# The service, without HTTP


def _truthy(value: bytes, name: str) -> bool:
    text = value.decode("utf-8", "replace").strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("", "0", "false", "off", "no"):
        return False
    raise CompletionError(f"field {name!r} must be 1 or 0, got {text!r}.")


class _Upload(io.BytesIO):
    """An uploaded file in memory, which PIL's messages name by its file name (as for a path)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._name = name

    def __repr__(self) -> str:
        return repr(self._name)


def encode_png(pixels: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """uint8 `[H, W, C]` (C = 1, 2, 3, 4: L, LA, RGB, RGBA) -> PNG bytes, in memory."""
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    buf = io.BytesIO()
    params = {"icc_profile": icc_profile} if icc_profile else {}
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", **params)
    return buf.getvalue()


@dataclasses.dataclass
class Result:
    png: bytes
    summary: str  # for the log line
    headers: dict[str, str]


class Service:
    """Photo + mask bytes -> completed PNG bytes, one completion at a time.

    Args:
      model: a `Model` (or anything with its `complete` and `step`).
      max_size: the CLI's --max_size (0 = never scale down).
      max_upload_bytes: largest request body accepted.
    """

    def __init__(self, model, max_size: int = 1024, max_upload_bytes: int = 32 << 20):
        self.model = model
        self.max_size = max_size
        self.max_upload_bytes = max_upload_bytes
        self._lock = threading.Lock()  # one completion at a time; other requests wait here

    def info(self) -> dict:
        return {"step": self.model.step, "max_size": self.max_size,
                "max_upload_bytes": self.max_upload_bytes, "bucket": BUCKET}

    def check_length(self, length: int) -> None:
        if length > self.max_upload_bytes:
            raise CompletionError(
                f"upload is {length / 2**20:.1f} MiB; this server accepts at most "
                f"{self.max_upload_bytes / 2**20:.0f} MiB (--max_upload_mb).")

    def complete(self, body: bytes, content_type: str) -> Result:
        """A multipart body -> the completed PNG. CompletionError for a bad request."""
        self.check_length(len(body))
        fields = parse_multipart(body, content_type)
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise CompletionError(f"unknown form field(s) {', '.join(map(repr, unknown))}; "
                                  f"the fields are image, mask and postprocess.")
        for name in ("image", "mask"):
            if name not in fields or not fields[name].data:
                raise CompletionError(f"the form has no {name!r} file (e.g. curl -F "
                                      f"{name}=@{'photo.jpg' if name == 'image' else 'mask.png'}).")
        post = "postprocess" in fields and _truthy(fields["postprocess"].data, "postprocess")
        image, mask = fields["image"], fields["mask"]
        # The CLI's rules and words; an upload is named by its file name.
        image_name, mask_name = image.filename or "image", mask.filename or "mask"
        photo = complete.read_photo(_Upload(image.data, image_name), name=image_name)
        hole = complete.read_mask(_Upload(mask.data, mask_name), photo.size, name=mask_name)
        t0 = time.time()
        with self._lock:
            t_start = time.time()
            rgb, shape, first = self.model.complete(photo.rgb(), hole, self.max_size, post)
            t_done = time.time()
        png = encode_png(photo.merge(rgb, hole), photo.icc_profile)
        h, w = photo.size
        compiled = ", compiled" if first else ""
        note = f" [{photo.note}]" if photo.note else ""
        summary = (f"{w}x{h} {photo.mode}, {100.0 * hole.mean():.1f}% hole, bucket "
                   f"{shape[1]}x{shape[0]}{compiled}{', postprocess' if post else ''}: "
                   f"{t_done - t_start:.2f} s completing"
                   + (f" after {t_start - t0:.2f} s queued" if t_start - t0 > 0.01 else "")
                   + note)
        headers = {"X-Completion-Seconds": f"{t_done - t_start:.3f}",
                   "X-Compiled": "1" if first else "0",
                   "X-Bucket": f"{shape[1]}x{shape[0]}"}
        return Result(png, summary, headers)


# ----------------------------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /api/info, POST /api/complete."""

    server_version = "glcic-serve"
    protocol_version = "HTTP/1.1"
    service: Service  # set by make_server on a subclass
    page: bytes
    timeout = 120  # seconds a connection may sit idle or stall mid-upload

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # one line per request from _log instead of the default access log

    def _log(self, status: int, detail: str, t0: float) -> None:
        print(f"{time.strftime('%H:%M:%S')} {self.command} {self.path} -> {status} "
              f"({time.time() - t0:.2f} s){': ' + detail if detail else ''}", flush=True)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str, t0: float) -> None:
        try:
            self._send_json(status, {"error": message})
        except ConnectionError:  # the client left before the answer
            self.close_connection = True
            message += " (the client had gone)"
        self._log(status, f"error: {message}", t0)

    def _discard(self, length: int) -> None:
        """Read and drop a refused body, so the client (still sending) receives the answer."""
        self.close_connection = True
        left = min(length, DISCARD_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)

    def do_GET(self):  # noqa: N802 - http.server's naming
        t0 = time.time()
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            self._send(200, self.page, "text/html; charset=utf-8")
            self._log(200, "", t0)
        elif path == "/api/info":
            self._send_json(200, self.service.info())
            self._log(200, "", t0)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, f"no page {path!r}; the page is / and the API is POST /api/complete.",
                        t0)

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802 - http.server's naming
        t0 = time.time()
        if self.path.split("?")[0] != "/api/complete":
            self.close_connection = True  # the body is not read
            self._error(404, f"no API {self.path!r}; POST to /api/complete.", t0)
            return
        try:
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self.close_connection = True
                raise CompletionError("the request needs a Content-Length header (no chunked "
                                      "uploads).")
            try:
                self.service.check_length(int(length))
            except CompletionError:
                self._discard(int(length))
                raise
            body = self.rfile.read(int(length))
            if len(body) < int(length):
                self.close_connection = True
                raise CompletionError("the upload was cut off before Content-Length bytes.")
            result = self.service.complete(body, self.headers.get("Content-Type", ""))
        except CompletionError as e:
            self._error(400, str(e), t0)
            return
        except (TimeoutError, ConnectionError) as e:  # the client stalled or went away
            self.close_connection = True
            self._log(0, f"connection lost: {type(e).__name__}", t0)
            return
        except Exception as e:  # a bug, not the user's: keep serving, keep the traceback
            traceback.print_exc()
            self._error(500, f"internal error: {type(e).__name__}: {e}", t0)
            return
        try:
            self._send(200, result.png, "image/png", result.headers)
        except ConnectionError:  # the client left before the answer (e.g. a closed tab)
            self.close_connection = True
            self._log(200, result.summary + " (the client had gone)", t0)
            return
        self._log(200, result.summary, t0)


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000
                ) -> ThreadingHTTPServer:
    """A threading HTTP server for `service` (not started; port 0 picks a free port)."""
    with open(PAGE, "rb") as f:
        page = f.read()
    handler = type("BoundHandler", (Handler,), {"service": service, "page": page})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


# ----------------------------------------------------------------------------------------------
# Command line


def _define_flags(fv):
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint is used.",
                        flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "A checkpoint folder, e.g. WORKDIR/checkpoints/300 "
                        "(instead of --workdir).", flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. The server has no "
                        "authentication: keep it on 127.0.0.1 unless you know your network.",
                        flag_values=fv)
    flags.DEFINE_integer("port", 8000, "Port to listen on (0 = any free port).", lower_bound=0,
                         upper_bound=65535, flag_values=fv)
    flags.DEFINE_integer("max_size", 1024, "Photos whose longer side exceeds this are completed "
                         "at this size and only the hole is scaled back up; 0 = never.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("max_upload_mb", 32, "Largest request (photo + mask) accepted, in MiB.",
                         lower_bound=1, flag_values=fv)


def _help() -> str:
    return __doc__.split("The checkpoint is loaded")[0]


COMMAND = cli.Command("python -m glcic_jax.serve", _help(), lambda fv: _define_flags(fv),
                      interrupted="stopped while loading the checkpoint; nothing was served")


def run(argv: Sequence[str]) -> int:
    """The command line, in-process: `argv[0]` is the program name. Returns the exit status."""
    return COMMAND.run(argv, _serve)


def _serve(fv) -> int:
    complete.check_checkpoint_flags(fv)
    service = Service(None, fv.max_size, fv.max_upload_mb << 20)  # model: once loaded
    try:
        server = make_server(service, fv.host, fv.port)
    except OSError as e:
        raise CompletionError(f"cannot listen on {fv.host}:{fv.port}: {e.strerror or e}; "
                              f"pass another --port (0 = any free port).") from e
    t0 = time.time()
    path = fv.checkpoint or fv.workdir
    print(f"Loading the checkpoint in {path} ...", flush=True)
    try:
        model = Model(path)
    except BaseException:
        server.server_close()
        raise
    service.model = model
    import jax

    if fv.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {fv.host}: anyone who can reach this address can use the "
              f"server (there is no authentication).")
    print(f"Loaded step {model.step} in {time.time() - t0:.1f} s ({jax.devices()[0].platform}). "
          f"Serving on {url_of(server)}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopped.")
    finally:
        server.server_close()
    return 0


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
