"""Tests of the web server (`serve.py`): its multipart parser, the HTTP API and the page in a
real headless browser.

A `:tiny` run trained for two steps in-process (the full GLCIC networks; the session's shared
state and jitted step from conftest) is served in-process on a free loopback port. Every photo
here is at most 64 pixels on a side, so they all fall in the 64x64 bucket and the network
compiles once for the whole module. The browser test needs Debian's `chromium` and the
`playwright` Python package (which drives that chromium; it never downloads a browser): it is
skipped, saying why, where either is missing; `.ci/run` installs both and makes that a failure.
"""

from __future__ import annotations

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


def post(url: str, body: bytes, content_type: str, timeout: float = 300):
    """POST -> (status, headers, body); HTTP errors are answers too."""
    req = urllib.request.Request(url + "api/complete", data=body,
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

    def complete(self, body: bytes, content_type: str):
        self.last_request = (body, content_type)
        return super().complete(body, content_type)


@pytest.fixture(scope="module")
def service(workdir) -> RecordingService:
    return RecordingService(serve.Model(workdir), max_size=64, max_upload_bytes=MAX_UPLOAD)


@pytest.fixture(scope="module")
def server(service):
    srv = serve.make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield serve.url_of(srv)
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------------------------
# multipart/form-data


def test_parse_multipart_round_trips_binary_files_and_fields():
    tricky = b"\r\n--not-the-boundary\r\n\r\n" + bytes(range(256)) + b"\r\n"  # CRLFs, dashes
    body, ctype = encode_multipart({"image": ("ph\u00f6to.jpg", tricky),
                                    "postprocess": (None, b"1"), "mask": ("m.png", b"")})
    fields = serve.parse_multipart(body, ctype)
    assert set(fields) == {"image", "postprocess", "mask"}
    assert fields["image"].data == tricky and fields["image"].filename == "ph\u00f6to.jpg"
    assert fields["postprocess"].data == b"1" and fields["postprocess"].filename is None
    assert fields["mask"].data == b""
    # A quoted boundary and a preamble, as RFC 2046 allows.
    body2, _ = encode_multipart({"a": (None, b"x")}, boundary="b=1")
    fields2 = serve.parse_multipart(b"preamble\r\n" + body2, 'multipart/form-data; boundary="b=1"')
    assert fields2["a"].data == b"x"


FORM_B = "multipart/form-data; boundary=b"


@pytest.mark.parametrize("body, ctype, words", [
    (b"{}", "application/json", "expected a multipart/form-data body"),
    (b"", "multipart/form-data", "has no boundary"),
    (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nxyz", FORM_B,
     "no closing boundary"),
    (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n", FORM_B, "no field name"),
])
def test_parse_multipart_rejects_malformed_bodies(body, ctype, words):
    with pytest.raises(complete.CompletionError, match=words):
        serve.parse_multipart(body, ctype)


def test_bucket_shape_pads_up_to_multiples_of_64():
    assert serve.bucket_shape(512, 512) == (512, 512)
    assert serve.bucket_shape(30, 40) == (64, 64)
    assert serve.bucket_shape(513, 100) == (576, 128)


# ----------------------------------------------------------------------------------------------
# The API


def test_page_and_info_are_served_and_self_contained(server):
    status, headers, page = get(server)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = page.decode()
    assert "<canvas" in text and "api/complete" in text
    # Nothing loaded from elsewhere: the machine may be offline.
    for outside in ('src="http', "src='http", 'href="http', "@import", "url(http", "//cdn"):
        assert outside not in text
    status, _, data = get(server + "api/info")
    assert json.loads(data) == {"step": TRAINED_STEPS, "max_size": 64,
                                "max_upload_bytes": MAX_UPLOAD, "bucket": 64}


def test_completion_is_exact_outside_the_hole_and_compiles_once_per_bucket(server):
    image, hole = photo(30, 40), box_hole(30, 40, 8, 10, 12)
    status, headers, data = post_files(server, png(image), png(hole.astype(np.uint8) * 255))
    assert status == 200 and headers["Content-Type"] == "image/png", data[:300]
    assert headers["X-Bucket"] == "64x64"
    assert_completed(data, image, hole)

    # Another size in the same bucket: no new compilation of the network.
    compiled = inference.compiled_completion()._cache_size()
    image2, hole2 = photo(50, 61, seed=1), box_hole(50, 61, 30, 40, 15)
    status, headers, data = post_files(server, png(image2), png(hole2.astype(np.uint8) * 255))
    assert status == 200 and headers["X-Compiled"] == "0" and headers["X-Bucket"] == "64x64"
    assert inference.compiled_completion()._cache_size() == compiled
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

    # A grayscale photo larger than --max_size (64): completed at 64 px, answered at full size.
    gray = photo(100, 90, seed=3)[..., 0]
    hole = box_hole(100, 90, 40, 30, 20)
    status, headers, data = post_files(server, png(gray), png(hole.astype(np.uint8) * 255))
    assert status == 200 and headers["X-Bucket"] == "64x64", data[:300]
    assert_completed(data, gray, hole)


def _bad_requests():
    image = photo(20, 24)
    good_mask = png(box_hole(20, 24, 4, 4, 8).astype(np.uint8) * 255)
    small_mask = png(box_hole(19, 24, 4, 4, 8).astype(np.uint8) * 255)
    empty_mask = png(np.zeros((20, 24), np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)  # ~120 KB as PNG
    fields = lambda img, mask: {"image": ("photo.png", img), "mask": ("mask.png", mask)}  # noqa: E731
    return {
        "not an image": (fields(b"this is not an image", good_mask), "cannot read image"),
        "mask of another size": (fields(png(image), small_mask), "but the image is 24x20"),
        "empty mask": (fields(png(image), empty_mask), "has no hole pixels"),
        "too large": (fields(png(noise), good_mask), "accepts at most"),
        "no mask": ({"image": ("photo.png", png(image))}, "has no 'mask' file"),
        "unknown field": ({**fields(png(image), good_mask), "msk": (None, b"")}, "unknown form"),
        "bad postprocess": ({**fields(png(image), good_mask), "postprocess": (None, b"maybe")},
                            "must be 1 or 0"),
    }


@pytest.mark.parametrize("kind", list(_bad_requests()))
def test_bad_requests_answer_400_with_the_clis_words_and_the_server_keeps_serving(
        server, kind, tmp_path, capsys):
    fields, words = _bad_requests()[kind]
    status, headers, data = post(server, *encode_multipart(fields))
    assert status == 400 and headers["Content-Type"] == "application/json"
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


def test_cut_off_and_abandoned_uploads_leave_the_server_serving(server):
    import socket
    from urllib.parse import urlsplit

    address = (urlsplit(server).hostname, urlsplit(server).port)
    head = (b"POST /api/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
    with socket.create_connection(address, timeout=30) as s:  # the body ends early
        s.sendall(head)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"cut off" in answer
    with socket.create_connection(address, timeout=30) as s:  # the client leaves mid-upload
        s.sendall(head)
    assert get(server + "api/info")[0] == 200


def test_other_requests_answer_json_errors(server):
    status, _, data = post(server.rstrip("/") + "/nothing/", b"x", "text/plain")
    assert status == 404 and "POST to /api/complete" in json.loads(data)["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server + "missing.js")
    assert e.value.code == 404 and "error" in json.loads(e.value.read())


def test_concurrent_requests_are_all_answered(server):
    jobs = []
    for i in range(4):
        image, hole = photo(32, 32 + 4 * i, seed=10 + i), box_hole(32, 32 + 4 * i, 4 + i, 6, 10)
        jobs.append((image, hole, png(image), png(hole.astype(np.uint8) * 255)))
    jobs.append((None, None, b"garbage", jobs[0][3]))  # a bad one among them
    answers: list = [None] * len(jobs)

    def send(i):
        answers[i] = post_files(server, jobs[i][2], jobs[i][3])

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


def test_page_completes_a_painted_stroke_in_a_headless_browser(server, service, tmp_path):
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
            fields = serve.parse_multipart(*service.last_request)
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
            assert errors == []
        finally:
            browser.close()
