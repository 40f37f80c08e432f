"""Tests of the web server (`serve.py`): its multipart parser, the HTTP API and the page in a
real headless browser.

A `:tiny` run trained for two steps in-process (the full GLCIC networks; the session's shared
state and jitted step from conftest) is served in-process (uvicorn in a thread) on a free
loopback port. Photos are small and of few sizes, so the network compiles a few times for the
module; every load and fault test is bounded (small counts, a 3 s upload limit). The browser
test needs Debian's `chromium` and the `playwright` Python package (which drives that
chromium; it never downloads a browser): it is skipped, saying why, where either is missing;
`.ci/run` installs both and makes that a failure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import jax
import numpy as np
import pytest
from conftest import make_tiny_config, smooth_images
from PIL import Image

from glcic_jax import checkpointing, complete, inference, serve

TRAINED_STEPS = 2
MAX_UPLOAD = 64 * 1024  # bytes; small, so a "too large" upload is cheap to build
CHROMIUM = os.environ.get("GLCIC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


# ----------------------------------------------------------------------------------------------
# Helpers


def encode_multipart(fields: dict[str, tuple[str | None, bytes]], boundary: str | None = None
                     ) -> tuple[bytes, str]:
    """{name: (filename or None, data)} -> (body, Content-Type), as a browser or curl sends it."""
    boundary = boundary or uuid.uuid4().hex
    out = io.BytesIO()
    for name, (filename, data) in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (smooth_images(1, h, w, seed=seed)[0] * 255).round().astype(np.uint8)


def box_hole(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    hole = np.zeros((h, w), bool)
    hole[top : top + size, left : left + size] = True
    return hole


def post(url: str, body: bytes, content_type: str, timeout: float = 300,
         path: str = "api/complete"):
    """POST -> (status, headers, body); HTTP errors are answers too."""
    req = urllib.request.Request(url + path, data=body,
                                 headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post_files(url: str, image: bytes, mask: bytes, **extra: str):
    fields = {"image": ("photo.png", image), "mask": ("mask.png", mask)}
    fields.update({k: (None, v.encode()) for k, v in extra.items()})
    return post(url, *encode_multipart(fields))


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers, r.read()


def assert_completed(data: bytes, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The answer is a PNG of the photo's size: the photo's pixels exactly outside the hole, new
    pixels inside (an untrained network does not reproduce the hidden photo)."""
    out = decode(data)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~hole], image[~hole])
    changed = out[hole] != image[hole]
    inside = np.any(changed, axis=-1) if changed.ndim == 2 else changed
    assert inside.mean() > 0.5, f"only {inside.mean():.0%} of the hole's pixels changed"
    return out


# ----------------------------------------------------------------------------------------------
# Fixtures: one checkpoint, one model, one server per module


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_steps, tiny_state, tiny_images) -> str:
    """A tiny run trained in-process: two phase-1 steps of the session's `:tiny` state (with the
    session's jitted step, which test_steps compiles too), saved as training saves it."""
    st = tiny_state
    for _ in range(TRAINED_STEPS):
        st, _ = tiny_steps.completion(st, tiny_images)
    path = str(tmp_path_factory.mktemp("tiny_serve_run"))
    cfg = make_tiny_config()
    ckpt = checkpointing.Checkpointer(path, cfg)
    ckpt.save(int(jax.device_get(st.step)), st, cfg)
    ckpt.close()
    return path


class RecordingService(serve.Service):
    """The service, keeping the last request body it was given (what the browser sent)."""

    last_request: tuple[bytes, str] | None = None

    def check(self, body: bytes, content_type: str, batch: bool = False):
        self.last_request = (body, content_type)
        return super().check(body, content_type, batch)


@pytest.fixture(scope="module")
def model(workdir) -> serve.Model:
    return serve.Model(workdir)


