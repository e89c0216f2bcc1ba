"""Tile planning: cores partition the image, windows hold the context, borders as trained."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_atomnet import synth
from napari_atomnet.core.metrics import match_points
from napari_atomnet.models.detector import _zero_outside, detect_atoms
from napari_atomnet.models.registry import load_model
from napari_atomnet.models.tiling import iter_windows, pad_for_tiles, plan_tiles


@pytest.mark.parametrize("shape", [(600, 520), (100, 700), (40, 33)])
@pytest.mark.parametrize("border", [None, 32, 0])
def test_cores_partition_and_windows_cover_the_context(shape, border):
    tile, margin, multiple = 256, 96, 16
    tiles, _ = plan_tiles(shape, tile, margin, multiple, border)
    covered = np.zeros(shape, dtype=int)
    padded = pad_for_tiles(np.zeros(shape), tile, margin, multiple, border)
    edge = margin if border is None else border
    for t in tiles:
        covered[t.core] += 1
        (r, c), (wr, wc) = t.core, t.window
        assert (wr.stop - wr.start) % multiple == 0 and (wc.stop - wc.start) % multiple == 0
        assert wr.stop <= padded.shape[0] and wc.stop <= padded.shape[1] and wr.start >= 0
        # the window holds the core plus the margin, except where the image ends
        oy, ox = t.offset
        assert oy <= max(r.start - margin, -edge) and ox <= max(c.start - margin, -edge)
        assert oy + wr.stop - wr.start >= min(r.stop + margin, shape[0] + edge)
        assert ox + wc.stop - wc.start >= min(c.stop + margin, shape[1] + edge)
        if border is not None:  # never more padding than asked for at the near border
            assert oy >= -border and ox >= -border
    assert (covered == 1).all()


def test_windows_read_the_reflected_image():
    img = np.arange(70 * 90, dtype=np.float32).reshape(70, 90)
    for t, window in iter_windows(img, 32, 20, 8, border=5):
        oy, ox = t.offset
        rows = np.abs(np.arange(oy, oy + window.shape[0]))  # reflection about pixel 0
        cols = np.abs(np.arange(ox, ox + window.shape[1]))
        rows = np.where(rows > 69, 138 - rows, rows)  # ... and about the last pixel
        cols = np.where(cols > 89, 178 - cols, cols)
        np.testing.assert_array_equal(window, img[np.ix_(rows, cols)])


def test_builtin_detector_tiled_equals_whole_with_narrow_border():
    """The real detector (96 px context, 32 px border padding): tiles reproduce one pass."""
    card = load_model("atomnet-detect", task="detection")
    assert card.info["border"] < card.info["margin"]  # and windows off a multiple of 16
    sim = synth.perovskite_haadf((420, 380), spacing=18, dose=100, seed=7123)
    whole = detect_atoms(sim.image, card, tile=4096, polarity="bright").table
    tiled = detect_atoms(sim.image, card, tile=160, polarity="bright").table  # 3 x 3 tiles
    assert len(whole) > 400 and len(tiled) == len(whole)
    a, b = tiled[["y", "x"]].to_numpy(), whole[["y", "x"]].to_numpy()
    pairs, lone_a, lone_b = match_points(a, b, 0.5)
    assert len(pairs) == len(whole) and not len(lone_a) and not len(lone_b)
    assert np.abs(a[pairs[:, 0]] - b[pairs[:, 1]]).max() < 1e-3
    np.testing.assert_allclose(
        tiled["score"].to_numpy()[pairs[:, 0]], whole["score"].to_numpy()[pairs[:, 1]], atol=1e-4
    )


def test_zero_border_fill_tiled_equals_whole_and_blanks_the_outside():
    """A card with ``border_fill: zero``: the padding is blank, and tiles still match one pass."""
    card = load_model("atomnet-detect", task="detection")
    card = replace(card, info={**card.info, "border_fill": "zero"})
    sim = synth.perovskite_haadf((300, 260), spacing=18, dose=100, seed=7124)
    whole = detect_atoms(sim.image, card, tile=4096, polarity="bright").table
    tiled = detect_atoms(sim.image, card, tile=128, polarity="bright").table
    a, b = tiled[["y", "x"]].to_numpy(), whole[["y", "x"]].to_numpy()
    pairs, lone_a, lone_b = match_points(a, b, 0.5)
    assert len(pairs) == len(whole) > 100 and not len(lone_a) and not len(lone_b)
    assert np.abs(a[pairs[:, 0]] - b[pairs[:, 1]]).max() < 1e-3
    window = np.ones((10, 12))
    _zero_outside(window, (-2, 5), (6, 15))  # rows -2..7 and cols 5..16 of a 6 x 15 image
    expect = np.zeros((10, 12))
    expect[2:8, :10] = 1.0
    np.testing.assert_array_equal(window, expect)
