r"""Complete photos in the browser: a local web page and an HTTP API over a trained checkpoint.

  python -m glcic_jax.serve --workdir=runs/quickstart [--port=8000] [--host=127.0.0.1]
  # then open http://127.0.0.1:8000/ : open or drop a photo, paint the hole, press Complete.

  curl -sf -F image=@photo.jpg -F mask=@mask.png -F postprocess=1 \
      http://127.0.0.1:8000/api/complete -o completed.png
  curl -sf -F image=@a.jpg -F mask=@a_mask.png -F image=@b.jpg -F mask=@b_mask.png \
      http://127.0.0.1:8000/api/complete_batch        # JSON: the PNGs in order, base64
  # Anything but loopback: --host=0.0.0.0 --token=SECRET, and clients send
  #   -H "Authorization: Bearer SECRET" (the page: open http://HOST:8000/#token=SECRET).

The checkpoint is loaded once, at start. The page (`serve_page.html`, one self-contained file:
no script or font from elsewhere) paints the hole on a canvas and sends the photo and the mask to
`POST /api/complete`, the same API that scripts use. `/docs` is the API's OpenAPI page.

* `POST /api/complete`: a multipart form with the fields `image` (the photo file), `mask` (a
  file of the photo's size, white = hole; transparent = not a hole) and optionally `postprocess`
  (`1`/`0`). The answer is the completed PNG, in the photo's mode, whose pixels outside the hole
  are exactly the photo's. It is byte for byte what `python -m glcic_jax.complete` writes for the
  same files, checkpoint and options (--max_size, --train_scale, --postprocess): both go through
  `complete.complete_photos` and `image_io.encode_image`.
* `POST /api/complete_batch`: the fields `image` and `mask` repeated (the n-th mask belongs to
  the n-th photo), up to --max_batch pairs; answers `{"results": [{"filename", "width",
  "height", "png_base64"}, ...]}` in the order sent. One bad pair refuses the whole batch.
* `GET /api/info`: the checkpoint's step and the server's limits; `GET /healthz`: liveness (no
  token needed), with the queue's length.
* Every failure answers JSON `{"error": "..."}` with its status: 400 a bad request in the command
  line's words (not an image, a mask of another size, an empty mask, a missing field, a
  malformed form or HTTP request), 401 a missing or wrong token, 404 / 405 no such page or
  method, 408 an upload slower than --request_timeout, 413 an upload over --max_upload_mb or a
  photo over --max_megapixels (decided from the Content-Length and the image headers, before
  anything is read or decoded), 503 with `Retry-After` when the queue is full; the server keeps
  serving.

One model worker (a thread) completes one request at a time from a queue of at most --queue_size
waiting requests; uploads are read concurrently (at most --max_requests in flight), and only the
worker decodes, so memory holds at most one decoded request at a time. A photo compiles the
network once per network input shape (seconds on a CPU; later photos of that shape pay only the
forward pass).

Server: FastAPI on uvicorn (HTTP/1.1 through h11), multipart forms through python-multipart.
Uploads are held in memory only (nothing is written to disk). It binds 127.0.0.1 unless told
otherwise; any other address needs --token (checked on every /api/ call) or an explicit
--insecure_no_token. For the internet, put it behind a TLS proxy.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (the
# `Request` of make_app's local import) when the app is built.

import asyncio
import base64
import concurrent.futures
import dataclasses
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image

from glcic_jax import cli, complete, conv_forms, cpu_memory, errors, image_io
from glcic_jax.complete import CompletionError

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
FIELDS = ("image", "mask", "postprocess")
# A refused upload up to this many bytes is read and dropped before the answer, so that a client
# still sending receives the answer instead of a reset connection; larger ones are not read.
DISCARD_LIMIT = 64 << 20
PIL_MEGAPIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485) // 1_000_000  # PIL's own bomb limit


# ----------------------------------------------------------------------------------------------
# Errors with their HTTP status


class RequestError(CompletionError):
    """A request the server refuses, with its HTTP status (400 unless said otherwise)."""

    status = 400
    headers: dict[str, str] = {}

    def __init__(self, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if headers:
            self.headers = headers


def _status_of(e: Exception) -> int:
    return getattr(e, "status", 400)


# ----------------------------------------------------------------------------------------------
# The model: the one place this module completes photos


class Model:
    """A checkpoint's completion network, loaded once; completes through the CLI's own path.

    Args:
      path: a training workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder.
    """

    def __init__(self, path: str):
        self._completer = complete.Completer(path)  # CompletionError if there is no checkpoint
        self.step = self._completer.step
        self.compiled: set[tuple[int, int]] = set()

    def complete(self, photos: Sequence[image_io.Photo], holes: Sequence[np.ndarray], *,
                 max_size: int, postprocess: bool, train_scale: bool
                 ) -> tuple[list[np.ndarray], list[tuple[int, int]], bool]:
        """-> (completed pixels per photo, network input shape per photo, compiled anything?).

        `complete.complete_photos` with the CLI's default batch size, so a batch request gives
        what `glcic_jax.complete` gives for a folder of the same photos.
        """
        out = complete.complete_photos(self._completer, photos, holes, max_size=max_size,
                                       postprocess=postprocess, train_scale=train_scale)
        shapes = [complete._network_shape(self._completer, p.size, max_size, train_scale)
                  for p in photos]
        first = bool(set(shapes) - self.compiled)
        self.compiled |= set(shapes)
        return out, shapes, first


# ----------------------------------------------------------------------------------------------
# multipart/form-data (python-multipart's streaming parser, collecting the parts in memory)


@dataclasses.dataclass
class Part:
    """One field of a multipart form."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def _options(value: bytes | str) -> tuple[str, dict[str, str]]:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(value)
    return (kind.decode("latin-1").lower(),
            {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in
             params.items()})


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Parse a `multipart/form-data` body (RFC 7578) into its fields, in order.

    Raises RequestError (400) when the body is not such a form, with what is wrong with it.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    kind, params = _options(content_type or "")
    if kind != "multipart/form-data":
        raise RequestError(
            f"expected a multipart/form-data body (e.g. curl -F image=@photo.jpg -F "
            f"mask=@mask.png), got Content-Type {content_type or 'none'!r}.")
    boundary = params.get("boundary")
    if not boundary:
        raise RequestError("the multipart/form-data Content-Type has no boundary.")
    if not body:
        raise RequestError("the request body is empty: expected a multipart form with the "
                           "fields image and mask.")
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter):  # skip a preamble (RFC 2046), which the parser refuses
        at = body.find(b"\r\n" + delimiter)
        if at < 0:
            raise RequestError(f"malformed multipart body: the boundary {boundary!r} of its "
                               f"Content-Type does not occur in the body.")
        body = body[at + 2:]
    parts: list[Part] = []
    state: dict[str, Any] = {"closed": False}
    header = {"field": b"", "value": b""}

    def on_part_begin():
        state["headers"], state["data"] = {}, []

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        state["headers"][header["field"].decode("latin-1").strip().lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(data, start, end):
        state["data"].append(data[start:end])

    def on_part_end():
        headers = state["headers"]
        _, disposition = _options(headers.get("content-disposition", b""))
        name = disposition.get("name")
        if not name:
            raise RequestError("malformed multipart body: a part has no field name.")
        ctype = headers.get("content-type")
        parts.append(Part(name, b"".join(state["data"]), disposition.get("filename"),
                          ctype.decode("latin-1") if ctype else None))

    def on_end():
        state["closed"] = True

    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": on_part_begin, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_end": on_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise RequestError(f"malformed multipart body: {e}") from e
    if not state["closed"]:
        raise RequestError("malformed multipart body: no closing boundary (upload cut off?).")
    return parts


# ----------------------------------------------------------------------------------------------
# The service, without HTTP


def _truthy(value: bytes, name: str) -> bool:
    text = value.decode("utf-8", "replace").strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("", "0", "false", "off", "no"):
        return False
    raise RequestError(f"field {name!r} must be 1 or 0, got {text!r}.")


class _Upload(io.BytesIO):
    """An uploaded file in memory, which PIL's messages name by its file name (as for a path)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._name = name

    def __repr__(self) -> str:
        return repr(self._name)


@dataclasses.dataclass
class Job:
    """A checked request waiting for the worker: compressed files only (decoded by the worker)."""

    pairs: list[tuple[Part, Part]]  # (image, mask)
    postprocess: bool
    batch: bool


@dataclasses.dataclass
class Result:
    """The worker's answer: one PNG per photo, in order."""

    pngs: list[bytes]
    names: list[str]
    sizes: list[tuple[int, int]]  # (height, width)
    summary: str  # for the log line
    headers: dict[str, str]


class QueueFull(RequestError):
    status = 503


class Service:
    """Requests -> completed PNGs: the checks, the bounded queue and the one model worker.

    Args:
      model: a `Model` (or anything with its `complete` and `step`).
      max_size, train_scale: the CLI's --max_size (0 = never scale down) and --train_scale.
      max_upload_bytes: largest request body accepted (413 above it).
      max_megapixels: most pixels of one request's photos together (and of each mask), read
        from the image headers before any decoding (413 above it).
      max_batch: most photos in one batch request.
      queue_size: most requests waiting for the worker (503 beyond).
      request_timeout: seconds a client may take to send its request (408 after).
      max_requests: most requests in flight at once, uploading or waiting (503 beyond).
      token: the secret every /api/ call must carry (Authorization: Bearer), or None.
    """

    def __init__(self, model, max_size: int = 1024, max_upload_bytes: int = 32 << 20, *,
                 train_scale: bool = True, max_megapixels: int = 50, max_batch: int = 8,
                 queue_size: int = 16, request_timeout: float = 60.0, max_requests: int = 32,
                 token: str | None = None):
        self.model = model
        self.max_size = max_size
        self.train_scale = train_scale
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_megapixels * 1_000_000
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.request_timeout = request_timeout
        self.max_requests = max_requests
        self.token = token or None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._worker: threading.Thread | None = None
        self._seconds = 1.0  # a running estimate of one completion, for Retry-After

    def info(self) -> dict:
        return {"step": self.model.step, "max_size": self.max_size,
                "train_scale": self.train_scale, "max_upload_bytes": self.max_upload_bytes,
                "max_megapixels": self.max_pixels // 1_000_000, "max_batch": self.max_batch,
                "queue_size": self.queue_size, "request_timeout_s": self.request_timeout}

    def waiting(self) -> int:
        return self._queue.qsize()

    # -- checks before anything is decoded -----------------------------------------------------
    def check_length(self, length: int) -> None:
        if length > self.max_upload_bytes:
            raise RequestError(
                f"upload is {length / 2**20:.1f} MiB; this server accepts at most "
                f"{self.max_upload_bytes / 2**20:.0f} MiB (--max_upload_mb).", 413)

    def _pixels(self, part: Part, name: str) -> int:
        """The pixel count an image file's header declares (nothing decoded); 0 if it is not
        an image (the worker's decoding then says so in the CLI's words)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(part.data)) as img:
                    w, h = img.size
        except Image.DecompressionBombError as e:
            raise RequestError(f"image {name!r} is a decompression bomb or too large: {e} This "
                               f"server accepts at most {self.max_pixels / 1e6:.0f} megapixels "
                               f"(--max_megapixels).", 413) from e
        except Exception:  # not an image: the worker's read_photo words it as the CLI does
            return 0
        return w * h

    def check(self, body: bytes, content_type: str, batch: bool = False) -> Job:
        """A request body -> a Job, after every check that needs no decoding."""
        self.check_length(len(body))
        parts = parse_multipart(body, content_type)
        unknown = sorted({p.name for p in parts} - set(FIELDS))
        if unknown:
            raise RequestError(f"unknown form field(s) {', '.join(map(repr, unknown))}; "
                               f"the fields are image, mask and postprocess.")
        by_name: dict[str, list[Part]] = {n: [p for p in parts if p.name == n] for n in FIELDS}
        for name in FIELDS if not batch else ("postprocess",):
            if len(by_name[name]) > 1:
                raise RequestError(f"the form has the field {name!r} twice"
                                   + (" (send several photos to /api/complete_batch)."
                                      if name != "postprocess" else "."))
        for name in ("image", "mask"):
            if not by_name[name] or not any(p.data for p in by_name[name]):
                raise RequestError(f"the form has no {name!r} file (e.g. curl -F "
                                   f"{name}=@{'photo.jpg' if name == 'image' else 'mask.png'}).")
        images, masks = by_name["image"], by_name["mask"]
        if len(images) != len(masks):
            raise RequestError(f"the form has {len(images)} image(s) and {len(masks)} mask(s); "
                               f"send one mask per image, in the same order.")
        if len(images) > self.max_batch:
            raise RequestError(f"the batch has {len(images)} photos; this server completes at "
                               f"most {self.max_batch} per request (--max_batch).", 413)
        for i, (image, mask) in enumerate(zip(images, masks)):
            for part, what in ((image, "image"), (mask, "mask")):
                if not part.data:
                    raise RequestError(f"{what} {i + 1} of the batch is empty.")
        post = bool(by_name["postprocess"]) and _truthy(by_name["postprocess"][0].data,
                                                        "postprocess")
        total = 0
        for image, mask in zip(images, masks):
            total += self._pixels(image, _label(image, "image"))
            for count, what in (
                    (total, f"image {_label(image, 'image')!r}" if len(images) == 1
                     else "the batch (its photos together)"),
                    (self._pixels(mask, _label(mask, "mask")), f"mask {_label(mask, 'mask')!r}")):
                if count > self.max_pixels:
                    raise RequestError(
                        f"{what} has {count / 1e6:.1f} megapixels; this server accepts at most "
                        f"{self.max_pixels / 1e6:.0f} (--max_megapixels).", 413)
        return Job(list(zip(images, masks)), post, batch)

    # -- the worker ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the model worker (once)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="glcic-model-worker",
                                            daemon=True)
            self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=60)
            self._worker = None

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job for the worker; QueueFull (503) when --queue_size jobs already wait."""
        self.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait((job, future))
        except queue.Full:
            retry = max(1, math.ceil(self._seconds * (self._queue.qsize() + 1)))
            raise QueueFull(f"the server is busy: {self.queue_size} requests are waiting "
                            f"(--queue_size); retry in {retry} s.",
                            headers={"Retry-After": str(retry)}) from None
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue  # the client left while waiting
            try:
                t = time.time()
                result = self.run(job)
                if result.headers["X-Compiled"] == "0":  # compiling is not the usual cost
                    self._seconds = 0.7 * self._seconds + 0.3 * (time.time() - t)
                future.set_result(result)
            except BaseException as e:  # noqa: BLE001 - handed to the request that asked
                future.set_exception(e)

    def run(self, job: Job) -> Result:
        """Decode, complete and encode a job (the worker's part; one job at a time)."""
        photos, holes, names = [], [], []
        for image, mask in job.pairs:
            # The CLI's rules and words; an upload is named by its file name.
            image_name, mask_name = _label(image, "image"), _label(mask, "mask")
            photo = complete.read_photo(_Upload(image.data, image_name), name=image_name)
            holes.append(complete.read_mask(_Upload(mask.data, mask_name), photo.size,
                                            name=mask_name))
            photos.append(photo)
            names.append(image_name)
        t0 = time.time()
        pixels, shapes, first = self.model.complete(
            photos, holes, max_size=self.max_size, postprocess=job.postprocess,
            train_scale=self.train_scale)
        seconds = time.time() - t0
        pngs = [image_io.encode_image(px, "PNG", p.icc_profile) for px, p in zip(pixels, photos)]
        described = []
        for photo, hole, shape in zip(photos, holes, shapes):
            h, w = photo.size
            note = f" [{photo.note}]" if photo.note else ""
            described.append(f"{w}x{h} {photo.mode}, {100.0 * hole.mean():.1f}% hole, network "
                             f"{shape[1]}x{shape[0]}{note}")
        summary = ("; ".join(described) + (", compiled" if first else "")
                   + (", postprocess" if job.postprocess else "")
                   + f": {seconds:.2f} s completing")
        headers = {"X-Completion-Seconds": f"{seconds:.3f}", "X-Compiled": "1" if first else "0",
                   "X-Network-Size": f"{shapes[0][1]}x{shapes[0][0]}"}
        return Result(pngs, names, [p.size for p in photos], summary, headers)

    def complete(self, body: bytes, content_type: str, batch: bool = False) -> Result:
        """A multipart body -> the result, synchronously (checks, queue, worker)."""
        return self.submit(self.check(body, content_type, batch)).result()


def _label(part: Part, default: str) -> str:
    return part.filename or default


# ----------------------------------------------------------------------------------------------
# HTTP: the ASGI app


def _json_error(status: int, message: str, headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


async def _read_body(request, service: Service) -> bytes:
    """The request body, within the limits: Content-Length checked before reading (413),
    the bytes counted while reading (chunked uploads too), the whole upload within
    --request_timeout (408), a body shorter than its Content-Length refused (400)."""
    from starlette.requests import ClientDisconnect

    raw = request.headers.get("content-length")
    length = None
    if raw is not None:
        if not raw.strip().isdigit():
            raise RequestError(f"invalid Content-Length {raw!r}.")
        length = int(raw)
        try:
            service.check_length(length)
        except RequestError:
            if length <= DISCARD_LIMIT:
                await _discard(request, service.request_timeout)
            raise
    chunks, size = [], 0
    try:
        async with asyncio.timeout(service.request_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > service.max_upload_bytes:
                    service.check_length(size)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(f"the upload took longer than {service.request_timeout:g} s "
                           f"(--request_timeout); {size} bytes arrived.", 408) from None
    except ClientDisconnect:
        raise _ClientGone() from None
    if length is not None and size < length:
        raise RequestError(f"the upload was cut off before Content-Length bytes ({size} of "
                           f"{length} arrived).")
    return b"".join(chunks)


async def _discard(request, timeout: float) -> None:
    try:
        async with asyncio.timeout(min(timeout, 10.0)):
            async for _ in request.stream():
                pass
    except Exception:  # noqa: BLE001 - only draining; the answer is already decided
        pass


class _ClientGone(Exception):
    """The client closed the connection before its request was complete."""


def make_app(service: Service):
    """The FastAPI app serving `service`: the page, the API, /docs and /healthz."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    with open(PAGE, "rb") as f:
        page = f.read()
    app = FastAPI(title="glcic_jax image completion",
                  description="Globally and Locally Consistent Image Completion over a trained "
                  "checkpoint. Every error is JSON {\"error\": ...}.",
                  version=str(service.model.step) if service.model else "0")
    app.state.service = service
    form_doc = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["image", "mask"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "the photo"},
            "mask": {"type": "string", "format": "binary",
                     "description": "white = hole, the photo's size"},
            "postprocess": {"type": "string", "enum": ["0", "1"]}}}}}}}
    batch_doc = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["image", "mask"], "properties": {
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "mask": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "postprocess": {"type": "string", "enum": ["0", "1"]}}}}}}}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        path = request.url.path
        path = path if len(path) <= 200 else path[:200] + "..."  # a 70 KB URL is not echoed
        if exc.status_code == 404:
            message = (f"no API {path!r}; POST to /api/complete." if request.method == "POST"
                       else f"no page {path!r}; the page is / and the API is POST "
                       f"/api/complete.")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {path!r}."
        else:
            message = str(exc.detail)
        return _json_error(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(CompletionError)
    async def request_error(request: Request, exc: CompletionError):
        request.state.detail = f"error: {exc}"
        return _json_error(_status_of(exc), str(exc), getattr(exc, "headers", {}))

    @app.exception_handler(_ClientGone)
    async def client_gone(request: Request, exc: _ClientGone):
        request.state.detail = "the client left before its upload was complete"
        return Response(status_code=400)  # nobody reads it

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Starlette re-raises after this answer: _Guard prints the traceback and keeps serving.
        return _json_error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _json_error(400, f"bad request: {exc.errors()}")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse,
                   include_in_schema=False)
    @app.api_route("/index.html", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/healthz", summary="Liveness: the server answers and its model is loaded.")
    async def healthz():
        return {"status": "ok", "step": service.model.step, "waiting": service.waiting()}

    @app.get("/api/info", summary="The checkpoint's step and the server's limits.")
    async def info():
        return JSONResponse(service.info(), headers={"Cache-Control": "no-store"})

    async def _complete(request: Request, batch: bool):
        body = await _read_body(request, service)
        job = service.check(body, request.headers.get("content-type", ""), batch)
        del body
        future = service.submit(job)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # still queued: the worker skips it
            raise
        request.state.detail = result.summary
        return result

    @app.post("/api/complete", summary="Complete one photo: the completed PNG.",
              response_class=Response, openapi_extra=form_doc,
              responses={200: {"content": {"image/png": {}}}})
    async def complete_one(request: Request):
        result = await _complete(request, batch=False)
        return Response(result.pngs[0], media_type="image/png",
                        headers={"Cache-Control": "no-store", **result.headers})

    @app.post("/api/complete_batch", summary="Complete several photos: JSON, PNGs in order.",
              openapi_extra=batch_doc)
    async def complete_batch(request: Request):
        result = await _complete(request, batch=True)
        items = [{"filename": name, "width": size[1], "height": size[0],
                  "png_base64": base64.b64encode(png).decode("ascii")}
                 for png, name, size in zip(result.pngs, result.names, result.sizes)]
        return JSONResponse({"results": items},
                            headers={"Cache-Control": "no-store", **result.headers})

    return _Guard(app, service)


class _Guard:
    """ASGI middleware around the app: the in-flight limit, the token, every error as JSON and
    one log line per request (instead of uvicorn's access log)."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.time()
        status = [0]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        scope.setdefault("state", {})
        path = scope["path"]
        try:
            if path.startswith("/api/") and self.service.token:
                self._check_token(scope)
            if self.in_flight >= self.service.max_requests:
                raise RequestError(f"the server is busy: {self.in_flight} requests in flight "
                                   f"(--max_requests); retry in a few seconds.", 503,
                                   {"Retry-After": "2"})
            self.in_flight += 1
            try:
                await self.app(scope, receive, send_status)
            finally:
                self.in_flight -= 1
            detail = scope["state"].get("detail", "")
        except (CompletionError, errors.UserError) as e:  # refused before the app
            detail = f"error: {e}"
            await self._answer(scope, send_status, _status_of(e), str(e),
                               getattr(e, "headers", {}))
        except Exception as e:  # a bug, not the user's: keep serving, keep the traceback
            traceback.print_exc()
            detail = f"error: internal error: {type(e).__name__}: {e}"
            if status[0] == 0:
                await self._answer(scope, send_status, 500, detail[len("error: "):])
        if status[0] == 0:
            detail += " (the client had gone)"
        self._log(scope, status[0], detail, t0)

    def _check_token(self, scope) -> None:
        headers = dict(scope.get("headers") or [])
        got = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.service.token.encode()):
            raise RequestError("this server needs its token: send the header 'Authorization: "
                               "Bearer TOKEN' (the page: open it as http://HOST:PORT/#token="
                               "TOKEN).", 401, {"WWW-Authenticate": "Bearer"})

    async def _answer(self, scope, send, status, message, headers=None) -> None:
        response = _json_error(status, message, headers)
        try:
            await response(scope, _no_body, send)
        except Exception:  # noqa: BLE001 - the client left, or a response had begun
            pass

    @staticmethod
    def _log(scope, status: int, detail: str, t0: float) -> None:
        print(f"{time.strftime('%H:%M:%S')} {scope['method']} {scope['path']} -> {status} "
              f"({time.time() - t0:.2f} s){': ' + detail if detail else ''}", flush=True)


async def _no_body():
    return {"type": "http.disconnect"}


# ----------------------------------------------------------------------------------------------
# HTTP: the server (uvicorn), with JSON for what uvicorn answers itself


def _protocol_class(request_timeout: float):
    """uvicorn's h11 protocol, answering malformed HTTP with JSON, a connection whose request
    line and headers take longer than `request_timeout` with 408 (uvicorn has no such limit),
    and a cut-off upload (the client closed its sending side early) instead of dropping it."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(request_timeout, self._headers_too_slow)

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self._send_json_error(408, b"Request Timeout", (
                    f"the request line and headers took longer than {request_timeout:g} s "
                    f"(--request_timeout)."))

        def send_400_response(self, msg: str) -> None:
            self._send_json_error(400, b"Bad Request", "malformed HTTP request (bad request "
                                  "line, header or Content-Length, or headers over 16 KiB).")

        def _send_json_error(self, status: int, reason: bytes, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            event = h11.Response(status_code=status, reason=reason, headers=[
                (b"content-type", b"application/json"), (b"connection", b"close"),
                (b"content-length", str(len(body)).encode())])
            try:
                self.transport.write(self.conn.send(event))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # h11 is in an error state: answer by hand
                self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n"
                                     % (status, reason, len(body)) + body)
            self.transport.close()

        def eof_received(self):
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and cycle.more_body:
                cycle.more_body = False  # the body ends here: the app says it was cut off
                cycle.message_event.set()
                return True  # keep our side open to answer
            return None

    return Protocol


class Server:
    """The app on uvicorn in a background thread (tests, benchmarks) or in the foreground.

    Args:
      service: the Service to serve. host, port: where to listen (port 0 = any free port).
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000):
        import socket

        import uvicorn

        self.service = service
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(2048)
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(make_app(service), http=_protocol_class(service.request_timeout),
                                lifespan="off",
                                access_log=False, log_level="warning", backlog=2048,
                                timeout_keep_alive=5, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        self.service.start()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.service.stop()

    def start(self) -> "Server":
        """Serve in a background thread; returns when the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.close()

    def close(self) -> None:
        self.socket.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------
# Command line


def _define_flags(fv):
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint is used.",
                        flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "A checkpoint folder, e.g. WORKDIR/checkpoints/300 "
                        "(instead of --workdir).", flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. Anything but loopback "
                        "needs --token (or --insecure_no_token).", flag_values=fv)
    flags.DEFINE_integer("port", 8000, "Port to listen on (0 = any free port).", lower_bound=0,
                         upper_bound=65535, flag_values=fv)
    flags.DEFINE_string("token", None, "A secret every /api/ call must carry as 'Authorization: "
                        "Bearer TOKEN' (the page: open http://HOST:PORT/#token=TOKEN). Also "
                        "read from the GLCIC_SERVE_TOKEN environment variable.", flag_values=fv)
    flags.DEFINE_bool("insecure_no_token", False, "Serve a non-loopback --host without a token: "
                      "anyone who reaches the address can use the server.", flag_values=fv)
    flags.DEFINE_integer("max_size", 1024, "Photos whose longer side exceeds this are completed "
                         "at this size and only the hole is scaled back up; 0 = never.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_bool("train_scale", True, "Complete at the checkpoint's training scale, as "
                      "glcic_jax.complete does by default.", flag_values=fv)
    flags.DEFINE_integer("max_upload_mb", 32, "Largest request (photos + masks) accepted, in "
                         "MiB.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_megapixels", 50, "Most pixels of a request's photos (and of each "
                         "mask), from the image headers, before decoding.", lower_bound=1,
                         upper_bound=PIL_MEGAPIXELS, flag_values=fv)
    flags.DEFINE_integer("max_batch", 8, "Most photos in one /api/complete_batch request.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("queue_size", 16, "Most requests waiting for the model (503 with "
                         "Retry-After beyond).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_requests", 32, "Most requests in flight (uploading or waiting; "
                         "503 beyond).", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("request_timeout", 60.0, "Seconds a client may take to send its request "
                       "(408 after).", lower_bound=0.1, flag_values=fv)


def _help() -> str:
    return __doc__.split("The checkpoint is loaded")[0]


def _check_flags(fv) -> None:
    """One checkpoint, and a token for any address but loopback."""
    complete.check_checkpoint_flags(fv)
    fv.token = fv.token or os.environ.get("GLCIC_SERVE_TOKEN") or None
    if not is_loopback(fv.host) and not fv.token and not fv.insecure_no_token:
        raise CompletionError(
            f"--host={fv.host} can be reached from other machines: pass --token=SECRET (clients "
            f"send 'Authorization: Bearer SECRET') or, to serve without one, "
            f"--insecure_no_token.")


COMMAND = cli.Command("python -m glcic_jax.serve", _help(), lambda fv: _define_flags(fv),
                      interrupted="stopped while loading the checkpoint; nothing was served")


def _quiet_libraries() -> None:
    """No library lines on the console: ours say it once per request."""
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    # The pixel limit is checked on the headers before decoding (--max_megapixels).
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def run(argv: Sequence[str]) -> int:
    """The command line, in-process: `argv[0]` is the program name. Returns the exit status."""
    return COMMAND.run(argv, _serve)


def _serve(fv) -> int:
    _check_flags(fv)
    service = Service(None, fv.max_size, fv.max_upload_mb << 20, train_scale=fv.train_scale,
                      max_megapixels=fv.max_megapixels, max_batch=fv.max_batch,
                      queue_size=fv.queue_size, request_timeout=fv.request_timeout,
                      max_requests=fv.max_requests, token=fv.token)  # model: once loaded
    try:
        server = Server(service, fv.host, fv.port)
    except OSError as e:
        raise CompletionError(f"cannot listen on {fv.host}:{fv.port}: {e.strerror or e}; "
                              f"pass another --port (0 = any free port).") from e
    t0 = time.time()
    path = fv.checkpoint or fv.workdir
    print(f"Loading the checkpoint in {path} ...", flush=True)
    try:
        service.model = Model(path)
    except BaseException:
        server.close()
        raise
    import jax

    _quiet_libraries()
    if not is_loopback(fv.host) and not fv.token:
        print(f"note: listening on {fv.host} without a token (--insecure_no_token): anyone who "
              f"can reach this address can use the server.")
    url = server.url + (f"#token={fv.token}" if fv.token else "")
    print(f"Loaded step {service.model.step} in {time.time() - t0:.1f} s "
          f"({jax.devices()[0].platform}). Serving on {url}  (API: {server.url}docs; Ctrl-C to "
          f"stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print("Stopped.")
    return 0


def main() -> None:
    """The console script: restarted with huge pages for XLA's per-request memory where that
    helps (`cpu_memory`), then XLA's inference flags set before JAX starts
    (`conv_forms.use_inference_xla_flags`)."""
    cpu_memory.relaunch_with_huge_pages()
    conv_forms.use_inference_xla_flags()
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