@pytest.fixture(scope="module")
def service(model) -> RecordingService:
    return RecordingService(model, max_size=64, max_upload_bytes=MAX_UPLOAD, max_megapixels=1,
                            max_batch=3, queue_size=64, max_requests=64, request_timeout=3.0)


@pytest.fixture(scope="module")
def server(service):
    srv = serve.Server(service, "127.0.0.1", 0).start()
    yield srv.url
    srv.stop()


def fields_of(parts: list[serve.Part]) -> dict[str, serve.Part]:
    return {p.name: p for p in parts}


def raw_request(url: str, data: bytes, timeout: float = 30, shut: bool = False) -> bytes:
    """Send raw bytes on a fresh connection; -> everything the server answers until it closes."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete_answer(answer):
                    break
        except ConnectionResetError:
            pass
    return answer


def _complete_answer(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:500]
    return int(head.split(b" ")[1]), json.loads(body)


def png_header(width: int, height: int) -> bytes:
    """A PNG file's signature and header declaring width x height 1-bit pixels, then a tiny
    (wrong) data chunk: what a decompression bomb's first bytes say, without its megabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------------
# multipart/form-data


def test_the_command_sets_the_inference_xla_flags_before_it_runs(monkeypatch):
    """`python -m glcic_jax.serve` (`main`) adds XLA's inference flags to the user's own before
    anything starts JAX, as `complete` does."""
    import importlib.metadata

    from glcic_jax import conv_forms

    user = "--xla_cpu_multi_thread_eigen=false"
    monkeypatch.setenv("XLA_FLAGS", user)
    seen = {}
    monkeypatch.setattr(serve, "run", lambda argv: seen.setdefault("flags",
                                                                  os.environ["XLA_FLAGS"]) and 0)
    with pytest.raises(SystemExit):
        serve.main()
    assert seen["flags"] == conv_forms.inference_xla_flags(
        user, importlib.metadata.version("jaxlib"))
    if seen["flags"] != user:  # a jaxlib checked to know them
        assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in seen["flags"]


def test_parse_multipart_round_trips_binary_files_and_fields():
    tricky = b"\r\n--not-the-boundary\r\n\r\n" + bytes(range(256)) + b"\r\n"  # CRLFs, dashes
    body, ctype = encode_multipart({"image": ("ph\u00f6to.jpg", tricky),
                                    "postprocess": (None, b"1"), "mask": ("m.png", b"")})
    fields = fields_of(serve.parse_multipart(body, ctype))
    assert set(fields) == {"image", "postprocess", "mask"}
    assert fields["image"].data == tricky and fields["image"].filename == "ph\u00f6to.jpg"
    assert fields["postprocess"].data == b"1" and fields["postprocess"].filename is None
    assert fields["mask"].data == b""
    # A quoted boundary and a preamble, as RFC 2046 allows.
    body2, _ = encode_multipart({"a": (None, b"x")}, boundary="b=1")
    fields2 = fields_of(serve.parse_multipart(b"preamble\r\n" + body2,
                                              'multipart/form-data; boundary="b=1"'))
    assert fields2["a"].data == b"x"


FORM_B = "multipart/form-data; boundary=b"


