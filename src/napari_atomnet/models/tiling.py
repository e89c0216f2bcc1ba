"""Tiled inference for images of any size with bounded memory.

The image is cut into tiles whose *cores* partition it exactly (half-open intervals), and each tile
is read with a context *margin* around its core.  When the margin covers the network's receptive
field and the windows lie on the network's pooling grid (``border`` mode of :func:`plan_tiles`),
a tile's output over its core equals the whole-image output there, so stitched maps have no
seams, and a peak is reported by exactly one tile (the one whose core holds it): no duplicates.
Borders are padded by reflection, as a whole-image pass would pad them: by the margin, or by a
narrower ``border`` when the network was trained with less padding at image borders than it
needs context between tiles (the detector: 32 px of reflection in training, 96 px of context).
A narrower border makes the border tiles' windows smaller (less work) and shows the network
borders as it saw them in training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Tile:
    """One tile: its core in image coordinates and the window it is read from.

    Attributes
    ----------
    core : tuple of slice
        (rows, cols) of the image this tile is responsible for.
    window : tuple of slice
        (rows, cols) read from the padded image, in *padded* coordinates.
    offset : tuple of int
        Image coordinates of the window's first pixel (may be negative at borders).
    """

    core: tuple[slice, slice]
    window: tuple[slice, slice]
    offset: tuple[int, int]

    def core_in_window(self) -> tuple[slice, slice]:
        """Return the core as slices of the window (to crop a tile's output)."""
        r, c = self.core
        return (
            slice(r.start - self.offset[0], r.stop - self.offset[0]),
            slice(c.start - self.offset[1], c.stop - self.offset[1]),
        )


def plan_tiles(
    shape: tuple[int, int],
    tile: int,
    margin: int,
    multiple: int = 1,
    border: int | None = None,
) -> tuple[list[Tile], tuple[int, int]]:
    """Plan tiles for an image.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    tile : int
        Core size of a tile (px); the window is ``tile + 2 * margin`` rounded up to ``multiple``.
    margin : int
        Context read around each core (px).
    multiple : int
        Window sizes are rounded up to a multiple of this (a U-Net's downsampling factor).
    border : int, optional
        Reflection padding at the image's own borders (px, at most ``margin``).  ``None``:
        ``margin``, and every window has the same size.  Given: windows stop ``border`` px
        outside the image (border tiles are smaller) and lie on the pooling grid of a
        whole-image window, so the output does not depend on how the image is cut into tiles.

    Returns
    -------
    tiles : list of Tile
    pad : tuple of int
        Padding (before) applied to rows and cols; pad the image with :func:`pad_for_tiles`.
    """
    if border is None:
        return _equal_tiles(shape, tile, margin, multiple), (margin, margin)
    border = min(max(int(border), 0), margin)
    spans = [_spans(n, tile, margin, multiple, border) for n in shape]
    tiles = [
        Tile(
            core=(slice(r0, r1), slice(c0, c1)),
            window=(slice(wr0 + border, wr1 + border), slice(wc0 + border, wc1 + border)),
            offset=(wr0, wc0),
        )
        for (r0, r1), (wr0, wr1) in spans[0]
        for (c0, c1), (wc0, wc1) in spans[1]
    ]
    return tiles, (border, border)


def _equal_tiles(shape: tuple[int, int], tile: int, margin: int, multiple: int) -> list[Tile]:
    h, w = shape
    win_h = _round_up(min(tile, h) + 2 * margin, multiple)
    win_w = _round_up(min(tile, w) + 2 * margin, multiple)
    tiles = []
    for r0, r1 in _cores(h, tile):
        for c0, c1 in _cores(w, tile):
            oy, ox = r0 - margin, c0 - margin
            tiles.append(
                Tile(
                    core=(slice(r0, r1), slice(c0, c1)),
                    window=(
                        slice(oy + margin, oy + margin + win_h),
                        slice(ox + margin, ox + margin + win_w),
                    ),
                    offset=(oy, ox),
                )
            )
    return tiles


def _spans(
    n: int, tile: int, margin: int, multiple: int, border: int
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(core, window) intervals along one axis, windows clipped to ``border`` px outside.

    Every window starts and ends on the grid of the whole-axis window (``-border`` plus
    multiples of ``multiple``): a U-Net's pooling grid then falls on the same pixels in every
    tile as in one pass over the whole image, and with the margin covering the network's reach a
    tile's output over its core equals the whole-image output (windows off that grid gave
    heatmaps differing by up to 0.15 inside the core).
    """
    far = n + border + (-(n + 2 * border)) % multiple  # end of the whole-axis window
    out = []
    for c0, c1 in _cores(n, tile):
        w0 = max(c0 - margin, -border)
        w0 = -border + (w0 + border) // multiple * multiple
        w1 = min(c1 + margin, n + border)
        w1 = far if w1 == n + border else min(w0 + _round_up(w1 - w0, multiple), far)
        out.append(((c0, c1), (w0, w1)))
    return out


def pad_for_tiles(
    image: NDArray,
    tile: int,
    margin: int,
    multiple: int = 1,
    border: int | None = None,
    mode: str = "reflect",
) -> NDArray:
    """Pad an image so every window of :func:`plan_tiles` lies inside it.

    ``mode`` is numpy's padding mode: "reflect" (mirror about the edge pixel, as the detector
    was trained; a card with ``border_fill`` "zero" zeroes that padding after normalising) or
    "symmetric" (mirror half a pixel outside, as the segmenter was trained).
    """
    return _padded(image, *plan_tiles(image.shape, tile, margin, multiple, border), mode)


def _padded(image: NDArray, tiles: list[Tile], pads: tuple[int, int], mode: str) -> NDArray:
    pad_r, pad_c = pads
    h, w = image.shape
    after_r = max(0, max(t.window[0].stop for t in tiles) - pad_r - h)
    after_c = max(0, max(t.window[1].stop for t in tiles) - pad_c - w)
    # "reflect" (d c b | a b c d, about the edge pixel's centre) keeps a column centred on the
    # first pixel one blob centred inside the image; with "symmetric" (d c b a | a b c d) such a
    # column merged with its mirror image into a blob centred outside and was lost (12 of 1,600
    # A columns of a 1024² perovskite, with the reflection-trained detector).
    return np.pad(image, ((pad_r, after_r), (pad_c, after_c)), mode=mode)


def _cores(n: int, tile: int) -> list[tuple[int, int]]:
    count = max(1, math.ceil(n / tile))
    edges = np.linspace(0, n, count + 1).round().astype(int)  # equal-sized cores
    return [(int(edges[i]), int(edges[i + 1])) for i in range(count)]


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def iter_windows(
    image: NDArray,
    tile: int,
    margin: int,
    multiple: int = 1,
    border: int | None = None,
    mode: str = "reflect",
) -> Iterator[tuple[Tile, NDArray]]:
    """Yield each tile with its window of the padded image (see :func:`pad_for_tiles`)."""
    tiles, pads = plan_tiles(image.shape, tile, margin, multiple, border)
    padded = _padded(image, tiles, pads, mode)
    for t in tiles:
        yield t, padded[t.window]
