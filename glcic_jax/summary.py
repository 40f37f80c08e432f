"""Logging outputs: TensorBoard scalars/images and sample-grid PNGs (process 0 only).

Sample grids follow the CelebA/Places2 report's figures: one row per evaluation image with
original | input with holes | completed, and the discriminator's output on the original and on the
completed image printed on the row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from glcic_jax import errors, image_io, leftovers


def _as_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 images as they are; [0, 1] floats rounded to uint8."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(previous: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every setting that differs (None where one side lacks it)."""
    a, b = _flatten(previous), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


# Small images are enlarged (nearest neighbour, an integer factor) until a cell is at least this
# many pixels wide: a 32 px crop drawn 32 px large is too small to judge by eye.
MIN_CELL = 128


def _enlarged(images: np.ndarray, min_cell: int) -> np.ndarray:
    """[N, H, W, C] images enlarged by the smallest integer factor that makes them at least
    `min_cell` pixels wide, each pixel a block (nearest neighbour); as they are if wide enough."""
    factor = max(1, -(-int(min_cell) // images.shape[2]))
    if factor == 1:
        return images
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


OUTLINE_COLOUR = (255, 48, 48)  # the hole's outline in sample grids (the web page's hole colour)


def hole_outline(hole: np.ndarray) -> np.ndarray:
    """The hole's boundary pixels: bool [..., H, W] -> bool [..., H, W] (hole pixels with a
    4-neighbour outside the hole; the image border counts as outside)."""
    hole = np.asarray(hole, bool)
    inner = np.pad(hole, [(0, 0)] * (hole.ndim - 2) + [(1, 1), (1, 1)], constant_values=False)
    interior = (inner[..., :-2, 1:-1] & inner[..., 2:, 1:-1] & inner[..., 1:-1, :-2]
                & inner[..., 1:-1, 2:])
    return hole & ~interior


def make_grid(originals: np.ndarray, inputs: np.ndarray, completed: np.ndarray,
              d_real: np.ndarray | None = None, d_fake: np.ndarray | None = None,
              pad: int = 2, label_height: int = 12, min_cell: int = MIN_CELL,
              holes: np.ndarray | None = None) -> np.ndarray:
    """Rows of original | input | completed ([N, S, S, 3] each) -> one uint8 image.

    Images smaller than `min_cell` are drawn `ceil(min_cell / S)` times larger, each pixel a
    block (nearest neighbour: no smoothing hides what the network drew). With `holes`
    ([N, S, S] or [N, S, S, 1], 1 = hole) the input and the completed image show the hole's
    outline in OUTLINE_COLOUR, so that a free-form hole can be told from what filled it.
    """
    originals, inputs, completed = (_enlarged(_as_uint8(x), min_cell)
                                    for x in (originals, inputs, completed))
    if holes is not None:
        holes = np.asarray(holes)
        holes = holes[..., 0] if holes.ndim == 4 else holes
        edge = hole_outline(_enlarged((holes > 0.5)[..., None], min_cell)[..., 0])
        inputs, completed = (np.where(edge[..., None], np.uint8(OUTLINE_COLOUR), x)
                             for x in (inputs, completed))
    n, s = originals.shape[0], originals.shape[1]
    label = label_height if d_real is not None else 0
    row_h = s + label + pad
    grid = np.full((n * row_h + pad, 3 * (s + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        y = pad + i * row_h + label
        for j, img in enumerate((originals[i], inputs[i], completed[i])):
            x = pad + j * (s + pad)
            grid[y : y + s, x : x + s] = img
    if d_real is None:
        return grid
    pil = Image.fromarray(grid)
    draw = ImageDraw.Draw(pil)
    for i in range(n):
        y = pad + i * row_h
        draw.text((pad, y), f"D={float(d_real[i]):.2f}", fill=(0, 0, 0))
        draw.text((pad + 2 * (s + pad), y), f"D={float(d_fake[i]):.2f}", fill=(0, 0, 0))
    return np.asarray(pil)


def comparison_grid(columns: dict[str, np.ndarray], pad: int = 2, label_height: int = 14,
                    min_cell: int = MIN_CELL) -> np.ndarray:
    """Methods side by side: one column per `{name: [N, H, W, 3] images}`, named at the top.

    Row i shows image i as each method left it (uint8 as is, [0, 1] floats rounded), drawn at
    least `min_cell` pixels wide (`_enlarged`, as in `make_grid`).
    """
    if not columns:
        raise ValueError("comparison_grid needs at least one column.")
    shapes = {np.shape(x) for x in columns.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"every column must hold [N, H, W, 3] images of one shape; got {shapes}.")
    cols = [_enlarged(_as_uint8(x), min_cell) for x in columns.values()]
    n, h, w = cols[0].shape[:3]
    grid = np.full((label_height + n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255,
                   np.uint8)
    for j, x in enumerate(cols):
        left = pad + j * (w + pad)
        for i in range(n):
            top = label_height + pad + i * (h + pad)
            grid[top : top + h, left : left + w] = x[i]
    pil = Image.fromarray(grid)
    draw = ImageDraw.Draw(pil)
    for j, name in enumerate(columns):
        draw.text((pad + j * (w + pad), 1), name, fill=(0, 0, 0))
    return np.asarray(pil)


@contextlib.contextmanager
def _writing(path: str, workdir: str) -> Iterator[None]:
    """A failed write into the workdir (disk full, no permission) as a one-line user error that
    says truthfully what a rerun does."""
    from glcic_jax import checkpointing

    try:
        yield
    except OSError as e:
        raise errors.InputFileError(
            f"Could not write {path} ({e.strerror or e}). Free disk space or make --workdir "
            f"writable, then rerun the same command: {checkpointing.resume_note(workdir)}."
        ) from e


class Writer:
    """TensorBoard (via tensorboardX when installed) plus PNG samples under WORKDIR/samples."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self._tb = None
        if not enabled:
            return
        with _writing(os.path.join(workdir, "samples"), workdir):
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        try:
            from tensorboardX import SummaryWriter

            with _writing(os.path.join(workdir, "tensorboard"), workdir):
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard events (PNG samples "
                            "and console logs still work). pip install tensorboardX")

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard events are written (tensorboardX installed, process 0)."""
        return self._tb is not None

    def write_config(self, config, step: int = 0, previous: dict | None = None) -> dict:
        """Write the config in force to WORKDIR/config.json (and TensorBoard text at `step`).

        On a resume, `previous` is the config the checkpoint was trained with: the settings this
        run changes are logged, appended to WORKDIR/config_changes.jsonl (one JSON line per
        resume that changed something: step, time, {key: [old, new]}) and added to TensorBoard.
        Returns those changes.
        """
        current = json.loads(config.to_json_best_effort())
        changes = config_changes(previous, current) if previous is not None else {}
        if not self.enabled:
            return changes
        path = os.path.join(self.workdir, "config.json")
        with _writing(path, self.workdir):  # atomic: a failed write leaves no temporary file
            leftovers.write_text(path, config.to_json_best_effort(indent=2))
        if changes:
            text = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
            logging.info("Resuming at step %d with changed settings: %s.", step, text)
            record = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "changed": {k: [old, new] for k, (old, new) in changes.items()}}
            path = os.path.join(self.workdir, "config_changes.jsonl")
            with _writing(path, self.workdir), open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            # Every run's event file carries the config it ran with (TensorBoard shows each).
            self._tb.add_text("config", "```\n" + str(config) + "\n```", step)
            if changes:
                self._tb.add_text("config_changes", "\n".join(
                    f"- `{k}`: {old!r} -> {new!r}" for k, (old, new) in changes.items()), step)
            self._tb.flush()
        return changes

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, float(v), step)
        self._tb.flush()

    def sample_grid(self, step: int, originals: np.ndarray,
                    out: dict[str, np.ndarray]) -> str | None:
        """Write the grid for the fixed evaluation batch; returns the PNG path."""
        if not self.enabled:
            return None
        grid = make_grid(originals, out["inputs"], out["completed"], out.get("d_real"),
                         out.get("d_fake"), holes=out.get("hole"))
        path = os.path.join(self.workdir, "samples", f"step_{step:08d}.png")
        with _writing(path, self.workdir):  # atomic: a kill never leaves half a PNG
            image_io.write_image(path, grid)
        if self._tb is not None:
            self._tb.add_image("samples", grid, step, dataformats="HWC")
            self._tb.flush()
        return path

    def write_json(self, name: str, payload: dict) -> str | None:
        if not self.enabled:
            return None
        path = os.path.join(self.workdir, name)
        with _writing(path, self.workdir):
            leftovers.write_json(path, payload, indent=2)
        return path

    def close(self, quiet: bool = False) -> None:
        """Close the TensorBoard files (again: a no-op). `quiet=True` (a run stopping with an
        error): a failing final write (disk full) is dropped, and tensorboardX's exit hook,
        which would retry it and print a traceback, is left nothing to do."""
        tb, self._tb = self._tb, None
        if tb is None:
            return
        try:
            tb.close()
        except Exception:
            if not quiet:
                raise
            # tensorboardX's event writers skip their exit-time close once marked closed.
            for file_writer in (getattr(tb, "all_writers", None) or {}).values():
                event_writer = getattr(file_writer, "event_writer", None)
                if event_writer is not None and hasattr(event_writer, "_closed"):
                    event_writer._closed = True