@pytest.mark.parametrize("body, ctype, words", [
    (b"{}", "application/json", "expected a multipart/form-data body"),
    (b"", "multipart/form-data", "has no boundary"),
    (b"", FORM_B, "the request body is empty"),
    (b"--other\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--other--\r\n", FORM_B,
     "does not occur in the body"),
    (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nxyz", FORM_B,
     "no closing boundary"),
    (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n", FORM_B, "no field name"),
    (b"--b\r\nno header separator\r\n--b--\r\n", FORM_B, "malformed multipart body"),
])
def test_parse_multipart_rejects_malformed_bodies_saying_what_is_wrong(body, ctype, words):
    with pytest.raises(complete.CompletionError, match=words):
        serve.parse_multipart(body, ctype)


# ----------------------------------------------------------------------------------------------
# The API


def test_page_info_health_and_openapi_are_served(server):
    status, headers, page = get(server)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = page.decode()
    assert "<canvas" in text and "api/complete" in text
    # Nothing loaded from elsewhere: the machine may be offline.
    for outside in ('src="http', "src='http", 'href="http', "@import", "url(http", "//cdn"):
        assert outside not in text
    info = json.loads(get(server + "api/info")[2])
    assert info["step"] == TRAINED_STEPS and info["max_size"] == 64
    assert info["max_upload_bytes"] == MAX_UPLOAD and info["train_scale"] is True
    health = json.loads(get(server + "healthz")[2])
    assert health["status"] == "ok" and health["step"] == TRAINED_STEPS
    spec = json.loads(get(server + "openapi.json")[2])
    assert {"/api/complete", "/api/complete_batch", "/api/info", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/complete"]["post"]["requestBody"]["content"]
    head = urllib.request.Request(server + "index.html", method="HEAD")
    with urllib.request.urlopen(head, timeout=30) as r:
        assert r.status == 200 and r.read() == b""
    status, headers, docs = get(server + "docs")
    assert status == 200 and b"openapi.json" in docs


def test_completion_is_exact_outside_the_hole_and_compiles_once_per_shape(server, workdir):
    image, hole = photo(30, 40), box_hole(30, 40, 8, 10, 12)
    status, headers, data = post_files(server, png(image), png(hole.astype(np.uint8) * 255))
    assert status == 200 and headers["Content-Type"] == "image/png", data[:300]
    assert headers["X-Network-Size"] == "40x32"  # padded to multiples of 4, as the CLI pads
    assert_completed(data, image, hole)

    # Another photo of the same size: no new compilation of the network.
    jitted = inference.compiled_completion(inference.load(workdir).generator)
    compiled = jitted._cache_size()
    image2, hole2 = photo(30, 40, seed=1), box_hole(30, 40, 10, 20, 15)
    status, headers, data = post_files(server, png(image2), png(hole2.astype(np.uint8) * 255))
    assert status == 200 and headers["X-Compiled"] == "0" and headers["X-Network-Size"] == "40x32"
    assert jitted._cache_size() == compiled
    assert_completed(data, image2, hole2)


def test_modes_postprocessing_and_max_size_follow_the_cli(server):
    # RGBA with an RGBA mask (transparent = not a hole) and post-processing: alpha untouched.
    rgba = np.dstack([photo(40, 40, seed=2), np.arange(1600, dtype=np.uint8).reshape(40, 40)])
    hole = box_hole(40, 40, 5, 20, 14)
    mask = np.zeros((40, 40, 4), np.uint8)
    mask[..., :3] = 255
    mask[..., 3] = hole * 255
    status, _, data = post_files(server, png(rgba), png(mask), postprocess="1")
    assert status == 200, data[:300]
    out = decode(data)
    assert out.shape == (40, 40, 4)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(out[~hole], rgba[~hole])

    # A grayscale photo larger than the training scale (shortest side 40 in :tiny) and --max_size:
    # completed at 44x40, answered at full size.
    gray = photo(100, 110, seed=3)[..., 0]
    hole = box_hole(100, 110, 40, 30, 20)
    status, headers, data = post_files(server, png(gray), png(hole.astype(np.uint8) * 255))
    assert status == 200 and headers["X-Network-Size"] == "44x40", data[:300]
    assert_completed(data, gray, hole)


def _cli_png(tmp_path, workdir, image: bytes, mask: bytes, *flags: str) -> bytes:
    """What `python -m glcic_jax.complete` writes for these files (in-process)."""
    folder = tmp_path / f"cli{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "photo.png").write_bytes(image)
    (folder / "mask.png").write_bytes(mask)
    assert complete.run(["complete", f"--workdir={workdir}", f"--image={folder}/photo.png",
                         f"--mask={folder}/mask.png", f"--output={folder}/out.png", "--max_size=64",
                         *flags]) == 0
    return (folder / "out.png").read_bytes()


@pytest.mark.parametrize("postprocess", ["0", "1"])
def test_the_page_the_api_and_the_cli_give_the_same_bytes(server, workdir, tmp_path,
                                                          postprocess):
    # A photo larger than the training scale: the CLI scales it down to it, so must the server.
    image = photo(60, 84, seed=7)
    hole = box_hole(60, 84, 20, 30, 18)
    mask = png(hole.astype(np.uint8) * 255)
    # The page's form: the photo's own file, mask.png, postprocess 0 or 1.
    status, _, data = post(server, *encode_multipart({
        "image": ("photo.png", png(image)), "mask": ("mask.png", mask),
        "postprocess": (None, postprocess.encode())}))
    assert status == 200, data[:300]
    cli = _cli_png(tmp_path, workdir, png(image), mask,
                   *(["--postprocess"] if postprocess == "1" else []))
    assert data == cli


def test_batch_answers_in_order_what_single_requests_answer(server):
    jobs = [(photo(30, 40, seed=20), box_hole(30, 40, 5, 5, 10)),
            (photo(36, 28, seed=21), box_hole(36, 28, 10, 8, 12)),
            (photo(30, 40, seed=22), box_hole(30, 40, 15, 20, 9))]
    body = io.BytesIO()
    boundary = uuid.uuid4().hex
    for i, (image, hole) in enumerate(jobs):  # image, mask, image, mask, ... as curl -F sends
        for name, data in (("image", png(image)), ("mask", png(hole.astype(np.uint8) * 255))):
            body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                       f'filename="{name}{i}.png"\r\n\r\n'.encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(server + "api/complete_batch", data=body.getvalue(), headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST")
    with urllib.request.urlopen(req, timeout=300) as r:
        results = json.loads(r.read())["results"]
    assert [r["filename"] for r in results] == ["image0.png", "image1.png", "image2.png"]
    for (image, hole), result in zip(jobs, results):
        data = base64.b64decode(result["png_base64"])
        assert (result["height"], result["width"]) == image.shape[:2]
        assert_completed(data, image, hole)
        status, _, single = post_files(server, png(image), png(hole.astype(np.uint8) * 255))
        assert status == 200 and single == data

    # Unpaired files and batches over --max_batch are refused, saying why.
    image, hole = jobs[0]
    status, _, data = post(server, *encode_multipart({"image": ("a.png", png(image))}),
                           path="api/complete_batch")
    assert status == 400 and "has no 'mask' file" in json.loads(data)["error"]
    four = b"".join(f'--b\r\nContent-Disposition: form-data; name="{n}"; filename="x.png"\r\n\r\n'
                    .encode() + b"x\r\n" for n in ("image", "mask") * 4) + b"--b--\r\n"
    status, _, data = post(server, four, FORM_B, path="api/complete_batch")
    assert status == 413 and "--max_batch" in json.loads(data)["error"]
    two = b"".join(f'--b\r\nContent-Disposition: form-data; name="{n}"; filename="x.png"\r\n\r\n'
                   .encode() + png_header(800, 700) + b"\r\n" for n in ("image", "mask") * 2)
    status, _, data = post(server, two + b"--b--\r\n", FORM_B, path="api/complete_batch")
    assert status == 413 and "the batch (its photos together) has 1.1 megapixels" in json.loads(
        data)["error"]  # 0.56 MP each, 1 MP in all at most
    status, _, data = post(server, four, FORM_B)  # several photos to the one-photo API
    assert status == 400 and "send several photos to /api/complete_batch" in json.loads(data)[
        "error"]


def _bad_requests():
    image = photo(20, 24)
    good_mask = png(box_hole(20, 24, 4, 4, 8).astype(np.uint8) * 255)
    small_mask = png(box_hole(19, 24, 4, 4, 8).astype(np.uint8) * 255)
    empty_mask = png(np.zeros((20, 24), np.uint8))
    fields = lambda img, mask: {"image": ("photo.png", img), "mask": ("mask.png", mask)}  # noqa: E731
    return {
        "not an image": (fields(b"this is not an image", good_mask), 400, "cannot read image"),
        "mask of another size": (fields(png(image), small_mask), 400, "but the image is 24x20"),
        "empty mask": (fields(png(image), empty_mask), 400, "has no hole pixels"),
        "no mask": ({"image": ("photo.png", png(image))}, 400, "has no 'mask' file"),
        "unknown field": ({**fields(png(image), good_mask), "msk": (None, b"")}, 400,
                          "unknown form"),
        "bad postprocess": ({**fields(png(image), good_mask), "postprocess": (None, b"maybe")},
                            400, "must be 1 or 0"),
        "too many pixels": (fields(png_header(1200, 1000), good_mask), 413,
                            "1.2 megapixels; this server accepts at most 1"),
        "decompression bomb": (fields(png_header(13000, 13000), good_mask), 413,
                               "accepts at most 1"),
    }


@pytest.mark.parametrize("kind", list(_bad_requests()))
def test_bad_requests_answer_json_in_the_clis_words_and_the_server_keeps_serving(
        server, kind, tmp_path, capsys, recwarn):
    fields, code, words = _bad_requests()[kind]
    status, headers, data = post(server, *encode_multipart(fields))
    assert status == code and headers["Content-Type"] == "application/json"
    message = json.loads(data)["error"]
    assert words in message
    if kind in ("not an image", "mask of another size", "empty mask"):
        # Word for word what the `complete` command prints for the same files (named by path).
        (tmp_path / "photo.png").write_bytes(fields["image"][1])
        (tmp_path / "mask.png").write_bytes(fields["mask"][1])
        assert complete.run(["complete", "--workdir=unused", f"--image={tmp_path}/photo.png",
                             f"--mask={tmp_path}/mask.png", f"--output={tmp_path}/out.png"]) == 1
        cli = capsys.readouterr().err.strip()
        for name in ("photo.png", "mask.png"):
            message = message.replace(repr(name), repr(f"{tmp_path}/{name}"))
        assert cli == "error: " + message
    assert get(server + "api/info")[0] == 200
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


HEAD = (b"POST /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")


def test_sizes_are_refused_from_the_headers_before_reading(server):
    # 10 GB announced: 413 at once, nothing read (the test sends the headers only).
    status, body = status_and_json(raw_request(server, HEAD % (10 * 10**9)))
    assert status == 413 and "accepts at most" in body["error"]
    # Chunked (no Content-Length): counted while reading, refused once over the limit.
    chunk = b"x" * 8192
    data = (b"POST /api/complete HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (MAX_UPLOAD // len(chunk) + 2)
            + b"0\r\n\r\n")
    status, body = status_and_json(raw_request(server, data))
    assert status == 413 and "accepts at most" in body["error"]
    # An upload over the limit that the client sends whole: it still reads the answer.
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)  # ~120 KB as PNG
    status, _, data = post_files(server, png(noise), png(np.ones((200, 200), np.uint8) * 255))
    assert status == 413 and "accepts at most" in json.loads(data)["error"]


@pytest.mark.parametrize("request_bytes, code, words", [
    (b"PUT /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "not allowed"),
    (b"GET /api/complete HTTP/1.1\r\nHost: x\r\n\r\n", 405, "not allowed"),
    (b"POST /nothing/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 404,
     "POST to /api/complete"),
    (b"GET /missing.js HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no page"),
    (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no page"),
    (b"POST /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400,
     "malformed HTTP request"),
    (HEAD % 0, 400, "the request body is empty"),
])
def test_every_failure_answers_a_json_error(server, request_bytes, code, words):
    status, body = status_and_json(raw_request(server, request_bytes))
    assert status == code and words in body["error"]
    assert get(server + "healthz")[0] == 200


def test_cut_off_slow_and_abandoned_uploads_leave_the_server_serving(server, capfd):
    capfd.readouterr()
    # The body ends early (the client closes its sending side): 400, in JSON.
    status, body = status_and_json(raw_request(server, HEAD % 5000 + b"--b\r\n", shut=True))
    assert status == 400 and "cut off" in body["error"]

    # Clients sending 1 byte a second: 408 after --request_timeout (3 s here), while another
    # client is served meanwhile.
    import socket
    from urllib.parse import urlsplit

    address = (urlsplit(server).hostname, urlsplit(server).port)
    slow = [socket.create_connection(address, timeout=30) for _ in range(3)]
    for s in slow:
        s.sendall(HEAD % 5000)
    image, hole = photo(30, 40, seed=30), box_hole(30, 40, 8, 8, 8)
    status, _, data = post_files(server, png(image), png(hole.astype(np.uint8) * 255))
    assert status == 200
    answers = [b""] * len(slow)
    for _ in range(30):
        for i, s in enumerate(slow):
            if not answers[i]:
                try:
                    s.sendall(b"-")
                except OSError:
                    pass
        s_ready = [s for s in slow if not answers[slow.index(s)]]
        if not s_ready:
            break
        import select

        readable, _, _ = select.select(s_ready, [], [], 1.0)
        for s in readable:
            answers[slow.index(s)] = s.recv(65536)
    for s, answer in zip(slow, answers):
        s.close()
        status, body = status_and_json(answer)
        assert status == 408 and "--request_timeout" in body["error"]

    # Clients that leave mid-upload, or before the answer (a closed tab): no traceback.
    for _ in range(3):
        with socket.create_connection(address, timeout=30) as s:
            s.sendall(HEAD % 5000 + b"--b\r\n")
        body, ctype = encode_multipart({"image": ("p.png", png(image)),
                                        "mask": ("m.png", png(hole.astype(np.uint8) * 255))})
        with socket.create_connection(address, timeout=30) as s:
            s.sendall(b"POST /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                      b"Content-Type: %s\r\n\r\n" % (len(body), ctype.encode()) + body)
    assert get(server + "healthz")[0] == 200
    import time

    time.sleep(1.0)  # the abandoned completions finish
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "BrokenPipe" not in out + err


def test_headers_sent_1_byte_a_second_get_408(server):
    import socket
    import time
    from urllib.parse import urlsplit

    with socket.create_connection((urlsplit(server).hostname, urlsplit(server).port),
                                  timeout=30) as s:
        answer = b""
        for byte in b"GET /api/info HTTP/1.1\r\nHost: x\r\n":
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.5)
            s.setblocking(False)
            try:
                answer += s.recv(65536)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if answer:
                break
        s.settimeout(10)
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    status, body = status_and_json(answer)
    assert status == 408 and "--request_timeout" in body["error"]


def test_concurrent_requests_are_all_answered(server):
    jobs = []
    for i in range(12):
        image, hole = photo(32, 32, seed=10 + i), box_hole(32, 32, 4 + i, 6, 10)
        jobs.append((image, hole, png(image), png(hole.astype(np.uint8) * 255)))
    jobs.append((None, None, b"garbage", jobs[0][3]))  # a bad one among them
    answers: list = [None] * len(jobs)

    def send(i):
        try:
            answers[i] = post_files(server, jobs[i][2], jobs[i][3])
        except OSError as e:  # a reset connection would land here
            answers[i] = (0, {}, repr(e).encode())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for (image, hole, _, _), (status, _, data) in zip(jobs, answers):
        if image is None:
            assert status == 400
        else:
            assert status == 200, data[:300]
            assert_completed(data, image, hole)


class _GatedModel:
    """The real model, each completion waiting for `gate` (to fill the queue on purpose)."""

    def __init__(self, model):
        self.model, self.step = model, model.step
        self.gate, self.entered = threading.Event(), threading.Event()

    def complete(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60)
        return self.model.complete(*args, **kwargs)


def test_a_full_queue_answers_503_with_retry_after(model):
    gated = _GatedModel(model)
    srv = serve.Server(serve.Service(gated, max_size=64, queue_size=1), "127.0.0.1", 0).start()
    try:
        image, hole = photo(30, 40, seed=40), box_hole(30, 40, 8, 8, 8)
        files = (png(image), png(hole.astype(np.uint8) * 255))
        answers: list = []
        first = threading.Thread(target=lambda: answers.append(post_files(srv.url, *files)))
        first.start()
        assert gated.entered.wait(60)  # the worker holds the first request
        second = threading.Thread(target=lambda: answers.append(post_files(srv.url, *files)))
        second.start()
        for _ in range(200):  # the second one waits in the queue
            if json.loads(get(srv.url + "healthz")[2])["waiting"] == 1:
                break
            threading.Event().wait(0.05)
        status, headers, data = post_files(srv.url, *files)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "--queue_size" in json.loads(data)["error"]
        gated.gate.set()
        first.join(120)
        second.join(120)
        assert [a[0] for a in answers] == [200, 200]
    finally:
        gated.gate.set()
        srv.stop()


def test_a_token_is_checked_on_every_api_call(model):
    srv = serve.Server(serve.Service(model, max_size=64, token="s3cret"), "127.0.0.1", 0).start()
    try:
        assert get(srv.url)[0] == 200 and get(srv.url + "healthz")[0] == 200
        image, hole = photo(30, 40, seed=41), box_hole(30, 40, 8, 8, 8)
        body, ctype = encode_multipart({"image": ("p.png", png(image)),
                                        "mask": ("m.png", png(hole.astype(np.uint8) * 255))})
        for path in ("api/info", "api/complete", "api/complete_batch"):
            for auth in (None, "Bearer wrong", "s3cret"):
                headers = {"Authorization": auth} if auth else {}
                req = urllib.request.Request(srv.url + path, headers=headers,
                                             data=body if "complete" in path else None)
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=60)
                assert e.value.code == 401 and "Bearer" in json.loads(e.value.read())["error"]
        req = urllib.request.Request(srv.url + "api/complete", data=body, headers={
            "Authorization": "Bearer s3cret", "Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=300) as r:
            assert r.status == 200
            assert_completed(r.read(), image, hole)
    finally:
        srv.stop()


# ----------------------------------------------------------------------------------------------
# The command line


def test_cli_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert serve.run(["serve"]) == 1
    assert capsys.readouterr().err.strip() == ("error: pass exactly one of --workdir=DIR or "
                                               "--checkpoint=PATH.")
    assert serve.run(["serve", f"--workdir={tmp_path}/none", "--port=0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert serve.run(["serve", "--workdir=x", "--port=70000"]) == 1
    assert "--port" in capsys.readouterr().err


def test_cli_port_in_use_is_a_clear_error(workdir, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert serve.run(["serve", f"--workdir={workdir}", f"--port={port}"]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_cli_refuses_a_reachable_address_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("GLCIC_SERVE_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        assert serve.run(["serve", "--workdir=x", f"--host={host}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--token=SECRET" in err[0] and "--insecure_no_token" in err[0]
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serve.is_loopback(host)


@pytest.mark.slow
def test_command_prints_the_url_and_a_line_per_request(workdir):
    proc = subprocess.Popen([sys.executable, "-m", "glcic_jax.serve", f"--workdir={workdir}",
                             "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Serving on" in line:
                break
        url = line.split("Serving on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        image, hole = photo(24, 24), box_hole(24, 24, 4, 4, 8)
        status, _, data = post_files(url, png(image), png(hole.astype(np.uint8) * 255))
        assert status == 200
        log = proc.stdout.readline()
        assert "POST /api/complete -> 200" in log and "24x24 RGB" in log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ----------------------------------------------------------------------------------------------
# The page, in a real headless browser


def _browser_or_skip():
    """Playwright's entry point, or a skip saying what is missing (a failure under .ci/run)."""
    give_up = pytest.fail if os.environ.get("GLCIC_REQUIRE_BROWSER") else pytest.skip
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        give_up(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; or set "
                f"GLCIC_CHROMIUM); .ci/run installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        give_up("the playwright package is missing (pip install -r requirements-test.txt)")
    return sync_playwright


def _screen(box, w, h, x, y):
    """Photo pixel (x, y) -> the page's coordinates (the page scales the photo to fit)."""
    return box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h


def test_page_completes_a_painted_stroke_in_a_headless_browser(server, service, workdir,
                                                               tmp_path):
    sync_playwright = _browser_or_skip()
    h, w = 48, 64
    image = photo(h, w, seed=5)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server)
            page.set_input_files("#file", str(path))
            page.wait_for_function("document.body.dataset.state === 'photo'", timeout=30_000)
            # Complete before painting anything: the server's words appear on the page.
            page.click("#complete")
            page.wait_for_function("document.body.dataset.state === 'error'", timeout=30_000)
            assert "has no hole pixels" in page.inner_text("#status")

            box = page.locator("#overlay").bounding_box()
            scale = box["width"] / w
            assert scale > 2  # a small photo is shown enlarged
            # Brush of 8 photo pixels: the slider is in screen pixels.
            page.eval_on_selector("#size", f"e => {{ e.value = {round(8 * scale)}; e.oninput(); }}")

            def stroke(y, x0, x1):
                page.mouse.move(*_screen(box, w, h, x0, y))
                page.mouse.down()
                page.mouse.move(*_screen(box, w, h, x1, y), steps=8)
                page.mouse.up()

            stroke(24, 16, 48)  # the hole: a horizontal stroke through the middle
            stroke(6, 10, 50)  # a second stroke near the top, then undone
            page.click("#undo")
            page.click("#eraser")  # erase the stroke's right end
            page.mouse.click(*_screen(box, w, h, 50, 24))
            page.click("#brush")

            with page.expect_response("**/api/complete") as answer:
                page.click("#complete")
            response = answer.value
            assert response.status == 200, response.text()
            page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)

            # What the page sent: the photo's own file and the painted mask at its resolution.
            # (Playwright does not expose multipart bodies with files; the server kept it.)
            fields = fields_of(serve.parse_multipart(*service.last_request))
            assert fields["image"].data == path.read_bytes()
            assert fields["postprocess"].data == b"0"
            hole = complete.read_mask(io.BytesIO(fields["mask"].data), (h, w))
            assert hole[21:28, 18:44].all()  # the stroke's core (radius 4)
            assert not hole[:16].any() and not hole[33:].any()  # not the undone stroke
            assert not hole[:, :10].any() and not hole[20:29, 50:].any()  # nor the erased end
            # What the user gets: the result the page shows and offers for download.
            assert page.eval_on_selector("#result", "e => e.naturalWidth") == w
            downloaded = page.evaluate("""async () => {
                const r = await fetch(document.getElementById('download').href);
                return Array.from(new Uint8Array(await r.arrayBuffer())); }""")
            # The download is the API's answer to the request the page sent, pixel for pixel
            # (asked again here: Playwright does not keep the body of a response the page
            # consumed as a blob), and that answer is a completion of the photo.
            status, _, answer = post(server, *service.last_request)
            assert status == 200
            api_answer = assert_completed(answer, image, hole)
            np.testing.assert_array_equal(decode(bytes(downloaded)), api_answer)
            # ... byte for byte what the command line writes for the page's photo and mask.
            assert bytes(downloaded) == _cli_png(tmp_path, workdir, fields["image"].data,
                                                 fields["mask"].data)
            assert errors == []
        finally:
            browser.close()
