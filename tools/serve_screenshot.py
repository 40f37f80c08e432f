"""Screenshot of the web page (`glcic_jax.serve`) for the README: docs/serve_page.png.

Serves a workdir (default: an untrained checkpoint from `tests/test_complete.make_workdir`, so
this runs anywhere) on a free loopback port, opens the page in Debian's headless chromium
through Playwright, loads scikit-image's `coffee` photo, paints a stroke over the spoon and takes
the screenshot before pressing Complete (with an untrained checkpoint the completion itself
would only show noise; pass --workdir=runs/quickstart and --complete to show a real one).

  python tools/serve_screenshot.py [--workdir=DIR] [--complete] [--out=docs/serve_page.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image  # noqa: E402

from glcic_jax import serve  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--complete", action="store_true", help="press Complete first")
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve_page.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    import skimage.data
    from playwright.sync_api import sync_playwright

    tmp = tempfile.TemporaryDirectory()
    workdir = args.workdir
    if workdir is None:
        from test_complete import make_workdir

        workdir = make_workdir(tmp.name + "/run")
    photo = Path(tmp.name) / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(photo, quality=92)  # 600x400

    server = serve.Server(serve.Service(serve.Model(workdir)), "127.0.0.1", 0).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 960, "height": 640})
        page.goto(server.url)
        page.set_input_files("#file", str(photo))
        page.wait_for_function("document.body.dataset.state === 'photo'")
        page.wait_for_function("!document.getElementById('info').textContent.includes('connect')")
        box = page.locator("#overlay").bounding_box()
        sx, sy = box["width"] / 600, box["height"] / 400

        def at(x, y):
            return box["x"] + x * sx, box["y"] + y * sy

        def stroke(points):
            page.mouse.move(*at(*points[0]))
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(*at(x, y), steps=6)
            page.mouse.up()

        page.eval_on_selector("#size", "e => { e.value = 30; e.oninput(); }")
        stroke([(413, 72), (404, 130), (394, 185), (384, 232)])  # the spoon's handle
        page.eval_on_selector("#size", "e => { e.value = 70; e.oninput(); }")
        stroke([(374, 250), (364, 285)])  # its bowl
        page.check("#post")
        if args.complete:
            page.click("#complete")
            page.wait_for_function("document.body.dataset.state === 'done'", timeout=600_000)
            page.eval_on_selector("#compare", "e => { e.value = 50; e.oninput(); }")
        page.mouse.move(*at(300, 330))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out)
        browser.close()
    server.stop()
    # A palette PNG keeps the README's image small.
    Image.open(args.out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
        args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
